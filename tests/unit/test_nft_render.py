"""The nftables renderer (pure): structure of the script for small calculated models."""

from __future__ import annotations

import dataclasses
import re

from policyagent.model import (
    Action,
    DataplaneModel,
    FrozenMap,
    IPSetSpec,
    PolicyProgram,
    RuleSpec,
)
from policyagent.nft_render import (
    chain_name,
    policy_chain,
    render,
    render_incremental,
    render_rule,
)
from tests.support.nft import chain_body
from tests.support.policy import Cluster, gnp, hep, two_pods, wep


def test_atomic_replace_header_and_determinism() -> None:
    model = two_pods().model()
    script = render(model)
    assert script.startswith("table inet tortie {}\ndelete table inet tortie\n"
                             "table inet tortie {\n")
    assert script == render(two_pods().model())
    assert render(model, "t2").splitlines()[1] == "delete table inet t2"
    assert re.findall(r"^\S.*$", script, re.M)[:3] == script.splitlines()[:3]
    assert set(re.findall(r"table \w+ (\w+)", script)) == {"tortie"}


def test_base_chains_hooks_and_conntrack() -> None:
    script = render(two_pods().model())
    for name, base in [
        ("raw_pre", "type filter hook prerouting priority raw;"),
        ("raw_out", "type filter hook output priority raw;"),
        ("pre_dnat", "type filter hook prerouting priority -110;"),
        ("input", "type filter hook input priority filter;"),
        ("forward", "type filter hook forward priority filter;"),
        ("output", "type filter hook output priority filter;"),
    ]:
        body = chain_body(script, name)
        assert any(line.startswith(base) for line in body), name
    for name in ("input", "forward", "output"):
        body = chain_body(script, name)
        assert 'ct state invalid counter drop comment "ct invalid"' in body
        assert body.index('ct state invalid counter drop comment "ct invalid"') < \
            body.index("ct state established,related accept")
    assert not any("drop" in line for line in chain_body(script, "pre_dnat"))
    assert not any("drop" in line for line in chain_body(script, "raw_pre"))


def test_dispatch_by_verdict_map() -> None:
    script = render(two_pods().model())
    wa, wb = chain_name("wi", "default/a"), chain_name("wi", "default/b")
    assert re.search(rf'map wl_to {{\n\t\ttype ifname : verdict;\n\t\telements = '
                     rf'{{ "calia" : goto {wa},\n\t\t\t"calib" : goto {wb} }}', script)
    assert chain_body(script, "from_wl") == [
        'comment "traffic from workloads"',
        "meta mark set meta mark & 0xffecffff",  # no verdict bits, no explicit-port bit
        "iifname vmap @wl_from",
        'counter drop comment "unknown workload interface"']
    fwd = chain_body(script, "forward")
    assert 'iifname "cali*" jump from_wl' in fwd and 'oifname "cali*" jump to_wl' in fwd
    # one dispatch rule whatever the number of endpoints
    many = Cluster().add(*[wep(f"p{i}", f"10.65.1.{i}") for i in range(20)]).model()
    assert chain_body(render(many), "forward") == fwd


def test_sets_and_rule_counters() -> None:
    model = two_pods().model()
    script = render(model)
    (rule,) = model.policies[("np:default:allow-a", "ingress")].rules
    (s4,) = [s for s in rule.src_ipsets if s.startswith("s4")]
    # single addresses only: a set without intervals (a hash in the kernel)
    assert re.search(rf"set {s4} {{\n\t\ttype ipv4_addr;\n.*\n"
                     rf"\t\telements = {{ 10.65.0.1 }}", script)
    (s6,) = [s for s in rule.src_ipsets if s.startswith("s6")]
    assert f"set {s6} {{\n\t\ttype ipv6_addr;\n" in script
    # a network among the members: an interval set
    nets = render(DataplaneModel(ipsets=FrozenMap({s4: IPSetSpec(s4, 4, frozenset(
        {"10.65.0.1/32", "10.66.0.0/16", "10.66.1.0/24"}))})))
    assert re.search(rf"set {s4} {{\n\t\ttype ipv4_addr; flags interval;\n.*\n"
                     rf"\t\telements = {{ 10.65.0.1/32,\n\t\t\t10.66.0.0/16 }}", nets)
    body = chain_body(script, policy_chain("np:default:allow-a", "ingress"))
    v4 = (f"meta nfproto ipv4 meta l4proto 6 ip saddr @{s4} th dport 8080 counter "
          f'meta mark set meta mark | 0x10000 return comment "{rule.rule_id}"')
    v6 = (f"meta nfproto ipv6 meta l4proto 6 ip6 saddr @{s6} th dport 8080 counter "
          f'meta mark set meta mark | 0x10000 return comment "{rule.rule_id}"')
    # the IPv6 set is empty: its rule could never match and is left out
    assert body[1:] == ["meta mark & 0x30000 != 0 return", v4]  # first: a policy decided
    # pod a gets an IPv6 address: the rule for IPv6 is there
    c = two_pods().add(wep("a", ["10.65.0.1", "fd00::1"], {"app": "a"}))
    new = c.model()
    body = chain_body(render(new), policy_chain("np:default:allow-a", "ingress"))
    assert body[1:] == ["meta mark & 0x30000 != 0 return", v4, v6]
    # ... and the incremental transaction refills the policy's chain with it, and back
    name = policy_chain("np:default:allow-a", "ingress")
    for a, b, rules in ((model, new, [v4, v6]), (new, model, [v4])):
        script = render_incremental(a, b)
        assert script is not None and f"flush chain inet tortie {name}" in script
        assert chain_body(script, name)[1:] == ["meta mark & 0x30000 != 0 return", *rules]


