"""tortie-kube-controllers against an in-process Kubernetes API (tests/support/fake_kube_api.py, the
real list/watch protocol) and the real etcd.

This checks the list/watch/resync logic and the datastore mapping; the kind run
(integration/kind/run.sh) is the check against a real API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import ipaddress
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from agentkit.metrics import value
from datastore import bgp_secrets, keys
from datastore.kinds import by_plural
from datastore.model_bgp import BGPConfiguration, BGPPeer
from datastore.model_config import KubeControllersConfiguration
from datastore.model_endpoints import WorkloadEndpoint
from datastore.model_network import IPPool, Node
from datastore.model_policy import GlobalNetworkPolicy
from datastore.resources import Resources
from datastore.store import NotFound, Store
from ipam import keys as ipam_keys
from ipam.allocator import IPAM
from ipam.handles import workload_handle
from kubecontrollers.app import KubeControllers
from kubecontrollers.controller import Context, Options
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.ipam_gc import IPAMGarbageCollector
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.reflector import Reflector
from policyagent.calc import PolicyCalculator
from tests.support.fake_kube_api import FakeKubeAPI
from tests.support.tools import require_tools
from tests.support.wait import until

pytestmark = pytest.mark.integration

_NS = by_plural("namespaces")
_POD = by_plural("pods")
_HEP = by_plural("hostendpoints")
_NODE = by_plural("nodes")
_WEP = by_plural("workloadendpoints")
_KNP = by_plural("k8snetworkpolicies")
_KCC = by_plural("kubecontrollersconfigurations")


def suffix() -> str:
    return uuid.uuid4().hex[:6]


#: Polling here counts what is not there yet (NotFound, a missing key, a failed assertion)
#: as "not yet".
eventually = functools.partial(until, ignore=(NotFound, KeyError, AssertionError))


@contextlib.asynccontextmanager
async def running(store: Store, api: FakeKubeAPI, **options: Any,
                  ) -> AsyncIterator[KubeControllers]:
    conf = client.Configuration(host=api.url)
    api_client = client.ApiClient(conf)
    opts = Options(period=options.pop("period", 2.0), leak_grace=options.pop("leak_grace", 30.0),
                   ipam_gc_interval=options.pop("gc_interval", 0.2))
    app = KubeControllers(store, api_client, options=opts, metrics=KubeMetrics(),
                          watch_timeout=options.pop("watch_timeout", 30),
                          page_size=options.pop("page_size", 2))
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.synced.wait(), 10)
        yield app
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api_client.close()


def ns_doc(name: str, labels: dict[str, str] | None = None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def pod_doc(name: str, ns: str, node: str, labels: dict[str, str] | None = None,
            ip: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [
            {"name": "web", "image": "nginx",
             "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running"}}
    if ip:
        doc["status"].update(podIP=ip, podIPs=[{"ip": ip}])
    return doc


def node_doc(name: str, ip: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}}


async def stored(store: Store, plural: str, name: str, ns: str | None = None) -> dict[str, Any]:
    return (await store.get(keys.resource_key(plural, name, ns))).value


async def stored_names(store: Store, plural: str) -> set[str]:
    kvs, _ = await store.list(keys.resource_prefix(plural))
    return {"/".join(p for p in keys.parse_resource_key(kv.key)[1:] if p) for kv in kvs}


# --- namespaces ---------------------------------------------------------------------------------


async def test_namespace_label_change_changes_its_profile(store: Store) -> None:
    ns = f"team-{suffix()}"
    async with FakeKubeAPI() as api:
        api.put("namespaces", ns_doc(ns, {"team": "red"},
                                     {"cni.projectcalico.org/ipv4pools": '["pool-a"]'}))
        async with running(store, api):
            got = await eventually(lambda: stored(store, "namespaces", ns), what="namespace")
            assert got["metadata"]["labels"] == {"team": "red"}
            assert got["metadata"]["annotations"]["cni.projectcalico.org/ipv4pools"] == \
                '["pool-a"]'
            assert got["metadata"]["uid"] == api.get("namespaces", ns)["metadata"]["uid"]

            # the policy agent's view: a policy selecting namespace label team=blue
            calc = PolicyCalculator("node-a")
            res = Resources(store)
            wep = WorkloadEndpoint.from_dict({
                "metadata": {"name": "node--a-k8s-p-eth0", "namespace": ns,
                             "labels": {"projectcalico.org/namespace": ns}},
                "spec": {"node": "node-a", "orchestrator": "k8s", "pod": "p",
                         "endpoint": "eth0", "interfaceName": "calip",
                         "ipNetworks": ["10.65.0.1/32"],
                         "profiles": [f"kns.{ns}", f"ksa.{ns}.default"]}})
            calc.update("WorkloadEndpoint", f"{ns}/p", wep)
            calc.update("GlobalNetworkPolicy", "blue", _gnp("blue", "team == 'blue'"))

            async def applies() -> bool:
                calc.update("Namespace", ns, await res.get(_NS, ns))
                ep = calc.model().endpoints[f"{ns}/node--a-k8s-p-eth0"]
                return [p for t in ep.ingress_policies for p in t.policies] == ["gnp:blue"]

            assert not await applies()
            api.put("namespaces", ns_doc(ns, {"team": "blue"}))
            await eventually(applies, what="policy to follow the namespace label")
            got = await stored(store, "namespaces", ns)
            assert got["metadata"]["labels"] == {"team": "blue"}
            assert "cni.projectcalico.org/ipv4pools" not in (got["metadata"].get("annotations")
                                                             or {})
            api.delete("namespaces", ns)
            await eventually(lambda: _absent(store, "namespaces", ns), what="namespace gone")


def _gnp(name: str, selector: str) -> Any:
    return GlobalNetworkPolicy.from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name}, "spec": {"namespaceSelector": selector,
                                             "ingress": [{"action": "Allow"}]}})


async def _absent(store: Store, plural: str, name: str, ns: str | None = None) -> bool:
    try:
        await store.get(keys.resource_key(plural, name, ns))
    except NotFound:
        return True
    return False


# --- pods, endpoints, IPAM leak GC --------------------------------------------------------------


async def _pool(store: Store) -> None:
    await Resources(store).create(by_plural("ippools"), IPPool.from_dict({
        "metadata": {"name": "pool"}, "spec": {"cidr": "10.77.0.0/16"}}))


async def _cni_add(store: Store, node: str, ns: str, pod: str, labels: dict[str, str],
                   cid: str | None = None, ifname: str = "eth0") -> tuple[str, str, str]:
    """What the CNI handler leaves behind for a pod's attachment: an allocation under the
    attachment's handle and a WorkloadEndpoint."""
    cid = cid or uuid.uuid4().hex
    ipam = IPAM(store, node)
    pools = await ipam.pools()
    [ip] = await ipam.auto_assign(workload_handle(cid, ifname), {
        "pod": pod, "namespace": ns, "container": cid}, pools)
    name = f"{node}-k8s-{pod}-{ifname}"
    host = f"cali{cid[:8]}" if ifname == "eth0" else f"cali{cid[:7]}{ifname}"[:15]
    await Resources(store).create(_WEP, WorkloadEndpoint.from_dict({
        "metadata": {"name": name, "namespace": ns, "labels": {
            **labels, "projectcalico.org/namespace": ns,
            "projectcalico.org/orchestrator": "k8s",
            "projectcalico.org/serviceaccount": "default"}},
        "spec": {"node": node, "orchestrator": "k8s", "pod": pod, "endpoint": ifname,
                 "containerID": cid, "interfaceName": host,
                 "ipNetworks": [f"{ip}/32"], "profiles": [f"kns.{ns}", f"ksa.{ns}.default"]}}))
    return cid, ip, name


