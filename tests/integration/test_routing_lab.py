"""Routing acceptance on real labs: tortie-node's routing agent with ExaBGP in every node.

* 3 nodes, one subnet, no encapsulation: every pod reaches every pod; each node's routes to
  remote blocks carry protocol 80, came from BGP and point at the owner; natOutgoing; a full
  block makes the node claim and announce a second one, which is released and withdrawn when
  its pods leave; tortie-node restarted under a 20 pkt/s ping loses nothing; a block freed
  while a restarted node's BGP view is incomplete leaves it at once; a removed
  node's routes leave the others within the lab's hold time.
* 4 nodes over 2 subnets, vxlanMode CrossSubnet: all pods reach all pods; tcpdump on the
  underlay shows same-subnet traffic plain and cross-subnet traffic in VXLAN.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab import netns
from lab.cluster import LAB_BGP_HOLD_TIME, Lab, LabState
from routing.desired import VXLAN_DEVICE
from routing.kernel import PROTO
from tests.support.lab_cli import REPO
from tests.support.lab_ipam import holdings, ipam_state
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

BLOCK = 26
CONVERGE = 30.0


def wait_until(cond: Callable[[], bool], timeout: float = CONVERGE, what: str = "") -> float:
    """Seconds it took ``cond`` to become true; fails after ``timeout``."""
    start = time.monotonic()
    until_sync(cond, timeout, what, interval=0.1)
    return time.monotonic() - start


def routes(ns: str) -> list[dict[str, Any]]:
    out = netns.ip("-j", "route", "show", "proto", str(PROTO), ns=ns)
    return json.loads(out or "[]")


def by_dst(ns: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in routes(ns):
        dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/32"
        out[dst] = r
    return out


def block_of(ip: str, size: int = BLOCK) -> str:
    return str(ipaddress.ip_network(f"{ip}/{size}", strict=False))


def ping(lab: Lab, st: LabState, src: str, dst_ip: str, count: int = 1) -> bool:
    p = netns.exec_in(st.pods[src].netns, ["ping", "-c", str(count), "-W", "2", dst_ip],
                      capture=True, timeout=30)
    return p.returncode == 0


def health(st: LabState, node: str) -> dict[str, Any]:
    p = netns.exec_in(st.nodes[node].netns, ["curl", "-s", "127.0.0.1:9099/healthz"],
                      capture=True, timeout=10)
    return dict(json.loads(p.stdout)["agents"]["routing"])


def converged(st: LabState) -> bool:
    """Every node has a protocol-80 route to every other node's pod block."""
    blocks = {p.node: block_of(p.ips[0]) for p in st.pods.values()}
    for name, node in st.nodes.items():
        have = by_dst(node.netns)
        if any(b not in have for n, b in blocks.items() if n != name):
            return False
    return True


def make_lab(nodes: int, **kw: Any) -> Iterator[tuple[Lab, LabState]]:
    lab = Lab(f"r{uuid.uuid4().hex[:7]}")
    try:
        lab.up(nodes, **kw)
        for i in range(1, nodes + 1):
            lab.pod_add(f"node{i}", f"default/p{i}")
        st = lab.load()
        wait_until(lambda: converged(st), what="routes to every pod block on every node")
        yield lab, st
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{lab.name}-") == []


# --- 3 nodes, one subnet, no encapsulation ----------------------------------------------------


@pytest.fixture(scope="module")
def flat() -> Iterator[tuple[Lab, LabState]]:
    yield from make_lab(3)


def test_every_pod_reaches_every_pod(flat: tuple[Lab, LabState]) -> None:
    lab, st = flat
    failed = [(s, d) for s in st.pods for d, p in st.pods.items()
              if st.pods[s].node != p.node and not ping(lab, st, s, p.ips[0])]
    assert failed == []


