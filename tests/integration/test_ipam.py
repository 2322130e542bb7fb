"""Block IPAM over a real etcd (ipam/allocator.py): allocators on separate connections and in
many processes racing for one node's blocks, the rate, ``tortie ipam check``.  The
allocation logic itself is tested over the in-memory store in
tests/unit/test_ipam_allocator.py."""

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
from datastore.keys import resource_key, resource_prefix
from datastore.model_network import IPPool
from datastore.resources import Resources, to_resource
from datastore.store import NotFound, Store
from ipam import keys
from ipam.allocator import IPAM
from ipam.blocks import Block
from ipam.node_release import remove_node
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


async def blocks_of(ipam: IPAM, node: str) -> list[Block]:
    return [b for b in await ipam.list_blocks() if b.affinity == f"host:{node}"]


async def assign_n(ipam: IPAM, pools: list[IPPool], n: int, tag: str = "h") -> list[str]:
    out: list[str] = []
    for i in range(n):
        out += await ipam.auto_assign(f"{tag}{i}", ATTRS, pools)
    return out


# --- basics --------------------------------------------------------------------------------------

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


# --- queries for other packages ------------------------------------------------------------------


async def test_ips_by_handle(store: Store) -> None:
    """A handle's addresses in address order (v4 first), across blocks and families."""
    v4 = await add_pool(store, "v4", "10.10.0.0/24", blockSize=30)
    v6 = await add_pool(store, "v6", "fd00:10::/120", blockSize=126)
    ipam = IPAM(store, "node-1")
    assert await ipam.ips_by_handle("nobody") == []
    got = await ipam.auto_assign("h", ATTRS, [v6], num=5)
    got += await ipam.auto_assign("h", ATTRS, [v4], num=5)   # two blocks of each family
    await ipam.auto_assign("other", ATTRS, [v4])
    assert len(await ipam.list_blocks()) == 4
    assert await IPAM(store, "node-2").ips_by_handle("h") == [
        "10.10.0.0", "10.10.0.1", "10.10.0.2", "10.10.0.3", "10.10.0.4",
        "fd00:10::", "fd00:10::1", "fd00:10::2", "fd00:10::3", "fd00:10::4"]
    assert await ipam.ips_by_handle("other") == ["10.10.0.5"]
    await ipam.release_ips(["10.10.0.1", "fd00:10::4"])
    assert "10.10.0.1" not in await ipam.ips_by_handle("h")
    assert len(await ipam.ips_by_handle("h")) == 8
    await ipam.release_by_handle("h")
    assert await ipam.ips_by_handle("h") == []
    assert (await ipam.check({"10.10.0.5": "wep"})).clean


async def test_blocks_affine_to(store: Store) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24", blockSize=30)
    one, two = IPAM(store, "node-1"), IPAM(store, "node-2")
    await one.auto_assign("a", ATTRS, [pool], num=5)
    await two.auto_assign("b", ATTRS, [pool])
    assert [b.cidr for b in await two.blocks_affine_to("node-1")] == ["10.10.0.0/30",
                                                                      "10.10.0.4/30"]
    assert [b.cidr for b in await one.blocks_affine_to("node-2")] == ["10.10.0.8/30"]
    assert all(b.revision > 0 for b in await one.blocks_affine_to("node-1"))
    assert await one.blocks_affine_to("node-3") == []


async def test_handles_recorded_only_in_blocks_of(store: Store) -> None:
    """Handles whose document names only a node's blocks, even one no block holds (what a
    crash between the handle write and the block write leaves)."""
    pool = await add_pool(store, "p", "10.10.0.0/24", blockSize=30)
    one, two = IPAM(store, "node-1"), IPAM(store, "node-2")
    await one.auto_assign("tortie.a", ATTRS, [pool])
    await two.auto_assign("tortie.b", ATTRS, [pool])
    await two.auto_assign("tortie.spread", ATTRS, [pool])
    await one.assign_ip("10.10.0.1", "tortie.spread", ATTRS)  # in both nodes' blocks
    await store.put(keys.handle_key("tortie.crashed"), {"handle": "tortie.crashed",
                                                        "blocks": {"10.10.0.0/30": 1}})
    await store.put(keys.handle_key("tortie.empty"), {"handle": "tortie.empty", "blocks": {}})
    assert await two.handles_recorded_only_in_blocks_of("node-1") == {"tortie.a",
                                                                      "tortie.crashed"}
    assert await one.handles_recorded_only_in_blocks_of("node-2") == {"tortie.b"}
    assert await one.handles_recorded_only_in_blocks_of("node-3") == set()


