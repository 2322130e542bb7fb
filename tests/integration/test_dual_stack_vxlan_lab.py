"""IPv6 VXLAN and BGP over IPv6 on real dual-stack labs (``tortie lab up --dual-stack
--encap vxlan``): 3 nodes with an IPv6 underlay, the IPv6 pool's ``vxlanMode`` following the
IPv4 pool's, real ExaBGP in every node and a real BIRD peering over IPv6.

One subnet (``vxlanMode: Always``):

* every node has ``vxlan-v6.tortie`` (VNI 4096, port 4789, local = its IPv6 address, MTU =
  underlay less 70), its VTEP address (``spec.ipv6VXLANTunnelAddr``, from the IPv6 pool,
  handle ``vxlan-v6-tunnel-addr-<node>``) and MAC (``spec.vxlanTunnelMACAddrV6``) in its
  Node resource, and a permanent neighbour + FDB entry per other node;
* each remote IPv6 block is routed via the owner's IPv6 VTEP on ``vxlan-v6.tortie``, the
  kernel's route lookup for every remote pod picks that device, and every pod pings every
  pod over IPv6 (and IPv4) with the device's packet counters growing;
* BIRD peering over IPv6 (BGPPeer ``peerIP`` = BIRD's IPv6 address) learns every IPv6 block
  over IPv6 sessions, with the nodes' IPv6 next hops, and no IPv4 route (those sessions carry
  IPv6 only); ``tortie node status`` lists the IPv6 session;
* FelixConfiguration ``vxlanMTUV6`` sets the device's MTU, ``vxlanPort`` / ``vxlanVNI``
  the port and VNI of both VXLAN devices;
* ``vxlanMode: Never`` on the IPv6 pool removes the device and releases the VTEP addresses
  (the Node resources lose them), and the pods still reach each other, directly.

Two subnets (``vxlanMode: CrossSubnet``): IPv6 traffic between nodes of one subnet goes
directly over eth0, across subnets through ``vxlan-v6.tortie``; every pod reaches every pod.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab import bird_peer, netns
from lab.cluster import Lab, LabState
from tests.support.dual_stack_lab import (
    block6,
    dual_stack_lab,
    node_docs,
    ping,
    routes6,
    v4,
    v6,
)
from tests.support.lab_cli import run_tortie
from tests.support.lab_ipam import ipam_state
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

DEVICE6 = "vxlan-v6.tortie"


def link(ns: str, device: str) -> dict[str, Any]:
    return json.loads(netns.ip("-d", "-s", "-j", "link", "show", device, ns=ns))[0]


def tx_packets(ns: str, device: str) -> int:
    return int(link(ns, device)["stats64"]["tx"]["packets"])


def route_device(ns: str, dst: str) -> str:
    """The device the node's kernel sends ``dst`` out of (``ip route get``)."""
    got = json.loads(netns.ip("-6", "-j", "route", "get", dst, ns=ns))
    return str(got[0].get("dev", ""))


def subnet6(st: LabState) -> dict[str, ipaddress.IPv6Network]:
    """Each node's IPv6 underlay subnet."""
    return {n: ipaddress.IPv6Interface(f"{node.address6}/64").network
            for n, node in st.nodes.items()}


def converged(st: LabState, expect: dict[tuple[str, str], str]) -> bool:
    """Every node routes every other node's IPv6 pod block out of the expected device
    (``expect``: (node, owner) -> device)."""
    blocks = {p.node: block6(v6(st, ref)) for ref, p in st.pods.items()}
    for name, node in st.nodes.items():
        have = routes6(node.netns)
        for owner, b in blocks.items():
            if owner != name and have.get(b, {}).get("dev") != expect[(name, owner)]:
                return False
    return True