async def _allocated(store: Store) -> dict[str, str]:
    out: dict[str, str] = {}
    for b in await IPAM(store, "x").list_blocks():
        for ip, attrs in b.allocated():
            out[ip] = attrs["handle"]
    return out


async def test_pod_mirror_labels_and_deleted_pod_address_released(store: Store) -> None:
    ns = f"app-{suffix()}"
    await _pool(store)
    cid_a, ip_a, wep_a = await _cni_add(store, "node-a", ns, "web-0", {"app": "web"})
    cid_b, ip_b, wep_b = await _cni_add(store, "node-b", ns, "web-1", {"app": "web"})
    async with FakeKubeAPI() as api:
        api.put("namespaces", ns_doc(ns))
        api.put("pods", pod_doc("web-0", ns, "node-a", {"app": "web"}, ip_a))
        api.put("pods", pod_doc("web-1", ns, "node-b", {"app": "web"}, ip_b))
        for n, node_ip in (("node-a", "192.168.2.10"), ("node-b", "192.168.2.11")):
            api.put("nodes", node_doc(n, node_ip, {}))  # node-b: down, not removed
        async with running(store, api, leak_grace=1.0) as app:
            pod = await eventually(lambda: stored(store, "pods", "web-0", ns), what="pod")
            assert pod["spec"]["nodeName"] == "node-a"
            assert pod["spec"]["containers"][0]["ports"][0]["name"] == "http"

            # a label change reaches the pod's endpoint (policies select endpoints)
            api.put("pods", pod_doc("web-0", ns, "node-a", {"app": "web", "tier": "gold"}, ip_a))

            async def relabelled() -> bool:
                w = await stored(store, "workloadendpoints", wep_a, ns)
                return w["metadata"]["labels"].get("tier") == "gold" and \
                    w["metadata"]["labels"]["projectcalico.org/namespace"] == ns
            await eventually(relabelled, what="endpoint labels")

            # node-b goes down; web-1 is deleted from the API (its CNI DEL never runs)
            await asyncio.sleep(0.5)
            assert (await _allocated(store)).keys() >= {ip_a, ip_b}
            assert app.gc.passes > 0
            api.delete("pods", "web-1", ns)
            await eventually(lambda: _absent(store, "pods", "web-1", ns), what="pod mirror gone")
            await eventually(lambda: _absent(store, "workloadendpoints", wep_b, ns),
                             what="endpoint of the deleted pod gone")
            assert ip_b in await _allocated(store)  # still within the grace period

            async def released() -> bool:
                return ip_b not in await _allocated(store)
            await eventually(released, timeout=10, what="leaked address released")
            alloc = await _allocated(store)
            assert alloc[ip_a] == f"tortie.{cid_a}"  # the live pod keeps its address
            with pytest.raises(NotFound):
                await store.get(ipam_keys.handle_key(f"tortie.{cid_b}"))
            assert app.gc.released == [f"tortie.{cid_b}"]
            assert value(app.metrics.ipam_released) == 1


