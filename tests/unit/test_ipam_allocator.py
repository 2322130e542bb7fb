"""Block IPAM logic (ipam/allocator.py) over the in-memory store: allocation order, block
claims and release, borrowing, the IPAM configuration, reservations, specific addresses,
IPv6, the consistency check.  The same allocator against etcd, and many allocators racing
in processes and connections, is tests/integration/test_ipam.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from datastore.backend import KV, KVStore, NotFound, Unavailable, Write
from datastore.keys import resource_key
from datastore.memory import MemoryStore
from datastore.model_network import IPPool
from datastore.resources import Resources, to_resource
from ipam import keys
from ipam.allocator import (
    IPAM,
    AddressInUse,
    IPAMConfig,
    IPAMExhausted,
    NotInPool,
)
from ipam.blocks import Block

ATTRS = {"pod": "web-0", "namespace": "default", "container": "c0"}


@pytest.fixture
def store() -> Iterator[KVStore]:
    """A fresh in-memory store (this module's tests need no etcd)."""
    yield MemoryStore()


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name},
            "spec": spec}


async def add_pool(store: KVStore, name: str, cidr: str, **spec: Any) -> IPPool:
    info, obj = to_resource(doc("IPPool", name, {"cidr": cidr, **spec}))
    created: IPPool = await Resources(store).create(info, obj)
    return created


async def add_reservation(store: KVStore, name: str, *cidrs: str) -> None:
    info, obj = to_resource(doc("IPReservation", name, {"reservedCIDRs": list(cidrs)}))
    await Resources(store).create(info, obj)


async def set_config(store: KVStore, **spec: Any) -> None:
    await store.put(keys.IPAM_CONFIG, {"apiVersion": "projectcalico.org/v3",
                                       "kind": "IPAMConfiguration",
                                       "metadata": {"name": "default"}, "spec": spec})


async def blocks_of(ipam: IPAM, node: str) -> list[Block]:
    return [b for b in await ipam.list_blocks() if b.affinity == f"host:{node}"]


async def assign_n(ipam: IPAM, pools: list[IPPool], n: int, tag: str = "h") -> list[str]:
    out: list[str] = []
    for i in range(n):
        out += await ipam.auto_assign(f"{tag}{i}", ATTRS, pools)
    return out



# --- allocation -------------------------------------------------------------------------------

async def test_allocate_and_release(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "node-1")
    ips = await ipam.auto_assign("tortie.c1", ATTRS, [pool])
    assert ips == ["10.10.0.0"]
    [block] = await ipam.list_blocks()
    assert block.cidr == "10.10.0.0/26" and block.affinity == "host:node-1"
    assert block.attributes == [{"handle": "tortie.c1", "node": "node-1", "pod": "web-0",
                                 "namespace": "default", "container": "c0"}]
    raw = (await store.get(keys.block_key("10.10.0.0/26"))).value
    assert raw == block.to_dict()
    handle = (await store.get(keys.handle_key("tortie.c1"))).value
    assert handle == {"handle": "tortie.c1", "blocks": {"10.10.0.0/26": 1}}
    assert await ipam.handles_on_node("node-1") == {"tortie.c1": ["10.10.0.0"]}

    assert await ipam.release_by_handle("tortie.c1") == ["10.10.0.0"]
    assert await ipam.list_blocks() == []  # empty affine block given back to the pool
    kvs, _ = await store.list(keys.HANDLES)
    assert kvs == []
    assert (await ipam.check({})).clean


