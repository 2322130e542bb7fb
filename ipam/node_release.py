"""What removing a node releases (Calico's ``Nodes().Delete`` with an etcd datastore).

A node that left the cluster -- deleted with ``tortie delete node NAME``, or its Kubernetes
Node deleted (tortie-kube-controllers' node controller) -- gives back, in this order:

1. its **workload endpoints**: each endpoint whose ``spec.node`` is the node has its
   addresses released (its attachment's handle ``tortie.<containerID>[.<ifname>]``, then whatever of
   its ``ipNetworks`` the node still holds) and is then deleted (conditional on the revision
   read, re-read on conflict), so the pods of a node that is gone hold nothing;
2. its **tunnel addresses** (handles ``vxlan-tunnel-addr-<node>``,
   ``vxlan-v6-tunnel-addr-<node>``, ``ipip-tunnel-addr-<node>``);
3. its **block affinities**: an empty block is deleted; a block still holding addresses
   (a pod whose endpoint was never written, another node's borrowed address) loses its
   affinity and stays until its last address is released, which deletes it;
4. its **IPAM host document**;

and :func:`remove_node` then deletes the Node resource itself, last, so a removal cut short
is completed by running it again (every step is idempotent).  The other nodes withdraw the
node's routes as its blocks lose their affinity and its BGP session and Node go.

Only addresses the node allocated are released; an address of the node's blocks borrowed
by a pod of another node stays with that pod.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.backend import KV, Conflict, KVStore, NotFound
from datastore.keys import resource_key, resource_prefix
from datastore.kinds import by_plural
from datastore.resources import ResourceConflict, ResourceNotFound
from ipam import keys
from ipam.allocator import IPAM, IPAMContention
from ipam.handles import PRIMARY_IFNAME, tunnel_handles, workload_handle

log = logging.getLogger(__name__)

_WEP = by_plural("workloadendpoints")
_NODE = by_plural("nodes")
#: attempts at deleting one endpoint that keeps changing under us
MAX_ATTEMPTS = 20


@dataclass
class NodeRelease:
    """What :func:`release_node` gave back for ``node``."""

    node: str
    endpoints: list[str] = field(default_factory=list)        # namespace/name deleted
    addresses: list[str] = field(default_factory=list)        # endpoint addresses released
    tunnel_addresses: list[str] = field(default_factory=list)
    deleted_blocks: list[str] = field(default_factory=list)
    kept_blocks: list[str] = field(default_factory=list)      # still in use, affine to nobody
    node_deleted: bool = False

    def summary(self) -> str:
        kept = (f"; {len(self.kept_blocks)} block(s) still in use lost their affinity "
                f"({', '.join(self.kept_blocks)})" if self.kept_blocks else "")
        return (f"node {self.node}: deleted {len(self.endpoints)} workload endpoint(s), "
                f"released {len(self.addresses)} endpoint address(es) and "
                f"{len(self.tunnel_addresses)} tunnel address(es), deleted "
                f"{len(self.deleted_blocks)} block(s){kept}")

    def fields(self) -> dict[str, str]:
        """For a structured log line."""
        return {"node": self.node, "endpoints": ",".join(self.endpoints) or "-",
                "addresses": ",".join(self.addresses) or "-",
                "tunnel_addresses": ",".join(self.tunnel_addresses) or "-",
                "deleted_blocks": ",".join(self.deleted_blocks) or "-",
                "kept_blocks": ",".join(self.kept_blocks) or "-"}


def endpoint_on(doc: Mapping[str, Any], node: str) -> bool:
    """Whether a WorkloadEndpoint document is on ``node``."""
    spec = doc.get("spec")
    return isinstance(spec, dict) and spec.get("node") == node


def endpoint_handle(doc: Mapping[str, Any]) -> str | None:
    """The IPAM handle of an endpoint's attachment (its container and ``spec.endpoint``, the
    interface in the pod); None without a container ID."""
    spec = doc.get("spec") or {}
    cid = spec.get("containerID") if isinstance(spec, dict) else None
    if not isinstance(cid, str) or not cid or "/" in cid:
        return None
    ifname = spec.get("endpoint")
    return workload_handle(cid, ifname if isinstance(ifname, str) and ifname
                           else PRIMARY_IFNAME)


def endpoint_addresses(doc: Mapping[str, Any]) -> list[str]:
    """The addresses of an endpoint's ``spec.ipNetworks`` (entries that are not addresses
    or networks are skipped)."""
    spec = doc.get("spec") or {}
    nets = spec.get("ipNetworks") if isinstance(spec, dict) else None
    out: list[str] = []
    for text in nets if isinstance(nets, list) else []:
        try:
            out.append(str(ipaddress.ip_interface(str(text)).ip))
        except ValueError:
            continue
    return out


def endpoint_name(key: str, doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    if isinstance(meta, dict) and meta.get("name"):
        return f"{meta.get('namespace') or '-'}/{meta['name']}"
    return key[len(resource_prefix(_WEP.plural)):]


async def _release_endpoint(ipam: IPAM, store: KVStore, kv: KV, node: str,
                            out: NodeRelease) -> None:
    """Release one endpoint's addresses, then delete it if it is still on ``node``."""
    handle = endpoint_handle(kv.value)
    freed: list[str] = []
    if handle is not None:
        freed += await ipam.release_by_handle(handle)
    freed += await ipam.release_ips(endpoint_addresses(kv.value), node=node)
    out.addresses += freed
    current: KV | None = kv
    for _ in range(MAX_ATTEMPTS):
        if current is None or not endpoint_on(current.value, node):
            return  # gone, or moved (rewritten for another node) meanwhile
        try:
            await store.delete(current.key, current.mod_revision)
        except NotFound:
            return
        except Conflict:
            try:
                current = await store.get(kv.key)
            except NotFound:
                current = None
            continue
        out.endpoints.append(endpoint_name(kv.key, kv.value))
        log.info("deleted the workload endpoint of a removed node", extra={"fields": {
            "endpoint": endpoint_name(kv.key, kv.value), "node": node,
            "ips": ",".join(freed) or "-"}})
        return
    raise IPAMContention(f"workload endpoint {kv.key} is being modified concurrently; retry")


