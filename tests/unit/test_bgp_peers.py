"""Who a node peers with (routing/bgp/peers.py), Calico's rules."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.resources import to_resource
from routing.bgp.api import Neighbour
from routing.bgp.peers import (
    MissingPassword,
    compute_settings,
    duration_seconds,
    password_problem,
)


def res(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return to_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta,
                        "spec": spec})[1]


def node(name: str, ip: str | None, *, asn: int | None = None, cid: str | None = None,
         labels: dict[str, str] | None = None) -> Any:
    bgp: dict[str, Any] = {}
    if ip:
        bgp["ipv4Address"] = f"{ip}/24"
    if asn:
        bgp["asNumber"] = asn
    if cid:
        bgp["routeReflectorClusterID"] = cid
    return res("Node", name, {"bgp": bgp} if bgp else {}, labels)


NODES = [node("n1", "192.0.2.11"), node("n2", "192.0.2.12"), node("n3", "192.0.2.13"),
         node("nobgp", None)]


def by_addr(result: Any) -> dict[str, Neighbour]:
    return {n.address: n for n in result.settings.neighbours}


def test_default_full_mesh() -> None:
    r = compute_settings("n1", NODES, [], [])
    s = r.settings
    assert s is not None
    assert (s.router_id, s.local_address, s.asn, s.listen_port) == (
        "192.0.2.11", "192.0.2.11", 64512, 179)
    assert [(n.address, n.asn, n.kind, n.name) for n in s.neighbours] == [
        ("192.0.2.12", 64512, "mesh", "n2"), ("192.0.2.13", 64512, "mesh", "n3")]
    assert s.cluster_id is None and s.graceful_restart == 120
    # one-way mesh as Calico's: wait for higher addresses, connect to lower ones
    assert [n.passive for n in s.neighbours] == [True, True]
    s3 = compute_settings("n3", NODES, [], []).settings
    assert s3 is not None and not any(n.passive for n in s3.neighbours)


def test_cluster_and_node_as_numbers_and_listen_port() -> None:
    nodes = [node("n1", "192.0.2.11"), node("n2", "192.0.2.12", asn=65002)]
    cfg = [res("BGPConfiguration", "default", {"asNumber": 65000, "listenPort": 1790}),
           res("BGPConfiguration", "node.n2", {"listenPort": 1791})]
    s1 = compute_settings("n1", nodes, cfg, []).settings
    s2 = compute_settings("n2", nodes, cfg, []).settings
    assert s1 is not None and s2 is not None
    assert (s1.asn, s1.listen_port, s1.neighbours[0].asn) == (65000, 1790, 65002)
    assert (s2.asn, s2.listen_port, s2.neighbours[0].asn) == (65002, 1791, 65000)


def test_mesh_disabled_leaves_only_bgppeers() -> None:
    cfg = [res("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False})]
    peers = [res("BGPPeer", "tor", {"peerIP": "192.0.2.1:1790", "asNumber": 65001})]
    r = compute_settings("n1", NODES, cfg, peers)
    assert [(n.address, n.asn, n.kind, n.name, n.port) for n in r.settings.neighbours] == [
        ("192.0.2.1", 65001, "global", "tor", 1790)]


def test_node_without_address_runs_no_bgp() -> None:
    assert compute_settings("nobgp", NODES, [], []).settings is None
    r = compute_settings("ghost", NODES, [], [])
    assert r.settings is None and "ghost" in r.reason


def test_node_specific_and_selector_peers() -> None:
    nodes = [node("n1", "192.0.2.11", labels={"rack": "a"}),
             node("n2", "192.0.2.12", labels={"rack": "b"})]
    peers = [res("BGPPeer", "only-n2", {"node": "n2", "peerIP": "192.0.2.201",
                                        "asNumber": 65010}),
             res("BGPPeer", "rack-a", {"nodeSelector": "rack == 'a'", "peerIP": "192.0.2.202",
                                       "asNumber": 65020, "keepOriginalNextHop": True})]
    n1, n2 = by_addr(compute_settings("n1", nodes, [], peers)), by_addr(
        compute_settings("n2", nodes, [], peers))
    assert "192.0.2.202" in n1 and "192.0.2.201" not in n1
    assert n1["192.0.2.202"].kind == "node" and n1["192.0.2.202"].keep_next_hop
    assert "192.0.2.201" in n2 and "192.0.2.202" not in n2


def test_route_reflectors_by_peer_selector() -> None:
    """Calico's RR setup: mesh off, RR nodes labelled, clients peer with the RRs, RRs
    with everyone; a node whose cluster ID differs is the RR's client."""
    nodes = [node("rr1", "192.0.2.11", cid="244.0.0.1", labels={"rr": "true"}),
             node("rr2", "192.0.2.12", cid="244.0.0.1", labels={"rr": "true"}),
             node("c1", "192.0.2.13"), node("c2", "192.0.2.14")]
    cfg = [res("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False})]
    peers = [res("BGPPeer", "peer-with-rrs", {"peerSelector": "has(rr)"}),
             res("BGPPeer", "rrs-with-all", {"nodeSelector": "has(rr)", "peerSelector": "all()"})]
    rr1 = compute_settings("rr1", nodes, cfg, peers).settings
    assert rr1 is not None and rr1.cluster_id == "244.0.0.1"
    rr1n = {n.address: n for n in rr1.neighbours}
    assert set(rr1n) == {"192.0.2.12", "192.0.2.13", "192.0.2.14"}  # never itself
    assert not rr1n["192.0.2.12"].rr_client          # same cluster ID: not a client
    assert rr1n["192.0.2.13"].rr_client and rr1n["192.0.2.13"].kind == "route-reflector-client"
    c1 = compute_settings("c1", nodes, cfg, peers).settings
    assert c1 is not None and c1.cluster_id is None
    assert {n.address for n in c1.neighbours} == {"192.0.2.11", "192.0.2.12"}
    assert not any(n.rr_client for n in c1.neighbours)


def test_explicit_peer_wins_over_mesh_and_passwords() -> None:
    secrets = {("bgp", "mesh"): "m3sh", ("bgp", "n2"): "s3cret"}
    cfg = [res("BGPConfiguration", "default", {
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}}})]
    peers = [res("BGPPeer", "to-n2", {"node": "n1", "peerIP": "192.0.2.12", "asNumber": 64512,
                                      "password": {"secretKeyRef": {"name": "bgp",
                                                                    "key": "n2"}}}),
             res("BGPPeer", "missing", {"peerIP": "192.0.2.99", "asNumber": 65000,
                                        "password": {"secretKeyRef": {"name": "nope",
                                                                      "key": "x"}}})]
    r = compute_settings("n1", NODES, cfg, peers,
                         secrets=lambda name, key: secrets.get((name, key)))
    n = by_addr(r)
    assert (n["192.0.2.12"].kind, n["192.0.2.12"].password) == ("node", "s3cret")
    assert (n["192.0.2.13"].kind, n["192.0.2.13"].password) == ("mesh", "m3sh")
    assert "192.0.2.99" not in n
    assert r.missing_passwords == [MissingPassword("BGPPeer missing", "nope", "x", "not found")]