async def test_gc_grace_period_and_recreated_pod(store: Store) -> None:
    """Candidates wait out the grace period; a pod that (re)appears is never released."""
    ns = f"gc-{suffix()}"
    await _pool(store)
    _, ip_new, _ = await _cni_add(store, "node-a", ns, "late", {})
    _, ip_moved, _ = await _cni_add(store, "node-b", ns, "db-0", {})
    # an empty block still affine to a node that left the cluster, and one of a live node
    gone = IPAM(store, "gone-node")
    [ip_gone] = await gone.auto_assign("tortie.x1", {}, await gone.pools())
    live = IPAM(store, "node-a")
    [ip_live] = await live.auto_assign("tortie.x2", {}, await live.pools())
    await IPAM(store, "someone-else").release_ips([ip_gone, ip_live])
    blocks = {b.affinity_node: b.cidr for b in await IPAM(store, "x").list_blocks()}
    assert {"gone-node", "node-a"} <= blocks.keys()
    metrics = KubeMetrics()
    pods = Reflector("pods", _no_api, metrics=metrics)
    pods.synced.set()
    nodes = Reflector("nodes", _no_api, metrics=metrics)
    nodes.cache["node-a"] = node_doc("node-a", "10.0.0.1", {})
    nodes.cache["node-b"] = node_doc("node-b", "10.0.0.2", {})  # down, not removed
    nodes.synced.set()
    calico_nodes = DatastoreCache(store, "nodes")
    calico_nodes.syncer.synced.set()
    ctx = Context(store, metrics, {"pods": pods}, Options(leak_grace=60.0))
    gc = IPAMGarbageCollector(ctx, pods, nodes, calico_nodes)
    # db-0 was recreated on node-c with a new address while node-b was down
    pods.cache[f"{ns}/db-0"] = pod_doc("db-0", ns, "node-c", ip="10.77.200.9")
    assert await gc.run_once(now=1000.0) == []
    assert {c.ips[0] for c in gc.candidates.values()} == {ip_new, ip_moved}
    # the late pod shows up in the API before the grace period ends: not a candidate
    pods.cache[f"{ns}/late"] = pod_doc("late", ns, "node-a")
    assert await gc.run_once(now=1059.0) == []
    assert {c.ips[0] for c in gc.candidates.values()} == {ip_moved}
    released = await gc.run_once(now=1061.0)
    assert len(released) == 1
    alloc = await _allocated(store)
    assert ip_new in alloc and ip_moved not in alloc
    assert gc.deleted_blocks == [blocks["gone-node"]]
    left = {b.affinity_node for b in await IPAM(store, "x").list_blocks()}
    assert "gone-node" not in left and "node-a" in left
    # leakGracePeriod 0 turns the GC off
    ctx.options.leak_grace = 0.0
    del pods.cache[f"{ns}/late"]
    assert await gc.run_once(now=5000.0) == [] and not gc.candidates


async def test_gc_releases_every_attachment_of_a_deleted_pod(store: Store) -> None:
    """A pod with eth0 and net1 (handles ``tortie.<cid>`` and ``tortie.<cid>.net1``): both
    are released with their own endpoints once the pod is gone; a live pod keeps both."""
    ns = f"gc-{suffix()}"
    await _pool(store)
    cid_gone, ip_gone0, wep_gone0 = await _cni_add(store, "node-a", ns, "gone", {})
    _, ip_gone1, wep_gone1 = await _cni_add(store, "node-a", ns, "gone", {}, cid_gone, "net1")
    cid_live, ip_live0, wep_live0 = await _cni_add(store, "node-a", ns, "live", {})
    _, ip_live1, wep_live1 = await _cni_add(store, "node-a", ns, "live", {}, cid_live, "net1")
    assert wep_gone0 != wep_gone1 and wep_live0 != wep_live1
    metrics = KubeMetrics()
    pods = Reflector("pods", _no_api, metrics=metrics)
    pods.cache[f"{ns}/live"] = pod_doc("live", ns, "node-a")
    pods.synced.set()
    ctx = Context(store, metrics, {"pods": pods}, Options(leak_grace=60.0))
    gc = IPAMGarbageCollector(ctx, pods)
    assert await gc.run_once(now=1000.0) == []
    assert {(c.container, c.interface) for c in gc.candidates.values()} == {
        (cid_gone, "eth0"), (cid_gone, "net1")}
    released = await gc.run_once(now=1061.0)
    assert sorted(released) == [f"tortie.{cid_gone}", f"tortie.{cid_gone}.net1"]
    alloc = await _allocated(store)
    assert alloc == {ip_live0: f"tortie.{cid_live}", ip_live1: f"tortie.{cid_live}.net1"}
    assert ip_gone0 not in alloc and ip_gone1 not in alloc
    for name in (wep_gone0, wep_gone1):
        assert await _absent(store, "workloadendpoints", name, ns)
    for name in (wep_live0, wep_live1):
        assert (await stored(store, "workloadendpoints", name, ns))["spec"]["containerID"] \
            == cid_live


