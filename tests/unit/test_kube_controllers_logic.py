"""The pure parts of tortie-kube-controllers: durations, node merge, host endpoint contents,
leak candidates, endpoint labels."""

from __future__ import annotations

import json

import pytest

from datastore.model_config import KubeControllersConfiguration
from kubecontrollers.hostendpoints import desired_hep, expected_ips
from kubecontrollers.ipam_gc import leaked, workload_attachment
from kubecontrollers.nodes import KUBE_LABELS_ANNOTATION, has_k8s_ref, merged_node
from kubecontrollers.pods import endpoint_labels
from kubecontrollers.reflector import object_key
from kubecontrollers.settings import default_host_endpoints, go_duration, leak_grace


@pytest.mark.parametrize(("text", "seconds"), [
    ("15m0s", 900.0), ("90s", 90.0), ("1h2m3s", 3723.0), ("500ms", 0.5), ("0", 0.0),
    ("1.5h", 5400.0), (None, 7.0), ("", 7.0)])
def test_go_duration(text: str | None, seconds: float) -> None:
    assert go_duration(text, 7.0) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 m", "m5", "5x", "5m junk", "-5s"])
def test_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        go_duration(text, 0)


def _kcc(spec: dict) -> KubeControllersConfiguration:
    return KubeControllersConfiguration.from_dict({"metadata": {"name": "default"},
                                                   "spec": spec})


def test_kcc_settings() -> None:
    default = _kcc({})
    assert leak_grace(default) == 900.0 and not default_host_endpoints(default)
    on = _kcc({"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"},
                                        "leakGracePeriod": "30s"}}})
    assert default_host_endpoints(on) and leak_grace(on) == 30.0
    templates_only = _kcc({"controllers": {"node": {"hostEndpoint": {
        "autoCreate": "Enabled", "createDefaultHostEndpoint": "Disabled"}}}})
    assert not default_host_endpoints(templates_only)


def _calico(labels: dict | None = None, annotations: dict | None = None, **spec: object) -> dict:
    meta: dict = {"name": "n1"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": meta,
            "spec": spec}


def _k8s(labels: dict, addresses: list[tuple[str, str]]) -> dict:
    return {"metadata": {"name": "n1", "labels": labels},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_merged_node_syncs_labels_and_keeps_what_it_does_not_own() -> None:
    calico = _calico({"rack": "r1"}, bgp={"ipv4Address": "10.0.0.1/24"},
                     orchRefs=[{"nodeName": "n1", "orchestrator": "k8s"}],
                     addresses=[{"address": "10.0.0.1", "type": "CalicoNodeIP"}])
    k8s = _k8s({"zone": "a", "kubernetes.io/hostname": "n1"},
               [("InternalIP", "10.0.0.1"), ("Hostname", "n1"), ("ExternalIP", "203.0.113.5")])
    out = merged_node(calico, k8s, sync_labels=True)
    assert out["metadata"]["labels"] == {"rack": "r1", "zone": "a",
                                         "kubernetes.io/hostname": "n1"}
    assert json.loads(out["metadata"]["annotations"][KUBE_LABELS_ANNOTATION]) == \
        {"zone": "a", "kubernetes.io/hostname": "n1"}
    assert out["spec"]["bgp"] == {"ipv4Address": "10.0.0.1/24"}
    assert out["spec"]["orchRefs"] == calico["spec"]["orchRefs"]
    assert out["spec"]["addresses"] == [{"address": "10.0.0.1", "type": "CalicoNodeIP"},
                                        {"address": "10.0.0.1", "type": "InternalIP"},
                                        {"address": "203.0.113.5", "type": "ExternalIP"}]
    assert calico["metadata"]["labels"] == {"rack": "r1"}  # input untouched
    # a label removed in Kubernetes goes; one set on the Calico Node stays
    again = merged_node(out, _k8s({"kubernetes.io/hostname": "n1"}, []), sync_labels=True)
    assert again["metadata"]["labels"] == {"rack": "r1", "kubernetes.io/hostname": "n1"}
    assert again["spec"]["addresses"] == [{"address": "10.0.0.1", "type": "CalicoNodeIP"}]
    # merging twice changes nothing more (no write loop)
    assert merged_node(again, _k8s({"kubernetes.io/hostname": "n1"}, []), True) == again
    # syncLabels Disabled: labels untouched
    assert merged_node(calico, k8s, sync_labels=False)["metadata"]["labels"] == {"rack": "r1"}


def test_has_k8s_ref() -> None:
    assert has_k8s_ref(_calico(orchRefs=[{"nodeName": "n1", "orchestrator": "k8s"}]))
    assert not has_k8s_ref(_calico())


def test_expected_ips_prefer_calico_addresses() -> None:
    calico = _calico(bgp={"ipv4Address": "192.168.2.10/24", "ipv6Address": "fd00::a/64"},
                     ipv4VXLANTunnelAddr="10.244.0.1")
    k8s = _k8s({}, [("InternalIP", "192.168.2.99")])
    assert expected_ips(calico, k8s) == ["192.168.2.10", "fd00::a", "10.244.0.1"]
    assert expected_ips(_calico(), k8s) == ["192.168.2.99"]
    assert expected_ips(None, None) == []
    hep = desired_hep("n1", None, _k8s({"a": "b"}, []))
    assert "expectedIPs" not in hep["spec"] and hep["spec"]["interfaceName"] == "*"
    assert hep["metadata"]["labels"] == {"a": "b",
                                         "projectcalico.org/created-by": "calico-kube-controllers"}


def _pod(node: str, ips: list[str]) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": node},
            "status": {"podIPs": [{"ip": i} for i in ips]}}


