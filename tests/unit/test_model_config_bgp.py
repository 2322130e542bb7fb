"""FelixConfiguration, KubeControllersConfiguration, BGPConfiguration and BGPPeer models."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from datastore.model_base import SERVER_FIELDS, Resource, ResourceInvalid
from datastore.model_bgp import (
    DEFAULT_AS_NUMBER,
    BGPConfiguration,
    BGPPeer,
    effective_bgp_settings,
)
from datastore.model_config import (
    DEFAULT_FAILSAFE_INBOUND,
    DEFAULT_FAILSAFE_OUTBOUND,
    DEFAULT_KUBE_CONTROLLERS_SPEC,
    FelixConfiguration,
    KubeControllersConfiguration,
    ProtoPort,
)

SEED_003 = """
apiVersion: projectcalico.org/v3
kind: KubeControllersConfiguration
metadata:
  creationTimestamp: "2020-05-14T23:19:23Z"
  name: default
  resourceVersion: "738864"
  uid: 7ef01338-124b-402f-85f0-699bad5529c4
spec:
  controllers:
    namespace:
      reconcilerPeriod: 5m0s
    node:
      reconcilerPeriod: 5m0s
      syncLabels: Enabled
    policy:
      reconcilerPeriod: 5m0s
    serviceAccount:
      reconcilerPeriod: 5m0s
    workloadEndpoint:
      reconcilerPeriod: 5m0s
  etcdV3CompactionPeriod: 10m0s
  healthChecks: Enabled
  logSeverityScreen: Info
status:
  environmentVars:
    DATASTORE_TYPE: kubernetes
    ENABLED_CONTROLLERS: node
  runningConfig:
    controllers:
      node:
        hostEndpoint:
          autoCreate: Disabled
        syncLabels: Disabled
    etcdV3CompactionPeriod: 10m0s
    healthChecks: Enabled
    logSeverityScreen: Info
"""
SEED_003_PATCH = {"spec": {"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}}}

FELIX_FULL = """
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  bpfLogLevel: ""
  bpfEnabled: false
  bpfExternalServiceMode: Tunnel
  bpfKubeProxyMinSyncPeriod: 1s
  bpfConntrackTimeouts:
    tcpEstablished: 1h
    udpTimeout: Auto
  chainInsertMode: Insert
  defaultEndpointToHostAction: Return
  failsafeInboundHostPorts:
  - protocol: TCP
    port: 22
  - protocol: UDP
    port: 68
    net: 10.0.0.0/8
  - protocol: SCTP
    port: 5000
  failsafeOutboundHostPorts:
  - protocol: UDP
    port: 53
  featureDetectOverride: SNATFullyRandom=true,MASQFullyRandom=false
  floatingIPs: Disabled
  healthEnabled: true
  healthPort: 9099
  healthTimeoutOverrides:
  - name: InternalDataplaneMainLoop
    timeout: 2m0s
  interfacePrefix: cali,tap
  ipipEnabled: true
  ipipMTU: 1440
  iptablesBackend: NFT
  iptablesMarkMask: 4294901760
  ipv6Support: false
  kubeNodePortRanges:
  - 30000:32767
  - 8080
  logSeverityScreen: Info
  logSeverityFile: Warning
  mtuIfacePattern: ^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)
  natOutgoingAddress: 192.0.2.10
  natPortRange: 32768:65535
  nftablesMode: Disabled
  prometheusMetricsEnabled: true
  prometheusMetricsPort: 9091
  reportingInterval: 0s
  routeRefreshInterval: 1m30s
  routeTableRanges:
  - min: 1
    max: 250
  iptablesRefreshInterval: 10s
  serviceLoopPrevention: Drop
  vxlanEnabled: true
  vxlanMTU: 1410
  vxlanPort: 4789
  vxlanVNI: 4096
  wireguardEnabled: true
  wireguardInterfaceName: wireguard.cali
  wireguardListeningPort: 51820
  wireguardKeepAlive: 25s
  xdpEnabled: true
  goGCThreshold: -1
