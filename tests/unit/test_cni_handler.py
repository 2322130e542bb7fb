"""The CNI handler's logic (cni/handler.py) on the in-memory store and dataplane: request and
configuration validation, handles and endpoint names, what ADD makes and DEL / GC remove,
rollback, CHECK, STATUS, the standalone IPAM plugin.  The same verbs through the ``tortie``
executable, a tortie-node process, a real etcd and real veths are
tests/integration/test_cni.py."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cni.dataplane import MemoryDataplane
from cni.handler import STEPS, CNIHandler, RequestInfo, handle_id, workload_endpoint_name
from cni.netlink import NetlinkFailure, host_veth_name, random_mac
from cni.spec import (
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IPAM_EXHAUSTED,
    ERR_PLUGIN_NOT_AVAILABLE,
    ERR_POOL_NOT_ALLOWED,
    ERR_TRY_AGAIN_LATER,
    ERR_UNKNOWN_POOL,
)
from datastore.backend import Unavailable
from datastore.keys import resource_key
from datastore.kinds import by_plural
from datastore.memory import MemoryStore
from datastore.model_config import FelixConfiguration
from datastore.model_endpoints import WorkloadEndpoint
from datastore.model_k8s import Namespace, Pod
from datastore.model_network import IPPool
from datastore.resources import Resources
from ipam.allocator import IPAM
from ipam.blocks import IPAMError

NODE = "node-1"
POOL = "10.77.0.0/24"
_ids = itertools.count(1)


@dataclass
class PodRef:
    namespace: str
    name: str
    cid: str
    netns: str
    result: dict[str, Any] | None = None

    @property
    def args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.cid}")

    @property
    def ip(self) -> str:
        assert self.result is not None
        return str(self.result["ips"][0]["address"].split("/")[0])

    def host_veth(self) -> str:
        return host_veth_name("cali", self.namespace, self.name, self.cid)


class Node:
    """A handler for NODE over a MemoryStore and a MemoryDataplane, with a pool."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.dp = MemoryDataplane()
        self.resources = Resources(self.store)
        self.ready: list[str] = []
        self.hook_error: Exception | None = None
        self.handler = CNIHandler(self.store, NODE, dataplane=self.dp,
                                  on_endpoint_ready=self._hook)

    async def _hook(self, wep: WorkloadEndpoint) -> None:
        self.ready.append(wep.name)
        if self.hook_error is not None:
            raise self.hook_error

    async def pool(self, name: str = "pool-a", cidr: str = POOL, **spec: Any) -> None:
        await self.resources.create(by_plural("ippools"), IPPool.from_dict({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}}))

    async def k8s_pod(self, namespace: str, name: str,
                      annotations: dict[str, str] | None = None) -> None:
        if namespace not in {n.name for n in await self.resources.list(
                by_plural("namespaces"))}:
            await self.resources.create(by_plural("namespaces"), Namespace.from_dict(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        await self.resources.create(by_plural("pods"), Pod.from_dict({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"},
                         "annotations": annotations or {}},
            "spec": {"serviceAccountName": "sa1", "containers": [
                {"name": "web", "ports": [{"name": "http", "containerPort": 80}]}]}}))

    def pod(self, namespace: str = "default", name: str | None = None) -> PodRef:
        n = next(_ids)
        netns = self.dp.add_netns(f"/var/run/netns/pod{n}")
        return PodRef(namespace, name or f"web-{n}", f"c{n:04d}", netns)

    async def run(self, command: str, pod: PodRef | None = None, *,
                  conf: Any = None, version: str = "1.0.0", plugin: str = "tortie",
                  env: dict[str, str | None] | None = None,
                  info: RequestInfo | None = None, **extra: Any) -> dict[str, Any]:
        raw_env: dict[str, str | None] = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": pod.cid if pod else "",
            "CNI_NETNS": pod.netns if pod else "", "CNI_IFNAME": "eth0",
            "CNI_ARGS": pod.args if pod else "", "CNI_PATH": "/opt/cni/bin"}
        raw_env.update(env or {})
        config = conf if conf is not None else netconf(version, **extra)
        request = {"command": command, "plugin": plugin,
                   "env": {k: v for k, v in raw_env.items() if v is not None},
                   "config": config}
        response = await self.handler.handle(request, info)
        if command == "ADD" and pod is not None and response["ok"]:
            pod.result = response["result"]
        return response

    async def allocated(self) -> dict[str, list[str]]:
        """handle -> addresses of this node's allocations."""
        return await IPAM(self.store, NODE).handles_on_node(NODE)

    async def weps(self) -> list[WorkloadEndpoint]:
        return list(await self.resources.list(by_plural("workloadendpoints")))

    async def assert_nothing_left(self, pod: PodRef) -> None:
        assert self.dp.veth(pod.host_veth()) is None
        assert not self.dp.netns_link_exists(pod.netns, "eth0")
        assert handle_id(pod.cid) not in await self.allocated()
        assert [w.name for w in await self.weps() if w.spec.containerID == pod.cid] == []


def netconf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "tortie",
            "ipam": {"type": "tortie-ipam"}, **extra}


def code(response: dict[str, Any]) -> int | None:
    return None if response["ok"] else int(response["error"]["code"])


def details(response: dict[str, Any]) -> str:
    error = response["error"]
    return f"{error['msg']} {error.get('details', '')}"


@pytest.fixture
def node() -> Node:
    """A Node with the pool ``pool-a`` (the MemoryStore is not tied to an event loop)."""
    n = Node()
    asyncio.run(n.pool())
    return n


# --- names ----------------------------------------------------------------------------------

def test_handle_and_endpoint_names() -> None:
    assert handle_id("abc123") == "tortie.abc123"
    assert workload_endpoint_name("node1", "k8s", "web-0", "eth0") == "node1-k8s-web--0-eth0"
    assert workload_endpoint_name("Node_1", "cni", "C1", "eth0") == "node-1-cni-c1-eth0"