async def _no_api(**kwargs: Any) -> Any:
    raise AssertionError("not called")


# --- nodes and automatic host endpoints (seed 003) ----------------------------------------------

SEED_003_HEP = yaml.safe_load("""
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: master
    kubernetes.io/os: linux
    node-role.kubernetes.io/master: ""
    projectcalico.org/created-by: calico-kube-controllers
  name: master-auto-hep
spec:
  expectedIPs:
  - 192.168.2.10
  interfaceName: '*'
  node: master
  profiles:
  - projectcalico-default-allow
""")


def _k8s_labels(name: str, master: bool = False) -> dict[str, str]:
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
              "kubernetes.io/os": "linux"}
    if master:
        labels["node-role.kubernetes.io/master"] = ""
    return labels


async def _register(store: Store, name: str, ip: str) -> None:
    """What tortie-node writes for its node."""
    await Resources(store).create(_NODE, Node.from_dict({
        "metadata": {"name": name, "labels": {"rack": "r1"}},
        "spec": {"bgp": {"ipv4Address": f"{ip}/24"},
                 "orchRefs": [{"nodeName": name, "orchestrator": "k8s"}]}}))


async def test_auto_host_endpoints_follow_nodes_and_config(store: Store) -> None:
    nodes = {"master": "192.168.2.10", "node1": "192.168.2.11", "node2": "192.168.2.12"}
    res = Resources(store)
    for n, ip in nodes.items():
        await _register(store, n, ip)
    user_hep = {"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
                "metadata": {"name": "node1-eth0"},
                "spec": {"node": "node1", "interfaceName": "eth0"}}
    await res.create(_HEP, by_plural("hostendpoints").model.from_dict(user_hep))
    async with FakeKubeAPI() as api:
        for n, ip in nodes.items():
            api.put("nodes", node_doc(n, ip, _k8s_labels(n, master=n == "master")))
        async with running(store, api):
            # node labels and addresses merged into the Calico Node; bgp / orchRefs kept
            async def merged() -> bool:
                node = (await stored(store, "nodes", "master"))
                return node["metadata"]["labels"].get("kubernetes.io/hostname") == "master"
            await eventually(merged, what="node labels")
            node = await stored(store, "nodes", "master")
            assert node["metadata"]["labels"]["rack"] == "r1"
            assert node["spec"]["bgp"] == {"ipv4Address": "192.168.2.10/24"}
            assert node["spec"]["orchRefs"] == [{"nodeName": "master", "orchestrator": "k8s"}]
            assert node["spec"]["addresses"] == [{"address": "192.168.2.10",
                                                  "type": "InternalIP"}]
            # the node mirror is another controller: it may finish after the merge above
            async def mirrored() -> bool:
                return await stored_names(store, "k8snodes") == set(nodes)
            await eventually(mirrored, what="k8s nodes mirrored")
            assert await stored_names(store, "k8snodes") == set(nodes)
            await asyncio.sleep(0.3)
            assert await stored_names(store, "hostendpoints") == {"node1-eth0"}  # Disabled

            kcc = KubeControllersConfiguration.from_dict({
                "metadata": {"name": "default"}, "spec": {}})
            await res.apply(_KCC, kcc)
            await res.patch(_KCC, "default", None, {"spec": {"controllers": {"node": {
                "hostEndpoint": {"autoCreate": "Enabled"}}}}})

            want = {"master-auto-hep", "node1-auto-hep", "node2-auto-hep", "node1-eth0"}

            async def all_created() -> bool:
                return await stored_names(store, "hostendpoints") == want
            await eventually(all_created, what="one auto host endpoint per node")
            hep = (await res.get(_HEP, "master-auto-hep")).dump()
            for f in ("resourceVersion", "uid", "creationTimestamp"):
                assert hep["metadata"].pop(f)
            expected = copy.deepcopy(SEED_003_HEP)
            expected["metadata"]["labels"]["rack"] = "r1"  # the Calico Node's own label
            assert hep == expected

            # a node label change in Kubernetes reaches the host endpoint; removal too
            api.put("nodes", node_doc("node1", "192.168.2.11",
                                      {**_k8s_labels("node1"), "kubernetes-worker": ""}))

            async def worker_label() -> bool:
                h = await res.get(_HEP, "node1-auto-hep")
                return "kubernetes-worker" in (h.metadata.labels or {})
            await eventually(worker_label, what="hep labels follow the node")
            api.put("nodes", node_doc("node1", "192.168.2.11", _k8s_labels("node1")))

            async def label_removed() -> bool:
                h = await res.get(_HEP, "node1-auto-hep")
                n = await stored(store, "nodes", "node1")
                return "kubernetes-worker" not in (h.metadata.labels or {}) and \
                    "kubernetes-worker" not in n["metadata"]["labels"]
            await eventually(label_removed, what="label removal")

            # a node leaving the cluster takes its Calico Node and host endpoint along
            api.delete("nodes", "node2")
            await eventually(lambda: _absent(store, "nodes", "node2"), what="node2 gone")
            await eventually(lambda: _absent(store, "hostendpoints", "node2-auto-hep"),
                             what="node2 hep gone")

            # autoCreate off: the automatic ones go, the user's stays
            await res.patch(_KCC, "default", None, {"spec": {"controllers": {"node": {
                "hostEndpoint": {"autoCreate": "Disabled"}}}}})

            async def only_user() -> bool:
                return await stored_names(store, "hostendpoints") == {"node1-eth0"}
            await eventually(only_user, what="auto heps deleted")


