"""``tortie apply`` / ``create`` / ``replace`` warn about fields Tortie does not act on: the
real command line (a new process each time) against a real etcd."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import tortie

pytestmark = pytest.mark.integration

GNP_HTTP = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: default.web-get
spec:
  selector: app == "web"
  ingress:
  - action: Allow
    protocol: TCP
    http:
      methods: [GET]
    destination:
      ports: [80]
  - action: Deny
    destination:
      services:
        name: db
        namespace: prod
"""
BGP_CONFIG = """apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64513
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
  ignoredInterfaces:
  - eth9
"""
FELIX = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  wireguardEnabled: {wg}
  failsafeInboundHostPorts:
  - protocol: TCP
    port: 22
"""
SUPPORTED = """apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  selector: app == "web"
  ingress:
  - action: Allow
    protocol: TCP
    source:
      serviceAccounts:
        names: [client]
    destination:
      ports: [80]
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-warn
spec:
  cidr: 10.233.0.0/16
  vxlanMode: Always
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  bpfLogLevel: ""
  floatingIPs: Disabled
  logSeverityScreen: Info
  reportingInterval: 0s
"""


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def test_apply_warns_and_stores(etcd_endpoint: str) -> None:
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=GNP_HTTP + "---\n" + BGP_CONFIG)
    assert r.code == 0, r.text
    assert warning_lines(r.err) == [
        "warning: GlobalNetworkPolicy default.web-get: spec.ingress[0].http is not enforced "
        "by Tortie: this Allow rule matches no traffic",
        "warning: GlobalNetworkPolicy default.web-get: spec.ingress[1].destination.services "
        "is not enforced by Tortie: this Deny rule applies without it (to more traffic)",
        "warning: BGPConfiguration default: spec.ignoredInterfaces is not supported by "
        "Tortie: stored, but it has no effect",
    ]
    assert warning_lines(r.out) == []  # warnings go to stderr only
    assert "Successfully applied 1 'GlobalNetworkPolicy' resource(s)" in r.out

    got = tortie(etcd_endpoint, "get", "gnp", "default.web-get", "-o", "json")
    assert got.code == 0, got.text
    spec = json.loads(got.out)["spec"]
    assert spec["ingress"][0]["http"] == {"methods": ["GET"]}
    assert spec["ingress"][1]["destination"]["services"] == {"name": "db", "namespace": "prod"}
    got = tortie(etcd_endpoint, "get", "bgpconfig", "default", "-o", "json")
    assert json.loads(got.out)["spec"]["serviceClusterIPs"] == [{"cidr": "10.96.0.0/12"}]


def test_create_and_replace_warn(etcd_endpoint: str) -> None:
    r = tortie(etcd_endpoint, "create", "-f", "-", stdin=FELIX.format(wg="true"))
    assert r.code == 0, r.text
    assert warning_lines(r.err) == [
        "warning: FelixConfiguration default: spec.wireguardEnabled is not supported by "
        "Tortie: stored, but it has no effect"]
    r = tortie(etcd_endpoint, "replace", "-f", "-", stdin=FELIX.format(wg="true"))
    assert r.code == 0, r.text
    assert len(warning_lines(r.err)) == 1 and "spec.wireguardEnabled" in r.err
    # false is what Tortie does anyway: no warning
    r = tortie(etcd_endpoint, "replace", "-f", "-", stdin=FELIX.format(wg="false"))
    assert r.code == 0, r.text
    assert warning_lines(r.err) == []
    got = tortie(etcd_endpoint, "get", "felixconfig", "default", "-o", "json")
    assert json.loads(got.out)["spec"]["wireguardEnabled"] is False
    # a patch that sets an ignored field warns too
    r = tortie(etcd_endpoint, "patch", "felixconfig", "default", "-p",
               '{"spec": {"bpfEnabled": true}}')
    assert r.code == 0, r.text
    assert warning_lines(r.err) == [
        "warning: FelixConfiguration default: spec.bpfEnabled is not supported by Tortie: "
        "stored, but it has no effect"]


def test_fully_supported_resources_give_no_warning(etcd_endpoint: str) -> None:
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=SUPPORTED)
    assert r.code == 0, r.text
    assert r.err.strip() == ""
    got = tortie(etcd_endpoint, "get", "networkpolicy", "allow-web", "-n", "shop", "-o", "json")
    assert got.code == 0 and json.loads(got.out)["metadata"]["name"] == "allow-web"
    # deleting a resource with ignored fields does not warn
    tortie(etcd_endpoint, "apply", "-f", "-", stdin=BGP_CONFIG)
    r = tortie(etcd_endpoint, "delete", "-f", "-", stdin=BGP_CONFIG)
    assert r.code == 0, r.text
    assert warning_lines(r.err) == []