# --- ADD and DEL ----------------------------------------------------------------------------

async def test_add_wires_the_pod_and_del_removes_everything(node: Node) -> None:
    pod = node.pod()
    await node.k8s_pod(pod.namespace, pod.name)
    info = RequestInfo()
    r = await node.run("ADD", pod, info=info)
    assert r["ok"], r
    result = r["result"]
    host = pod.host_veth()
    assert [i["name"] for i in result["interfaces"]] == [host, "eth0"]
    assert result["interfaces"][1]["sandbox"] == pod.netns
    assert result["ips"] == [{"address": "10.77.0.0/32", "interface": 1}]
    assert {"dst": "0.0.0.0/0", "gw": "169.254.1.1"} in result["routes"]
    assert info.ips == ["10.77.0.0"] and info.code is None and info.etcd_ok is True
    veth = node.dp.veth(host)
    assert veth is not None and veth.peer == (pod.netns, "eth0")
    [wep] = await node.weps()
    assert wep.name == workload_endpoint_name(NODE, "k8s", pod.name, "eth0")
    assert wep.spec.containerID == pod.cid and wep.spec.interfaceName == host
    assert wep.spec.ipNetworks == ["10.77.0.0/32"]
    assert wep.spec.profiles == ["kns.default", "ksa.default.sa1"]
    assert (wep.metadata.labels or {})["app"] == "web"
    assert [(p.name, p.port) for p in wep.spec.ports or []] == [("http", 80)]
    assert wep.spec.mac == result["interfaces"][1]["mac"]
    assert node.ready == [wep.name]
    assert await node.allocated() == {handle_id(pod.cid): ["10.77.0.0"]}

    for _ in range(2):  # containerd calls DEL twice
        r = await node.run("DEL", pod)
        assert r == {"ok": True, "result": None}
        await node.assert_nothing_left(pod)
    assert node.dp.calls == [("setup", host), ("teardown", host)]


async def test_requests_time_their_steps(node: Node) -> None:
    """Where an ADD / DEL spends its time is measured per step (bench/cni_add.py --profile
    and the daemon's per-step histogram read it)."""
    pod = node.pod()
    add, delete = RequestInfo(), RequestInfo()
    assert (await node.run("ADD", pod, info=add))["ok"]
    # the endpoint is created in IPAM's transaction (no step of its own)
    assert set(add.steps) == set(STEPS) - {"wep"}
    assert all(0 <= v <= add.duration for v in add.steps.values())
    # one after the other: parse, reads, ipam (the veth is made beside ipam, and addressed
    # beside the endpoint's write and policy)
    assert add.steps["parse"] + add.steps["reads"] + add.steps["ipam"] <= add.duration
    assert (await node.run("DEL", pod, info=delete))["ok"]
    # the endpoint's delete is in IPAM's transaction (no step of its own)
    assert {"parse", "reads", "veth", "ipam"} <= set(delete.steps) <= set(STEPS)


async def test_the_endpoint_goes_in_ipams_transactions(node: Node) -> None:
    """ADD: the handle, the block with the pod's address and the endpoint go in one
    transaction; DEL: the endpoint, the block without the address and the handle.  One
    store revision each (another pod keeps the block, so it is neither made nor deleted)."""
    keep, pod = node.pod(), node.pod()
    assert (await node.run("ADD", keep))["ok"]
    before = await node.store.revision()
    assert (await node.run("ADD", pod))["ok"]
    assert await node.store.revision() == before + 1
    [wep] = [w for w in await node.weps() if w.spec.containerID == pod.cid]
    assert wep.metadata.resourceVersion == str(before + 1)
    assert wep.spec.ipNetworks == [f"{pod.ip}/32"] and node.ready[-1] == wep.name
    before = await node.store.revision()
    assert (await node.run("DEL", pod))["ok"]
    assert await node.store.revision() == before + 1
    weps = await node.resources.list(by_plural("workloadendpoints"))
    assert [w.spec.containerID for w in weps] == [keep.cid]
    assert await IPAM(node.store, NODE).ips_by_handle(handle_id(pod.cid)) == []


async def test_add_releases_what_an_earlier_attempt_left(node: Node) -> None:
    """A handle left by a crashed ADD of the same container is released before allocating
    (the ADD reads whether it exists with the rest and releases only then)."""
    pod = node.pod()
    ipam = IPAM(node.store, NODE)
    [pool] = await ipam.pools()
    left = await ipam.auto_assign(handle_id(pod.cid), {"node": NODE}, [pool])
    assert (await node.run("ADD", pod))["ok"]
    assert left and await node.allocated() == {handle_id(pod.cid): [pod.ip]}


async def test_repeated_add_returns_the_same_result(node: Node) -> None:
    pod = node.pod()
    first = await node.run("ADD", pod)
    again = await node.run("ADD", pod)
    assert again == first
    assert await node.allocated() == {handle_id(pod.cid): [pod.ip]}
    assert [c for c, _ in node.dp.calls] == ["setup"]
    # a repeated ADD whose veth is gone sets it up again (the address is released first)
    node.dp.teardown_veth(pod.host_veth())
    third = await node.run("ADD", pod)
    assert third["ok"] and node.dp.veth(pod.host_veth()) is not None
    assert list(await node.allocated()) == [handle_id(pod.cid)]


async def test_concurrent_adds_get_distinct_addresses(node: Node) -> None:
    pods = [node.pod() for _ in range(20)]
    responses = await asyncio.gather(*(node.run("ADD", p) for p in pods))
    assert all(r["ok"] for r in responses)
    assert len({p.ip for p in pods}) == 20
    assert len(await node.weps()) == 20