async def test_release_by_handle_with_the_callers_read(store: KVStore) -> None:
    """The handle document read by the caller (in its own transaction) saves the first read;
    None says there is no handle: nothing to free, nothing read; a stale read is retried."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "node-1")
    await assign_n(ipam, [pool], 2)
    key = IPAM.handle_read_key("h0")
    assert key == keys.handle_key("h0")
    assert await ipam.release_by_handle("h0", None) == []  # the caller saw no handle
    assert await ipam.handles_on_node("node-1") == {"h0": ["10.10.0.0"], "h1": ["10.10.0.1"]}
    kv = await store.get(key)
    assert await ipam.release_by_handle("h0", kv) == ["10.10.0.0"]
    stale = await store.get(IPAM.handle_read_key("h1"))
    await store.put(IPAM.handle_read_key("h1"), stale.value)  # another revision now
    assert await ipam.release_by_handle("h1", stale) == ["10.10.0.1"]
    assert (await ipam.check({})).clean


async def test_num_addresses_and_all_or_nothing(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/29", blockSize=29)
    ipam = IPAM(store, "n1")
    assert await ipam.auto_assign("a", ATTRS, [pool], num=3) == ["10.10.0.0", "10.10.0.1",
                                                                  "10.10.0.2"]
    with pytest.raises(IPAMExhausted):
        await ipam.auto_assign("b", ATTRS, [pool], num=6)
    # nothing of the failed request was kept
    assert len(await ipam.auto_assign("c", ATTRS, [pool], num=5)) == 5
    assert (await ipam.check({})).leaked == [(f"10.10.0.{i}", h) for i, h in
                                             enumerate("aaaccccc")]


async def test_fills_a_block_then_claims_the_next(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "node-1")
    ips = await assign_n(ipam, [pool], 65)
    assert len(set(ips)) == 65
    assert ips[63] == "10.10.0.63" and ips[64] == "10.10.0.64"
    assert [b.cidr for b in await blocks_of(ipam, "node-1")] == ["10.10.0.0/26",
                                                                 "10.10.0.64/26"]
    [usage] = await ipam.usage()
    assert (usage.size, usage.allocated, usage.blocks, usage.blocks_per_node) == \
        (256, 65, 2, {"node-1": 2})


async def test_exhausted_pool(store: KVStore) -> None:
    pool = await add_pool(store, "tiny", "10.10.0.0/30", blockSize=30)
    ipam = IPAM(store, "n1")
    assert len(await assign_n(ipam, [pool], 4)) == 4
    with pytest.raises(IPAMExhausted, match="tiny") as e:
        await ipam.auto_assign("x", ATTRS, [pool])
    assert e.value.code == 100
    with pytest.raises(IPAMExhausted, match="no enabled IP pool"):
        await ipam.auto_assign("x", ATTRS, [])


async def test_borrowing_and_strict_affinity(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/25")  # two /26 blocks
    a, b = IPAM(store, "node-a"), IPAM(store, "node-b")
    assert await a.auto_assign("a0", ATTRS, [pool]) == ["10.10.0.0"]
    await assign_n(b, [pool], 64, "b")  # node-b's block 10.10.0.64/26 is full
    # no free block left: node-b borrows from node-a's block
    assert await b.auto_assign("b64", ATTRS, [pool]) == ["10.10.0.1"]
    assert [x.cidr for x in await blocks_of(a, "node-a")] == ["10.10.0.0/26"]
    # a borrowed address, released, does not give node-a's block away
    assert await b.release_by_handle("b64") == ["10.10.0.1"]
    assert len(await blocks_of(a, "node-a")) == 1

    await set_config(store, strictAffinity=True)
    assert (await b.config()).strict_affinity
    with pytest.raises(IPAMExhausted, match="strictAffinity"):
        await b.auto_assign("b65", ATTRS, [pool])
    # node-a can still use its own block
    assert await a.auto_assign("a1", ATTRS, [pool]) == ["10.10.0.2"]


async def test_max_blocks_per_host(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await set_config(store, maxBlocksPerHost=1)
    a, b = IPAM(store, "node-a"), IPAM(store, "node-b")
    await assign_n(a, [pool], 64, "a")
    with pytest.raises(IPAMExhausted, match="maxBlocksPerHost"):
        await a.auto_assign("a64", ATTRS, [pool])
    assert await b.auto_assign("b0", ATTRS, [pool]) == ["10.10.0.64"]
    # over the limit, node-a borrows from node-b's block rather than claiming
    assert await a.auto_assign("a64", ATTRS, [pool]) == ["10.10.0.65"]
    assert len(await blocks_of(a, "node-a")) == 1


async def test_auto_allocate_blocks_off(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await set_config(store, autoAllocateBlocks=False)
    ipam = IPAM(store, "n1")
    with pytest.raises(IPAMExhausted, match="autoAllocateBlocks"):
        await ipam.auto_assign("x", ATTRS, [pool])
    assert await ipam.config() == IPAMConfig(auto_allocate_blocks=False)


async def test_empty_block_is_released_but_busy_ones_stay(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "n1")
    ips = await assign_n(ipam, [pool], 66)
    assert len(await ipam.list_blocks()) == 2
    await ipam.release_ips(ips[64:65])  # the second block keeps one address
    assert len(await ipam.list_blocks()) == 2
    await ipam.release_ips(ips[65:])
    assert [b.cidr for b in await ipam.list_blocks()] == ["10.10.0.0/26"]
    # the next claim takes the first free block again
    await ipam.auto_assign("more", ATTRS, [pool])
    assert len(await ipam.list_blocks()) == 2


async def test_ip_reservations_are_respected(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await add_reservation(store, "r1", "10.10.0.0/30", "10.10.0.63")
    await add_reservation(store, "r2", "10.10.0.64/26", "10.10.0.130/31")
    ipam = IPAM(store, "n1")
    ips = await assign_n(ipam, [pool], 64)
    assert ips[0] == "10.10.0.4" and "10.10.0.63" not in ips
    # the first block has 59 usable addresses; the wholly reserved second one is skipped
    assert ips[58] == "10.10.0.62" and ips[59] == "10.10.0.128"
    assert "10.10.0.130" not in ips and "10.10.0.131" not in ips
    assert [b.cidr for b in await ipam.list_blocks()] == ["10.10.0.0/26", "10.10.0.128/26"]


async def test_specific_address(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await add_pool(store, "off", "10.20.0.0/24", disabled=True)
    ipam = IPAM(store, "n1")
    assert await ipam.assign_ip("10.10.0.77", "tortie.s", ATTRS) == "10.10.0.77"
    [block] = await ipam.list_blocks()
    assert block.cidr == "10.10.0.64/26" and block.affinity == "host:n1"
    with pytest.raises(AddressInUse, match=r"tortie\.s"):
        await ipam.assign_ip("10.10.0.77", "tortie.t", ATTRS)
    assert await ipam.assign_ip("10.10.0.77", "tortie.s", ATTRS) == "10.10.0.77"  # idempotent
    with pytest.raises(NotInPool):
        await ipam.assign_ip("10.30.0.1", "tortie.u", ATTRS)
    with pytest.raises(NotInPool):
        await ipam.assign_ip("10.20.0.1", "tortie.u", ATTRS)
    # automatic assignment uses the block too, but not .77
    ips = await assign_n(ipam, [pool], 64)
    assert "10.10.0.77" not in ips and len(set(ips)) == 64
    report = await ipam.check({ip: f"wep-{ip}" for ip in [*ips, "10.10.0.77"]})
    assert report.clean, report.to_dict()
    assert await ipam.release_by_handle("tortie.s") == ["10.10.0.77"]


class LosesBlockAnswers(MemoryStore):
    """Applies the next ``lose`` block writes, then says etcd did not answer (as when the
    answer is lost while etcd changes leaders): written, though the caller hears it failed."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = 0

    def _lost(self, key: str) -> None:
        if self.lose and key.startswith(keys.BLOCKS):
            self.lose -= 1
            raise Unavailable(f"etcd did not answer the write of {key} (test)")

    async def create(self, key: str, value: dict[str, Any]) -> KV:
        kv = await super().create(key, value)
        self._lost(key)
        return kv

    async def update(self, key: str, value: dict[str, Any], revision: int | None = None) -> KV:
        kv = await super().update(key, value, revision)
        self._lost(key)
        return kv

    async def commit(self, writes: Sequence[Write]) -> int | None:
        revision = await super().commit(writes)
        for w in writes:  # a transaction with a block write: its answer is lost too
            self._lost(w.key)
        return revision


