"""The :class:`~datastore.backend.KVStore` contract, run against both implementations: the
etcd :class:`~datastore.store.Store` (on the session etcd) and
:class:`~datastore.memory.MemoryStore`.  Whatever a test here asserts, code written against
the protocol may rely on, and tests of that code may use the MemoryStore.

What only etcd has (the stored bytes, paging, several connections, restarts, the server's
watchers) stays in tests/integration/test_store.py and test_watch.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterator

import pytest

from datastore.backend import (
    KV,
    TXN_MAX_OPS,
    AlreadyExists,
    Conflict,
    DatastoreError,
    KVStore,
    NotFound,
    Resync,
    Unavailable,
    WatchEvent,
    Write,
)
from datastore.memory import MemoryStore

P = "/tortie/v3/contract/"

Watch = AsyncGenerator[WatchEvent | Resync, None]


@pytest.fixture(params=[pytest.param("etcd", marks=pytest.mark.integration), "memory"])
def kv(request: pytest.FixtureRequest, aio_loop: asyncio.AbstractEventLoop) -> Iterator[KVStore]:
    """The store under test: the etcd Store (``/tortie/`` wiped) or a fresh MemoryStore."""
    if request.param == "etcd":
        yield request.getfixturevalue("store")
        return
    memory = MemoryStore()
    yield memory
    aio_loop.run_until_complete(memory.close())


async def take(watch: Watch, n: int, timeout: float = 10.0) -> list[WatchEvent | Resync]:
    """The next ``n`` items of a watch (fails if they do not come within ``timeout``)."""
    items: list[WatchEvent | Resync] = []
    async with asyncio.timeout(timeout):
        while len(items) < n:
            items.append(await anext(watch))
    return items


def put_event(kv_: KV, prev: dict[str, object] | None = None) -> WatchEvent:
    return WatchEvent("put", kv_.key, kv_.value, kv_.mod_revision, prev)


# --- reads and writes -------------------------------------------------------------------------

async def test_create_and_get_carry_revisions(kv: KVStore) -> None:
    before = await kv.revision()
    created = await kv.create(P + "a", {"b": [1, 2], "a": "x"})
    assert created.key == P + "a"
    assert created.value == {"a": "x", "b": [1, 2]}
    assert created.mod_revision == created.create_revision == before + 1
    assert await kv.revision() == created.mod_revision
    assert await kv.get(P + "a") == created


async def test_values_are_copies_and_must_be_dicts(kv: KVStore) -> None:
    value = {"list": [1, 2], "tuple": (3, 4)}
    await kv.put(P + "a", value)
    value["list"].append(99)
    got = await kv.get(P + "a")
    assert got.value == {"list": [1, 2], "tuple": [3, 4]}  # stored as JSON
    got.value["list"].append(5)
    assert (await kv.get(P + "a")).value["list"] == [1, 2]
    with pytest.raises(TypeError):
        await kv.put(P + "b", ["not", "a", "dict"])
    with pytest.raises(TypeError):
        await kv.create(P + "b", "text")


async def test_create_existing_raises_already_exists(kv: KVStore) -> None:
    first = await kv.create(P + "a", {"v": 1})
    revision = await kv.revision()
    with pytest.raises(AlreadyExists) as exc:
        await kv.create(P + "a", {"v": 2})
    assert exc.value.key == P + "a"
    assert "already exists" in str(exc.value)
    assert await kv.get(P + "a") == first
    assert await kv.revision() == revision  # a failed write changes no revision


async def test_get_missing_raises_not_found(kv: KVStore) -> None:
    with pytest.raises(NotFound) as exc:
        await kv.get(P + "missing")
    assert exc.value.key == P + "missing"
    assert P + "missing" in str(exc.value)


async def test_update_with_revision(kv: KVStore) -> None:
    created = await kv.create(P + "a", {"v": 1})
    updated = await kv.update(P + "a", {"v": 2}, created.mod_revision)
    assert updated.value == {"v": 2}
    assert updated.mod_revision == created.mod_revision + 1
    assert updated.create_revision == created.create_revision
    assert await kv.get(P + "a") == updated

    # A stale revision is a conflict and changes nothing.
    with pytest.raises(Conflict) as exc:
        await kv.update(P + "a", {"v": 3}, created.mod_revision)
    assert exc.value.key == P + "a"
    assert exc.value.expected == created.mod_revision
    assert exc.value.actual == updated.mod_revision
    assert "modified concurrently" in str(exc.value)
    assert await kv.get(P + "a") == updated

    # Without a revision the key only has to exist.
    again = await kv.update(P + "a", {"v": 4})
    assert again.mod_revision > updated.mod_revision
    assert again.create_revision == created.create_revision


async def test_update_missing_raises_not_found(kv: KVStore) -> None:
    with pytest.raises(NotFound):
        await kv.update(P + "missing", {"v": 1})
    with pytest.raises(NotFound):
        await kv.update(P + "missing", {"v": 1}, 5)
    with pytest.raises(ValueError):
        await kv.update(P + "missing", {"v": 1}, 0)


async def test_put_creates_or_replaces(kv: KVStore) -> None:
    first = await kv.put(P + "a", {"v": 1})
    assert first.create_revision == first.mod_revision
    second = await kv.put(P + "a", {"v": 2})
    assert second.create_revision == first.create_revision
    assert second.mod_revision == first.mod_revision + 1
    assert await kv.get(P + "a") == second


async def test_delete(kv: KVStore) -> None:
    created = await kv.create(P + "a", {"v": 1})
    updated = await kv.update(P + "a", {"v": 2})
    with pytest.raises(Conflict) as exc:
        await kv.delete(P + "a", created.mod_revision)
    assert exc.value.actual == updated.mod_revision
    deleted = await kv.delete(P + "a", updated.mod_revision)
    assert deleted == updated
    with pytest.raises(NotFound):
        await kv.get(P + "a")
    with pytest.raises(NotFound):
        await kv.delete(P + "a")
    with pytest.raises(NotFound):
        await kv.delete(P + "a", updated.mod_revision)
    with pytest.raises(ValueError):
        await kv.delete(P + "a", 0)

    await kv.create(P + "b", {"v": 1})
    assert (await kv.delete(P + "b")).value == {"v": 1}
    # Created again: a new create revision.
    again = await kv.create(P + "a", {"v": 3})
    assert again.create_revision == again.mod_revision > created.create_revision


async def test_delete_prefix_stays_inside_the_prefix(kv: KVStore) -> None:
    for key in ("a/1", "a/2", "a/3/x", "ab", "b"):
        await kv.put(P + key, {"k": key})
    revision = await kv.revision()
    assert await kv.delete_prefix(P + "a/") == 3
    assert await kv.revision() == revision + 1  # one transaction
    keys = [item.key for item in (await kv.list(P))[0]]
    assert keys == [P + "ab", P + "b"]
    assert await kv.delete_prefix(P + "nothing/") == 0
    assert await kv.revision() == revision + 1  # deleting nothing changes nothing
    with pytest.raises(ValueError):
        await kv.delete_prefix("")


async def test_list_is_sorted_with_revision_of_the_read(kv: KVStore) -> None:
    names = [f"k{i:02d}" for i in range(15)]
    for name in random.sample(names, len(names)):
        await kv.put(P + "items/" + name, {"n": name})
    await kv.put(P + "itemsX", {"outside": True})
    items, revision = await kv.list(P + "items/")
    assert [item.key for item in items] == [P + "items/" + n for n in names]
    assert all(item.value == {"n": item.key.rsplit("/", 1)[1]} for item in items)
    assert revision == await kv.revision()
    assert all(item.mod_revision <= revision for item in items)

    later = await kv.put(P + "items/zz", {"n": "zz"})
    assert later.mod_revision > revision
    empty, empty_rev = await kv.list(P + "none/")
    assert empty == []
    assert empty_rev == later.mod_revision
    with pytest.raises(ValueError):
        await kv.list("")


async def test_get_many_reads_the_existing_keys(kv: KVStore) -> None:
    a = await kv.put(P + "a", {"v": 1})
    c = await kv.put(P + "c", {"v": 3})
    assert await kv.get_many([P + "a", P + "b", P + "c"]) == {P + "a": a, P + "c": c}
    assert await kv.get_many([]) == {}
    many = [P + f"m/{i:03}" for i in range(TXN_MAX_OPS + 3)]
    for key in many[::50]:
        await kv.put(key, {"k": key})
    assert sorted(await kv.get_many(many)) == many[::50]


async def test_get_many_reads_prefixes_with_the_keys(kv: KVStore) -> None:
    """Every key under the prefixes too, in the same read; a key both named and under a
    prefix once; a key that only shares the prefix's text but not as a prefix is not read."""
    a = await kv.put(P + "a", {"v": 1})
    under = [await kv.put(P + f"pre/{i}", {"i": i}) for i in range(3)]
    await kv.put(P + "prefix-not", {"v": 2})
    found = await kv.get_many([P + "a", P + "missing", P + "pre/1"], [P + "pre/"])
    assert found == {P + "a": a, **{item.key: item for item in under}}
    assert await kv.get_many([], [P + "none/"]) == {}
    with pytest.raises(ValueError):
        await kv.get_many([], [""])


