"""Store.watch against a real etcd: restarts, compaction while disconnected, the server's
watchers.  Ordering, replay, compaction and closing are the KVStore contract
(tests/contract/test_store_contract.py, run against this Store too)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from datastore.store import KV, Resync, Store, Unavailable, WatchEvent
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


