"""Kubernetes Nodes -> the Calico ``Node`` resources tortie-node registers.

For each Calico Node with a Kubernetes Node of the same name (Calico's node controller with
an etcd datastore):

* **labels** (``syncLabels``, on unless the KCC disables it): the Kubernetes labels are
  copied onto the Calico Node; the set copied last is remembered in the annotation
  ``projectcalico.org/kube-labels`` so a label removed in Kubernetes is removed here too,
  while labels set directly on the Calico Node are kept;
* **addresses**: ``spec.addresses`` gets the Kubernetes ``InternalIP`` / ``ExternalIP``
  addresses (other entries, e.g. ``CalicoNodeIP``, are kept);
* everything else (``spec.bgp`` -- tortie-node's ``ipv4Address`` --, ``orchRefs``, tunnel
  addresses) is never touched.  Writes are conditional on the resourceVersion read
  (``Resources.replace``) and retried, so tortie-node's concurrent writes are never lost.

A Kubernetes Node deleted: its Calico Node is deleted when it has a ``k8s`` orchRef (nodes
made outside Kubernetes are left alone), as ``tortie delete node`` does it
(:func:`ipam.node_release.remove_node`): its workload endpoints are deleted and their
addresses released, its tunnel addresses released, its empty blocks deleted, the others
un-affined, its IPAM host document deleted, and then the Node.  What is left over (an
allocation without an endpoint) the IPAM GC releases once its pod is gone from the API.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from datastore.kinds import by_plural
from datastore.model_network import Node
from datastore.resources import ResourceNotFound
from datastore.store import NotFound
from ipam.node_release import remove_node
from kubecontrollers.controller import FULL, Context, Controller
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.ipam_gc import GC_NODE
from kubecontrollers.reflector import Reflector

log = logging.getLogger("tortie.kc.nodes")

_NODE = by_plural("nodes")
KUBE_LABELS_ANNOTATION = "projectcalico.org/kube-labels"
ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def merged_node(calico: dict[str, Any], k8s: dict[str, Any], sync_labels: bool) -> dict[str, Any]:
    """The Calico Node document with the Kubernetes Node's labels and addresses merged in."""
    doc = json.loads(json.dumps(calico))
    meta = doc.setdefault("metadata", {})
    kmeta = k8s.get("metadata") or {}
    if sync_labels:
        kube_labels: dict[str, str] = dict(kmeta.get("labels") or {})
        ann = dict(meta.get("annotations") or {})
        try:
            previous = json.loads(ann.get(KUBE_LABELS_ANNOTATION) or "{}")
        except ValueError:
            previous = {}
        labels = dict(meta.get("labels") or {})
        for k in previous:
            if k not in kube_labels:
                labels.pop(k, None)
        labels.update(kube_labels)
        ann[KUBE_LABELS_ANNOTATION] = json.dumps(kube_labels, sort_keys=True,
                                                 separators=(",", ":"))
        meta["labels"] = labels or None
        meta["annotations"] = ann
        if meta["labels"] is None:
            meta.pop("labels")
    spec = doc.setdefault("spec", {})
    kept = [a for a in spec.get("addresses") or [] if a.get("type") not in ADDRESS_TYPES]
    for a in (k8s.get("status") or {}).get("addresses") or []:
        if a.get("type") in ADDRESS_TYPES and a.get("address"):
            entry = {"address": a["address"], "type": a["type"]}
            if entry not in kept:
                kept.append(entry)
    if kept:
        spec["addresses"] = kept
    else:
        spec.pop("addresses", None)
    return doc


def has_k8s_ref(calico: dict[str, Any]) -> bool:
    return any(r.get("orchestrator") == "k8s"
               for r in (calico.get("spec") or {}).get("orchRefs") or [])


class NodeController(Controller):
    name = "nodes"
    config_section = "node"

    def __init__(self, ctx: Context, reflector: Reflector, calico_nodes: DatastoreCache) -> None:
        super().__init__(ctx)
        self.reflector = reflector
        self.calico_nodes = calico_nodes
        reflector.add_listener(self.on_change)
        reflector.synced_listeners.append(self.on_synced)
        calico_nodes.listeners.append(lambda name, value: self.queue.add(name))
        calico_nodes.synced_listeners.append(self.on_synced)

    def sync_labels(self) -> bool:
        c = self.ctx.config().spec.controllers
        node = c.node if c else None
        return not (node and node.syncLabels == "Disabled")

    async def reconcile(self, name: str) -> None:
        if not self.calico_nodes.synced.is_set():
            return
        try:
            current: Node = await self.ctx.resources.get(_NODE, name)
        except (ResourceNotFound, NotFound):
            return  # tortie-node has not registered it yet: its write brings us back here
        # read the Kubernetes side after the await: the watch may have moved on meanwhile
        k8s = self.reflector.get(name)
        doc = current.dump()
        if k8s is None:
            if self.reflector.synced.is_set() and has_k8s_ref(doc):
                await self._delete(name, current)
            return
        want = merged_node(doc, k8s, self.sync_labels())
        if want == doc:
            return
        node = Node.from_dict(want)
        node.metadata.resourceVersion = current.metadata.resourceVersion
        await self.ctx.resources.replace(_NODE, node)  # conflict -> retried by the queue
        self.ctx.metrics.writes.labels(controller=self.name, op="update").inc()
        log.info("node updated from Kubernetes", extra={"fields": {"node": name}})

    async def _delete(self, name: str, current: Node) -> None:
        """The Calico Node of a deleted Kubernetes Node goes, with everything it held
        (``ipam.node_release.remove_node``: endpoints, addresses, tunnel addresses, block
        affinities, host document).  Conditional on the version read: a conflict (or any
        failure) is retried by the queue, and every step of the removal is idempotent."""
        try:
            done = await remove_node(self.ctx.store, name, GC_NODE,
                                     current.metadata.resourceVersion)
        except (ResourceNotFound, NotFound):
            return
        writes = (len(done.endpoints) + len(done.deleted_blocks) + len(done.kept_blocks)
                  + int(done.node_deleted))
        self.ctx.metrics.writes.labels(controller=self.name, op="delete").inc(writes)
        log.info("deleted the Node of a deleted Kubernetes node, with what it held",
                 extra={"fields": done.fields()})

    async def full(self) -> None:
        self.queue.add_all(n for n in set(self.calico_nodes.items) | set(self.reflector.cache)
                           if n != FULL)
