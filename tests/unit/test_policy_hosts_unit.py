"""Host endpoints: interface resolution (Felix's rules), hooks in the calculation, failsafe
defaults, and what the renderer makes of them (pure: no kernel)."""

from __future__ import annotations

import dataclasses

from datastore.model_config import DEFAULT_FAILSAFE_INBOUND, DEFAULT_FAILSAFE_OUTBOUND
from policyagent.hep_resolve import ALL_INTERFACES, resolve, resolve_interfaces
from policyagent.model import HostEndpointProgram
from policyagent.nft_render import MARK_PREDNAT, chain_name, render
from tests.support.policy import NODE, Cluster, gnp, hep, res

IFACES = {
    "lo": ["127.0.0.1/8"],
    "eth0": ["192.0.2.11/24", "10.200.0.11/24"],
    "eth1": ["198.51.100.7/24"],
    "caliabc": ["169.254.1.1/32"],
    "kube-ipvs0": ["10.96.0.1/32"],
}


def _prog(name: str, iface: str | None = None, ips: tuple[str, ...] = (),
          all_ifaces: bool = False) -> HostEndpointProgram:
    return HostEndpointProgram(name=name, interface=iface, addresses=ips,
                               all_interfaces=all_ifaces)


# --- resolution ----------------------------------------------------------------------------

def test_expected_ips_only_endpoint_governs_the_interfaces_holding_those_addresses() -> None:
    got = resolve_interfaces([_prog("web", ips=("10.200.0.11/32", "198.51.100.7/32"))], IFACES)
    assert got == {"eth0": "web", "eth1": "web"}
    # an address nobody holds resolves to nothing; workload/excluded interfaces never match
    assert resolve_interfaces([_prog("x", ips=("203.0.113.9/32",))], IFACES) == {}
    assert resolve_interfaces([_prog("x", ips=("169.254.1.1/32", "10.96.0.1/32"))],
                              IFACES) == {}


def test_named_endpoint_matches_its_interface_only_and_the_first_name_wins() -> None:
    heps = [
        _prog("b-named", iface="eth0", ips=("198.51.100.7/32",)),  # name only, not by IP
        _prog("c-by-ip", ips=("192.0.2.11/32",)),
        _prog("a-by-ip", ips=("192.0.2.11/32",)),
        _prog("z-cali", iface="calixyz"),
    ]
    assert resolve_interfaces(heps, IFACES) == {"eth0": "a-by-ip"}
    assert resolve_interfaces(heps[:2], IFACES) == {"eth0": "b-named"}
    # interfaces unknown: only named endpoints resolve (even before the interface exists)
    assert resolve_interfaces(heps, None) == {"eth0": "b-named"}
    assert resolve_interfaces([_prog("n", iface="eth9")], IFACES) == {"eth9": "n"}


def test_all_interfaces_endpoint_is_the_fallback_first_name_wins() -> None:
    heps = [_prog("node1-auto-hep", all_ifaces=True), _prog("a-star", all_ifaces=True),
            _prog("eth1-hep", iface="eth1")]
    assert resolve_interfaces(heps, IFACES) == {ALL_INTERFACES: "a-star", "eth1": "eth1-hep"}


def test_resolved_model_renders_each_interface_once() -> None:
    c = Cluster().add(
        hep("by-ip", ips=["10.200.0.11", "198.51.100.7"], labels={"role": "web"}),
        hep("dup-eth1", iface="eth1", labels={"role": "web"}),
        hep("other-node", node="elsewhere", ips=["192.0.2.12"]),
        gnp("web", selector="role == 'web'",
            ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]))
    model = c.model()
    assert set(model.host_endpoints) == {"by-ip", "dup-eth1"}
    assert model.host_endpoints["by-ip"].interface is None
    # unresolved, the expectedIPs-only endpoint polices nothing
    assert '"eth0"' not in render(model)
    resolved = resolve(model, IFACES)
    by_ip = model.host_endpoints["by-ip"]
    assert dict(resolved.host_endpoints.items()) == {
        "eth0": dataclasses.replace(by_ip, interface="eth0"),
        "eth1": dataclasses.replace(by_ip, interface="eth1"),
    }
    text = render(resolved)
    hi = chain_name("hi", "by-ip")
    assert f'"eth0" : goto {hi}' in text and f'"eth1" : goto {hi}' in text
    assert chain_name("hi", "dup-eth1") not in text  # shadowed: "by-ip" < "dup-eth1"
    assert text.count(f"chain {hi} {{") == 1
    assert resolved.policies == model.policies and resolved.ipsets == model.ipsets