def test_missing_password_holds_the_peering_back_and_keeps_the_mesh_off_its_address() -> None:
    """A node-specific BGPPeer to another node, its secret missing: no session with that
    address at all (the mesh session would be one without the password)."""
    peers = [res("BGPPeer", "to-n2", {"node": "n1", "peerIP": "192.0.2.12", "asNumber": 64512,
                                      "password": {"secretKeyRef": {"name": "bgp",
                                                                    "key": "n2"}}})]
    r = compute_settings("n1", NODES, [], peers, secrets=lambda name, key: None)
    assert set(by_addr(r)) == {"192.0.2.13"}  # the mesh with n3 only
    assert [(m.peer, m.secret, m.key) for m in r.missing_passwords] == [
        ("BGPPeer to-n2", "bgp", "n2")]
    # the secret appears: the peering comes with the password
    r = compute_settings("n1", NODES, [], peers, secrets=lambda name, key: "s3cret")
    assert by_addr(r)["192.0.2.12"].password == "s3cret" and r.missing_passwords == []


def test_optional_secret_missing_peers_without_password() -> None:
    peers = [res("BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 65001,
                                    "password": {"secretKeyRef": {"name": "bgp", "key": "k",
                                                                  "optional": True}}})]
    r = compute_settings("n1", NODES, [], peers, secrets=lambda name, key: None)
    assert by_addr(r)["192.0.2.1"].password is None and r.missing_passwords == []