# --- a node removed from the cluster ------------------------------------------------------------


async def _tunnel(store: Store, node: str) -> str:
    """What the routing agent allocates for a node whose pool uses VXLAN."""
    ipam = IPAM(store, node)
    [ip] = await ipam.auto_assign(f"vxlan-tunnel-addr-{node}", {"node": node},
                                  await ipam.pools())
    return ip


async def _affine(store: Store, node: str) -> list[str]:
    return [b.cidr for b in await IPAM(store, "x").list_blocks() if b.affinity_node == node]


async def test_removed_node_gives_back_addresses_tunnel_and_blocks(store: Store) -> None:
    """Regression: a node deleted from Kubernetes kept its tunnel address, its
    pods' addresses (for the whole leakGracePeriod) and so its blocks and affinities for
    ever.  Now, as in Calico, once its pods are gone they are released at once, then its
    tunnel address, blocks and host document -- and not while one of its pods exists, nor
    while it holds an address of an unknown kind, nor when its Calico Node exists in etcd
    (a node that registered a moment ago)."""
    ns = f"rm-{suffix()}"
    await _pool(store)
    _, ip_live, _ = await _cni_add(store, "node-a", ns, "live", {})
    cid, ip_pod, wep = await _cni_add(store, "node-gone", ns, "web-0", {})
    tunnel = await _tunnel(store, "node-gone")
    live_tunnel = await _tunnel(store, "node-a")
    other = await _tunnel(store, "node-odd")
    await IPAM(store, "node-odd").assign_ip(str(ipaddress.ip_address(other) + 1), "mine",
                                            {"node": "node-odd"})
    await _tunnel(store, "node-new")
    await _register(store, "node-new", "192.168.2.13")  # in etcd, not in the cache yet
    metrics = KubeMetrics()
    pods = Reflector("pods", _no_api, metrics=metrics)
    pods.cache[f"{ns}/live"] = pod_doc("live", ns, "node-a", ip=ip_live)
    pods.cache[f"{ns}/web-0"] = pod_doc("web-0", ns, "node-gone", ip=ip_pod)
    pods.synced.set()
    nodes = Reflector("nodes", _no_api, metrics=metrics)
    nodes.cache["node-a"] = node_doc("node-a", "10.0.0.1", {})
    nodes.synced.set()
    calico_nodes = DatastoreCache(store, "nodes")
    calico_nodes.syncer.synced.set()
    gc = IPAMGarbageCollector(Context(store, metrics, {"pods": pods}, Options(leak_grace=900.0)),
                              pods, nodes, calico_nodes)
    assert await gc.run_once(now=1000.0) == []   # web-0 still exists in the API
    assert tunnel in await _allocated(store) and await _affine(store, "node-gone")

    del pods.cache[f"{ns}/web-0"]   # the pod GC deleted it (its kubelet is gone)
    released = await gc.run_once(now=1001.0)   # no grace period: the node is gone
    assert sorted(released) == [f"tortie.{cid}", "vxlan-tunnel-addr-node-gone"]
    alloc = await _allocated(store)
    assert ip_pod not in alloc and tunnel not in alloc
    assert await _affine(store, "node-gone") == []
    assert set(gc.deleted_blocks) == {str(ipaddress.ip_network(f"{tunnel}/26", strict=False))}
    with pytest.raises(NotFound):
        await store.get(ipam_keys.host_key("node-gone"))
    assert await _absent(store, "workloadendpoints", wep, ns)
    # the live node, the node with an address of unknown kind, the node that has just
    # registered: untouched
    assert {ip_live, live_tunnel, other} <= alloc.keys()
    assert await _affine(store, "node-a") and await _affine(store, "node-odd")
    assert await _affine(store, "node-new")
    await store.get(ipam_keys.host_key("node-odd"))
    assert not gc.candidates   # nothing waits for a grace period


