"""IPAM leak GC: release the addresses of pods that no longer exist.

A node that is down when its pod is deleted never runs CNI DEL, so the pod's addresses stay
allocated.  Every ``interval`` seconds (and once the pod list is in) this pass reads every
block and looks at each allocation made by the CNI handler (handle ``tortie.<containerID>``
for a pod's eth0, ``tortie.<containerID>.<ifname>`` for another interface, with ``pod`` and
``namespace`` attributes; :mod:`ipam.handles` reads both forms).  Like Calico's
kube-controllers, an allocation is a *leak candidate* when

* its pod does not exist in the Kubernetes API, or
* its pod exists but runs on another node, has addresses, and this is not one of them (a
  StatefulSet pod recreated elsewhere while its old node was down);

and it is released only after it has been a candidate, continuously, for the KCC's
``controllers.node.leakGracePeriod`` (default 15m; ``0`` turns the GC off), so an address
allocated for a pod that our watch has not shown yet is never taken.  Releasing frees the
whole handle (all addresses of that attachment) and deletes the attachment's
WorkloadEndpoint (the container's endpoint of that interface, if it is still that
container's).

A Calico Node removed (``tortie delete node``, or the node controller for a deleted
Kubernetes Node: :mod:`ipam.node_release`) gives back what it held at once.  What is left
over, and a node that left the cluster otherwise (neither a Kubernetes Node nor a Calico
Node exists), is cleaned up here as Calico's IPAM controller does, without waiting for the
grace period: its pods' addresses are released as soon as those pods are gone from the API
(with the node gone, that is certain), and once no address of the node is in use any more
-- no pod of it exists, no allocation of an unknown kind is left -- its tunnel addresses
(``vxlan-tunnel-addr-<node>``, ``vxlan-v6-tunnel-addr-<node>``, ``ipip-tunnel-addr-<node>``)
are released and its empty blocks deleted (a compare-and-swap on each block's revision, so
a block that got an address meanwhile stays), then its IPAM host document.  Whether the
Calico Node is gone is read from etcd itself right before, so a node that registered a
moment ago is never taken for a removed one.  This runs whatever the grace period says
(``0`` turns off only the grace-period GC of live nodes, as in Calico).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from datastore import keys
from datastore.kinds import by_plural
from datastore.store import NotFound
from ipam.allocator import IPAM
from ipam.handles import (
    PRIMARY_IFNAME,
    TUNNEL_HANDLE_PREFIXES,
    is_workload_handle,
    parse_workload_handle,
)
from kubecontrollers.controller import Context, delete_if_present
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.reflector import Reflector
from kubecontrollers.settings import leak_grace

log = logging.getLogger("tortie.kc.ipam")

GC_NODE = "tortie-kube-controllers"  # the IPAM "node" the releases are made as
_WEP = by_plural("workloadendpoints")
_NODE = by_plural("nodes")


@dataclass
class Candidate:
    handle: str
    namespace: str
    pod: str
    container: str
    node: str
    ips: list[str]
    since: float
    interface: str = PRIMARY_IFNAME


def _pod_ips(pod: dict[str, Any]) -> set[str]:
    status = pod.get("status") or {}
    out = {p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict)}
    if status.get("podIP"):
        out.add(status["podIP"])
    return {ip for ip in out if ip}


def workload_attachment(handle: str, attrs: dict[str, str]) -> tuple[str, str]:
    """(container, interface) of a workload allocation: read from its handle, with its
    ``container`` attribute as the hint when it has one (either handle form)."""
    container = attrs.get("container") or None
    parsed = parse_workload_handle(handle, container) if container else None
    if parsed is None:
        parsed = parse_workload_handle(handle)
    if parsed is None:  # not a workload handle: callers only pass those
        return container or handle, PRIMARY_IFNAME
    if container and parsed[0] != container:  # the attribute disagrees: trust it
        return container, PRIMARY_IFNAME
    return parsed


def _candidate(handle: str, namespace: str, pod: str, attrs: dict[str, str], node: str,
               since: float) -> Candidate:
    container, interface = workload_attachment(handle, attrs)
    return Candidate(handle, namespace, pod, container, node, [], since, interface)


def leaked(pod: dict[str, Any] | None, ip: str, node: str) -> bool:
    """Whether an allocation for ``pod`` (None: not in the API) at ``ip`` made on ``node``
    is a leak candidate."""
    if pod is None:
        return True
    pod_node = (pod.get("spec") or {}).get("nodeName")
    ips = _pod_ips(pod)
    return bool(pod_node and node and pod_node != node and ips and ip not in ips)


class IPAMGarbageCollector:
    name = "ipam-gc"

    def __init__(self, ctx: Context, pods: Reflector, nodes: Reflector | None = None,
                 calico_nodes: DatastoreCache | None = None) -> None:
        self.ctx = ctx
        self.pods = pods
        self.nodes = nodes
        self.calico_nodes = calico_nodes
        self.deleted_blocks: list[str] = []  # blocks of removed nodes given back
        self.ipam = IPAM(ctx.store, GC_NODE)
        self.candidates: dict[str, Candidate] = {}
        self.released: list[str] = []      # handles released (most recent last)
        self.passes = 0
        self.errors = 0
        self._kick = asyncio.Event()

    def grace(self) -> float:
        if self.ctx.options.leak_grace is not None:
            return self.ctx.options.leak_grace
        return leak_grace(self.ctx.config())

    def kick(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        await self.pods.synced.wait()
        while True:
            self._kick.clear()  # before the pass: a kick during it brings another one
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                log.warning("IPAM GC pass failed", exc_info=True,
                            extra={"fields": {"error": str(e)}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.ctx.options.ipam_gc_interval)

    async def run_once(self, now: float | None = None) -> list[str]:
        """One pass; returns the handles released."""
        now = time.monotonic() if now is None else now
        grace = self.grace()
        if not self.pods.synced.is_set():
            self.candidates.clear()
            return []
        blocks = await self.ipam.list_blocks()
        gone = self._gone_nodes(blocks)
        busy: set[str] = set()            # gone nodes that still hold a valid address
        tunnels: dict[str, set[str]] = {}  # gone node -> its tunnel handles
        confirmed: dict[str, Candidate] = {}
        seen: dict[str, Candidate] = {}
        for block in blocks:
            for ip, attrs in block.allocated():
                handle = attrs.get("handle", "")
                ns, pod = attrs.get("namespace"), attrs.get("pod")
                node = attrs.get("node") or block.affinity_node or ""
                if node in gone and handle.startswith(TUNNEL_HANDLE_PREFIXES):
                    tunnels.setdefault(node, set()).add(handle)
                    continue
                if not is_workload_handle(handle) or not ns or not pod:
                    if node in gone:
                        busy.add(node)  # an address of an unknown kind: left alone
                    continue
                if not leaked(self.pods.get(f"{ns}/{pod}"), ip, node):
                    if node in gone:
                        busy.add(node)
                    continue
                if node in gone:  # its pod and its node are gone: a leak for certain
                    c = confirmed.get(handle) or _candidate(handle, ns, pod, attrs, node, now)
                    c.ips.append(ip)
                    confirmed[handle] = c
                    continue
                if grace <= 0:
                    continue
                old = self.candidates.get(handle)
                c = seen.get(handle) or _candidate(handle, ns, pod, attrs, node,
                                                   old.since if old else now)
                c.ips.append(ip)
                seen[handle] = c
        for h in seen.keys() - self.candidates.keys():
            c = seen[h]
            log.info("possible leaked address; waiting out the grace period", extra={"fields": {
                "handle": h, "pod": f"{c.namespace}/{c.pod}", "ips": ",".join(c.ips),
                "grace_s": f"{grace:g}"}})
        self.candidates = seen
        self.ctx.metrics.ipam_candidates.set(len(seen))
        released: list[str] = []
        for h, c in list(confirmed.items()):
            if await self._release(c):
                released.append(h)
            else:
                busy.add(c.node)
        for h, c in list(seen.items()):
            if now - c.since < grace:
                continue
            await self._release(c)
            released.append(h)
            del self.candidates[h]
        for node in sorted(gone - busy):
            released += await self._release_node(node, sorted(tunnels.get(node, ())))
        self.passes += 1
        self.ctx.metrics.ipam_candidates.set(len(self.candidates))
        return released

    def _gone_nodes(self, blocks: list[Any]) -> set[str]:
        """The nodes IPAM knows (block affinities, allocations) that are neither a
        Kubernetes Node nor a Calico Node (empty until both lists are in)."""
        if (self.nodes is None or self.calico_nodes is None or not self.nodes.synced.is_set()
                or not self.calico_nodes.synced.is_set()):
            return set()
        named: set[str] = set()
        for b in blocks:
            if b.affinity_node:
                named.add(b.affinity_node)
            named.update(a.get("node") for _, a in b.allocated() if a.get("node"))
        known = set(self.nodes.cache) | set(self.calico_nodes.items)
        return named - known - {GC_NODE}

    async def _release_node(self, node: str, tunnel_handles: list[str]) -> list[str]:
        """A removed node holding no address in use: release its tunnel addresses, its
        empty blocks and its host document.  Returns the handles released."""
        try:  # the cache may lag behind a node that has just registered: ask etcd itself
            await self.ctx.store.get(keys.resource_key(_NODE.plural, node))
            return []
        except NotFound:
            pass
        out: list[str] = []
        for handle in tunnel_handles:
            freed = await self.ipam.release_by_handle(handle)
            out.append(handle)
            self.released.append(handle)
            self.ctx.metrics.ipam_released.inc(len(freed))
            log.info("released the tunnel address of a removed node", extra={"fields": {
                "handle": handle, "node": node, "ips": ",".join(freed)}})
        cidrs, busy = await self.ipam.release_host_affinities(node)
        self.deleted_blocks += cidrs
        if cidrs or out:
            log.info("released the blocks of a removed node", extra={"fields": {
                "node": node, "blocks": ",".join(cidrs) or "-",
                "still_in_use": ",".join(busy) or "-"}})
        return out

    async def _release(self, c: Candidate) -> bool:
        # the pod may have appeared meanwhile: look once more right before releasing
        if any(not leaked(self.pods.get(f"{c.namespace}/{c.pod}"), ip, c.node) for ip in c.ips):
            return False
        freed = await self.ipam.release_by_handle(c.handle)
        if not freed:  # no handle document: free the addresses themselves
            freed = await self.ipam.release_ips(c.ips)
        self.released.append(c.handle)
        self.ctx.metrics.ipam_released.inc(len(freed))
        log.info("released leaked addresses", extra={"fields": {
            "handle": c.handle, "pod": f"{c.namespace}/{c.pod}", "node": c.node,
            "ips": ",".join(freed)}})
        await self._delete_endpoints(c)
        return True

    async def _delete_endpoints(self, c: Candidate) -> None:
        kvs, _ = await self.ctx.store.list(keys.resource_prefix(_WEP.plural, c.namespace))
        for kv in kvs:
            spec = kv.value.get("spec") or {}
            if spec.get("containerID") == c.container and spec.get("pod") == c.pod \
                    and (spec.get("endpoint") or PRIMARY_IFNAME) == c.interface:
                await delete_if_present(self.ctx.store, kv.key, self.ctx.metrics, self.name,
                                        kv.mod_revision)

    def health(self) -> dict[str, Any]:
        return {"passes": self.passes, "candidates": len(self.candidates),
                "released": len(self.released), "errors": self.errors}
