"""Every implementation of a test seam offers each method of its protocol with the same
parameters (names, kinds, defaults) and the same sync/async nature: the in-memory twins
cannot drift from the real ones unnoticed."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from cni.dataplane import Dataplane, MemoryDataplane, NetlinkDataplane
from datastore.backend import KVStore
from datastore.memory import MemoryStore
from datastore.store import Store
from node.autodetect import AddressResolver, NodeAddress
from policyagent.applier import Applier, NftApplier, RecordingApplier

SEAMS = [(KVStore, Store), (KVStore, MemoryStore),
         (Dataplane, NetlinkDataplane), (Dataplane, MemoryDataplane),
         (Applier, NftApplier), (Applier, RecordingApplier),
         (AddressResolver, NodeAddress)]


def members(protocol: type) -> list[str]:
    return sorted(name for name, value in vars(protocol).items()
                  if not name.startswith("_") and inspect.isfunction(value))


def shape(fn: Any) -> tuple[bool, bool, list[tuple[str, Any, Any]]]:
    params = [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
    return inspect.iscoroutinefunction(fn), inspect.isasyncgenfunction(fn), params


@pytest.mark.parametrize("protocol,impl", SEAMS, ids=[i.__name__ for _, i in SEAMS])
def test_the_implementation_has_the_protocols_methods(protocol: type, impl: type) -> None:
    names = members(protocol)
    assert names, protocol
    for name in names:
        assert shape(getattr(impl, name)) == shape(getattr(protocol, name)), (impl, name)