"""

BGP_CONFIG = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
  listenPort: 1790
  bindMode: NodeIP
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
  - cidr: fd00:10:96::/112
  serviceExternalIPs:
  - cidr: 104.244.42.129/32
  - cidr: 172.217.3.0/24
  serviceLoadBalancerIPs:
  - cidr: 192.0.2.0/24
  communities:
  - name: bgp-large-community
    value: 63400:300:100
  - name: no-export
    value: 65535:65281
  prefixAdvertisements:
  - cidr: 172.218.4.0/26
    communities:
    - bgp-large-community
    - 63400:120
  - cidr: 10.0.0.0/8
    communities:
    - no-export
  ignoredInterfaces:
  - docker*
  localWorkloadPeeringIPV4: 169.254.0.179
"""

PEERS = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: global-tor
spec:
  peerIP: 192.0.2.1
  asNumber: 64567
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  node: rack1-host1
  peerIP: "[2001:db8::1]:1790"
  asNumber: "1.10"
  sourceAddress: None
  maxRestartTime: 2m0s
  keepaliveTime: 10s
  keepOriginalNextHop: true
  numAllowedLocalASNumbers: 1
  ttlSecurity: 1
  filters:
  - export-only
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: bgppeer-secure
spec:
  peerIP: 192.168.1.1:1790
  asNumber: 63400
  reachableBy: 192.168.0.1
  password:
    secretKeyRef:
      name: bgp-secrets
      key: rr-password
