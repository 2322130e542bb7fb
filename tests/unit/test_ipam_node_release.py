"""Removing a node (ipam/node_release.py, and the IPAM calls under it) over the in-memory
store: endpoints deleted and their addresses released, tunnel addresses released, empty
blocks deleted and busy ones un-affined, the host document and then the Node deleted.  The
same against etcd is tests/integration/test_ipam.py; on a lab, test_routing_lab.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from datastore.backend import KVStore, NotFound
from datastore.keys import resource_key, resource_prefix
from datastore.kinds import by_plural
from datastore.memory import MemoryStore
from datastore.model_network import IPPool
from datastore.resources import ResourceConflict, ResourceNotFound, Resources, to_resource
from ipam import keys
from ipam.allocator import IPAM
from ipam.blocks import Block
from ipam.handles import tunnel_handles
from ipam.node_release import (
    NodeRelease,
    endpoint_addresses,
    endpoint_handle,
    endpoint_on,
    release_node,
    remove_node,
)

ADMIN = "tortie-admin"


@pytest.fixture
def store() -> Iterator[KVStore]:
    yield MemoryStore()


def wep_doc(name: str, node: str, cid: str | None, ips: list[str],
            namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"node": node, "orchestrator": "k8s", "pod": name,
                            "endpoint": "eth0", "ipNetworks": [f"{ip}/32" for ip in ips]}
    if cid is not None:
        spec["containerID"] = cid
    return {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": f"{node}-k8s-{name}-eth0", "namespace": namespace},
            "spec": spec}


async def add_pool(store: KVStore, cidr: str = "10.10.0.0/24", **spec: Any) -> IPPool:
    info, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                             "metadata": {"name": "p"}, "spec": {"cidr": cidr, **spec}})
    created: IPPool = await Resources(store).create(info, obj)
    return created


async def add_node(store: KVStore, name: str) -> str:
    info, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                             "metadata": {"name": name},
                             "spec": {"bgp": {"ipv4Address": "192.0.2.3/24"}}})
    created = await Resources(store).create(info, obj)
    return str(created.metadata.resourceVersion)


async def pod(store: KVStore, pool: IPPool, node: str, name: str,
              endpoint: bool = True) -> str:
    """A pod on ``node`` as the CNI handler leaves it: its address, and its endpoint."""
    cid = f"c-{name}"
    [ip] = await IPAM(store, node).auto_assign(
        f"tortie.{cid}", {"pod": name, "namespace": "default", "container": cid}, [pool])
    if endpoint:
        d = wep_doc(name, node, cid, [ip])
        await store.put(resource_key("workloadendpoints", d["metadata"]["name"], "default"), d)
    return ip


async def blocks(store: KVStore) -> dict[str, str | None]:
    return {b.cidr: b.affinity_node for b in await IPAM(store, ADMIN).list_blocks()}


async def weps(store: KVStore) -> list[str]:
    kvs, _ = await store.list(resource_prefix("workloadendpoints"))
    return sorted(kv.value["metadata"]["name"] for kv in kvs)


# --- pure ------------------------------------------------------------------------------------


def test_endpoint_fields() -> None:
    d = wep_doc("p", "node3", "abc", ["10.0.0.1", "fd00::1"])
    assert endpoint_on(d, "node3") and not endpoint_on(d, "node1")
    assert not endpoint_on({"spec": None}, "node3") and not endpoint_on({}, "node3")
    assert endpoint_handle(d) == "tortie.abc"
    assert endpoint_handle(wep_doc("p", "n", None, [])) is None
    assert endpoint_handle({"spec": {"containerID": "a/b"}}) is None  # not a handle name
    assert endpoint_addresses(d) == ["10.0.0.1", "fd00::1"]
    assert endpoint_addresses({"spec": {"ipNetworks": ["nonsense", "10.0.0.0/30"]}}) == [
        "10.0.0.0"]
    assert endpoint_addresses({"spec": {"ipNetworks": "10.0.0.1"}}) == []


def test_tunnel_handles_are_calicos_names() -> None:
    assert tunnel_handles("node3") == ("vxlan-tunnel-addr-node3", "vxlan-v6-tunnel-addr-node3",
                                       "ipip-tunnel-addr-node3")


def test_summary_names_what_was_released() -> None:
    r = NodeRelease("n", endpoints=["default/a"], addresses=["10.0.0.1"],
                    tunnel_addresses=["10.0.0.2"], deleted_blocks=["10.0.0.0/26"],
                    kept_blocks=["10.0.0.64/26"])
    text = r.summary()
    assert text.startswith("node n: deleted 1 workload endpoint(s), released 1 endpoint")
    assert "1 tunnel address(es), deleted 1 block(s)" in text
    assert "still in use lost their affinity (10.0.0.64/26)" in text
    assert "lost their affinity" not in NodeRelease("n").summary()
    assert r.fields()["kept_blocks"] == "10.0.0.64/26" and NodeRelease("n").fields()[
        "endpoints"] == "-"


def test_allocated_by() -> None:
    b = Block.new("10.0.0.0/30", "host:n1")
    b.assign_ip("10.0.0.1", {"handle": "a", "node": "n2"})
    b.assign_ip("10.0.0.2", {"handle": "b"})
    assert [b.allocated_by(ip) for ip in ("10.0.0.0", "10.0.0.1", "10.0.0.2")] == [
        None, "n2", "n1"]


# --- IPAM underneath ---------------------------------------------------------------------------


async def test_release_host_affinities_not_empty_unaffines(store: KVStore) -> None:
    """Without ``must_be_empty`` a block still in use loses its affinity and stays, the host
    document goes; releasing its last address then deletes it."""
    pool = await add_pool(store, blockSize=29)
    gone = IPAM(store, "gone")
    ips = [(await gone.auto_assign(f"h{i}", {}, [pool]))[0] for i in range(9)]  # 2 blocks
    ipam = IPAM(store, ADMIN)
    await ipam.release_ips(ips[:8])   # by another than its node: the block stays, empty
    assert await blocks(store) == {"10.10.0.0/29": "gone", "10.10.0.8/29": "gone"}
    assert await ipam.release_host_affinities("gone", must_be_empty=False) == (
        ["10.10.0.0/29"], ["10.10.0.8/29"])
    assert await blocks(store) == {"10.10.0.8/29": None}
    with pytest.raises(NotFound):
        await store.get(keys.host_key("gone"))
    # a new node does not get the un-affined block as its own, but may borrow from it
    assert await IPAM(store, "new").auto_assign("x", {}, [pool]) == ["10.10.0.0"]
    assert (await blocks(store))["10.10.0.8/29"] is None
    assert await ipam.release_ips([ips[8]]) == [ips[8]]
    assert "10.10.0.8/29" not in await blocks(store)   # empty and nobody's: deleted
    assert (await ipam.check({"10.10.0.0": "x"})).clean


async def test_release_host_affinities_default_keeps_busy_blocks(store: KVStore) -> None:
    pool = await add_pool(store)
    await IPAM(store, "gone").auto_assign("a", {}, [pool])
    ipam = IPAM(store, ADMIN)
    assert await ipam.release_host_affinities("gone") == ([], ["10.10.0.0/26"])
    assert await blocks(store) == {"10.10.0.0/26": "gone"}
    await store.get(keys.host_key("gone"))   # kept while a block is in use


async def test_release_ips_of_one_node_only(store: KVStore) -> None:
    pool = await add_pool(store)
    [a] = await IPAM(store, "n1").auto_assign("a", {}, [pool])
    [b] = await IPAM(store, "n2").auto_assign("b", {}, [pool])
    ipam = IPAM(store, ADMIN)
    assert await ipam.release_ips([a, b], node="n2") == [b]
    assert await ipam.ips_by_handle("a") == [a] and await ipam.ips_by_handle("b") == []
    assert (await ipam.check({a: "wep"})).clean


# --- the removal -------------------------------------------------------------------------------


async def test_release_node_gives_back_everything_it_held(store: KVStore) -> None:
    pool = await add_pool(store, vxlanMode="Always")
    p1 = await pod(store, pool, "node1", "p1")
    p3 = await pod(store, pool, "node3", "p3")
    [tunnel] = await IPAM(store, "node3").auto_assign(
        "vxlan-tunnel-addr-node3", {"node": "node3"}, [pool])
    leak = await pod(store, pool, "node3", "leaky", endpoint=False)  # no endpoint written
    assert await blocks(store) == {"10.10.0.0/26": "node1", "10.10.0.64/26": "node3"}
    out = await release_node(store, "node3", ADMIN)
    assert out.endpoints == ["default/node3-k8s-p3-eth0"]
    assert out.addresses == [p3] and out.tunnel_addresses == [tunnel]
    assert (out.deleted_blocks, out.kept_blocks) == ([], ["10.10.0.64/26"])
    assert not out.node_deleted
    assert await weps(store) == ["node1-k8s-p1-eth0"]
    assert await blocks(store) == {"10.10.0.0/26": "node1", "10.10.0.64/26": None}
    with pytest.raises(NotFound):
        await store.get(keys.host_key("node3"))
    ipam = IPAM(store, ADMIN)
    assert await ipam.ips_by_handle("vxlan-tunnel-addr-node3") == []
    report = await ipam.check({p1: "p1"})
    assert report.leaked == [(leak, "tortie.c-leaky")] and not report.dangling_handles
    # the leak released later (the IPAM GC): the block, affine to nobody, goes
    await ipam.release_by_handle("tortie.c-leaky")
    assert await blocks(store) == {"10.10.0.0/26": "node1"}
    assert (await ipam.check({p1: "p1"}, nodes={"node1"})).clean
    # again: nothing left to do
    again = await release_node(store, "node3", ADMIN)
    assert again.summary() == NodeRelease("node3").summary()


async def test_release_node_keeps_addresses_others_borrowed(store: KVStore) -> None:
    """node1 borrowed an address from node3's block (strict affinity off, node1 could not
    claim): the removal deletes node3's endpoints only; the block stays for node1's pod."""
    pool = await add_pool(store, "10.10.0.0/26")   # one block in all
    p3 = await pod(store, pool, "node3", "p3")
    p1 = await pod(store, pool, "node1", "p1")    # borrowed from node3's block
    assert await blocks(store) == {"10.10.0.0/26": "node3"}
    # an endpoint of node3 naming node1's address (stale): node1's allocation is kept
    d = wep_doc("stale", "node3", None, [p1])
    await store.put(resource_key("workloadendpoints", d["metadata"]["name"], "default"), d)
    out = await release_node(store, "node3", ADMIN)
    assert out.addresses == [p3]
    assert sorted(out.endpoints) == ["default/node3-k8s-p3-eth0", "default/node3-k8s-stale-eth0"]
    assert await blocks(store) == {"10.10.0.0/26": None}
    assert (await IPAM(store, ADMIN).check({p1: "p1"})).clean


async def test_remove_node_deletes_the_node_last(store: KVStore) -> None:
    pool = await add_pool(store)
    p3 = await pod(store, pool, "node3", "p3")
    rv = await add_node(store, "node3")
    out = await remove_node(store, "node3", ADMIN, rv)
    assert out.node_deleted and out.addresses == [p3] and out.deleted_blocks == [
        "10.10.0.0/26"]
    assert await blocks(store) == {} and await weps(store) == []
    with pytest.raises(ResourceNotFound, match=r"Node\(node3\) does not exist"):
        await remove_node(store, "node3", ADMIN)


async def test_remove_node_conflict_releases_nothing(store: KVStore) -> None:
    pool = await add_pool(store)
    await pod(store, pool, "node3", "p3")
    rv = await add_node(store, "node3")
    await add_node_label(store, "node3")
    with pytest.raises(ResourceConflict, match="is stale"):
        await remove_node(store, "node3", ADMIN, rv)
    assert await blocks(store) == {"10.10.0.0/26": "node3"}
    assert await weps(store) == ["node3-k8s-p3-eth0"]
    await store.get(resource_key("nodes", "node3"))


async def test_remove_node_rejects_a_bad_name(store: KVStore) -> None:
    with pytest.raises(ValueError, match="invalid node name"):
        await release_node(store, "a/b", ADMIN)


async def add_node_label(store: KVStore, name: str) -> None:
    res = Resources(store)
    await res.label(by_plural("nodes"), name, None, {"x": "y"}, [], False)
