"""ExaBGP configuration rendering, BIRD configuration rendering, JSON update parsing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from routing.bgp.api import BGPSettings, Neighbour, RouteTable
from routing.bgp.bird import BirdNeighbour, parse_show_route, render_bird_config
from routing.bgp.exabgp_config import (
    exabgp_environment,
    families,
    render_config,
    render_neighbour,
    restart_needed,
)
from routing.bgp.speaker import parse_update

S = BGPSettings(router_id="192.0.2.11", local_address="192.0.2.11", asn=64512,
                neighbours=(Neighbour("192.0.2.12", 64512, name="n2"),
                            Neighbour("192.0.2.1", 65001, kind="global", name="tor",
                                      password="s3cret", ttl_security=1),
                            Neighbour("192.0.2.11", 64512, name="me"),
                            Neighbour("192.0.2.12", 64512, name="dup")),
                hold_time=30, graceful_restart=90)
RELAY = ["/usr/bin/python3", "-I", "-S", "/x/relay.py", "/run/x/api.sock"]


def block(text: str, address: str) -> str:
    start = text.index(f"neighbor {address} {{")
    return text[start:text.index("\n}", start)]


def test_process_and_neighbours() -> None:
    text = render_config(S, RELAY)
    assert "run /usr/bin/python3 -I -S /x/relay.py /run/x/api.sock;" in text
    assert "encoder json;" in text
    assert text.count("neighbor 192.0.2.12 {") == 1      # duplicates collapse
    assert "neighbor 192.0.2.11 {" not in text           # never ourselves
    n2 = block(text, "192.0.2.12")
    for line in ("router-id 192.0.2.11;", "local-address 192.0.2.11;", "local-as 64512;",
                 "peer-as 64512;", "hold-time 30;", "manual-eor true;",
                 "graceful-restart 90;", "family { ipv4 unicast; }",
                 "processes [ tortie ]", "neighbor-changes;"):
        assert line in n2, line
    assert "md5-password" not in n2 and "passive" not in n2
    passive = render_config(BGPSettings("192.0.2.11", "192.0.2.11", 64512, (
        Neighbour("192.0.2.12", 64512, passive=True),)), RELAY)
    assert "passive true;" in block(passive, "192.0.2.12")
    port = render_config(BGPSettings("192.0.2.11", "192.0.2.11", 64512, (
        Neighbour("192.0.2.1", 65001, port=1790),)), RELAY)
    assert "connect 1790;" in block(port, "192.0.2.1")
    tor = block(text, "192.0.2.1")
    assert 'md5-password "s3cret";' in tor and "peer-as 65001;" in tor
    assert "outgoing-ttl 255;" in tor and "incoming-ttl 255;" in tor
    assert 'description "global:tor";' in tor


def test_graceful_restart_off() -> None:
    text = render_config(BGPSettings("192.0.2.11", "192.0.2.11", 64512,
                                     (Neighbour("192.0.2.12", 64512),), graceful_restart=0),
                         RELAY)
    assert "graceful-restart" not in text


def test_rejects_injection() -> None:
    bad = BGPSettings("192.0.2.11", "192.0.2.11", 64512,
                      (Neighbour("192.0.2.12", 64512, password='x";\n}'),))
    with pytest.raises(ValueError):
        render_config(bad, RELAY)


def test_environment_and_restart_needed() -> None:
    env = exabgp_environment(S, {"PATH": "/bin"})
    assert env["exabgp_daemon_user"] == "root" and env["PATH"] == "/bin"
    assert env["exabgp_tcp_bind"] == "192.0.2.11" and env["exabgp_tcp_port"] == "179"
    assert env["exabgp_api_ack"] == "true"
    assert not restart_needed(S, dataclasses.replace(S, neighbours=(), hold_time=90))
    assert restart_needed(S, BGPSettings(S.router_id, S.local_address, 65000))


def _update(body: dict, peer: str = "192.0.2.12") -> dict:
    return {"type": "update", "neighbor": {"address": {"local": "192.0.2.11", "peer": peer},
                                           "direction": "receive", "message": body}}


def test_parse_update_announce_withdraw_eor() -> None:
    msg = _update({"update": {
        "attribute": {"origin": "igp", "as-path": {"0": {"element": "as-sequence",
                                                         "value": [65001, 65002]}}},
        "announce": {"ipv4 unicast": {"192.0.2.12": [{"nlri": "10.65.1.0/26"},
                                                     {"nlri": "10.65.1.64/26"}]},
                     "ipv6 unicast": {"fd00::1": [{"nlri": "fd00:1::/64"}]}},
        "withdraw": {"ipv4 unicast": [{"nlri": "10.65.9.0/26"}]}}})
    announced, withdrawn, eor = parse_update(json.loads(json.dumps(msg)))
    assert not eor and withdrawn == ["10.65.9.0/26"]
    assert set(announced) == {"10.65.1.0/26", "10.65.1.64/26", "fd00:1::/64"}
    assert announced["fd00:1::/64"].next_hop == "fd00::1"
    r = announced["10.65.1.0/26"]
    assert (r.next_hop, r.peer, r.as_path) == ("192.0.2.12", "192.0.2.12", (65001, 65002))
    assert parse_update(_update({"eor": {"afi": "ipv4", "safi": "unicast"}}))[2]


def test_route_table_prefers_shorter_as_path() -> None:
    msg1 = _update({"update": {"attribute": {}, "announce": {
        "ipv4 unicast": {"192.0.2.12": [{"nlri": "10.65.1.0/26"}]}}}}, peer="192.0.2.12")
    msg2 = _update({"update": {"attribute": {"as-path": {"0": {"value": [65001]}}},
                               "announce": {"ipv4 unicast": {"192.0.2.1": [
                                   {"nlri": "10.65.1.0/26"}]}}}}, peer="192.0.2.1")
    t = RouteTable()
    for m in (msg1, msg2):
        a, _, _ = parse_update(m)
        t.by_peer.setdefault(next(iter(a.values())).peer, {}).update(a)
    assert t.best()["10.65.1.0/26"].next_hop == "192.0.2.12"


def test_bird_config_outside_and_reflector() -> None:
    nb = [BirdNeighbour("192.0.2.11", 64512), BirdNeighbour("192.0.2.12", 64512, "pw")]
    outside = render_bird_config("192.0.2.2", 65001, nb)
    assert "router id 192.0.2.2;" in outside
    assert "protocol bgp n_192_0_2_11 {" in outside and "neighbor 192.0.2.11 as 64512;" in outside
    assert "export none;" in outside and "rr client" not in outside
    assert 'password "pw";' in outside and "graceful restart on;" in outside
    rr = render_bird_config("192.0.2.2", 64512, nb, route_reflector=True, cluster_id="1.1.1.1")
    assert rr.count("rr client;") == 2 and "rr cluster id 1.1.1.1;" in rr
    assert "direct;" in rr and "gateway direct;" in rr


def test_parse_bird_show_route() -> None:
    text = """BIRD 2.0.12 ready.
