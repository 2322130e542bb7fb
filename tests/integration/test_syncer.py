"""datastore.syncer.Syncer against a real etcd: compaction while etcd restarts.  The syncer's
logic (list, follow, resync without repeats, failing callbacks) runs on the in-memory store
in tests/unit/test_syncer_logic.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from datastore.store import Store
from datastore.syncer import Syncer, cancel_and_wait
from lab.etcd import run_etcd
from tests.support.wait import until

pytestmark = pytest.mark.integration


class Mirror:
    """What a consumer rebuilds from the callbacks: it must always equal etcd's state."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.synced = 0

    def update(self, key: str, value: dict[str, Any] | None) -> None:
        self.calls.append((key, value))
        if value is None:
            assert key in self.state, f"delete of a key never delivered: {key}"
            del self.state[key]
        else:
            assert self.state.get(key) != value, f"same value delivered twice: {key}"
            self.state[key] = value

    def on_synced(self) -> None:
        self.synced += 1


async def etcd_state(store: Store, *prefixes: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in prefixes:
        items, _ = await store.list(p)
        out.update({kv.key: kv.value for kv in items})
    return out


async def test_compaction_while_down_resyncs_with_deletes_and_no_repeats(
        scratch_dir: Path) -> None:
    p = "/tortie/test-syncer/"
    with run_etcd(scratch_dir) as etcd:
        async with Store(etcd.config) as store:
            for i in range(5):
                await store.put(p + f"k{i}", {"v": i})
            mirror = Mirror()
            syncer = Syncer(store, [p], mirror.update, mirror.on_synced, name="t")
            task = asyncio.create_task(syncer.run())
            try:
                await asyncio.wait_for(syncer.synced.wait(), 10)
                assert len(mirror.state) == 5
                etcd.restart(signal.SIGTERM)
                async with Store(etcd.config) as writer:
                    await writer.delete(p + "k0")
                    await writer.put(p + "k1", {"v": 100})
                    await writer.put(p + "new", {"v": 1})
                    await writer.compact(await writer.revision())
                    want = await etcd_state(writer, p)
                    await until(lambda: mirror.state == want, 30)
                    # k2..k4 were unchanged: the resync must not deliver them again.
                    assert [k for k, _ in mirror.calls].count(p + "k2") == 1
                    assert (p + "k0", None) in mirror.calls
                    await writer.put(p + "after", {"v": 1})
                    await until(lambda: p + "after" in mirror.state, 30)
            finally:
                await cancel_and_wait(task)
