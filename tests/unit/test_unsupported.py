"""Fields Tortie accepts but does not act on: the table, what counts as set, the warnings,
the agents' log-once, the rendering of unenforceable rule matches, docs/supported.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from datastore.kinds import KINDS
from datastore.model_base import CALICO_API_VERSION
from datastore.model_policy import Rule
from datastore.resources import to_resource
from datastore.unsupported import (
    FELIX_ACTED_ON,
    UNSUPPORTED,
    IgnoredFieldLog,
    ignored_fields,
    render_markdown,
    resource_ignored_fields,
    rule_unenforced,
    warnings,
)
from policyagent.rule_translation import RulePrograms, translate_rules
from tests.support.policy import Cluster, gnp, wep

ROOT = Path(__file__).resolve().parents[2]


def res(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> Any:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    _, obj = to_resource({"apiVersion": CALICO_API_VERSION, "kind": kind, "metadata": meta,
                          "spec": spec})
    return obj


def paths(obj: Any) -> list[str]:
    return [f.path for f in resource_ignored_fields(obj)]


# --- the table -----------------------------------------------------------------------------


def _field_exists(model: type[BaseModel], path: str) -> bool:
    """Whether the dotted ``path`` (``[*]`` for list elements) names a field of ``model``."""
    current: Any = model
    for part in path.split("."):
        name = part.removesuffix("[*]")
        fields = current.model_fields
        info = next((f for n, f in fields.items() if (f.alias or n) == name), None)
        if info is None:
            return False
        ann = info.annotation
        current = _model_in(ann)
        if current is None:
            return part == path.split(".")[-1]
    return True


def _model_in(ann: Any) -> Any:
    """The pydantic model inside an annotation (``X | None``, ``list[X]``), if any."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def test_every_table_path_is_a_field_of_its_kind() -> None:
    models = {k.kind: k.model for k in KINDS if k.api_version == CALICO_API_VERSION}
    for entry in UNSUPPORTED:
        assert entry.kind in models, entry
        assert _field_exists(models[entry.kind], entry.path), entry


def test_table_has_no_duplicates_and_leaves_acted_on_fields_out() -> None:
    keys = [(e.kind, e.path, e.scope) for e in UNSUPPORTED]
    assert len(keys) == len(set(keys))
    felix = {e.path for e in UNSUPPORTED if e.kind == "FelixConfiguration"}
    assert "spec.wireguardEnabled" in felix
    for name in FELIX_ACTED_ON:
        assert f"spec.{name}" not in felix
    listed = {(e.kind, e.path) for e in UNSUPPORTED if e.scope == "all"}
    for acted_on in [("GlobalNetworkPolicy", "spec.selector"),
                     ("GlobalNetworkPolicy", "spec.ingress[*].source.serviceAccounts"),
                     ("GlobalNetworkPolicy", "spec.doNotTrack"),
                     ("BGPConfiguration", "spec.asNumber"),  # only per node
                     ("BGPPeer", "spec.peerIP"), ("BGPPeer", "spec.ttlSecurity"),
                     ("WorkloadEndpoint", "spec.allowSpoofedSourcePrefixes"),
                     ("IPPool", "spec.natOutgoing")]:
        assert acted_on not in listed, acted_on


# --- what is set ---------------------------------------------------------------------------


