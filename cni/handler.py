"""The daemon side of the CNI: what tortie-node does with one request from the plugin.

:meth:`CNIHandler.handle` takes the request the plugin sent (``{"command", "plugin", "env",
"config"}``, see docs/pod-networking.md) and returns the response line's object
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}``); it never raises.

ADD
    validate -> read the Pod, its Namespace and this Node from the datastore (when present)
    -> choose pools (:func:`ipam.pools.select_pools`: pod annotation > namespace annotation
    > ``ipam.ipv4_pools`` > pools selecting the node) or the requested addresses
    (``cni.projectcalico.org/ipAddrs`` / ``CNI_ARGS IP=``) -> allocate with handle
    ``tortie.<containerID>`` (``tortie.<containerID>.<ifname>`` for an interface other than
    eth0) -> two branches at once: the veth (:class:`cni.dataplane.Dataplane`; its MTU: the
    config's ``mtu``, else :func:`datastore.mtu.pod_mtu` of the underlay MTU found at start,
    the encapsulations the enabled pools use and FelixConfiguration's ``vxlanMTU`` /
    ``ipipMTU``, read again for every ADD; the pod end's MAC a random locally administered
    one Tortie chooses) and the WorkloadEndpoint ``<node>-k8s-<pod>-<ifname>`` (recording
    that MAC) -> ``on_endpoint_ready`` (the policy agent's hook: its rules match interface
    names, so they need not wait for the link) -> result once both are done.  Any failure
    after allocation, in either branch, rolls everything back once the other branch has
    finished (the veth thread always runs to its end; the policy wait is abandoned).  An ADD
    repeated for a container that is fully set up returns the same result again.
DEL
    idempotent: removes the veth, the endpoint (only if it belongs to this container: a
    newer sandbox of the same pod may own it) and the addresses of the handle.
CHECK
    compares prevResult, the IPAM reservation of the handle, the WorkloadEndpoint, and the
    veth / addresses / routes in the kernel; any difference is an error listing them all.
GC
    releases every ``tortie.*`` handle allocated by this node whose attachment (container
    and interface) is not in ``cni.dev/valid-attachments``, with its endpoint and host veth.

Every verb works on one attachment, (``CNI_CONTAINERID``, ``CNI_IFNAME``): a pod can have
several (Multus, a second network), each with its own handle, host veth
(:func:`cni.netlink.host_veth_name` hashes ``<namespace>.<pod>.<ifname>`` for an interface
other than eth0), endpoint and, in the pod, routes: eth0 has the default route, any other
interface a routing table of its own selected by its source addresses
(docs/pod-networking.md).  DEL of one attachment leaves the others alone.
STATUS
    code 50 when etcd is unreachable or no pool can serve this node.

``"plugin": "ipam"`` (the standalone ``tortie-ipam``) does only the address part: ADD
returns ``ips`` without interfaces, DEL releases the handle, CHECK compares the handle with
prevResult.

Requests for one pod (or one container without a pod identity) are serialised; others run
concurrently.

ADD, DEL, CHECK and STATUS answer within ``request_timeout`` seconds: past it the answer is
code 11 ("try again later") and the request is cancelled; a cancelled ADD rolls back in the
background, still holding the pod's lock, so a retried ADD waits for it (what the rollback
cannot reach in a datastore outage, GC and the IPAM leak collector release later).

A verb touches only what Tortie made (DESIGN.md).  ``CNI_NETNS`` must be a network
namespace other than the host's (this daemon's or PID 1's, compared by device and inode, not
by path), else code 4 before anything changes.  The only link DEL and GC delete is a host
veth named like :func:`cni.netlink.host_veth_name`: the one the container's endpoint
records, or, when no endpoint records one, the veth named for the container whose peer is
in the container's ``CNI_NETNS`` (its pod end goes with it).  Nothing in a namespace is
deleted because of its name alone.  Names (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``, the
endpoint name they make) are checked before anything is allocated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cni import netlink
from cni.dataplane import Dataplane, NetlinkDataplane
from cni.netlink import PendingVeth
from cni.spec import (
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IPAM_EXHAUSTED,
    ERR_PLUGIN_NOT_AVAILABLE,
    ERR_TRY_AGAIN_LATER,
    CNIEnv,
    CNIError,
    Interface,
    IPConfig,
    NetConf,
    Result,
    Route,
    error_dict,
    parse_config,
    parse_env,
    parse_valid_attachments,
    quote,
    version_at_least,
    version_info,
)
from datastore.backend import KV, DatastoreError, KVStore, NotFound, Unavailable, Write
from datastore.kinds import by_plural
from datastore.labels import validate_dns1123_subdomain
from datastore.model_base import ResourceInvalid
from datastore.model_config import FelixConfiguration
from datastore.model_endpoints import EndpointPort, WorkloadEndpoint, WorkloadEndpointSpec
from datastore.model_k8s import Namespace, Pod
from datastore.model_network import IPPool, Node
from datastore.mtu import encaps_in_use, felix_overrides, pod_mtu
from datastore.resources import ResourceExists, Resources
from ipam.allocator import IPAM, UNREAD, Also, Unread, reserved_of
from ipam.blocks import IPAddress, IPAMError
from ipam.handles import (
    PRIMARY_IFNAME,
    is_workload_handle,
    parse_workload_handle,
    workload_handle,
)
from ipam.handles import WORKLOAD_HANDLE_PREFIX as HANDLE_PREFIX
from ipam.pools import (
    CNI_POOL_KEYS,
    auto_pools,
    requested_ips,
    resolve_pools,
    select_pools,
)

__all__ = [
    "HANDLE_PREFIX",
    "STEPS",
    "CNIHandler",
    "EndpointComing",
    "EndpointReady",
    "RequestInfo",
    "handle_id",
    "workload_endpoint_name",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ORCH_K8S = "k8s"
ORCH_CNI = "cni"
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
#: Seconds a runtime waits for an ADD / DEL / CHECK / STATUS answer at most (with the
#: plugin's own start that keeps a datastore outage's answer within 2 s).
DEFAULT_REQUEST_TIMEOUT = 1.8
#: The steps :attr:`RequestInfo.steps` times (an ADD has them all, a DEL some):
#: ``parse`` the request; ``reads`` the sandbox check, endpoint, Pod, Namespace, Node,
#: pools and FelixConfigurations; ``ipam`` release of stale addresses and allocation (DEL:
#: release, with the endpoint's delete in the same transaction); ``veth`` the interfaces in
#: the kernel; ``wep`` the WorkloadEndpoint write (DEL: its delete, when it could not go with
#: the release); ``policy`` the policy agent's hook; ``result`` building the answer.
STEPS = ("parse", "reads", "ipam", "veth", "wep", "policy", "result")
#: Commands under the request deadline (GC may legitimately take long; VERSION is local).
_DEADLINE_COMMANDS = frozenset({"ADD", "DEL", "CHECK", "STATUS"})

#: The policy agent's hook: called with the stored endpoint before ADD returns; raising
#: fails (and rolls back) the ADD.
EndpointReady = Callable[[WorkloadEndpoint], Awaitable[None]]
#: The policy agent's other hook: an ADD announces, when it starts, that an endpoint is on
#: its way to ``on_endpoint_ready``; the call it returns ends the announcement (made just
#: before ``on_endpoint_ready``, or when the ADD fails).
EndpointComing = Callable[[], Callable[[], None]]

_WEP = by_plural("workloadendpoints")
_POD = by_plural("pods")
_NAMESPACE = by_plural("namespaces")
_NODE = by_plural("nodes")
_POOLS = by_plural("ippools")
_RESERVATIONS = by_plural("ipreservations")
_FELIX = by_plural("felixconfigurations")
_NAME_CLEAN = re.compile(r"[^a-z0-9.-]")


def handle_id(container_id: str, ifname: str = PRIMARY_IFNAME) -> str:
    """The IPAM handle of one attachment's addresses (:func:`ipam.handles.workload_handle`:
    ``tortie.<containerID>`` for eth0, ``tortie.<containerID>.<ifname>`` otherwise)."""
    return workload_handle(container_id, ifname)


def _escape(part: str) -> str:
    return part.replace("-", "--")


def workload_endpoint_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """Calico's endpoint name: ``<node>-<orch>-<workload>-<endpoint>``, dashes doubled in
    the parts so the name can be split again (``node1-k8s-web--0-eth0``)."""
    name = "-".join((_escape(node), orchestrator, _escape(workload), _escape(endpoint)))
    return _NAME_CLEAN.sub("-", name.lower())


@dataclass
class RequestInfo:
    """What one request did, for logs and metrics."""

    command: str = "?"
    plugin: str = "tortie"
    container: str = ""
    pod: str = ""
    ips: list[str] = field(default_factory=list)
    code: int | None = None
    message: str = ""
    duration: float = 0.0
    etcd_ok: bool | None = None  # whether the datastore answered (None: not asked)
    #: seconds spent in each step of the request (:data:`STEPS`), measured by the handler
    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the time the block takes to ``steps[name]`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - start

    @property
    def result(self) -> str:
        return "ok" if self.code is None else "error"


@dataclass
class _PodInfo:
    namespace: str
    name: str | None
    pod: Pod | None = None
    ns: Namespace | None = None
    node: Node | None = None
    pools: list[IPPool] = field(default_factory=list)
    #: FelixConfigurations ``default`` and ``node.<node>`` by name (those that exist)
    felix: dict[str, FelixConfiguration] = field(default_factory=dict)
    #: the IPReservations' networks (read with the rest, for the allocation)
    reserved: list[Any] | None = None

    @property
    def service_account(self) -> str:
        return self.pod.service_account if self.pod else "default"


@dataclass(frozen=True)
class _Assignment:
    """One address family of an ADD's allocation: the address asked for, or the pools."""

    version: int
    address: IPAddress | None
    pools: tuple[IPPool, ...]


