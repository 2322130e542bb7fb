"""IPv6 policy, calculation to nft text: every rule kind for IPv6 addresses, IPv6
anti-spoofing and the ICMPv6 a workload may always send to its host.

Each test renders a small calculated model and checks the nft rule of the IPv6 variant (and
that nothing of the other family leaks into it); verdicts of the model come from
:mod:`policyagent.simulate`, the reference evaluator.
"""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_base import ResourceInvalid
from policyagent.hep_resolve import resolve
from policyagent.model import DataplaneModel, PolicyProgram
from policyagent.nft_render import ND_COMMENT, chain_name, policy_chain, render
from policyagent.simulate import Packet, host_verdict, workload_verdict
from tests.support.nft import chain_body
from tests.support.policy import Cluster, gnp, hep, knp, namespace, np_, res, wep

A4, A6 = "10.65.0.1", "fd00::1"
B4, B6 = "10.65.0.2", "fd00::2"
C4, C6 = "10.65.0.3", "fd00::3"


def pods(*extra: Any) -> Cluster:
    """Dual-stack pods a (app=a, named port web = TCP 8080), b (app=b), c (app=c)."""
    return Cluster().add(
        namespace("default"),
        wep("a", [A4, A6], {"app": "a"},
            ports=[{"name": "web", "protocol": "TCP", "port": 8080}]),
        wep("b", [B4, B6], {"app": "b"}, ports=[{"name": "web", "protocol": "TCP",
                                                 "port": 9090}]),
        wep("c", [C4, C6], {"app": "c"}),
        *extra)


def program(m: DataplaneModel, pid: str, direction: str = "ingress") -> PolicyProgram:
    return m.policies[(pid, direction)]


def rules_of(m: DataplaneModel, pid: str, direction: str = "ingress") -> list[str]:
    """The rule lines of a policy chain (without its first, bookkeeping, line)."""
    return chain_body(render(m), policy_chain(pid, direction))[2:]


def v6_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "meta nfproto ipv6" in line]


def tcp(src: str, dst: str, port: int = 80) -> Packet:
    return Packet(src, dst, "TCP", 40000, port)


def verdict(m: DataplaneModel, pod: str, pkt: Packet, direction: str = "ingress") -> str:
    return workload_verdict(m, f"default/{pod}", direction, pkt)


def test_nets_and_not_nets() -> None:
    m = pods(gnp("g", selector="app == 'b'", ingress=[
        {"action": "Allow", "source": {"nets": ["fd00::/120"], "notNets": ["fd00::3/128"]}},
    ])).model()
    lines = rules_of(m, "gnp:g")
    # an IPv6 source net: the rule is for IPv6 only
    assert lines == ['meta nfproto ipv6 ip6 saddr fd00::/120 ip6 saddr != fd00::3/128 counter '
                     'meta mark set meta mark | 0x10000 return comment "gnp:g/ingress/0"']
    assert program(m, "gnp:g").rules[0].ip_version == 6
    assert verdict(m, "b", tcp(A6, B6)) == "allow"
    assert verdict(m, "b", tcp(C6, B6)) == "deny"
    assert verdict(m, "b", tcp(A4, B4)) == "deny"


def test_mixed_family_nets_render_each_family_its_own() -> None:
    m = pods(gnp("g", selector="app == 'b'", ingress=[
        {"action": "Allow", "source": {"nets": ["10.65.0.0/24", "fd00::/120"],
                                       "notNets": ["10.65.0.3/32", "fd00::3/128"]}},
    ])).model()
    lines = rules_of(m, "gnp:g")
    assert len(lines) == 2
    v4, v6 = lines
    assert "ip saddr 10.65.0.0/24 ip saddr != 10.65.0.3/32" in v4 and "ip6" not in v4
    assert "ip6 saddr fd00::/120 ip6 saddr != fd00::3/128" in v6 and " ip saddr" not in v6
    for src, want in ((A4, "allow"), (A6, "allow"), (C4, "deny"), (C6, "deny")):
        dst = B6 if ":" in src else B4
        assert verdict(m, "b", tcp(src, dst)) == want, src