async def test_delete_host(store: Store) -> None:
    pool = await add_pool(store, "p", "10.10.0.0/24")
    await IPAM(store, "node-1").auto_assign("a", ATTRS, [pool])
    await store.get(keys.host_key("node-1"))
    gc = IPAM(store, "gc")
    assert await gc.delete_host("node-1") is True
    with pytest.raises(NotFound):
        await store.get(keys.host_key("node-1"))
    assert await gc.delete_host("node-1") is False
    assert [b.affinity_node for b in await gc.list_blocks()] == ["node-1"]  # blocks stay
    with pytest.raises(ValueError, match="invalid node name"):
        await gc.delete_host("a/b")


async def test_check_sorts_both_families(store: Store) -> None:
    v4 = await add_pool(store, "v4", "10.10.0.0/24")
    v6 = await add_pool(store, "v6", "fd00:10::/120", blockSize=122)
    ipam = IPAM(store, "node-1")
    await ipam.auto_assign("a", ATTRS, [v6])
    await ipam.auto_assign("a", ATTRS, [v4])
    report = await ipam.check({"10.10.9.9": "wep-x", "fd00:10::99": "wep-y"})
    assert report.leaked == [("10.10.0.0", "a"), ("fd00:10::", "a")]
    assert report.missing == [("10.10.9.9", "wep-x"), ("fd00:10::99", "wep-y")]


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


# --- a node removed ------------------------------------------------------------------------------


async def put_wep(store: Store, node: str, pod: str, container: str, ip: str) -> None:
    name = f"{node}-k8s-{pod}-eth0"
    await store.put(resource_key("workloadendpoints", name, "default"), {
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"node": node, "orchestrator": "k8s", "pod": pod, "endpoint": "eth0",
                 "containerID": container, "ipNetworks": [f"{ip}/32"]}})


async def node_with_pods(store: Store, node: str, pool: IPPool, pods: int,
                         with_resource: bool = True) -> tuple[list[str], str]:
    """``pods`` pods on ``node`` (address + endpoint, as the CNI handler leaves them) and
    its VXLAN tunnel address; its Node resource records the tunnel address."""
    ipam = IPAM(store, node)
    ips = []
    for i in range(pods):
        cid = f"{node}-c{i}"
        [ip] = await ipam.auto_assign(f"tortie.{cid}", {"pod": f"p{i}", "namespace": "default",
                                                        "container": cid}, [pool])
        await put_wep(store, node, f"p{i}", cid, ip)
        ips.append(ip)
    [tunnel] = await ipam.auto_assign(f"vxlan-tunnel-addr-{node}", {"node": node}, [pool])
    if with_resource:
        info, obj = to_resource(doc("Node", node, {"bgp": {"ipv4Address": "192.0.2.11/24"},
                                                   "ipv4VXLANTunnelAddr": tunnel}))
        await Resources(store).create(info, obj)
    return ips, tunnel