def test_leak_candidates() -> None:
    assert leaked(None, "10.0.0.1", "n1")                          # pod gone
    assert not leaked(_pod("n1", ["10.0.0.1"]), "10.0.0.1", "n1")  # alive
    assert not leaked(_pod("n1", []), "10.0.0.1", "n1")            # starting, no IPs yet
    assert not leaked(_pod("n2", []), "10.0.0.1", "n1")            # moved, no IPs yet
    assert leaked(_pod("n2", ["10.0.0.9"]), "10.0.0.1", "n1")      # recreated elsewhere
    assert not leaked(_pod("n2", ["10.0.0.1"]), "10.0.0.1", "n1")  # same address: not ours
    assert not leaked(_pod("n1", ["10.0.0.9"]), "10.0.0.1", "n1")  # same node: CNI's business


def test_endpoint_labels_match_the_cni_handler() -> None:
    pod = {"metadata": {"labels": {"app": "web"}}, "spec": {"serviceAccountName": "robot"}}
    assert endpoint_labels(pod, "shop") == {
        "app": "web", "projectcalico.org/namespace": "shop",
        "projectcalico.org/orchestrator": "k8s", "projectcalico.org/serviceaccount": "robot"}
    assert endpoint_labels({"metadata": {}}, "x")["projectcalico.org/serviceaccount"] == \
        "default"


def test_object_key() -> None:
    assert object_key({"metadata": {"name": "a", "namespace": "ns"}}) == "ns/a"
    assert object_key({"metadata": {"name": "node1"}}) == "node1"
    with pytest.raises(ValueError):
        object_key({"metadata": {}})


def test_gc_reads_both_handle_forms() -> None:
    assert workload_attachment("tortie.c1", {"container": "c1"}) == ("c1", "eth0")
    assert workload_attachment("tortie.c1.net1", {"container": "c1"}) == ("c1", "net1")
    assert workload_attachment("tortie.c1.net1", {}) == ("c1", "net1")
    assert workload_attachment("tortie.c1", {}) == ("c1", "eth0")
    # a container ID with a dot: the attribute decides
    assert workload_attachment("tortie.c.v2", {"container": "c.v2"}) == ("c.v2", "eth0")
    assert workload_attachment("tortie.c.v2.net1", {"container": "c.v2"}) == ("c.v2", "net1")
