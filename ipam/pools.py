"""Which IP pools a pod's addresses come from (pure: no I/O).

First match wins, per address family (v4 shown; v6 uses ``ipv6pools`` / ``ipv6_pools``):

1. the pod annotation ``cni.projectcalico.org/ipv4pools``: a JSON list of pool names or
   CIDRs (Calico accepts both);
2. the same annotation on the pod's namespace;
3. the CNI network config's ``ipam.ipv4_pools`` list;
4. otherwise every enabled pool of the family whose ``allowedUses`` include ``Workload``,
   whose ``assignmentMode`` is ``Automatic``, whose ``nodeSelector`` selects the node and
   (when the namespace's labels are known) whose ``namespaceSelector`` selects the namespace.

Requested pools (1-3) must exist (:class:`UnknownPool`), be enabled (:class:`PoolDisabled`)
and allow workloads; as in Calico, requested pools whose node selector does not select the
node are skipped, and if that leaves none the request fails (:class:`PoolNotAllowed`).
An annotation that is not a JSON list of strings is a :class:`BadAnnotation`.

``cni.projectcalico.org/ipAddrs`` (a JSON list with one address, or one per family) asks
for specific addresses, each of which must lie in an enabled pool (:class:`NotInPool`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence

from datastore.model_network import IPPool
from datastore.selector import SelectorError, parse
from ipam.blocks import IPAddress, IPAMError, to_address

IPV4_POOLS_ANNOTATION = "cni.projectcalico.org/ipv4pools"
IPV6_POOLS_ANNOTATION = "cni.projectcalico.org/ipv6pools"
IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"

POOL_ANNOTATIONS = {4: IPV4_POOLS_ANNOTATION, 6: IPV6_POOLS_ANNOTATION}
#: keys of the CNI config's ``ipam`` section
CNI_POOL_KEYS = {4: "ipv4_pools", 6: "ipv6_pools"}


class PoolError(IPAMError):
    """The pools a pod asked for cannot be used."""


class UnknownPool(PoolError):
    code = 101

    def __init__(self, name: str) -> None:
        super().__init__(f"IP pool {name!r} does not exist")
        self.name = name


class PoolNotAllowed(PoolError):
    code = 102


class PoolDisabled(PoolNotAllowed):
    def __init__(self, name: str) -> None:
        super().__init__(f"IP pool {name!r} is disabled")
        self.name = name


class BadAnnotation(IPAMError):
    code = 7  # invalid network configuration

    def __init__(self, annotation: str, value: str, reason: str) -> None:
        super().__init__(f"annotation {annotation} {value!r} is invalid: {reason}")
        self.annotation = annotation
        self.value = value


class NotInPool(IPAMError):
    def __init__(self, ip: str, reason: str = "is not in any enabled IP pool") -> None:
        super().__init__(f"IP address {ip} {reason}")
        self.ip = ip


# --- pool properties -----------------------------------------------------------------------------


def is_enabled(pool: IPPool) -> bool:
    return not pool.spec.disabled


def allows_workloads(pool: IPPool) -> bool:
    uses = pool.spec.allowedUses
    return uses is None or "Workload" in uses


def selects_node(pool: IPPool, node_labels: Mapping[str, str]) -> bool:
    try:
        return parse(pool.spec.nodeSelector or "all()").evaluate(node_labels)
    except SelectorError:
        return False


def selects_namespace(pool: IPPool, namespace_labels: Mapping[str, str] | None) -> bool:
    sel = pool.spec.namespaceSelector
    if not sel or namespace_labels is None:
        return True
    try:
        return parse(sel).evaluate(namespace_labels)
    except SelectorError:
        return False


# --- annotations ---------------------------------------------------------------------------------


def parse_list_annotation(annotation: str, value: str) -> list[str]:
    """A JSON list of strings; :class:`BadAnnotation` otherwise."""
    try:
        data = json.loads(value)
    except (ValueError, TypeError) as e:
        raise BadAnnotation(annotation, str(value), f"not valid JSON ({e})") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise BadAnnotation(annotation, value, "must be a JSON list of strings")
    if not data:
        raise BadAnnotation(annotation, value, "the list is empty")
    return [x.strip() for x in data]


def _find_pool(entry: str, pools: Sequence[IPPool]) -> IPPool | None:
    for p in pools:
        if p.name == entry:
            return p
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
    for p in pools:
        if p.network == net:
            return p
    return None


def resolve_pools(entries: Sequence[str], pools: Sequence[IPPool], node: str,
                  node_labels: Mapping[str, str], version: int = 4) -> list[IPPool]:
    """The pools named (or given by CIDR) in ``entries``, in that order, that serve the node."""
    chosen: list[IPPool] = []
    for entry in entries:
        pool = _find_pool(entry, pools)
        if pool is None:
            raise UnknownPool(entry)
        if not is_enabled(pool):
            raise PoolDisabled(pool.name)
        if pool.network.version != version:
            raise PoolNotAllowed(f"IP pool {pool.name!r} ({pool.spec.cidr}) is not an "
                                 f"IPv{version} pool")
        if not allows_workloads(pool):
            raise PoolNotAllowed(f"IP pool {pool.name!r} does not allow Workload use "
                                 f"(allowedUses: {pool.spec.allowedUses})")
        if pool not in chosen:
            chosen.append(pool)
    serving = [p for p in chosen if selects_node(p, node_labels)]
    if not serving:
        names = ", ".join(p.name for p in chosen)
        raise PoolNotAllowed(f"none of the requested IP pools ({names}) selects node "
                             f"{node!r} (nodeSelector)")
    return serving


def auto_pools(pools: Sequence[IPPool], node_labels: Mapping[str, str], version: int = 4,
               namespace_labels: Mapping[str, str] | None = None) -> list[IPPool]:
    """Every enabled Automatic workload pool of the family that serves the node."""
    return [
        p for p in pools
        if p.network.version == version and is_enabled(p) and allows_workloads(p)
        and (p.spec.assignmentMode or "Automatic") == "Automatic"
        and selects_node(p, node_labels) and selects_namespace(p, namespace_labels)
    ]


def select_pools(pools: Sequence[IPPool], node_labels: Mapping[str, str], *,
                 node: str = "", version: int = 4,
                 pod_annotations: Mapping[str, str] | None = None,
                 namespace_annotations: Mapping[str, str] | None = None,
                 namespace_labels: Mapping[str, str] | None = None,
                 cni_pools: Sequence[str] | None = None) -> list[IPPool]:
    """The ordered pools to allocate a pod's address of ``version`` from (maybe empty)."""
    annotation = POOL_ANNOTATIONS[version]
    for source in (pod_annotations, namespace_annotations):
        if source and annotation in source:
            entries = parse_list_annotation(annotation, source[annotation])
            return resolve_pools(entries, pools, node, node_labels, version)
    if cni_pools:
        return resolve_pools(list(cni_pools), pools, node, node_labels, version)
    return auto_pools(pools, node_labels, version, namespace_labels)