async def test_remove_node_over_etcd(store: Store) -> None:
    """node3 with 70 pods (two blocks; node1 borrows nothing) and a tunnel address: the
    removal deletes its endpoints, releases every address, deletes both blocks, its host
    document and its Node; node1 keeps everything."""
    pool = await add_pool(store, "p", "10.10.0.0/24", vxlanMode="Always")
    ips1, tunnel1 = await node_with_pods(store, "node1", pool, 2)
    ips3, tunnel3 = await node_with_pods(store, "node3", pool, 70)
    admin = IPAM(store, "tortie-admin")
    assert [b.cidr for b in await admin.blocks_affine_to("node3")] == ["10.10.0.64/26",
                                                                        "10.10.0.128/26"]
    out = await remove_node(store, "node3", "tortie-admin")
    assert sorted(out.addresses) == sorted(ips3) and out.tunnel_addresses == [tunnel3]
    assert len(out.endpoints) == 70 and out.node_deleted
    assert (out.deleted_blocks, out.kept_blocks) == (["10.10.0.64/26", "10.10.0.128/26"], [])
    assert await admin.blocks_affine_to("node3") == []
    assert await admin.ips_by_handle("vxlan-tunnel-addr-node3") == []
    for key in (keys.host_key("node3"), resource_key("nodes", "node3")):
        with pytest.raises(NotFound):
            await store.get(key)
    kvs, _ = await store.list(resource_prefix("workloadendpoints"))
    assert sorted(kv.value["spec"]["node"] for kv in kvs) == ["node1", "node1"]
    assert [b.cidr for b in await admin.blocks_affine_to("node1")] == ["10.10.0.0/26"]
    wanted = {ip: "wep" for ip in ips1} | {tunnel1: "node1 tunnel"}
    assert (await admin.check(wanted, nodes={"node1"})).clean


async def test_unaffined_block_over_etcd(store: Store) -> None:
    """A block of the removed node still holding an address of a pod of node1 (borrowed)
    loses its affinity and stays, that address untouched; releasing it deletes the
    block."""
    pool = await add_pool(store, "p", "10.10.0.0/26")   # one block: node1 must borrow
    await node_with_pods(store, "node3", pool, 1)
    [borrowed] = await IPAM(store, "node1").auto_assign("tortie.b", {"pod": "b"}, [pool])
    out = await remove_node(store, "node3", "tortie-admin")
    assert (out.deleted_blocks, out.kept_blocks) == ([], ["10.10.0.0/26"])
    [block] = await IPAM(store, "tortie-admin").list_blocks()
    assert block.affinity is None and [ip for ip, _ in block.allocated()] == [borrowed]
    assert await IPAM(store, "node1").release_by_handle("tortie.b") == [borrowed]
    assert await IPAM(store, "tortie-admin").list_blocks() == []


def test_cli_delete_node_releases_what_it_held(etcd_endpoint: str) -> None:
    """``tortie delete node`` (and ``delete -f`` of a Node document) as calicoctl: the
    node's endpoints, addresses, tunnel address and blocks go with it; ``ipam check`` is
    clean after."""
    async def setup() -> None:
        async with Store(EtcdConfig(endpoints=(etcd_endpoint,))) as store:
            pool = await add_pool(store, "p", "10.10.0.0/24", vxlanMode="Always")
            for node in ("node1", "node2", "node3"):
                await node_with_pods(store, node, pool, 1)
    asyncio.run(setup())
    assert tortie(etcd_endpoint, "ipam", "check").code == 0
    r = tortie(etcd_endpoint, "delete", "node", "node3")
    assert r.code == 0, r.text
    assert "node node3: deleted 1 workload endpoint(s), released 1 endpoint address(es) " \
           "and 1 tunnel address(es), deleted 1 block(s)" in r.out
    assert "Successfully deleted 1 'Node' resource(s)" in r.out
    r = tortie(etcd_endpoint, "ipam", "check")
    assert r.code == 0 and "checked 4 allocation(s) in 2 block(s)" in r.out, r.text
    shown = tortie(etcd_endpoint, "ipam", "show", "--show-blocks").out
    assert "Block node3" not in shown and "Block node2" in shown
    assert "node3" not in tortie(etcd_endpoint, "get", "workloadendpoints", "-A").out
    r = tortie(etcd_endpoint, "delete", "node", "node3")
    assert r.code == 1 and "Node(node3) does not exist" in r.err, r.text
    # delete -f of a Node document: the same release
    node2 = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node2\n"
    r = tortie(etcd_endpoint, "delete", "-f", "-", stdin=node2)
    assert r.code == 0, r.text
    assert "node node2: deleted 1 workload endpoint(s)" in r.out
    r = tortie(etcd_endpoint, "ipam", "check")
    assert r.code == 0 and "checked 2 allocation(s) in 1 block(s)" in r.out, r.text
