"""Resource operations over a real etcd: writers on separate connections racing.  The
resource logic itself (retries, server fields, implicit defaults) runs on the in-memory store
in tests/unit/test_resources_logic.py."""

from __future__ import annotations

import asyncio

import pytest

from datastore.kinds import by_cli_name
from datastore.resources import Resources, to_resource
from datastore.store import Conflict, Store
from lab.etcd import EtcdProcess

pytestmark = pytest.mark.integration

GNP = by_cli_name("gnp")


def gnp(name: str, order: float, **labels: str) -> object:
    _, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                          "metadata": {"name": name, "labels": labels or None},
                          "spec": {"order": order, "selector": "all()"}})
    return obj


async def test_two_concurrent_updates_one_wins(store: Store, etcd_server: EtcdProcess) -> None:
    res = Resources(store)
    created = await res.create(GNP, gnp("p", 1))
    rv = created.metadata.resourceVersion
    # two writers that both read version rv, on two separate connections
    async with Store(etcd_server.config) as other:
        a, b = gnp("p", 2), gnp("p", 3)
        a.metadata.resourceVersion = b.metadata.resourceVersion = rv
        results = await asyncio.gather(res.replace(GNP, a), Resources(other).replace(GNP, b),
                                       return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], Conflict)
    assert "GlobalNetworkPolicy(p)" in str(losers[0]) and "modified" in str(losers[0])
    stored = await res.get(GNP, "p")
    assert stored.spec.order == winners[0].spec.order
    assert int(stored.metadata.resourceVersion) > int(rv)