# --- optimistic concurrency --------------------------------------------------------------------

async def test_two_concurrent_updates_same_revision_one_wins(kv: KVStore) -> None:
    created = await kv.create(P + "a", {"v": 0})
    results = await asyncio.gather(
        kv.update(P + "a", {"v": "left"}, created.mod_revision),
        kv.update(P + "a", {"v": "right"}, created.mod_revision),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, KV)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(conflicts) == 1, results
    assert conflicts[0].expected == created.mod_revision
    assert conflicts[0].actual == wins[0].mod_revision
    assert await kv.get(P + "a") == wins[0]


async def test_twenty_way_race(kv: KVStore) -> None:
    created = await kv.create(P + "a", {"v": 0})
    results = await asyncio.gather(
        *(kv.update(P + "a", {"writer": i}, created.mod_revision) for i in range(20)),
        return_exceptions=True)
    wins = [r for r in results if isinstance(r, KV)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(conflicts) == 19, results
    assert all(c.actual == wins[0].mod_revision for c in conflicts)
    assert await kv.get(P + "a") == wins[0]

    # Twenty creators of one key: one creates it, the rest see AlreadyExists.
    made = await asyncio.gather(
        *(kv.create(P + "new", {"by": i}) for i in range(20)), return_exceptions=True)
    assert sum(isinstance(r, KV) for r in made) == 1
    assert sum(isinstance(r, AlreadyExists) for r in made) == 19


async def test_compare_and_swap(kv: KVStore) -> None:
    key = P + "block"
    assert await kv.compare_and_swap(key, {"n": 1}, 0) is True
    assert await kv.compare_and_swap(key, {"n": 99}, 0) is False
    first = await kv.get(key)
    assert first.value == {"n": 1}
    assert await kv.compare_and_swap(key, {"n": 2}, first.mod_revision + 1000) is False
    assert await kv.compare_and_swap(key, {"n": 2}, first.mod_revision) is True
    second = await kv.get(key)
    assert second.value == {"n": 2} and second.create_revision == first.create_revision
    assert second.mod_revision == first.mod_revision + 1
    assert await kv.compare_and_swap(key, None, first.mod_revision) is False
    assert await kv.compare_and_swap(key, None, second.mod_revision) is True
    with pytest.raises(NotFound):
        await kv.get(key)
    with pytest.raises(ValueError):
        await kv.compare_and_swap(key, {"n": 3}, -1)


async def test_compare_and_swap_counter_under_contention(kv: KVStore) -> None:
    """Twenty writers increment one counter with read/CAS/retry: no increment is lost."""
    key = P + "counter"
    await kv.create(key, {"n": 0})

    async def increment() -> int:
        retries = 0
        while True:
            current = await kv.get(key)
            if await kv.compare_and_swap(key, {"n": current.value["n"] + 1},
                                         current.mod_revision):
                return retries
            retries += 1

    retries = await asyncio.gather(*(increment() for _ in range(20)))
    assert (await kv.get(key)).value == {"n": 20}
    assert sum(retries) > 0  # there was contention


async def test_commit_is_all_or_nothing(kv: KVStore) -> None:
    a = await kv.put(P + "a", {"v": 1})
    b = await kv.put(P + "b", {"v": 1})
    revision = await kv.commit([Write(P + "a", {"v": 2}, a.mod_revision),
                                Write(P + "b", None, b.mod_revision),
                                Write(P + "c", {"v": 1}, 0)])
    assert revision == b.mod_revision + 1 == await kv.revision()
    assert (await kv.get(P + "a")).mod_revision == revision
    assert (await kv.get(P + "c")) == KV(P + "c", {"v": 1}, revision, revision)
    with pytest.raises(NotFound):
        await kv.get(P + "b")
    # One stale expectation: nothing is written.
    assert await kv.commit([Write(P + "a", {"v": 3}, revision),
                            Write(P + "c", {"v": 3}, 0)]) is None
    assert (await kv.get(P + "a")).value == {"v": 2}
    assert await kv.revision() == revision
    with pytest.raises(ValueError, match="nothing"):
        await kv.commit([])
    with pytest.raises(ValueError, match="twice"):
        await kv.commit([Write(P + "x", {}, 0), Write(P + "x", {}, 0)])
    with pytest.raises(ValueError, match="at most"):
        await kv.commit([Write(f"{P}{i}", {}, 0) for i in range(TXN_MAX_OPS + 1)])
    with pytest.raises(ValueError, match="negative"):
        await kv.commit([Write(P + "x", {}, -1)])


async def test_revision_and_compact(kv: KVStore) -> None:
    r1 = await kv.revision()
    put = await kv.put(P + "a", {"v": 1})
    assert put.mod_revision == r1 + 1 == await kv.revision()
    await kv.compact(put.mod_revision)
    await kv.compact(put.mod_revision)  # already compacted there: no error
    with pytest.raises(DatastoreError, match="future revision"):
        await kv.compact(put.mod_revision + 1000)
    assert (await kv.get(P + "a")) == put  # compaction keeps the current state


async def test_closed_store_refuses_calls(kv: KVStore) -> None:
    await kv.put(P + "x", {"v": 1})
    await kv.close()
    with pytest.raises(DatastoreError, match="closed"):
        await kv.get(P + "x")
    with pytest.raises(DatastoreError, match="closed"):
        await kv.put(P + "x", {"v": 2})


# --- watch --------------------------------------------------------------------------------------

async def test_changes_after_revision_arrive_once_in_order(kv: KVStore) -> None:
    await kv.put(P + "before", {"v": 0})  # before the start revision: not delivered
    start = await kv.revision()
    watch = kv.watch(P, start)
    try:
        a1 = await kv.create(P + "a", {"v": 1})
        b1 = await kv.create(P + "b", {"v": 1})
        await kv.put("/tortie/v3/elsewhere/x", {"v": 1})  # outside the prefix
        a2 = await kv.update(P + "a", {"v": 2}, a1.mod_revision)
        deleted_b = await kv.delete(P + "b")
        b_rev = await kv.revision()
        c1 = await kv.create(P + "c", {"v": 1})
        # One transaction deleting three keys: three events at one revision.
        assert await kv.delete_prefix(P) == 3
        multi_rev = await kv.revision()

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
        d1 = await kv.put(P + "d", {"v": 1})
        assert await take(watch, 1) == [put_event(d1)]
    finally:
        await watch.aclose()


async def test_a_commit_is_watched_in_its_order(kv: KVStore) -> None:
    old = await kv.put(P + "z", {"v": 0})
    watch = kv.watch(P, old.mod_revision)
    try:
        revision = await kv.commit([Write(P + "z", None, old.mod_revision),
                                    Write(P + "m", {"v": 1}, 0),
                                    Write(P + "a", {"v": 1}, 0)])
        assert revision is not None
        assert await take(watch, 3) == [
            WatchEvent("delete", P + "z", None, revision, {"v": 0}),
            WatchEvent("put", P + "m", {"v": 1}, revision, None),
            WatchEvent("put", P + "a", {"v": 1}, revision, None),
        ]
        # A compare-and-swap delete is an event too; a failed one is none.
        assert not await kv.compare_and_swap(P + "m", None, revision + 100)
        assert await kv.compare_and_swap(P + "m", None, revision)
        assert await take(watch, 1) == [
            WatchEvent("delete", P + "m", None, revision + 1, {"v": 1})]
    finally:
        await watch.aclose()


async def test_watch_from_old_revision_replays_history(kv: KVStore) -> None:
    start = await kv.revision()
    history = [await kv.put(P + f"k{i}", {"i": i}) for i in range(5)]
    history.append(await kv.update(P + "k0", {"i": 100}))
    # Started now, from a revision in the past (not compacted): replays everything after.
    watch = kv.watch(P, start)
    try:
        items = await take(watch, 6)
        assert items[:5] == [put_event(item) for item in history[:5]]
        assert items[5] == put_event(history[5], {"i": 0})
        # ...and from the middle of the history.
        mid = kv.watch(P, history[2].mod_revision)
        try:
            assert await take(mid, 3) == items[3:]
        finally:
            await mid.aclose()
    finally:
        await watch.aclose()


async def test_compacted_start_revision_gives_resync_then_events(kv: KVStore) -> None:
    old = await kv.put(P + "old", {"v": 1})
    start = old.mod_revision
    await kv.update(P + "old", {"v": 2})
    kept = await kv.put(P + "kept", {"v": 1})
    gone = await kv.put(P + "gone", {"v": 1})
    await kv.delete(P + "gone")
    await kv.put("/tortie/v3/other/x", {"v": 1})
    await kv.compact(await kv.revision())

    watch = kv.watch(P, start)
    try:
        [resync] = await take(watch, 1)
        assert isinstance(resync, Resync)
        items, revision = await kv.list(P)
        assert resync.revision == revision
        assert resync.items == items
        assert [item.key for item in resync.items] == [P + "kept", P + "old"]
        assert kept in resync.items and gone.key not in {item.key for item in resync.items}

        after = await kv.put(P + "new", {"v": 1})
        assert await take(watch, 1) == [put_event(after)]
    finally:
        await watch.aclose()


async def test_a_live_watch_outlives_a_compaction(kv: KVStore) -> None:
    watch = kv.watch(P, await kv.revision())
    try:
        first = await kv.put(P + "a", {"v": 1})
        assert await take(watch, 1) == [put_event(first)]
        await kv.put("/tortie/v3/other/x", {"v": 1})
        await kv.compact(await kv.revision())
        second = await kv.put(P + "b", {"v": 1})
        assert await take(watch, 1) == [put_event(second)]
    finally:
        await watch.aclose()


async def test_cancelling_the_consumer_ends_the_watch(kv: KVStore) -> None:
    got: list[WatchEvent | Resync] = []
    start = await kv.revision()

    async def consume() -> None:
        async for item in kv.watch(P, start):
            got.append(item)

    task = asyncio.create_task(consume())
    first = await kv.put(P + "a", {"v": 1})
    async with asyncio.timeout(5):
        while not got:
            await asyncio.sleep(0.01)
    assert got == [put_event(first)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await kv.get(P + "a")) == first  # the store itself is still fine


async def test_closing_the_store_ends_the_watch(kv: KVStore) -> None:
    watch = kv.watch(P, await kv.revision())
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)
    await kv.close()
    with pytest.raises(DatastoreError, match="closed"):
        await asyncio.wait_for(pending, 5)


