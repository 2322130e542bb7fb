"""What only the etcd Store has: the stored bytes, paged lists, several connections racing,
connecting on demand.  The KVStore contract itself (CRUD, optimistic concurrency,
compare-and-swap, revisions, compaction) is tests/contract/test_store_contract.py, run
against this Store too."""

from __future__ import annotations

import asyncio

import pytest

from datastore import store as store_module
from datastore.store import (
    KV,
    AlreadyExists,
    Conflict,
    DatastoreError,
    Store,
)
from lab.etcd import EtcdProcess

pytestmark = pytest.mark.integration

P = "/tortie/v3/test/"


async def test_values_are_stored_in_etcd_as_compact_sorted_json(
    store: Store, etcd_server: EtcdProcess
) -> None:
    kv = await store.create(P + "a", {"b": [1, 2], "a": "x"})
    assert await store.get(P + "a") == kv
    raw = etcd_server.etcdctl("get", P + "a", "--print-value-only").strip()
    assert raw == '{"a":"x","b":[1,2]}'


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
        await store.put(P + "a", ["not", "a", "dict"])
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


async def test_closed_store_refuses_calls(etcd_server: EtcdProcess) -> None:
    s = Store(etcd_server.config)
    await s.put(P + "x", {"v": 1})  # connects on demand
    assert s.endpoint == etcd_server.endpoint
    await s.delete(P + "x")
    await s.close()
    with pytest.raises(DatastoreError, match="closed"):
        await s.get(P + "x")
