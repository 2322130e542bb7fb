"""FelixConfiguration ``vxlanPort`` / ``vxlanVNI`` on a real lab (``tortie lab up --encap
vxlan``: 2 nodes on one subnet, the pool's ``vxlanMode: Always``, so pods on different nodes
talk through ``vxlan.tortie``).

* ``default`` with ``vxlanPort: 4790`` remakes every node's ``vxlan.tortie`` with dstport
  4790 at run time (``ip -d link show``), one VXLAN device per node, nothing listening on
  4789 any more; its neighbour and FDB entries and the routes through it are back, and the
  pods still reach each other, through the device;
* ``node.<node>`` ``vxlanVNI`` overrides ``default`` field by field: VNI from the node's
  configuration, port from ``default``;
* removing the configurations brings back 4789 / 4096, and the pods reach each other.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab.cluster import Lab, LabState
from routing.desired import VXLAN_DEVICE
from tests.support.tools import require_tools
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

CONVERGE = 40.0
CHANGE = 20.0


def felix(name: str, **spec: int) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items())
    return (f"apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n"
            f"  name: {name}\nspec:\n{body}")


def vxlan_of(ns: str) -> tuple[int, int] | None:
    """(VNI, dstport) of the node's ``vxlan.tortie`` as ``ip -d link show`` prints them."""
    out = netns.ip("-d", "link", "show", VXLAN_DEVICE, ns=ns, check=False)
    m = re.search(r"vxlan id (\d+) .*dstport (\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def vxlan_devices(ns: str) -> list[str]:
    return [d["ifname"] for d in json.loads(
        netns.ip("-d", "-j", "link", "show", "type", "vxlan", ns=ns) or "[]")]


def udp_ports(ns: str) -> set[int]:
    """The UDP ports sockets in the node's namespace listen on (the VXLAN device's socket
    is the kernel's: ``ss`` lists it too)."""
    out = netns.exec_in(ns, ["ss", "-Huln"], capture=True, timeout=10).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.split()}


def tx_packets(ns: str) -> int:
    [dev] = json.loads(netns.ip("-s", "-j", "link", "show", VXLAN_DEVICE, ns=ns))
    return int(dev["stats64"]["tx"]["packets"])


def node_specs(lab: Lab, st: LabState) -> dict[str, dict[str, Any]]:
    r = lab.tortie(st, ["get", "nodes", "-o", "json"])
    assert r.returncode == 0, r.stderr
    return {d["metadata"]["name"]: d["spec"] for d in json.loads(r.stdout)["items"]}


def tunnel_programmed(lab: Lab, st: LabState) -> bool:
    """Every node has a permanent neighbour + FDB entry for the other's VTEP and routes the
    other's pod block via it on ``vxlan.tortie``."""
    specs = node_specs(lab, st)
    for name, node in st.nodes.items():
        neigh = {n["dst"]: n.get("lladdr") for n in json.loads(netns.ip(
            "-j", "neigh", "show", "dev", VXLAN_DEVICE, ns=node.netns, check=False) or "[]")
            if "PERMANENT" in n.get("state", [])}
        fdb = {f["mac"]: f.get("dst") for f in json.loads(netns.run(
            "bridge", "-n", node.netns, "-j", "fdb", "show", "dev", VXLAN_DEVICE,
            check=False).stdout or "[]")}
        routes = json.loads(netns.ip("-j", "route", "show", "dev", VXLAN_DEVICE,
                                     ns=node.netns, check=False) or "[]")
        gateways = {r.get("gateway") for r in routes}
        for other, o in st.nodes.items():
            if other == name:
                continue
            vtep, mac = specs[other].get("ipv4VXLANTunnelAddr"), specs[other].get(
                "vxlanTunnelMACAddr")
            if neigh.get(vtep) != mac or fdb.get(mac) != o.address or vtep not in gateways:
                return False
    return True


def ping(st: LabState, src: str, dst: str) -> bool:
    ip = st.pods[dst].ips[0]
    return netns.exec_in(st.pods[src].netns, ["ping", "-c", "1", "-W", "2", ip],
                         capture=True, timeout=30).returncode == 0