def enabled_pool_for(ip: str | IPAddress, pools: Sequence[IPPool]) -> IPPool:
    """The enabled pool containing ``ip``; :class:`NotInPool` if none."""
    addr = to_address(ip)
    for p in pools:
        if addr in p.network and is_enabled(p):
            return p
    raise NotInPool(str(addr))


def requested_ips(pod_annotations: Mapping[str, str] | None,
                  pools: Sequence[IPPool]) -> list[IPAddress]:
    """The specific addresses asked for by ``cni.projectcalico.org/ipAddrs`` (at most one
    per family), each checked to lie in an enabled pool; empty when not annotated."""
    if not pod_annotations or IP_ADDRS_ANNOTATION not in pod_annotations:
        return []
    value = pod_annotations[IP_ADDRS_ANNOTATION]
    entries = parse_list_annotation(IP_ADDRS_ANNOTATION, value)
    out: list[IPAddress] = []
    for e in entries:
        try:
            addr = ipaddress.ip_address(e)
        except ValueError:
            raise BadAnnotation(IP_ADDRS_ANNOTATION, value,
                                f"{e!r} is not an IP address") from None
        if any(a.version == addr.version for a in out):
            raise BadAnnotation(IP_ADDRS_ANNOTATION, value,
                                f"more than one IPv{addr.version} address")
        enabled_pool_for(addr, pools)
        out.append(addr)
    return out