def test_named_port_set() -> None:
    c = Cluster().add(
        wep("web", "10.65.0.5", {"app": "web"},
            ports=[{"name": "http", "protocol": "TCP", "port": 8080}]),
        gnp("named", selector="all()", ingress=[
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]))
    model = c.model()
    script = render(model)
    (n4,) = [s for s in model.ipsets if s.startswith("n4")]
    assert f"set {n4} {{\n\t\ttype ipv4_addr . inet_proto . inet_service;" in script
    assert "elements = { 10.65.0.5 . tcp . 8080 }" in script
    assert f"ip daddr . meta l4proto . th dport @{n4}" in script


def test_pass_and_end_of_tier() -> None:
    c = two_pods(
        gnp("pass-it", order=1, selector="app == 'b'",
            ingress=[{"action": "Pass", "source": {"nets": ["10.10.0.0/16"]}}]))
    model = c.model()
    script = render(model)
    ep = model.endpoints["default/b"]
    (tier,) = ep.ingress_policies
    assert tier.policies == ("gnp:pass-it", "np:default:allow-a")
    # the endpoint chain: the shared program chain, leave on accept, else its own drop
    wi = chain_body(script, chain_name("wi", "default/b"))
    assert wi[1].startswith("jump wpi_") and wi[2:] == [
        "meta mark & 0x10000 != 0 return",
        'counter drop comment "default/b ingress default drop"']
    prog = chain_body(script, wi[1].split()[1])
    tier_jump = prog[1]
    assert tier_jump.startswith("jump ti_")
    tier_body = chain_body(script, tier_jump.split()[1])
    # policy chains return at once when an earlier one decided: the tier chain only jumps
    assert tier_body[1:] == [
        "meta mark set meta mark & 0xfffcffff",  # a tier (and a profile) starts undecided
        f"jump {policy_chain('gnp:pass-it', 'ingress')}",
        f"jump {policy_chain('np:default:allow-a', 'ingress')}",
        "meta mark & 0x30000 != 0 return",
        'counter drop comment "end of tier default ingress"']
    # pass: mark and return; the program chain then goes on to the profiles
    pbody = chain_body(script, policy_chain("gnp:pass-it", "ingress"))
    assert pbody[1] == "meta mark & 0x30000 != 0 return"
    assert pbody[2] == ("meta nfproto ipv4 ip saddr 10.10.0.0/16 counter meta mark set "
                        'meta mark | 0x20000 return comment "gnp:pass-it/ingress/0"')
    assert prog[2] == "meta mark & 0x10000 != 0 return"
    profile = policy_chain("pro:kns.default", "ingress", profile=True)
    assert prog[3] == f"jump {profile}"
    assert prog[-1] == "meta mark & 0x10000 != 0 return"
    assert chain_body(script, profile)[1] == "meta mark set meta mark & 0xfffcffff"
    wa = chain_body(script, chain_name("wi", "default/a"))
    assert wa[1].startswith("jump wpi_") and wa[1] != wi[1]  # a has no tier: its own program


def test_workloads_share_program_chains() -> None:
    """Workloads with the same tiers and profiles jump to one program chain per direction."""
    script = render(two_pods(wep("c", "10.65.0.3", {"app": "b"})).model())
    for kind in ("wi", "we"):
        b, c = (chain_body(script, chain_name(kind, f"default/{x}")) for x in "bc")
        assert b[-3] == c[-3] and b[-3].startswith(f"jump wp{kind[1]}_")
        assert b[-2] == "meta mark & 0x10000 != 0 return"
        assert b[-1] == f'counter drop comment "default/b {b[0].split()[-1][:-1]} default drop"'
    assert script.count("\n\tchain wpi_") == 2  # a's and the one b and c share


