"""Resource operations (datastore/resources.py) on the in-memory store: retried patches,
server-owned fields, conflicts, implicit defaults.  Writers racing on separate etcd
connections: tests/integration/test_resources.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from datastore.backend import Conflict, KVStore, NotFound
from datastore.kinds import by_cli_name
from datastore.memory import MemoryStore
from datastore.resources import Resources, to_resource


@pytest.fixture
def store() -> Iterator[KVStore]:
    """A fresh in-memory store (this module's tests need no etcd)."""
    yield MemoryStore()


GNP = by_cli_name("gnp")


def gnp(name: str, order: float, **labels: str) -> object:
    _, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                          "metadata": {"name": name, "labels": labels or None},
                          "spec": {"order": order, "selector": "all()"}})
    return obj


async def test_concurrent_patches_all_land(store: KVStore) -> None:
    """patch/label re-read and retry on conflict: 10 concurrent label patches all land."""
    res = Resources(store)
    await res.create(GNP, gnp("p", 1))
    await asyncio.gather(*(res.label(GNP, "p", None, {f"k{i}": "v"}, [], False)
                           for i in range(10)))
    stored = await res.get(GNP, "p")
    assert stored.metadata.labels == {f"k{i}": "v" for i in range(10)}


async def test_server_fields_are_owned_by_the_server(store: KVStore) -> None:
    res = Resources(store)
    obj = gnp("p", 1)
    obj.metadata.uid = "from-the-file"
    obj.metadata.creationTimestamp = "2020-01-01T00:00:00Z"
    created = await res.create(GNP, obj)
    assert created.metadata.uid != "from-the-file"
    assert created.metadata.creationTimestamp != "2020-01-01T00:00:00Z"
    again, was_created = await res.apply(GNP, gnp("p", 5))
    assert not was_created
    assert again.metadata.uid == created.metadata.uid
    assert again.metadata.creationTimestamp == created.metadata.creationTimestamp
    assert again.spec.order == 5


async def test_delete_with_stale_version_conflicts(store: KVStore) -> None:
    res = Resources(store)
    created = await res.create(GNP, gnp("p", 1))
    await res.apply(GNP, gnp("p", 2))
    with pytest.raises(Conflict):
        await res.delete(GNP, "p", None, created.metadata.resourceVersion)
    await res.delete(GNP, "p")
    with pytest.raises(NotFound):
        await res.get(GNP, "p")


async def test_implicit_default_kube_controllers_configuration(store: KVStore) -> None:
    res = Resources(store)
    kcc = by_cli_name("kubecontrollersconfiguration")
    default = await res.get(kcc, "default")
    assert default.metadata.resourceVersion is None  # not stored yet
    assert not default.host_endpoint_auto_create()
    patched = await res.patch(kcc, "default", None, {"spec": {"controllers": {"node": {
        "hostEndpoint": {"autoCreate": "Enabled"}}}}})
    assert patched.host_endpoint_auto_create()
    assert [k.name for k in await res.list(kcc)] == ["default"]
    with pytest.raises(NotFound):
        await res.get(kcc, "other")


async def test_get_many_reads_several_kinds_at_once(store: KVStore) -> None:
    """get_many: the stored documents (None for a missing one, no implicit default), each
    turned into its model by parse with its resourceVersion."""
    res = Resources(store)
    await res.create(GNP, gnp("a", 1))
    felix = by_cli_name("felixconfiguration")
    kvs = await res.get_many([(GNP, "a", None), (GNP, "missing", None),
                              (felix, "default", None)])
    assert kvs[1] is None and kvs[2] is None  # the implicit default is not a document
    assert kvs[0] is not None
    parsed = Resources.parse(GNP, kvs[0])
    assert parsed.name == "a" and parsed.spec.order == 1
    assert parsed.metadata.resourceVersion == str(kvs[0].mod_revision)


async def test_read_gets_lists_and_raw_keys_in_one_go(store: KVStore) -> None:
    """read: named documents, whole kinds parsed as list makes them (implicit defaults
    added), and raw keys of another package (those that exist)."""
    res = Resources(store)
    await res.create(GNP, gnp("a", 1))
    await res.create(GNP, gnp("b", 2))
    await store.put("/calico/ipam/v2/handle/h1", {"handle": "h1"})
    felix = by_cli_name("felixconfiguration")
    (kv, missing), lists, raw = await res.read(
        [(GNP, "a", None), (GNP, "zz", None)], (GNP, felix),
        ["/calico/ipam/v2/handle/h1", "/calico/ipam/v2/handle/h2"])
    assert kv is not None and Resources.parse(GNP, kv).spec.order == 1 and missing is None
    assert [p.name for p in lists[GNP.plural]] == ["a", "b"]
    assert [f.name for f in lists[felix.plural]] == [f.name for f in await res.list(felix)]
    assert list(raw) == ["/calico/ipam/v2/handle/h1"]
