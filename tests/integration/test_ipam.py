"""Block IPAM over a real etcd (ipam/allocator.py), including many concurrent allocators."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from datastore.etcd_config import EtcdConfig
from datastore.keys import resource_key
from datastore.model_network import IPPool
from datastore.resources import Resources, to_resource
from datastore.store import NotFound, Store
from ipam import keys
from ipam.allocator import (
    IPAM,
    AddressInUse,
    IPAMConfig,
    IPAMExhausted,
    NotInPool,
)
from ipam.blocks import Block
from lab.etcd import EtcdProcess
from tests.support.cli import tortie

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ATTRS = {"pod": "web-0", "namespace": "default", "container": "c0"}


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name},
            "spec": spec}


async def add_pool(store: Store, name: str, cidr: str, **spec: Any) -> IPPool:
    info, obj = to_resource(doc("IPPool", name, {"cidr": cidr, **spec}))
    created: IPPool = await Resources(store).create(info, obj)
    return created


async def add_reservation(store: Store, name: str, *cidrs: str) -> None:
    info, obj = to_resource(doc("IPReservation", name, {"reservedCIDRs": list(cidrs)}))
    await Resources(store).create(info, obj)


async def set_config(store: Store, **spec: Any) -> None:
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


# --- basics --------------------------------------------------------------------------------------

async def test_allocate_and_release(store: Store) -> None:
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


async def test_num_addresses_and_all_or_nothing(store: Store) -> None:
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


async def test_fills_a_block_then_claims_the_next(store: Store) -> None:
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


async def test_exhausted_pool(store: Store) -> None:
    pool = await add_pool(store, "tiny", "10.10.0.0/30", blockSize=30)
    ipam = IPAM(store, "n1")
    assert len(await assign_n(ipam, [pool], 4)) == 4
    with pytest.raises(IPAMExhausted, match="tiny") as e:
        await ipam.auto_assign("x", ATTRS, [pool])
    assert e.value.code == 100
    with pytest.raises(IPAMExhausted, match="no enabled IP pool"):
        await ipam.auto_assign("x", ATTRS, [])


async def test_borrowing_and_strict_affinity(store: Store) -> None:
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


async def test_max_blocks_per_host(store: Store) -> None:
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


async def test_auto_allocate_blocks_off(store: Store) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await set_config(store, autoAllocateBlocks=False)
    ipam = IPAM(store, "n1")
    with pytest.raises(IPAMExhausted, match="autoAllocateBlocks"):
        await ipam.auto_assign("x", ATTRS, [pool])
    assert await ipam.config() == IPAMConfig(auto_allocate_blocks=False)


async def test_empty_block_is_released_but_busy_ones_stay(store: Store) -> None:
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


async def test_ip_reservations_are_respected(store: Store) -> None:
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


async def test_specific_address(store: Store) -> None:
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


async def test_release_is_idempotent(store: Store) -> None:
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


async def test_ipv6(store: Store) -> None:
    pool = await add_pool(store, "v6", "fd00:10::/120")
    ipam = IPAM(store, "n1")
    ips = await assign_n(ipam, [pool], 65)
    assert ips[0] == "fd00:10::" and ips[64] == "fd00:10::40"
    assert [b.cidr for b in await ipam.list_blocks()] == ["fd00:10::/122", "fd00:10::40/122"]
    for i in range(65):
        await ipam.release_by_handle(f"h{i}")
    assert await ipam.list_blocks() == []


async def test_check_reports_problems(store: Store) -> None:
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


async def test_cache_follows_other_writers(store: Store, etcd_server: EtcdProcess) -> None:
    """Two allocators for one node on separate connections: each one's cached view goes
    stale as the other writes (allocates, empties and deletes blocks) and must not matter."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    async with Store(etcd_server.config) as other_store:
        a, b = IPAM(store, "n1"), IPAM(other_store, "n1")
        ips_a = await assign_n(a, [pool], 10, "a")
        ips_b = await assign_n(b, [pool], 10, "b")   # b finds a's block, does not claim
        assert len(set(ips_a + ips_b)) == 20
        assert len(await blocks_of(a, "n1")) == 1
        for i in range(10):
            await b.release_by_handle(f"a{i}")
            await a.release_by_handle(f"b{i}")
        assert await a.list_blocks() == []               # deleted by whoever emptied it
        ips = await assign_n(a, [pool], 3, "c") + await assign_n(b, [pool], 3, "d")
        assert len(set(ips)) == 6 and len(await blocks_of(a, "n1")) == 1