async def test_a_block_write_in_doubt_stays_covered_by_its_handle() -> None:
    """A block write that failed without saying whether it happened must leave the handle
    document covering the address: the DEL that follows the failed ADD releases by handle,
    and only what the handle records is found."""
    store = LosesBlockAnswers()
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "n1")
    first = await ipam.auto_assign("tortie.a", ATTRS, [pool])  # the block exists now
    store.lose = 1
    with pytest.raises(Unavailable):
        await ipam.auto_assign("tortie.b", ATTRS, [pool])
    # the write happened: the address is b's, and b's handle records it
    [block] = await ipam.list_blocks()
    held = block.ips_for_handle("tortie.b")
    assert held and held != first
    report = await ipam.check({first[0]: "a", held[0]: "b"})
    assert report.clean, report.to_dict()
    assert await ipam.release_by_handle("tortie.b") == held
    # the same for a specific address, in an existing block and in a new one
    for ip in ("10.10.0.9", "10.10.0.200"):
        store.lose = 1
        with pytest.raises(Unavailable):
            await ipam.assign_ip(ip, "tortie.c", ATTRS)
        assert await ipam.release_by_handle("tortie.c") == [ip]
    assert await ipam.release_by_handle("tortie.a") == first
    assert (await ipam.check({})).clean
    # every handle document is gone with its addresses
    assert (await store.list(keys.HANDLES))[0] == []