def test_anti_spoofing() -> None:
    c = Cluster().add(
        wep("a", ["10.65.0.1", "fd00::1"], allowSpoofedSourcePrefixes=["192.168.7.0/24"]),
        wep("b", "10.65.0.2"))
    script = render(c.model())
    wa = chain_body(script, chain_name("we", "default/a"))
    assert wa[1] == ("ip saddr != { 10.65.0.1/32, 192.168.7.0/24 } counter drop "
                     'comment "default/a anti-spoof v4"')
    assert wa[2] == 'ip6 saddr != fd00::1/128 counter drop comment "default/a anti-spoof v6"'
    wb = chain_body(script, chain_name("we", "default/b"))
    assert wb[2] == 'meta nfproto ipv6 counter drop comment "default/b anti-spoof v6"'
    assert not any("anti-spoof" in line for line in
                   chain_body(script, chain_name("wi", "default/a")))


def test_host_endpoint_failsafe_before_policy() -> None:
    c = Cluster().add(
        hep("eth0", iface="eth0", ips=["192.168.0.1"], labels={"role": "host"}),
        gnp("host-deny", selector="role == 'host'", ingress=[{"action": "Deny"}],
            egress=[{"action": "Deny"}]))
    script = render(c.model())
    hi = chain_body(script, chain_name("hi", "eth0"))
    assert hi[1] == "meta mark & 0x40000 != 0 return"  # allowed by preDNAT policy
    assert hi[2] == ('meta l4proto tcp th dport 22 counter return '
                     'comment "failsafe ingress tcp:22"')
    first_policy = next(i for i, line in enumerate(hi) if line.startswith("jump"))
    assert all("failsafe" in line for line in hi[2:first_policy - 1])
    he = chain_body(script, chain_name("he", "eth0"))
    assert he[1] == 'meta l4proto udp th dport 53 counter return comment "failsafe egress udp:53"'
    assert f'"eth0" : goto {chain_name("hi", "eth0")}' in script
    # workloads never go through normal host endpoint policy
    assert chain_body(script, "input")[-4:] == [
        'iifname "cali*" jump from_wl', 'iifname "cali*" jump protect_host',
        'iifname "cali*" counter drop comment "workload to host"', "jump hep_in_dispatch"]
    assert 'oifname "cali*" accept' in chain_body(script, "output")
    assert "hep_fwd_in" in script and "goto" not in chain_body(script, "hep_fwd_in_dispatch")[1]


def test_pre_dnat_and_untracked_have_no_default_drop() -> None:
    c = Cluster().add(
        hep("eth0", iface="eth0", ips=["192.168.0.1"], labels={"role": "host"}),
        gnp("pd", selector="role == 'host'", preDNAT=True, applyOnForward=True,
            ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]),
        gnp("dnt", selector="role == 'host'", doNotTrack=True, applyOnForward=True,
            ingress=[{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}],
            egress=[{"action": "Allow", "protocol": "UDP", "source": {"ports": [53]}}]))
    script = render(c.model())
    hp = chain_body(script, chain_name("hp", "eth0"))
    assert hp[-1] == "meta mark & 0x10000 != 0 meta mark set meta mark | 0x40000 return"
    hu = chain_body(script, chain_name("hui", "eth0"))
    assert hu[-1] == ("meta mark & 0x10000 != 0 meta mark set meta mark | 0x80000 notrack "
                      "return")
    tiers = [line.split()[1] for line in hp + hu if line.startswith("jump ti_")]
    assert tiers and all(not any("drop" in x for x in chain_body(script, t)) for t in tiers)


def test_log_and_rule_details() -> None:
    log = RuleSpec("gnp:x/ingress/0", "log", protocol=6, dst_ports=((80, 80), (8000, 8080)))
    assert render_rule(log) == [
        'meta l4proto 6 th dport { 80, 8000-8080 } log prefix "tortie gnp:x/ingress/0 " '
        'counter comment "gnp:x/ingress/0"']
    v6only = RuleSpec("r/ingress/1", "deny", src_nets=("fd00::/8",))
    assert render_rule(v6only) == [
        'meta nfproto ipv6 ip6 saddr fd00::/8 counter drop comment "r/ingress/1"']
    assert render_rule(RuleSpec("r/ingress/2", "allow", ip_version=4,
                                src_nets=("fd00::/8",))) == []  # can never match
    icmp = RuleSpec("r/egress/3", "allow", ip_version=4, protocol=1, not_icmp_type=8,
                    not_icmp_code=0)
    assert "icmp type . icmp code != { 8 . 0 }" in render_rule(icmp)[0]
    none = RuleSpec("r/egress/4", "none")
    assert render_rule(none) == ['counter comment "r/egress/4"']