def every_pod_pings_every_pod(st: LabState, device: Callable[[str, str], str]) -> None:
    """Each pod pings each other pod (all on other nodes) over IPv6 and IPv4, the source
    node's kernel sending the IPv6 ping out of ``device(source node, destination node)``."""
    failed = []
    for s, src in st.pods.items():
        for d, dst in st.pods.items():
            if s == d:
                continue
            assert dst.node != src.node  # one pod per node: every pair crosses nodes
            want = device(src.node, dst.node)
            assert route_device(st.nodes[src.node].netns, v6(st, d)) == want, (s, d)
            failed += [(s, d, ip) for ip in (v6(st, d), v4(st, d)) if not ping(st, s, ip)]
    assert failed == []


@pytest.fixture(scope="module")
def always() -> Iterator[tuple[Lab, LabState]]:
    def ready(st: LabState) -> bool:
        return converged(st, {(a, b): DEVICE6 for a in st.nodes for b in st.nodes if a != b})

    with dual_stack_lab("x", ready, "IPv6 routes to every pod block through vxlan-v6.tortie",
                        encap="vxlan", tools=("bird", "ping")) as lab_st:
        yield lab_st


def test_pools_and_node_tunnel_addresses(always: tuple[Lab, LabState]) -> None:
    lab, st = always
    r = lab.tortie(st, ["get", "ippools", "-o", "json"])
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    pools = {d["spec"]["cidr"]: d["spec"] for d in (docs.get("items", docs)
                                                     if isinstance(docs, dict) else docs)}
    assert pools[st.pool6_cidr]["vxlanMode"] == "Always"
    nodes = node_docs(lab, st)
    vteps = set()
    for name, node in st.nodes.items():
        spec = nodes[name]["spec"]
        vtep, mac = spec["ipv6VXLANTunnelAddr"], spec["vxlanTunnelMACAddrV6"]
        assert ipaddress.ip_address(vtep) in ipaddress.ip_network(st.pool6_cidr)
        assert mac != spec["vxlanTunnelMACAddr"]  # one MAC per device
        vteps.add(vtep)
        dev = link(node.netns, DEVICE6)
        data = dev["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local6"]) == (4096, 4789, node.address6)
        assert data["learning"] is False
        assert dev["address"] == mac
        assert dev["mtu"] == 1500 - 70
        addrs = json.loads(netns.ip("-6", "-j", "addr", "show", "dev", DEVICE6,
                                    ns=node.netns))[0]["addr_info"]
        assert f"{vtep}/128" in {f"{a['local']}/{a['prefixlen']}" for a in addrs}
    assert len(vteps) == 3
    # the VTEP addresses are IPAM allocations of their own handle (Calico's name)
    handles = ipam_state(lab)["handles"]
    assert {n: handles[f"vxlan-v6-tunnel-addr-{n}"] for n in st.nodes} == {
        n: [nodes[n]["spec"]["ipv6VXLANTunnelAddr"]] for n in st.nodes}
    r = lab.tortie(st, ["ipam", "check"])
    assert r.returncode == 0 and "IPAM is consistent" in r.stdout, r.stdout + r.stderr


def test_remote_blocks_route_through_vxlan_v6(always: tuple[Lab, LabState]) -> None:
    lab, st = always
    nodes = node_docs(lab, st)
    owner = {block6(v6(st, ref)): p.node for ref, p in st.pods.items()}
    for name, node in st.nodes.items():
        have = routes6(node.netns)
        neigh = {n["dst"]: n["lladdr"] for n in json.loads(netns.ip(
            "-6", "-j", "neigh", "show", "dev", DEVICE6, ns=node.netns))
            if "PERMANENT" in n.get("state", [])}
        fdb = {f["mac"]: f["dst"] for f in json.loads(netns.run(
            "bridge", "-n", node.netns, "-j", "fdb", "show", "dev", DEVICE6).stdout or "[]")
            if f.get("dst")}
        for block, o in owner.items():
            if o == name:
                assert have[block].get("type") == "blackhole"
                continue
            spec = nodes[o]["spec"]
            r = have[block]
            assert (r["gateway"], r["dev"]) == (spec["ipv6VXLANTunnelAddr"], DEVICE6), r
            assert "onlink" in r.get("flags", []), r
            assert neigh[spec["ipv6VXLANTunnelAddr"]] == spec["vxlanTunnelMACAddrV6"]
            assert fdb[spec["vxlanTunnelMACAddrV6"]] == st.nodes[o].address6


