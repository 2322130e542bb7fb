"""Kubernetes NetworkPolicy -> Calico NetworkPolicy, and its effect through the calculation."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_policy import NetworkPolicy
from datastore.resources import to_resource
from policyagent.calc import PolicyCalculator
from policyagent.k8s_translate import calico_name, translate
from policyagent.simulate import Packet, workload_verdict

POD = 'projectcalico.org/orchestrator == "k8s"'


def knp(spec: dict[str, Any], name: str = "p", ns: str = "prod") -> Any:
    return to_resource({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": name, "namespace": ns}, "spec": spec})[1]


def tr(spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
    pol = translate(knp(spec, **kw))
    assert isinstance(pol, NetworkPolicy)
    return pol.dump()


def test_name_namespace_order_selector() -> None:
    d = tr({"podSelector": {"matchLabels": {"app": "db", "tier": "2"}}})
    assert d["metadata"] == {"name": "knp.default.p", "namespace": "prod"}
    assert calico_name("p") == "knp.default.p"
    assert d["spec"]["order"] == 1000 and d["spec"]["tier"] == "default"
    assert d["spec"]["selector"] == f'{POD} && app == "db" && tier == "2"'
    assert tr({"podSelector": {}})["spec"]["selector"] == POD
    expr = tr({"podSelector": {"matchExpressions": [
        {"key": "env", "operator": "In", "values": ["b", "a"]},
        {"key": "x", "operator": "DoesNotExist"}]}})
    assert expr["spec"]["selector"] == f'{POD} && env in {{"a", "b"}} && !has(x)'


def test_policy_types() -> None:
    # the API server's default: Ingress, plus Egress when there are egress rules
    assert tr({"podSelector": {}})["spec"]["types"] == ["Ingress"]
    d = tr({"podSelector": {}, "egress": [{}]})
    assert d["spec"]["types"] == ["Ingress", "Egress"]
    assert "ingress" not in d["spec"] and d["spec"]["egress"] == [
        {"action": "Allow", "source": {}, "destination": {}}]
    d = tr({"podSelector": {}, "policyTypes": ["Egress"]})
    assert d["spec"]["types"] == ["Egress"] and "egress" not in d["spec"]  # deny all egress


def test_empty_from_and_to_mean_everything() -> None:
    d = tr({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{}, {"from": []}], "egress": [{"to": []}]})
    assert d["spec"]["ingress"] == [{"action": "Allow", "source": {}, "destination": {}}] * 2
    assert d["spec"]["egress"] == [{"action": "Allow", "source": {}, "destination": {}}]


def test_peers() -> None:
    d = tr({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"role": "fe"}}},
        {"namespaceSelector": {"matchLabels": {"team": "x"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "mon"}}},
        {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24", "172.16.2.0/24"]}},
    ]}]})
    sources = [r["source"] for r in d["spec"]["ingress"]]
    assert sources == [
        {"selector": f'{POD} && role == "fe"'},
        {"selector": POD, "namespaceSelector": 'team == "x"'},
        {"selector": f'{POD} && role == "mon"', "namespaceSelector": "all()"},
        {"nets": ["172.16.0.0/12"], "notNets": ["172.16.1.0/24", "172.16.2.0/24"]},
    ]
    e = tr({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]})
    assert e["spec"]["egress"] == [{"action": "Allow", "protocol": "UDP", "source": {},
                                    "destination": {"nets": ["10.0.0.0/8"], "ports": [53]}}]


def test_ports_grouped_by_protocol_ranges_named_and_all() -> None:
    d = tr({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"port": 81, "endPort": 90}, {"port": 85}, {"port": "http"},
        {"protocol": "UDP", "port": 53}, {"protocol": "SCTP"}, {"protocol": "SCTP", "port": 9}]}]})
    rules = d["spec"]["ingress"]
    assert [(r.get("protocol"), r["destination"].get("ports")) for r in rules] == [
        ("SCTP", None), ("TCP", ["80:90", "http"]), ("UDP", [53])]
    # one rule per (protocol, peer)
    d = tr({"podSelector": {}, "ingress": [{
        "from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "ports": [{"port": 1}, {"protocol": "UDP", "port": 2}]}]})
    assert len(d["spec"]["ingress"]) == 4


def test_invalid_kubernetes_policies_are_rejected() -> None:
    with pytest.raises(ValueError, match="endPort"):
        knp({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]})
    with pytest.raises(ValueError, match="ipBlock"):
        knp({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]})


# --- through the calculation ---------------------------------------------------------------------

V3 = "projectcalico.org/v3"


def calc_with(*policies: Any) -> PolicyCalculator:
    c = PolicyCalculator("n1")
    for name, labels in (("prod", {"env": "prod"}), ("dev", {"env": "dev"})):
        c.update("Namespace", name, to_resource({"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name,
                                                              "labels": labels}})[1])
    pods = (("db", "prod", "10.65.0.1", {"app": "db"}), ("api", "prod", "10.65.0.2",
                                                         {"app": "api"}),
            ("api", "dev", "10.65.1.2", {"app": "api"}))
    for name, ns, ip, labels in pods:
        c.update("WorkloadEndpoint", f"{ns}/{name}", to_resource({
            "apiVersion": V3, "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"node": "n1", "orchestrator": "k8s", "pod": name,
                     "ipNetworks": [f"{ip}/32"], "interfaceName": f"cali-{ns}-{name}",
                     "profiles": [f"kns.{ns}", f"ksa.{ns}.default"],
                     "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}]}})[1])
    # a host-networked thing with the same labels is not a pod
    c.update("HostEndpoint", "h", to_resource({
        "apiVersion": V3, "kind": "HostEndpoint",
        "metadata": {"name": "h", "labels": {"app": "api"}},
        "spec": {"node": "n2", "interfaceName": "eth0", "expectedIPs": ["192.168.0.9"]}})[1])
    for p in policies:
        c.update("K8sNetworkPolicy", f"{p.namespace}/{p.name}", p)
    return c


def allowed(c: PolicyCalculator, src: str, port: int = 5432) -> bool:
    return workload_verdict(c.model(), "prod/db", "ingress",
                            Packet(src, "10.65.0.1", "TCP", 40000, port)) == "allow"


def test_pod_selector_peer_is_namespace_scoped_and_pods_only() -> None:
    c = calc_with(knp({"podSelector": {"matchLabels": {"app": "db"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                                    "ports": [{"port": "pg"}]}]}))
    assert allowed(c, "10.65.0.2")
    assert not allowed(c, "10.65.1.2")      # dev's api: other namespace
    assert not allowed(c, "192.168.0.9")    # host endpoint: not a pod
    assert not allowed(c, "10.65.0.2", 80)  # not the named port
    assert c.model().endpoints["prod/api"].ingress_policies == ()


def test_namespace_selector_peer() -> None:
    c = calc_with(knp({"podSelector": {"matchLabels": {"app": "db"}},
                       "ingress": [{"from": [{"namespaceSelector": {
                           "matchLabels": {"env": "dev"}}}]}]}))
    assert allowed(c, "10.65.1.2") and not allowed(c, "10.65.0.2")
    c.update("Namespace", "dev", to_resource({"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "dev"}})[1])
    assert not allowed(c, "10.65.1.2")  # dev lost its label


def test_all_namespaces_and_ipblock() -> None:
    c = calc_with(knp({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "api"}}}]},
        {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.0.0/24"]}}]}]}))
    assert allowed(c, "10.65.0.2") and allowed(c, "10.65.1.2")
    assert allowed(c, "192.168.5.5") and not allowed(c, "192.168.0.9")


def test_default_deny_then_delete() -> None:
    c = calc_with(knp({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
                      name="default-deny"))
    m = c.model()
    assert not allowed(c, "10.65.0.2")
    assert workload_verdict(m, "prod/db", "egress",
                            Packet("10.65.0.1", "1.1.1.1", "UDP", 1, 53)) == "deny"
    assert workload_verdict(m, "dev/api", "egress",
                            Packet("10.65.1.2", "1.1.1.1", "UDP", 1, 53)) == "allow"
    c.update("K8sNetworkPolicy", "prod/default-deny", None)
    assert allowed(c, "8.8.8.8", 1)