def test_remote_routes_came_from_bgp_and_point_at_the_owner(
        flat: tuple[Lab, LabState]) -> None:
    _, st = flat
    owner = {block_of(p.ips[0]): st.nodes[p.node] for p in st.pods.values()}
    for name, node in st.nodes.items():
        have = by_dst(node.netns)
        for block, own in owner.items():
            r = have[block]
            if own.name == name:
                assert r["type"] == "blackhole"
            else:
                assert (r.get("gateway"), r.get("dev")) == (own.address, "eth0"), r
        wait_until(lambda name=name: health(st, name)["complete"], timeout=10,
                   what=f"{name}: every session established and its End-of-RIB in")
        h = health(st, name)
        assert h["protocol"] == PROTO
        assert h["learnt"] == len(st.nodes) - 1  # one block per other node, via BGP
        assert h["routes"]["direct"] == len(st.nodes) - 1
        assert sorted(p["state"] for p in h["peers"]) == ["Established"] * (len(st.nodes) - 1)
        assert all(p["received"] == 1 for p in h["peers"])
        # the routes to local pods are the CNI handler's, not ours
        local = st.pods[f"default/p{name[-1]}"].ips[0]
        assert f"{local}/32" not in have


def test_nat_outgoing_masquerades_to_outside_the_pools(flat: tuple[Lab, LabState]) -> None:
    lab, st = flat
    # the fabric (192.0.2.1) has no route to pods: replies come back only when masqueraded
    assert ping(lab, st, "default/p1", "192.0.2.1")
    listing = netns.exec_in(st.nodes["node1"].netns, ["nft", "list", "table", "ip",
                                                      "tortie-nat"], capture=True).stdout
    packets = int(re.search(r"counter packets (\d+)", listing).group(1))
    assert packets >= 1


def _apply(lab: Lab, st: LabState, doc: str) -> None:
    p = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    assert p.returncode == 0, p.stderr


def test_full_block_claims_and_announces_a_second_then_releases_it(
        flat: tuple[Lab, LabState]) -> None:
    """A /29 pool (8 addresses a block): the 9th pod on node1 needs a second block."""
    lab, st = flat
    _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: small\n"
                    "spec:\n  cidr: 10.250.0.0/24\n  blockSize: 29\n  natOutgoing: true\n")
    _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n"
                    "  name: default-ipv4-ippool\nspec:\n  cidr: 10.244.0.0/16\n"
                    "  natOutgoing: true\n  disabled: true\n")
    refs = [f"fill/f{i}" for i in range(9)]
    try:
        ips = [lab.pod_add("node1", ref).ips[0] for ref in refs]
        blocks = sorted({block_of(ip, 29) for ip in ips})
        assert len(blocks) == 2, blocks
        second = [r for r, ip in zip(refs, ips, strict=True) if block_of(ip, 29) == blocks[1]]
        n1 = st.nodes["node1"]
        for name in ("node2", "node3"):
            ns = st.nodes[name].netns
            wait_until(lambda ns=ns: all(b in by_dst(ns) for b in blocks),
                       what=f"both /29 blocks on {name}")
            assert {by_dst(ns)[b]["gateway"] for b in blocks} == {n1.address}
        assert ping(lab, lab.load(), "default/p2", ips[-1])  # the new block works
        for ref in second:
            lab.pod_del(ref)
        for name in ("node2", "node3", "node1"):
            ns = st.nodes[name].netns
            took = wait_until(lambda ns=ns: blocks[1] not in by_dst(ns),
                              what=f"{blocks[1]} withdrawn from {name}")
            print(f"{blocks[1]} gone from {name} {took:.2f}s after its last pod left")
            assert blocks[0] in by_dst(ns)
    finally:
        cur = lab.load()
        for ref in refs:
            if ref in cur.pods:
                lab.pod_del(ref)
        _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n"
                        "  name: default-ipv4-ippool\nspec:\n  cidr: 10.244.0.0/16\n"
                        "  natOutgoing: true\n")