def test_destination_nets_egress() -> None:
    m = pods(gnp("g", selector="app == 'a'", types=["Egress"], egress=[
        {"action": "Deny", "destination": {"nets": ["fd00::2/128"]}},
        {"action": "Allow"},
    ])).model()
    lines = rules_of(m, "gnp:g", "egress")
    assert lines[0] == ('meta nfproto ipv6 ip6 daddr fd00::2/128 counter drop '
                        'comment "gnp:g/egress/0"')
    assert verdict(m, "a", tcp(A6, B6), "egress") == "deny"
    assert verdict(m, "a", tcp(A6, C6), "egress") == "allow"
    assert verdict(m, "a", tcp(A4, B4), "egress") == "allow"


def test_k8s_ipblock_with_except() -> None:
    m = pods(knp("k", podSelector={"matchLabels": {"app": "b"}}, ingress=[
        {"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::3/128"]}}]}])).model()
    pid = "np:default:knp.default.k"
    assert rules_of(m, pid) == [
        'meta nfproto ipv6 ip6 saddr fd00::/64 ip6 saddr != fd00::3/128 counter '
        f'meta mark set meta mark | 0x10000 return comment "{pid}/ingress/0"']
    assert verdict(m, "b", tcp(A6, B6)) == "allow"
    assert verdict(m, "b", tcp(C6, B6)) == "deny"
    assert verdict(m, "b", tcp(A4, B4)) == "deny"  # an IPv6 block admits no IPv4 peer


