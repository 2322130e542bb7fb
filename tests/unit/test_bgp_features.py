"""BGPFilter matching, communities, per-peer session settings and ECMP (pure logic):
routing/bgp/filters.py, peers.py, exabgp_config.py, the speaker's per-peer views,
routing/desired.py and the kernel's multipath route arguments."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.resources import ResourceInvalid, to_resource
from routing import desired
from routing.bgp.api import BGPSettings, LearnedRoute, Neighbour, RouteTable
from routing.bgp.exabgp_config import render_config, render_neighbour
from routing.bgp.filters import FilterRule, accepted, communities_for, rules_of
from routing.bgp.peers import compute_settings, reachable_routes
from routing.bgp.speaker import ExaBGPSpeaker, route_attributes
from routing.kernel import RTNH_F_ONLINK, KernelRoute, KernelRoutes


def res(kind: str, name: str, spec: dict[str, Any]) -> Any:
    return to_resource({"apiVersion": "projectcalico.org/v3", "kind": kind,
                        "metadata": {"name": name}, "spec": spec})[1]


def bgp_filter(name: str, **lists: list[dict[str, Any]]) -> Any:
    return res("BGPFilter", name, lists)


def node(name: str, ip: str) -> Any:
    return res("Node", name, {"bgp": {"ipv4Address": f"{ip}/24"}})


NODES = [node("n1", "192.0.2.11"), node("n2", "192.0.2.12")]


# --- the BGPFilter model -----------------------------------------------------------------------


def test_filter_model_validation_names_the_field() -> None:
    f = bgp_filter("f", exportV4=[{"action": "Reject", "matchOperator": "In",
                                   "cidr": "10.0.0.0/8", "prefixLength": {"max": 24}}],
                   importV6=[{"action": "Accept", "matchOperator": "Equal",
                              "cidr": "fd00::/64"}])
    assert f.spec.exportV4[0].prefixLength.max == 24
    bad = [
        ({"exportV4": [{"action": "Reject", "cidr": "10.0.0.0/8"}]},
         "spec.exportV4[0]: cidr and matchOperator must both be set"),
        ({"importV4": [{"action": "Reject", "matchOperator": "In", "cidr": "fd00::/64"}]},
         "spec.importV4[0].cidr: 'fd00::/64' is not an IPv4 CIDR"),
        ({"exportV4": [{"action": "Accept", "prefixLength": {"min": 8}}]},
         "spec.exportV4[0].prefixLength: cidr is required"),
        ({"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In",
                        "prefixLength": {"max": 33}}]},
         "spec.exportV4[0].prefixLength.max: must be between 0 and 32"),
    ]
    for spec, message in bad:
        with pytest.raises(ResourceInvalid, match=message.replace("[", r"\[").replace(
                "]", r"\]")):
            res("BGPFilter", "bad", spec)
    with pytest.raises(ValueError, match="action"):
        res("BGPFilter", "bad", {"exportV4": [{"action": "Drop"}]})
    with pytest.raises(ValueError, match="matchOperator"):
        res("BGPFilter", "bad", {"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                               "matchOperator": "Within"}]})


# --- matching ----------------------------------------------------------------------------------


def rule(action: str = "Reject", **kw: Any) -> FilterRule:
    return FilterRule(action=action, **kw)


@pytest.mark.parametrize(("operator", "prefix", "hit"), [
    ("Equal", "10.65.0.0/16", True), ("Equal", "10.65.1.0/26", False),
    ("NotEqual", "10.65.0.0/16", False), ("NotEqual", "10.65.1.0/26", True),
    ("In", "10.65.1.0/26", True), ("In", "10.65.0.0/16", True), ("In", "10.66.0.0/26", False),
    ("In", "10.0.0.0/8", False),
    ("NotIn", "10.65.1.0/26", False), ("NotIn", "10.66.0.0/26", True),
])
def test_match_operators(operator: str, prefix: str, hit: bool) -> None:
    r = rule(cidr="10.65.0.0/16", operator=operator)
    assert r.matches(prefix) is hit
    assert accepted([r], prefix) is (not hit)


def test_prefix_length_bounds() -> None:
    r = rule(cidr="10.65.0.0/16", operator="In", min_len=24, max_len=26)
    assert [r.matches(p) for p in ("10.65.0.0/16", "10.65.1.0/24", "10.65.1.0/26",
                                   "10.65.1.1/32")] == [False, True, True, False]
    assert rule(cidr="10.65.0.0/16", operator="NotIn", max_len=24).matches("10.65.1.1/32")


def test_first_match_decides_default_accept_and_other_version_skipped() -> None:
    rules = (rule("Accept", cidr="10.65.1.0/26", operator="Equal"),
             rule("Reject", cidr="10.65.0.0/16", operator="In"),
             rule("Reject", version=6))
    assert accepted(rules, "10.65.1.0/26")
    assert not accepted(rules, "10.65.2.0/26")
    assert accepted(rules, "192.168.0.0/24")  # no match: Accept
    assert not accepted((rule("Reject", version=6),), "fd00::/64")
    assert accepted((rule("Reject", version=6),), "10.0.0.0/8")


def test_source_interface_and_peer_type() -> None:
    remote = rule(source="RemotePeers")
    assert not remote.matches("10.0.0.0/8") and remote.matches("10.0.0.0/8", remote=True)
    iface = rule(interface="cali*")
    assert not iface.matches("10.0.0.1/32")  # no interface known: no match
    assert iface.matches("10.0.0.1/32", interface="cali12345")
    assert not iface.matches("10.0.0.1/32", interface="eth0")
    ebgp = rule(peer_type="eBGP")
    assert ebgp.matches("10.0.0.0/8", ebgp=True) and not ebgp.matches("10.0.0.0/8")


def test_rules_of_keeps_filter_order_and_lists() -> None:
    a = bgp_filter("a", exportV4=[{"action": "Accept", "matchOperator": "Equal",
                                   "cidr": "10.65.1.0/26"}],
                   importV4=[{"action": "Reject", "matchOperator": "In",
                              "cidr": "10.70.0.0/16"}])
    b = bgp_filter("b", exportV4=[{"action": "Reject", "matchOperator": "In",
                                   "cidr": "10.65.0.0/16"}],
                   exportV6=[{"action": "Reject"}])
    export = rules_of([a, b], "export")
    assert [(r.origin, r.version) for r in export] == [
        ("a.exportV4[0]", 4), ("b.exportV4[0]", 4), ("b.exportV6[0]", 6)]
    assert accepted(export, "10.65.1.0/26") and not accepted(export, "10.65.2.0/26")
    assert [r.origin for r in rules_of([a, b], "import")] == ["a.importV4[0]"]


# --- communities -------------------------------------------------------------------------------


def test_communities_of_covering_advertisements() -> None:
    ads = (("10.65.0.0/16", ("65001:100", "65001:1:2")), ("10.65.1.0/26", ("65001:200",
                                                                             "65001:100")),
           ("fd00::/64", ("1:1",)))
    assert communities_for("10.65.1.0/26", ads) == (["65001:100", "65001:200"], ["65001:1:2"])
    assert communities_for("10.65.2.0/26", ads) == (["65001:100"], ["65001:1:2"])
    assert communities_for("10.66.0.0/26", ads) == ([], [])
    assert route_attributes("192.0.2.11", "10.65.1.0/26", ads) == (
        "next-hop 192.0.2.11 community [ 65001:100 65001:200 ] "
        "large-community [ 65001:1:2 ]")
    assert route_attributes("192.0.2.11", "10.9.0.0/26", ads) == "next-hop 192.0.2.11"


def test_prefix_advertisements_resolve_names_node_config_first() -> None:
    default = res("BGPConfiguration", "default", {
        "communities": [{"name": "big", "value": "64512:300:100"}],
        "prefixAdvertisements": [{"cidr": "10.65.0.0/16", "communities": ["big", "64512:120"]}]})
    s = compute_settings("n1", NODES, [default], []).settings
    assert s is not None
    assert s.prefix_communities == (("10.65.0.0/16", ("64512:300:100", "64512:120")),)
    own = res("BGPConfiguration", "node.n1", {
        "prefixAdvertisements": [{"cidr": "10.65.1.0/26", "communities": ["1:1"]}]})
    s = compute_settings("n1", NODES, [default, own], []).settings
    assert s is not None and s.prefix_communities == (("10.65.1.0/26", ("1:1",)),)


# --- per-peer settings -------------------------------------------------------------------------


def test_peer_session_settings_and_filters() -> None:
    f = bgp_filter("no-10-66", exportV4=[{"action": "Reject", "matchOperator": "In",
                                          "cidr": "10.66.0.0/16"}])
    peer = res("BGPPeer", "tor", {
        "peerIP": "192.0.2.2", "asNumber": 65001, "localASNumber": 65010,
        "keepaliveTime": "10s", "maxRestartTime": "45s", "sourceAddress": "None",
        "numAllowedLocalASNumbers": 2, "nextHopMode": "Self", "filters": ["no-10-66"]})
    s = compute_settings("n1", NODES, [], [peer], filters={"no-10-66": f}).settings
    assert s is not None
    tor = next(n for n in s.neighbours if n.address == "192.0.2.2")
    assert (tor.local_asn, tor.hold_time, tor.restart_time, tor.source_address,
            tor.allowed_local_as, tor.next_hop_self) == (65010, 30, 45, False, 2, True)
    assert [r.origin for r in tor.export_rules] == ["no-10-66.exportV4[0]"]
    assert tor.import_rules == ()
    mesh = next(n for n in s.neighbours if n.kind == "mesh")
    assert mesh.export_rules == () and mesh.hold_time is None and mesh.source_address

    block = render_neighbour(s, tor)
    assert "local-address" not in block
    assert "    local-as 65010;" in block and "    hold-time 30;" in block
    assert "graceful-restart 45;" in block
    mesh_block = render_neighbour(s, mesh)
    assert "    local-address 192.0.2.11;" in mesh_block and "    hold-time 90;" in mesh_block
    assert "graceful-restart 120;" in mesh_block and "    local-as 64512;" in mesh_block
    assert render_config(s, ["relay"]).count("neighbor ") == 2


def test_missing_filter_holds_the_peering_back() -> None:
    peer = res("BGPPeer", "tor", {"peerIP": "192.0.2.2", "asNumber": 65001,
                                  "filters": ["absent"]})
    r = compute_settings("n1", NODES, [], [peer], filters={})
    assert r.settings is not None
    assert "192.0.2.2" not in {n.address for n in r.settings.neighbours}
    assert any("BGPFilter 'absent' does not exist" in m for m in r.skipped)


def test_reachable_by_routes() -> None:
    peers = [res("BGPPeer", "tor", {"peerIP": "198.51.100.1", "asNumber": 65001,
                                    "reachableBy": "192.0.2.1"}),
             res("BGPPeer", "other", {"node": "n2", "peerIP": "198.51.100.2",
                                      "asNumber": 65001, "reachableBy": "192.0.2.1"}),
             res("BGPPeer", "plain", {"peerIP": "198.51.100.3", "asNumber": 65001})]
    assert reachable_routes("n1", NODES, peers) == {"198.51.100.1/32": "192.0.2.1"}
    me = desired.NodeInfo("n1", "192.0.2.11", "192.0.2.0/24")
    got = desired.compute(me, {"n1": me}, [], [], {}, {"198.51.100.1/32": "192.0.2.1"})
    assert got.routes["198.51.100.1/32"] == desired.Route("198.51.100.1/32", "direct",
                                                          "192.0.2.1")


# --- the speaker's per-peer views ---------------------------------------------------------------


def speaker_with(settings: BGPSettings) -> ExaBGPSpeaker:
    sp = ExaBGPSpeaker("/nonexistent/run")
    sp.settings = settings
    sp._sync_peers(settings)
    return sp


def test_export_filter_and_communities_per_peer() -> None:
    tor = Neighbour("192.0.2.2", 65001, "global", "tor", export_rules=(
        FilterRule("Reject", cidr="10.65.2.0/26", operator="Equal"),))
    mesh = Neighbour("192.0.2.12", 64512)
    s = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (tor, mesh),
                    prefix_communities=(("10.65.0.0/16", ("64512:120",)),))
    sp = speaker_with(s)
    sp._wanted = {"10.65.1.0/26": "192.0.2.11", "10.65.2.0/26": "192.0.2.11"}
    assert sp.exported_to("192.0.2.2") == {
        "10.65.1.0/26": "next-hop 192.0.2.11 community [ 64512:120 ]"}
    assert set(sp.exported_to("192.0.2.12")) == {"10.65.1.0/26", "10.65.2.0/26"}


def test_import_filter_and_local_as_loop() -> None:
    tor = Neighbour("192.0.2.2", 65001, "global", "tor", import_rules=(
        FilterRule("Reject", cidr="10.70.0.0/16", operator="In"),))
    s = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (tor,))
    sp = speaker_with(s)
    sp.table.by_peer["192.0.2.2"] = {
        "10.70.1.0/24": LearnedRoute("10.70.1.0/24", "192.0.2.2", "192.0.2.2", (65001,)),
        "10.80.0.0/24": LearnedRoute("10.80.0.0/24", "192.0.2.2", "192.0.2.2", (65001,)),
        "10.90.0.0/24": LearnedRoute("10.90.0.0/24", "192.0.2.2", "192.0.2.2",
                                     (65001, 64512)),
    }
    assert set(sp.accepted_table().best()) == {"10.80.0.0/24"}
    sp.settings = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (
        Neighbour("192.0.2.2", 65001, "global", "tor", allowed_local_as=1),))
    sp._sync_peers(sp.settings)
    assert set(sp.accepted_table().best()) == {"10.70.1.0/24", "10.80.0.0/24",
                                               "10.90.0.0/24"}


# --- ECMP ---------------------------------------------------------------------------------------


def test_route_table_merges_equal_paths() -> None:
    t = RouteTable()
    for peer in ("192.0.2.13", "192.0.2.12", "192.0.2.14"):
        t.by_peer[peer] = {"203.0.113.7/32": LearnedRoute("203.0.113.7/32", peer, peer)}
    t.by_peer["192.0.2.2"] = {"203.0.113.7/32": LearnedRoute(
        "203.0.113.7/32", "192.0.2.2", "192.0.2.2", (65001,))}
    r = t.best()["203.0.113.7/32"]
    assert r.next_hop == "192.0.2.12"
    assert r.next_hops == ("192.0.2.12", "192.0.2.13", "192.0.2.14")
    single = RouteTable({"192.0.2.12": {"10.0.0.0/24": LearnedRoute(
        "10.0.0.0/24", "192.0.2.12", "192.0.2.12")}}).best()["10.0.0.0/24"]
    assert single.next_hops == () and single.gateways == ("192.0.2.12",)


def test_desired_multipath_direct_and_mixed() -> None:
    me = desired.NodeInfo("n1", "192.0.2.11", "192.0.2.0/24")
    nodes = {n: desired.NodeInfo(n, f"192.0.2.{i}", "192.0.2.0/24")
             for n, i in (("n1", 11), ("n2", 12), ("n3", 13))}
    r = LearnedRoute("203.0.113.7/32", "192.0.2.12", "192.0.2.12",
                     next_hops=("192.0.2.12", "192.0.2.13"))
    got = desired.compute(me, nodes, [], [], {"203.0.113.7/32": r})
    route = got.routes["203.0.113.7/32"]
    assert (route.kind, route.gateway, route.gateways) == (
        "direct", "192.0.2.12", ("192.0.2.12", "192.0.2.13"))
    assert route.describe() == "203.0.113.7/32 via 192.0.2.12 via 192.0.2.13"
    # one next hop through VXLAN, the other direct: the best path alone
    pool = desired.parse_pool({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                               "metadata": {"name": "p"},
                               "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"}})
    far = desired.NodeInfo("n4", "198.51.100.4", "198.51.100.0/24", vxlan_address="10.244.4.0",
                           vxlan_mac="02:00:00:00:00:04")
    nodes["n4"] = far
    r = LearnedRoute("10.244.9.0/26", "192.0.2.12", "192.0.2.12",
                     next_hops=("192.0.2.12", "198.51.100.4"))
    got = desired.compute(me, nodes, [pool], [], {"10.244.9.0/26": r})
    route = got.routes["10.244.9.0/26"]
    assert (route.kind, route.gateway, route.gateways) == ("direct", "192.0.2.12", ())
    assert any("reached differently" in s for s in got.skipped)


def test_kernel_multipath_arguments_and_matching() -> None:
    k = KernelRoutes()
    want = desired.Route("203.0.113.7/32", "direct", "192.0.2.12",
                         gateways=("192.0.2.12", "192.0.2.13"))
    args = k._args(want, None)
    assert "gateway" not in args and args["family"] == 2
    assert args["multipath"] == [{"gateway": "192.0.2.12"}, {"gateway": "192.0.2.13"}]
    vx = desired.Route("10.244.9.0/26", "vxlan", "10.244.2.0", "vxlan.tortie",
                       gateways=("10.244.2.0", "10.244.3.0"))
    assert k._args(vx, 7)["multipath"] == [
        {"gateway": "10.244.2.0", "oif": 7, "flags": RTNH_F_ONLINK},
        {"gateway": "10.244.3.0", "oif": 7, "flags": RTNH_F_ONLINK}]
    have = KernelRoute("203.0.113.7/32", 1, None, 3, False,
                       gateways=("192.0.2.12", "192.0.2.13"))
    assert k._matches(have, want, None)
    single = desired.Route("203.0.113.7/32", "direct", "192.0.2.12")
    assert not k._matches(have, single, None)
    assert not k._matches(KernelRoute("203.0.113.7/32", 1, "192.0.2.12", 3, False), want,
                          None)
    assert k._matches(KernelRoute("203.0.113.7/32", 1, "192.0.2.12", 3, False), single, None)