async def test_release_is_idempotent(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "n1")
    a = await ipam.auto_assign("a", ATTRS, [pool])
    b = await ipam.auto_assign("b", ATTRS, [pool], num=2)
    assert await ipam.release_by_handle("nope") == []
    assert await ipam.release_ips(["10.10.0.200", "192.0.2.1"]) == []
    assert await ipam.release_ips(b[:1]) == b[:1]
    assert await ipam.release_ips(b[:1]) == []
    assert (await store.get(keys.handle_key("b"))).value["blocks"] == {"10.10.0.0/26": 1}
    assert await ipam.release_by_handle("b") == b[1:]
    assert await ipam.release_by_handle("b") == []
    assert await ipam.release_by_handle("a") == a
    assert await ipam.release_by_handle("a") == []
    assert await ipam.list_blocks() == []
    assert (await ipam.check({})).clean


async def test_ipv6(store: KVStore) -> None:
    pool = await add_pool(store, "v6", "fd00:10::/120")
    ipam = IPAM(store, "n1")
    ips = await assign_n(ipam, [pool], 65)
    assert ips[0] == "fd00:10::" and ips[64] == "fd00:10::40"
    assert [b.cidr for b in await ipam.list_blocks()] == ["fd00:10::/122", "fd00:10::40/122"]
    for i in range(65):
        await ipam.release_by_handle(f"h{i}")
    assert await ipam.list_blocks() == []


async def test_check_reports_problems(store: KVStore) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "gone-node")
    [ip1] = await ipam.auto_assign("h1", ATTRS, [pool])
    [ip2] = await ipam.auto_assign("h2", ATTRS, [pool])
    await store.put(keys.handle_key("ghost"), {"handle": "ghost",
                                               "blocks": {"10.10.0.0/26": 2}})
    report = await ipam.check({ip1: "wep-1", "10.10.0.99/32": "wep-2"}, nodes={"node-1"})
    assert not report.clean
    assert report.leaked == [(ip2, "h2")]
    assert report.missing == [("10.10.0.99", "wep-2")]
    assert report.orphan_blocks == [("10.10.0.0/26", "gone-node")]
    assert [h for h, _ in report.dangling_handles] == ["ghost"]
    assert report.to_dict()["addressesWithoutEndpoint"] == [{"ip": ip2, "handle": "h2"}]