async def test_node_deleted_in_kubernetes_frees_its_ipam_promptly(store: Store) -> None:
    """The whole controller: deleting the Kubernetes Node removes its Calico Node as
    ``tortie delete node`` does (ipam.node_release.remove_node): by the time the Calico Node
    is gone, its endpoints are deleted, their addresses and its tunnel address released, its
    empty block deleted and its host document gone -- without waiting for its pods to leave
    the API, the GC interval or the grace period.  A borrowed address of another node in
    its block stays, in a block affine to nobody; node-a keeps everything."""
    ns = f"rm-{suffix()}"
    await _pool(store)
    for n, ip in (("node-a", "192.168.2.10"), ("node-b", "192.168.2.11")):
        await _register(store, n, ip)
    _, ip_a, wep_a = await _cni_add(store, "node-a", ns, "live", {})
    _, ip_pod, wep = await _cni_add(store, "node-b", ns, "web-0", {})
    tunnel = await _tunnel(store, "node-b")
    affine_a = await _affine(store, "node-a")
    assert await _affine(store, "node-b")
    async with FakeKubeAPI() as api:
        api.put("namespaces", ns_doc(ns))
        for n, ip in (("node-a", "192.168.2.10"), ("node-b", "192.168.2.11")):
            api.put("nodes", node_doc(n, ip, _k8s_labels(n)))
        api.put("pods", pod_doc("live", ns, "node-a", ip=ip_a))
        api.put("pods", pod_doc("web-0", ns, "node-b", ip=ip_pod))
        async with running(store, api, gc_interval=600.0, leak_grace=900.0) as app:
            await eventually(lambda: _true(app.gc.passes > 0), what="a first GC pass")
            api.delete("nodes", "node-b")
            await eventually(lambda: _absent(store, "nodes", "node-b"), what="Calico Node gone")
            # its pod is still in the API: released all the same (its node is gone)
            alloc = await _allocated(store)
            assert ip_pod not in alloc and tunnel not in alloc
            assert await _affine(store, "node-b") == []
            assert await _absent(store, "workloadendpoints", wep, ns)
            with pytest.raises(NotFound):
                await store.get(ipam_keys.host_key("node-b"))
            assert alloc.get(ip_a, "").startswith("tortie.")
            assert await _affine(store, "node-a") == affine_a
            assert not await _absent(store, "workloadendpoints", wep_a, ns)
            assert value(app.metrics.writes, controller="nodes", op="delete") >= 3
            api.delete("pods", "web-0", ns)   # the pod GC: nothing left for the IPAM GC
            app.gc.kick()
            await eventually(lambda: _true(app.gc.passes > 1), what="another GC pass")
            assert app.gc.released == []


# --- list / watch / resync ----------------------------------------------------------------------


async def test_watch_broken_and_410_resync_miss_nothing(store: Store) -> None:
    tag = suffix()
    names = [f"ns-{tag}-{i}" for i in range(5)]
    async with FakeKubeAPI() as api:
        for n in names:
            api.put("namespaces", ns_doc(n, {"v": "1"}))
        async with running(store, api, page_size=2) as app:
            refl = app.reflectors["namespaces"]
            # the first list came in pages (limit=2 -> 3 requests)
            assert sum(1 for r in api.requests if r.startswith("GET /api/v1/namespaces?")
                       and "watch" not in r) == 3

            async def mirrored(expected: dict[str, str]) -> bool:
                got = {}
                for kv in (await store.list(keys.resource_prefix("namespaces")))[0]:
                    got[kv.value["metadata"]["name"]] = kv.value["metadata"]["labels"]["v"]
                return got == expected
            await eventually(lambda: mirrored(dict.fromkeys(names, "1")), what="initial sync")
            await eventually(lambda: _true(api.open_watches("namespaces") == 1))

            # 1. the watch connection breaks; changes happen before it is back
            rv_before = api.rv
            seen_requests = len(api.requests)
            api.drop_watches()
            api.put("namespaces", ns_doc(names[0], {"v": "2"}))
            api.delete("namespaces", names[1])
            extra = f"ns-{tag}-x"
            api.put("namespaces", ns_doc(extra, {"v": "1"}))
            want = {names[0]: "2", names[2]: "1", names[3]: "1", names[4]: "1", extra: "1"}
            await eventually(lambda: mirrored(want), what="resume after a broken watch")
            assert refl.relists == 0  # resumed from its resourceVersion, no relist
            resumed = [r for r in api.requests[seen_requests:] if "watch=true" in r.lower()]
            assert resumed and f"resourceVersion={rv_before}" in resumed[0]

            # 2. a bookmark moves the resourceVersion on: compaction up to it costs no relist
            await eventually(lambda: _true(api.open_watches("namespaces") == 1))
            api.put("nodes", node_doc("n-other", "10.0.0.1", {}))  # rv moves, not namespaces
            api.bookmark()
            await eventually(lambda: _true(refl.resource_version == str(api.rv)),
                             what="bookmark")
            api.compact()
            api.drop_watches()
            await asyncio.sleep(0.5)
            assert refl.relists == 0

            # 3. watch history compacted while disconnected -> 410 -> relist, deletes diffed
            await eventually(lambda: _true(api.open_watches("namespaces") == 1))
            api.drop_watches()
            api.delete("namespaces", names[2])
            api.put("namespaces", ns_doc(names[3], {"v": "3"}))
            api.compact()
            del want[names[2]]
            want[names[3]] = "3"
            await eventually(lambda: mirrored(want), what="resync after 410")
            assert refl.relists >= 1
            assert value(app.metrics.lists, resource="namespaces", reason="gone") >= 1

            # 4. the API server fails for a while: retried, nothing lost
            api.fail_requests = 3
            api.drop_watches()
            api.delete("namespaces", names[4])
            del want[names[4]]
            await eventually(lambda: mirrored(want), what="recovery after HTTP 500s")
            assert value(app.metrics.watch_errors, resource="namespaces") >= 3