def test_incremental_set_members_and_chain_refill() -> None:
    # pod a loses its label, pod c gains it: only the members of the source set change
    def pods(a: str, c: str) -> DataplaneModel:
        return two_pods(wep("c", "10.65.0.3", {"app": c})).add(
            wep("a", "10.65.0.1", {"app": a})).model()
    old, new = pods("a", "x"), pods("x", "a")
    assert old.diff(new).members_only
    (sid,) = [s for s, d in old.diff(new).ipset_members.items() if d.added]
    # no set with intervals in the table: the member leaves with delete element
    assert render_incremental(old, new) == (
        f"delete element inet tortie {sid} {{ 10.65.0.1 }}\n"
        f"table inet tortie {{\n\tset {sid} {{\n"
        f"\t\ttype ipv4_addr;\n\t\telements = {{ 10.65.0.3 }}\n\t}}\n}}\n")
    # with many CIDRs in interval sets (which nft would fetch first), flush and refill
    nets = IPSetSpec("s4_nets", 4, frozenset(f"10.{i}.0.0/16" for i in range(100)), kind="net")
    old_n, new_n = (dataclasses.replace(m, ipsets=FrozenMap({**m.ipsets, nets.id: nets}))
                    for m in (old, new))
    assert render_incremental(old_n, new_n).startswith(f"flush set inet tortie {sid}\n")
    # overlapping members: refill the set in the same transaction
    def with_set(*members: str) -> DataplaneModel:
        return DataplaneModel(ipsets=FrozenMap({sid: IPSetSpec(sid, 4, frozenset(members))}))
    script = render_incremental(with_set("10.0.0.0/8", "192.0.2.0/24"),
                                with_set("10.0.0.0/8", "192.0.2.0/24", "10.65.0.3/32"))
    assert script is not None and script.startswith(f"flush set inet tortie {sid}\n")
    assert "elements = { 10.0.0.0/8,\n\t\t\t192.0.2.0/24 }" in script
    assert "10.65.0.3" not in script
    # a set of addresses gets a network (or loses its last one): another type of set, which
    # only the full render makes
    assert render_incremental(with_set("10.65.0.3/32"),
                              with_set("10.0.0.0/8", "10.65.0.3/32")) is None
    assert render_incremental(with_set("10.0.0.0/8", "10.65.0.3/32"),
                              with_set("10.65.0.3/32")) is None
    # a changed policy: its chain is flushed and refilled
    def with_policy(action: Action) -> DataplaneModel:
        prog = PolicyProgram("gnp:x", "ingress",
                             (RuleSpec("gnp:x/ingress/0", action, protocol=17),))
        return DataplaneModel(policies=FrozenMap({("gnp:x", "ingress"): prog}))
    rep = render_incremental(with_policy("allow"), with_policy("deny"))
    name = policy_chain("gnp:x", "ingress")
    assert rep is not None and f"flush chain inet tortie {name}\n" in rep
    assert rep.endswith('\t\tmeta l4proto 17 counter drop comment "gnp:x/ingress/0"\n\t}\n}\n')


def _tunnel_cluster(encap: str) -> Cluster:
    from tests.support.policy import NODE, V3, res
    pool_spec = {"cidr": "10.244.0.0/16", f"{encap}Mode": "Always"}
    nodes = [res({"apiVersion": V3, "kind": "Node", "metadata": {"name": name},
                  "spec": {"bgp": {"ipv4Address": addr}}})
             for name, addr in ((NODE, "192.0.2.11/24"), ("node2", "198.51.100.12/24"))]
    return Cluster().add(
        res({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "p"}, "spec": pool_spec}),
        *nodes,
        hep("eth0", iface="eth0", ips=["192.0.2.11"], labels={"role": "host"}),
        gnp("host-deny", selector="role == 'host'", ingress=[{"action": "Deny"}],
            egress=[{"action": "Deny"}], preDNAT=False))