async def test_recorded_claim_is_completed(store: KVStore) -> None:
    """A claimer that recorded its claim on the host document and died before creating
    the block: the next allocation for that node completes that claim."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await store.put(keys.host_key("n1"), {"node": "n1", "claim": "10.10.0.128/26"})
    ipam = IPAM(store, "n1")
    assert await ipam.auto_assign("h", ATTRS, [pool]) == ["10.10.0.128"]


async def test_pool_block_size_changed(store: KVStore) -> None:
    """Blocks made with an earlier blockSize stay valid: releases and specific addresses
    find them, and new claims do not overlap them."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    ipam = IPAM(store, "n1")
    ips = await assign_n(ipam, [pool], 2)
    key = resource_key("ippools", "p")
    value = (await store.get(key)).value
    value["spec"]["blockSize"] = 28
    await store.put(key, value)
    [resized] = await ipam.pools()
    assert await ipam.assign_ip("10.10.0.40", "s", ATTRS) == "10.10.0.40"
    assert [b.cidr for b in await ipam.list_blocks()] == ["10.10.0.0/26"]
    await assign_n(ipam, [resized], 61, "x")          # fills the old /26
    assert await ipam.auto_assign("y", ATTRS, [resized]) == ["10.10.0.64"]
    assert [b.cidr for b in await ipam.list_blocks()] == ["10.10.0.0/26", "10.10.0.64/28"]
    assert await ipam.release_ips([*ips, "10.10.0.40"]) == [*ips, "10.10.0.40"]
    assert (await ipam.check({})).dangling_handles == []


async def test_release_host_affinities_of_a_removed_node(store: KVStore) -> None:
    """Empty blocks of the node go (and then its host document); a block still holding an
    address stays, and so does the host document."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    gone, other = IPAM(store, "gone-node"), IPAM(store, "node-1")
    a = await assign_n(gone, [pool], 65, "g")   # two blocks
    [kept] = await other.auto_assign("o", ATTRS, [pool])
    await store.get(keys.host_key("gone-node"))
    assert [b.cidr for b in await blocks_of(gone, "gone-node")] == ["10.10.0.0/26",
                                                                     "10.10.0.64/26"]
    await IPAM(store, "gc").release_ips(a[:64])   # the first block is empty now
    released, busy = await IPAM(store, "gc").release_host_affinities("gone-node")
    assert (released, busy) == (["10.10.0.0/26"], ["10.10.0.64/26"])
    await store.get(keys.host_key("gone-node"))   # kept: a block of it is still in use
    await IPAM(store, "gc").release_ips(a[64:])
    assert await IPAM(store, "gc").release_host_affinities("gone-node") == (
        ["10.10.0.64/26"], [])
    with pytest.raises(NotFound):
        await store.get(keys.host_key("gone-node"))
    assert [b.affinity_node for b in await gone.list_blocks()] == ["node-1"]
    assert (await other.check({kept: "wep"}, nodes={"node-1"})).clean


async def test_one_transaction_paths_fall_back_when_the_cache_is_stale(store: KVStore) -> None:
    """Allocation (handle + block) and release by handle (block + handle delete) are one
    transaction each when this node's cached block is current; when another process of the
    node changed the block meanwhile, the transaction writes nothing and the general path
    gives the right answer."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    mine, other = IPAM(store, "n1"), IPAM(store, "n1")
    a = await mine.auto_assign("tortie.a", ATTRS, [pool])
    b = await other.auto_assign("tortie.b", ATTRS, [pool])  # mine's cached block is stale
    c = await mine.auto_assign("tortie.c", ATTRS, [pool])
    assert len({*a, *b, *c}) == 3
    assert await other.release_by_handle("tortie.b") == b  # stale again for mine
    assert await mine.release_by_handle("tortie.a") == a
    assert await mine.release_by_handle("tortie.c") == c
    assert (await mine.check({})).clean
    assert (await store.list(keys.HANDLES))[0] == []
    # a second block for a handle that holds one already: the handle document counts both
    d = await mine.auto_assign("tortie.d", ATTRS, [pool], num=70)
    assert len(set(d)) == 70
    assert sum((await store.get(keys.handle_key("tortie.d"))).value["blocks"].values()) == 70
    assert sorted(await mine.release_by_handle("tortie.d")) == sorted(d)
    assert (await mine.check({})).clean
