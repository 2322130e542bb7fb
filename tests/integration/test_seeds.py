"""The seeds' YAML examples through the real CLI against a real, fresh etcd."""

from __future__ import annotations

import json

import pytest
import yaml

from lab.seeds import APPLIES, EXAMPLES, REFUSED, REJECTED, SEEDS_DIR, Example
from tests.support.cli import tortie

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason=f"seeds not found at {SEEDS_DIR}"),
]


def _get(endpoint: str, ref: str) -> dict:
    parts = ref.split("/")
    args = ["get", parts[0], parts[-1], "-o", "yaml"]
    if len(parts) == 3:
        args += ["-n", parts[1]]
    r = tortie(endpoint, *args)
    assert r.code == 0, r.text
    return yaml.safe_load(r.out)


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e.id)
def test_seed_example(ex: Example, etcd_endpoint: str) -> None:
    r = tortie(etcd_endpoint, ex.verb, "-f", "-", stdin=ex.text())
    if ex.outcome == APPLIES:
        assert r.code == 0, r.text
        for ref in ex.expect:
            obj = _get(etcd_endpoint, ref)
            assert obj["metadata"]["name"] == ref.split("/")[-1]
            assert obj["metadata"]["resourceVersion"].isdigit()
        return
    assert r.code != 0, f"{ex.id} should fail:\n{r.text}"
    for text in ex.expect:
        assert text in r.err, f"{text!r} not in:\n{r.err}"
    # nothing at all was written
    listing = tortie(etcd_endpoint, "get", "gnp", "-o", "json")
    assert json.loads(listing.out)["items"] == []
    if ex.outcome == REJECTED:
        assert "nothing was written" in r.err or "YAML error" in r.err
    if ex.outcome == REFUSED:
        assert "kubectl" in r.err


def test_nbsp_indentation_is_reported(etcd_endpoint: str) -> None:
    ex = next(e for e in EXAMPLES if e.id == "001:215-241")
    assert "\u00a0" in ex.text()
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=ex.text())
    assert r.code == 0, r.text
    assert "non-breaking space" in r.err
    gnp = _get(etcd_endpoint, "gnp/bar-external-consumer")
    assert gnp["spec"]["ingress"] == [{"action": "Allow", "source": {"nets": ["10.0.0.0/8"]},
                                       "destination": {}}]


def test_calico_defaults_are_filled(etcd_endpoint: str) -> None:
    quarantine = next(e for e in EXAMPLES if e.id == "004:636-659")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=quarantine.text()).code == 0
    gnp = _get(etcd_endpoint, "gnp/security-operations.quarantine")
    assert gnp["apiVersion"] == "projectcalico.org/v3"
    assert gnp["spec"]["tier"] == "default"
    assert gnp["spec"]["order"] == 200
    assert gnp["spec"]["types"] == ["Ingress", "Egress"]
    assert gnp["metadata"]["uid"] and gnp["metadata"]["creationTimestamp"]

    ns = next(e for e in EXAMPLES if e.id == "004:382-389")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=ns.text()).code == 0
    got = _get(etcd_endpoint, "namespace/dmz")
    assert got["metadata"]["annotations"] == {"cni.projectcalico.org/ipv4pools": '["dmz-pool"]'}
    assert got["metadata"]["labels"] == {"location": "dmz"}

    k8s_np = next(e for e in EXAMPLES if e.id == "001:127-141")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=k8s_np.text()).code == 0
    np = _get(etcd_endpoint, "k8snetworkpolicy/default/foo-consumer")
    assert np["spec"]["policyTypes"] == ["Egress"]
    assert np["metadata"]["namespace"] == "default"


def test_v1_policy_is_converted(etcd_endpoint: str) -> None:
    webserver = next(e for e in EXAMPLES if e.id == "002:235-248")
    r = tortie(etcd_endpoint, "create", "-f", "-", stdin=webserver.text())
    assert r.code == 0, r.text
    gnp = _get(etcd_endpoint, "gnp/webserver")
    assert gnp["kind"] == "GlobalNetworkPolicy"
    assert gnp["spec"]["selector"] == 'role=="webserver"'
    assert gnp["spec"]["order"] == 100
    assert gnp["spec"]["ingress"][0]["action"] == "Allow"
    assert gnp["spec"]["ingress"][0]["protocol"] == "TCP"
    assert gnp["spec"]["ingress"][0]["destination"]["ports"] == [80]
    assert gnp["spec"]["egress"][0]["action"] == "Allow"
    again = tortie(etcd_endpoint, "create", "-f", "-", stdin=webserver.text())
    assert again.code != 0 and "already exists" in again.err


def test_seed_003_commands(etcd_endpoint: str) -> None:
    """The calicoctl commands of seed 003, with tortie in place of calicoctl."""
    kcc = _get(etcd_endpoint, "kubecontrollersconfiguration/default")
    assert kcc["kind"] == "KubeControllersConfiguration"
    r = tortie(etcd_endpoint, "patch", "kubecontrollersconfiguration", "default",
               '--patch={"spec": {"controllers": {"node": {"hostEndpoint": '
               '{"autoCreate": "Enabled"}}}}}')
    assert r.code == 0, r.text
    kcc = _get(etcd_endpoint, "kubecontrollersconfiguration/default")
    assert kcc["spec"]["controllers"]["node"]["hostEndpoint"]["autoCreate"] == "Enabled"

    hep = next(e for e in EXAMPLES if e.id == "003:92-113")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=hep.text()).code == 0
    r = tortie(etcd_endpoint, "get", "hostendpoints")
    assert r.out.split() == ["NAME", "NODE", "master-auto-hep", "master"]

    for ex in EXAMPLES:
        if ex.id == "003:229-239":
            assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=ex.text()).code == 0
    r = tortie(etcd_endpoint, "delete", "gnp", "global-access")
    assert r.code == 0, r.text
    assert "Successfully deleted 1 'GlobalNetworkPolicy' resource(s)" in r.out
    r = tortie(etcd_endpoint, "get", "gnp", "global-access")
    assert r.code != 0 and "does not exist" in r.err

    node = ("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: master\n"
            "spec:\n  bgp:\n    ipv4Address: 192.168.2.10/24\n")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=node).code == 0
    r = tortie(etcd_endpoint, "get", "nodes", "-owide")
    assert r.code == 0, r.text
    assert r.out.split() == ["NAME", "ASN", "IPV4", "IPV6", "master", "(64512)",
                             "192.168.2.10/24"]
