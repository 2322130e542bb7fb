"""Resource validation and defaults, as Calico does them (pure, no datastore)."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_base import ResourceInvalid
from datastore.resources import merge_patch, to_resource

V3 = "projectcalico.org/v3"


def doc(kind: str, spec: Any = None, name: str = "x", api: str = V3, **meta: Any) -> dict:
    d: dict[str, Any] = {"apiVersion": api, "kind": kind, "metadata": {"name": name, **meta}}
    if spec is not None:
        d["spec"] = spec
    return d


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ResourceInvalid) as e:
        to_resource(data)
    return e.value.errors


INVALID: list[tuple[str, dict, str]] = [
    ("pool cidr", doc("IPPool", {"cidr": "10.0.300.0/24"}), "spec.cidr: '10.0.300.0/24' is not"),
    ("pool needs cidr", doc("IPPool", {}), "spec.cidr: required field is missing"),
    ("pool block size range", doc("IPPool", {"cidr": "10.0.0.0/16", "blockSize": 19}),
     "spec.blockSize: 19 is out of range"),
    ("pool v6 block size", doc("IPPool", {"cidr": "fd00::/64", "blockSize": 26}),
     "spec.blockSize: 26 is out of range: IPv6 block size must be 116-128"),
    ("pool smaller than block", doc("IPPool", {"cidr": "10.0.0.0/27"}),
     "spec.cidr: pool 10.0.0.0/27 is smaller than one block"),
    ("ipip and vxlan", doc("IPPool", {"cidr": "10.0.0.0/16", "ipipMode": "Always",
                                      "vxlanMode": "CrossSubnet"}),
     "spec: ipipMode and vxlanMode cannot both be enabled"),
    ("ipip mode value", doc("IPPool", {"cidr": "10.0.0.0/16", "ipipMode": "always"}),
     "spec.ipipMode: 'always' is not one of: Never, Always, CrossSubnet"),
    ("pool node selector", doc("IPPool", {"cidr": "10.0.0.0/16", "nodeSelector": "a = 'b'"}),
     "spec.nodeSelector: selector"),
    ("pool unknown field", doc("IPPool", {"cidr": "10.0.0.0/16", "ipipmode": "Always"}),
     "spec: unknown field 'ipipmode'"),
    ("ipv6 ipip", doc("IPPool", {"cidr": "fd00::/64", "ipipMode": "Always"}),
     "spec.ipipMode: IPIP is not supported on an IPv6 pool"),
    ("name", doc("IPPool", {"cidr": "10.0.0.0/16"}, name="Bad_Name"), "metadata.name: invalid"),
    ("label key", doc("GlobalNetworkSet", {}, labels={"-x": "y"}), "metadata.labels"),
    ("ports need protocol", doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "destination": {"ports": [80]}}]}),
     "spec.ingress[0].destination: rules that specify ports must set protocol to TCP, UDP or "
     "SCTP"),
    ("ports with icmp", doc("GlobalNetworkPolicy", {"egress": [
        {"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}}]}),
     "spec.egress[0].source: rules that specify ports"),
    ("bad port", doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [70000]}}]}),
     "spec.ingress[0].destination.ports[0]: port 70000 out of range"),
    ("bad port range", doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]}),
     "'90:80' is not a port range"),
    ("bad action", doc("GlobalNetworkPolicy", {"ingress": [{"action": "Accept"}]}),
     "spec.ingress[0].action: 'Accept' is not an action"),
    ("bad protocol", doc("GlobalNetworkPolicy", {"ingress": [{"action": "Allow",
                                                              "protocol": "TCPX"}]}),
     "spec.ingress[0].protocol: 'TCPX' is not a protocol"),
    ("icmp needs icmp", doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "protocol": "TCP", "icmp": {"type": 8}}]}),
     "spec.ingress[0].icmp: requires protocol ICMP or ICMPv6"),
    ("icmp code needs type", doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "protocol": "ICMP", "icmp": {"code": 0}}]}),
     "spec.ingress[0].icmp: code requires type"),
    ("nets", doc("NetworkPolicy", {"ingress": [{"action": "Deny", "source": {
        "nets": ["10.0.0.0/33"]}}]}), "spec.ingress[0].source.nets[0]: '10.0.0.0/33'"),
    ("ipVersion vs nets", doc("NetworkPolicy", {"ingress": [{"action": "Deny", "ipVersion": 6,
                                                            "source": {"nets": ["10.0.0.0/8"]}}]}),
     "spec.ingress[0].source.nets: address family does not match ipVersion 6"),
    ("selector in rule", doc("NetworkPolicy", {"egress": [{"action": "Allow", "destination": {
        "selector": "has(a"}}]}), "spec.egress[0].destination.selector: selector"),
    ("preDNAT on NetworkPolicy", doc("NetworkPolicy", {"preDNAT": True}),
     "spec: unknown field 'preDNAT'"),
    ("preDNAT needs applyOnForward", doc("GlobalNetworkPolicy", {"preDNAT": True, "ingress": [
        {"action": "Allow"}]}), "spec.applyOnForward: must be true"),
    ("doNotTrack needs applyOnForward", doc("GlobalNetworkPolicy", {"doNotTrack": True}),
     "spec.applyOnForward: must be true"),
    ("preDNAT ingress only", doc("GlobalNetworkPolicy", {
        "preDNAT": True, "applyOnForward": True, "egress": [{"action": "Allow"}]}),
     "spec.egress: a preDNAT policy cannot have egress rules"),
    ("preDNAT and doNotTrack", doc("GlobalNetworkPolicy", {
        "preDNAT": True, "doNotTrack": True, "applyOnForward": True}),
     "spec: preDNAT and doNotTrack cannot both be true"),
    ("types", doc("GlobalNetworkPolicy", {"types": ["Ingress", "Outgress"]}),
     "spec.types[1]: 'Outgress' is not a policy type"),
    ("egress rules need Egress type", doc("GlobalNetworkPolicy", {
        "types": ["Ingress"], "egress": [{"action": "Allow"}]}),
     "spec.egress: egress rules are present but types does not include Egress"),
    ("hep needs interface or ips", doc("HostEndpoint", {"node": "n1"}),
     "spec: at least one of interfaceName or expectedIPs must be specified"),
    ("hep ip", doc("HostEndpoint", {"node": "n1", "expectedIPs": ["10.0.0.300"]}),
     "spec.expectedIPs[0]: '10.0.0.300' is not a valid IP address"),
    ("namespaced global", doc("GlobalNetworkPolicy", {}, namespace="default"),
     "metadata.namespace: GlobalNetworkPolicy is not namespaced"),
    ("unknown kind", doc("Deployment", {}, api="apps/v1"), "not stored by Tortie"),
    ("wrong apiVersion", doc("IPPool", {"cidr": "10.0.0.0/16"}, api="crd.projectcalico.org/v1"),
     "apiVersion: 'crd.projectcalico.org/v1' is not supported for kind IPPool"),
    ("k8s np needs podSelector", doc("NetworkPolicy", {}, api="networking.k8s.io/v1"),
     "spec.podSelector: required field is missing"),
    ("k8s np port protocol", doc("NetworkPolicy", {"podSelector": {}, "ingress": [
        {"ports": [{"protocol": "ICMP", "port": 1}]}]}, api="networking.k8s.io/v1"),
     "spec.ingress[0].ports[0].protocol: unsupported value 'ICMP'"),
    ("k8s np endPort", doc("NetworkPolicy", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 90, "endPort": 80}]}]}, api="networking.k8s.io/v1"),
     "spec.ingress[0].ports[0].endPort: must be greater than or equal to port"),
    ("k8s np peer kinds", doc("NetworkPolicy", {"podSelector": {}, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
        api="networking.k8s.io/v1"),
     "spec.egress[0].to[0]: may not specify ipBlock together with podSelector"),
    ("k8s np except", doc("NetworkPolicy", {"podSelector": {}, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]},
        api="networking.k8s.io/v1"),
     "spec.egress[0].to[0].ipBlock.except[0]: 192.168.0.0/16 must be a strict subset"),
    ("k8s np selector", doc("NetworkPolicy", {"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}}, api="networking.k8s.io/v1"),
     "spec.podSelector.matchExpressions[0].values: may not be specified when operator is Exists"),
    ("k8s np unknown", doc("NetworkPolicy", {"podSelector": {}, "ports": []},
                           api="networking.k8s.io/v1"), "spec: unknown field 'ports'"),
]


@pytest.mark.parametrize(("case", "data", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid(case: str, data: dict, message: str) -> None:
    errs = errors_of(data)
    assert any(message in e for e in errs), errs


def test_ippool_defaults_and_normalisation() -> None:
    _, pool = to_resource(doc("IPPool", {"cidr": "10.0.1.7/24"}, name="dmz-pool"))
    assert pool.dump()["spec"] == {
        "cidr": "10.0.1.0/24", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never",
        "natOutgoing": False, "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"],
        "assignmentMode": "Automatic"}
    _, v6 = to_resource(doc("IPPool", {"cidr": "fd00::/48"}))
    assert v6.spec.blockSize == 122


def test_policy_defaults() -> None:
    _, p = to_resource(doc("NetworkPolicy", {"selector": "app == 'x'",
                                             "egress": [{"action": "Allow"}]}))
    assert p.namespace == "default"
    assert p.spec.types == ["Ingress", "Egress"]
    assert p.spec.tier == "default"
    _, q = to_resource(doc("GlobalNetworkPolicy", {"order": 5}))
    assert q.spec.types == ["Ingress"]
    # order unset sorts last, then by name
    _, r = to_resource(doc("GlobalNetworkPolicy", {}, name="a"))
    assert sorted([r, q], key=lambda x: x.sort_key()) == [q, r]


def test_protocols_are_normalised() -> None:
    _, p = to_resource(doc("GlobalNetworkPolicy", {"ingress": [
        {"action": "Allow", "protocol": "tcp", "destination": {"ports": [80, "8080:8090",
                                                                         "http"]}},
        {"action": "Allow", "protocol": 132, "destination": {"ports": ["1000"]}},
        {"action": "Allow", "protocol": "icmpv6", "icmp": {"type": 128, "code": 0}}]}))
    rules = p.dump()["spec"]["ingress"]
    assert rules[0]["protocol"] == "TCP"
    assert rules[0]["destination"]["ports"] == [80, "8080:8090", "http"]
    assert rules[1]["protocol"] == 132 and rules[1]["destination"]["ports"] == [1000]
    assert rules[2]["protocol"] == "ICMPv6"


def test_full_pod_manifest_applies_and_keeps_what_tortie_uses() -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"},
                     "annotations": {"cni.projectcalico.org/ipv4pools": '["dmz-pool"]'},
                     "ownerReferences": [{"kind": "StatefulSet", "name": "web"}],
                     "generateName": "web-"},
        "spec": {"nodeName": "node1", "serviceAccountName": "api", "restartPolicy": "Always",
                 "containers": [{"name": "web", "image": "nginx", "args": ["-g"],
                                 "ports": [{"name": "http", "containerPort": 80},
                                           {"name": "dns", "containerPort": 53,
                                            "protocol": "UDP"}],
                                 "resources": {"limits": {"cpu": "1"}}}],
                 "volumes": [{"name": "v", "emptyDir": {}}], "tolerations": []},
        "status": {"phase": "Running", "podIP": "10.0.0.5", "conditions": []},
    }
    _, p = to_resource(pod)
    assert p.named_ports() == {("http", "TCP"): 80, ("dns", "UDP"): 53}
    assert p.service_account == "api"
    out = p.dump()
    assert "volumes" not in out["spec"] and "ownerReferences" not in out["metadata"]
    assert out["metadata"]["annotations"]["cni.projectcalico.org/ipv4pools"] == '["dmz-pool"]'


def test_k8s_node_addresses() -> None:
    _, n = to_resource({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "node1", "labels": {"kubernetes.io/hostname": "node1"}},
        "spec": {"podCIDR": "10.244.1.0/24", "taints": []},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.2.11"}],
                   "capacity": {"cpu": "2"}}})
    assert n.status.addresses[0].address == "192.168.2.11"


def test_v1_documents_convert() -> None:
    _, hep = to_resource({"apiVersion": "v1", "kind": "hostEndpoint", "metadata": {
        "name": "eth0-web", "node": "my-host", "labels": {"role": "webserver"}},
        "spec": {"interfaceName": "eth0", "expectedIPs": ["10.0.0.1"]}})
    assert hep.kind == "HostEndpoint" and hep.spec.node == "my-host"
    _, pol = to_resource({"apiVersion": "v1", "kind": "policy", "metadata": {"name": "f"},
                          "spec": {"selector": "all()", "order": 0, "ingress": [
                              {"action": "allow", "protocol": "tcp",
                               "source": {"net": "10.1.0.0/16"},
                               "destination": {"ports": [22]}}]}})
    rule = pol.dump()["spec"]["ingress"][0]
    assert pol.kind == "GlobalNetworkPolicy"
    assert rule["action"] == "Allow" and rule["source"]["nets"] == ["10.1.0.0/16"]
    _, prof = to_resource({"apiVersion": "v1", "kind": "profile", "metadata": {
        "name": "p", "labels": {"a": "b"}, "tags": ["t"]}, "spec": {}})
    assert prof.spec.labelsToApply == {"a": "b", "t": ""}
    _, node = to_resource({"apiVersion": "v1", "kind": "node", "metadata": {"name": "n1"},
                           "spec": {"bgp": {"asNumber": "1.10", "ipv4Address": "10.0.0.1/24"}}})
    assert node.spec.bgp.asNumber == 65546


def test_merge_patch() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": [1]}) \
        == {"a": {"c": 2, "e": 4}, "d": [1]}
