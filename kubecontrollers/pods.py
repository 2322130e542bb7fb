"""Pods: mirrored into the datastore ``pods`` kind, and their workload endpoints kept current.

As Calico's kube-controllers do with an etcd datastore:

* the Pod (labels, annotations, node, service account, container ports) is mirrored
  (:class:`~kubecontrollers.mirror.MirrorController`);
* a pod's labels changed after its sandbox was set up: the labels of its
  WorkloadEndpoints (orchestrator ``k8s``) are rewritten -- the pod's labels plus the
  ``projectcalico.org/namespace|orchestrator|serviceaccount`` ones the CNI handler puts
  there -- with a compare-and-swap on the endpoint (the CNI handler owns the rest);
* a pod deleted from the API: its WorkloadEndpoints are deleted (a node that is down never
  runs CNI DEL); its addresses are released by the IPAM GC after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from datastore import keys
from datastore.kinds import by_plural
from datastore.model_k8s import Pod
from datastore.store import NotFound
from datastore.syncer import Syncer
from kubecontrollers.controller import Context, delete_if_present, k8s_key
from kubecontrollers.mirror import MirrorController
from kubecontrollers.reflector import Reflector

log = logging.getLogger("tortie.kc.pods")

_WEP = by_plural("workloadendpoints")
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
ORCH_K8S = "k8s"


def endpoint_labels(pod: dict[str, Any], namespace: str) -> dict[str, str]:
    """The labels a pod's WorkloadEndpoint carries (as cni.handler builds them)."""
    labels = dict((pod.get("metadata") or {}).get("labels") or {})
    spec = pod.get("spec") or {}
    labels[LABEL_NAMESPACE] = namespace
    labels[LABEL_ORCHESTRATOR] = ORCH_K8S
    labels[LABEL_SERVICE_ACCOUNT] = (spec.get("serviceAccountName") or spec.get("serviceAccount")
                                     or "default")
    return labels


class PodController(MirrorController):
    def __init__(self, ctx: Context, reflector: Reflector) -> None:
        super().__init__(ctx, "pods", reflector, by_plural("pods"), "workloadEndpoint")
        # (namespace, pod) -> {endpoint key: endpoint value}
        self.endpoints: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._wep_pod: dict[str, tuple[str, str]] = {}
        self.weps = Syncer(ctx.store, [keys.resource_prefix(_WEP.plural)], self._wep_update,
                           name="kc-weps")

    def _wep_update(self, key: str, value: dict[str, Any] | None) -> None:
        old = self._wep_pod.pop(key, None)
        if old is not None:
            self.endpoints.get(old, {}).pop(key, None)
            if not self.endpoints.get(old):
                self.endpoints.pop(old, None)
        if value is None:
            return
        spec = value.get("spec") or {}
        ns = (value.get("metadata") or {}).get("namespace")
        pod = spec.get("pod")
        if spec.get("orchestrator") != ORCH_K8S or not ns or not pod:
            return
        self._wep_pod[key] = (ns, pod)
        self.endpoints.setdefault((ns, pod), {})[key] = value
        self.queue.add(k8s_key(ns, pod))

    async def extra_tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.weps.run(), name="kc-weps")]

    async def reconcile(self, key: str) -> None:
        await super().reconcile(key)
        ns, name = key.split("/", 1)
        pod = self.reflector.get(key)
        if pod is None:
            if self.reflector.synced.is_set():
                await self._delete_endpoints(ns, name)
            return
        if not self.weps.synced.is_set():
            return
        try:
            Pod.from_dict(pod)
        except ValueError:
            return  # counted by the mirror
        want = endpoint_labels(pod, ns)
        for wkey in list(self.endpoints.get((ns, name), {})):
            await self._relabel(wkey, want)

    async def _relabel(self, wkey: str, want: dict[str, str]) -> None:
        try:
            kv = await self.ctx.store.get(wkey)
        except NotFound:
            return
        meta = kv.value.get("metadata") or {}
        if (meta.get("labels") or {}) == want:
            return
        value = dict(kv.value)
        value["metadata"] = {**meta, "labels": want}
        await self.ctx.store.update(wkey, value, kv.mod_revision)  # Conflict: retried
        self.ctx.metrics.writes.labels(controller=self.name, op="relabel-endpoint").inc()
        log.info("workload endpoint labels updated", extra={"fields": {"endpoint": wkey}})

    async def _delete_endpoints(self, ns: str, name: str) -> None:
        for wkey in list(self.endpoints.get((ns, name), {})):
            try:
                kv = await self.ctx.store.get(wkey)
            except NotFound:
                continue
            spec = kv.value.get("spec") or {}
            if spec.get("pod") != name or spec.get("orchestrator") != ORCH_K8S:
                continue
            if await delete_if_present(self.ctx.store, wkey, self.ctx.metrics, self.name,
                                       kv.mod_revision):
                log.info("deleted the endpoint of a deleted pod", extra={"fields": {
                    "pod": f"{ns}/{name}", "endpoint": wkey}})
