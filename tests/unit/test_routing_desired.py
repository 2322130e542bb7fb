"""routing/desired.py: announcements, kernel routes and encapsulation decisions (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from ipam.blocks import Block
from routing import desired
from routing.bgp.api import LearnedRoute
from routing.nat import render


def pool(cidr: str = "10.244.0.0/16", **spec: Any) -> Any:
    return desired.parse_pool({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": f"p-{cidr.replace('/', '-').replace(':', 'x')}"},
                          "spec": {"cidr": cidr, **spec}})


def node(name: str, cidr: str, **spec: Any) -> desired.NodeInfo:
    return desired.parse_node({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                          "metadata": {"name": name},
                          "spec": {"bgp": {"ipv4Address": cidr}, **spec}})


def block(cidr: str, owner: str | None, holders: dict[str, str] | None = None) -> Block:
    b = Block.new(cidr, f"host:{owner}" if owner else None)
    for ip, who in (holders or {}).items():
        b.assign_ip(ip, {"handle": f"h-{ip}", "node": who})
    return b


ME = node("n1", "192.0.2.11/24")
SAME = node("n2", "192.0.2.12/24", ipv4VXLANTunnelAddr="10.244.2.0",
            vxlanTunnelMACAddr="02:00:00:00:00:02")
OTHER = node("n3", "198.51.100.13/24", ipv4VXLANTunnelAddr="10.244.3.0",
             vxlanTunnelMACAddr="02:00:00:00:00:03")
NODES = {n.name: n for n in (ME, SAME, OTHER)}


def learnt(*pairs: tuple[str, str]) -> dict[str, LearnedRoute]:
    return {p: LearnedRoute(p, nh, nh) for p, nh in pairs}


def test_node_info_from_resource() -> None:
    assert (ME.address, ME.network) == ("192.0.2.11", "192.0.2.0/24")
    assert OTHER.vxlan_address == "10.244.3.0" and OTHER.vxlan_mac == "02:00:00:00:00:03"


def test_announces_owned_blocks_and_borrowed_addresses() -> None:
    blocks = [block("10.244.1.0/26", "n1"),
              block("10.244.2.0/26", "n2", {"10.244.2.5": "n1", "10.244.2.6": "n2"}),
              block("10.244.9.0/26", "n3")]
    got = desired.announcements(ME, [pool()], blocks)
    assert got == {"10.244.1.0/26": "192.0.2.11", "10.244.2.5/32": "192.0.2.11"}


def test_disable_bgp_export_is_not_announced() -> None:
    blocks = [block("10.244.1.0/26", "n1"), block("10.99.0.0/26", "n1")]
    got = desired.announcements(ME, [pool(), pool("10.99.0.0/16", disableBGPExport=True)], blocks)
    assert got == {"10.244.1.0/26": "192.0.2.11"}


def test_blackhole_per_owned_block_and_direct_routes_when_unencapsulated() -> None:
    blocks = [block("10.244.1.0/26", "n1"), block("10.244.1.64/26", "n1")]
    d = desired.compute(ME, NODES, [pool()], blocks,
                   learnt(("10.244.2.0/26", "192.0.2.12"), ("10.244.3.0/26", "198.51.100.13")))
    assert d.routes["10.244.1.0/26"].kind == "blackhole"
    assert d.routes["10.244.1.64/26"].kind == "blackhole"
    assert d.routes["10.244.2.0/26"] == desired.Route("10.244.2.0/26", "direct", "192.0.2.12")
    assert d.routes["10.244.3.0/26"] == desired.Route("10.244.3.0/26", "direct", "198.51.100.13")
    assert not d.vxlan_needed and not d.vxlan_peers


@pytest.mark.parametrize(("mode", "same_kind", "other_kind"), [
    ("Always", "vxlan", "vxlan"),
    ("CrossSubnet", "direct", "vxlan"),
    ("Never", "direct", "direct"),
])
def test_vxlan_modes(mode: str, same_kind: str, other_kind: str) -> None:
    d = desired.compute(ME, NODES, [pool(vxlanMode=mode)], [],
                   learnt(("10.244.2.0/26", "192.0.2.12"), ("10.244.3.0/26", "198.51.100.13")))
    assert d.routes["10.244.2.0/26"].kind == same_kind
    assert d.routes["10.244.3.0/26"].kind == other_kind
    if other_kind == "vxlan":
        r = d.routes["10.244.3.0/26"]
        assert (r.gateway, r.device, r.onlink) == ("10.244.3.0", desired.VXLAN_DEVICE, True)
        assert d.vxlan_peers["n3"] == desired.VXLANPeer("n3", "10.244.3.0", "02:00:00:00:00:03",
                                                   "198.51.100.13")
    assert d.vxlan_needed == (mode != "Never")


@pytest.mark.parametrize(("mode", "same_kind", "other_kind"), [
    ("Always", "ipip", "ipip"), ("CrossSubnet", "direct", "ipip")])
def test_ipip_modes(mode: str, same_kind: str, other_kind: str) -> None:
    d = desired.compute(ME, NODES, [pool(ipipMode=mode)], [],
                   learnt(("10.244.2.0/26", "192.0.2.12"), ("10.244.3.0/26", "198.51.100.13")))
    assert d.routes["10.244.2.0/26"].kind == same_kind
    r = d.routes["10.244.3.0/26"]
    assert (r.kind, r.gateway, r.device) == (other_kind, "198.51.100.13", desired.IPIP_DEVICE)
    assert d.ipip_needed


def test_vxlan_peer_without_vtep_falls_back_to_direct_and_says_why() -> None:
    bare = node("n4", "198.51.100.14/24")
    d = desired.compute(ME, {**NODES, "n4": bare}, [pool(vxlanMode="Always")], [],
                   learnt(("10.244.4.0/26", "198.51.100.14")))
    assert d.routes["10.244.4.0/26"].kind == "direct"
    assert any("n4" in s for s in d.skipped)


def test_own_blocks_win_over_learnt_and_own_next_hop_is_ignored() -> None:
    blocks = [block("10.244.1.0/26", "n1")]
    d = desired.compute(ME, NODES, [pool()], blocks,
                   learnt(("10.244.1.0/26", "192.0.2.12"), ("10.244.7.0/26", "192.0.2.11")))
    assert d.routes["10.244.1.0/26"].kind == "blackhole"
    assert "10.244.7.0/26" not in d.routes


def test_borrowed_address_of_a_peer_is_routed_via_it_inside_our_block() -> None:
    blocks = [block("10.244.1.0/26", "n1", {"10.244.1.9": "n2"})]
    d = desired.compute(ME, NODES, [pool()], blocks, learnt(("10.244.1.9/32", "192.0.2.12")))
    assert d.routes["10.244.1.9/32"] == desired.Route("10.244.1.9/32", "direct", "192.0.2.12")
    assert d.routes["10.244.1.0/26"].kind == "blackhole"
    assert "10.244.1.9/32" not in d.announce


def test_routes_outside_pools_are_direct() -> None:
    d = desired.compute(ME, NODES, [pool(vxlanMode="Always")], [],
                   learnt(("172.16.0.0/24", "192.0.2.12")))
    assert d.routes["172.16.0.0/24"].kind == "direct"


def test_same_subnet() -> None:
    assert desired.same_subnet(ME, SAME)
    assert not desired.same_subnet(ME, OTHER)
    assert not desired.same_subnet(ME, desired.NodeInfo("x"))


def test_vtep_mac_is_stable_local_unicast() -> None:
    mac = desired.vtep_mac("node1")
    assert mac == desired.vtep_mac("node1") != desired.vtep_mac("node2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_masquerade_sets_and_nat_table() -> None:
    masq, every = desired.masquerade_sets([pool(natOutgoing=True), pool("10.99.0.0/16")])
    assert masq == ["10.244.0.0/16"] and every == ["10.244.0.0/16", "10.99.0.0/16"]
    script = render(masq, every, ["192.0.2.11", "192.0.2.12"])
    assert "table ip tortie-nat" in script and "inet" not in script
    assert "ip saddr @masq-pools ip daddr != @all-pools ip daddr != @no-masq" in script
    assert "set no-masq { type ipv4_addr; flags interval; auto-merge; elements = { " \
           "192.0.2.11, 192.0.2.12 }; }" in script


def test_never_masqueraded_nodes_and_bgp_peers() -> None:
    """Pod traffic to a node (any of its addresses) or a BGP peer keeps the pod's address: it
    must never reach them as another node, one of their BGP peers."""
    from datastore.model_bgp import BGPPeer
    from datastore.model_network import Node

    n = Node.model_validate({"metadata": {"name": "n1"}, "spec": {
        "bgp": {"ipv4Address": "192.0.2.11/24", "ipv6Address": "fd00::11/64"},
        "ipv4VXLANTunnelAddr": "10.244.7.0",
        "addresses": [{"address": "198.51.100.11", "type": "InternalIP"},
                      {"address": "n1.example", "type": "Hostname"}]}})
    assert n.host_addresses() == ["10.244.7.0", "192.0.2.11", "198.51.100.11", "fd00::11"]
    peers = [BGPPeer.model_validate({"metadata": {"name": name}, "spec": spec})
             for name, spec in (("tor", {"peerIP": "192.0.2.254:1179", "asNumber": 65001}),
                                ("v6", {"peerIP": "fd00::1", "asNumber": 65001}),
                                ("mesh", {"peerSelector": "all()"}))]
    assert desired.never_masqueraded([n], peers) == ["10.244.7.0", "192.0.2.11", "192.0.2.254",
                                                "198.51.100.11"]


def test_block_view_is_what_one_node_routes_of_a_block() -> None:
    base = block("10.244.1.0/26", "n1")
    own = block("10.244.1.0/26", "n1", {"10.244.1.5": "n1"})
    borrowed = block("10.244.1.0/26", "n1", {"10.244.1.6": "n2"})
    vtep = Block.new("10.244.1.0/26", "host:n1")
    vtep.assign_ip("10.244.1.0", {"handle": "vxlan-tunnel-addr-n1", "node": "n1"})
    view = desired.block_view
    # the owner: its own pods change nothing; its block appearing or going does, so does
    # its tunnel address
    assert view(base, "n1") == view(own, "n1") == view(borrowed, "n1")
    assert view(None, "n1") != view(base, "n1")
    assert view(base, "n1") != view(vtep, "n1")
    assert view(base, "n1") != view(block("10.244.1.0/26", "n2"), "n1")
    # another node: n1's block coming, filling and going means nothing to n3 ...
    assert view(None, "n3") == view(base, "n3") == view(own, "n3") == view(vtep, "n3")
    # ... but to n2, an address it borrowed from it does
    assert view(base, "n2") != view(borrowed, "n2")


# --- IPv6 ----------------------------------------------------------------------------------

ME6 = desired.parse_node({"metadata": {"name": "n1"}, "spec": {"bgp": {
    "ipv4Address": "192.0.2.11/24", "ipv6Address": "2001:db8:0:1::11/64"}}})
V6POOL = "fd00:10:244::/56"


def test_node_info_ipv6_address() -> None:
    assert ME6.address6 == "2001:db8:0:1::11" and ME.address6 is None


def test_ipv6_blocks_announced_with_the_ipv6_next_hop() -> None:
    blocks = [block("10.244.1.0/26", "n1"), block("fd00:10:244::/122", "n1"),
              block("fd00:10:244::40/122", "n2", {"fd00:10:244::45": "n1"})]
    got = desired.announcements(ME6, [pool(), pool(V6POOL)], blocks)
    assert got == {"10.244.1.0/26": "192.0.2.11", "fd00:10:244::/122": "2001:db8:0:1::11",
                   "fd00:10:244::45/128": "2001:db8:0:1::11"}
    # without an IPv6 address, nothing IPv6 is announced (there is no next hop)
    assert desired.announcements(ME, [pool(), pool(V6POOL)], blocks) == {
        "10.244.1.0/26": "192.0.2.11"}


def test_ipv6_blackholes_and_direct_routes() -> None:
    blocks = [block("fd00:10:244::/122", "n1")]
    d = desired.compute(ME6, NODES, [pool(V6POOL, vxlanMode="Always")], blocks, learnt(
        ("fd00:10:244::40/122", "2001:db8:0:1::12"),
        ("fd00:10:244::/122", "2001:db8:0:1::12"),       # ours: a stale announcement
        ("fd00:10:244::80/122", "2001:db8:0:1::11"),     # our own next hop
        ("fd00:10:244::c0/122", "fe80::1")))             # no usable next hop
    assert d.routes["fd00:10:244::/122"].kind == "blackhole"
    assert d.routes["fd00:10:244::40/122"] == desired.Route(
        "fd00:10:244::40/122", "direct", "2001:db8:0:1::12")
    assert "fd00:10:244::80/122" not in d.routes and "fd00:10:244::c0/122" not in d.routes
    assert any("fd00:10:244::c0/122" in s for s in d.skipped)


def test_ipv6_masquerade_sets_and_nat_table() -> None:
    pools = [pool(natOutgoing=True), pool(V6POOL, natOutgoing=True), pool("fd00:99::/56")]
    masq, every = desired.masquerade_sets(pools, 6)
    assert masq == [V6POOL] and every == ["fd00:10:244::/56", "fd00:99::/56"]
    script = render(masq, every, ["2001:db8:0:1::11"], version=6)
    assert "table ip6 tortie-nat {" in script and "table ip " not in script
    assert "ip6 saddr @masq-pools ip6 daddr != @all-pools ip6 daddr != @no-masq" in script
    assert "type ipv6_addr;" in script and "ipv4_addr" not in script


def test_ipv6_never_masqueraded() -> None:
    from datastore.model_bgp import BGPPeer
    from datastore.model_network import Node

    n = Node.model_validate({"metadata": {"name": "n1"}, "spec": {
        "bgp": {"ipv4Address": "192.0.2.11/24", "ipv6Address": "2001:db8:0:1::11/64"}}})
    peer = BGPPeer.model_validate({"metadata": {"name": "v6"},
                                   "spec": {"peerIP": "[2001:db8::1]:179", "asNumber": 65001}})
    assert desired.never_masqueraded([n], [peer], 6) == ["2001:db8::1", "2001:db8:0:1::11"]


def test_kernel_default_metric_per_family() -> None:
    from routing.kernel import IPV6_DEFAULT_METRIC, default_metric

    assert default_metric("10.244.1.0/26") == 0
    assert default_metric("fd00:10:244::/122") == IPV6_DEFAULT_METRIC == 1024


# --- IPv6 VXLAN (vxlan-v6.tortie) ------------------------------------------------------------


def node6(name: str, v4: str, v6: str, **spec: Any) -> desired.NodeInfo:
    return desired.parse_node({"metadata": {"name": name}, "spec": {
        "bgp": {"ipv4Address": v4, "ipv6Address": v6}, **spec}})


N2_6 = node6("n2", "192.0.2.12/24", "2001:db8:0:1::12/64",
             ipv6VXLANTunnelAddr="fd00:10:244::40", vxlanTunnelMACAddrV6="02:00:00:00:06:02")
N3_6 = node6("n3", "198.51.100.13/24", "2001:db8:0:2::13/64",
             ipv6VXLANTunnelAddr="fd00:10:244::80", vxlanTunnelMACAddrV6="02:00:00:00:06:03")
NODES6 = {n.name: n for n in (ME6, N2_6, N3_6)}
LEARNT6 = (("fd00:10:244::40/122", "2001:db8:0:1::12"), ("fd00:10:244::80/122", "2001:db8:0:2::13"))


def test_node_info_ipv6_vxlan_fields() -> None:
    assert (N2_6.vxlan_address6, N2_6.vxlan_mac6) == ("fd00:10:244::40", "02:00:00:00:06:02")
    assert N2_6.network6 == "2001:db8:0:1::/64" and ME.network6 is None


def test_ipv6_pool_vxlan_always_routes_through_vxlan_v6() -> None:
    d = desired.compute(ME6, NODES6, [pool(), pool(V6POOL, vxlanMode="Always")], [],
                        learnt(*LEARNT6))
    assert d.vxlan6_needed and not d.vxlan_needed  # the IPv4 pool does not encapsulate
    assert d.routes["fd00:10:244::40/122"] == desired.Route(
        "fd00:10:244::40/122", "vxlan", "fd00:10:244::40", desired.VXLAN_DEVICE_V6)
    assert d.routes["fd00:10:244::80/122"].device == "vxlan-v6.tortie"
    assert d.routes["fd00:10:244::80/122"].describe() == (
        "fd00:10:244::80/122 via fd00:10:244::80 dev vxlan-v6.tortie onlink")
    assert d.vxlan_peers6 == {
        "n2": desired.VXLANPeer("n2", "fd00:10:244::40", "02:00:00:00:06:02", "2001:db8:0:1::12"),
        "n3": desired.VXLANPeer("n3", "fd00:10:244::80", "02:00:00:00:06:03", "2001:db8:0:2::13")}
    assert d.vxlan_peers == {}


def test_ipv6_pool_vxlan_cross_subnet_uses_the_ipv6_subnets() -> None:
    d = desired.compute(ME6, NODES6, [pool(V6POOL, vxlanMode="CrossSubnet")], [],
                        learnt(*LEARNT6))
    assert d.routes["fd00:10:244::40/122"] == desired.Route(
        "fd00:10:244::40/122", "direct", "2001:db8:0:1::12")
    assert d.routes["fd00:10:244::80/122"].kind == "vxlan"
    # IPv4 and IPv6 subnets are judged apart: same IPv4 subnet, other IPv6 subnet
    odd = node6("n2", "192.0.2.12/24", "2001:db8:0:9::12/64",
                ipv6VXLANTunnelAddr="fd00:10:244::40", vxlanTunnelMACAddrV6="02:00:00:00:06:02")
    assert desired.same_subnet(ME6, odd) and not desired.same_subnet(ME6, odd, 6)
    d = desired.compute(ME6, {**NODES6, "n2": odd}, [pool(V6POOL, vxlanMode="CrossSubnet")], [],
                        learnt(("fd00:10:244::40/122", "2001:db8:0:9::12")))
    assert d.routes["fd00:10:244::40/122"].kind == "vxlan"


def test_ipv6_vxlan_without_the_peers_vtep_routes_directly_and_says_why() -> None:
    bare = node6("n2", "192.0.2.12/24", "2001:db8:0:1::12/64")
    d = desired.compute(ME6, {"n1": ME6, "n2": bare}, [pool(V6POOL, vxlanMode="Always")], [],
                        learnt(LEARNT6[0]))
    assert d.routes["fd00:10:244::40/122"].kind == "direct"
    assert any("no IPv6 VXLAN tunnel" in s for s in d.skipped)
    assert d.vxlan_peers6 == {}


def test_ipv4_pool_vxlan_does_not_make_the_ipv6_device() -> None:
    d = desired.compute(ME6, NODES6, [pool(vxlanMode="Always"), pool(V6POOL)], [],
                        learnt(*LEARNT6))
    assert d.vxlan_needed and not d.vxlan6_needed
    assert {r.kind for r in d.routes.values()} == {"direct"}


def test_ipv6_vtep_mac_is_stable_local_unicast_and_not_the_ipv4_one() -> None:
    mac6 = desired.vtep_mac("n1", 6)
    assert mac6 == desired.vtep_mac("n1", 6) != desired.vtep_mac("n1")
    first = int(mac6.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