class _DatastoreDown(CNIError):
    """A CNI error whose cause is that etcd did not answer."""


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(key, None)


class CNIHandler:
    """Serves CNI requests for one node."""

    def __init__(self, store: KVStore, node: str, *, interface_prefix: str = "cali",
                 underlay_mtu: int | None = None,
                 on_endpoint_ready: EndpointReady | None = None,
                 on_endpoint_coming: EndpointComing | None = None,
                 request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
                 dataplane: Dataplane | None = None) -> None:
        self.store = store
        self.request_timeout = request_timeout
        #: requests past their deadline, still rolling back (awaited by :meth:`drain`)
        self._late: set[asyncio.Task[Any]] = set()
        self.node = node
        self.interface_prefix = interface_prefix
        self.resources = Resources(store)
        self.ipam = IPAM(store, node)
        self.on_endpoint_ready = on_endpoint_ready
        self.on_endpoint_coming = on_endpoint_coming
        #: the MTU of the node's underlay interface (:meth:`detect_underlay`)
        self.underlay_mtu = underlay_mtu
        self._locks = _KeyedLocks()
        self._inflight: dict[str, int] = {}
        #: the kernel: namespaces, veths (netlink unless a test gives another)
        self.dataplane: Dataplane = dataplane or NetlinkDataplane()
        #: the namespaces no pod lives in (Dataplane.netns_identity values)
        self._host_netns = self.dataplane.host_netns_identities()

    # --- entry point ------------------------------------------------------------------------

    async def handle(self, request: Any, info: RequestInfo | None = None) -> dict[str, Any]:
        """Serve one request; returns the response object (never raises)."""
        info = info or RequestInfo()
        start = time.perf_counter()
        version: str | None = None
        try:
            with info.step("parse"):
                env, conf, plugin = self._parse(request, info)
            version = conf.cni_version if conf else None
            result = await self._within_deadline(
                self._dispatch(env, conf, plugin, info), env.command, info)
            response: dict[str, Any] = {"ok": True, "result": result}
            if info.command != "VERSION":
                info.etcd_ok = True
        except _DatastoreDown as e:
            info.etcd_ok = False
            response = self._error(info, e, version)
        except CNIError as e:
            response = self._error(info, e, version)
        except IPAMError as e:
            code = int(getattr(e, "code", ERR_IPAM_EXHAUSTED))
            response = self._error(info, CNIError(code, str(e)), version)
        except Unavailable as e:
            info.etcd_ok = False
            response = self._error(info, CNIError(
                ERR_TRY_AGAIN_LATER, "the datastore (etcd) is unreachable", str(e)), version)
        except (netlink.NetnsGone, netlink.NotANetns) as e:
            response = self._error(info, CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                                                  str(e)), version)
        except netlink.NetnsError as e:  # NetlinkFailure too
            response = self._error(info, CNIError(ERR_INTERNAL, "network setup failed",
                                                  str(e)), version)
        except (DatastoreError, ResourceInvalid) as e:
            response = self._error(info, CNIError(ERR_INTERNAL, "datastore operation failed",
                                                  str(e)), version)
        except Exception as e:
            log.exception("unexpected failure serving a CNI request")
            response = self._error(info, CNIError(ERR_INTERNAL, "internal error in tortie-node",
                                                  f"{type(e).__name__}: {e}"), version)
        info.duration = time.perf_counter() - start
        return response

    async def _within_deadline(self, work: Coroutine[Any, Any, _T], command: str,
                               info: RequestInfo) -> _T:
        """``work``'s outcome, or code 11 once ``request_timeout`` has passed."""
        timeout = self.request_timeout
        if timeout is None or command not in _DEADLINE_COMMANDS:
            return await work
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        # Cancelled once: an ADD rolls back (shielded) inside the task, under the pod's lock.
        task.cancel()
        self._late.add(task)
        task.add_done_callback(lambda t: self._finished_late(t, info))
        code = ERR_PLUGIN_NOT_AVAILABLE if command == "STATUS" else ERR_TRY_AGAIN_LATER
        raise _DatastoreDown(code, f"{command} did not finish within {timeout:g} s",
                             "the datastore (etcd) is slow or unreachable; try again")

    def _finished_late(self, task: asyncio.Task[Any], info: RequestInfo) -> None:
        self._late.discard(task)
        error = None if task.cancelled() else task.exception()
        log.info("request past its deadline finished", extra=_fields(
            info, outcome="cancelled" if error is None else f"{type(error).__name__}: {error}"))

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for requests past their deadline to roll back."""
        if self._late:
            await asyncio.wait(set(self._late), timeout=timeout)

    @staticmethod
    def _error(info: RequestInfo, e: CNIError, version: str | None) -> dict[str, Any]:
        info.code = e.code
        info.message = str(e)
        return {"ok": False, "error": error_dict(e.code, e.msg, e.details, version)}

    def _parse(self, request: Any,
               info: RequestInfo) -> tuple[CNIEnv, NetConf | None, str]:
        if not isinstance(request, dict):
            raise CNIError(ERR_INVALID_CONFIG, "the request must be a JSON object")
        raw_env = request.get("env")
        if not isinstance(raw_env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw_env.items()):
            raise CNIError(ERR_INVALID_ENV, "the request's env must map names to strings")
        plugin = request.get("plugin", "tortie")
        if plugin not in ("tortie", "ipam"):
            raise CNIError(ERR_INVALID_CONFIG, f"unknown plugin {quote(plugin)}")
        info.plugin = plugin
        info.command = str(raw_env.get("CNI_COMMAND") or request.get("command") or "?")[:16]
        info.container = str(raw_env.get("CNI_CONTAINERID", ""))[:128]
        env = parse_env(raw_env)
        if request.get("command") not in (None, env.command):
            raise CNIError(ERR_INVALID_ENV, "CNI_COMMAND does not match the request's command",
                           f"{env.command} vs {quote(request.get('command'))}")
        if env.pod_namespace and env.pod_name:
            info.pod = f"{env.pod_namespace}/{env.pod_name}"
        if env.command == "VERSION":
            return env, None, plugin
        conf = parse_config(request.get("config"), ipam_plugin=plugin == "ipam")
        if conf.nodename and conf.nodename != self.node:
            raise CNIError(ERR_INVALID_CONFIG, f"nodename {quote(conf.nodename)} in the network "
                           f"configuration is not this node ({self.node!r})")
        return env, conf, plugin

    async def _dispatch(self, env: CNIEnv, conf: NetConf | None, plugin: str,
                        info: RequestInfo) -> dict[str, Any] | None:
        if env.command == "VERSION" or conf is None:
            return version_info(conf.cni_version if conf else None)
        ipam_only = plugin == "ipam"
        if env.command in ("GC", "STATUS") and not version_at_least(conf.cni_version, "1.1.0"):
            raise CNIError(ERR_INCOMPATIBLE_VERSION,
                           f"cniVersion {conf.cni_version} does not have {env.command}",
                           "GC and STATUS need cniVersion 1.1.0")
        if env.command == "CHECK" and not version_at_least(conf.cni_version, "0.4.0"):
            raise CNIError(ERR_INCOMPATIBLE_VERSION,
                           f"cniVersion {conf.cni_version} does not have CHECK",
                           "CHECK needs cniVersion 0.4.0 or later")
        if env.command == "GC":
            await self._gc(conf, ipam_only)
            return None
        if env.command == "STATUS":
            await self._status(conf)
            return None
        async with self._serialised(env):
            if env.command == "ADD":
                result = await self._add(env, conf, ipam_only, info)
                return result.to_dict(conf.cni_version)
            if env.command == "DEL":
                await self._del(env, ipam_only, info)
                return None
            await self._check(env, conf, ipam_only)
            return None

    @contextlib.asynccontextmanager
    async def _serialised(self, env: CNIEnv) -> AsyncIterator[None]:
        """Per pod (or container) mutual exclusion, and the in-flight mark GC respects."""
        cid = env.container_id
        # Sandboxes of one pod share the host veth name and the endpoint: one at a time.
        # Lock order: pod, then container (GC takes container locks only).
        pod_key = f"pod:{env.pod_namespace}/{env.pod_name}" if env.is_k8s else None
        self._inflight[cid] = self._inflight.get(cid, 0) + 1
        try:
            async with contextlib.AsyncExitStack() as stack:
                if pod_key is not None:
                    await stack.enter_async_context(self._locks.hold(pod_key))
                await stack.enter_async_context(self._locks.hold(f"ctr:{cid}"))
                yield
        finally:
            self._inflight[cid] -= 1
            if not self._inflight[cid]:
                del self._inflight[cid]

    # --- helpers ----------------------------------------------------------------------------

    def _host_name(self, env: CNIEnv) -> str:
        return netlink.host_veth_name(self.interface_prefix, env.pod_namespace, env.pod_name,
                                      env.container_id, env.ifname)

    async def _sandbox(self, env: CNIEnv, *, may_be_gone: bool = False) -> str | None:
        """``CNI_NETNS`` checked to be a pod's network namespace: code 4 when it is not one,
        or is the host's; when it does not exist, None if ``may_be_gone`` (DEL) else 4."""
        netns, _ = await self._sandbox_then(env, may_be_gone, None)
        return netns

    async def _sandbox_then(self, env: CNIEnv, may_be_gone: bool,
                            then: Callable[[], _T] | None) -> tuple[str | None, _T | None]:
        """:meth:`_sandbox`, and ``then()`` (None without one) in the same thread right after
        the namespace's check (one thread hop for both)."""
        if not env.netns:
            return None, None
        where = quote(env.netns)

        def check() -> tuple[tuple[int, int], _T | None]:
            identity = self.dataplane.netns_identity(env.netns)
            return identity, then() if then is not None else None

        try:
            identity, after = await asyncio.to_thread(check)
        except netlink.NetnsGone:
            if may_be_gone:
                return None, None
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                           f"network namespace {where} does not exist") from None
        except netlink.NotANetns:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                           f"{where} is not a network namespace") from None
        except netlink.NetnsError:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                           f"cannot open the network namespace {where}") from None
        if identity in self._host_netns:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                           f"{where} is the host's network namespace, not a pod's")
        return env.netns, after

    def _recorded_host_name(self, wep: WorkloadEndpoint) -> str | None:
        """The host veth an endpoint records, if it is a name Tortie gives (an endpoint can
        be written by anyone: its interfaceName alone never makes a link Tortie's)."""
        name = wep.spec.interfaceName
        if name and netlink.is_host_veth_name(self.interface_prefix, name):
            return name
        if name:
            log.warning("endpoint records an interface Tortie does not name; leaving it",
                        extra={"fields": {"endpoint": wep.name, "interface": quote(name)}})
        return None

    def _check_names(self, env: CNIEnv) -> None:
        """The endpoint name the request makes is a valid resource name (code 4 naming the
        variables it comes from) - checked before anything is allocated."""
        _, name = self._wep_ref(env)
        problem = validate_dns1123_subdomain(name)
        if problem:
            parts = "CNI_ARGS K8S_POD_NAME with CNI_IFNAME" if env.is_k8s else \
                "CNI_CONTAINERID with CNI_IFNAME"
            raise CNIError(ERR_INVALID_ENV, f"invalid {parts}",
                           f"the WorkloadEndpoint name they make, {quote(name)}, is invalid: "
                           f"{problem}")

    def _wep_ref(self, env: CNIEnv) -> tuple[str, str]:
        """(namespace, name) of the container's WorkloadEndpoint."""
        if env.is_k8s:
            return str(env.pod_namespace), workload_endpoint_name(
                self.node, ORCH_K8S, str(env.pod_name), env.ifname)
        return "default", workload_endpoint_name(self.node, ORCH_CNI, env.container_id,
                                                 env.ifname)

    async def _get_wep(self, namespace: str, name: str) -> WorkloadEndpoint | None:
        try:
            wep: WorkloadEndpoint = await self.resources.get(_WEP, name, namespace)
        except NotFound:
            return None
        return wep

    async def _optional(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except NotFound:
            return None

    async def detect_underlay(self, address: str | None) -> int:
        """Find the underlay MTU: that of the interface carrying ``address`` (the node's
        address), else of the default route's interface, else 1500."""
        self.underlay_mtu = await asyncio.to_thread(self.dataplane.underlay_mtu, address)
        return self.underlay_mtu

    async def _mtu_for(self, conf: NetConf, pod: _PodInfo) -> int:
        """The pod's MTU (:func:`datastore.mtu.pod_mtu`); the config's ``mtu`` wins."""
        if conf.mtu:
            return conf.mtu
        underlay = self.underlay_mtu
        if underlay is None:
            underlay = await self.detect_underlay(None)
        return pod_mtu(underlay, encaps_in_use(pod.pools), felix_overrides(pod.felix, self.node))

    @staticmethod
    def _felix(name: str, kv: KV | None) -> FelixConfiguration | None:
        """The FelixConfiguration ``name`` (read as ``kv``); None when it is missing or does
        not parse (a bad document never fails a pod; a missing ``default`` is the implicit
        one, which sets no MTU)."""
        if kv is None:
            return None
        try:
            cfg: FelixConfiguration = Resources.parse(_FELIX, kv)
        except (ResourceInvalid, ValueError) as e:
            log.warning("ignoring a FelixConfiguration that does not parse",
                        extra={"fields": {"name": name, "error": str(e)[:300]}})
            return None
        return cfg

    async def _pod_info(self, env: CNIEnv, wep_ref: tuple[str, str] | None = None,
                        handle: str | None = None
                        ) -> tuple[_PodInfo, WorkloadEndpoint | None, KV | None]:
        """Pod, Namespace, this Node, the FelixConfigurations, the pools and the
        IPReservations (and the endpoint ``wep_ref``, IPAM's document of ``handle`` if it
        exists, when given) read from etcd in one transaction, at one revision.  Every ADD
        reads them afresh (linearizable reads, no cache): an annotation changed just before
        is always seen."""
        namespace = env.pod_namespace or "default"
        names = ("default", f"node.{self.node}")
        refs: list[tuple[Any, str, str | None]] = [
            (_NAMESPACE, namespace, None), (_NODE, self.node, None),
            *((_FELIX, n, None) for n in names)]
        if env.is_k8s:
            refs.append((_POD, str(env.pod_name), namespace))
        if wep_ref is not None:
            refs.append((_WEP, wep_ref[1], wep_ref[0]))
        handle_key = self.ipam.handle_read_key(handle) if handle is not None else None
        kvs, lists, raw = await self.resources.read(refs, (_POOLS, _RESERVATIONS),
                                                    [handle_key] if handle_key else [])
        pools, reserved = lists[_POOLS.plural], reserved_of(lists[_RESERVATIONS.plural])
        found = dict(zip(((r[0].plural, r[1]) for r in refs), kvs, strict=True))

        def model(kind: Any, name: str) -> Any:
            kv = found.get((kind.plural, name))
            return None if kv is None else Resources.parse(kind, kv)

        configs = {n: c for n in names if (c := self._felix(n, found[(_FELIX.plural, n)]))}
        info = _PodInfo(namespace, env.pod_name,
                        model(_POD, str(env.pod_name)) if env.is_k8s else None,
                        model(_NAMESPACE, namespace), model(_NODE, self.node), pools,
                        configs, reserved)
        wep = model(_WEP, wep_ref[1]) if wep_ref is not None else None
        return info, wep, raw.get(handle_key) if handle_key else None

    # --- ADD --------------------------------------------------------------------------------

    async def _add(self, env: CNIEnv, conf: NetConf, ipam_only: bool,
                   info: RequestInfo) -> Result:
        # announced from the start, so that concurrent ADDs' endpoints share programmings
        arrived = (self.on_endpoint_coming() if self.on_endpoint_coming is not None
                   and self.on_endpoint_ready is not None and not ipam_only else None)
        try:
            return await self._add_pod(env, conf, ipam_only, info, arrived)
        finally:
            if arrived is not None:
                arrived()  # (a no-op once the endpoint went to on_endpoint_ready)

    async def _add_pod(self, env: CNIEnv, conf: NetConf, ipam_only: bool, info: RequestInfo,
                       arrived: Callable[[], None] | None) -> Result:
        if not ipam_only:
            self._check_names(env)
        handle = handle_id(env.container_id, env.ifname)
        host_name = self._host_name(env)
        wep_ns, wep_name = self._wep_ref(env)

        held_handle: KV | Unread | None = UNREAD  # unless read below: release what it holds
        if ipam_only:
            with info.step("reads"):
                await self._sandbox(env)
                pod, _, _ = await self._pod_info(env)
                held = await self.ipam.ips_by_handle(handle)
            if held:  # ADD again: the same addresses
                info.ips = held
                return Result(ips=[IPConfig(_host_cidr(ip)) for ip in held], dns=dict(conf.dns))
        else:
            with info.step("reads"):
                # all at once; an invalid CNI_NETNS is reported before anything else fails
                sandbox, read = await asyncio.gather(
                    self._sandbox_then(env, False, lambda: self.dataplane.netns_link_exists(
                        env.netns, env.ifname)),
                    self._pod_info(env, (wep_ns, wep_name), handle), return_exceptions=True)
                for outcome in (sandbox, read):
                    if isinstance(outcome, BaseException):
                        raise outcome
                assert not isinstance(sandbox, BaseException)
                assert not isinstance(read, BaseException)
                pod, wep, held_handle = read
                link_exists = sandbox[1] is True
            if wep is not None and wep.spec.containerID == env.container_id:
                again = await self._repeat_add(env, conf, host_name, wep, pod)
                if again is not None:
                    info.ips = [ip.ip for ip in again.ips]
                    log.info("ADD repeated for a container that is set up already",
                             extra=_fields(info, host=host_name))
                    return again
            if link_exists:
                raise CNIError(ERR_INVALID_ENV, "invalid CNI_IFNAME",
                               f"{env.ifname} already exists in {quote(env.netns)}")
        ips: list[str] = []
        veth_made = False
        early: asyncio.Future[PendingVeth | None] | None = None
        veth_setup: asyncio.Future[tuple[int, str]] | None = None
        endpoint: asyncio.Task[WorkloadEndpoint] | None = None
        wep_written = False
        mtu, mac = 0, netlink.random_mac()  # Tortie chooses the pod end's MAC
        try:
            plan = self._plan(env, conf, pod)
            if not ipam_only and netlink.is_primary(env.ifname) and all(
                    step.version == 4 for step in plan):
                # the primary IPv4 veth needs no address to be made: the kernel makes it
                # while IPAM chooses the address, which is added when it is known
                mtu = await self._mtu_for(conf, pod)
                veth_made = True  # from here on a failure may have left a (partial) veth
                early = asyncio.ensure_future(self._timed_thread(
                    info, "veth", self.dataplane.begin_veth, host_name, env.netns,
                    env.ifname, mtu, mac))
            # Whatever a crashed earlier attempt for this container left is not wanted any
            # more (requests for one container are serialised: nobody made the handle since
            # it was read)
            stale: list[str] = []
            if held_handle is not None:
                with info.step("ipam"):
                    stale = await self.ipam.release_by_handle(handle, held_handle)
            if stale:
                log.warning("released addresses left by an earlier ADD",
                            extra=_fields(info, ip=",".join(stale)))
            # a pod of one address family: its endpoint is created in the allocation's
            # transaction when IPAM's common case applies (else written below, as always)
            also: Also | None = None
            new_wep: WorkloadEndpoint | None = None
            if not ipam_only and len(plan) == 1 and plan[0].address is None:
                def endpoint_writes(chosen: list[str]) -> list[Write]:
                    nonlocal new_wep, wep_written
                    new_wep = self._build_wep(env, pod, wep_ns, wep_name, host_name, mac,
                                              chosen)
                    wep_written = True  # (an unknown outcome counts as written)
                    return [self.resources.creation(_WEP, new_wep)]
                also = Also(endpoint_writes)
            with info.step("ipam"):
                ips = await self._allocate(env, pod, plan, handle, also)
            info.ips = ips
            if ipam_only:
                return Result(ips=[IPConfig(_host_cidr(ip)) for ip in ips], dns=dict(conf.dns))
            v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
            v6 = [ip for ip in ips if ipaddress.ip_address(ip).version == 6]
            if early is None:
                mtu = await self._mtu_for(conf, pod)
            # The endpoint recording the pod's MAC is written (and programmed by the policy
            # agent, whose rules match interface names, not links) while the kernel makes
            # or addresses the veth: two branches at once.
            veth_made = True
            # a future, so that a failed or cancelled ADD can wait for the thread before
            # undoing what it made
            veth_setup = asyncio.ensure_future(self._veth(info, env, host_name, early, v4, v6,
                                                          mtu, mac))
            early = None  # the veth branch has it now
            if also is not None and also.revision is not None and new_wep is not None:
                endpoint = asyncio.ensure_future(self._endpoint_ready(
                    Resources.created(new_wep, also.revision), info, arrived))
            else:
                new_wep = self._build_wep(env, pod, wep_ns, wep_name, host_name, mac, ips)
                wep_written = True  # (an unknown outcome counts as written)
                endpoint = asyncio.ensure_future(self._write_endpoint(new_wep, info, arrived))
            # returns at the first failure, else when both are done
            await asyncio.wait({veth_setup, endpoint}, return_when=asyncio.FIRST_EXCEPTION)
            for branch in (veth_setup, endpoint):  # the first failure, the kernel's first
                if branch.done() and (branch.cancelled() or branch.exception() is not None):
                    raise _branch_failed(branch)
            with info.step("result"):
                result = _veth_result(host_name, env, mac, mtu, ips, conf)
            log.info("pod networked", extra=_fields(info, ip=",".join(ips), host=host_name,
                                                     endpoint=wep_name))
            return result
        except BaseException as e:
            if endpoint is not None and not endpoint.done():
                endpoint.cancel()  # the policy wait; a write in flight is waited for
            for branch in (early, veth_setup, endpoint):
                if branch is None:
                    continue
                if not branch.done():
                    await asyncio.wait({branch})
                if not branch.cancelled():
                    branch.exception()  # retrieved: the rollback below handles it
            await asyncio.shield(self._rollback(env, handle, host_name if veth_made else None,
                                                (wep_ns, wep_name) if wep_written else None,
                                                info, e))
            raise

    async def _veth(self, info: RequestInfo, env: CNIEnv, host_name: str,
                    early: asyncio.Future[PendingVeth | None] | None, v4: list[str],
                    v6: list[str], mtu: int, mac: str) -> tuple[int, str]:
        """The veth branch of an ADD: the addresses of the veth made beside IPAM
        (``early``), or the whole veth (none made early, or an IPv6 address came)."""
        pending = await early if early is not None else None
        if pending is not None and not v6:
            return await self._timed_thread(info, "veth", self.dataplane.finish_veth,
                                            pending, v4)
        if pending is not None:  # not as _v4_only foresaw: the general path makes it again
            await self._timed_thread(info, "veth", self.dataplane.teardown_veth, host_name,
                                     env.netns)
        return await self._timed_thread(info, "veth", self.dataplane.setup_veth, host_name,
                                        env.netns, env.ifname, v4, v6, mtu, mac)

    @staticmethod
    async def _timed_thread(info: RequestInfo, step: str, func: Callable[..., _T],
                            *args: Any) -> _T:
        """``func(*args)`` in a thread, its time counted as ``step`` (a branch of its own:
        its step time is its own, not that of whatever runs beside it)."""
        with info.step(step):
            return await asyncio.to_thread(func, *args)

    async def _write_endpoint(self, new_wep: WorkloadEndpoint, info: RequestInfo,
                              arrived: Callable[[], None] | None = None) -> WorkloadEndpoint:
        """Store the endpoint, then let the policy agent program it (``on_endpoint_ready``;
        ``arrived`` ends the ADD's ``on_endpoint_coming`` announcement just before).
        Cancelled, it still waits for a write in flight (its outcome decides what a rollback
        deletes); the policy wait is simply abandoned."""
        with info.step("wep"):
            write = asyncio.ensure_future(self._store_endpoint(new_wep))
            try:
                stored = await asyncio.shield(write)
            except asyncio.CancelledError:
                if not write.done():
                    await asyncio.wait({write})
                if not write.cancelled():
                    write.exception()  # retrieved: the rollback deletes what was written
                raise
        return await self._endpoint_ready(stored, info, arrived)

    async def _endpoint_ready(self, stored: WorkloadEndpoint, info: RequestInfo,
                              arrived: Callable[[], None] | None) -> WorkloadEndpoint:
        """The stored endpoint to the policy agent (``on_endpoint_ready``), ``arrived``
        ending the ADD's announcement just before."""
        if self.on_endpoint_ready is not None:
            if arrived is not None:
                arrived()
            with info.step("policy"):
                await self.on_endpoint_ready(stored)
        return stored

    async def _store_endpoint(self, new_wep: WorkloadEndpoint) -> WorkloadEndpoint:
        try:
            stored: WorkloadEndpoint = await self.resources.create(_WEP, new_wep)
        except ResourceExists:  # another sandbox of the pod had it: now it is ours
            stored, _ = await self.resources.apply(_WEP, new_wep)
        return stored

    async def _rollback(self, env: CNIEnv, handle: str, host_name: str | None,
                        wep: tuple[str, str] | None, info: RequestInfo,
                        cause: BaseException) -> None:
        """Undo a failed ADD: endpoint, veth, addresses (each step tried regardless)."""
        log.warning("ADD failed, rolling back", extra=_fields(
            info, error=f"{type(cause).__name__}: {cause}", ip=",".join(info.ips)))
        if wep is not None:
            try:
                await self._delete_wep_if_ours(wep[0], wep[1], env.container_id)
            except Exception as e:
                log.error("rollback: could not delete the endpoint",
                          extra=_fields(info, endpoint=wep[1], error=str(e)))
        if host_name is not None:
            try:  # only the pair this ADD made: its peer is in the pod's namespace
                await asyncio.to_thread(self.dataplane.teardown_veth, host_name, env.netns)
                await asyncio.to_thread(self.dataplane.forget_pod_routing, env.netns,
                                        env.ifname)
            except Exception as e:
                log.error("rollback: could not delete the veth",
                          extra=_fields(info, host=host_name, error=str(e)))
        try:
            await self.ipam.release_by_handle(handle)
        except Exception as e:
            log.error("rollback: could not release the addresses (GC will)",
                      extra=_fields(info, handle=handle, error=str(e)))

    async def _repeat_add(self, env: CNIEnv, conf: NetConf, host_name: str,
                          wep: WorkloadEndpoint, pod: _PodInfo) -> Result | None:
        """The result again if this container is fully set up already, else None."""
        ips = [ipaddress.ip_interface(n).ip for n in wep.spec.ipNetworks or []]
        held = await self.ipam.ips_by_handle(handle_id(env.container_id, env.ifname))
        if not ips or sorted(map(str, ips)) != sorted(held):
            return None
        mtu = await self._mtu_for(conf, pod)
        v4 = [str(ip) for ip in ips if ip.version == 4]
        v6 = [str(ip) for ip in ips if ip.version == 6]
        # the MTU is compared only when the config fixes it (as CHECK does): a pool or
        # FelixConfiguration change since the first ADD does not make the pod a stranger
        problems = await asyncio.to_thread(self.dataplane.check_veth, host_name, env.netns,
                                           env.ifname, v4, v6, conf.mtu or None, wep.spec.mac)
        if problems:
            return None
        return _veth_result(host_name, env, wep.spec.mac or "", mtu, [str(i) for i in ips],
                            conf)

    @staticmethod
    def _requested(env: CNIEnv, pod: _PodInfo) -> list[IPAddress]:
        """The addresses the pod asks for (annotation ``ipAddrs``, else ``IP`` in CNI_ARGS)."""
        wanted = requested_ips(pod.pod.metadata.annotations if pod.pod else None, pod.pools)
        if not wanted and env.args.get("IP"):
            wanted = requested_ips({"cni.projectcalico.org/ipAddrs": _json_list(
                env.args["IP"].split(","))}, pod.pools)
        return list(wanted)

    def _plan(self, env: CNIEnv, conf: NetConf, pod: _PodInfo) -> list[_Assignment]:
        """What IPAM is to do, per address family: the address asked for, or the pools to
        choose from.  Raises the CNI error of a request no pool can serve, before anything
        is made."""
        pod_ann = pod.pod.metadata.annotations if pod.pod else None
        ns_ann = pod.ns.metadata.annotations if pod.ns else None
        ns_labels = dict(pod.ns.metadata.labels or {}) if pod.ns else None
        node_labels = dict(pod.node.metadata.labels or {}) if pod.node else {}
        wanted = self._requested(env, pod)
        plan: list[_Assignment] = []
        for version, enabled in ((4, conf.assign_ipv4), (6, conf.assign_ipv6)):
            specific = [a for a in wanted if a.version == version]
            if specific:
                plan.append(_Assignment(version, specific[0], ()))
                continue
            if not enabled:
                continue
            cni_pools = conf.ipv4_pools if version == 4 else conf.ipv6_pools
            pools = select_pools(pod.pools, node_labels, node=self.node, version=version,
                                 pod_annotations=pod_ann, namespace_annotations=ns_ann,
                                 namespace_labels=ns_labels,
                                 cni_pools=list(cni_pools) if cni_pools else None)
            if not pools:
                configured = quote(list(cni_pools)) if cni_pools else "not set"
                raise CNIError(ERR_IPAM_EXHAUSTED, f"no IPv{version} pool can serve node "
                               f"{self.node}",
                               f"create an IPPool, or check the nodeSelector / "
                               f"namespaceSelector / disabled of the pools (ipam."
                               f"{CNI_POOL_KEYS[version]}: {configured})")
            plan.append(_Assignment(version, None, tuple(pools)))
        if not plan:
            raise CNIError(ERR_INVALID_CONFIG, "no address family enabled",
                           "set ipam.assign_ipv4 and/or ipam.assign_ipv6 to \"true\"")
        return plan

    async def _allocate(self, env: CNIEnv, pod: _PodInfo, plan: Sequence[_Assignment],
                        handle: str, also: Also | None = None) -> list[str]:
        attrs = {"node": self.node, "container": env.container_id,
                 "namespace": pod.namespace if env.is_k8s else None, "pod": pod.name}
        ips: list[str] = []
        for step in plan:
            if step.address is not None:
                ips.append(await self.ipam.assign_ip(step.address, handle, attrs))
            else:
                ips += await self.ipam.auto_assign(handle, attrs, list(step.pools), 1,
                                                   reserved=pod.reserved, also=also)
        return ips

    def _build_wep(self, env: CNIEnv, pod: _PodInfo, namespace: str, name: str,
                   host_name: str, mac: str, ips: Sequence[str]) -> WorkloadEndpoint:
        k8s = env.is_k8s
        labels: dict[str, str] = {}
        ports: list[EndpointPort] = []
        sa = pod.service_account
        if pod.pod is not None:
            labels.update(pod.pod.metadata.labels or {})
            for (pname, proto), port in sorted(pod.pod.named_ports().items()):
                if proto in ("TCP", "UDP", "SCTP"):
                    ports.append(EndpointPort(name=pname, protocol=proto, port=port))
        labels[LABEL_NAMESPACE] = namespace
        labels[LABEL_ORCHESTRATOR] = ORCH_K8S if k8s else ORCH_CNI
        profiles = [f"kns.{namespace}"]
        if k8s:
            labels[LABEL_SERVICE_ACCOUNT] = sa
            profiles.append(f"ksa.{namespace}.{sa}")
        spec = WorkloadEndpointSpec(
            orchestrator=ORCH_K8S if k8s else ORCH_CNI,
            workload=None if k8s else env.container_id,
            node=self.node,
            containerID=env.container_id,
            pod=env.pod_name if k8s else None,
            endpoint=env.ifname,
            serviceAccountName=sa if k8s else None,
            ipNetworks=[_host_cidr(ip) for ip in ips],
            profiles=profiles,
            interfaceName=host_name,
            mac=mac,
            ports=ports or None,
        )
        return WorkloadEndpoint.from_dict({
            "apiVersion": WorkloadEndpoint.API_VERSION,
            "kind": WorkloadEndpoint.KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec.dump(),
        })

    # --- DEL --------------------------------------------------------------------------------

    async def _delete_wep_if_ours(self, namespace: str, name: str,
                                  container_id: str) -> tuple[bool, WorkloadEndpoint | None]:
        """Delete the endpoint if it is this container's; returns (deleted, endpoint)."""
        wep = await self._get_wep(namespace, name)
        if wep is None:
            return False, None
        if wep.spec.containerID not in (None, "", container_id):
            return False, wep
        try:
            await self.resources.delete(_WEP, name, namespace, wep.metadata.resourceVersion)
        except NotFound:
            return False, None
        return True, wep

    async def _del(self, env: CNIEnv, ipam_only: bool, info: RequestInfo) -> None:
        handle = handle_id(env.container_id, env.ifname)
        if ipam_only:
            with info.step("ipam"):
                released = await self.ipam.release_by_handle(handle)
        else:
            wep_ns, wep_name = self._wep_ref(env)
            with info.step("reads"):
                # the endpoint and the IPAM handle in one read
                handle_key = self.ipam.handle_read_key(handle)
                checked, read = await asyncio.gather(
                    self._sandbox(env, may_be_gone=True),
                    self.resources.read([(_WEP, wep_name, wep_ns)], raw_keys=[handle_key]),
                    return_exceptions=True)
                for outcome in (checked, read):  # an invalid CNI_NETNS first
                    if isinstance(outcome, BaseException):
                        raise outcome
                assert not isinstance(checked, BaseException)
                assert not isinstance(read, BaseException)
                (wep_kv,), _, raw = read
                netns = checked
                wep = Resources.parse(_WEP, wep_kv) if wep_kv is not None else None
                handle_kv = raw.get(handle_key)
            ours = wep is None or wep.spec.containerID in (None, "", env.container_id)
            recorded = self._recorded_host_name(wep) if wep is not None and ours else None
            if not ours:
                # A newer sandbox of the same pod owns the endpoint and the host veth.
                log.info("endpoint belongs to another container; leaving it",
                         extra=_fields(info, endpoint=wep_name,
                                       owner=wep.spec.containerID if wep else ""))

            async def remove_veth() -> None:
                if not ours:
                    return
                with info.step("veth"):
                    await remove_veth_now()

            async def remove_veth_now() -> None:
                if recorded is not None:  # the endpoint records it: this container's
                    await asyncio.to_thread(self.dataplane.teardown_veth, recorded)
                elif netns is not None:  # the veth named for it, if its peer is in netns
                    await asyncio.to_thread(self.dataplane.teardown_veth, self._host_name(env),
                                            netns)
                # else nothing proves a link is this container's (GC removes strays)
                if netns is not None and not netlink.is_primary(env.ifname):
                    # a secondary interface's source rules in the pod
                    await asyncio.to_thread(self.dataplane.forget_pod_routing, netns,
                                            env.ifname)

            version = wep.metadata.resourceVersion if wep is not None and ours else None

            async def release() -> list[str]:
                # the endpoint's delete goes in the release's transaction when it can
                also = [] if wep is None or not version else [
                    Write(self.resources.key(_WEP, wep_name, wep_ns), None, int(version))]
                with info.step("ipam"):
                    freed, written = await self.ipam.release_by_handle_with(
                        handle, handle_kv, also)
                if wep is not None and ours and not written:
                    with info.step("wep"), contextlib.suppress(NotFound):
                        await self.resources.delete(_WEP, wep_name, wep_ns, version)
                return freed

            # the veth and the datastore work at once
            outcomes = await asyncio.gather(remove_veth(), release(), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            released = outcomes[1]
        info.ips = list(released)
        log.info("pod network removed", extra=_fields(info, ip=",".join(released)))

    # --- CHECK ------------------------------------------------------------------------------

    async def _check(self, env: CNIEnv, conf: NetConf, ipam_only: bool) -> None:
        prev = conf.prev_result
        if prev is None:
            raise CNIError(ERR_INVALID_CONFIG, "CHECK needs prevResult",
                           "the runtime must pass the result of the ADD")
        await self._sandbox(env)
        problems: list[str] = []
        idx = prev.container_interface(env.ifname)
        prev_ips = sorted((ip.ip for ip in prev.ips
                           if idx is None or ip.interface in (None, idx)),
                          key=_ip_key)
        handle = handle_id(env.container_id, env.ifname)
        held = await self.ipam.ips_by_handle(handle)
        if held != prev_ips:
            problems.append(f"IPAM holds {held or 'nothing'} for {handle}, "
                            f"prevResult has {prev_ips or 'nothing'}")
        if not ipam_only:
            wep_ns, wep_name = self._wep_ref(env)
            host_name = self._host_name(env)
            wep = await self._get_wep(wep_ns, wep_name)
            mac: str | None = None
            if idx is not None:
                mac = prev.interfaces[idx].mac
            else:
                problems.append(f"prevResult has no interface {env.ifname} in a sandbox")
            if wep is None:
                problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} does not exist")
            else:
                if wep.spec.containerID != env.container_id:
                    problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} belongs to "
                                    f"container {wep.spec.containerID}")
                nets = sorted(str(ipaddress.ip_interface(n).ip)
                              for n in wep.spec.ipNetworks or [])
                if nets != sorted(prev_ips):
                    problems.append(f"WorkloadEndpoint has ipNetworks {wep.spec.ipNetworks}, "
                                    f"prevResult has {prev_ips}")
                if wep.spec.interfaceName != host_name:
                    problems.append(f"WorkloadEndpoint interfaceName is "
                                    f"{wep.spec.interfaceName}, expected {host_name}")
                if mac and wep.spec.mac and wep.spec.mac.lower() != mac.lower():
                    problems.append(f"WorkloadEndpoint mac {wep.spec.mac} differs from "
                                    f"prevResult {mac}")
            v4 = [ip for ip in prev_ips if ipaddress.ip_address(ip).version == 4]
            v6 = [ip for ip in prev_ips if ipaddress.ip_address(ip).version == 6]
            mtu = conf.mtu or None
            problems += await asyncio.to_thread(self.dataplane.check_veth, host_name, env.netns,
                                                env.ifname, v4, v6, mtu, mac)
        if problems:
            raise CNIError(ERR_INTERNAL, f"CHECK failed for container {env.container_id}",
                           "; ".join(problems))

    # --- GC ---------------------------------------------------------------------------------

    async def _gc(self, conf: NetConf, ipam_only: bool) -> None:
        """Per attachment: a handle (``tortie.<cid>`` for eth0, ``tortie.<cid>.<ifname>``
        otherwise) or endpoint of this node that no valid attachment names goes."""
        valid = {handle_id(cid, ifname) for cid, ifname in parse_valid_attachments(conf)}
        handles = await self.ipam.handles_on_node(self.node)
        weps: list[WorkloadEndpoint] = [] if ipam_only else [
            w for w in await self.resources.list(_WEP) if w.spec.node == self.node]
        doomed = {h for h in handles if is_workload_handle(h)}
        wep_handles: dict[str, list[WorkloadEndpoint]] = {}
        for w in weps:
            if w.spec.containerID:
                h = handle_id(w.spec.containerID, w.spec.endpoint or PRIMARY_IFNAME)
                wep_handles.setdefault(h, []).append(w)
                doomed.add(h)
        doomed |= await self._handles_only_in_documents()
        doomed -= valid
        for handle in sorted(doomed):
            if any(parse_workload_handle(handle, cid) is not None for cid in self._inflight):
                continue  # an ADD/DEL is running for its container right now: not garbage
            parsed = parse_workload_handle(handle)
            if parsed is None:
                continue
            cid, ifname = parsed
            async with self._locks.hold(f"ctr:{cid}"):
                for w in wep_handles.get(handle, []):
                    deleted, _ = await self._delete_wep_if_ours(
                        str(w.metadata.namespace), w.name, str(w.spec.containerID))
                    host_name = self._recorded_host_name(w) if deleted else None
                    if host_name is not None:
                        await asyncio.to_thread(self.dataplane.teardown_veth, host_name)
                released = await self.ipam.release_by_handle(handle)
                log.info("GC released a stale attachment", extra={"fields": {
                    "container": cid, "interface": ifname, "handle": handle,
                    "ip": ",".join(released)}})
        if not ipam_only:
            await self._gc_stray_links()

    async def _handles_only_in_documents(self) -> set[str]:
        """Workload handles whose document points only at this node's blocks: includes
        what a crash between "handle written" and "block written" leaves (a handle that
        no block holds, which the block scan of ``handles_on_node`` cannot see)."""
        return {handle
                for handle in await self.ipam.handles_recorded_only_in_blocks_of(self.node)
                if is_workload_handle(handle)}

    async def _gc_stray_links(self) -> None:
        """Remove host veths no endpoint of this node owns: what an ADD interrupted by a
        crash (veth made, endpoint not yet written) leaves behind."""
        if self._inflight:
            return  # an ADD may own a link it has not recorded yet: the next GC will do
        owned = {w.spec.interfaceName for w in await self.resources.list(_WEP)
                 if w.spec.node == self.node and w.spec.interfaceName}
        for name in await asyncio.to_thread(self.dataplane.host_veths, self.interface_prefix):
            if name in owned or self._inflight:
                continue
            if await asyncio.to_thread(self.dataplane.teardown_veth, name):
                log.info("GC removed a stray host veth", extra={"fields": {"link": name}})

    # --- STATUS -----------------------------------------------------------------------------

    async def _status(self, conf: NetConf) -> None:
        try:
            pools, node = await asyncio.gather(
                self.ipam.pools(), self._optional(self.resources.get(_NODE, self.node)))
        except Unavailable as e:
            raise _DatastoreDown(ERR_PLUGIN_NOT_AVAILABLE, "the datastore (etcd) is unreachable",
                                 str(e)) from None
        except DatastoreError as e:
            raise _DatastoreDown(ERR_PLUGIN_NOT_AVAILABLE, "the datastore (etcd) failed",
                                 str(e)) from None
        labels = dict(node.metadata.labels or {}) if node else {}
        for version, enabled, names in ((4, conf.assign_ipv4, conf.ipv4_pools),
                                        (6, conf.assign_ipv6, conf.ipv6_pools)):
            if not enabled:
                continue
            if names:
                try:
                    usable = resolve_pools(list(names), pools, self.node, labels, version)
                except IPAMError as e:
                    raise CNIError(ERR_PLUGIN_NOT_AVAILABLE,
                                   f"the configured IPv{version} pools cannot be used",
                                   str(e)) from None
            else:
                usable = auto_pools(pools, labels, version)
            if not usable:
                raise CNIError(ERR_PLUGIN_NOT_AVAILABLE,
                               f"no usable IPv{version} pool for node {self.node}",
                               "create an enabled IPPool whose nodeSelector selects this node")


