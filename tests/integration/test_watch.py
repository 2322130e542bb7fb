"""Store.watch against a real etcd: ordering, replay, compaction, restarts, cancellation."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from datastore.store import KV, DatastoreError, Resync, Store, Unavailable, WatchEvent
from lab.etcd import EtcdProcess, run_etcd
from tests.support.wait import until

pytestmark = pytest.mark.integration

P = "/tortie/v3/watch/"
T = TypeVar("T")

Watch = AsyncGenerator[WatchEvent | Resync, None]


async def take(watch: Watch, n: int, timeout: float = 10.0) -> list[WatchEvent | Resync]:
    """The next ``n`` items of a watch (fails if they do not come within ``timeout``)."""
    items: list[WatchEvent | Resync] = []
    async with asyncio.timeout(timeout):
        while len(items) < n:
            items.append(await anext(watch))
    return items


class Collector:
    """Consumes a watch in a background task, as a daemon would."""

    def __init__(self, watch: Watch) -> None:
        self.items: list[WatchEvent | Resync] = []
        self.task = asyncio.create_task(self._run(watch))

    async def _run(self, watch: Watch) -> None:
        async for item in watch:
            self.items.append(item)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[WatchEvent | Resync]:
        def arrived() -> bool:
            if self.task.done():
                self.task.result()
                pytest.fail("watch ended")
            return len(self.items) >= n
        await until(arrived, timeout, f"{n} watch items", interval=0.01)
        return self.items

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def put_event(kv: KV, prev: dict[str, object] | None = None) -> WatchEvent:
    return WatchEvent("put", kv.key, kv.value, kv.mod_revision, prev)


async def retry(fn: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Call ``fn`` until it does not raise Unavailable (etcd coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_changes_after_revision_arrive_once_in_order(store: Store) -> None:
    await store.put(P + "before", {"v": 0})  # before the start revision: not delivered
    start = await store.revision()
    watch = store.watch(P, start)
    try:
        a1 = await store.create(P + "a", {"v": 1})
        b1 = await store.create(P + "b", {"v": 1})
        await store.put("/tortie/v3/elsewhere/x", {"v": 1})  # outside the prefix
        a2 = await store.update(P + "a", {"v": 2}, a1.mod_revision)
        deleted_b = await store.delete(P + "b")
        b_rev = await store.revision()
        c1 = await store.create(P + "c", {"v": 1})
        # One transaction deleting three keys: three events at one revision.
        assert await store.delete_prefix(P) == 3
        multi_rev = await store.revision()

        items = await take(watch, 8)
        assert items == [
            put_event(a1),
            put_event(b1),
            put_event(a2, {"v": 1}),
            WatchEvent("delete", P + "b", None, b_rev, deleted_b.value),
            put_event(c1),
            WatchEvent("delete", P + "a", None, multi_rev, {"v": 2}),
            WatchEvent("delete", P + "before", None, multi_rev, {"v": 0}),
            WatchEvent("delete", P + "c", None, multi_rev, {"v": 1}),
        ]
        # The next item is the next change: nothing extra was delivered in between.
        d1 = await store.put(P + "d", {"v": 1})
        assert await take(watch, 1) == [put_event(d1)]
    finally:
        await watch.aclose()


async def test_watch_from_old_revision_replays_history(store: Store) -> None:
    start = await store.revision()
    history = [await store.put(P + f"k{i}", {"i": i}) for i in range(5)]
    history.append(await store.update(P + "k0", {"i": 100}))
    # Started now, from a revision in the past (not compacted): replays everything after.
    watch = store.watch(P, start)
    try:
        items = await take(watch, 6)
        assert items[:5] == [put_event(kv) for kv in history[:5]]
        assert items[5] == put_event(history[5], {"i": 0})
        # ...and from the middle of the history.
        mid = store.watch(P, history[2].mod_revision)
        try:
            assert await take(mid, 3) == items[3:]
        finally:
            await mid.aclose()
    finally:
        await watch.aclose()


async def test_compacted_start_revision_gives_resync_then_events(store: Store) -> None:
    old = await store.put(P + "old", {"v": 1})
    start = old.mod_revision
    await store.update(P + "old", {"v": 2})
    kept = await store.put(P + "kept", {"v": 1})
    gone = await store.put(P + "gone", {"v": 1})
    await store.delete(P + "gone")
    await store.put("/tortie/v3/other/x", {"v": 1})
    await store.compact(await store.revision())

    watch = store.watch(P, start)
    try:
        [resync] = await take(watch, 1)
        assert isinstance(resync, Resync)
        items, revision = await store.list(P)
        assert resync.revision == revision
        assert resync.items == items
        assert [kv.key for kv in resync.items] == [P + "kept", P + "old"]
        assert kept in resync.items and gone.key not in {kv.key for kv in resync.items}

        after = await store.put(P + "new", {"v": 1})
        assert await take(watch, 1) == [put_event(after)]
    finally:
        await watch.aclose()


async def test_watch_resumes_after_etcd_restart(scratch_dir: Path) -> None:
    """Two watchers through a crash and restart of etcd (same data dir): one idle while etcd
    is down (it reconnects when next read), one read continuously by a task (it retries with
    backoff while etcd is down).  Both see every change exactly once, in order."""
    with run_etcd(scratch_dir) as etcd:
        async with Store(etcd.config) as watcher_store:
            start = await watcher_store.revision()
            watch = watcher_store.watch(P, start)
            collector = Collector(watcher_store.watch(P, start))
            try:
                expected: list[WatchEvent] = []
                async with Store(etcd.config) as writer:
                    for i in range(3):
                        expected.append(put_event(await writer.put(P + f"k{i}", {"i": i})))
                    assert await take(watch, 3) == expected
                    # Written before the crash, not yet read from the idle watch.
                    expected.append(
                        put_event(await writer.update(P + "k0", {"i": 10}), {"i": 0})
                    )
                    deleted = await writer.delete(P + "k1")
                    expected.append(
                        WatchEvent("delete", P + "k1", None, await writer.revision(),
                                   deleted.value)
                    )
                    assert await collector.wait_for(5) == expected

                etcd.stop(signal.SIGKILL)
                await asyncio.sleep(0.5)  # the collector's watch retries meanwhile
                etcd.start()

                # Written after the restart, before the idle watcher reconnects.
                async with Store(etcd.config) as writer:
                    for i in range(3, 6):
                        expected.append(put_event(await writer.put(P + f"k{i}", {"i": i})))
                    assert await take(watch, 5) == expected[3:]
                    # Live again: the next change is the next item (no duplicates before it).
                    expected.append(put_event(await writer.put(P + "k9", {"i": 9})))
                    assert await take(watch, 1) == expected[-1:]
                    assert await collector.wait_for(len(expected)) == expected

                # The watcher's Store serves requests again as well.
                assert (await retry(lambda: watcher_store.get(P + "k9"))).value == {"i": 9}
            finally:
                await collector.stop()
                await watch.aclose()


async def test_history_compacted_while_disconnected_gives_resync(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir) as etcd:
        async with Store(etcd.config) as watcher_store:
            start = await watcher_store.revision()
            watch = watcher_store.watch(P, start)
            try:
                first = await watcher_store.put(P + "a", {"v": 1})
                assert await take(watch, 1) == [put_event(first)]
                etcd.restart(signal.SIGTERM)
                async with Store(etcd.config) as writer:
                    await writer.put(P + "b", {"v": 1})
                    await writer.delete(P + "a")
                    await writer.put(P + "c", {"v": 1})
                    await writer.compact(await writer.revision())
                    items, revision = await writer.list(P)

                    [resync] = await take(watch, 1)
                    assert resync == Resync(items, revision)
                    assert [kv.key for kv in items] == [P + "b", P + "c"]

                    later = await writer.put(P + "d", {"v": 1})
                    assert await take(watch, 1) == [put_event(later)]
            finally:
                await watch.aclose()


async def _wait_metric(etcd: EtcdProcess, name: str, value: float, timeout: float = 5.0) -> None:
    await until(lambda: etcd.metric(name) == value, timeout, f"{name} == {value}")


async def test_closing_or_cancelling_a_watch_cancels_it_in_etcd(scratch_dir: Path) -> None:
    watchers = "etcd_debugging_mvcc_watcher_total"
    with run_etcd(scratch_dir) as etcd:
        async with Store(etcd.config) as store:
            assert etcd.metric(watchers) == 0

            # Closing the generator.
            watch = store.watch(P, await store.revision())
            kv = await store.put(P + "a", {"v": 1})
            assert await take(watch, 1) == [put_event(kv)]
            await _wait_metric(etcd, watchers, 1)
            await watch.aclose()
            await _wait_metric(etcd, watchers, 0)

            # Cancelling the task consuming it.
            got: list[WatchEvent | Resync] = []

            async def consume() -> None:
                async for item in store.watch(P, kv.mod_revision):
                    got.append(item)

            task = asyncio.create_task(consume())
            await _wait_metric(etcd, watchers, 1)
            kv2 = await store.put(P + "b", {"v": 1})
            async with asyncio.timeout(5):
                while not got:
                    await asyncio.sleep(0.01)
            assert got == [put_event(kv2)]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _wait_metric(etcd, watchers, 0)

            # The store itself is still fine.
            assert (await store.get(P + "b")) == kv2


async def test_closing_the_store_ends_the_watch(etcd_server: EtcdProcess) -> None:
    s = Store(etcd_server.config)
    watch = s.watch(P, await s.revision())
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)
    await s.close()
    with pytest.raises(DatastoreError, match="closed"):
        await asyncio.wait_for(pending, 5)


def test_watch_arguments_are_checked(etcd_server: EtcdProcess) -> None:
    s = Store(etcd_server.config)
    with pytest.raises(ValueError):
        s.watch("", 0)
    with pytest.raises(ValueError):
        s.watch(P, -1)
