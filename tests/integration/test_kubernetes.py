"""Tortie under a real Kubernetes: kube-apiserver, controller-manager, scheduler,
and a kubelet + kube-proxy per node, built from k8s.io/kubernetes at the pinned release
(scripts/kubernetes.sh), run on a 3-node lab (`tortie lab up --kubernetes`); pods are made by
kubelet through containerd's CRI and Tortie's conflist, exactly as on a real node."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from lab.cluster import Lab
from lab.kubernetes import AGNHOST_IMAGE
from tests.support.kubernetes import (
    K8S_MARKS,
    REPO,
    cali_links,
    eventually,
    exec_in_pod,
    kjson,
    kubectl,
    kubernetes_lab,
    ok,
    running_pods,
)
from tests.support.lab_cli import cli, weps

pytestmark = K8S_MARKS

DMZ_DOCS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: dmz-pool
spec:
  cidr: 10.0.1.0/24
  natOutgoing: true
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three nodes with a real Kubernetes, brought up the way a user does it."""
    with kubernetes_lab(f"k{uuid.uuid4().hex[:6]}") as lab:
        yield lab


def deployment(name: str, namespace: str, replicas: int, labels: dict[str, str]) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    # spread over the nodes as evenly as the scheduler can
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": labels}}],
                    "containers": [{
                        "name": "agnhost", "image": AGNHOST_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                        "ports": [{"containerPort": 8080}],
                    }],
                },
            },
        },
    })


def test_nodes_ready_deployment_spread_addresses_services_and_cleanup(lab: Lab) -> None:
    st = lab.load()
    nodes = kjson(lab, "get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(st.nodes)
    for n in nodes:
        ready = next(c for c in n["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", n["metadata"]["name"]
        addr = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
        assert addr == st.nodes[n["metadata"]["name"]].address

    ok(kubectl(lab, "create", "namespace", "web"))
    start = time.monotonic()
    ok(kubectl(lab, "apply", "-f", "-", input=deployment("web", "web", 12, {"app": "web"})))
    pods = running_pods(lab, "web", 12)
    print(f"\n12 pods Running {time.monotonic() - start:.1f}s after the Deployment was applied")
    by_node: dict[str, int] = {}
    for p in pods:
        by_node[p["spec"]["nodeName"]] = by_node.get(p["spec"]["nodeName"], 0) + 1
    assert set(by_node) == set(st.nodes) and all(v == 4 for v in by_node.values()), by_node

    # every pod's status.podIPs is its WorkloadEndpoint's address from the default pool
    endpoints = {w["spec"]["pod"]: w for w in weps(lab, "web")}
    assert set(endpoints) == {p["metadata"]["name"] for p in pods}
    for p in pods:
        w = endpoints[p["metadata"]["name"]]
        assert [i["ip"] for i in p["status"]["podIPs"]] == [
            n.split("/")[0] for n in w["spec"]["ipNetworks"]]
        assert w["spec"]["node"] == p["spec"]["nodeName"]
        assert p["status"]["podIP"].startswith("10.244."), p["status"]["podIP"]

    # pod -> pod on every other node, and pod -> a ClusterIP Service through kube-proxy
    src = pods[0]
    for dst in pods:
        if dst["spec"]["nodeName"] == src["spec"]["nodeName"]:
            continue
        out = ok(exec_in_pod(lab, "web", src["metadata"]["name"], "curl", "-s", "-m", "5",
                             f"http://{dst['status']['podIP']}:8080/hostname"))
        assert out.strip() == dst["metadata"]["name"]
    ok(kubectl(lab, "expose", "-n", "web", "deployment/web", "--port=80",
               "--target-port=8080"))
    svc = kjson(lab, "get", "service", "-n", "web", "web")["spec"]["clusterIP"]
    seen: set[str] = set()

    def through_service() -> bool:
        p = exec_in_pod(lab, "web", src["metadata"]["name"], "curl", "-s", "-m", "3",
                        f"http://{svc}/hostname")
        if p.returncode == 0:
            seen.add(p.stdout.strip())
        return len(seen) >= 3
    eventually(through_service, 90, f"three backends answering through {svc}")
    assert seen <= {p["metadata"]["name"] for p in pods}

    # a namespace annotated for dmz-pool gets dmz-pool addresses
    ok(cli(lab, "apply", "-f", "-", stdin=DMZ_DOCS))
    ok(kubectl(lab, "create", "namespace", "dmz"))
    ok(kubectl(lab, "annotate", "namespace", "dmz",
               'cni.projectcalico.org/ipv4pools=["dmz-pool"]'))
    ok(kubectl(lab, "apply", "-f", "-", input=deployment("dmz", "dmz", 3, {"app": "dmz"})))
    for p in running_pods(lab, "dmz", 3):
        assert p["status"]["podIP"].startswith("10.0.1."), p["status"]["podIP"]

    # delete everything: no address, veth or endpoint is left
    ok(kubectl(lab, "delete", "namespace", "web", "dmz", "--wait=true", timeout=300))
    eventually(lambda: not weps(lab, "web") and not weps(lab, "dmz"), 60, "endpoints gone")
    eventually(lambda: not any(cali_links(lab).values()), 60, "veths gone")
    r = cli(lab, "ipam", "check")
    assert r.returncode == 0 and "checked 0 allocation(s)" in r.stdout, r.stdout + r.stderr


#: A slice of the upstream suites for every run: ingress, egress, namespace selectors, ports
#: (TCP and UDP), and pod-to-pod across nodes. integration/kubernetes/e2e.sh runs it all.
E2E_SLICE = "|".join([
    r"should support a 'default-deny-ingress' policy",
    r"should deny egress from pods based on PodSelector",
    r"should enforce policy to allow traffic only from a different namespace, based on "
    r"NamespaceSelector",
    r"Netpol NetworkPolicy between server and client should enforce policy based on Ports",
    r"Granular Checks: Pods should function for intra-pod communication: http",
    r"Granular Checks: Pods should function for node-pod communication: udp",
])


def test_upstream_e2e_slice(lab: Lab) -> None:
    start = time.monotonic()
    p = subprocess.run(["bash", str(REPO / "integration" / "kubernetes" / "e2e.sh"), "--name",
                        lab.name, "--focus", E2E_SLICE, "--procs", "2"],
                       capture_output=True, text=True, timeout=840, check=False, cwd=REPO)
    print(f"\n{p.stdout}(in {time.monotonic() - start:.0f}s)")
    summary = re.search(r"(\d+) Passed \| (\d+) Failed", p.stdout)
    assert summary, p.stdout + p.stderr
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert p.returncode == 0 and failed == 0, p.stdout + p.stderr
    assert passed >= 7, p.stdout  # TCP+UDP default-deny, the 5 other lines one each