def test_policy_rule_matches() -> None:
    pol = res("GlobalNetworkPolicy", "default.x", {
        "ingress": [{"action": "Allow", "http": {"methods": ["GET"]}},
                    {"action": "Allow", "protocol": "TCP"},
                    {"action": "Deny", "destination": {"services": {"name": "db",
                                                                    "namespace": "prod"}}}],
        "egress": [{"action": "Log", "source": {"services": {"name": "web"}}}],
        "performanceHints": ["AssumeNeededOnEveryNode"]})
    fields = resource_ignored_fields(pol)
    assert [(f.path, f.action) for f in fields] == [
        ("spec.ingress[0].http", "Allow"),
        ("spec.ingress[2].destination.services", "Deny"),
        ("spec.egress[0].source.services", "Log"),
        ("spec.performanceHints", None)]
    assert warnings(pol) == [
        "warning: GlobalNetworkPolicy default.x: spec.ingress[0].http is not enforced by "
        "Tortie: this Allow rule matches no traffic",
        "warning: GlobalNetworkPolicy default.x: spec.ingress[2].destination.services is not "
        "enforced by Tortie: this Deny rule applies without it (to more traffic)",
        "warning: GlobalNetworkPolicy default.x: spec.egress[0].source.services is not "
        "enforced by Tortie: this Log rule applies without it (to more traffic)",
        "warning: GlobalNetworkPolicy default.x: spec.performanceHints is not supported by "
        "Tortie: stored, but it has no effect",
    ]


def test_empty_matches_are_not_set() -> None:
    np = res("NetworkPolicy", "np", {"ingress": [
        {"action": "Allow", "http": {}}, {"action": "Allow", "http": {"methods": []}},
        {"action": "Allow", "source": {"services": {}}}]}, namespace="shop")
    assert paths(np) == []
    assert warnings(res("NetworkPolicy", "np", {"egress": [
        {"action": "Pass", "http": {"paths": [{"exact": "/"}]}}]}, namespace="shop")) == [
        "warning: NetworkPolicy shop/np: spec.egress[0].http is not enforced by Tortie: "
        "this Pass rule matches no traffic"]


def test_profile_rules() -> None:
    assert paths(res("Profile", "p", {"egress": [
        {"action": "Allow", "destination": {"services": {"name": "k"}}}]})) == [
        "spec.egress[0].destination.services"]


def test_felix_configuration() -> None:
    # what calico-node writes by default: nothing Tortie would do differently
    assert paths(res("FelixConfiguration", "default", {
        "bpfLogLevel": "", "floatingIPs": "Disabled", "logSeverityScreen": "Info",
        "reportingInterval": "0s"})) == []
    assert paths(res("FelixConfiguration", "default", {
        "wireguardEnabled": False, "bpfEnabled": False,
        "failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22}],
        "defaultEndpointToHostAction": "Accept", "workloadProtectedHostPorts": []})) == []
    assert sorted(paths(res("FelixConfiguration", "node.n1", {
        "wireguardEnabled": True, "logSeverityScreen": "Debug", "ipipEnabled": False,
        "vxlanVNI": 4097, "vxlanPort": 8472}))) == [
        "spec.ipipEnabled", "spec.logSeverityScreen", "spec.wireguardEnabled"]


def test_bgp_configuration() -> None:
    cfg = res("BGPConfiguration", "default", {
        "asNumber": 64513, "nodeToNodeMeshEnabled": False,
        "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
        "communities": [{"name": "c", "value": "100:1"}],
        "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}],
        "serviceExternalIPs": [{"cidr": "203.0.113.0/24"}],
        "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
        "serviceLoadBalancerAggregation": "Disabled", "ignoredInterfaces": ["eth9"],
        "programClusterRoutes": "Enabled"})
    # communities and service addresses are acted on (Disabled aggregation is what Tortie does)
    assert paths(cfg) == ["spec.ignoredInterfaces"]
    assert paths(res("BGPConfiguration", "default", {
        "serviceLoadBalancerAggregation": "Enabled"})) == ["spec.serviceLoadBalancerAggregation"]
    # logSeverityScreen defaults to Info (not a warning); a per-node AS number is not read
    assert paths(res("BGPConfiguration", "node.n1", {"asNumber": 64513, "listenPort": 1790})
                 ) == ["spec.asNumber"]
    assert warnings(cfg)[0] == ("warning: BGPConfiguration default: spec.ignoredInterfaces is "
                                "not supported by Tortie: stored, but it has no effect")