async def _true(value: bool) -> bool:
    return value


async def test_expired_continue_token_lists_again(store: Store) -> None:
    """A 410 in the middle of a paginated list (the continue token expired) starts the list
    over; nothing from the half-read list is reported as deleted."""
    async with FakeKubeAPI() as api:
        names = [f"page-{i}" for i in range(5)]
        for n in names:
            api.put("namespaces", ns_doc(n))
        api_client = client.ApiClient(client.Configuration(host=api.url))
        core = client.CoreV1Api(api_client)
        calls = 0

        async def list_namespace(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            resp = await core.list_namespace(**kwargs)
            if calls == 1:  # after the first page: history moves on and is compacted
                api.put("namespaces", ns_doc("late"))
                api.compact()
            return resp

        refl = Reflector("namespaces", list_namespace, page_size=2, kind="Namespace",
                         api_version="v1")
        deletes: list[str] = []
        refl.add_listener(lambda key, old, new: deletes.append(key) if new is None else None)
        task = asyncio.create_task(refl.run())
        try:
            await asyncio.wait_for(refl.synced.wait(), 10)
            assert set(refl.cache) == {*names, "late"}
            assert value(refl.metrics.lists, resource="namespaces", reason="gone") == 1
            assert any(r.startswith("GET /api/v1/namespaces?") and "continue=" in r
                       for r in api.requests)
            assert deletes == []
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api_client.close()


async def test_bad_objects_are_skipped_and_counted(store: Store) -> None:
    ns = f"np-{suffix()}"
    good = {"metadata": {"name": "allow-web", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {}}]}]}}
    bad = {"metadata": {"name": "bogus", "namespace": ns},
           "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}}
    async with FakeKubeAPI() as api:
        api.put("networkpolicies", good)
        api.put("networkpolicies", bad)
        async with running(store, api) as app:
            got = await eventually(lambda: stored(store, "k8snetworkpolicies", "allow-web", ns),
                                   what="good policy")
            assert got["spec"]["policyTypes"] == ["Ingress"]
            assert await _absent(store, "k8snetworkpolicies", "bogus", ns)
            assert value(app.metrics.bad_objects, resource="k8snetworkpolicies") >= 1
            # a watch event that is not an object does not stop the watch
            api.put("networkpolicies", {**good, "metadata": {"name": "second", "namespace": ns}})
            await eventually(lambda: stored(store, "k8snetworkpolicies", "second", ns))
            # fixing the bad one makes it appear
            api.put("networkpolicies", {**bad, "spec": {"podSelector": {},
                                                        "policyTypes": ["Egress"]}})
            await eventually(lambda: stored(store, "k8snetworkpolicies", "bogus", ns))
            assert await stored_names(store, "k8snetworkpolicies") == {
                f"{ns}/allow-web", f"{ns}/second", f"{ns}/bogus"}


async def test_watch_timeouts_resume_without_relisting(store: Store) -> None:
    ns = f"slow-{suffix()}"
    async with FakeKubeAPI() as api:
        api.put("namespaces", ns_doc(ns, {"v": "1"}))
        async with running(store, api, watch_timeout=1) as app:
            await eventually(lambda: stored(store, "namespaces", ns))
            await eventually(lambda: _true(api.watch_count["namespaces"] >= 3), timeout=8,
                             what="watches ended by the server's timeoutSeconds, renewed")
            api.put("namespaces", ns_doc(ns, {"v": "2"}))

            async def updated() -> bool:
                return (await stored(store, "namespaces", ns))["metadata"]["labels"] == \
                    {"v": "2"}
            await eventually(updated)
            assert app.reflectors["namespaces"].relists == 0
            assert value(app.metrics.watch_errors, resource="namespaces") == 0


# --- the executable -----------------------------------------------------------------------------


async def test_the_executable_serves_health_and_metrics(store: Store, etcd_server: Any,
                                                        scratch_dir: Any) -> None:
    ns = f"proc-{suffix()}"
    require_tools("tortie-kube-controllers")
    exe = Path(sys.executable).with_name("tortie-kube-controllers")
    async with FakeKubeAPI() as api:
        api.put("namespaces", ns_doc(ns, {"a": "b"}))
        kubeconfig = scratch_dir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORTIE_")}
        proc = await asyncio.create_subprocess_exec(
            str(exe), "--kubeconfig", str(kubeconfig), "--etcd-endpoints",
            etcd_server.endpoint, "--metrics-address", "127.0.0.1", "--metrics-port", "0",
            env=env, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        try:
            port = 0
            while not port:
                line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
                assert line, "tortie-kube-controllers exited early"
                m = re.search(r"metrics=127\.0\.0\.1:(\d+)", line)
                port = int(m.group(1)) if m else 0
            drain = asyncio.create_task(proc.stderr.read())
            await eventually(lambda: stored(store, "namespaces", ns), what="mirrored namespace")

            async def get(path: str) -> tuple[int, str]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = await reader.read()
                writer.close()
                head, _, body = data.decode().partition("\r\n\r\n")
                return int(head.split()[1]), body

            async def healthy() -> bool:
                status, body = await get("/healthz")
                return status == 200 and '"synced": true' in body
            await eventually(healthy, what="/healthz 200")
            status, body = await get("/metrics")
            assert status == 200
            assert 'tortie_kc_lists_total{reason="initial",resource="namespaces"} 1.0' in body
            assert (await get("/nope"))[0] == 404
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            await drain
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# --- BGP passwords ------------------------------------------------------------------------------


def _secret(name: str, ns: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


async def _copy(store: Store, name: str) -> dict[str, Any] | None:
    try:
        return (await store.get(bgp_secrets.secret_key(name))).value
    except NotFound:
        return None


async def test_bgp_password_secrets_copied_only_when_referenced(store: Store) -> None:
    peers, configs = by_plural("bgppeers"), by_plural("bgpconfigurations")
    res = Resources(store)
    await store.put(bgp_secrets.secret_key("stale"), {"namespace": "kube-system",
                                                      "data": {"k": "old"}})
    async with FakeKubeAPI() as api:
        api.put("secrets", _secret("bgp-pw", "kube-system", {"tor": "s3cret", "other": "no"}))
        api.put("secrets", _secret("unrelated", "kube-system", {"x": "y"}))
        api.put("secrets", _secret("elsewhere", "default", {"k": "v"}))
        await res.create(peers, BGPPeer.from_dict({"metadata": {"name": "tor"}, "spec": {
            "peerIP": "192.0.2.1", "asNumber": 65001,
            "password": {"secretKeyRef": {"name": "bgp-pw", "key": "tor"}}}}))
        await res.create(peers, BGPPeer.from_dict({"metadata": {"name": "far"}, "spec": {
            "peerIP": "192.0.2.2", "asNumber": 65001,
            "password": {"secretKeyRef": {"name": "elsewhere", "key": "k"}}}}))
        await res.create(configs, BGPConfiguration.from_dict({"metadata": {"name": "default"},
            "spec": {"nodeMeshPassword": {"secretKeyRef": {"name": "mesh-pw", "key": "pw"}}}}))
        async with running(store, api) as app:
            missing = app.metrics.bgp_password_refs_missing

            async def first_pass() -> bool:
                return (await _copy(store, "bgp-pw") == {
                    "namespace": "kube-system", "data": {"tor": "s3cret"}}
                    and await _copy(store, "stale") is None)
            await until(first_pass, what="bgp-pw copied (only key tor), the stale copy gone")
            kvs, _ = await store.list(bgp_secrets.BGP_SECRETS)
            assert [kv.key for kv in kvs] == [bgp_secrets.secret_key("bgp-pw")]
            # mesh-pw does not exist; "elsewhere" is not in kube-system
            assert value(missing) == 2
            health = app.health()["controllers"]["bgpsecrets"]["missing"]
            assert health == {"kube-system/mesh-pw": ["pw"], "kube-system/elsewhere": ["k"]}
            # ... each a Warning Event about the Secret, in kube-system
            posted = [api.get("events", n, ns) for ns, n in sorted(api.objects["events"])]
            assert sorted((e["metadata"]["namespace"], e["involvedObject"]["name"],
                           e["reason"], e["type"]) for e in posted) == [
                ("kube-system", "elsewhere", "BGPPasswordSecretMissing", "Warning"),
                ("kube-system", "mesh-pw", "BGPPasswordSecretMissing", "Warning")]

            api.put("secrets", _secret("bgp-pw", "kube-system", {"tor": "n3w", "other": "no"}))
            api.put("secrets", _secret("mesh-pw", "kube-system", {"pw": "m3sh"}))

            async def updated() -> bool:
                return (await _copy(store, "bgp-pw") == {"namespace": "kube-system",
                                                         "data": {"tor": "n3w"}}
                        and await _copy(store, "mesh-pw") == {"namespace": "kube-system",
                                                              "data": {"pw": "m3sh"}})
            await until(updated, what="the changed value and the new Secret copied")
            assert value(missing) == 1

            # no longer referenced / deleted: the copies go
            await res.delete(peers, "tor")
            api.delete("secrets", "mesh-pw", "kube-system")

            async def removed() -> bool:
                return (await _copy(store, "bgp-pw") is None
                        and await _copy(store, "mesh-pw") is None)
            await until(removed, what="copies of unreferenced and deleted Secrets removed")
            assert value(missing) == 2
            assert await _copy(store, "unrelated") is None