async def test_recorded_claim_is_completed(store: Store) -> None:
    """A claimer that recorded its claim on the host document and died before creating
    the block: the next allocation for that node completes that claim."""
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await store.put(keys.host_key("n1"), {"node": "n1", "claim": "10.10.0.128/26"})
    ipam = IPAM(store, "n1")
    assert await ipam.auto_assign("h", ATTRS, [pool]) == ["10.10.0.128"]


async def test_pool_block_size_changed(store: Store) -> None:
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


async def test_sequential_rate(store: Store) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/20")
    ipam = IPAM(store, "n1")
    n = 300
    t0 = time.monotonic()
    ips = await assign_n(ipam, [pool], n)
    rate = n / (time.monotonic() - t0)
    assert len(set(ips)) == n
    print(f"\nsequential: {rate:.0f} allocations/s (one node, one allocator)")


# --- concurrency: many OS processes --------------------------------------------------------------

CHILD = r"""
import asyncio, json, sys, time
from datastore.etcd_config import EtcdConfig
from datastore.store import Store
from ipam.allocator import IPAM
from ipam.pools import select_pools

async def main(endpoint, node, tag, count, mode):
    async with Store(EtcdConfig(endpoints=(endpoint,), timeout=20.0)) as store:
        ipam = IPAM(store, node)
        pools = select_pools(await ipam.pools(), {}, node=node)
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
        out = []
        for i in range(count):
            handle = f"tortie.{tag}-{i}"
            if mode == "assign":
                out += await ipam.auto_assign(handle, {"pod": f"{tag}-{i}"}, pools)
            else:
                out += await ipam.release_by_handle(handle)
        print(json.dumps({"ips": out, "seconds": time.monotonic() - t0}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
"""