# --- the calculation -----------------------------------------------------------------------

def test_host_endpoint_hooks_per_policy_kind() -> None:
    c = Cluster().add(
        hep("star", iface="*", labels={"h": ""}),
        hep("eth0", iface="eth0", labels={"h": ""}),
        gnp("pre", selector="has(h)", preDNAT=True, applyOnForward=True,
            ingress=[{"action": "Deny"}]),
        gnp("dnt", selector="has(h)", doNotTrack=True, applyOnForward=True,
            ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}]),
        gnp("fwd", selector="has(h)", applyOnForward=True, ingress=[{"action": "Allow"}]),
        gnp("normal", selector="has(h)", ingress=[{"action": "Allow"}]))
    m = c.model()
    star, eth0 = m.host_endpoints["star"], m.host_endpoints["eth0"]
    assert star.all_interfaces and star.interface is None and eth0.interface == "eth0"

    def ids(tiers: tuple) -> list[str]:
        return [p for t in tiers for p in t.policies]

    assert ids(eth0.pre_dnat_ingress) == ["gnp:pre"]
    assert ids(eth0.untracked_ingress) == ["gnp:dnt"] and ids(eth0.untracked_egress) == ["gnp:dnt"]
    assert ids(eth0.forward_ingress) == ["gnp:fwd"]
    assert ids(eth0.ingress_policies) == ["gnp:fwd", "gnp:normal"]
    # doNotTrack is not supported on an all-interfaces endpoint (as Calico)
    assert ids(star.untracked_ingress) == [] and ids(star.pre_dnat_ingress) == ["gnp:pre"]


def test_failsafe_defaults_are_calicos_and_felixconfiguration_overrides_them() -> None:
    def pp(ports: tuple) -> set[tuple[str, int]]:
        return {(p.protocol, int(p.port)) for p in ports}

    # Calico's documented defaults (reference/host-endpoints/failsafe)
    both = {("TCP", p) for p in (179, 2379, 2380, 5473, 6443, 6666, 6667)}
    assert pp(DEFAULT_FAILSAFE_INBOUND) == both | {("TCP", 22), ("UDP", 68)}
    assert pp(DEFAULT_FAILSAFE_OUTBOUND) == both | {("UDP", 53), ("UDP", 67)}
    c = Cluster().add(hep("eth0", iface="eth0"))
    assert {(f.protocol, f.port) for f in c.model().failsafe_in} >= {(6, 22), (17, 68)}
    felix = res({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                 "metadata": {"name": "default"},
                 "spec": {"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22}],
                          "failsafeOutboundHostPorts": []}})
    c.calc.update("FelixConfiguration", "default", felix)
    m = c.model()
    assert [(f.protocol, f.port) for f in m.failsafe_in] == [(6, 22)] and m.failsafe_out == ()
    node = res({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": f"node.{NODE}"},
                "spec": {"failsafeInboundHostPorts": [{"protocol": "UDP", "port": 53,
                                                       "net": "10.0.0.0/8"}]}})
    c.calc.update("FelixConfiguration", f"node.{NODE}", node)
    m = c.model()
    assert [(f.protocol, f.port, f.net) for f in m.failsafe_in] == [(17, 53, "10.0.0.0/8")]
    assert m.failsafe_out == ()  # not set on the node: the global value
    assert 'ip saddr 10.0.0.0/8 meta l4proto udp th dport 53' in render(m)


def test_prednat_allow_skips_forward_ingress_policy() -> None:
    m = Cluster().add(
        hep("eth0", iface="eth0", labels={"h": ""}),
        gnp("fwd", selector="has(h)", applyOnForward=True, ingress=[{"action": "Deny"}]),
    ).model()
    text = render(m)
    hfi = chain_name("hfi", "eth0")
    body = text.split(f"chain {hfi} {{", 1)[1].split("}", 1)[0]
    first_rule = [ln.strip() for ln in body.splitlines() if ln.strip()][1]
    assert first_rule == f"meta mark & {MARK_PREDNAT:#x} != 0 return"
    hfe = text.split(f"chain {chain_name('hfe', 'eth0')} {{", 1)
    assert len(hfe) == 1  # no egress forward policy: no chain, forwarded egress allowed
