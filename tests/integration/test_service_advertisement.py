"""Service address advertisement on a real lab: three nodes, BIRD as the ToR, a real
kube-apiserver on the lab's etcd and tortie-kube-controllers mirroring its Services and
EndpointSlices (``Lab.up_kube_api``).

With ``serviceClusterIPs`` and ``serviceLoadBalancerIPs`` in the ``default`` BGPConfiguration
and prefix advertisements giving each range a community:

* BIRD learns the cluster-IP range from every node (one path per node) with its community,
  and no node installs a kernel route for it (each announces it itself);
* a ClusterIP Service (Cluster policy) adds no /32: its address rides on the range;
* a LoadBalancer Service with ``externalTrafficPolicy: Local`` whose one ready endpoint is
  on node2 (an EndpointSlice made with kubectl, the LB IP set with a status patch): its
  LB IP and cluster IP as /32s from node2 only, the LB one with its community; its second
  LB IP, outside the configured ranges, never; the nodes that learn the /32s over the mesh
  install no kernel route for them;
* the endpoint moved to node3: the /32s follow it; the endpoint deleted: they are withdrawn.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab import bird_peer, netns
from lab.cluster import Lab, LabState
from lab.kubernetes import SERVICE_CIDR, Kubernetes
from lab.procs import alive
from routing.bgp.bird import BirdError
from tests.support.lab_cli import run_tortie
from tests.support.tools import require_tools, tools
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, tools("kubernetes"), pytest.mark.timeout(900)]

NS = "shop"
LB_RANGE = "198.51.100.0/24"
LB_IP = "198.51.100.10"
OUTSIDE_IP = "203.0.113.50"           # a load-balancer IP in no configured range
CLUSTER_COMMUNITY = (64512, 100)      # standard, on the cluster-IP range
LB_COMMUNITY = (64512, 200, 1)        # large, named "lb", on the load-balancer range
WAIT = 120.0                          # generous: the machine is shared


@pytest.fixture
def lab_name() -> Iterator[str]:
    require_tools("bird", "exabgp")
    name = f"s{uuid.uuid4().hex[:8]}"
    pids: dict[str, int] = {}
    try:
        yield name
    finally:
        lab = Lab(name)
        if lab.exists():
            pids = dict(lab.load().k8s_pids)
        lab.down()
        assert netns.list_netns(f"tl-{name}-") == []
        assert not [k for k, pid in pids.items() if alive(pid)], pids


def tortie(lab: Lab, st: LabState, *args: str, doc: str | None = None) -> str:
    p = lab.tortie(st, list(args), input=doc)
    assert p.returncode == 0, p.stderr
    return p.stdout


def kubectl(k8s: Kubernetes, *args: str, doc: Any = None) -> str:
    p = k8s.kubectl(list(args), input=None if doc is None else json.dumps(doc))
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def kernel_route(ns: str, prefix: str) -> str:
    return netns.ip("-4", "route", "show", prefix, ns=ns, check=False).strip()


def bird_paths(bird: bird_peer.BirdPeer, prefix: str) -> tuple[list[str], str]:
    """The next hops BIRD holds for exactly ``prefix`` (every path), and its text."""
    try:
        text = bird.cli("show", "route", prefix, "all")
    except BirdError as e:
        if "Network not found" in str(e):
            return [], str(e)
        raise
    if not re.search(rf"^{re.escape(prefix)}\s", text, re.M):
        return [], text
    return sorted(re.findall(r"BGP\.next_hop:\s*(\S+)", text)), text


def slice_on(node: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "lb-1", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "lb"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.99.10"], "nodeName": node,
                           "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def test_service_addresses_reach_the_tor(lab_name: str) -> None:
    r = run_tortie("lab", "up", "--name", lab_name, "--nodes", "3", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_tortie("lab", "peer", "bird", "--name", lab_name)
    assert r.returncode == 0, r.stderr
    lab = Lab(lab_name)
    st = lab.load()
    bird = bird_peer.bird_of(lab)
    nodes = {n.name: n for n in st.nodes.values()}
    hops = sorted(n.address for n in nodes.values())

    tortie(lab, st, "apply", "-f", "-", doc=f"""apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  serviceClusterIPs:
  - cidr: {SERVICE_CIDR}
  serviceLoadBalancerIPs:
  - cidr: {LB_RANGE}
  communities:
  - name: lb
    value: {':'.join(map(str, LB_COMMUNITY))}
  prefixAdvertisements:
  - cidr: {SERVICE_CIDR}
    communities:
    - {':'.join(map(str, CLUSTER_COMMUNITY))}
  - cidr: {LB_RANGE}
    communities:
    - lb
