"""Store CRUD, optimistic concurrency and compare-and-swap against a real etcd."""

from __future__ import annotations

import asyncio
import random

import pytest

from datastore import store as store_module
from datastore.store import (
    KV,
    AlreadyExists,
    Conflict,
    DatastoreError,
    NotFound,
    Store,
)
from lab.etcd import EtcdProcess

pytestmark = pytest.mark.integration

P = "/tortie/v3/test/"


async def test_create_and_get_carry_real_revisions(store: Store, etcd_server: EtcdProcess) -> None:
    before = await store.revision()
    kv = await store.create(P + "a", {"b": [1, 2], "a": "x"})
    assert kv.key == P + "a"
    assert kv.value == {"a": "x", "b": [1, 2]}
    assert kv.mod_revision == kv.create_revision == before + 1
    assert await store.revision() == kv.mod_revision
    assert await store.get(P + "a") == kv
    # Stored as compact JSON with sorted keys.
    raw = etcd_server.etcdctl("get", P + "a", "--print-value-only").strip()
    assert raw == '{"a":"x","b":[1,2]}'


async def test_create_existing_raises_already_exists(store: Store) -> None:
    first = await store.create(P + "a", {"v": 1})
    with pytest.raises(AlreadyExists) as exc:
        await store.create(P + "a", {"v": 2})
    assert exc.value.key == P + "a"
    assert "already exists" in str(exc.value)
    assert await store.get(P + "a") == first


async def test_get_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as exc:
        await store.get(P + "missing")
    assert exc.value.key == P + "missing"
    assert P + "missing" in str(exc.value)


async def test_update_with_revision(store: Store) -> None:
    created = await store.create(P + "a", {"v": 1})
    updated = await store.update(P + "a", {"v": 2}, created.mod_revision)
    assert updated.value == {"v": 2}
    assert updated.mod_revision > created.mod_revision
    assert updated.create_revision == created.create_revision
    assert await store.get(P + "a") == updated

    # A stale revision is a conflict and changes nothing.
    with pytest.raises(Conflict) as exc:
        await store.update(P + "a", {"v": 3}, created.mod_revision)
    assert exc.value.key == P + "a"
    assert exc.value.expected == created.mod_revision
    assert exc.value.actual == updated.mod_revision
    assert "modified concurrently" in str(exc.value)
    assert await store.get(P + "a") == updated

    # Without a revision the key only has to exist.
    again = await store.update(P + "a", {"v": 4})
    assert again.mod_revision > updated.mod_revision
    assert again.create_revision == created.create_revision


async def test_update_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update(P + "missing", {"v": 1})
    with pytest.raises(NotFound):
        await store.update(P + "missing", {"v": 1}, 5)
    with pytest.raises(ValueError):
        await store.update(P + "missing", {"v": 1}, 0)


async def test_put_creates_or_replaces(store: Store) -> None:
    first = await store.put(P + "a", {"v": 1})
    assert first.create_revision == first.mod_revision
    second = await store.put(P + "a", {"v": 2})
    assert second.create_revision == first.create_revision
    assert second.mod_revision > first.mod_revision
    assert await store.get(P + "a") == second


async def test_delete(store: Store) -> None:
    kv = await store.create(P + "a", {"v": 1})
    updated = await store.update(P + "a", {"v": 2})
    with pytest.raises(Conflict) as exc:
        await store.delete(P + "a", kv.mod_revision)
    assert exc.value.actual == updated.mod_revision
    deleted = await store.delete(P + "a", updated.mod_revision)
    assert deleted == updated
    with pytest.raises(NotFound):
        await store.get(P + "a")
    with pytest.raises(NotFound):
        await store.delete(P + "a")
    with pytest.raises(NotFound):
        await store.delete(P + "a", updated.mod_revision)

    await store.create(P + "b", {"v": 1})
    assert (await store.delete(P + "b")).value == {"v": 1}


async def test_delete_prefix_stays_inside_the_prefix(store: Store) -> None:
    for key in ("a/1", "a/2", "a/3/x", "ab", "b"):
        await store.put(P + key, {"k": key})
    assert await store.delete_prefix(P + "a/") == 3
    keys = [kv.key for kv in (await store.list(P))[0]]
    assert keys == [P + "ab", P + "b"]
    assert await store.delete_prefix(P + "nothing/") == 0
    with pytest.raises(ValueError):
        await store.delete_prefix("")


async def test_list_is_sorted_with_revision_of_the_read(store: Store) -> None:
    names = [f"k{i:02d}" for i in range(15)]
    for name in random.sample(names, len(names)):
        await store.put(P + "items/" + name, {"n": name})
    await store.put(P + "itemsX", {"outside": True})
    items, revision = await store.list(P + "items/")
    assert [kv.key for kv in items] == [P + "items/" + n for n in names]
    assert all(kv.value == {"n": kv.key.rsplit("/", 1)[1]} for kv in items)
    assert revision == await store.revision()
    assert all(kv.mod_revision <= revision for kv in items)

    later = await store.put(P + "items/zz", {"n": "zz"})
    assert later.mod_revision > revision
    empty, empty_rev = await store.list(P + "none/")
    assert empty == []
    assert empty_rev == later.mod_revision