def pods_reach_each_other_through_the_tunnel(st: LabState) -> None:
    before = {n: tx_packets(node.netns) for n, node in st.nodes.items()}
    until_sync(lambda: ping(st, "default/p1", "default/p2") and ping(st, "default/p2",
                                                                      "default/p1"),
               CHANGE, "the pods reach each other", interval=0.5)
    after = {n: tx_packets(node.netns) for n, node in st.nodes.items()}
    assert all(after[n] > before[n] for n in st.nodes), (before, after)


def settled(lab: Lab, st: LabState, want: dict[str, tuple[int, int]]) -> None:
    """Every node's device has (VNI, port) ``want[node]``, is its only VXLAN device, is
    programmed, and its socket is the only VXLAN one."""
    until_sync(lambda: all(vxlan_of(n.netns) == want[name] for name, n in st.nodes.items()),
               CHANGE, f"vxlan.tortie with (vni, port) {want}", interval=0.2)
    until_sync(lambda: tunnel_programmed(lab, st), CHANGE,
               "neighbour, FDB and routes on the new devices", interval=0.2)
    for name, node in st.nodes.items():
        assert vxlan_devices(node.netns) == [VXLAN_DEVICE]
        stale = {4789, 4790} - {want[name][1]}
        assert want[name][1] in udp_ports(node.netns)
        assert not udp_ports(node.netns) & stale, (name, udp_ports(node.netns))
    pods_reach_each_other_through_the_tunnel(st)


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[tuple[Lab, LabState]]:
    require_tools("ping", "ss", "bridge")
    lab = Lab(f"v{uuid.uuid4().hex[:7]}")
    try:
        lab.up(2, encap="vxlan")
        lab.pod_add("node1", "default/p1")
        lab.pod_add("node2", "default/p2")
        st = lab.load()
        until_sync(lambda: tunnel_programmed(lab, st), CONVERGE,
                   "VXLAN between the nodes", interval=0.2)
        yield lab, st
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{lab.name}-") == []


def apply(lab: Lab, st: LabState, doc: str) -> None:
    r = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    assert r.returncode == 0, r.stderr


def delete(lab: Lab, st: LabState, *names: str) -> None:
    for name in names:
        lab.tortie(st, ["delete", "felixconfiguration", name, "--skip-not-exists"])


def test_calicos_port_and_vni_by_default(vxlan_lab: tuple[Lab, LabState]) -> None:
    lab, st = vxlan_lab
    settled(lab, st, {n: (4096, 4789) for n in st.nodes})


def test_vxlan_port_from_default_remakes_the_devices(
        vxlan_lab: tuple[Lab, LabState]) -> None:
    lab, st = vxlan_lab
    try:
        apply(lab, st, felix("default", vxlanPort=4790))
        settled(lab, st, {n: (4096, 4790) for n in st.nodes})
        details = netns.ip("-d", "link", "show", VXLAN_DEVICE, ns=st.nodes["node1"].netns)
        assert "dstport 4790" in details and "nolearning" in details
    finally:
        delete(lab, st, "default")


def test_node_configuration_overrides_default_field_by_field(
        vxlan_lab: tuple[Lab, LabState]) -> None:
    lab, st = vxlan_lab
    try:
        apply(lab, st, felix("default", vxlanPort=4790, vxlanVNI=4097))
        apply(lab, st, felix("node.node1", vxlanVNI=5000))
        apply(lab, st, felix("node.node2", vxlanVNI=5000))
        # the VNI from each node's own configuration, the port from default's
        settled(lab, st, {n: (5000, 4790) for n in st.nodes})
        # only node2's configuration goes: node2 falls back to default's VNI, node1 keeps
        # its own (the nodes now disagree, so the tunnel between them is down meanwhile)
        delete(lab, st, "node.node2")
        until_sync(lambda: vxlan_of(st.nodes["node2"].netns) == (4097, 4790), CHANGE,
                   "node2 takes default's VNI", interval=0.2)
        assert vxlan_of(st.nodes["node1"].netns) == (5000, 4790)
    finally:
        delete(lab, st, "node.node1", "node.node2", "default")
    settled(lab, st, {n: (4096, 4789) for n in st.nodes})