def test_restart_loses_no_packet(flat: tuple[Lab, LabState]) -> None:
    lab, st = flat
    dst = st.pods["default/p2"].ips[0]
    before = by_dst(st.nodes["node1"].netns)
    pinger = subprocess.Popen(["ip", "netns", "exec", st.pods["default/p1"].netns, "ping",
                               "-i", "0.05", "-c", "160", "-W", "1", dst],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        lab.restart_node("node1")
        restart_s = time.monotonic() - started
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    sent, got = int(m.group(1)), int(m.group(2))
    print(f"restart took {restart_s:.2f}s; ping {got}/{sent} received")
    assert sent == 160 and got == sent, out
    st2 = lab.load()
    wait_until(lambda: health(st2, "node1")["complete"], what="node1 routing complete")
    assert by_dst(st.nodes["node1"].netns) == before


_CLAIM = """
import asyncio, sys
from datastore.etcd_config import EtcdConfig
from datastore.store import Store
from ipam.allocator import IPAM

async def main(verb, node, handle, pool=""):
    async with Store(EtcdConfig.load()) as store:
        ipam = IPAM(store, node)
        if verb == "claim":
            p = next(p for p in await ipam.pools() if p.name == pool)
            print((await ipam.auto_assign(handle, {}, [p], num=64))[0])
        else:
            await ipam.release_by_handle(handle)

asyncio.run(main(*sys.argv[1:]))
"""


def _ipam(st: LabState, *args: str) -> str:
    p = netns.exec_in(st.fabric, [sys.executable, "-c", _CLAIM, *args],
                      env={**st.etcd_env(), "PYTHONPATH": str(REPO)}, capture=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_block_freed_while_a_node_waits_for_bgp_leaves_it_at_once(
        flat: tuple[Lab, LabState]) -> None:
    """A restarted node keeps the routes it found until its BGP view is complete (every
    peer Established with its End-of-RIB, else the start-up grace: 30 s).  A route it
    learnt and saw withdrawn after the restart is not one of those: it leaves at once, even
    while a peer that never answers keeps the view incomplete.  (It used to stay until the
    grace ran out: 18 s in a 20-node lab, where one End-of-RIB had been lost to a reload.)"""
    lab, st = flat
    _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n"
                    "  name: silent\nspec:\n  node: node1\n  peerIP: 192.0.2.250\n"
                    "  asNumber: 64513\n")
    _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n"
                    "  name: held\nspec:\n  cidr: 10.251.0.0/16\n  blockSize: 26\n")
    handle = f"held-{uuid.uuid4().hex[:6]}"
    n1 = st.nodes["node1"].netns
    try:
        lab.restart_node("node1")
        st1 = lab.load()
        wait_until(lambda: sum(p["state"] == "Established" and p["kind"] == "mesh"
                               for p in health(st1, "node1")["peers"]) == 2,
                   what="node1's mesh sessions up again")
        block = block_of(_ipam(st, "claim", "node2", handle, "held"))
        wait_until(lambda: block in by_dst(n1), what=f"{block} of node2 on node1")
        _ipam(st, "release", "node2", handle)
        took = wait_until(lambda: block not in by_dst(n1), timeout=20,
                          what=f"{block} gone from node1")
        # the view was incomplete all along (complete never goes back to false)
        assert not health(st1, "node1")["complete"]
        print(f"{block} left node1 {took:.2f}s after its release, node1's view incomplete")
        assert took < 3
    finally:
        _ipam(st, "release", "node2", handle)
        lab.tortie(st, ["delete", "bgppeer", "silent"])
        lab.tortie(st, ["delete", "ippool", "held"])
        st2 = lab.load()
        wait_until(lambda: health(st2, "node1")["complete"], what="node1 routing complete")


def test_removed_node_leaves_the_others_within_the_hold_time(
        flat: tuple[Lab, LabState]) -> None:
    lab, st = flat
    gone = st.nodes["node3"]
    block = block_of(st.pods["default/p3"].ips[0])
    lab.remove_node("node3")
    took = wait_until(lambda: all(block not in by_dst(st.nodes[n].netns)
                                  for n in ("node1", "node2")),
                      timeout=LAB_BGP_HOLD_TIME + 5, what=f"{block} via {gone.address} gone")
    print(f"node3's block left node1 and node2 {took:.1f}s after node3 died "
          f"(hold time {LAB_BGP_HOLD_TIME}s)")
    assert took <= LAB_BGP_HOLD_TIME + 2
    assert ping(lab, lab.load(), "default/p1", st.pods["default/p2"].ips[0])
    # decommissioned (its Node resource deleted too): the mesh drops it at once
    block2 = block_of(st.pods["default/p2"].ips[0])
    lab.remove_node("node2", delete_resource=True)
    def dropped() -> bool:
        peers = {p["address"] for p in health(st, "node1")["peers"]}
        return st.nodes["node2"].address not in peers and block2 not in by_dst(
            st.nodes["node1"].netns)
    try:
        took = wait_until(dropped, timeout=15, what=f"node2 and {block2} gone from node1")
    except AssertionError as e:  # show what node1 did meanwhile
        raise AssertionError(f"{e}\nnode1's log:\n{_tail(st.nodes['node1'].log)}") from None
    print(f"node2 and its block left node1 {took:.2f}s after its Node resource was deleted")
    # well inside the hold time: the deletion, not the dead session, took it out
    assert took < LAB_BGP_HOLD_TIME - 3
    peers = {p["address"] for p in health(st, "node1")["peers"]}
    assert gone.address in peers  # node3's Node resource stays: still a configured peer


