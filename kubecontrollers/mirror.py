"""Kubernetes objects copied into the datastore as their Tortie kinds.

:class:`MirrorController` keeps the datastore kind ``info`` equal to what a reflector sees:
Namespace -> ``namespaces``, Pod -> ``pods``, Node -> ``k8snodes``, networking.k8s.io
NetworkPolicy -> ``k8snetworkpolicies`` (the policy agent derives ``kns.<ns>`` profiles,
named ports and Kubernetes policies from them).  The stored value is the kind's model of the
object (unused Kubernetes fields dropped, ``metadata.uid`` / ``creationTimestamp`` kept);
an object the model rejects is logged, counted and removed from the datastore (the agents
must not act on a stale version of it).  A full pass deletes stored objects the API no
longer has.
"""

from __future__ import annotations

import logging

from datastore import keys
from datastore.kinds import KindInfo
from datastore.model_base import ResourceInvalid
from kubecontrollers.controller import (
    FULL,
    Context,
    Controller,
    delete_if_present,
    k8s_key,
    put_if_changed,
    split_key,
    storable,
)
from kubecontrollers.reflector import Reflector

log = logging.getLogger("tortie.kc.mirror")


class MirrorController(Controller):
    def __init__(self, ctx: Context, name: str, reflector: Reflector, info: KindInfo,
                 config_section: str) -> None:
        self.name = name
        self.config_section = config_section
        super().__init__(ctx)
        self.reflector = reflector
        self.info = info
        self.invalid = 0
        reflector.add_listener(self.on_change)
        reflector.synced_listeners.append(self.on_synced)

    def datastore_key(self, key: str) -> str:
        ns, name = split_key(key)
        return keys.resource_key(self.info.plural, name, ns if self.info.namespaced else None)

    async def reconcile(self, key: str) -> None:
        obj = self.reflector.get(key)
        dkey = self.datastore_key(key)
        if obj is None:
            if self.reflector.synced.is_set():
                await delete_if_present(self.ctx.store, dkey, self.ctx.metrics, self.name)
            return
        try:
            value = storable(self.info, obj)
        except ResourceInvalid as e:
            self.invalid += 1
            self.ctx.metrics.bad_objects.labels(resource=self.info.plural).inc()
            log.warning("object cannot be used; not mirrored", extra={"fields": {
                "controller": self.name, "key": key, "error": str(e)}})
            await delete_if_present(self.ctx.store, dkey, self.ctx.metrics, self.name)
            return
        await put_if_changed(self.ctx.store, dkey, value, self.ctx.metrics, self.name)

    async def full(self) -> None:
        if not self.reflector.synced.is_set():
            return
        stored, _ = await self.ctx.store.list(keys.resource_prefix(self.info.plural))
        for kv in stored:
            _, ns, name = keys.parse_resource_key(kv.key)
            key = k8s_key(ns, name)
            if self.reflector.get(key) is None:
                self.queue.add(key)
        self.queue.add_all(k for k in list(self.reflector.cache) if k != FULL)