def test_selector_puts_ipv6_addresses_in_ipv6_sets() -> None:
    m = pods(np_("p", selector="app == 'b'", ingress=[
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'a'"}}])).model()
    rule = program(m, "np:default:p").rules[0]
    s4, s6 = sorted(rule.src_ipsets)
    assert (m.ipsets[s4].family, m.ipsets[s4].members) == (4, frozenset({f"{A4}/32"}))
    assert (m.ipsets[s6].family, m.ipsets[s6].members) == (6, frozenset({f"{A6}/128"}))
    script = render(m)
    assert f"set {s6} {{\n\t\ttype ipv6_addr;\n" in script
    assert "elements = { fd00::1 }" in script
    assert v6_lines(rules_of(m, "np:default:p")) == [
        f"meta nfproto ipv6 meta l4proto 6 ip6 saddr @{s6} counter "
        'meta mark set meta mark | 0x10000 return comment "np:default:p/ingress/0"']
    assert verdict(m, "b", tcp(A6, B6)) == "allow"
    assert verdict(m, "b", tcp(C6, B6)) == "deny"


def test_not_selector_and_destination_selector() -> None:
    m = pods(gnp("g", selector="app == 'a'", types=["Egress"], egress=[
        {"action": "Allow", "destination": {"selector": "has(app)", "notSelector": "app == 'c'"}},
    ])).model()
    rule = program(m, "gnp:g", "egress").rules[0]
    d6 = next(s for s in rule.dst_ipsets if s.startswith("s6"))
    n6 = next(s for s in rule.dst_not_ipsets if s.startswith("s6"))
    assert m.ipsets[n6].members == frozenset({f"{C6}/128"})
    assert f"ip6 daddr @{d6} ip6 daddr != @{n6}" in v6_lines(rules_of(m, "gnp:g", "egress"))[0]
    assert verdict(m, "a", tcp(A6, B6), "egress") == "allow"
    assert verdict(m, "a", tcp(A6, C6), "egress") == "deny"


def test_named_ports_have_ipv6_entries() -> None:
    m = pods(knp("k", podSelector={}, ingress=[
        {"ports": [{"port": "web", "protocol": "TCP"}]}])).model()
    rule = program(m, "np:default:knp.default.k").rules[0]
    n6 = next(s for s in rule.dst_named_port_ipsets if s.startswith("n6"))
    assert m.ipsets[n6].members == frozenset({f"{A6},tcp:8080", f"{B6},tcp:9090"})
    script = render(m)
    assert f"set {n6} {{\n\t\ttype ipv6_addr . inet_proto . inet_service;\n" in script
    assert "fd00::1 . tcp . 8080" in script
    assert any(f"ip6 daddr . meta l4proto . th dport @{n6}" in line
               for line in v6_lines(rules_of(m, "np:default:knp.default.k")))
    assert verdict(m, "a", tcp(C6, A6, 8080)) == "allow"
    assert verdict(m, "a", tcp(C6, A6, 9090)) == "deny"
    assert verdict(m, "b", tcp(C6, B6, 9090)) == "allow"


def test_icmpv6_type_and_code() -> None:
    m = pods(gnp("g", selector="app == 'b'", ingress=[
        {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128, "code": 0}},
        {"action": "Deny", "protocol": "ICMPv6", "notICMP": {"type": 1, "code": 4}},
        {"action": "Allow", "protocol": "ICMPv6", "notICMP": {"type": 129}},
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
    ])).model()
    lines = rules_of(m, "gnp:g")
    assert lines[:3] == [
        "meta nfproto ipv6 meta l4proto 58 icmpv6 type 128 icmpv6 code 0 counter "
        'meta mark set meta mark | 0x10000 return comment "gnp:g/ingress/0"',
        "meta nfproto ipv6 meta l4proto 58 icmpv6 type . icmpv6 code != { 1 . 4 } counter "
        'drop comment "gnp:g/ingress/1"',
        "meta nfproto ipv6 meta l4proto 58 icmpv6 type != 129 counter "
        'meta mark set meta mark | 0x10000 return comment "gnp:g/ingress/2"']
    # ICMP (v4) rules stay IPv4: "icmp type 8" never meets an IPv6 packet
    assert lines[3].startswith("meta nfproto ipv4 meta l4proto 1 icmp type 8 ")
    assert [r.ip_version for r in program(m, "gnp:g").rules] == [6, 6, 6, 4]
    def icmp6(t: int, c: int) -> str:
        return verdict(m, "b", Packet(A6, B6, "ICMPv6", icmp_type=t, icmp_code=c))

    assert icmp6(128, 0) == "allow"  # rule 0
    assert icmp6(129, 0) == "deny"   # rule 1: not 1/4
    assert icmp6(1, 4) == "allow"    # past rule 1, rule 2: not 129
    assert verdict(m, "b", Packet(A4, B4, "ICMP", icmp_type=8, icmp_code=0)) == "allow"


def test_ip_version_6_on_a_rule() -> None:
    m = pods(gnp("g", selector="app == 'b'", ingress=[
        {"action": "Allow", "ipVersion": 6, "protocol": "TCP",
         "source": {"selector": "app == 'a'"}, "destination": {"ports": [80]}},
    ])).model()
    rule = program(m, "gnp:g").rules[0]
    assert rule.ip_version == 6
    assert all(s.startswith("s6_") for s in rule.src_ipsets)  # no IPv4 set made for it
    lines = rules_of(m, "gnp:g")
    assert len(lines) == 1
    assert lines[0].startswith("meta nfproto ipv6 meta l4proto 6 ip6 saddr @s6_")
    assert verdict(m, "b", tcp(A6, B6)) == "allow"
    assert verdict(m, "b", tcp(A4, B4)) == "deny"


def test_ip_version_6_with_an_ipv4_net_is_refused_and_mixed_sides_never_match() -> None:
    with pytest.raises(ResourceInvalid, match="ipVersion 6"):
        gnp("g", selector="app == 'b'", ingress=[
            {"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}}])
    m = pods(gnp("g", selector="app == 'b'", ingress=[
        {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]},
         "destination": {"nets": ["fd00::/64"]}}])).model()
    assert program(m, "gnp:g").rules[0].action == "none"
    assert rules_of(m, "gnp:g") == []


def test_network_set_ipv6_nets_and_host_endpoint_ipv6_expected_ips() -> None:
    m = pods(
        res({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
             "metadata": {"name": "ext", "labels": {"ext": "yes"}},
             "spec": {"nets": ["2001:db8:1::/48", "198.51.100.0/24"]}}),
        hep("h1", iface="eth0", ips=["192.168.0.1", "2001:db8::1"], labels={"host": "yes"}),
        gnp("g", selector="app == 'b'", ingress=[
            {"action": "Allow", "source": {"selector": "ext == 'yes' || host == 'yes'"}}]),
    ).model()
    s6 = next(s for s in program(m, "gnp:g").rules[0].src_ipsets if s.startswith("s6"))
    assert m.ipsets[s6].members == frozenset({"2001:db8:1::/48", "2001:db8::1/128"})
    assert "type ipv6_addr; flags interval;" in render(m)
    assert verdict(m, "b", tcp("2001:db8:1::9", B6)) == "allow"
    assert verdict(m, "b", tcp("2001:db8::1", B6)) == "allow"
    assert verdict(m, "b", tcp("2001:db8::2", B6)) == "deny"


def test_host_endpoint_by_ipv6_expected_ip() -> None:
    m = Cluster().add(
        hep("h6", ips=["2001:db8::11"], labels={"role": "host"}),
        gnp("h", selector="role == 'host'", ingress=[
            {"action": "Allow", "protocol": "TCP", "source": {"nets": ["2001:db8::/64"]},
             "destination": {"ports": [2222]}}])).model()
    assert m.host_endpoints["h6"].addresses == ("2001:db8::11/128",)
    resolved = resolve(m, {"eth0": ["192.0.2.11/24"], "eth1": ["2001:db8::11/64",
                                                                "fe80::1/64"]})
    assert list(resolved.host_endpoints) == ["eth1"]
    body = chain_body(render(resolved), chain_name("hi", "h6"))
    assert any(line.startswith("jump ti_") for line in body)
    lines = rules_of(resolved, "gnp:h")
    assert lines == ["meta nfproto ipv6 meta l4proto 6 ip6 saddr 2001:db8::/64 th dport 2222 "
                     'counter meta mark set meta mark | 0x10000 return comment "gnp:h/ingress/0"']
    assert host_verdict(resolved, "eth1", "ingress", tcp("2001:db8::5", "2001:db8::11", 2222)) \
        == "allow"
    assert host_verdict(resolved, "eth1", "ingress", tcp("2001:db9::5", "2001:db8::11", 2222)) \
        == "deny"


def test_ipv6_anti_spoofing() -> None:
    m = Cluster().add(
        wep("a", [A4, A6, "fd00::a"]),
        wep("b", [B4], allowSpoofedSourcePrefixes=["fd00:99::/64"]),
        wep("c", [C6])).model()
    script = render(m)
    wa = chain_body(script, chain_name("we", "default/a"))
    assert 'ip saddr != 10.65.0.1/32 counter drop comment "default/a anti-spoof v4"' in wa
    assert ('ip6 saddr != { fd00::1/128, fd00::a/128 } counter drop '
            'comment "default/a anti-spoof v6"') in wa
    wb = chain_body(script, chain_name("we", "default/b"))
    assert 'ip6 saddr != fd00:99::/64 counter drop comment "default/b anti-spoof v6"' in wb
    wc = chain_body(script, chain_name("we", "default/c"))
    # an IPv6-only pod sends no IPv4 at all
    assert 'meta nfproto ipv4 counter drop comment "default/c anti-spoof v4"' in wc
    assert 'ip6 saddr != fd00::3/128 counter drop comment "default/c anti-spoof v6"' in wc
    # anti-spoofing comes before any policy
    assert wa.index('ip6 saddr != { fd00::1/128, fd00::a/128 } counter drop '
                    'comment "default/a anti-spoof v6"') < next(
        i for i, line in enumerate(wa) if line.startswith(("jump", "counter drop")))


def test_neighbour_discovery_from_workloads_is_accepted_before_policy() -> None:
    m = Cluster().add(wep("a", [A6])).model()  # no policy, no profile: default drop
    body = chain_body(render(m), "input")
    nd = [line for line in body if "icmpv6 type" in line]
    assert nd == ['iifname "cali*" icmpv6 type { mld-listener-query, mld-listener-report, '
                  "mld-listener-done, nd-router-solicit, nd-neighbor-solicit, "
                  "nd-neighbor-advert, mld2-listener-report } counter accept "
                  f'comment "{ND_COMMENT}"']
    # before the workload's egress chain (policy and anti-spoofing: ND comes from fe80::/::)
    assert body.index(nd[0]) < body.index('iifname "cali*" jump from_wl')
    # only to the host: nothing of the kind in forward (pods only neighbour with the host),
    # and no echo or router advertisement in the list
    assert not any("icmpv6" in line for line in chain_body(render(m), "forward"))
    assert "echo-request" not in nd[0] and "nd-router-advert" not in nd[0]