# --- results and small helpers ---------------------------------------------------------------


def _ip_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return addr.version, int(addr)


def _host_cidr(ip: str) -> str:
    return f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}"


def _json_list(items: Sequence[str]) -> str:
    return "[" + ",".join(f'"{i.strip()}"' for i in items) + "]"


def _veth_result(host_name: str, env: CNIEnv, mac: str, mtu: int, ips: Sequence[str],
                 conf: NetConf) -> Result:
    routes: list[Route] = []  # the main table's: a secondary interface adds none there
    if netlink.is_primary(env.ifname) and any(
            ipaddress.ip_address(ip).version == 4 for ip in ips):
        routes.append(Route("0.0.0.0/0", netlink.GATEWAY_V4))
    if netlink.is_primary(env.ifname) and any(
            ipaddress.ip_address(ip).version == 6 for ip in ips):
        routes.append(Route("::/0", netlink.GATEWAY_V6))
    return Result(
        interfaces=[Interface(host_name, netlink.HOST_MAC, mtu=mtu),
                    Interface(env.ifname, mac, env.netns, mtu=mtu)],
        ips=[IPConfig(_host_cidr(ip), interface=1) for ip in ips],
        routes=routes,
        dns=dict(conf.dns),
    ).after(conf.prev_result)


def _branch_failed(branch: asyncio.Future[Any]) -> BaseException:
    """The exception a failed branch of an ADD raised (a cancelled branch: CancelledError)."""
    if branch.cancelled():
        return asyncio.CancelledError()
    error = branch.exception()
    assert error is not None
    return error


def _fields(info: RequestInfo, **extra: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the request's identity plus ``extra`` as key=value."""
    fields: dict[str, Any] = {"cmd": info.command, "container": info.container[:12]}
    if info.pod:
        fields["pod"] = info.pod
    if info.plugin != "tortie":
        fields["plugin"] = info.plugin
    fields.update({k: v for k, v in extra.items() if v not in (None, "")})
    return {"fields": fields}


def response_summary(response: Mapping[str, Any]) -> str:
    """One line for logs: ``ok`` or ``error <code>: <msg>``."""
    if response.get("ok"):
        return "ok"
    err = response.get("error") or {}
    return f"error {err.get('code')}: {err.get('msg')}"