"""


def _strip_server(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for f in SERVER_FIELDS:
        out.get("metadata", {}).pop(f, None)
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _errors(model: type[Resource], doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ResourceInvalid) as ei:
        model.from_dict(doc)
    return ei.value.errors


def _doc(kind: str, spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name},
            "spec": spec}


# --- valid documents --------------------------------------------------------------------------

def test_seed_003_validates_and_round_trips() -> None:
    doc = yaml.safe_load(SEED_003)
    kcc = KubeControllersConfiguration.from_dict(doc)
    assert _strip_server(kcc.dump()) == _strip_server(doc)
    assert kcc.host_endpoint_auto_create() is False
    assert kcc.status is not None and kcc.status.environmentVars == {
        "DATASTORE_TYPE": "kubernetes", "ENABLED_CONTROLLERS": "node"}


def test_seed_003_patch_validates() -> None:
    doc = _merge(yaml.safe_load(SEED_003), SEED_003_PATCH)
    kcc = KubeControllersConfiguration.from_dict(doc)
    assert kcc.host_endpoint_auto_create() is True
    assert _strip_server(kcc.dump()) == _strip_server(doc)


def test_kube_controllers_defaults_for_an_empty_spec() -> None:
    kcc = KubeControllersConfiguration.from_dict(
        {"apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
         "metadata": {"name": "default"}, "spec": {}})
    assert kcc.dump()["spec"] == DEFAULT_KUBE_CONTROLLERS_SPEC
    assert kcc.host_endpoint_auto_create() is False
    assert KubeControllersConfiguration.from_dict(
        {"metadata": {"name": "default"}}).dump()["spec"] == DEFAULT_KUBE_CONTROLLERS_SPEC


def test_kube_controllers_schema_defaults_on_a_partial_spec() -> None:
    kcc = KubeControllersConfiguration.from_dict(_doc(
        "KubeControllersConfiguration",
        {"logSeverityScreen": "Debug", "controllers": {"loadBalancer": {}},
         "prometheusMetricsPort": 9094,
         "debugProfilePort": 6060}))
    spec = kcc.dump()["spec"]
    assert spec["healthChecks"] == "Enabled"
    assert spec["controllers"] == {"loadBalancer": {"assignIPs": "AllServices"}}


def test_kube_controllers_host_endpoint_templates() -> None:
    kcc = KubeControllersConfiguration.from_dict(_doc("KubeControllersConfiguration", {
        "controllers": {"node": {
            "leakGracePeriod": "15m",
            "hostEndpoint": {
                "autoCreate": "Enabled", "createDefaultHostEndpoint": "Disabled",
                "templates": [{"generateName": "custom-hep", "interfaceCIDRs": ["1.2.3.0/24"],
                               "interfacePattern": "eth0|eth1",
                               "nodeSelector": "has(my-label)", "labels": {"key": "value"}}],
            }}}}))
    assert kcc.host_endpoint_auto_create() is True


def test_full_felix_configuration_round_trips() -> None:
    doc = yaml.safe_load(FELIX_FULL)
    fc = FelixConfiguration.from_dict(doc)
    assert fc.dump() == doc
    assert [str(p) for p in fc.effective_failsafe_inbound()] == [
        "tcp:22", "udp:68 from 10.0.0.0/8", "sctp:5000"]
    assert [str(p) for p in fc.effective_failsafe_outbound()] == ["udp:53"]


def test_calicoctl_default_felix_configuration() -> None:
    doc = _doc("FelixConfiguration", {"bpfLogLevel": "", "floatingIPs": "Disabled",
                                      "logSeverityScreen": "Info", "reportingInterval": "0s"})
    assert FelixConfiguration.from_dict(doc).dump() == doc


def test_felix_node_specific_configuration() -> None:
    fc = FelixConfiguration.from_dict(_doc("FelixConfiguration", {"logSeverityScreen": "Debug"},
                                           name="node.worker-1"))
    assert fc.node_name == "worker-1"


def test_failsafe_defaults_when_unset() -> None:
    fc = FelixConfiguration.from_dict(_doc("FelixConfiguration", {}))
    assert fc.effective_failsafe_inbound() == list(DEFAULT_FAILSAFE_INBOUND)
    assert fc.effective_failsafe_outbound() == list(DEFAULT_FAILSAFE_OUTBOUND)
    assert [str(p) for p in DEFAULT_FAILSAFE_INBOUND] == [
        "tcp:22", "udp:68", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443",
        "tcp:6666", "tcp:6667"]
    assert [str(p) for p in DEFAULT_FAILSAFE_OUTBOUND] == [
        "udp:53", "udp:67", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443",
        "tcp:6666", "tcp:6667"]
    # The results are copies: changing them leaves the defaults alone.
    fc.effective_failsafe_inbound()[0].port = 2222
    assert DEFAULT_FAILSAFE_INBOUND[0].port == 22


@pytest.mark.parametrize("value", [[], "none", "None"])
def test_empty_failsafe_list_disables(value: Any) -> None:
    fc = FelixConfiguration.from_dict(_doc("FelixConfiguration", {
        "failsafeInboundHostPorts": value, "failsafeOutboundHostPorts": value}))
    assert fc.effective_failsafe_inbound() == []
    assert fc.effective_failsafe_outbound() == []
    assert fc.dump()["spec"]["failsafeInboundHostPorts"] == []


def test_failsafe_protocol_defaults_to_tcp_and_is_upper_cased() -> None:
    fc = FelixConfiguration.from_dict(_doc("FelixConfiguration", {
        "failsafeInboundHostPorts": [{"port": 22}, {"protocol": "udp", "port": 68}]}))
    assert fc.effective_failsafe_inbound() == [ProtoPort(protocol="TCP", port=22),
                                               ProtoPort(protocol="UDP", port=68)]


def test_case_insensitive_felix_enums_are_canonicalised() -> None:
    fc = FelixConfiguration.from_dict(_doc("FelixConfiguration", {
        "defaultEndpointToHostAction": "ACCEPT", "logSeverityScreen": "debug",
        "chainInsertMode": "append", "iptablesBackend": "legacy"}))
    s = fc.spec
    assert (s.defaultEndpointToHostAction, s.logSeverityScreen, s.chainInsertMode,
            s.iptablesBackend) == ("Accept", "Debug", "Append", "Legacy")


def test_bgp_configuration_round_trips() -> None:
    doc = yaml.safe_load(BGP_CONFIG)
    bc = BGPConfiguration.from_dict(doc)
    assert bc.dump() == doc
    assert bc.community_values(["bgp-large-community", "63400:120"]) == [
        "63400:300:100", "63400:120"]
    assert effective_bgp_settings(bc) == (63400, False, 1790)


def test_bgp_configuration_defaults() -> None:
    assert effective_bgp_settings(None) == (DEFAULT_AS_NUMBER, True, 179)
    bc = BGPConfiguration.from_dict(_doc("BGPConfiguration", {"asNumber": "64512"}))
    assert bc.spec.asNumber == 64512
    assert bc.spec.logSeverityScreen == "Info"  # the CRD's default
    assert effective_bgp_settings(bc) == (64512, True, 179)
    mesh_only = BGPConfiguration.from_dict(_doc("BGPConfiguration", {
        "nodeToNodeMeshEnabled": True, "nodeMeshMaxRestartTime": "120s",
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}}}))
    assert effective_bgp_settings(mesh_only).as_number == DEFAULT_AS_NUMBER


def test_bgp_peers_validate_and_round_trip() -> None:
    docs = list(yaml.safe_load_all(PEERS))
    peers = [BGPPeer.from_dict(d) for d in docs]
    for peer, doc in zip(peers, docs, strict=True):
        expected = copy.deepcopy(doc)
        if expected["spec"].get("asNumber") == "1.10":
            expected["spec"]["asNumber"] = 65546  # asdot 1.10, stored as a number
        assert peer.dump() == expected
    glob, rack, rr, secure = peers
    assert glob.is_global and glob.peer_address() == ("192.0.2.1", None)
    assert not rack.is_global and rack.peer_address() == ("2001:db8::1", 1790)
    assert rr.peer_address() is None and rr.spec.asNumber is None
    assert secure.peer_address() == ("192.168.1.1", 1790)
    assert secure.spec.password is not None
    assert secure.spec.password.secretKeyRef is not None
    assert secure.spec.password.secretKeyRef.key == "rr-password"


def test_bgp_peer_local_workload() -> None:
    peer = BGPPeer.from_dict(_doc("BGPPeer", {
        "localWorkloadSelector": "color == 'red'", "asNumber": 65001,
        "localASNumber": 64999, "nextHopMode": "Self", "reversePeering": "Manual"},
        name="workload-peer"))
    assert peer.spec.localASNumber == 64999


# --- errors: each names the field -------------------------------------------------------------

FELIX = FelixConfiguration
KCC = KubeControllersConfiguration
BGPC = BGPConfiguration

ERROR_CASES: list[tuple[str, type[Resource], dict[str, Any], str]] = [
    # FelixConfiguration
    ("failsafe port too big", FELIX,
     {"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 70000}]},
     "spec.failsafeInboundHostPorts[0].port"),
    ("failsafe port missing", FELIX, {"failsafeInboundHostPorts": [{"protocol": "TCP"}]},
     "spec.failsafeInboundHostPorts[0].port: required"),
    ("failsafe protocol", FELIX,
     {"failsafeOutboundHostPorts": [{"port": 53}, {"protocol": "ICMP", "port": 1}]},
     "spec.failsafeOutboundHostPorts[1].protocol"),
    ("failsafe net", FELIX,
     {"failsafeInboundHostPorts": [{"port": 22, "net": "10.0.0.0/33"}]},
     "spec.failsafeInboundHostPorts[0].net"),
    ("failsafe not a list", FELIX, {"failsafeInboundHostPorts": "tcp:22"},
     "spec.failsafeInboundHostPorts"),
    ("unknown felix field", FELIX, {"foo": 1}, "spec: unknown field 'foo'"),
    ("endpoint-to-host action", FELIX, {"defaultEndpointToHostAction": "Allow"},
     "spec.defaultEndpointToHostAction"),
    ("log severity", FELIX, {"logSeverityScreen": "Verbose"}, "spec.logSeverityScreen"),
    ("duration", FELIX, {"routeRefreshInterval": "ninety seconds"}, "spec.routeRefreshInterval"),
    ("duration as a number", FELIX, {"iptablesRefreshInterval": 10},
     "spec.iptablesRefreshInterval"),
    ("vxlan port zero", FELIX, {"vxlanPort": 0}, "spec.vxlanPort"),
    ("vxlan vni 25 bits", FELIX, {"vxlanVNI": 1 << 24}, "spec.vxlanVNI"),
    ("health port", FELIX, {"healthPort": -1}, "spec.healthPort"),
    ("prometheus port", FELIX, {"prometheusMetricsPort": 65536}, "spec.prometheusMetricsPort"),
    ("nat address not IPv4", FELIX, {"natOutgoingAddress": "2001:db8::1"},
     "spec.natOutgoingAddress"),
    ("nat port range reversed", FELIX, {"natPortRange": "40000:30000"}, "spec.natPortRange"),
    ("bool as string", FELIX, {"ipipEnabled": "yes"}, "spec.ipipEnabled"),
    ("bpf enabled not bool", FELIX, {"bpfEnabled": 1}, "spec.bpfEnabled"),
    ("mtu pattern regexp", FELIX, {"mtuIfacePattern": "(eth"}, "spec.mtuIfacePattern"),
    ("interface prefix", FELIX, {"interfacePrefix": "cali,tap*"}, "spec.interfacePrefix"),
    ("ipip mtu", FELIX, {"ipipMTU": -5}, "spec.ipipMTU"),
    ("wireguard enabled", FELIX, {"wireguardEnabled": "true"}, "spec.wireguardEnabled"),
    ("openstack region", FELIX, {"openstackRegion": "Region_One"}, "spec.openstackRegion"),
    ("route table range", FELIX, {"routeTableRanges": [{"min": 300, "max": 200}]},
     "spec.routeTableRanges[0]"),
    ("node port ranges named", FELIX, {"kubeNodePortRanges": ["http"]},
     "spec.kubeNodePortRanges[0]"),
    # KubeControllersConfiguration
    ("health checks", KCC, {"healthChecks": "On"}, "spec.healthChecks"),
    ("auto create", KCC,
     {"controllers": {"node": {"hostEndpoint": {"autoCreate": "true"}}}},
     "spec.controllers.node.hostEndpoint.autoCreate"),
    ("unknown controller", KCC, {"controllers": {"federatedServices": {}}},
     "spec.controllers: unknown field 'federatedServices'"),
    ("reconciler period", KCC, {"controllers": {"policy": {"reconcilerPeriod": "5 min"}}},
     "spec.controllers.policy.reconcilerPeriod"),
    ("kcc log level", KCC, {"logSeverityScreen": "Trace"}, "spec.logSeverityScreen"),
    ("template needs cidrs or pattern", KCC,
     {"controllers": {"node": {"hostEndpoint": {"templates": [{"generateName": "x"}]}}}},
     "spec.controllers.node.hostEndpoint.templates[0]"),
    ("template selector", KCC,
     {"controllers": {"node": {"hostEndpoint": {"templates": [
         {"interfacePattern": "eth0", "nodeSelector": "has("}]}}}},
     "spec.controllers.node.hostEndpoint.templates[0].nodeSelector"),
    ("kcc prometheus port", KCC, {"prometheusMetricsPort": 100000},
     "spec.prometheusMetricsPort"),
    # BGPConfiguration
    ("as number", BGPC, {"asNumber": "sixty-four"}, "spec.asNumber"),
    ("as number too big", BGPC, {"asNumber": 4294967296}, "spec.asNumber"),
    ("listen port zero", BGPC, {"listenPort": 0}, "spec.listenPort"),
    ("listen port too big", BGPC, {"listenPort": 65536}, "spec.listenPort"),
    ("cluster IPs host bits", BGPC, {"serviceClusterIPs": [{"cidr": "10.96.0.1/12"}]},
     "spec.serviceClusterIPs[0].cidr"),
    ("external IPs", BGPC, {"serviceExternalIPs": [{"cidr": "not-a-cidr"}]},
     "spec.serviceExternalIPs[0].cidr"),
    ("load-balancer IPs", BGPC, {"serviceLoadBalancerIPs": [{"cidr": "1.2.3.0/24", "x": 1}]},
     "spec.serviceLoadBalancerIPs[0]: unknown field 'x'"),
    ("standard community 16 bit", BGPC,
     {"communities": [{"name": "c", "value": "65536:1"}],
      "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}]},
     "spec.communities[0].value"),
    ("large community 32 bit", BGPC,
     {"communities": [{"name": "c", "value": "1:2:4294967296"}],
      "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}]},
     "spec.communities[0].value"),
    ("community format", BGPC,
     {"communities": [{"name": "c", "value": "1-2"}],
      "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}]},
     "spec.communities[0].value"),
    ("undefined community name", BGPC,
     {"communities": [{"name": "known", "value": "100:1"}],
      "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["known", "unknown"]}]},
     "spec.prefixAdvertisements[0].communities[1]"),
    ("bad community value in advertisement", BGPC,
     {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["70000:1"]}]},
     "spec.prefixAdvertisements[0].communities[0]"),
    ("communities unused", BGPC, {"communities": [{"name": "c", "value": "100:1"}]},
     "spec.communities: communities are defined but not used"),
    ("advertisement cidr", BGPC,
     {"prefixAdvertisements": [{"cidr": "10.0.0.1/8", "communities": ["100:1"]}]},
     "spec.prefixAdvertisements[0].cidr"),
    ("mesh password without mesh", BGPC,
     {"nodeToNodeMeshEnabled": False,
      "nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}}},
     "spec.nodeMeshPassword"),
    ("mesh password key", BGPC, {"nodeMeshPassword": {"secretKeyRef": {"name": "s"}}},
     "spec.nodeMeshPassword.secretKeyRef.key"),
    ("bind mode", BGPC, {"bindMode": "All"}, "spec.bindMode"),
    ("mesh restart time", BGPC, {"nodeMeshMaxRestartTime": "2 minutes"},
     "spec.nodeMeshMaxRestartTime"),
    ("bgp log severity", BGPC, {"logSeverityScreen": "Loud"}, "spec.logSeverityScreen"),
    ("ignored interface", BGPC, {"ignoredInterfaces": ["*"]}, "spec.ignoredInterfaces[0]"),
    ("unknown bgp field", BGPC, {"extensions": {"a": "b"}}, "spec: unknown field 'extensions'"),
    # BGPPeer
    ("node and nodeSelector", BGPPeer,
     {"node": "n1", "nodeSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1},
     "spec.node"),
    ("peerIP and peerSelector", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1, "peerSelector": "rr == 'true'"}, "spec.peerIP"),
    ("peerIP without asNumber", BGPPeer, {"peerIP": "10.0.0.1"},
     "spec.asNumber: required when spec.peerIP"),
    ("peerSelector with asNumber", BGPPeer, {"peerSelector": "all()", "asNumber": 64512},
     "spec.asNumber: must be empty"),
    ("peerIP not an address", BGPPeer, {"peerIP": "10.0.0.300", "asNumber": 1}, "spec.peerIP"),
    ("peerIP port zero", BGPPeer, {"peerIP": "10.0.0.1:0", "asNumber": 1}, "spec.peerIP"),
    ("peerIP v6 port range", BGPPeer, {"peerIP": "[2001:db8::1]:99999", "asNumber": 1},
     "spec.peerIP"),
    ("peerIP v6 without brackets and port", BGPPeer, {"peerIP": "[2001:db8::1]", "asNumber": 1},
     "spec.peerIP"),
    ("node selector syntax", BGPPeer, {"nodeSelector": "rack ==", "peerSelector": "all()"},
     "spec.nodeSelector"),
    ("peer selector syntax", BGPPeer, {"peerSelector": "has(rr"}, "spec.peerSelector"),
    ("source address", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "sourceAddress": "Node"},
     "spec.sourceAddress"),
    ("max restart time", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "maxRestartTime": "2"},
     "spec.maxRestartTime"),
    ("keepalive time", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "x"},
     "spec.keepaliveTime"),
    ("ttl security", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "ttlSecurity": 256},
     "spec.ttlSecurity"),
    ("allowed local AS numbers", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1, "numAllowedLocalASNumbers": -1},
     "spec.numAllowedLocalASNumbers"),
    ("keep next hop not bool", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": "yes"},
     "spec.keepOriginalNextHop"),
    ("filter name", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "filters": ["Bad_Name"]},
     "spec.filters[0]"),
    ("reachableBy family", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1, "reachableBy": "2001:db8::1"}, "spec.reachableBy"),
    ("reachableBy without peerIP", BGPPeer,
     {"peerSelector": "all()", "reachableBy": "10.0.0.254"}, "spec.reachableBy"),
    ("password extra field", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1,
      "password": {"secretKeyRef": {"name": "s", "key": "k", "value": "hunter2"}}},
     "spec.password.secretKeyRef: unknown field 'value'"),
    ("password missing name", BGPPeer,
     {"peerIP": "10.0.0.1", "asNumber": 1, "password": {"secretKeyRef": {"key": "k"}}},
     "spec.password.secretKeyRef.name"),
    ("next hop mode", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "nextHopMode": "Other"},
     "spec.nextHopMode"),
    ("local workload with peerIP", BGPPeer,
     {"localWorkloadSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1}, "spec.peerIP"),
    ("local workload without asNumber", BGPPeer, {"localWorkloadSelector": "all()"},
     "spec.asNumber: required when spec.localWorkloadSelector"),
    ("unknown peer field", BGPPeer, {"peerIP": "10.0.0.1", "asNumber": 1, "peerPort": 179},
     "spec: unknown field 'peerPort'"),
]


@pytest.mark.parametrize(("model", "spec", "expected"),
                         [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_documents_name_the_field(model: type[Resource], spec: dict[str, Any],
                                          expected: str) -> None:
    errors = _errors(model, _doc(model.KIND, spec, name="default"))
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_kube_controllers_configuration_must_be_named_default() -> None:
    errors = _errors(KCC, _doc("KubeControllersConfiguration", {}, name="other"))
    assert any(e.startswith("metadata.name:") for e in errors), errors


def test_config_kinds_are_not_namespaced() -> None:
    doc = _doc("FelixConfiguration", {})
    doc["metadata"]["namespace"] = "kube-system"
    assert any(e.startswith("metadata.namespace") for e in _errors(FELIX, doc))


def test_seed_status_is_validated_too() -> None:
    doc = yaml.safe_load(SEED_003)
    doc["status"]["runningConfig"]["healthChecks"] = "Sometimes"
    assert any(e.startswith("status.runningConfig.healthChecks") for e in _errors(KCC, doc))


def test_several_errors_are_reported_together() -> None:
    errors = _errors(BGPPeer, _doc("BGPPeer", {
        "node": "n1", "nodeSelector": "all()", "peerIP": "10.0.0.1",
        "peerSelector": "all()"}))
    assert {e.split(":")[0] for e in errors} >= {"spec.node", "spec.peerIP"}