def _tail(path: str, lines: int = 60) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


# --- 3 nodes, VXLAN: a node removed and its Node resource deleted -----------------------------


@pytest.fixture
def vxlan3() -> Iterator[tuple[Lab, LabState]]:
    yield from make_lab(3, encap="vxlan")


def test_removed_node_gives_back_its_blocks_tunnel_address_and_routes(
        vxlan3: tuple[Lab, LabState]) -> None:
    """node3 decommissioned (killed, its pods gone without a CNI DEL, then ``tortie delete
    node node3``): its pod's endpoint and address, its VXLAN tunnel address, its block and
    block affinity, its host document go; ``tortie ipam check`` is clean; node1 and node2
    lose their routes to its block; the others' pods still reach each other."""
    lab, st = vxlan3
    names = ["node1", "node2", "node3"]
    block3 = block_of(st.pods["default/p3"].ips[0])
    wait_until(lambda: bool(holdings(ipam_state(lab, names), "node3")["tunnels"]),
               what="node3's VXLAN tunnel address allocated")
    before = holdings(ipam_state(lab, names), "node3")
    assert before["blocks"] == [block3] and before["host"], before
    [tunnel] = before["tunnels"]["vxlan-tunnel-addr-node3"]
    assert before["allocations"] == {st.pods["default/p3"].ips[0]: before["allocations"][
        st.pods["default/p3"].ips[0]], tunnel: "vxlan-tunnel-addr-node3"}, before
    others = {n: holdings(ipam_state(lab, names), n) for n in ("node1", "node2")}
    check = lab.tortie(st, ["ipam", "check"])
    assert check.returncode == 0, check.stdout + check.stderr

    lab.remove_node("node3", delete_resource=True)   # runs `tortie delete node node3`
    check = lab.tortie(st, ["ipam", "check"])
    assert check.returncode == 0 and "IPAM is consistent" in check.stdout, \
        check.stdout + check.stderr
    state = ipam_state(lab, names)
    after = holdings(state, "node3")
    assert after == {"blocks": [], "allocations": {}, "host": False, "tunnels": {}}, after
    assert block3 not in {b["cidr"] for b in state["blocks"]}   # its pod's endpoint is gone
    assert not any(b["node"] is None for b in state["blocks"]), state["blocks"]
    for n, held in others.items():   # the others keep everything
        assert holdings(state, n) == held, (n, held, holdings(state, n))
    weps = lab.tortie(st, ["get", "workloadendpoints", "-A", "-o", "json"])
    assert weps.returncode == 0, weps.stderr
    assert sorted(w["spec"]["node"] for w in json.loads(weps.stdout)["items"]) == [
        "node1", "node2"]
    shown = lab.tortie(st, ["ipam", "show", "--show-blocks"]).stdout
    assert "Block node3" not in shown and "Block node1" in shown, shown
    for name in ("node1", "node2"):
        ns = st.nodes[name].netns
        took = wait_until(lambda ns=ns: block3 not in by_dst(ns), timeout=15,
                          what=f"{block3} withdrawn from {name}")
        print(f"{block3} gone from {name} {took:.2f}s after node3 was deleted")
        assert not any(r.get("gateway") == tunnel for r in routes(ns)), routes(ns)
    assert ping(lab, lab.load(), "default/p1", st.pods["default/p2"].ips[0])


# --- 4 nodes over 2 subnets, VXLAN CrossSubnet ------------------------------------------------


@pytest.fixture(scope="module")
def crossed() -> Iterator[tuple[Lab, LabState]]:
    yield from make_lab(4, subnets=2, encap="vxlan")


def test_cross_subnet_all_pods_reach_all_pods(crossed: tuple[Lab, LabState]) -> None:
    lab, st = crossed
    assert [n.address for n in st.nodes.values()] == [
        "192.0.2.11", "192.0.2.12", "198.51.100.13", "198.51.100.14"]
    failed = [(s, d) for s in st.pods for d, p in st.pods.items()
              if s != d and not ping(lab, st, s, p.ips[0])]
    assert failed == []
    have = by_dst(st.nodes["node1"].netns)
    same = have[block_of(st.pods["default/p2"].ips[0])]
    cross = have[block_of(st.pods["default/p3"].ips[0])]
    assert (same["gateway"], same["dev"]) == ("192.0.2.12", "eth0")
    assert cross["dev"] == VXLAN_DEVICE and "onlink" in cross.get("flags", [])


