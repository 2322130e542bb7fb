"""What every controller shares: the context it is given and its run loop.

A controller reconciles keys (``namespace/name`` or ``name``) from a
:class:`~kubecontrollers.workqueue.WorkQueue`; the key ``""`` (:data:`FULL`) means a full
pass (compare everything, remove what should not be there).  A full pass is queued after
each (re)list of a watched resource and every ``period`` seconds (Calico's
``reconcilerPeriod``), so drift in the datastore is repaired even without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from datastore.bgp_secrets import DEFAULT_SECRETS_NAMESPACE
from datastore.kinds import KindInfo
from datastore.model_config import KubeControllersConfiguration
from datastore.resources import Resources
from datastore.store import Conflict, NotFound, Store
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.reflector import Reflector
from kubecontrollers.settings import reconciler_period
from kubecontrollers.workqueue import WorkQueue

log = logging.getLogger("tortie.kc")

FULL = ""


@dataclass
class Options:
    period: float | None = None          # full-pass period; None: the KCC reconcilerPeriod
    leak_grace: float | None = None      # None: the KCC node.leakGracePeriod
    ipam_gc_interval: float = 60.0
    secrets_namespace: str = DEFAULT_SECRETS_NAMESPACE  # where BGP password Secrets are


@dataclass
class Context:
    store: Store
    metrics: KubeMetrics
    reflectors: dict[str, Reflector]
    options: Options = field(default_factory=Options)
    kcc: KubeControllersConfiguration | None = None   # kept current by config.ConfigWatcher

    def __post_init__(self) -> None:
        self.resources = Resources(self.store)

    def config(self) -> KubeControllersConfiguration:
        if self.kcc is None:
            self.kcc = KubeControllersConfiguration.from_dict(
                {"metadata": {"name": "default"}, "spec": {}})
        return self.kcc


def split_key(key: str) -> tuple[str | None, str]:
    ns, _, name = key.rpartition("/")
    return (ns or None), name


def k8s_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


class Controller:
    """Base: a queue, a reconcile method, periodic full passes."""

    name = "controller"
    #: which ``spec.controllers.<x>.reconcilerPeriod`` of the KCC sets the full-pass period
    config_section = "node"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue = WorkQueue(self.name, self._reconcile, ctx.metrics)

    def period(self) -> float:
        return self.ctx.options.period or reconciler_period(self.ctx.config(),
                                                            self.config_section)

    async def reconcile(self, key: str) -> None:
        raise NotImplementedError

    async def full(self) -> None:
        raise NotImplementedError

    async def _reconcile(self, key: str) -> None:
        if key == FULL:
            await self.full()
        else:
            await self.reconcile(key)

    def on_change(self, key: str, old: Any, new: Any) -> None:
        self.queue.add(key)

    def on_synced(self) -> None:
        self.queue.add(FULL)

    async def extra_tasks(self) -> list[asyncio.Task[None]]:
        return []

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.queue.run(), name=f"{self.name}:queue")]
        tasks += await self.extra_tasks()
        try:
            while True:
                await asyncio.sleep(self.period())
                self.queue.add(FULL)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def health(self) -> dict[str, Any]:
        return {"queued": not self.queue.idle(), "errors": self.queue.errors}


# --- datastore writes shared by the controllers --------------------------------------------


def comparable(value: dict[str, Any]) -> dict[str, Any]:
    """A stored value without the fields the store owns."""
    out = dict(value)
    meta = dict(out.get("metadata") or {})
    for f in ("resourceVersion", "managedFields"):
        meta.pop(f, None)
    out["metadata"] = meta
    return out


async def put_if_changed(store: Store, key: str, value: dict[str, Any], metrics: KubeMetrics,
                         controller: str) -> bool:
    """Create or update ``key`` (CAS on what was read) unless it already holds ``value``.

    :class:`Conflict` / ``AlreadyExists`` propagate: the caller's queue retries."""
    try:
        current = await store.get(key)
    except NotFound:
        await store.create(key, value)
        metrics.writes.labels(controller=controller, op="create").inc()
        return True
    if comparable(current.value) == comparable(value):
        return False
    await store.update(key, value, current.mod_revision)
    metrics.writes.labels(controller=controller, op="update").inc()
    return True


async def delete_if_present(store: Store, key: str, metrics: KubeMetrics, controller: str,
                            revision: int | None = None) -> bool:
    try:
        await store.delete(key, revision)
    except NotFound:
        return False
    except Conflict:
        if revision is None:
            raise
        return False  # changed since we looked: the next pass decides again
    metrics.writes.labels(controller=controller, op="delete").inc()
    return True


def storable(info: KindInfo, obj: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes object as the datastore stores its kind (validated, trimmed)."""
    model = info.model.from_dict(obj)
    value: dict[str, Any] = model.dump()
    meta = value.setdefault("metadata", {})
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return value