async def test_list_pages_are_read_at_one_revision(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "LIST_PAGE_SIZE", 4)
    expected = [await store.put(P + f"p/{i:02d}", {"i": i}) for i in range(23)]
    items, revision = await store.list(P + "p/")
    assert items == expected
    assert revision == expected[-1].mod_revision


async def test_values_must_be_dicts_and_bad_json_is_reported(
    store: Store, etcd_server: EtcdProcess
) -> None:
    with pytest.raises(TypeError):
        await store.put(P + "a", ["not", "a", "dict"])  # type: ignore[arg-type]
    etcd_server.etcdctl("put", P + "raw", "not json")
    with pytest.raises(DatastoreError, match="not valid JSON"):
        await store.get(P + "raw")
    etcd_server.etcdctl("put", P + "list", "[1,2]")
    with pytest.raises(DatastoreError, match="not a JSON object"):
        await store.get(P + "list")


async def _race_updates(
    stores: list[Store], key: str, revision: int
) -> list[KV | BaseException]:
    async def attempt(i: int) -> KV:
        return await stores[i % len(stores)].update(key, {"writer": i}, revision)

    return list(
        await asyncio.gather(*(attempt(i) for i in range(20)), return_exceptions=True)
    )


async def test_two_concurrent_updates_same_revision_one_wins(store: Store) -> None:
    kv = await store.create(P + "a", {"v": 0})
    results = await asyncio.gather(
        store.update(P + "a", {"v": "left"}, kv.mod_revision),
        store.update(P + "a", {"v": "right"}, kv.mod_revision),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, KV)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(conflicts) == 1, results
    assert conflicts[0].expected == kv.mod_revision
    assert conflicts[0].actual == wins[0].mod_revision
    assert await store.get(P + "a") == wins[0]


async def test_two_connections_race_one_wins(store: Store, etcd_server: EtcdProcess) -> None:
    kv = await store.create(P + "a", {"v": 0})
    async with Store(etcd_server.config) as one, Store(etcd_server.config) as two:
        results = await asyncio.gather(
            one.update(P + "a", {"v": "one"}, kv.mod_revision),
            two.update(P + "a", {"v": "two"}, kv.mod_revision),
            return_exceptions=True,
        )
    wins = [r for r in results if isinstance(r, KV)]
    assert len(wins) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    assert (await store.get(P + "a")).value == wins[0].value


async def test_twenty_way_race(store: Store, etcd_server: EtcdProcess) -> None:
    kv = await store.create(P + "a", {"v": 0})
    async with Store(etcd_server.config) as other:
        results = await _race_updates([store, other], P + "a", kv.mod_revision)
    wins = [r for r in results if isinstance(r, KV)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(conflicts) == 19, results
    assert all(c.actual == wins[0].mod_revision for c in conflicts)
    assert await store.get(P + "a") == wins[0]

    # Twenty creators of one key: one creates it, the rest see AlreadyExists.
    created = await asyncio.gather(
        *(store.create(P + "new", {"by": i}) for i in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, KV) for r in created) == 1
    assert sum(isinstance(r, AlreadyExists) for r in created) == 19


async def test_compare_and_swap(store: Store) -> None:
    key = P + "block"
    assert await store.compare_and_swap(key, {"n": 1}, 0) is True
    assert await store.compare_and_swap(key, {"n": 99}, 0) is False
    kv = await store.get(key)
    assert kv.value == {"n": 1}
    assert await store.compare_and_swap(key, {"n": 2}, kv.mod_revision + 1000) is False
    assert await store.compare_and_swap(key, {"n": 2}, kv.mod_revision) is True
    kv2 = await store.get(key)
    assert kv2.value == {"n": 2} and kv2.create_revision == kv.create_revision
    assert await store.compare_and_swap(key, None, kv.mod_revision) is False
    assert await store.compare_and_swap(key, None, kv2.mod_revision) is True
    with pytest.raises(NotFound):
        await store.get(key)


async def test_compare_and_swap_counter_under_contention(
    store: Store, etcd_server: EtcdProcess
) -> None:
    """Twenty writers increment one counter with read/CAS/retry: no increment is lost."""
    key = P + "counter"
    await store.create(key, {"n": 0})

    async def increment(s: Store) -> int:
        retries = 0
        while True:
            kv = await s.get(key)
            if await s.compare_and_swap(key, {"n": kv.value["n"] + 1}, kv.mod_revision):
                return retries
            retries += 1

    async with Store(etcd_server.config) as other:
        retries = await asyncio.gather(*(increment((store, other)[i % 2]) for i in range(20)))
    assert (await store.get(key)).value == {"n": 20}
    assert sum(retries) > 0  # there was contention


async def test_revision_and_compact(store: Store) -> None:
    r1 = await store.revision()
    kv = await store.put(P + "a", {"v": 1})
    assert kv.mod_revision == r1 + 1 == await store.revision()
    await store.compact(kv.mod_revision)
    await store.compact(kv.mod_revision)  # already compacted there: no error
    with pytest.raises(DatastoreError, match="future revision"):
        await store.compact(kv.mod_revision + 1000)


async def test_closed_store_refuses_calls(etcd_server: EtcdProcess) -> None:
    s = Store(etcd_server.config)
    await s.put(P + "x", {"v": 1})  # connects on demand
    assert s.endpoint == etcd_server.endpoint
    await s.delete(P + "x")
    await s.close()
    with pytest.raises(DatastoreError, match="closed"):
        await s.get(P + "x")