async def test_del_after_the_netns_is_gone(node: Node) -> None:
    pod = node.pod()
    assert (await node.run("ADD", pod))["ok"]
    node.dp.remove_netns(pod.netns)
    assert (await node.run("DEL", pod))["ok"]
    assert (await node.run("DEL", pod, env={"CNI_NETNS": None}))["ok"]
    await node.assert_nothing_left(pod)


async def test_del_of_a_container_never_added(node: Node) -> None:
    pod = node.pod()
    assert await node.run("DEL", pod) == {"ok": True, "result": None}
    r = await node.run("DEL", env={"CNI_CONTAINERID": "never-added",
                                   "CNI_NETNS": "/var/run/netns/none-such"})
    assert r["ok"], r
    assert node.dp.calls == []


async def test_new_sandbox_of_a_pod_and_late_del_of_the_old(node: Node) -> None:
    """A new sandbox before the old one's DEL: the old DEL must not take the new sandbox's
    endpoint or veth (same pod, so the same host veth name)."""
    old = node.pod("default", "web-x")
    assert (await node.run("ADD", old))["ok"]
    new = node.pod("default", "web-x")
    assert (await node.run("ADD", new))["ok"]
    assert new.host_veth() == old.host_veth()
    assert (await node.run("DEL", old))["ok"]
    assert [w.spec.containerID for w in await node.weps()] == [new.cid]
    assert await node.allocated() == {handle_id(new.cid): [new.ip]}
    veth = node.dp.veth(new.host_veth())
    assert veth is not None and veth.peer == (new.netns, "eth0")


async def test_a_failing_endpoint_hook_rolls_everything_back(node: Node) -> None:
    node.hook_error = RuntimeError("policy agent refused")
    pod = node.pod("default", "rollback")
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INTERNAL and "policy agent refused" in r["error"]["details"]
    assert node.ready == [workload_endpoint_name(NODE, "k8s", "rollback", "eth0")]
    await node.assert_nothing_left(pod)
    assert [c for c, _ in node.dp.calls] == ["setup", "teardown"]
    # and the next ADD works
    node.hook_error = None
    assert (await node.run("ADD", pod))["ok"]


async def test_a_failing_veth_setup_rolls_the_addresses_back(node: Node) -> None:
    node.dp.fail_setup = NetlinkFailure("cannot create veth: no memory")
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INTERNAL and r["error"]["msg"] == "network setup failed"
    assert "no memory" in r["error"]["details"]
    await node.assert_nothing_left(pod)