def test_configurations_with_other_names_are_not_read_at_all() -> None:
    assert warnings(res("FelixConfiguration", "extra", {"wireguardEnabled": True,
                                                        "failsafeInboundHostPorts": []})) == [
        "warning: FelixConfiguration extra: spec is not supported by Tortie: stored, but it "
        "has no effect"]
    assert paths(res("BGPConfiguration", "mine", {"asNumber": 65001})) == ["spec"]
    assert paths(res("FelixConfiguration", "node.n1", {"failsafeInboundHostPorts": []})) == []


def test_bgp_peer() -> None:
    assert paths(res("BGPPeer", "p", {"peerIP": "192.0.2.1", "asNumber": 65000,
                                      "keepaliveTime": "10s", "sourceAddress": "None",
                                      "maxRestartTime": "30s", "localASNumber": 65010,
                                      "numAllowedLocalASNumbers": 1, "filters": ["f"],
                                      "reachableBy": "192.0.2.254",
                                      "reversePeering": "Manual",
                                      "ttlSecurity": 1})) == ["spec.reversePeering"]
    assert paths(res("BGPFilter", "f", {"exportV4": [
        {"action": "Reject", "matchOperator": "In", "cidr": "10.0.0.0/8"}]})) == []


def test_endpoints_node_kcc_and_fully_supported_kinds() -> None:
    wep_ = res("WorkloadEndpoint", "n1-k8s-p-eth0", {
        "node": "n1", "orchestrator": "k8s", "pod": "p", "endpoint": "eth0",
        "ipNetworks": ["10.65.0.1/32"], "interfaceName": "cali1",
        "ipNATs": [{"internalIP": "10.65.0.1", "externalIP": "192.0.2.9"}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "hostPort": 8080},
                  {"name": "dns", "protocol": "UDP", "port": 53}]}, namespace="default")
    assert paths(wep_) == ["spec.ipNATs", "spec.ports[0].hostPort"]
    # IPv6 VXLAN is supported: its MAC field is not flagged
    assert paths(res("Node", "n1", {"bgp": {"ipv4Address": "192.0.2.1/24"},
                                    "vxlanTunnelMACAddrV6": "66:00:00:00:00:01"})) == []
    assert paths(res("Node", "n1", {"bgp": {"ipv4Address": "192.0.2.1/24"},
                                    "interfaceName": "eth0"})) == ["spec.interfaceName"]
    assert paths(res("KubeControllersConfiguration", "default", {})) == []  # full defaults
    assert paths(res("KubeControllersConfiguration", "default", {
        "etcdV3CompactionPeriod": "5m", "controllers": {"node": {"hostEndpoint": {
            "autoCreate": "Enabled",
            "templates": [{"generateName": "t", "interfaceCIDRs": ["10.0.0.0/8"]}]}}}})) == [
        "spec.etcdV3CompactionPeriod", "spec.controllers.node.hostEndpoint.templates"]
    for obj in (res("IPPool", "p", {"cidr": "10.65.0.0/16", "natOutgoing": True,
                                    "vxlanMode": "Always", "blockSize": 24}),
                res("GlobalNetworkSet", "g", {"nets": ["10.0.0.0/8"]}),
                res("IPReservation", "r", {"reservedCIDRs": ["10.65.0.0/28"]}),
                res("HostEndpoint", "h", {"node": "n1", "interfaceName": "eth0",
                                          "ports": [{"name": "x", "protocol": "TCP",
                                                     "port": 80}]})):
        assert paths(obj) == [], obj.KIND


def test_kubernetes_kinds_are_not_checked() -> None:
    _, knp = to_resource({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": "k", "namespace": "d"},
                          "spec": {"podSelector": {}}})
    assert resource_ignored_fields(knp) == []
    assert ignored_fields("Pod", {"spec": {"ingress": [{"http": {"methods": ["GET"]}}]}}) == []