""")

    # 1. the cluster-IP range from every node, with its community; no kernel route for it
    until_sync(lambda: bird_paths(bird, SERVICE_CIDR)[0] == hops,
               what=f"BIRD holds {SERVICE_CIDR} from every node", timeout=WAIT, interval=0.5)
    text = bird_paths(bird, SERVICE_CIDR)[1]
    assert len(re.findall(r"BGP\.community:\s*\(64512,\s*100\)", text)) == 3, text
    for n in nodes.values():
        assert kernel_route(n.netns, SERVICE_CIDR) == "", n.name

    # 2. Kubernetes: the API server, a Node per lab node, tortie-kube-controllers
    k8s = lab.up_kube_api()
    kubectl(k8s, "create", "namespace", NS)
    port = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    kubectl(k8s, "apply", "-f", "-", doc={"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"type": "ClusterIP", "ports": port}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": NS},
         "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": port}},
    ]})
    kubectl(k8s, "patch", "service", "lb", "-n", NS, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"loadBalancer": {"ingress": [
                {"ip": LB_IP}, {"ip": OUTSIDE_IP}]}}}))
    kubectl(k8s, "apply", "-f", "-", doc=slice_on("node2"))
    web_ip = json.loads(kubectl(k8s, "get", "service", "web", "-n", NS, "-o",
                                "json"))["spec"]["clusterIP"]
    lb_cluster_ip = json.loads(kubectl(k8s, "get", "service", "lb", "-n", NS, "-o",
                                       "json"))["spec"]["clusterIP"]
    lb32, lbc32, web32 = f"{LB_IP}/32", f"{lb_cluster_ip}/32", f"{web_ip}/32"

    # the mirror keeps only what routing needs
    stored = json.loads(tortie(lab, st, "get", "k8sservices", "lb", "-n", NS, "-o", "json"))
    assert stored["spec"]["externalTrafficPolicy"] == "Local" and "ports" not in stored["spec"]
    assert stored["status"]["loadBalancer"]["ingress"][0]["ip"] == LB_IP

    # 3. the Local Service's /32s from node2 only, with the LB range's community
    node2 = nodes["node2"].address
    until_sync(lambda: bird_paths(bird, lb32)[0] == [node2],
               what=f"BIRD holds {lb32} from node2 only", timeout=WAIT, interval=0.5)
    until_sync(lambda: bird_paths(bird, lbc32)[0] == [node2],
               what=f"BIRD holds {lbc32} from node2 only", timeout=WAIT, interval=0.5)
    text = bird_paths(bird, lb32)[1]
    assert re.search(r"BGP\.large_community:\s*\(64512,\s*200,\s*1\)", text), text
    assert bird_paths(bird, SERVICE_CIDR)[0] == hops  # the range is still there
    routes = bird.routes()
    assert web32 not in routes and f"{OUTSIDE_IP}/32" not in routes, routes
    for n in nodes.values():  # learnt over the mesh (or announced): never a kernel route
        for prefix in (lb32, lbc32, SERVICE_CIDR):
            assert kernel_route(n.netns, prefix) == "", (n.name, prefix)

    # 4. the endpoint moves to node3: so do the /32s
    kubectl(k8s, "apply", "-f", "-", doc=slice_on("node3"))
    node3 = nodes["node3"].address
    until_sync(lambda: bird_paths(bird, lb32)[0] == [node3]
               and bird_paths(bird, lbc32)[0] == [node3],
               what="the /32s move to node3", timeout=WAIT, interval=0.5)

    # 5. the endpoint deleted: the /32s are withdrawn, the range stays
    kubectl(k8s, "delete", "endpointslice", "lb-1", "-n", NS)
    until_sync(lambda: not bird_paths(bird, lb32)[0] and not bird_paths(bird, lbc32)[0],
               what="the /32s are withdrawn", timeout=WAIT, interval=0.5)
    assert bird_paths(bird, SERVICE_CIDR)[0] == hops