async def release_node(store: KVStore, node: str, acting_as: str) -> NodeRelease:
    """Give back everything ``node`` holds (see the module docstring), leaving its Node
    resource alone.  ``acting_as``: the IPAM node name the releases are made as (a name no
    real node has, e.g. the CLI's or the kube-controllers')."""
    keys.host_key(node)  # validates the name before anything is touched
    ipam = IPAM(store, acting_as)
    out = NodeRelease(node)
    kvs, _ = await store.list(resource_prefix(_WEP.plural))
    for kv in kvs:
        if endpoint_on(kv.value, node):
            await _release_endpoint(ipam, store, kv, node, out)
    for handle in tunnel_handles(node):
        freed = await ipam.release_by_handle(handle)
        if freed:
            out.tunnel_addresses += freed
            log.info("released the tunnel address of a removed node", extra={"fields": {
                "handle": handle, "node": node, "ips": ",".join(freed)}})
    out.deleted_blocks, out.kept_blocks = await ipam.release_host_affinities(
        node, must_be_empty=False)
    log.info("released what a removed node held", extra={"fields": out.fields()})
    return out


async def remove_node(store: KVStore, node: str, acting_as: str,
                      resource_version: str | None = None) -> NodeRelease:
    """:func:`release_node`, then delete the Node resource (conditional on
    ``resource_version`` when given).  :class:`ResourceNotFound` when there is no such Node
    (nothing is released then); :class:`ResourceConflict` when it changed since
    ``resource_version`` (checked before anything is released, and again at the delete)."""
    key = resource_key(_NODE.plural, node)
    try:
        kv = await store.get(key)
    except NotFound:
        raise ResourceNotFound(f"Node({node}) does not exist", key) from None
    if resource_version is not None and str(kv.mod_revision) != str(resource_version):
        raise ResourceConflict(f"Node({node}) has been modified: resourceVersion "
                               f"{resource_version} is stale", key)
    out = await release_node(store, node, acting_as)
    try:
        await store.delete(key, int(resource_version) if resource_version else None)
    except NotFound:
        pass  # deleted by someone else meanwhile: what it held is released all the same
    except Conflict:
        raise ResourceConflict(f"Node({node}) has been modified: resourceVersion "
                               f"{resource_version} is stale", key) from None
    else:
        out.node_deleted = True
    log.info("removed a node", extra={"fields": {"node": node}})
    return out