def test_every_pod_pings_every_pod_over_vxlan_v6(always: tuple[Lab, LabState]) -> None:
    _, st = always
    before = {n: tx_packets(node.netns, DEVICE6) for n, node in st.nodes.items()}
    every_pod_pings_every_pod(st, lambda src, dst: DEVICE6)
    after = {n: tx_packets(node.netns, DEVICE6) for n, node in st.nodes.items()}
    # each node sent two echo requests and two replies of IPv6 through the device
    assert all(after[n] - before[n] >= 4 for n in st.nodes), (before, after)


def test_bird_peers_over_ipv6_and_learns_the_ipv6_blocks(
        always: tuple[Lab, LabState]) -> None:
    lab, st = always
    info = bird_peer.add_bird(lab, over_ipv6=True)
    assert info.peers == [n.address6 for n in st.nodes.values()]
    bird = bird_peer.bird_of(lab)
    want = {block6(v6(st, ref)): st.nodes[p.node].address6 for ref, p in st.pods.items()}
    until_sync(lambda: set(bird.protocols().values()) == {"Established"}, 30,
               "BIRD's IPv6 sessions establish", interval=0.2)
    until_sync(lambda: bird.routes() == want, 30,
               "BIRD learns every IPv6 block over IPv6, and nothing else", interval=0.2)
    until_sync(lambda: set(bird.kernel_routes(6)) >= set(want), 10,
               "BIRD installs the IPv6 blocks", interval=0.2)
    p = netns.exec_in(bird.netns, ["ping", "-6", "-c", "1", "-W", "2", v6(st, "default/p2")],
                      capture=True, timeout=20)
    assert p.returncode == 0, p.stdout
    r = run_tortie("lab", "exec", "--name", lab.name, "--node", "node1", "--", sys.executable,
                   "-m", "ctl.main", "node", "status")
    assert r.returncode == 0, r.stderr
    v6_part = r.stdout[r.stdout.index("IPv6 BGP status"):]
    row = next(line for line in v6_part.splitlines() if bird_peer.BIRD_IP6 in line)
    assert "global" in row and "Established" in row, r.stdout
    assert "the IPv6 sessions carry IPv6 routes only" in v6_part
    assert bird_peer.BIRD_IP6 not in r.stdout[:r.stdout.index("IPv6 BGP status")]


def test_vxlan_mtu_v6_from_felix_configuration(always: tuple[Lab, LabState]) -> None:
    lab, st = always
    doc = ("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n"
           "  name: default\nspec:\n  vxlanMTUV6: 1400\n")
    r = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    assert r.returncode == 0, r.stderr
    try:
        until_sync(lambda: all(link(n.netns, DEVICE6)["mtu"] == 1400
                               for n in st.nodes.values()), 20,
                   "vxlan-v6.tortie takes vxlanMTUV6", interval=0.2)
        # the IPv4 device keeps its own MTU
        assert all(link(n.netns, "vxlan.tortie")["mtu"] == 1450 for n in st.nodes.values())
    finally:
        lab.tortie(st, ["delete", "felixconfiguration", "default"])