def test_missing_mesh_password_holds_every_mesh_session_back() -> None:
    cfg = [res("BGPConfiguration", "default", {
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}}})]
    r = compute_settings("n1", NODES, cfg, [], secrets=lambda name, key: None)
    assert r.settings is not None and r.settings.neighbours == ()
    assert [m.peer for m in r.missing_passwords] == ["node mesh"]


@pytest.mark.parametrize("value,problem", [
    ("", "empty"), ("x" * 81, "longer than 80 bytes"), ("a;b", "cannot carry"),
    ("a\nb", "cannot carry"), ('a"b', "cannot carry")])
def test_unusable_password_holds_the_peering_back(value: str, problem: str) -> None:
    assert problem in (password_problem(value) or "")
    peers = [res("BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 65001,
                                    "password": {"secretKeyRef": {"name": "bgp", "key": "k"}}})]
    r = compute_settings("n1", NODES, [], peers, secrets=lambda name, key: value)
    assert "192.0.2.1" not in by_addr(r)
    assert r.missing_passwords[0].problem.startswith("unusable: ")
    assert password_problem("x" * 80) is None and password_problem("Pa$$-w0rd ok") is None


def test_mesh_restart_time_and_bad_selector_skipped() -> None:
    cfg = [res("BGPConfiguration", "default", {"nodeMeshMaxRestartTime": "2m30s"})]
    s = compute_settings("n1", NODES, cfg, []).settings
    assert s is not None and s.graceful_restart == 150


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m0s", 300), ("1h", 3600),
                                               ("1.5s", 1.5), ("0", 0)])
def test_duration_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        duration_seconds("5 minutes")


def test_ipv6_unicast_when_the_node_has_an_ipv6_address() -> None:
    dual = res("Node", "n1", {"bgp": {"ipv4Address": "192.0.2.11/24",
                                      "ipv6Address": "2001:db8:0:1::11/64"}})
    s = compute_settings("n1", [dual, *NODES[1:]], [], []).settings
    assert s is not None and s.ipv6 and s.router_id == "192.0.2.11"
    s1 = compute_settings("n1", NODES, [], []).settings
    assert s1 is not None and not s1.ipv6


def _dual(name: str, ip: str, ip6: str) -> Any:
    return res("Node", name, {"bgp": {"ipv4Address": f"{ip}/24", "ipv6Address": f"{ip6}/64"}})


DUAL = [_dual("n1", "192.0.2.11", "2001:db8:0:1::11"),
        _dual("n2", "192.0.2.12", "2001:db8:0:1::12")]
TOR6 = res("BGPPeer", "tor6", {"peerIP": "2001:db8:0:1::2", "asNumber": 65001})


def test_ipv6_peer_ip_gets_a_session_over_ipv6() -> None:
    r = compute_settings("n1", DUAL, [], [TOR6])
    assert r.settings is not None and r.skipped == []
    s = r.settings
    assert s.local_address6 == "2001:db8:0:1::11" and s.local_address == "192.0.2.11"
    n = by_addr(r)["2001:db8:0:1::2"]
    assert (n.asn, n.kind, n.name, n.version) == (65001, "global", "tor6", 6)
    # the node mesh stays on IPv4 (the IPv6 routes ride it): no IPv6 mesh session
    assert set(by_addr(r)) == {"192.0.2.12", "2001:db8:0:1::2"}
    assert by_addr(r)["192.0.2.12"].version == 4


def test_ipv6_peer_on_a_node_without_ipv6_is_skipped_and_said() -> None:
    r = compute_settings("n1", NODES, [], [TOR6])
    assert r.settings is not None and "2001:db8:0:1::2" not in by_addr(r)
    assert r.skipped == ["BGPPeer tor6: peerIP 2001:db8:0:1::2 is IPv6 and Node n1 has no "
                         "spec.bgp.ipv6Address"]


def test_no_session_with_our_own_ipv6_address() -> None:
    me = res("BGPPeer", "self6", {"peerIP": "2001:db8:0:1::11", "asNumber": 64512})
    assert "2001:db8:0:1::11" not in by_addr(compute_settings("n1", DUAL, [], [me]))


def test_ip_key_orders_ipv4_then_ipv6_numerically() -> None:
    from routing.bgp.peers import ip_key
    addrs = ["2001:db8::10", "192.0.2.9", "2001:db8::9", "192.0.2.10"]
    assert sorted(addrs, key=ip_key) == ["192.0.2.9", "192.0.2.10", "2001:db8::9",
                                         "2001:db8::10"]