# --- agents ----------------------------------------------------------------------------------


def test_agent_logs_once_per_resource(caplog: pytest.LogCaptureFixture) -> None:
    seen = IgnoredFieldLog("routing", frozenset({"BGPPeer"}))
    peer = res("BGPPeer", "p", {"peerIP": "192.0.2.1", "asNumber": 65000,
                                "reversePeering": "Manual"})
    with caplog.at_level(logging.WARNING, logger="tortie.unsupported"):
        seen.update("/k/p", peer)
        seen.update("/k/p", peer)  # the same again (e.g. a resync): no second line
        seen.update("/k/other", res("GlobalNetworkPolicy", "g", {"performanceHints": ["x"]}))
        more = res("BGPPeer", "p", {"asNumber": 65000, "localWorkloadSelector": "all()",
                                    "reversePeering": "Manual"})
        seen.update("/k/p", more)  # a field more: both logged again
        seen.update("/k/p", None)
        seen.update("/k/p", peer)  # re-created: logged again
    got = [vars(r)["fields"]["field"] for r in caplog.records]
    assert got == ["spec.reversePeering", "spec.localWorkloadSelector",
                   "spec.reversePeering", "spec.reversePeering"]
    assert vars(caplog.records[0])["fields"]["resource"] == "BGPPeer p"


# --- rule rendering ----------------------------------------------------------------------


def _render(rule: dict[str, Any]) -> Any:
    out = RulePrograms()
    translate_rules("gnp:x", "ingress", [Rule.model_validate(rule)], None, out)
    (spec,) = out.programs["ingress"].rules
    return spec


@pytest.mark.parametrize("extra", [{"http": {"methods": ["GET"]}},
                                   {"source": {"services": {"name": "a", "namespace": "b"}}},
                                   {"destination": {"services": {"name": "a"}}}])
def test_unenforceable_match_never_widens(extra: dict[str, Any]) -> None:
    base = {"protocol": "TCP", "destination": {"ports": [80]}}

    def rule(action: str) -> dict[str, Any]:
        r: dict[str, Any] = {"action": action, **base, **extra}
        if "destination" in extra:
            r["destination"] = {**base["destination"], **extra["destination"]}
        return r

    assert rule_unenforced(Rule.model_validate(rule("Allow")))
    assert _render(rule("Allow")).action == "none"
    assert _render(rule("Pass")).action == "none"
    for action in ("Deny", "Log"):
        spec = _render(rule(action))
        assert spec.action == action.lower()
        assert spec.protocol == 6 and spec.dst_ports == ((80, 80),)  # the rest still applies
    assert _render({"action": "Allow", **base}).action == "allow"
    assert _render({"action": "Allow", **base, "http": {}}).action == "allow"  # empty: no match


def test_allow_with_http_lets_nothing_through_in_the_model() -> None:
    from policyagent.simulate import Packet, workload_verdict

    def verdict(rule: dict[str, Any]) -> str:
        model = Cluster().add(
            wep("a", "10.65.0.1", {"app": "a"}), wep("b", "10.65.0.2", {"app": "b"}),
            gnp("only-get", selector="app == 'b'", ingress=[rule])).model()
        return workload_verdict(model, "default/b", "ingress",
                                Packet("10.65.0.1", "10.65.0.2", "TCP", 40000, 80))

    assert verdict({"action": "Allow", "protocol": "TCP"}) == "allow"
    assert verdict({"action": "Allow", "protocol": "TCP", "http": {"methods": ["GET"]}}) == \
        "deny"


# --- docs ----------------------------------------------------------------------------------


def test_supported_doc_is_up_to_date() -> None:
    doc = (ROOT / "docs" / "supported.md").read_text()
    assert doc == render_markdown(), (
        "docs/supported.md is out of date: python -m datastore.unsupported > docs/supported.md")
    for entry in UNSUPPORTED:
        assert f"`{entry.path}`" in doc