def test_vxlan_port_and_vni_apply_to_both_devices(always: tuple[Lab, LabState]) -> None:
    """FelixConfiguration ``vxlanPort`` / ``vxlanVNI`` (Calico has no IPv6 ones) remake
    ``vxlan-v6.tortie`` as they do ``vxlan.tortie``; the pods still reach each other."""
    lab, st = always
    doc = ("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n"
           "  name: default\nspec:\n  vxlanPort: 4790\n  vxlanVNI: 4097\n")

    def settings(want: tuple[int, int]) -> bool:
        for node in st.nodes.values():
            for device in (DEVICE6, "vxlan.tortie"):
                out = netns.ip("-d", "-j", "link", "show", device, ns=node.netns, check=False)
                if not out:  # being made anew
                    return False
                data = json.loads(out)[0]["linkinfo"]["info_data"]
                if (data["id"], data["port"]) != want:
                    return False
        return True

    r = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    assert r.returncode == 0, r.stderr
    try:
        until_sync(lambda: settings((4097, 4790)), 20,
                   "both VXLAN devices take vxlanPort / vxlanVNI", interval=0.2)
        expect = {(a, b): DEVICE6 for a in st.nodes for b in st.nodes if a != b}
        until_sync(lambda: converged(st, expect), 20,
                   "IPv6 routes through the new vxlan-v6.tortie", interval=0.2)
        for node in st.nodes.values():
            assert link(node.netns, DEVICE6)["linkinfo"]["info_data"]["local6"] == \
                node.address6
        every_pod_pings_every_pod(st, lambda src, dst: DEVICE6)
    finally:
        lab.tortie(st, ["delete", "felixconfiguration", "default"])
    until_sync(lambda: settings((4096, 4789)), 20, "back to 4096 / 4789", interval=0.2)


def test_vxlan_mode_never_removes_the_device_and_releases_the_vtep(
        always: tuple[Lab, LabState]) -> None:
    """Last of this lab's tests: the IPv6 pool stops encapsulating."""
    lab, st = always
    patch = '{"spec": {"vxlanMode": "Never"}}'
    r = lab.tortie(st, ["patch", "ippool", "default-ipv6-ippool", "-p", patch])
    assert r.returncode == 0, r.stderr
    expect = {(a, b): "eth0" for a in st.nodes for b in st.nodes if a != b}
    until_sync(lambda: converged(st, expect), 20, "IPv6 routes go direct again",
               interval=0.2)

    def gone() -> bool:
        docs = node_docs(lab, st)
        return all("ipv6VXLANTunnelAddr" not in docs[n]["spec"]
                   and "vxlanTunnelMACAddrV6" not in docs[n]["spec"]
                   and not netns.ip("link", "show", DEVICE6, ns=node.netns, check=False)
                   for n, node in st.nodes.items())

    until_sync(gone, 20, "vxlan-v6.tortie and the IPv6 VTEP addresses go", interval=0.2)
    # the IPv4 VXLAN is untouched, and IPAM holds no IPv6 VTEP any more
    assert all(link(node.netns, "vxlan.tortie") for node in st.nodes.values())
    handles = ipam_state(lab)["handles"]
    assert all(handles[f"vxlan-v6-tunnel-addr-{n}"] == [] for n in st.nodes)
    assert all(handles[f"vxlan-tunnel-addr-{n}"] for n in st.nodes)
    r = lab.tortie(st, ["ipam", "check"])
    assert r.returncode == 0 and "IPAM is consistent" in r.stdout, r.stdout + r.stderr
    failed = [(s, d) for s in st.pods for d in st.pods
              if s != d and not ping(st, s, v6(st, d))]
    assert failed == []


@pytest.fixture(scope="module")
def cross() -> Iterator[tuple[Lab, LabState]]:
    def ready(st: LabState) -> bool:
        subnet = subnet6(st)
        return converged(st, {(a, b): "eth0" if subnet[a] == subnet[b] else DEVICE6
                              for a in st.nodes for b in st.nodes if a != b})

    with dual_stack_lab("x", ready, "IPv6 routes: direct within a subnet, vxlan-v6.tortie "
                        "across", subnets=2, encap="vxlan") as lab_st:
        yield lab_st


def test_cross_subnet_encapsulates_only_across_subnets(cross: tuple[Lab, LabState]) -> None:
    lab, st = cross
    r = lab.tortie(st, ["get", "ippool", "default-ipv6-ippool", "-o", "json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spec"]["vxlanMode"] == "CrossSubnet"
    subnet = subnet6(st)
    assert len(set(subnet.values())) == 2
    every_pod_pings_every_pod(
        st, lambda src, dst: "eth0" if subnet[src] == subnet[dst] else DEVICE6)