Table master4:
10.65.1.0/26         unicast [n_192_0_2_11 15:51:01.394] * (100) [i]
\tvia 192.0.2.11 on eth0
192.0.2.0/24         unicast [direct1 15:51:00.689] * (240)
\tdev eth0
10.65.2.0/26         unicast [n_192_0_2_12 15:51:01.400] * (100) [AS64512i]
\tvia 192.0.2.12 on eth0
"""
    assert parse_show_route(text) == {"10.65.1.0/26": "192.0.2.11", "10.65.2.0/26": "192.0.2.12"}
    multihop = """Table master4:
0.0.0.0/0            unicast [kernel1 16:13:35.732] * (10)
	via 192.0.2.1 on eth0
	Type: inherit univ
10.244.0.64/26       unicast [n_198_51_100_12 16:13:39.090 from 198.51.100.12] * (100/?) [AS64512i]
	via 192.0.2.1 on eth0
	Type: BGP univ
	BGP.next_hop: 198.51.100.12
	BGP.local_pref: 100
"""
    assert parse_show_route(multihop) == {"10.244.0.64/26": "198.51.100.12"}


def test_bird_config_multihop_outside_its_subnet() -> None:
    conf = render_bird_config("192.0.2.2", 64512, [BirdNeighbour("192.0.2.11", 64512),
                                                   BirdNeighbour("198.51.100.12", 64512)],
                              route_reflector=True)
    near = conf[conf.index("protocol bgp n_192_0_2_11"):conf.index("protocol bgp n_198")]
    far = conf[conf.index("protocol bgp n_198"):]
    assert "direct;" in near and "gateway direct;" in near and "multihop" not in near
    assert "multihop;" in far and "gateway recursive;" in far


def test_ipv6_unicast_family_only_when_the_node_has_an_ipv6_address() -> None:
    n = Neighbour("192.0.2.12", 64512)
    v4 = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (n,))
    assert "family { ipv4 unicast; }" in render_neighbour(v4, n)
    dual = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (n,), ipv6=True)
    assert "family { ipv4 unicast; ipv6 unicast; }" in render_neighbour(dual, n)
    assert families(dual) == ("ipv4 unicast", "ipv6 unicast")


def test_parse_update_ipv6_withdraw() -> None:
    msg = _update({"update": {"withdraw": {"ipv6 unicast": [{"nlri": "fd00:10:244::/122"}]}}})
    assert parse_update(msg)[1] == ["fd00:10:244::/122"]


def test_bird_config_ipv6_channel() -> None:
    text = render_bird_config("192.0.2.2", 65001, [BirdNeighbour("192.0.2.11", 64512)],
                              ipv6=True)
    assert "protocol direct { ipv4; ipv6; }" in text
    assert "protocol kernel kernel6 {" in text
    session = text[text.index("protocol bgp n_192_0_2_11"):]
    assert "    ipv4 {" in session and "    ipv6 {" in session
    assert "ipv6" not in render_bird_config("192.0.2.2", 65001,
                                            [BirdNeighbour("192.0.2.11", 64512)])


def test_parse_bird_show_route_ipv6() -> None:
    text = (
        "Table master6:\n"
        "fd00:10:244::/122    unicast [n_192_0_2_11 08:30:00.000] * (100) [AS64512i]\n"
        "\tvia 2001:db8:0:1::11 on eth0\n"
        "\tType: BGP univ\n"
        "\tBGP.next_hop: 2001:db8:0:1::11 fe80::1\n"
        "fd00:10:244::40/122  unicast [n_192_0_2_12 08:30:00.000] * (100) [AS64512i]\n"
        "\tvia 2001:db8:0:1::12 on eth0\n")
    assert parse_show_route(text) == {"fd00:10:244::/122": "2001:db8:0:1::11",
                                      "fd00:10:244::40/122": "2001:db8:0:1::12"}


def test_ipv6_session_uses_the_ipv6_address_and_carries_ipv6_only() -> None:
    from routing.bgp.exabgp_config import bind_addresses, carries, restart_needed
    n4 = Neighbour("192.0.2.12", 64512)
    n6 = Neighbour("2001:db8:0:1::2", 65001, "global", "tor6")
    s = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (n4, n6), ipv6=True,
                    local_address6="2001:db8:0:1::11")
    text = render_neighbour(s, n6)
    assert "local-address 2001:db8:0:1::11;" in text and "router-id 192.0.2.11;" in text
    assert "family { ipv6 unicast; }" in text
    assert "family { ipv4 unicast; ipv6 unicast; }" in render_neighbour(s, n4)
    assert families(s, n6) == ("ipv6 unicast",)
    assert carries(s, n6, "fd00:10:244::/122") and not carries(s, n6, "10.244.0.0/26")
    assert carries(s, n4, "fd00:10:244::/122") and carries(s, n4, "10.244.0.0/26")
    # ExaBGP listens on the IPv6 address only while an IPv6 session needs it
    assert bind_addresses(s) == ("192.0.2.11", "2001:db8:0:1::11")
    assert exabgp_environment(s)["exabgp_tcp_bind"] == "192.0.2.11 2001:db8:0:1::11"
    only4 = dataclasses.replace(s, neighbours=(n4,))
    assert bind_addresses(only4) == ("192.0.2.11",)
    assert restart_needed(only4, s) and not restart_needed(s, s)
    assert "neighbor 2001:db8:0:1::2 {" in render_config(s, ["relay"])


def test_bird_config_ipv6_neighbour_session_over_ipv6() -> None:
    text = render_bird_config("192.0.2.2", 65001, [BirdNeighbour("2001:db8:0:1::11", 64512),
                                                   BirdNeighbour("2001:db8:0:9::13", 64512)],
                              local6="2001:db8:0:1::2/64")
    near = text[text.index("protocol bgp n_2001_db8_0_1__11"):].split("\n}")[0]
    assert "local 2001:db8:0:1::2 as 65001;" in near
    assert "    ipv6 {" in near and "    ipv4 {" not in near and "multihop" not in near
    far = text[text.index("protocol bgp n_2001_db8_0_9__13"):].split("\n}")[0]
    assert "multihop;" in far
    assert "protocol kernel kernel6 {" in text
    from routing.bgp.bird import BirdError
    with pytest.raises(BirdError, match="local6"):
        render_bird_config("192.0.2.2", 65001, [BirdNeighbour("2001:db8:0:1::11", 64512)])
