"""Automatic host endpoints: one ``<node>-auto-hep`` per node while the KCC says
``controllers.node.hostEndpoint.autoCreate: Enabled`` (Calico 3.14+, seed 003).

Each is::

    metadata: {name: <node>-auto-hep,
               labels: <the node's labels> + projectcalico.org/created-by: calico-kube-controllers}
    spec: {node: <node>, interfaceName: "*", expectedIPs: [<the node's addresses>],
           profiles: [projectcalico-default-allow]}

The labels are the Calico Node's (which carry the Kubernetes labels, see
:mod:`kubecontrollers.nodes`) with the Kubernetes Node's on top; ``expectedIPs`` are the
Calico Node's BGP and tunnel addresses (as Calico takes them), else the Kubernetes Node's
InternalIP addresses.  The nodes are those with a Calico Node or a Kubernetes Node.

Only host endpoints labelled ``projectcalico.org/created-by: calico-kube-controllers`` are
ever changed or deleted: turning autoCreate off deletes them, a user's own host endpoint
of the same name is left alone (and logged).  ``templates`` are not implemented.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from datastore.kinds import by_plural
from datastore.model_endpoints import HostEndpoint
from datastore.resources import ResourceNotFound
from datastore.store import NotFound
from kubecontrollers.controller import FULL, Context, Controller
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.reflector import Reflector
from kubecontrollers.settings import default_host_endpoints

log = logging.getLogger("tortie.kc.hep")

_HEP = by_plural("hostendpoints")
SUFFIX = "-auto-hep"
CREATED_BY = "projectcalico.org/created-by"
CREATED_BY_VALUE = "calico-kube-controllers"
DEFAULT_ALLOW_PROFILE = "projectcalico-default-allow"


def auto_hep_name(node: str) -> str:
    return node + SUFFIX


def _ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:
        return None


def expected_ips(calico: dict[str, Any] | None, k8s: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    spec = (calico or {}).get("spec") or {}
    bgp = spec.get("bgp") or {}
    wg = spec.get("wireguard") or {}
    for v in (bgp.get("ipv4Address"), bgp.get("ipv6Address"), bgp.get("ipv4IPIPTunnelAddr"),
              spec.get("ipv4VXLANTunnelAddr"), spec.get("ipv6VXLANTunnelAddr"),
              wg.get("interfaceIPv4Address"), wg.get("interfaceIPv6Address")):
        ip = _ip(v)
        if ip and ip not in out:
            out.append(ip)
    if not out:
        for a in ((k8s or {}).get("status") or {}).get("addresses") or []:
            ip = _ip(a.get("address")) if a.get("type") == "InternalIP" else None
            if ip and ip not in out:
                out.append(ip)
    return out


def desired_hep(node: str, calico: dict[str, Any] | None,
                k8s: dict[str, Any] | None) -> dict[str, Any]:
    labels: dict[str, str] = {}
    labels.update(((calico or {}).get("metadata") or {}).get("labels") or {})
    labels.update(((k8s or {}).get("metadata") or {}).get("labels") or {})
    labels[CREATED_BY] = CREATED_BY_VALUE
    spec: dict[str, Any] = {"node": node, "interfaceName": "*"}
    ips = expected_ips(calico, k8s)
    if ips:
        spec["expectedIPs"] = ips
    spec["profiles"] = [DEFAULT_ALLOW_PROFILE]
    return {"apiVersion": HostEndpoint.API_VERSION, "kind": HostEndpoint.KIND,
            "metadata": {"name": auto_hep_name(node), "labels": labels}, "spec": spec}


def _ours(value: dict[str, Any] | None) -> bool:
    labels = ((value or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(CREATED_BY) == CREATED_BY_VALUE


class AutoHostEndpointController(Controller):
    name = "hostendpoints"
    config_section = "node"

    def __init__(self, ctx: Context, reflector: Reflector, calico_nodes: DatastoreCache,
                 heps: DatastoreCache, config_synced: Any) -> None:
        super().__init__(ctx)
        self.reflector = reflector
        self.calico_nodes = calico_nodes
        self.heps = heps
        self.config_synced = config_synced
        reflector.add_listener(self.on_change)
        reflector.synced_listeners.append(self.on_synced)
        calico_nodes.listeners.append(lambda name, value: self.queue.add(name))
        calico_nodes.synced_listeners.append(self.on_synced)
        heps.listeners.append(self._hep_changed)
        heps.synced_listeners.append(self.on_synced)

    def _hep_changed(self, name: str, value: dict[str, Any] | None) -> None:
        if name.endswith(SUFFIX):
            self.queue.add(name[:-len(SUFFIX)])

    def config_changed(self) -> None:
        self.queue.add(FULL)

    def _ready(self) -> bool:
        return (self.reflector.synced.is_set() and self.calico_nodes.synced.is_set()
                and self.heps.synced.is_set() and self.config_synced.is_set())

    async def reconcile(self, node: str) -> None:
        if not self._ready():
            return
        name = auto_hep_name(node)
        try:
            current: HostEndpoint | None = await self.ctx.resources.get(_HEP, name)
        except (ResourceNotFound, NotFound):
            current = None
        # read the caches after the await (they may have moved on meanwhile)
        calico = self.calico_nodes.items.get(node)
        k8s = self.reflector.get(node)
        wanted = default_host_endpoints(self.ctx.config()) and (calico is not None
                                                                or k8s is not None)
        cur_doc = current.dump() if current is not None else None
        if current is not None and not _ours(cur_doc):
            log.warning("a host endpoint not made by kube-controllers has the auto name; left "
                        "alone", extra={"fields": {"hostendpoint": name}})
            return
        if not wanted:
            if current is not None:
                await self.ctx.resources.delete(_HEP, name, None,
                                                current.metadata.resourceVersion)
                self.ctx.metrics.writes.labels(controller=self.name, op="delete").inc()
                log.info("deleted automatic host endpoint", extra={"fields": {
                    "hostendpoint": name}})
            return
        want = HostEndpoint.from_dict(desired_hep(node, calico, k8s))
        if current is None:
            await self.ctx.resources.create(_HEP, want)
            self.ctx.metrics.writes.labels(controller=self.name, op="create").inc()
            log.info("created automatic host endpoint", extra={"fields": {
                "hostendpoint": name, "expectedIPs": ",".join(want.spec.expectedIPs or [])}})
            return
        if (current.metadata.labels, current.spec.dump()) == (want.metadata.labels,
                                                              want.spec.dump()):
            return
        want.metadata.resourceVersion = current.metadata.resourceVersion
        await self.ctx.resources.replace(_HEP, want)
        self.ctx.metrics.writes.labels(controller=self.name, op="update").inc()

    async def full(self) -> None:
        if not self._ready():
            return
        nodes = set(self.calico_nodes.items) | set(self.reflector.cache)
        nodes |= {n[:-len(SUFFIX)] for n, v in self.heps.items.items()
                  if n.endswith(SUFFIX) and _ours(v)}
        self.queue.add_all(n for n in nodes if n != FULL)