def test_watch_arguments_are_checked(kv: KVStore) -> None:
    with pytest.raises(ValueError):
        kv.watch("", 0)
    with pytest.raises(ValueError):
        kv.watch(P, -1)


# --- only the MemoryStore -----------------------------------------------------------------------

async def test_memory_store_failure_makes_every_call_raise() -> None:
    store = MemoryStore()
    await store.put(P + "a", {"v": 1})
    store.failure = Unavailable("etcd unreachable (test)")
    with pytest.raises(Unavailable):
        await store.get(P + "a")
    with pytest.raises(Unavailable):
        await store.put(P + "a", {"v": 2})
    store.failure = None
    assert (await store.get(P + "a")).value == {"v": 1}


async def test_memory_store_interrupted_watches_resume_or_resync() -> None:
    store = MemoryStore()
    watch = store.watch(P, await store.revision())
    try:
        first = await store.put(P + "a", {"v": 1})
        assert await take(watch, 1) == [put_event(first)]
        store.watches_interrupted = True
        second = await store.put(P + "b", {"v": 1})
        pending = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.05)
        assert not pending.done()
        store.watches_interrupted = False
        assert await asyncio.wait_for(pending, 5) == put_event(second)  # nothing lost
        # compacted while interrupted: a Resync, then the changes after it
        store.watches_interrupted = True
        await store.delete(P + "a")
        await store.put("/tortie/v3/other/x", {"v": 1})
        await store.compact(await store.revision())  # the delete's revision is gone
        store.watches_interrupted = False
        [resync] = await take(watch, 1)
        assert resync == Resync([await store.get(P + "b")], await store.revision())
        third = await store.put(P + "c", {"v": 1})
        assert await take(watch, 1) == [put_event(third)]
    finally:
        await watch.aclose()