def _capture(ns: str, iface: str, bpf: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-n", "-l", "-i", iface,
                             bpf], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def _addresses(capture: str) -> set[str]:
    return set(re.findall(r"\b(\d+\.\d+\.\d+\.\d+)(?=[ :.])", capture))


def _stop(p: subprocess.Popen[str]) -> str:
    p.terminate()
    try:
        out, _ = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def test_cross_subnet_traffic_is_vxlan_on_the_underlay(crossed: tuple[Lab, LabState]) -> None:
    """tcpdump on node1's port of the fabric: plain ICMP to node2's pod (same subnet), only
    VXLAN (UDP 4789, VNI 4096) to node3's pod (the other subnet)."""
    lab, st = crossed
    p1, p2, p3 = (st.pods[f"default/p{i}"].ips[0] for i in (1, 2, 3))
    plain = _capture(st.fabric, "node1", "icmp")
    vxlan = _capture(st.fabric, "node1", "udp port 4789")
    try:
        time.sleep(1.0)
        assert ping(lab, st, "default/p1", p2, count=3)
        assert ping(lab, st, "default/p1", p3, count=3)
        time.sleep(0.5)
    finally:
        plain_out, vxlan_out = _stop(plain), _stop(vxlan)
    print("plain ICMP on the underlay:\n" + plain_out + "VXLAN on the underlay:\n" + vxlan_out)
    assert f"{p1} > {p2}: ICMP echo request" in plain_out
    assert p3 not in _addresses(plain_out)
    assert re.search(r"192\.0\.2\.11\.\d+ > 198\.51\.100\.13\.4789: VXLAN", vxlan_out)
    assert "vni 4096" in vxlan_out
    assert f"{p1} > {p3}: ICMP echo request" in vxlan_out  # the inner packet
    assert p2 not in _addresses(vxlan_out)


def test_host_endpoint_policy_keeps_the_vxlan_between_nodes(
        crossed: tuple[Lab, LabState]) -> None:
    """Every node gets an all-interfaces host endpoint under a policy that allows nothing:
    the host is closed (the fabric's pings to node1 are dropped) but the VXLAN between the
    nodes, which the pods' cross-subnet traffic runs in, still passes."""
    lab, st = crossed
    heps = "".join(f"""---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: {name}-all, labels: {{closed-host: "true"}}}}
spec: {{node: {name}, interfaceName: "*", expectedIPs: [{node.address}]}}
""" for name, node in st.nodes.items())
    policy = """---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: closed-hosts}
spec: {selector: has(closed-host), types: [Ingress, Egress]}
"""
    fabric_ping = ["ping", "-c", "1", "-W", "1", st.nodes["node1"].address]
    assert netns.exec_in(st.fabric, fabric_ping, capture=True).returncode == 0
    p = lab.tortie(st, ["apply", "-f", "-"], input=heps + policy)
    assert p.returncode == 0, p.stderr
    try:
        wait_until(lambda: netns.exec_in(st.fabric, fabric_ping, capture=True).returncode != 0,
                   timeout=20, what="node1 closed to the fabric")
        p1, p3 = (st.pods[f"default/p{i}"].ips[0] for i in (1, 3))
        assert ping(lab, st, "default/p1", p3, count=2)  # node1 -> node3: VXLAN
        assert ping(lab, st, "default/p4", p1, count=2)  # node4 -> node1: VXLAN
        rules = netns.exec_in(st.nodes["node1"].netns, ["nft", "list", "ruleset"],
                              capture=True).stdout
        assert re.search(r"udp dport 4789 counter packets [1-9]", rules), rules
    finally:
        lab.tortie(st, ["delete", "globalnetworkpolicy", "closed-hosts"])
        for name in st.nodes:
            lab.tortie(st, ["delete", "hostendpoint", f"{name}-all"])
    wait_until(lambda: netns.exec_in(st.fabric, fabric_ping, capture=True).returncode == 0,
               timeout=20, what="node1 open again")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
