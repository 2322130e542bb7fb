"""List + watch of datastore prefixes, feeding a long-running agent.

:class:`Syncer` keeps a copy of every key under some prefixes and tells its consumer about
each change: ``on_update(key, value)`` (``value`` ``None`` for a delete), and
``on_synced()`` once every prefix has been listed (and again after every resync).  It lists
each prefix, then watches from the listed revision.  When the watch reports a compaction
(:class:`datastore.backend.Resync`) or fails (etcd gone, the store closed under it), it lists
again and reports only the differences against what it had delivered, so a consumer never
sees a key twice with the same value and never misses a delete.

The consumer's callbacks are plain functions (they run in the event loop, between awaits);
an exception in one is logged and counted, never stops the syncer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from agentkit.backoff import Backoff
from datastore.backend import DatastoreError, KVStore, Resync, WatchEvent

log = logging.getLogger("tortie.syncer")

Update = Callable[[str, dict[str, Any] | None], None]


class Syncer:
    """Keeps ``prefixes`` of ``store`` mirrored into ``on_update``."""

    def __init__(self, store: KVStore, prefixes: Iterable[str], on_update: Update,
                 on_synced: Callable[[], None] | None = None, *, name: str = "syncer") -> None:
        self.store = store
        self.prefixes = tuple(prefixes)
        self.on_update = on_update
        self.on_synced = on_synced
        self.name = name
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resyncs = 0          # full lists after the first (compaction or errors)
        self.callback_errors = 0  # exceptions raised by on_update / on_synced
        self.revision = 0         # highest revision delivered
        self._listed: set[str] = set()

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for prefix in self.prefixes:
                tg.create_task(self._follow(prefix), name=f"{self.name}:{prefix}")

    # --- one prefix ----------------------------------------------------------------------

    async def _follow(self, prefix: str) -> None:
        backoff = Backoff()
        first = True
        while True:
            try:
                items, rev = await self.store.list(prefix)
                if not first:
                    self.resyncs += 1
                self._replace(prefix, {kv.key: kv.value for kv in items}, rev)
                first = False
                self._mark_listed(prefix)
                backoff.reset()
                async for ev in self.store.watch(prefix, rev):
                    if isinstance(ev, Resync):
                        self.resyncs += 1
                        self._replace(prefix, {kv.key: kv.value for kv in ev.items},
                                      ev.revision)
                        self._notify_synced()
                    elif isinstance(ev, WatchEvent):
                        self._deliver(ev.key, ev.value if ev.type == "put" else None,
                                      ev.revision)
            except asyncio.CancelledError:
                raise
            except (DatastoreError, OSError) as e:
                log.warning("datastore sync interrupted; listing again", extra={"fields": {
                    "syncer": self.name, "prefix": prefix, "error": str(e),
                    "retry_s": f"{backoff.delay:g}"}})
            except Exception:
                log.exception("unexpected failure syncing; listing again",
                              extra={"fields": {"syncer": self.name, "prefix": prefix}})
            await asyncio.sleep(backoff.next())

    def _mark_listed(self, prefix: str) -> None:
        self._listed.add(prefix)
        if len(self._listed) == len(self.prefixes):
            self._notify_synced()

    def _notify_synced(self) -> None:
        if len(self._listed) < len(self.prefixes):
            return
        self.synced.set()
        if self.on_synced is not None:
            try:
                self.on_synced()
            except Exception:
                self.callback_errors += 1
                log.exception("on_synced failed", extra={"fields": {"syncer": self.name}})

    def _replace(self, prefix: str, current: dict[str, dict[str, Any]], revision: int) -> None:
        for key in [k for k in self.cache if k.startswith(prefix) and k not in current]:
            self._deliver(key, None, revision)
        for key, value in current.items():
            self._deliver(key, value, revision)

    def _deliver(self, key: str, value: dict[str, Any] | None, revision: int) -> None:
        self.revision = max(self.revision, revision)
        old = self.cache.get(key)
        if value is None:
            if old is None:
                return
            del self.cache[key]
        else:
            if old == value:
                return
            self.cache[key] = value
        try:
            self.on_update(key, value)
        except Exception:
            self.callback_errors += 1
            log.exception("update callback failed", extra={"fields": {
                "syncer": self.name, "key": key}})


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it to end, swallowing its cancellation."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
