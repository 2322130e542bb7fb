"""The policy calculation (pure): which policies apply where, selectors -> IP sets, verdicts.

Verdicts come from :mod:`policyagent.simulate`, the reference evaluator of the model's
contract, so the tests read as "this packet is allowed / denied".
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from policyagent.calc import KINDS, Kind, PolicyCalculator
from policyagent.model import (
    DataplaneModel,
    FailsafeSpec,
    FrozenMap,
    HostEndpointProgram,
    IPSetSpec,
    RuleSpec,
    TierPolicies,
    ipset_id,
)
from policyagent.selectors import canonical
from policyagent.simulate import Packet, host_verdict, workload_verdict
from tests.support.policy import (
    NODE,
    V3,
    Cluster,
    gnp,
    hep,
    kind_of,
    knp,
    namespace,
    np_,
    profile,
    random_resources,
    res,
    wep,
)


def tcp(src: str, dst: str, port: int = 80) -> Packet:
    return Packet(src, dst, "TCP", 40000, port)


def ids(tiers: tuple[TierPolicies, ...]) -> list[str]:
    return [p for t in tiers for p in t.policies]


def set_of(model: DataplaneModel, selector: str, family: int = 4) -> IPSetSpec:
    return model.ipsets[ipset_id("s", family, canonical(selector))]


def members(model: DataplaneModel, set_ids: tuple[str, ...], family: int = 4) -> set[str]:
    out: set[str] = set()
    for s in set_ids:
        if model.ipsets[s].family == family:
            out |= model.ipsets[s].members
    return out


# --- seed 001: the foo/bar NetworkPolicy pair ----------------------------------------------------

def foo_bar_cluster() -> Cluster:
    c = Cluster().add(namespace("default"))
    for i in range(3):
        node = NODE if i == 0 else "node2"
        http = [{"name": "http", "protocol": "TCP", "port": 80}]
        c.add(wep(f"foo-{i}", f"10.0.0.{i + 1}", {"app": "baz", "component": "foo",
                                                  "foo": "producer"}, node=node, ports=http),
              wep(f"bar-{i}", f"10.0.1.{i + 1}", {"app": "baz", "component": "bar",
                                                  "foo": "consumer"}, node=node, ports=http))
    c.add(wep("other", "10.0.2.1", {"app": "other"}, node="node2"))
    c.add(knp("foo-consumer", podSelector={"matchLabels": {"foo": "consumer"}},
              policyTypes=["Egress"],
              egress=[{"to": [{"podSelector": {"matchLabels": {"foo": "producer"}}}]}]),
          knp("foo-producer", podSelector={"matchLabels": {"foo": "producer"}},
              policyTypes=["Ingress"],
              ingress=[{"from": [{"podSelector": {"matchLabels": {"foo": "consumer"}}}]}]))
    return c


def test_seed001_foo_producer_ingress_from_consumers() -> None:
    m = foo_bar_cluster().model()
    producer = "np:default:knp.default.foo-producer"
    foo0 = m.endpoints["default/foo-0"]
    assert ids(foo0.ingress_policies) == [producer]
    assert foo0.egress_policies == ()  # Ingress-only policy: egress falls to the kns profile
    (rule,) = m.policies[(producer, "ingress")].rules
    assert rule.action == "allow"
    assert members(m, rule.src_ipsets) == {"10.0.1.1/32", "10.0.1.2/32", "10.0.1.3/32"}
    assert workload_verdict(m, "default/foo-0", "ingress", tcp("10.0.1.3", "10.0.0.1")) == "allow"
    assert workload_verdict(m, "default/foo-0", "ingress", tcp("10.0.2.1", "10.0.0.1")) == "deny"
    assert workload_verdict(m, "default/foo-0", "egress", tcp("10.0.0.1", "8.8.8.8")) == "allow"


def test_seed001_foo_consumer_egress_to_producers() -> None:
    m = foo_bar_cluster().model()
    consumer = "np:default:knp.default.foo-consumer"
    bar0 = m.endpoints["default/bar-0"]
    assert ids(bar0.egress_policies) == [consumer] and bar0.ingress_policies == ()
    (rule,) = m.policies[(consumer, "egress")].rules
    assert members(m, rule.dst_ipsets) == {"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"}
    assert workload_verdict(m, "default/bar-0", "egress", tcp("10.0.1.1", "10.0.0.2")) == "allow"
    assert workload_verdict(m, "default/bar-0", "egress", tcp("10.0.1.1", "10.0.2.1")) == "deny"
    # nothing selects bar for ingress: the namespace profile allows it
    assert workload_verdict(m, "default/bar-0", "ingress", tcp("10.0.2.1", "10.0.1.1")) == "allow"


def test_only_this_nodes_endpoints_become_programs_but_sets_are_cluster_wide() -> None:
    m = foo_bar_cluster().model()
    assert set(m.endpoints) == {"default/foo-0", "default/bar-0"}
    assert m.host_endpoints == FrozenMap()
    assert set(m.policies) == {("np:default:knp.default.foo-consumer", "egress"),
                               ("np:default:knp.default.foo-producer", "ingress")}
    assert set(m.profiles) == {(f"pro:{p}", d) for p in ("kns.default", "ksa.default.default")
                               for d in ("ingress", "egress")}
    # both families of each selector, nothing else
    assert len(m.ipsets) == 4 and {s.family for s in m.ipsets.values()} == {4, 6}


# --- seed 001: preDNAT policy on a host endpoint for a NodePort ---------------------------------

def test_seed001_prednat_bar_external_consumer_then_drop_other_ingress() -> None:
    c = Cluster().add(
        hep("node1", labels={"role": "ingress", "host-endpoint": ""}, iface="eth0",
            ips=["192.168.2.11"]),
        gnp("bar-external-consumer", order=10, preDNAT=True, applyOnForward=True,
            ingress=[{"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}}],
            selector="has(host-endpoint)"),
        gnp("drop-other-ingress", order=20, preDNAT=True, applyOnForward=True,
            ingress=[{"action": "Deny"}], selector="has(host-endpoint)"))
    m = c.model()
    h = m.host_endpoints["node1"]
    assert ids(h.pre_dnat_ingress) == ["gnp:bar-external-consumer", "gnp:drop-other-ingress"]
    assert h.ingress_policies == h.egress_policies == h.forward_ingress == ()
    assert h.interface == "eth0" and h.addresses == ("192.168.2.11/32",)
    nodeport = 30010
    assert host_verdict(m, "node1", "ingress", tcp("10.1.2.3", "192.168.2.11", nodeport),
                        "pre_dnat") == "allow"
    assert host_verdict(m, "node1", "ingress", tcp("172.16.0.1", "192.168.2.11", nodeport),
                        "pre_dnat") == "deny"
    # failsafe ports stay open in every hook
    assert host_verdict(m, "node1", "ingress", tcp("172.16.0.1", "192.168.2.11", 22),
                        "pre_dnat") == "allow"
    # preDNAT policy never applies to workloads
    c.add(namespace("default"), wep("pod", "10.65.0.2", {"host-endpoint": "x"}))
    assert c.model().endpoints["default/pod"].ingress_policies == ()


# --- seed 002: host endpoint, v1 failsafe / webserver policies, doNotTrack ---------------------

V1_FAILSAFE = {
    "apiVersion": "v1", "kind": "policy", "metadata": {"name": "failsafe"},
    "spec": {"selector": "all()", "order": 0,
             "ingress": [{"action": "allow", "protocol": "tcp",
                          "source": {"net": "172.18.0.0/16"}, "destination": {"ports": [22]}},
                         {"action": "allow", "protocol": "icmp"}],
             "egress": [{"action": "allow", "protocol": "tcp",
                         "destination": {"net": "10.0.0.5/32", "ports": [2379, 2380]}},
                        {"action": "allow", "protocol": "udp", "destination": {"ports": [67]}}]},
}
V1_WEBSERVER = {
    "apiVersion": "v1", "kind": "policy", "metadata": {"name": "webserver"},
    "spec": {"selector": 'role=="webserver"', "order": 100,
             "ingress": [{"action": "allow", "protocol": "tcp",
                          "destination": {"ports": [80]}}],
             "egress": [{"action": "allow"}]},
}
V1_HEP = {
    "apiVersion": "v1", "kind": "hostEndpoint",
    "metadata": {"name": "web-eth0", "node": NODE,
                 "labels": {"role": "webserver", "environment": "production"}},
    "spec": {"interfaceName": "eth0", "expectedIPs": ["10.0.0.1"]},
}


def test_seed002_host_endpoint_without_policy_drops_except_failsafe() -> None:
    m = Cluster().add(res(V1_HEP)).model()
    h = m.host_endpoints["web-eth0"]
    assert h.profiles == () and h.ingress_policies == ()
    assert host_verdict(m, "web-eth0", "ingress", tcp("1.2.3.4", "10.0.0.1", 80)) == "deny"
    assert host_verdict(m, "web-eth0", "ingress", tcp("1.2.3.4", "10.0.0.1", 22)) == "allow"
    assert host_verdict(m, "web-eth0", "egress", tcp("10.0.0.1", "10.0.0.5", 2379)) == "allow"
    assert host_verdict(m, "web-eth0", "egress", tcp("10.0.0.1", "10.0.0.5", 5000)) == "deny"
    # an interface without a HostEndpoint is not policed: it has no program at all
    assert set(m.host_endpoints) == {"web-eth0"}


def test_seed002_v1_policies_in_order() -> None:
    c = Cluster().add(res(V1_HEP), res(V1_FAILSAFE), res(V1_WEBSERVER))
    c.calc.update("FelixConfiguration", "default", res(
        {"apiVersion": V3, "kind": "FelixConfiguration", "metadata": {"name": "default"},
         "spec": {"failsafeInboundHostPorts": [], "failsafeOutboundHostPorts": []}}))
    m = c.model()
    assert m.failsafe_in == m.failsafe_out == ()
    h = m.host_endpoints["web-eth0"]
    assert ids(h.ingress_policies) == ["gnp:failsafe", "gnp:webserver"]
    assert ids(h.egress_policies) == ["gnp:failsafe", "gnp:webserver"]

    def inbound(src: str, port: int, proto: str = "TCP") -> str | None:
        return host_verdict(m, "web-eth0", "ingress", Packet(src, "10.0.0.1", proto, 4000, port))

    assert inbound("172.18.1.1", 22) == "allow"      # ssh from management
    assert inbound("8.8.8.8", 22) == "deny"          # not from elsewhere (failsafe ports off)
    assert inbound("8.8.8.8", 80) == "allow"         # webserver
    assert inbound("8.8.8.8", 443) == "deny"
    assert host_verdict(m, "web-eth0", "ingress",
                        Packet("8.8.8.8", "10.0.0.1", "ICMP", icmp_type=8)) == "allow"
    (etcd, dhcp) = m.policies[("gnp:failsafe", "egress")].rules
    assert etcd.dst_nets == ("10.0.0.5/32",) and etcd.dst_ports == ((2379, 2379), (2380, 2380))
    assert etcd.protocol == 6 and dhcp.protocol == 17 and dhcp.dst_ports == ((67, 67),)
    icmp = m.policies[("gnp:failsafe", "ingress")].rules[1]
    assert icmp.protocol == 1 and icmp.ip_version == 4  # ICMP is IPv4 only


def test_seed002_do_not_track_goes_to_the_untracked_hook_only() -> None:
    memcached = {"apiVersion": "v1", "kind": "policy", "metadata": {"name": "memcached"},
                 "spec": {"selector": 'role=="webserver"', "order": 1, "doNotTrack": True,
                          "ingress": [{"action": "allow", "protocol": "tcp",
                                       "destination": {"ports": [999]}}],
                          "egress": [{"action": "allow", "protocol": "tcp",
                                      "source": {"ports": [999]}}]}}
    c = Cluster().add(res(V1_HEP), res(memcached),
                      namespace("default"), wep("web-pod", "10.65.0.9", {"role": "webserver"}))
    m = c.model()
    h = m.host_endpoints["web-eth0"]
    assert ids(h.untracked_ingress) == ids(h.untracked_egress) == ["gnp:memcached"]
    assert h.ingress_policies == h.egress_policies == h.forward_ingress == ()
    assert host_verdict(m, "web-eth0", "ingress", tcp("1.1.1.1", "10.0.0.1", 999),
                        "untracked") == "allow"
    assert host_verdict(m, "web-eth0", "ingress", tcp("1.1.1.1", "10.0.0.1", 998),
                        "untracked") is None  # no verdict: on to tracked processing
    assert host_verdict(m, "web-eth0", "egress", Packet("10.0.0.1", "1.1.1.1", "TCP", 999, 5555),
                        "untracked") == "allow"
    pod = m.endpoints["default/web-pod"]
    assert pod.ingress_policies == pod.egress_policies == ()  # never on workloads
    # an all-interfaces host endpoint gets no untracked policy
    c.add(hep("all", labels={"role": "webserver"}, iface="*"))
    h2 = c.model().host_endpoints["all"]
    assert h2.all_interfaces and h2.interface is None and h2.untracked_ingress == ()


# --- seed 003: automatic host endpoints and the master / worker policies ------------------------

AUTO = {"projectcalico.org/created-by": "calico-kube-controllers", "kubernetes-host": ""}
NODES = {"master": "192.168.2.10", "node1": "192.168.2.11", "node2": "192.168.2.12"}

MASTERS = dict(selector="has(node-role.kubernetes.io/master)", ingress=[
    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [6443]}},
    {"action": "Allow", "destination": {"nets": ["127.0.0.1/32"]}},
    {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
    {"action": "Allow", "protocol": "TCP",
     "source": {"selector": "has(node-role.kubernetes.io/master)"},
     "destination": {"ports": [2380, 10250]}}])
WORKERS = dict(selector="has(kubernetes-worker)", ingress=[
    {"action": "Allow", "destination": {"nets": ["127.0.0.1/32"]}},
    {"action": "Allow", "protocol": "TCP",
     "source": {"selector": "has(node-role.kubernetes.io/master)"},
     "destination": {"ports": [10250]}},
    {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}])


def auto_cluster(node: str = "master") -> Cluster:
    c = Cluster(node)
    for name, ip in NODES.items():
        role = ({"node-role.kubernetes.io/master": ""} if name == "master"
                else {"kubernetes-worker": ""})
        c.add(hep(f"{name}-auto-hep", node=name, iface="*", ips=[ip],
                  labels={**AUTO, "kubernetes.io/hostname": name, **role},
                  profiles=["projectcalico-default-allow"]))
    return c


def test_seed003_auto_host_endpoint_default_allow_until_policy() -> None:
    c = auto_cluster()
    m = c.model()
    h = m.host_endpoints["master-auto-hep"]
    assert set(m.host_endpoints) == {"master-auto-hep"}
    assert h.all_interfaces and h.interface is None and h.addresses == ("192.168.2.10/32",)
    assert h.profiles == ("pro:projectcalico-default-allow",)
    ext = "192.168.2.99"
    assert host_verdict(m, "master-auto-hep", "ingress", tcp(ext, NODES["master"], 8888)) == "allow"

    c.add(gnp("ingress-k8s-masters", **MASTERS), gnp("ingress-k8s-workers", **WORKERS))
    m = c.model()
    h = m.host_endpoints["master-auto-hep"]
    assert ids(h.ingress_policies) == ["gnp:ingress-k8s-masters"]
    assert h.egress_policies == ()  # types default to Ingress only: egress stays default-allow

    def to_master(src: str, port: int, proto: str = "TCP") -> str | None:
        return host_verdict(m, "master-auto-hep", "ingress",
                            Packet(src, NODES["master"], proto, 4000, port))

    assert to_master(ext, 8888) == "deny"
    assert to_master(ext, 6443) == "allow"
    assert to_master(ext, 53, "UDP") == "allow"
    assert to_master(ext, 22) == "allow"                       # failsafe
    assert to_master(NODES["master"], 10250) == "allow"        # from a master
    assert to_master(NODES["node1"], 10250) == "deny"
    assert host_verdict(m, "master-auto-hep", "egress",
                        tcp(NODES["master"], "1.1.1.1", 443)) == "allow"
    (masters,) = (r for r in m.policies[("gnp:ingress-k8s-masters", "ingress")].rules
                  if r.src_ipsets)
    assert members(m, masters.src_ipsets) == {"192.168.2.10/32"}

    # global-access: every endpoint may reach 8888 from anywhere
    c.add(gnp("global-access", ingress=[{"action": "Allow", "protocol": "TCP",
                                         "destination": {"ports": [8888]}}]))
    m = c.model()
    assert ids(m.host_endpoints["master-auto-hep"].ingress_policies) == [
        "gnp:global-access", "gnp:ingress-k8s-masters"]
    assert to_master(ext, 8888) == "allow"

    # replaced by internal-access: only from the cluster's hosts
    c.delete("GlobalNetworkPolicy", "global-access")
    c.add(gnp("internal-access", ingress=[{"action": "Allow", "protocol": "TCP",
                                           "source": {"selector": "has(kubernetes-host)"},
                                           "destination": {"ports": [8888]}}]))
    m = c.model()
    assert "gnp:global-access" not in m.host_endpoints["master-auto-hep"].policy_ids()
    assert set_of(m, "has(kubernetes-host)").members == {f"{ip}/32" for ip in NODES.values()}
    assert to_master(ext, 8888) == "deny"
    assert to_master(NODES["node1"], 8888) == "allow"


def test_seed003_worker_view() -> None:
    c = auto_cluster("node1").add(gnp("ingress-k8s-masters", **MASTERS),
                                  gnp("ingress-k8s-workers", **WORKERS))
    m = c.model()
    assert ids(m.host_endpoints["node1-auto-hep"].ingress_policies) == ["gnp:ingress-k8s-workers"]
    assert host_verdict(m, "node1-auto-hep", "ingress",
                        tcp(NODES["master"], NODES["node1"], 10250)) == "allow"
    assert host_verdict(m, "node1-auto-hep", "ingress",
                        tcp(NODES["node2"], NODES["node1"], 10250)) == "deny"


# --- seed 004: the quarantine GlobalNetworkPolicy ----------------------------------------------

def test_seed004_quarantine_logs_then_denies_both_ways() -> None:
    quarantine = gnp("security-operations.quarantine", order=200,
                     selector='quarantine == "true"', types=["Ingress", "Egress"],
                     ingress=[{"action": "Log", "source": {}, "destination": {}},
                              {"action": "Deny", "source": {}, "destination": {}}],
                     egress=[{"action": "Log", "source": {}, "destination": {}},
                             {"action": "Deny", "source": {}, "destination": {}}])
    c = Cluster().add(namespace("default"), quarantine,
                      wep("bad", "10.65.0.1", {"quarantine": "true"}),
                      wep("good", "10.65.0.2", {"quarantine": "false"}))
    m = c.model()
    pid = "gnp:security-operations.quarantine"
    for d in ("ingress", "egress"):
        rules = m.policies[(pid, d)].rules
        assert [r.action for r in rules] == ["log", "deny"]
        assert [r.rule_id for r in rules] == [f"{pid}/{d}/0", f"{pid}/{d}/1"]
    bad = m.endpoints["default/bad"]
    assert ids(bad.ingress_policies) == ids(bad.egress_policies) == [pid]
    assert workload_verdict(m, "default/bad", "ingress", tcp("10.65.0.2", "10.65.0.1")) == "deny"
    assert workload_verdict(m, "default/bad", "egress", tcp("10.65.0.1", "10.65.0.2")) == "deny"
    assert m.endpoints["default/good"].ingress_policies == ()
    assert workload_verdict(m, "default/good", "ingress", tcp("10.65.0.1", "10.65.0.2")) == "allow"


# --- ordering, Pass, tiers ---------------------------------------------------------------------

def test_order_then_name_and_unset_order_last() -> None:
    allow = [{"action": "Allow"}]
    c = Cluster().add(namespace("default"), wep("a", "10.65.0.1", {"x": "1"}),
                      gnp("c-unset", selector="has(x)", ingress=allow),
                      gnp("b-ten", order=10, selector="has(x)", ingress=allow),
                      gnp("a-ten", order=10, selector="has(x)", ingress=allow),
                      gnp("z-five", order=5, selector="has(x)", ingress=allow),
                      gnp("frac", order=7.5, selector="has(x)", ingress=allow),
                      np_("a-unset", selector="has(x)", ingress=allow),
                      np_("m-ten", order=10, selector="has(x)", ingress=allow))
    assert ids(c.model().endpoints["default/a"].ingress_policies) == [
        "gnp:z-five", "gnp:frac", "gnp:a-ten", "gnp:b-ten", "np:default:m-ten",
        "gnp:c-unset", "np:default:a-unset"]  # namespaced names sort as <ns>/<name>


def test_pass_skips_the_rest_of_the_tier_and_goes_to_profiles() -> None:
    c = Cluster().add(
        namespace("default"),
        wep("a", "10.65.0.1", {"app": "a"}),
        wep("noprof", "10.65.0.2", {"app": "a"}, profiles=[]),
        gnp("pass-from-mgmt", order=1, selector="has(app)",
            ingress=[{"action": "Pass", "source": {"nets": ["10.10.0.0/16"]}}]),
        gnp("deny-all", order=2, selector="has(app)", ingress=[{"action": "Deny"}]))
    m = c.model()
    assert workload_verdict(m, "default/a", "ingress", tcp("10.10.1.1", "10.65.0.1")) == "allow"
    assert workload_verdict(m, "default/a", "ingress", tcp("10.11.1.1", "10.65.0.1")) == "deny"
    # Pass with no profile to go to: dropped
    assert workload_verdict(m, "default/noprof", "ingress",
                            tcp("10.10.1.1", "10.65.0.2")) == "deny"
    assert m.policies[("gnp:pass-from-mgmt", "ingress")].rules[0].action == "pass"


def test_tiers_order_and_boundaries() -> None:
    c = Cluster().add(namespace("default"), wep("a", "10.65.0.1", {"app": "a"}),
                      gnp("default-pol", selector="has(app)", ingress=[{"action": "Allow"}]),
                      gnp("security.first", tier="security", order=1, selector="has(app)",
                          ingress=[{"action": "Pass"}]))
    c.calc.update("Tier", "security", {"spec": {"order": 100}})
    m = c.model()
    tiers = m.endpoints["default/a"].ingress_policies
    assert [(t.tier, t.policies, t.default_action) for t in tiers] == [
        ("security", ("gnp:security.first",), "deny"), ("default", ("gnp:default-pol",), "deny")]
    assert workload_verdict(m, "default/a", "ingress", tcp("1.1.1.1", "10.65.0.1")) == "allow"


# --- profiles, default drop, default allow ------------------------------------------------------

def test_endpoint_without_policy_or_profile_drops() -> None:
    m = Cluster().add(wep("lonely", "10.65.0.1", profiles=[], k8s=False)).model()
    ep = m.endpoints["default/lonely"]
    assert ep.profiles == () and ep.ingress_policies == ep.egress_policies == ()
    assert workload_verdict(m, "default/lonely", "ingress", tcp("1.1.1.1", "10.65.0.1")) == "deny"
    assert workload_verdict(m, "default/lonely", "egress", tcp("10.65.0.1", "1.1.1.1")) == "deny"


def test_k8s_pod_gets_namespace_profile_allow_until_a_policy_selects_it() -> None:
    c = Cluster().add(namespace("prod", {"team": "blue"}), wep("p", "10.65.0.1", ns="prod"))
    m = c.model()
    ep = m.endpoints["prod/p"]
    assert ep.profiles == ("pro:kns.prod", "pro:ksa.prod.default")
    assert workload_verdict(m, "prod/p", "ingress", tcp("1.1.1.1", "10.65.0.1")) == "allow"
    assert workload_verdict(m, "prod/p", "egress", tcp("10.65.0.1", "1.1.1.1")) == "allow"
    c.add(knp("deny-ingress", ns="prod", podSelector={}))  # selects every pod, no rules
    m = c.model()
    assert workload_verdict(m, "prod/p", "ingress", tcp("1.1.1.1", "10.65.0.1")) == "deny"
    assert workload_verdict(m, "prod/p", "egress", tcp("10.65.0.1", "1.1.1.1")) == "allow"


def test_profiles_rules_labels_and_missing_profiles() -> None:
    c = Cluster().add(
        profile("web", labelsToApply={"tier": "web"},
                ingress=[{"action": "Allow", "protocol": "TCP",
                          "destination": {"ports": [443]}}],
                egress=[{"action": "Allow"}]),
        wep("a", "10.65.0.1", {"own": "x"}, profiles=["web"], k8s=False),
        wep("b", "10.65.0.2", profiles=["nonexistent", "web"], k8s=False),
        gnp("from-web", selector="own == 'x'", types=["Egress"], egress=[
            {"action": "Allow", "destination": {"selector": "tier == 'web'"}}]))
    m = c.model()
    assert workload_verdict(m, "default/a", "ingress", tcp("1.1.1.1", "10.65.0.1", 443)) == "allow"
    assert workload_verdict(m, "default/a", "ingress", tcp("1.1.1.1", "10.65.0.1", 80)) == "deny"
    # a missing profile denies (Felix's stand-in), even before a later allowing one
    assert [r.action for r in m.profiles[("pro:nonexistent", "ingress")].rules] == ["deny"]
    assert workload_verdict(m, "default/b", "ingress", tcp("1.1.1.1", "10.65.0.2", 443)) == "deny"
    # profile labels are selectable like the endpoint's own
    rule = m.policies[("gnp:from-web", "egress")].rules[0]
    assert members(m, rule.dst_ipsets) == {"10.65.0.1/32", "10.65.0.2/32"}
    # changing labelsToApply moves endpoints in and out of sets
    c.add(profile("web", labelsToApply={"tier": "api"}))
    assert members(c.model(), rule.dst_ipsets) == set()


# --- selector scoping, namespaceSelector, service accounts -------------------------------------

def scoping_cluster() -> Cluster:
    return Cluster().add(
        namespace("a", {"team": "blue"}), namespace("b", {"team": "red"}),
        wep("a1", "10.65.1.1", {"role": "db"}, ns="a"),
        wep("a2", "10.65.1.2", {"role": "web"}, ns="a"),
        wep("b1", "10.65.2.1", {"role": "web"}, ns="b", sa="builder", node="node2"),
        res({"apiVersion": V3, "kind": "GlobalNetworkSet",
             "metadata": {"name": "ext", "labels": {"role": "web"}},
             "spec": {"nets": ["198.51.100.0/28"]}}),
        res({"apiVersion": V3, "kind": "NetworkSet",
             "metadata": {"name": "partners", "namespace": "b", "labels": {"role": "web"}},
             "spec": {"nets": ["203.0.113.0/24", "2001:db8::/64"]}}),
        hep("h", ips=["192.168.0.1"], labels={"role": "web"}, iface="eth0"))


def test_namespaced_policy_selects_and_scopes_within_its_namespace() -> None:
    c = scoping_cluster().add(np_("db", ns="a", selector="role == 'db'", ingress=[
        {"action": "Allow", "source": {"selector": "role == 'web'"}}]))
    m = c.model()
    assert ids(m.endpoints["a/a1"].ingress_policies) == ["np:a:db"]
    assert m.endpoints["a/a2"].ingress_policies == ()
    assert m.host_endpoints["h"].ingress_policies == ()  # never selected by a namespaced policy
    rule = m.policies[("np:a:db", "ingress")].rules[0]
    assert members(m, rule.src_ipsets) == {"10.65.1.2/32"}  # not b1, ext, partners or h


def test_global_policy_selector_spans_everything() -> None:
    c = scoping_cluster().add(gnp("g", selector="role == 'db'", ingress=[
        {"action": "Allow", "source": {"selector": "role == 'web'"}}]))
    m = c.model()
    rule = m.policies[("gnp:g", "ingress")].rules[0]
    assert members(m, rule.src_ipsets) == {"10.65.1.2/32", "10.65.2.1/32", "198.51.100.0/28",
                                            "203.0.113.0/24", "192.168.0.1/32"}
    assert members(m, rule.src_ipsets, 6) == {"2001:db8::/64"}


def test_namespace_selector_follows_namespace_labels() -> None:
    c = scoping_cluster().add(np_("db", ns="a", selector="role == 'db'", ingress=[
        {"action": "Allow", "source": {"namespaceSelector": "team == 'red'",
                                       "selector": "role == 'web'"}},
        {"action": "Allow", "source": {"namespaceSelector": "global()"}},
        {"action": "Allow", "source": {"namespaceSelector": "all()"}}]))
    m = c.model()
    red, glob, every = m.policies[("np:a:db", "ingress")].rules
    assert members(m, red.src_ipsets) == {"10.65.2.1/32", "203.0.113.0/24"}
    assert members(m, glob.src_ipsets) == {"198.51.100.0/28", "192.168.0.1/32"}
    assert members(m, every.src_ipsets) == {"10.65.1.1/32", "10.65.1.2/32", "10.65.2.1/32",
                                            "203.0.113.0/24"}
    c.add(namespace("a", {"team": "red"}))  # a is red now too: a2 joins
    m2 = c.model()
    assert members(m2, red.src_ipsets) == {"10.65.1.2/32", "10.65.2.1/32", "203.0.113.0/24"}
    assert m.diff(m2).members_only
    # namespaceSelector by name (projectcalico.org/name)
    c.add(gnp("byname", selector="role == 'db'", ingress=[
        {"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'b'"}}]))
    rule = c.model().policies[("gnp:byname", "ingress")].rules[0]
    assert members(c.model(), rule.src_ipsets) == {"10.65.2.1/32", "203.0.113.0/24"}


def test_global_policy_namespace_selector_restricts_where_it_applies() -> None:
    c = scoping_cluster().add(gnp("blue-only", namespaceSelector="team == 'blue'",
                                  ingress=[{"action": "Deny"}]))
    m = c.model()
    assert ids(m.endpoints["a/a1"].ingress_policies) == ["gnp:blue-only"]
    assert m.host_endpoints["h"].ingress_policies == ()


def test_service_accounts_names_and_selector() -> None:
    c = scoping_cluster().add(
        wep("a3", "10.65.1.3", ns="a", sa="builder"),
        gnp("sa", selector="role == 'db'", ingress=[
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["builder"]}}},
            {"action": "Allow", "source": {"serviceAccounts": {"selector": "ci == 'yes'"}}}]),
        np_("sa-ns", ns="a", selector="role == 'db'", ingress=[
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["builder"]}}}]))
    m = c.model()
    by_name, by_sel = m.policies[("gnp:sa", "ingress")].rules
    assert members(m, by_name.src_ipsets) == {"10.65.1.3/32", "10.65.2.1/32"}
    assert members(m, by_sel.src_ipsets) == set()
    scoped = m.policies[("np:a:sa-ns", "ingress")]
    assert members(m, scoped.rules[0].src_ipsets) == {"10.65.1.3/32"}  # own namespace only
    c.calc.update("ServiceAccount", "b/builder",  # no model: a mapping with metadata
                  {"metadata": {"name": "builder", "namespace": "b", "labels": {"ci": "yes"}}})
    assert members(c.model(), by_sel.src_ipsets) == {"10.65.2.1/32"}
    # the policy's own serviceAccountSelector
    c.add(gnp("sa-applies", serviceAccountSelector="ci == 'yes'", ingress=[{"action": "Deny"}]))
    assert c.model().endpoints["a/a3"].ingress_policies == ()


# --- named ports, rule details ------------------------------------------------------------------

def test_named_ports_resolve_per_destination_endpoint() -> None:
    c = Cluster().add(
        namespace("default"),
        wep("web1", "10.65.0.1", {"app": "web"}, ports=[{"name": "http", "protocol": "TCP",
                                                         "port": 80}]),
        wep("web2", "10.65.0.2", {"app": "web"}, node="node2",
            ports=[{"name": "http", "protocol": "TCP", "port": 8080},
                   {"name": "http", "protocol": "UDP", "port": 9999}]),
        wep("web3", "10.65.0.3", {"app": "web"}, node="node2"),   # ports from its Pod
        wep("other", "10.65.0.4", {"app": "other"}, ports=[{"name": "http", "protocol": "TCP",
                                                            "port": 81}]),
        gnp("to-web", selector="app == 'other'", egress=[
            {"action": "Allow", "protocol": "TCP",
             "destination": {"selector": "app == 'web'", "ports": ["http", 443, "8000:8100"]}}]))
    m = c.model()
    rule = m.policies[("gnp:to-web", "egress")].rules[0]
    assert rule.dst_ports == ((443, 443), (8000, 8100))
    assert members(m, rule.dst_named_port_ipsets) == {"10.65.0.1,tcp:80", "10.65.0.2,tcp:8080"}
    src = "10.65.0.4"
    assert workload_verdict(m, "default/other", "egress", tcp(src, "10.65.0.1", 80)) == "allow"
    assert workload_verdict(m, "default/other", "egress", tcp(src, "10.65.0.2", 8080)) == "allow"
    assert workload_verdict(m, "default/other", "egress", tcp(src, "10.65.0.2", 80)) == "deny"
    assert workload_verdict(m, "default/other", "egress", tcp(src, "10.65.0.3", 443)) == "allow"
    c.calc.update("Pod", "default/web3", res(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web3", "namespace": "default"},
         "spec": {"containers": [{"name": "c", "ports": [{"name": "http",
                                                          "containerPort": 7070}]}]}}))
    m2 = c.model()
    assert members(m2, rule.dst_named_port_ipsets) == {
        "10.65.0.1,tcp:80", "10.65.0.2,tcp:8080", "10.65.0.3,tcp:7070"}
    assert m.diff(m2).members_only


def test_rule_fields() -> None:
    c = Cluster().add(namespace("default"), wep("a", ["10.65.0.1", "fd00::1"], {"x": "y"}),
                      gnp("r", selector="has(x)", ingress=[
                          {"action": "Allow", "protocol": "ICMPv6",
                           "icmp": {"type": 128, "code": 0}},
                          {"action": "Deny", "protocol": "TCP", "notProtocol": "UDP",
                           "ipVersion": 4,
                           "source": {"notNets": ["10.1.0.0/16"], "notSelector": "bad == 'x'",
                                      "notPorts": [1, "2:3"]}},
                          {"action": "Allow", "protocol": 132,
                           "destination": {"nets": ["10.0.0.0/8", "fd00::/8"]}},
                          {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]},
                           "destination": {"nets": ["fd00::/8"]}}]))
    r = c.model().policies[("gnp:r", "ingress")].rules
    assert (r[0].protocol, r[0].icmp_type, r[0].icmp_code, r[0].ip_version) == (58, 128, 0, 6)
    assert r[1].not_protocol == 17 and r[1].ip_version == 4 and r[1].protocol == 6
    assert r[1].src_not_nets == ("10.1.0.0/16",) and r[1].src_not_ports == ((1, 1), (2, 3))
    assert [s[:2] for s in r[1].src_not_ipsets] == ["s4"]  # only the rule's family
    assert r[2].protocol == 132 and r[2].ip_version is None
    assert r[3].action == "none"  # IPv4 source and IPv6 destination: can never match
    assert RuleSpec("x", "allow").families() == (4, 6)
    assert "src_nets" not in repr(RuleSpec("x", "allow"))


def test_ipblock_except_and_policies_add_up() -> None:
    c = Cluster().add(
        namespace("default"), wep("db", "10.65.0.1", {"app": "db"}),
        knp("from-corp", podSelector={"matchLabels": {"app": "db"}}, ingress=[
            {"from": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.5.0/24"]}}],
             "ports": [{"port": 5432}]}]),
        knp("from-ops", podSelector={"matchLabels": {"app": "db"}}, ingress=[
            {"from": [{"ipBlock": {"cidr": "192.168.7.0/24"}}]}]))
    m = c.model()
    rule = m.policies[("np:default:knp.default.from-corp", "ingress")].rules[0]
    assert rule.src_nets == ("172.16.0.0/12",) and rule.src_not_nets == ("172.16.5.0/24",)
    assert ids(m.endpoints["default/db"].ingress_policies) == [
        "np:default:knp.default.from-corp", "np:default:knp.default.from-ops"]

    def v(src: str, port: int = 5432) -> str:
        return workload_verdict(m, "default/db", "ingress", tcp(src, "10.65.0.1", port))

    assert v("172.16.1.1") == "allow"
    assert v("172.16.5.1") == "deny"          # except
    assert v("172.16.1.1", 22) == "deny"      # port
    assert v("192.168.7.7", 22) == "allow"    # the second policy adds to the first
    assert v("8.8.8.8") == "deny"


# --- host endpoint hooks -----------------------------------------------------------------------

def test_apply_on_forward_and_host_endpoint_kinds() -> None:
    c = Cluster().add(
        hep("eth0", labels={"gw": "yes"}, iface="eth0", ips=["192.168.0.1"]),
        hep("by-ip", labels={"gw": "yes"}, ips=["192.168.1.1"]),
        hep("remote", node="node9", labels={"gw": "yes"}, iface="eth0", ips=["192.168.9.1"]),
        gnp("fwd", selector="gw == 'yes'", applyOnForward=True, types=["Ingress"],
            ingress=[{"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}}]),
        gnp("local", selector="gw == 'yes'", egress=[{"action": "Allow"}],
            types=["Egress"]))
    m = c.model()
    assert set(m.host_endpoints) == {"eth0", "by-ip"}
    h = m.host_endpoints["eth0"]
    assert isinstance(h, HostEndpointProgram) and h.kind == "host"
    assert ids(h.ingress_policies) == ["gnp:fwd"] and ids(h.forward_ingress) == ["gnp:fwd"]
    assert ids(h.egress_policies) == ["gnp:local"] and h.forward_egress == ()
    assert m.host_endpoints["by-ip"].interface is None
    fwd = tcp("10.1.1.1", "10.65.0.5")
    assert host_verdict(m, "eth0", "ingress", fwd, "forward") == "allow"
    assert host_verdict(m, "eth0", "ingress", tcp("8.8.8.8", "10.65.0.5"), "forward") == "deny"
    assert host_verdict(m, "eth0", "egress", tcp("10.65.0.5", "8.8.8.8"), "forward") == "allow"


def test_failsafe_configuration() -> None:
    c = Cluster()
    m = c.model()
    assert FailsafeSpec(6, 22) in m.failsafe_in and FailsafeSpec(17, 53) in m.failsafe_out
    felix = {"apiVersion": V3, "kind": "FelixConfiguration"}
    c.calc.update("FelixConfiguration", "default", res(
        {**felix, "metadata": {"name": "default"},
         "spec": {"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 2222,
                                                "net": "10.0.0.0/8"}]}}))
    c.calc.update("FelixConfiguration", f"node.{NODE}", res(
        {**felix, "metadata": {"name": f"node.{NODE}"},
         "spec": {"failsafeOutboundHostPorts": [{"protocol": "UDP", "port": 5353}]}}))
    m2 = c.model()
    assert m2.failsafe_in == (FailsafeSpec(6, 2222, "10.0.0.0/8"),)
    assert m2.failsafe_out == (FailsafeSpec(17, 5353),)
    assert m.diff(m2).failsafe_changed and not m.diff(m).failsafe_changed


# --- incremental behaviour and diffs -----------------------------------------------------------

def test_label_change_moves_endpoint_in_and_out_of_a_set_members_only() -> None:
    c = foo_bar_cluster()
    m1 = c.model()
    assert c.model() is m1  # nothing changed: the same model
    c.add(wep("other", "10.0.2.1", {"foo": "consumer"}, node="node2"))
    m2 = c.model()
    d = m1.diff(m2)
    assert d.members_only and not d.empty
    ((set_id, delta),) = d.ipset_members.items()
    assert delta.added == {"10.0.2.1/32"} and delta.removed == frozenset()
    assert m2.ipsets[set_id].members == {"10.0.1.1/32", "10.0.1.2/32", "10.0.1.3/32",
                                         "10.0.2.1/32"}
    # a local endpoint changing labels: moves out of the set, its program changes too
    c.add(wep("bar-0", "10.0.1.1", {"foo": "none"},
              ports=[{"name": "http", "protocol": "TCP", "port": 80}]))
    m3 = c.model()
    d = m2.diff(m3)
    assert d.ipset_members[set_id].removed == {"10.0.1.1/32"}
    assert d.endpoints.changed == {"default/bar-0"}
    assert m3.endpoints["default/bar-0"].egress_policies == ()
    assert d.policies.removed == {("np:default:knp.default.foo-consumer", "egress")}
    # deleting an endpoint removes it from sets
    c.delete("WorkloadEndpoint", "default/other")
    assert m3.diff(c.model()).ipset_members[set_id].removed == {"10.0.2.1/32"}


def test_policy_change_and_delete_diff() -> None:
    c = foo_bar_cluster()
    m1 = c.model()
    c.add(knp("foo-producer", podSelector={"matchLabels": {"foo": "producer"}},
              policyTypes=["Ingress"],
              ingress=[{"from": [{"podSelector": {"matchLabels": {"foo": "consumer"}}}],
                        "ports": [{"port": 80}]}]))
    m2 = c.model()
    d = m1.diff(m2)
    assert d.policies.changed == {("np:default:knp.default.foo-producer", "ingress")}
    assert not d.endpoints and not d.ipsets
    c.delete("NetworkPolicy", "default/foo-producer")  # a Kubernetes one, by its key
    m3 = c.model()
    assert m3.endpoints["default/foo-0"].ingress_policies == ()
    assert m2.diff(m3).ipsets.removed  # its source set is gone
    assert m3.diff(m3).empty


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_incremental_updates_equal_a_fresh_calculation(seed: int) -> None:
    rng = random.Random(seed)
    c = Cluster()
    live: dict[tuple[str, str], Any] = {}
    pool = [r for _ in range(6) for r in random_resources(rng)]  # variants of each resource
    for step in range(600):
        r = rng.choice(pool)
        key = (kind_of(r), Cluster.key(r))
        if key in live and rng.random() < 0.3:
            c.delete(*key)
            del live[key]
        else:
            c.add(r)
            live[key] = r
        if step % 7 == 6:
            fresh = Cluster().add(*live.values())
            assert c.model() == fresh.model(), f"diverged by step {step}"
            assert c.model().diff(fresh.model()).empty
            assert hash(c.model()) == hash(fresh.model())  # frozen all the way down
    assert c.model().endpoints and c.model().ipsets  # the test did exercise something


def test_update_rejects_unknown_kinds() -> None:
    calc = PolicyCalculator(NODE)
    assert calc.handles("GlobalNetworkPolicy") and calc.handles("k8snetworkpolicies")
    assert calc.handles("IPPool") and calc.handles("nodes")  # protected host ports
    assert not calc.handles("BGPPeer")
    with pytest.raises(ValueError, match="BGPPeer"):
        calc.update("BGPPeer", "x", None)


def test_every_kind_has_a_handler() -> None:
    # the dispatch table covers every kind the KINDS table names
    assert set(PolicyCalculator(NODE)._handlers) == set(KINDS.values()) == set(Kind)


# --- performance -------------------------------------------------------------------------------

PERF_NAMESPACES = [f"ns{i}" for i in range(10)]


def perf_wep(i: int, role_shift: int = 0, env: str = "a") -> Any:
    """Endpoint i of 1000: every tenth one on this node, labels spread over 50 apps, 7 roles
    and 10 namespaces (so this node's endpoints meet most policies)."""
    j = i // 10
    return wep(f"w{i}", f"10.70.{i // 250}.{i % 250 + 1}",
               {"app": f"app{(i + j) % 50}", "role": f"role{(j + role_shift) % 7}", "env": env},
               ns=PERF_NAMESPACES[j % 10], node=NODE if i % 10 == 0 else f"node-{i % 10}",
               ports=[{"name": "http", "protocol": "TCP", "port": 8080}])


def test_performance_1000_endpoints_500_policies(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1)
    nss = PERF_NAMESPACES
    resources: list[Any] = [namespace(n, {"team": f"t{i % 3}"}) for i, n in enumerate(nss)]
    resources += [perf_wep(i, env=rng.choice("ab")) for i in range(1000)]
    for i in range(500):
        kind = i % 3
        if kind == 0:
            resources.append(gnp(f"g{i}", order=i % 17, selector=f"app == 'app{i % 50}'", ingress=[
                {"action": "Allow", "protocol": "TCP",
                 "source": {"selector": f"role == 'role{i % 7}' && app != 'app{i % 49}'"},
                 "destination": {"ports": ["http", 443]}}],
                egress=[{"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}}]))
        elif kind == 1:
            resources.append(np_(f"n{i}", ns=nss[i % 10], selector=f"role == 'role{i % 7}'",
                                 ingress=[{"action": "Allow", "source": {
                                     "namespaceSelector": f"team == 't{i % 3}'",
                                     "selector": f"app == 'app{(i * 7) % 50}'"}}]))
        else:
            resources.append(knp(f"k{i}", ns=nss[i % 10],
                                 podSelector={"matchLabels": {"app": f"app{i % 50}"}},
                                 ingress=[{"from": [{"podSelector": {"matchLabels": {"env": "b"}}}],
                                           "ports": [{"port": "http"}]}]))
    c = Cluster()
    t_load = time.perf_counter()
    c.add(*resources)
    t0 = time.perf_counter()
    m = c.model()
    full = time.perf_counter() - t0
    load = t0 - t_load
    assert len(m.endpoints) == 100 and len(m.policies) > 300 and len(m.ipsets) > 200

    # one label change on one endpoint (alternately local and remote), over and over
    times: list[float] = []
    for n in range(200):
        i = (n % 50) * 10 + (n % 2) * 5
        w = perf_wep(i, role_shift=n, env="ab"[n % 2])
        t0 = time.perf_counter()
        c.calc.update("WorkloadEndpoint", Cluster.key(w), w)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    m2 = c.model()
    incremental_model = time.perf_counter() - t0
    assert m.diff(m2).ipsets.changed
    median, worst = statistics.median(times) * 1e3, max(times) * 1e3
    with capsys.disabled():
        print(f"\n[policy calc] 1000 endpoints x 500 policies ({len(m.policies)} policy "
              f"programs, {len(m.ipsets)} IP sets on this node): {len(resources)} update() "
              f"calls from empty {load * 1e3:.0f} ms, then full model() {full * 1e3:.0f} ms; "
              f"update() of one label change median {median:.3f} ms, "
              f"max {worst:.2f} ms; model() after 200 label changes "
              f"{incremental_model * 1e3:.1f} ms")
    # aims: < 5 ms and < 1 s; the bounds leave slack for slow CI machines
    assert median < 5 and full < 2.0 and load < 30
