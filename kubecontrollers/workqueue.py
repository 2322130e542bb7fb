"""A keyed work queue: what a controller still has to reconcile.

A key added while it is queued is queued once; a key added while it is being reconciled is
reconciled again afterwards.  :meth:`WorkQueue.run` calls ``reconcile(key)`` for one key at a
time; when it raises, the key is retried after a backoff that doubles per consecutive
failure of that key (so one bad object never blocks the others, and etcd outages are
ridden out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from agentkit.backoff import Backoff
from kubecontrollers.metrics import KubeMetrics

log = logging.getLogger("tortie.kc.queue")



class WorkQueue:
    def __init__(self, name: str, reconcile: Callable[[str], Awaitable[None]],
                 metrics: KubeMetrics) -> None:
        self.name = name
        self.reconcile = reconcile
        self.metrics = metrics
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self.errors = 0
        #: retry n of a failing key waits 0.2 s * 2**(n-1), at most 30 s
        self.backoff = Backoff(0.2, 30.0)

    def add(self, key: str) -> None:
        if key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(key)

    def add_all(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.add(k)

    def add_after(self, key: str, delay: float) -> None:
        old = self._retries.pop(key, None)
        if old is not None:
            old.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)

    def _retry(self, key: str) -> None:
        self._retries.pop(key, None)
        self.add(key)

    def idle(self) -> bool:
        return not self._pending and not self._retries

    async def run(self) -> None:
        try:
            while True:
                key = await self._queue.get()
                self._pending.discard(key)
                try:
                    await self.reconcile(key)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.errors += 1
                    n = self._failures.get(key, 0) + 1
                    self._failures[key] = n
                    delay = self.backoff.nth(n)
                    self.metrics.reconciles.labels(controller=self.name, result="error").inc()
                    log.warning("reconcile failed; retrying", exc_info=n == 1, extra={
                        "fields": {"controller": self.name, "key": key, "error": str(e),
                                   "retry_s": f"{delay:g}"}})
                    self.add_after(key, delay)
                else:
                    self._failures.pop(key, None)
                    self.metrics.reconciles.labels(controller=self.name, result="ok").inc()
        finally:
            for h in self._retries.values():
                h.cancel()
            self._retries.clear()
