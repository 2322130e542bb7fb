"""A dual-stack Kubernetes on the lab (``tortie lab up --kubernetes --dual-stack``): 3 nodes
with an IPv4 and an IPv6 underlay address each, the real kube-apiserver with an IPv4 and an
IPv6 Service range, kubelets with ``--node-ip=<v4>,<v6>``, kube-proxy (nftables) for both
families, and Tortie's conflist assigning an address of each family.

* every Node has both InternalIPs; pods on two nodes get an IPv4 and an IPv6 address
  (status.podIPs, from containerd's CNI result) matching their WorkloadEndpoints, and reach
  each other over both families;
* a ``RequireDualStack`` Service gets a cluster IP of each family, and a client pod on
  another node reaches the backend through both;
* a Kubernetes NetworkPolicy admitting only other pods blocks the client over both families
  (pod IPs and cluster IPs); relabelled as an admitted pod, the client gets through again.
"""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab.cluster import Lab
from lab.kubernetes import AGNHOST_IMAGE, SERVICE_CIDR, SERVICE_CIDR6
from tests.support.kubernetes import (
    K8S_MARKS,
    eventually,
    exec_in_pod,
    kjson,
    kubectl,
    kubernetes_lab,
    ok,
    running_pods,
)
from tests.support.lab_cli import weps

pytestmark = K8S_MARKS

NS = "dual"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with kubernetes_lab(f"k6{uuid.uuid4().hex[:6]}", "--dual-stack") as lab:
        yield lab


def pod(name: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "agnhost", "image": AGNHOST_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": ["netexec", "--http-port=8080"]}],
        },
    }


SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "server", "namespace": NS},
    "spec": {"ipFamilyPolicy": "RequireDualStack", "selector": {"app": "server"},
             "ports": [{"port": 80, "targetPort": 8080}]},
}

#: Ingress to the server only from pods labelled app=admitted (the client is app=client).
POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "admitted-only", "namespace": NS},
    "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "admitted"}}}]}]},
}


def url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}/hostname" if ":" in ip else f"http://{ip}:{port}/hostname"


def get(lab: Lab, client: str, ip: str, port: int) -> str | None:
    """The server's hostname fetched by ``client`` from ``ip``; None when it does not answer."""
    p = exec_in_pod(lab, NS, client, "curl", "-s", "-m", "2", url(ip, port))
    return p.stdout.strip() if p.returncode == 0 else None


def by_family(ips: list[str]) -> dict[int, str]:
    return {ipaddress.ip_address(ip).version: ip for ip in ips}


def test_dual_stack_pods_service_and_policy(lab: Lab) -> None:
    st = lab.load()
    for n in kjson(lab, "get", "nodes")["items"]:
        internal = [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        node = st.nodes[n["metadata"]["name"]]
        assert internal == [node.address, node.address6], internal

    ok(kubectl(lab, "create", "namespace", NS))
    docs = [pod("server", "node1", "server"), pod("client", "node2", "client"), SERVICE]
    ok(kubectl(lab, "apply", "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})))
    start = time.monotonic()
    pods = {p["metadata"]["name"]: p for p in running_pods(lab, NS, 2)}
    print(f"\n2 dual-stack pods Running in {time.monotonic() - start:.1f}s")

    # an address of each family, IPv4 first, from the lab's pools, as the endpoints say
    endpoints = {w["spec"]["pod"]: w for w in weps(lab, NS)}
    ips: dict[str, dict[int, str]] = {}
    for name, p in pods.items():
        pod_ips = [i["ip"] for i in p["status"]["podIPs"]]
        assert [ipaddress.ip_address(i).version for i in pod_ips] == [4, 6], pod_ips
        assert p["status"]["podIP"] == pod_ips[0]
        ips[name] = by_family(pod_ips)
        assert ipaddress.ip_address(ips[name][4]) in ipaddress.ip_network(st.pool_cidr)
        assert ipaddress.ip_address(ips[name][6]) in ipaddress.ip_network(st.pool6_cidr)
        assert sorted(n.split("/")[0] for n in endpoints[name]["spec"]["ipNetworks"]) == sorted(
            pod_ips)

    # pod -> pod across nodes over both families, both ways
    for src, dst in (("client", "server"), ("server", "client")):
        for family in (4, 6):
            assert get(lab, src, ips[dst][family], 8080) == dst, (src, dst, family)

    # the RequireDualStack Service: a cluster IP from each range, reached from another node
    spec = kjson(lab, "get", "service", "-n", NS, "server")["spec"]
    assert spec["ipFamilies"] == ["IPv4", "IPv6"], spec
    cluster = by_family(spec["clusterIPs"])
    assert ipaddress.ip_address(cluster[4]) in ipaddress.ip_network(SERVICE_CIDR)
    assert ipaddress.ip_address(cluster[6]) in ipaddress.ip_network(SERVICE_CIDR6)
    targets = [(ips["server"][4], 8080), (ips["server"][6], 8080),
               (cluster[4], 80), (cluster[6], 80)]
    for ip, port in targets[2:]:
        eventually(lambda ip=ip, port=port: get(lab, "client", ip, port) == "server", 60,
                   f"the server through cluster IP {ip}")

    # a NetworkPolicy admitting only app=admitted: the client is blocked over both families
    ok(kubectl(lab, "apply", "-f", "-", input=json.dumps(POLICY)))
    for ip, port in targets:
        eventually(lambda ip=ip, port=port: get(lab, "client", ip, port) is None, 30,
                   f"the client blocked from {ip}")
    # ... and it is the policy that blocks it: relabelled as admitted, it gets through again
    ok(kubectl(lab, "label", "pod", "-n", NS, "client", "app=admitted", "--overwrite"))
    for ip, port in targets:
        eventually(lambda ip=ip, port=port: get(lab, "client", ip, port) == "server", 30,
                   f"the admitted client reaching {ip}")
