"""datastore.syncer.Syncer's logic on the in-memory store: the initial list, following
changes of several prefixes, resyncing after an interrupted watch whose history was compacted
(deletes delivered, unchanged keys not repeated), callbacks that fail.  Against a real etcd
restarting: tests/integration/test_syncer.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from datastore.backend import KVStore
from datastore.memory import MemoryStore
from datastore.syncer import Syncer, cancel_and_wait
from tests.support.wait import until


class Mirror:
    """What a consumer rebuilds from the callbacks: it must always equal etcd's state."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.synced = 0

    def update(self, key: str, value: dict[str, Any] | None) -> None:
        self.calls.append((key, value))
        if value is None:
            assert key in self.state, f"delete of a key never delivered: {key}"
            del self.state[key]
        else:
            assert self.state.get(key) != value, f"same value delivered twice: {key}"
            self.state[key] = value

    def on_synced(self) -> None:
        self.synced += 1


async def store_state(store: KVStore, *prefixes: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in prefixes:
        items, _ = await store.list(p)
        out.update({kv.key: kv.value for kv in items})
    return out


async def test_lists_then_follows_changes_of_several_prefixes() -> None:
    store = MemoryStore()
    base = f"/tortie/test-syncer-{uuid.uuid4().hex[:8]}/"
    a, b, other = base + "a/", base + "b/", base + "c/"
    await store.put(a + "1", {"v": 1})
    await store.put(b + "1", {"v": 1})
    await store.put(other + "1", {"v": 1})
    mirror = Mirror()
    syncer = Syncer(store, [a, b], mirror.update, mirror.on_synced, name="t")
    task = asyncio.create_task(syncer.run())
    try:
        await asyncio.wait_for(syncer.synced.wait(), 10)
        assert mirror.state == {a + "1": {"v": 1}, b + "1": {"v": 1}}
        assert mirror.synced == 1
        await store.put(a + "2", {"v": 2})
        await store.put(a + "1", {"v": 3})
        await store.delete(b + "1")
        await store.put(other + "2", {"v": 1})  # not watched
        await until(lambda: mirror.state == {a + "1": {"v": 3}, a + "2": {"v": 2}})
        await asyncio.sleep(0.2)
        assert other + "2" not in mirror.state
        assert mirror.state == await store_state(store, a, b)
    finally:
        await cancel_and_wait(task)


async def test_a_failing_callback_is_counted_and_does_not_stop_the_sync() -> None:
    store = MemoryStore()
    p = f"/tortie/test-syncer-{uuid.uuid4().hex[:8]}/"
    seen: list[str] = []

    def update(key: str, value: dict[str, Any] | None) -> None:
        seen.append(key)
        if key.endswith("bad"):
            raise ValueError("a bad resource")

    syncer = Syncer(store, [p], update, name="t")
    task = asyncio.create_task(syncer.run())
    try:
        await asyncio.wait_for(syncer.synced.wait(), 10)
        await store.put(p + "bad", {"v": 1})
        await store.put(p + "good", {"v": 1})
        await until(lambda: p + "good" in seen)
        assert syncer.callback_errors == 1
        assert not task.done()
    finally:
        await cancel_and_wait(task)


async def test_an_interrupted_watch_over_a_compaction_resyncs_without_repeats() -> None:
    store = MemoryStore()
    p = "/tortie/test-syncer/"
    for i in range(5):
        await store.put(p + f"k{i}", {"v": i})
    mirror = Mirror()
    syncer = Syncer(store, [p], mirror.update, mirror.on_synced, name="t")
    task = asyncio.create_task(syncer.run())
    try:
        await asyncio.wait_for(syncer.synced.wait(), 10)
        assert len(mirror.state) == 5
        store.watches_interrupted = True
        await store.delete(p + "k0")
        await store.put(p + "k1", {"v": 100})
        await store.put(p + "new", {"v": 1})
        await store.compact(await store.revision())
        store.watches_interrupted = False
        want = await store_state(store, p)
        await until(lambda: mirror.state == want)
        # k2..k4 were unchanged: the resync must not deliver them again.
        assert [k for k, _ in mirror.calls].count(p + "k2") == 1
        assert (p + "k0", None) in mirror.calls
        assert syncer.resyncs == 1 and mirror.synced == 2
        await store.put(p + "after", {"v": 1})
        await until(lambda: p + "after" in mirror.state)
    finally:
        await cancel_and_wait(task)