def run_processes(endpoint: str, jobs: list[tuple[str, str]], count: int,
                  mode: str) -> tuple[list[list[str]], float]:
    """Start one process per (node, tag), let them all go at once; returns each one's
    addresses and the wall time from the start signal until the last one finished."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, endpoint, node, tag, str(count),
                               mode], cwd=REPO, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node, tag in jobs]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                _, err = p.communicate(timeout=10)
                raise AssertionError(f"helper did not start: {line!r} {err}")
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results: list[list[str]] = []
        for p in procs:
            out, err = p.communicate(timeout=50)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1])["ips"])
        return results, time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def test_eight_processes_one_node(store: Store, etcd_server: EtcdProcess) -> None:
    """8 processes x 100 allocations for ONE node at once: no address twice, the minimum
    number of blocks (ceil(800/64) = 13), and nothing left after releasing everything."""
    await add_pool(store, "p", "10.20.0.0/16")
    jobs = [("node-1", f"p{i}") for i in range(8)]
    results, seconds = await asyncio.to_thread(run_processes, etcd_server.endpoint, jobs,
                                               100, "assign")
    ips = [ip for r in results for ip in r]
    assert len(ips) == 800 and len(set(ips)) == 800
    ipam = IPAM(store, "node-1")
    blocks = await ipam.list_blocks()
    assert len(blocks) == math.ceil(800 / 64) == 13
    assert all(b.affinity == "host:node-1" for b in blocks)
    report = await ipam.check({ip: "wep" for ip in ips})
    assert report.clean and report.allocated == 800, report.to_dict()
    print(f"\n8 processes, one node: {800 / seconds:.0f} allocations/s")

    released, _ = await asyncio.to_thread(run_processes, etcd_server.endpoint, jobs, 100,
                                          "release")
    assert sorted(ip for r in released for ip in r) == sorted(ips)
    assert (await ipam.check({})).clean
    assert await ipam.list_blocks() == []
    assert (await store.list(keys.HANDLES))[0] == []


async def test_ten_nodes_at_once(store: Store, etcd_server: EtcdProcess) -> None:
    """10 node identities x 100 allocations at once (10 processes): no duplicates, each
    node uses exactly ceil(100/64) = 2 blocks, clean after release."""
    await add_pool(store, "p", "10.30.0.0/16")
    jobs = [(f"node-{i}", f"n{i}") for i in range(10)]
    results, seconds = await asyncio.to_thread(run_processes, etcd_server.endpoint, jobs,
                                               100, "assign")
    ips = [ip for r in results for ip in r]
    assert len(ips) == 1000 and len(set(ips)) == 1000
    ipam = IPAM(store, "node-0")
    blocks = await ipam.list_blocks()
    per_node: dict[str, int] = {}
    for b in blocks:
        per_node[b.affinity_node or ""] = per_node.get(b.affinity_node or "", 0) + 1
    assert per_node == {f"node-{i}": 2 for i in range(10)}
    # every node's addresses come from its own blocks (nobody had to borrow)
    for (node, _), got in zip(jobs, results, strict=True):
        mine = [b for b in blocks if b.affinity_node == node]
        assert all(any(b.contains(ip) for b in mine) for ip in got)
        assert set(await ipam.handles_on_node(node)) == {f"tortie.n{node[5:]}-{i}"
                                                          for i in range(100)}
    print(f"\n10 nodes in 10 processes: {1000 / seconds:.0f} allocations/s")

    released, _ = await asyncio.to_thread(run_processes, etcd_server.endpoint, jobs, 100,
                                          "release")
    assert len([ip for r in released for ip in r]) == 1000
    report = await ipam.check({}, nodes={f"node-{i}" for i in range(10)})
    assert report.clean, report.to_dict()
    assert await ipam.list_blocks() == []


async def test_concurrent_tasks_one_process(store: Store, etcd_server: EtcdProcess) -> None:
    """The same race inside one event loop: 4 nodes x 3 allocators (own Store each)."""
    pool = await add_pool(store, "p", "10.40.0.0/16")
    stores = [Store(etcd_server.config) for _ in range(12)]
    try:
        ipams = [IPAM(s, f"node-{i % 4}") for i, s in enumerate(stores)]

        async def work(k: int, ipam: IPAM) -> list[str]:
            return await assign_n(ipam, [pool], 25, f"t{k}-")

        results = await asyncio.gather(*(work(k, i) for k, i in enumerate(ipams)))
        ips = [ip for r in results for ip in r]
        assert len(set(ips)) == 300
        for n in range(4):
            assert len(await blocks_of(ipams[0], f"node-{n}")) == 2  # ceil(75/64)
        await asyncio.gather(*(ipams[k].release_by_handle(f"t{k}-{i}")
                               for k in range(12) for i in range(25)))
        assert await ipams[0].list_blocks() == []
        assert (await ipams[0].check({})).clean
    finally:
        for s in stores:
            await s.close()


async def test_release_host_affinities_of_a_removed_node(store: Store) -> None:
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


def test_check_counts_node_tunnel_addresses_as_in_use(etcd_endpoint: str) -> None:
    """``tortie ipam check``: a tunnel address a Node records is in use, not leaked; the
    tunnel address of a node that is gone is."""
    async def setup() -> None:
        async with Store(EtcdConfig(endpoints=(etcd_endpoint,))) as store:
            pool = await add_pool(store, "p", "10.10.0.0/24", vxlanMode="Always")
            for node in ("node-1", "node-2"):
                [ip] = await IPAM(store, node).auto_assign(f"vxlan-tunnel-addr-{node}",
                                                           {"node": node}, [pool])
                if node == "node-1":
                    info, obj = to_resource(doc("Node", node, {
                        "bgp": {"ipv4Address": "192.0.2.11/24"},
                        "ipv4VXLANTunnelAddr": ip}))
                    await Resources(store).create(info, obj)
    asyncio.run(setup())
    r = tortie(etcd_endpoint, "ipam", "check")
    assert r.code == 1, r.text
    assert "checked 2 allocation(s)" in r.out
    assert [line.split()[1] for line in r.out.splitlines() if "leaked:" in line] == [
        "10.10.0.64"]   # node-2's: it has no Node resource
    assert "vxlan-tunnel-addr-node-2" in r.out and "vxlan-tunnel-addr-node-1" not in r.out
    assert "orphan block: 10.10.0.64/26 is affine to node-2" in r.out
