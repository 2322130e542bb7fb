"""The Node address a real tortie-node writes, per IP / IP_AUTODETECTION_METHOD, in a
namespace with two interfaces (ethA 192.0.2.10/24 with the default route, ethB
198.51.100.10/24; see tests/support/node_ns.py) and a real etcd."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lab import netns
from tests.support.node_ns import ADDR_A, ADDR_B, NodeNs, node_ns
from tests.support.tools import tools
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, tools("root", "ip", "etcd")]


@pytest.fixture(scope="module")
def ns() -> Iterator[NodeNs]:
    with node_ns() as n:
        yield n


@pytest.fixture
def node(ns: NodeNs) -> Iterator[NodeNs]:
    """The namespace with no Node resource; tortie-node stopped after the test."""
    ns.delete_node_resource()
    try:
        yield ns
    finally:
        ns.stop()
        ns.delete_node_resource()


def registered(node: NodeNs) -> str:
    address: str = until_sync(node.ipv4_address, 30, "the Node's ipv4Address")
    return address


@pytest.mark.parametrize(("method", "expected", "interface"), [
    ("first-found", ADDR_A, "ethA"),            # the default route's interface
    ("interface=ethB", ADDR_B, "ethB"),
    ("interface=nope.*,eth[B]", ADDR_B, "ethB"),
    ("skip-interface=ethA", ADDR_B, "ethB"),
    ("cidr=198.51.100.0/24", ADDR_B, "ethB"),
    ("cidr=10.0.0.0/8,192.0.2.0/25", ADDR_A, "ethA"),
    ("can-reach=203.0.113.7", ADDR_B, "ethB"),   # routed via ethB's gateway
    ("can-reach=192.0.2.77", ADDR_A, "ethA"),
])
def test_method_picks_the_interface(node: NodeNs, method: str, expected: str,
                                    interface: str) -> None:
    node.start("--no-routing", env={"IP_AUTODETECTION_METHOD": method})
    assert registered(node) == expected
    log = node.new_log()
    chosen = [line for line in log.splitlines() if "node address chosen" in line]
    assert chosen, log[-2000:]
    assert f"interface={interface}" in chosen[0] and expected in chosen[0]
    assert method in chosen[0]


def test_an_explicit_ip_is_written(node: NodeNs) -> None:
    node.start("--no-routing", "--ip", "198.51.100.10")
    assert registered(node) == ADDR_B  # a bare address takes its interface's prefix


def test_ip_none_keeps_a_manual_address(node: NodeNs) -> None:
    manual = "10.99.0.5/16"
    p = node.tortie("apply", "-f", "-", stdin=f"""
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: {node.name}
spec:
  bgp:
    ipv4Address: {manual}
""")
    assert p.returncode == 0, p.stderr
    node.start("--no-routing", env={"IP": "none"})
    # registered (orchRefs written) without touching the address
    doc = until_sync(lambda: (d := node.node_resource()) and d["spec"].get("orchRefs") and d,
                     30, "orchRefs written")
    assert doc["spec"]["bgp"]["ipv4Address"] == manual
    node.stop()
    # the default (autodetect) overwrites it: that is what IP=none is for
    node.start("--no-routing")
    until_sync(lambda: node.ipv4_address() == ADDR_A, 30, "autodetected address written")


def test_kubernetes_internal_ip_from_the_node_resource(node: NodeNs) -> None:
    p = node.tortie("apply", "-f", "-", stdin=f"""
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: {node.name}
spec:
  addresses:
  - address: 198.51.100.10
    type: InternalIP
""")
    assert p.returncode == 0, p.stderr
    node.start("--no-routing", "--ip-autodetection-method", "kubernetes-internal-ip")
    assert registered(node) == ADDR_B


def test_a_bad_method_is_a_startup_error_naming_it(node: NodeNs) -> None:
    with pytest.raises(AssertionError) as e:
        node.start("--no-routing", env={"IP_AUTODETECTION_METHOD": "interface=("})
    assert "IP_AUTODETECTION_METHOD" in str(e.value)
    assert node.node_resource() is None  # nothing half-made


def _ipv6_address(node: NodeNs) -> str | None:
    doc = node.node_resource()
    return ((doc or {}).get("spec", {}).get("bgp") or {}).get("ipv6Address")


def test_ip6_autodetect_and_none(node: NodeNs) -> None:
    """IP6 / IP6_AUTODETECTION_METHOD write spec.bgp.ipv6Address as IP does the IPv4 one;
    without IP6 (default none) a manual ipv6Address stays."""
    a6, b6 = "2001:db8:a::10/64", "2001:db8:b::10/64"
    for dev, address in (("ethA", a6), ("ethB", b6)):
        netns.ip("-6", "addr", "replace", address, "dev", dev, "nodad", ns=node.name)
    try:
        node.start("--no-routing", env={"IP6": "autodetect",
                                        "IP6_AUTODETECTION_METHOD": "interface=ethB"})
        until_sync(lambda: _ipv6_address(node) == b6, 30, "the autodetected ipv6Address")
        assert registered(node) == ADDR_A  # IPv4 as before
        node.stop()
        manual = "2001:db8:ff::5/64"
        p = node.tortie("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": node.name},
            "spec": {"bgp": {"ipv4Address": ADDR_A, "ipv6Address": manual}}}))
        assert p.returncode == 0, p.stderr
        node.start("--no-routing")  # IP6 unset: none
        # registered again (orchRefs written back) with the manual address untouched
        until_sync(lambda: (node.node_resource() or {}).get("spec", {}).get("orchRefs"), 30,
                   "orchRefs written")
        assert _ipv6_address(node) == manual
        assert "ipv6Address" not in node.new_log()
    finally:
        for dev, address in (("ethA", a6), ("ethB", b6)):
            netns.ip("-6", "addr", "del", address, "dev", dev, ns=node.name, check=False)