def test_host_endpoint_policy_never_drops_the_tunnels_between_nodes() -> None:
    script = render(_tunnel_cluster("vxlan").model())
    hosts = "{ 192.0.2.11/32, 198.51.100.12/32 }"
    hi = chain_body(script, chain_name("hi", "eth0"))
    assert hi[2] == (f'ip saddr {hosts} udp dport 4789 counter return '
                     'comment "vxlan ingress between nodes"')
    assert hi.index(hi[2]) < next(i for i, line in enumerate(hi) if line.startswith("jump"))
    he = chain_body(script, chain_name("he", "eth0"))
    assert he[1] == (f'ip daddr {hosts} udp dport 4789 counter return '
                     'comment "vxlan egress between nodes"')
    assert "ipip" not in script
    script = render(_tunnel_cluster("ipip").model())
    hi = chain_body(script, chain_name("hi", "eth0"))
    assert hi[2] == (f'ip saddr {hosts} meta l4proto 4 counter return '
                     'comment "ipip ingress between nodes"')
    assert "4789" not in script


def test_no_tunnel_rules_without_an_encapsulating_pool_and_a_port_from_felix() -> None:
    from tests.support.policy import V3, res
    c = _tunnel_cluster("vxlan")
    c.add(res({"apiVersion": V3, "kind": "FelixConfiguration", "metadata": {"name": "default"},
               "spec": {"vxlanPort": 8472}}))
    assert "udp dport 8472" in render(c.model()) and "4789" not in render(c.model())
    before = c.model()
    c.add(res({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "p"},
               "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Never"}}))
    assert before.diff(c.model()).tunnels_changed
    assert "between nodes" not in render(c.model())


def test_vxlan_of_an_ipv6_pool_passes_host_endpoints_between_the_ipv6_addresses() -> None:
    """An IPv6 pool alone with vxlanMode: its VXLAN (over the nodes' IPv6 addresses) gets
    through host endpoint policy as the IPv4 pools' VXLAN does."""
    from tests.support.policy import NODE, V3, res
    nodes = [res({"apiVersion": V3, "kind": "Node", "metadata": {"name": name},
                  "spec": {"bgp": {"ipv4Address": addr, "ipv6Address": addr6}}})
             for name, addr, addr6 in ((NODE, "192.0.2.11/24", "2001:db8:0:1::11/64"),
                                       ("node2", "192.0.2.12/24", "2001:db8:0:1::12/64"))]
    c = Cluster().add(
        res({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "p6"},
             "spec": {"cidr": "fd00:10:244::/56", "vxlanMode": "Always"}}),
        *nodes,
        hep("eth0", iface="eth0", ips=["192.0.2.11"], labels={"role": "host"}),
        gnp("host-deny", selector="role == 'host'", ingress=[{"action": "Deny"}],
            egress=[{"action": "Deny"}], preDNAT=False))
    script = render(c.model())
    hi = chain_body(script, chain_name("hi", "eth0"))
    want = ('ip6 saddr { 2001:db8:0:1::11/128, 2001:db8:0:1::12/128 } udp dport 4789 '
            'counter return comment "vxlan ingress between nodes"')
    assert want in hi
    assert hi.index(want) < next(i for i, line in enumerate(hi) if line.startswith("jump"))
    he = chain_body(script, chain_name("he", "eth0"))
    assert ('ip6 daddr { 2001:db8:0:1::11/128, 2001:db8:0:1::12/128 } udp dport 4789 '
            'counter return comment "vxlan egress between nodes"') in he


def test_a_gone_pod_leaves_the_maps_by_delete_element_unless_interval_sets_are_large() -> None:
    cluster = two_pods()
    old = cluster.model()
    cluster.delete("WorkloadEndpoint", "default/a")
    new = cluster.model()
    (gone,) = [ep for name, ep in old.endpoints.items() if name not in new.endpoints]
    assert gone.interface
    script = render_incremental(old, new)
    assert script is not None and "flush map" not in script
    for m in ("wl_to", "wl_from"):
        assert f'delete element inet tortie {m} {{ "{gone.interface}" }}\n' in script
    # the element deletes come before the chains they point to are deleted
    assert script.index("delete element") < script.index("delete chain")
    # 100 CIDRs in interval sets against two map elements re-sent: flush and refill
    nets = IPSetSpec("s4_nets", 4, frozenset(f"10.{i}.0.0/16" for i in range(100)), kind="net")
    old_n, new_n = (dataclasses.replace(m, ipsets=FrozenMap({**m.ipsets, nets.id: nets}))
                    for m in (old, new))
    script = render_incremental(old_n, new_n)
    assert script is not None and "delete element" not in script
    assert "flush map inet tortie wl_to" in script