class _GatedDataplane(MemoryDataplane):
    """setup_veth waits (in its thread) until ``gate`` is set, sleeps ``delay``, then fails
    with ``fail`` or makes the veth."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.delay = 0.0
        self.fail: Exception | None = None
        self.finished_at: float | None = None

    def setup_veth(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        try:
            if not self.gate.wait(5):
                raise NetlinkFailure("the gate was never opened (the branches ran in turn)")
            time.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return super().setup_veth(*args, **kwargs)
        finally:
            self.finished_at = time.monotonic()


def _gated_node(node: Node) -> _GatedDataplane:
    dp = _GatedDataplane()
    node.dp = dp
    node.handler = CNIHandler(node.store, NODE, dataplane=dp, on_endpoint_ready=node._hook)
    return dp


class _EarlyDataplane(MemoryDataplane):
    """Records begin_veth / finish_veth; ``ipam_failure`` makes IPAM fail once the veth was
    begun (from begin_veth's thread, as a full pool would after the veth started)."""

    def begin_veth(self, host_name: str, *args: Any) -> Any:
        self.calls.append(("begin", host_name))
        return super().begin_veth(host_name, *args)

    def finish_veth(self, pending: Any, ipv4: Any) -> tuple[int, str]:
        self.calls.append(("finish", pending.host_name))
        return super().finish_veth(pending, ipv4)


def _early_node(node: Node) -> _EarlyDataplane:
    dp = _EarlyDataplane()
    node.dp = dp
    node.handler = CNIHandler(node.store, NODE, dataplane=dp, on_endpoint_ready=node._hook)
    return dp


async def test_the_primary_ipv4_veth_is_made_beside_ipam_then_addressed(node: Node) -> None:
    dp = _early_node(node)
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert r["ok"], r
    host = r["result"]["interfaces"][0]["name"]
    assert dp.calls == [("begin", host), ("setup", host), ("finish", host)]
    peer = dp.links[(pod.netns, "eth0")]
    assert peer.addresses == [pod.ip] and peer.mac == r["result"]["interfaces"][1]["mac"]


async def test_a_failing_allocation_removes_the_veth_begun_beside_it(node: Node) -> None:
    dp = _early_node(node)

    async def exhausted(*args: Any, **kwargs: Any) -> list[str]:
        await asyncio.sleep(0.05)  # the veth is begun meanwhile
        raise IPAMError("pool 10.77.0.0/24 is full")

    node.handler.ipam.auto_assign = exhausted  # type: ignore[method-assign]
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert not r["ok"] and "is full" in str(r["error"]), r
    assert [c for c, _ in dp.calls] == ["begin", "setup", "teardown"]
    assert len({name for _, name in dp.calls}) == 1
    await node.assert_nothing_left(pod)


async def test_a_failure_addressing_the_early_veth_undoes_the_add(node: Node) -> None:
    dp = _early_node(node)
    dp.fail_finish = NetlinkFailure("no buffer space")
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INTERNAL and "no buffer space" in r["error"]["details"], r
    assert [c for c, _ in dp.calls][:3] == ["begin", "setup", "finish"]
    await node.assert_nothing_left(pod)  # finish_veth deleted its veth


async def test_a_request_no_pool_serves_is_refused_before_any_veth(node: Node) -> None:
    dp = _early_node(node)
    pod = node.pod()
    r = await node.run("ADD", pod, ipam={"type": "tortie-ipam", "ipv4_pools": ["nope"]})
    assert code(r) == ERR_UNKNOWN_POOL, r
    assert dp.calls == []
    await node.assert_nothing_left(pod)


async def test_a_dual_stack_add_makes_its_veth_in_one_go(node: Node) -> None:
    dp = _early_node(node)
    pod = node.pod()
    await node.run("ADD", pod, ipam={"type": "tortie-ipam", "assign_ipv6": "true"})
    assert [c for c, _ in dp.calls if c != "teardown"] in ([], ["setup"])
    assert "begin" not in [c for c, _ in dp.calls]


async def test_the_endpoint_is_written_and_programmed_while_the_veth_is_made(
        node: Node) -> None:
    dp = _gated_node(node)

    async def hook(wep: WorkloadEndpoint) -> None:
        node.ready.append(wep.name)
        assert dp.veth(host_veth_name("cali", "default", wep.spec.pod, wep.spec.containerID)
                       ) is None  # not made yet: the policy step does not wait for it
        dp.gate.set()

    node.handler.on_endpoint_ready = hook
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert r["ok"], r
    (wep,) = await node.weps()
    mac = r["result"]["interfaces"][1]["mac"]
    assert wep.spec.mac == mac
    link = dp.links[(pod.netns, "eth0")]
    assert link.mac == mac  # the MAC Tortie chose is the pod end's


async def test_a_veth_failing_after_the_endpoint_was_programmed_undoes_everything(
        node: Node) -> None:
    """One branch (endpoint written, policy programmed) succeeded, the other (the veth)
    failed: the endpoint, the veth and the addresses all go; the error is the veth's."""
    dp = _gated_node(node)
    dp.fail = NetlinkFailure("cannot create veth: no memory")

    async def hook(wep: WorkloadEndpoint) -> None:
        node.ready.append(wep.name)
        dp.gate.set()

    node.handler.on_endpoint_ready = hook
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INTERNAL and r["error"]["msg"] == "network setup failed"
    assert "no memory" in r["error"]["details"]
    assert node.ready == [workload_endpoint_name(NODE, "k8s", pod.name, "eth0")]
    await node.assert_nothing_left(pod)
    assert await node.weps() == []
    node.handler.on_endpoint_ready = node._hook
    dp.fail = None
    assert (await node.run("ADD", pod))["ok"]


async def test_a_policy_failure_while_the_veth_is_made_waits_for_it_then_undoes_it(
        node: Node) -> None:
    """The endpoint branch fails while the veth thread still runs: the rollback waits for
    the thread, then removes the veth it made."""
    dp = _gated_node(node)
    dp.delay = 0.2
    node.hook_error = RuntimeError("policy agent refused")

    async def hook(wep: WorkloadEndpoint) -> None:
        dp.gate.set()
        await node._hook(wep)

    node.handler.on_endpoint_ready = hook
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INTERNAL and "policy agent refused" in r["error"]["details"]
    assert [c for c, _ in dp.calls] == ["setup", "teardown"]
    await node.assert_nothing_left(pod)


async def test_an_add_past_its_deadline_waits_for_the_veth_thread_before_undoing(
        node: Node) -> None:
    dp = _gated_node(node)
    dp.gate.set()
    dp.delay = 0.4
    node.handler.request_timeout = 0.1
    pod = node.pod()
    r = await node.run("ADD", pod)
    assert code(r) == ERR_TRY_AGAIN_LATER
    await node.handler.drain(5)
    assert dp.finished_at is not None
    assert [c for c, _ in dp.calls] == ["setup", "teardown"]
    await node.assert_nothing_left(pod)


def test_random_mac_is_locally_administered_unicast() -> None:
    macs = {random_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02 == 0x02, mac
        assert len(bytes.fromhex(mac.replace(":", ""))) == 6


async def test_an_existing_interface_in_the_sandbox_is_refused(node: Node) -> None:
    pod = node.pod()
    node.dp.add_foreign_link("eth0", pod.netns)
    r = await node.run("ADD", pod)
    assert code(r) == ERR_INVALID_ENV and "CNI_IFNAME" in r["error"]["msg"]
    assert await node.allocated() == {} and node.dp.calls == []


async def test_an_unreachable_datastore_is_try_again_later(node: Node) -> None:
    node.store.failure = Unavailable("etcd unreachable (test)")
    info = RequestInfo()
    r = await node.run("ADD", node.pod(), info=info)
    assert code(r) == ERR_TRY_AGAIN_LATER and info.etcd_ok is False
    assert node.dp.calls == []


# --- what is refused before anything is made ------------------------------------------------

async def test_the_hosts_namespace_is_refused(node: Node) -> None:
    pod = node.pod()
    assert (await node.run("ADD", pod))["ok"]
    host = MemoryDataplane.HOST_NETNS
    conf = netconf(prevResult=pod.result)
    for cid, args in (("unknown-host", ""), (pod.cid, pod.args)):
        r = await node.run("DEL", env={"CNI_CONTAINERID": cid, "CNI_NETNS": host,
                                       "CNI_ARGS": args})
        assert code(r) == ERR_INVALID_ENV and "host" in r["error"]["details"], r
    r = await node.run("ADD", env={"CNI_CONTAINERID": "host-add", "CNI_NETNS": host})
    assert code(r) == ERR_INVALID_ENV
    r = await node.run("CHECK", pod, conf=conf, env={"CNI_NETNS": host})
    assert code(r) == ERR_INVALID_ENV
    # the refused DELs left the pod alone
    assert await node.allocated() == {handle_id(pod.cid): [pod.ip]}
    assert (await node.run("CHECK", pod, conf=conf))["ok"]


async def test_a_path_that_is_no_namespace_is_refused(node: Node) -> None:
    node.dp.not_namespaces.add("/etc/passwd")
    for netns in ("/etc/passwd", "/var/run/netns/none-such"):
        r = await node.run("ADD", env={"CNI_CONTAINERID": "c1", "CNI_NETNS": netns})
        assert code(r) == ERR_INVALID_ENV and "CNI_NETNS" in r["error"]["msg"], r
    assert await node.allocated() == {} and node.dp.calls == []


@pytest.mark.parametrize("args", [
    "K8S_POD_NAMESPACE=default;K8S_POD_NAME=Web_0",
    "K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + "a" * 250,
    "K8S_POD_NAMESPACE=../../x;K8S_POD_NAME=web",
    "IP=10.77.0.300",
    "FOO=bar",
], ids=["pod-name", "endpoint-name-too-long", "namespace-path", "ip", "unknown-arg"])
async def test_bad_cni_args_are_refused_before_allocating(node: Node, args: str) -> None:
    pod = node.pod()
    info = RequestInfo()
    r = await node.run("ADD", pod, env={"CNI_ARGS": args}, info=info)
    assert code(r) == ERR_INVALID_ENV, r
    assert "CNI_ARGS" in details(r), r
    assert info.code == ERR_INVALID_ENV
    assert await node.allocated() == {} and node.dp.calls == []


async def test_malformed_requests(node: Node) -> None:
    assert code(await node.handler.handle(["not", "an", "object"])) == ERR_INVALID_CONFIG
    assert code(await node.handler.handle({"env": {"CNI_COMMAND": 1}})) == ERR_INVALID_ENV
    r = await node.run("ADD", node.pod(), plugin="frob")
    assert code(r) == ERR_INVALID_CONFIG and "frob" in r["error"]["msg"]
    r = await node.handler.handle({"command": "DEL", "config": netconf(), "env": {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0"}})
    assert code(r) == ERR_INVALID_ENV and "CNI_COMMAND" in r["error"]["msg"]
    r = await node.run("VERSION", version="0.4.0")
    assert r["ok"], r
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(r["result"]["supportedVersions"])


BAD_CONF: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
    ("version-unsupported", lambda c: {**c, "cniVersion": "0.2.0"}, 1),
    ("version-missing", lambda c: {k: v for k, v in c.items() if k != "cniVersion"}, 7),
    ("version-garbage", lambda c: {**c, "cniVersion": "one"}, 1),
    ("name-missing", lambda c: {k: v for k, v in c.items() if k != "name"}, 7),
    ("name-invalid", lambda c: {**c, "name": "bad name!"}, 7),
    ("type-missing", lambda c: {k: v for k, v in c.items() if k != "type"}, 7),
    ("ipam-host-local", lambda c: {**c, "ipam": {"type": "host-local"}}, 2),
    ("ipam-not-object", lambda c: {**c, "ipam": "tortie-ipam"}, 7),
    ("mtu-invalid", lambda c: {**c, "mtu": "big"}, 7),
    ("mtu-too-small", lambda c: {**c, "mtu": 10}, 7),
    ("pools-not-list", lambda c: {**c, "ipam": {"ipv4_pools": "pool-a"}}, 7),
    ("unknown-pool", lambda c: {**c, "ipam": {"ipv4_pools": ["nope"]}}, 101),
    ("not-an-object", lambda c: [c], 7),
    ("other-node", lambda c: {**c, "nodename": "someone-else"}, 7),
    ("prev-result-garbage", lambda c: {**c, "prevResult": {"ips": [{"address": "x"}]}}, 7),
    ("args-not-object", lambda c: {**c, "args": ["cni"]}, 7),
    ("args-cni-not-object", lambda c: {**c, "args": {"cni": "ips"}}, 7),
    ("capabilities-not-object", lambda c: {**c, "capabilities": "portMappings"}, 7),
    ("capabilities-not-bool", lambda c: {**c, "capabilities": {"portMappings": 1}}, 7),
    ("policy-not-object", lambda c: {**c, "policy": "k8s"}, 7),
    ("kubernetes-not-object", lambda c: {**c, "kubernetes": ["/etc/kubeconfig"]}, 7),
    ("timeout-too-large", lambda c: {**c, "timeout": 1e300}, 7),
]


@pytest.mark.parametrize("case,mutate,expected", BAD_CONF, ids=[c[0] for c in BAD_CONF])
async def test_bad_config(node: Node, case: str, mutate: Callable[[dict[str, Any]], Any],
                          expected: int) -> None:
    pod = node.pod()
    r = await node.run("ADD", pod, conf=mutate(netconf()))
    assert code(r) == expected, r
    await node.assert_nothing_left(pod)
    assert node.dp.calls == []


# --- pools ----------------------------------------------------------------------------------

async def test_pool_choice_and_ipam_errors(node: Node) -> None:
    await node.pool("pool-b", "10.78.0.0/28", blockSize=28)
    await node.pool("pool-off", "10.79.0.0/24", disabled=True)
    for name, notes in (
            ("pin-b", {"cni.projectcalico.org/ipv4pools": '["pool-b"]'}),
            ("pin-off", {"cni.projectcalico.org/ipv4pools": '["pool-off"]'}),
            ("pin-none", {"cni.projectcalico.org/ipv4pools": '["no-such-pool"]'}),
            ("pin-ip", {"cni.projectcalico.org/ipAddrs": '["10.77.0.200"]'}),
            ("bad-ann", {"cni.projectcalico.org/ipv4pools": "pool-b"})):
        await node.k8s_pod("default", name, notes)
    b = node.pod("default", "pin-b")
    assert (await node.run("ADD", b))["ok"] and b.ip.startswith("10.78.0.")
    fixed = node.pod("default", "pin-ip")
    assert (await node.run("ADD", fixed))["ok"] and fixed.ip == "10.77.0.200"
    by_arg = node.pod()
    assert (await node.run("ADD", by_arg, env={"CNI_ARGS": "IP=10.77.0.201"}))["ok"]
    assert by_arg.ip == "10.77.0.201"
    c = node.pod()
    assert (await node.run("ADD", c, ipam={"type": "tortie-ipam",
                                           "ipv4_pools": ["10.78.0.0/28"]}))["ok"]
    assert c.ip.startswith("10.78.0.")
    for name, expected in (("pin-off", ERR_POOL_NOT_ALLOWED), ("pin-none", ERR_UNKNOWN_POOL),
                           ("bad-ann", ERR_INVALID_CONFIG)):
        p = node.pod("default", name)
        r = await node.run("ADD", p)
        assert code(r) == expected, r
        await node.assert_nothing_left(p)
    # exhaust pool-b (16 addresses, two used)
    used = 2
    while True:
        p = node.pod()
        r = await node.run("ADD", p, ipam={"ipv4_pools": ["pool-b"]})
        if not r["ok"]:
            break
        used += 1
        assert used <= 16
    assert code(r) == ERR_IPAM_EXHAUSTED and used == 16
    await node.assert_nothing_left(p)


async def test_no_address_family_enabled(node: Node) -> None:
    pod = node.pod()
    r = await node.run("ADD", pod, ipam={"type": "tortie-ipam", "assign_ipv4": "false"})
    assert code(r) == ERR_INVALID_CONFIG and "address family" in r["error"]["msg"]
    await node.assert_nothing_left(pod)


# --- MTU ------------------------------------------------------------------------------------

async def _felix(node: Node, name: str, **spec: Any) -> None:
    await node.resources.apply(by_plural("felixconfigurations"), FelixConfiguration.from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": name}, "spec": spec}))


async def _pod_mtu(node: Node, **extra: Any) -> int:
    pod = node.pod()
    r = await node.run("ADD", pod, version="1.1.0", **extra)
    assert r["ok"], r
    host, inside = node.dp.veth(pod.host_veth()), r["result"]["interfaces"][1]
    assert host is not None and host.mtu == inside["mtu"]
    return int(inside["mtu"])


async def test_pod_mtu_follows_the_encapsulation_and_felix_configuration() -> None:
    node = Node()
    node.dp.mtu = 9000  # the underlay interface's MTU
    await node.pool()
    assert await _pod_mtu(node) == 9000  # no encapsulation
    # a pool starts using VXLAN: the next pod gets the underlay less VXLAN's 50 bytes
    await node.resources.apply(by_plural("ippools"), IPPool.from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool-a"},
        "spec": {"cidr": POOL, "vxlanMode": "CrossSubnet"}}))
    assert await _pod_mtu(node) == 8950
    await node.pool("pool-b", "10.78.0.0/24", ipipMode="Always")
    assert await _pod_mtu(node) == 8950  # the smallest of VXLAN and IPIP
    await _felix(node, "default", ipipMTU=8000, vxlanMTU=8900)
    assert await _pod_mtu(node) == 8000
    await _felix(node, f"node.{NODE}", ipipMTU=8960)  # this node's over the default
    await _felix(node, "node.elsewhere", vxlanMTU=100)  # another node's: not ours
    assert await _pod_mtu(node) == 8900
    assert await _pod_mtu(node, mtu=1300) == 1300  # the CNI config wins


async def test_a_felix_configuration_that_does_not_parse_is_ignored() -> None:
    node = Node()
    node.dp.mtu = 1500
    await node.pool(vxlanMode="Always")
    await node.store.put(resource_key("felixconfigurations", "default"), {
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": "default"}, "spec": {"vxlanMTU": "big"}})
    await _felix(node, f"node.{NODE}", vxlanMTU=1420)
    assert await _pod_mtu(node) == 1420


async def test_underlay_mtu_is_found_once() -> None:
    node = Node()
    node.dp.mtu = 1400
    await node.pool(vxlanMode="Always")
    assert await node.handler.detect_underlay("192.0.2.11") == 1400
    node.dp.mtu = 1500  # the value found at start stays
    assert await _pod_mtu(node) == 1350


# --- CHECK ----------------------------------------------------------------------------------

async def test_check(node: Node) -> None:
    pod = node.pod()
    assert (await node.run("ADD", pod))["ok"]
    conf = netconf(prevResult=pod.result)
    assert await node.run("CHECK", pod, conf=conf) == {"ok": True, "result": None}
    # a prevResult that does not match the reservation
    other = {**pod.result, "ips": [{"address": "10.77.0.250/32", "interface": 1}]}
    r = await node.run("CHECK", pod, conf=netconf(prevResult=other))
    assert code(r) == ERR_INTERNAL and "IPAM holds" in r["error"]["details"]
    # the endpoint goes
    [wep] = await node.weps()
    await node.resources.delete(by_plural("workloadendpoints"), wep.name, "default")
    r = await node.run("CHECK", pod, conf=conf)
    assert "does not exist" in r["error"]["details"]
    # the host veth goes
    node.dp.teardown_veth(pod.host_veth())
    r = await node.run("CHECK", pod, conf=conf)
    assert f"host interface {pod.host_veth()} does not exist" in r["error"]["details"]
    # CHECK without prevResult, and in a version without CHECK
    assert code(await node.run("CHECK", pod)) == ERR_INVALID_CONFIG
    r = await node.run("CHECK", pod, conf=netconf("0.3.1", prevResult=pod.result))
    assert code(r) == ERR_INCOMPATIBLE_VERSION


# --- GC -------------------------------------------------------------------------------------

async def test_gc_removes_exactly_the_unlisted_attachments(node: Node) -> None:
    keep, drop1, drop2 = node.pod(), node.pod(), node.pod()
    for p in (keep, drop1, drop2):
        assert (await node.run("ADD", p))["ok"]
    r = await node.run("GC", version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": keep.cid, "ifname": "eth0"}]})
    assert r == {"ok": True, "result": None}
    assert await node.allocated() == {handle_id(keep.cid): [keep.ip]}
    assert [w.spec.containerID for w in await node.weps()] == [keep.cid]
    assert node.dp.host_veths("cali") == [keep.host_veth()]
    for p in (drop1, drop2):
        await node.assert_nothing_left(p)
    # GC needs the list; an older cniVersion has no GC
    assert code(await node.run("GC", version="1.1.0")) == ERR_INVALID_CONFIG
    r = await node.run("GC", version="1.0.0", **{"cni.dev/valid-attachments": []})
    assert code(r) == ERR_INCOMPATIBLE_VERSION
    assert await node.allocated() == {handle_id(keep.cid): [keep.ip]}


async def test_gc_removes_stray_veths_only_of_tortie_shape(node: Node) -> None:
    """The stray-veth sweep takes only names Tortie gives whose peer is in a pod."""
    other = node.dp.add_netns("/var/run/netns/other")
    stray = host_veth_name("cali", "default", "crashed", "c-crashed")
    node.dp.add_foreign_link(stray, None, "veth", (other, "eth0"))
    node.dp.add_foreign_link("cali-not-ours", None, "veth", (other, "eth1"))
    local = host_veth_name("cali", "default", "local", "c-local")
    node.dp.add_foreign_link(local, None, "veth", (None, "peer0"))  # both ends here
    r = await node.run("GC", version="1.1.0", **{"cni.dev/valid-attachments": []})
    assert r["ok"], r
    assert node.dp.veth(stray) is None and not node.dp.netns_link_exists(other, "eth0")
    assert node.dp.veth("cali-not-ours") is not None and node.dp.veth(local) is not None


@pytest.mark.parametrize("verb", ["DEL", "GC"])
async def test_an_endpoint_naming_a_foreign_interface_does_not_make_it_ours(
        node: Node, verb: str) -> None:
    """An endpoint whose interfaceName is the node's eth0: DEL and GC remove the endpoint,
    never that interface."""
    node.dp.add_foreign_link("eth0", None, "veth", ("/var/run/netns/uplink", "up0"))
    pod = node.pod()
    await node.resources.create(by_plural("workloadendpoints"), WorkloadEndpoint.from_dict({
        "apiVersion": WorkloadEndpoint.API_VERSION, "kind": WorkloadEndpoint.KIND,
        "metadata": {"name": workload_endpoint_name(NODE, "k8s", pod.name, "eth0"),
                     "namespace": pod.namespace},
        "spec": {"orchestrator": "k8s", "node": NODE, "containerID": pod.cid,
                 "pod": pod.name, "endpoint": "eth0", "interfaceName": "eth0",
                 "ipNetworks": ["10.77.0.200/32"]}}))
    if verb == "DEL":
        r = await node.run("DEL", pod)
    else:
        r = await node.run("GC", version="1.1.0", **{"cni.dev/valid-attachments": []})
    assert r["ok"], r
    assert await node.weps() == []
    assert node.dp.links.get((None, "eth0")) is not None
    assert node.dp.calls == []


async def test_a_veth_named_for_the_container_goes_only_with_its_peer_in_its_netns(
        node: Node) -> None:
    """No endpoint records the veth (an ADD that crashed before writing it): DEL removes the
    host veth named for the container only when its peer is in the DEL's CNI_NETNS."""
    pod = node.pod()
    decoy = node.dp.add_netns("/var/run/netns/decoy")
    host = pod.host_veth()
    node.dp.add_foreign_link(host, None, "veth", (decoy, "eth0"))
    assert (await node.run("DEL", pod))["ok"]  # the peer is in decoy, not in the pod's netns
    assert node.dp.veth(host) is not None
    assert (await node.run("DEL", pod, env={"CNI_NETNS": None}))["ok"]
    assert node.dp.veth(host) is not None  # no namespace: nothing proves it is the pod's
    assert (await node.run("DEL", pod, env={"CNI_NETNS": decoy}))["ok"]
    assert node.dp.veth(host) is None and not node.dp.netns_link_exists(decoy, "eth0")


# --- STATUS ---------------------------------------------------------------------------------

async def test_status(node: Node) -> None:
    assert await node.run("STATUS", version="1.1.0") == {"ok": True, "result": None}
    assert code(await node.run("STATUS", version="1.0.0")) == ERR_INCOMPATIBLE_VERSION
    await node.resources.patch(by_plural("ippools"), "pool-a", None,
                               {"spec": {"disabled": True}})
    r = await node.run("STATUS", version="1.1.0")
    assert code(r) == ERR_PLUGIN_NOT_AVAILABLE and "pool" in r["error"]["msg"]


async def test_status_with_the_datastore_down_is_code_50(node: Node) -> None:
    node.store.failure = Unavailable("etcd unreachable (test)")
    info = RequestInfo()
    r = await node.run("STATUS", version="1.1.0", info=info)
    assert code(r) == ERR_PLUGIN_NOT_AVAILABLE and "etcd" in r["error"]["msg"]
    assert info.etcd_ok is False
    node.store.failure = None
    assert (await node.run("STATUS", version="1.1.0"))["ok"]


# --- the standalone IPAM plugin -------------------------------------------------------------

async def test_tortie_ipam(node: Node) -> None:
    pod = node.pod()
    conf = {**netconf(), "type": "tortie-ipam"}
    conf.pop("ipam")
    r = await node.run("ADD", pod, conf=conf, plugin="ipam")
    assert r["ok"], r
    assert r["result"]["ips"] == [{"address": "10.77.0.0/32"}]
    assert "interfaces" not in r["result"]
    assert await node.run("ADD", pod, conf=conf, plugin="ipam") == r  # the same again
    assert node.dp.calls == [] and await node.weps() == []
    check = await node.run("CHECK", pod, conf={**conf, "prevResult": r["result"]},
                           plugin="ipam")
    assert check["ok"], check
    assert (await node.run("DEL", pod, conf=conf, plugin="ipam"))["ok"]
    assert await node.allocated() == {}


# --- more than one interface per pod ----------------------------------------------------------

async def test_second_interface_is_its_own_attachment(node: Node) -> None:
    """eth0 and net1 of one container: own handle, veth, endpoint; DEL/GC per attachment."""
    pod = node.pod()
    net1 = {"CNI_IFNAME": "net1"}
    eth0_host = pod.host_veth()
    net1_host = host_veth_name("cali", pod.namespace, pod.name, pod.cid, "net1")
    r0 = await node.run("ADD", pod)
    assert r0["ok"], r0
    r1 = await node.run("ADD", pod, env=net1)
    assert r1["ok"], r1
    ip0 = r0["result"]["ips"][0]["address"].split("/")[0]
    ip1 = r1["result"]["ips"][0]["address"].split("/")[0]
    assert ip0 != ip1
    assert await node.allocated() == {handle_id(pod.cid): [ip0],
                                      handle_id(pod.cid, "net1"): [ip1]}
    assert r1["result"]["interfaces"][0]["name"] == net1_host != eth0_host
    assert r1["result"]["interfaces"][1]["name"] == "net1"
    assert r1["result"].get("routes", []) == []  # net1 never takes eth0's default route
    assert [x["dst"] for x in r0["result"]["routes"]] == ["0.0.0.0/0"]
    weps = {w.spec.endpoint: w for w in await node.weps()}
    assert set(weps) == {"eth0", "net1"}
    assert weps["net1"].name == workload_endpoint_name(NODE, "k8s", pod.name, "net1")
    assert weps["net1"].spec.interfaceName == net1_host
    assert weps["net1"].spec.ipNetworks == [f"{ip1}/32"]
    assert weps["eth0"].spec.ipNetworks == [f"{ip0}/32"]
    # ADD of net1 again: the same answer, nothing released
    again = await node.run("ADD", pod, env=net1)
    assert again["ok"] and again["result"]["ips"] == r1["result"]["ips"]
    assert await node.allocated() == {handle_id(pod.cid): [ip0],
                                      handle_id(pod.cid, "net1"): [ip1]}
    # CHECK each against its own prevResult
    for env, res in ((None, r0["result"]), (net1, r1["result"])):
        ok = await node.run("CHECK", pod, env=env, prevResult=res)
        assert ok == {"ok": True, "result": None}, ok

    # DEL of net1: only its veth, addresses and endpoint go
    assert (await node.run("DEL", pod, env=net1))["ok"]
    assert ("forget_routing", f"{pod.netns}:net1") in node.dp.calls
    assert await node.allocated() == {handle_id(pod.cid): [ip0]}
    assert node.dp.veth(net1_host) is None and node.dp.veth(eth0_host) is not None
    assert node.dp.netns_link_exists(pod.netns, "eth0")
    assert not node.dp.netns_link_exists(pod.netns, "net1")
    assert [w.spec.endpoint for w in await node.weps()] == ["eth0"]
    assert (await node.run("DEL", pod))["ok"]
    await node.assert_nothing_left(pod)


async def test_del_of_eth0_leaves_net1(node: Node) -> None:
    pod = node.pod()
    net1 = {"CNI_IFNAME": "net1"}
    assert (await node.run("ADD", pod))["ok"]
    r1 = await node.run("ADD", pod, env=net1)
    assert r1["ok"], r1
    ip1 = r1["result"]["ips"][0]["address"].split("/")[0]
    assert (await node.run("DEL", pod))["ok"]
    assert await node.allocated() == {handle_id(pod.cid, "net1"): [ip1]}
    assert [w.spec.endpoint for w in await node.weps()] == ["net1"]
    assert node.dp.veth(host_veth_name("cali", pod.namespace, pod.name, pod.cid,
                                       "net1")) is not None
    assert (await node.run("CHECK", pod, env=net1, prevResult=r1["result"]))["ok"]
    assert (await node.run("DEL", pod, env=net1))["ok"]
    assert await node.allocated() == {}
    assert await node.weps() == []


async def test_gc_is_per_attachment(node: Node) -> None:
    pod = node.pod()
    assert (await node.run("ADD", pod))["ok"]
    assert (await node.run("ADD", pod, env={"CNI_IFNAME": "net1"}))["ok"]
    r = await node.run("GC", version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": pod.cid, "ifname": "eth0"}]})
    assert r == {"ok": True, "result": None}
    assert list(await node.allocated()) == [handle_id(pod.cid)]
    assert [w.spec.endpoint for w in await node.weps()] == ["eth0"]
    assert node.dp.host_veths("cali") == [pod.host_veth()]
    # and the other way round: a list naming only net1 keeps only net1
    assert (await node.run("ADD", pod, env={"CNI_IFNAME": "net1"}))["ok"]
    r = await node.run("GC", version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": pod.cid, "ifname": "net1"}]})
    assert r["ok"], r
    assert list(await node.allocated()) == [handle_id(pod.cid, "net1")]
    assert [w.spec.endpoint for w in await node.weps()] == ["net1"]


async def test_a_failed_net1_add_rolls_back_only_net1(node: Node) -> None:
    pod = node.pod()
    r0 = await node.run("ADD", pod)
    assert r0["ok"], r0
    node.hook_error = RuntimeError("policy agent refused")
    r = await node.run("ADD", pod, env={"CNI_IFNAME": "net1"})
    assert code(r) == ERR_INTERNAL
    net1_host = host_veth_name("cali", pod.namespace, pod.name, pod.cid, "net1")
    assert node.dp.calls[-3:] == [("setup", net1_host), ("teardown", net1_host),
                                  ("forget_routing", f"{pod.netns}:net1")]
    assert await node.allocated() == {handle_id(pod.cid): [pod.ip]}
    assert [w.spec.endpoint for w in await node.weps()] == ["eth0"]
    assert node.dp.veth(pod.host_veth()) is not None
    assert not node.dp.netns_link_exists(pod.netns, "net1")
