"""An in-memory :class:`~datastore.backend.KVStore` with etcd's semantics, for tests.

Same revisions (one store revision from 1, bumped once per transaction that changes
something; ``mod_revision`` / ``create_revision`` per key), same compare-and-swap outcomes
and errors, same watch (every change after a revision, in order, the changes of one
transaction in the order it made them; a :class:`Resync` when that history was compacted),
same value encoding (values are stored as JSON, so a caller never shares a dict with the
store).  tests/contract/test_store_contract.py holds it to the etcd :class:`Store`.

Every operation is atomic and yields to the event loop once before it runs, so concurrent
tasks interleave between operations as they would against etcd.  It is not tied to one
event loop.  :attr:`MemoryStore.failure` makes every call raise (an etcd that is down);
:attr:`MemoryStore.watches_interrupted` holds every watch back (a watch whose connection
broke), which resumes from its last delivered revision when it is cleared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from datastore.backend import (
    KV,
    AlreadyExists,
    Conflict,
    DatastoreError,
    NotFound,
    Resync,
    WatchEvent,
    Write,
    check_prefix,
    check_revision,
    check_writes,
    decode_value,
    encode_value,
)

__all__ = ["MemoryStore"]


@dataclass(frozen=True)
class _Entry:
    raw: bytes
    mod_revision: int
    create_revision: int


class MemoryStore:
    """A :class:`~datastore.backend.KVStore` in a dict (see the module docstring)."""

    def __init__(self) -> None:
        self._data: dict[str, _Entry] = {}
        self._revision = 1  # a new etcd cluster is at revision 1
        self._compacted = 0
        self._history: list[WatchEvent] = []  # the changes after the compacted revision
        self._wakeups: set[asyncio.Event] = set()
        self._closed = False
        #: When set, every call raises it (e.g. ``Unavailable(...)``: etcd is down).
        self.failure: DatastoreError | None = None
        self._watches_interrupted = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._wake()

    @property
    def watches_interrupted(self) -> bool:
        """While True, watches deliver nothing (as the etcd Store's watch while it
        reconnects); set False, they resume after their last delivered revision, with a
        :class:`Resync` when that history was compacted meanwhile."""
        return self._watches_interrupted

    @watches_interrupted.setter
    def watches_interrupted(self, value: bool) -> None:
        self._watches_interrupted = value
        self._wake()

    # -- internals -------------------------------------------------------------------------

    async def _enter(self, what: str) -> None:
        await asyncio.sleep(0)
        if self._closed:
            raise DatastoreError(f"the store is closed ({what} refused)")
        if self.failure is not None:
            raise self.failure

    def _kv(self, key: str, entry: _Entry) -> KV:
        return KV(key, decode_value(entry.raw, key), entry.mod_revision, entry.create_revision)

    def _wake(self) -> None:
        for event in self._wakeups:
            event.set()

    def _apply(self, changes: Sequence[tuple[str, bytes | None]]) -> int:
        """Make ``changes`` (key, new raw value or None to delete) as one transaction; the
        store revision after it (unchanged when nothing changed)."""
        events: list[WatchEvent] = []
        revision = self._revision + 1
        for key, raw in changes:
            old = self._data.get(key)
            prev = decode_value(old.raw, key) if old is not None else None
            if raw is None:
                if old is None:
                    continue
                del self._data[key]
                events.append(WatchEvent("delete", key, None, revision, prev))
            else:
                created = old.create_revision if old is not None else revision
                self._data[key] = _Entry(raw, revision, created)
                events.append(WatchEvent("put", key, decode_value(raw, key), revision, prev))
        if events:
            self._revision = revision
            self._history.extend(events)
            self._wake()
        return self._revision

    def _matches(self, key: str, revision: int) -> bool:
        """Whether the key's mod revision is ``revision`` (0: the key does not exist)."""
        entry = self._data.get(key)
        return entry is None if revision == 0 else (
            entry is not None and entry.mod_revision == revision)

    def _under(self, prefix: str) -> list[str]:
        start = check_prefix(prefix)
        return sorted((k for k in self._data if k.encode().startswith(start)),
                      key=str.encode)

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str) -> KV:
        await self._enter(f"get {key}")
        entry = self._data.get(key)
        if entry is None:
            raise NotFound(key)
        return self._kv(key, entry)

    async def get_many(self, keys: Sequence[str], prefixes: Sequence[str] = ()
                       ) -> dict[str, KV]:
        for prefix in prefixes:
            check_prefix(prefix)
        await self._enter(f"get {len(keys)} keys")
        found = {k: self._kv(k, self._data[k]) for k in keys if k in self._data}
        for prefix in prefixes:
            found.update((k, self._kv(k, self._data[k])) for k in self._under(prefix))
        return found

    async def list(self, prefix: str) -> tuple[list[KV], int]:
        check_prefix(prefix)
        await self._enter(f"list {prefix}")
        keys = self._under(prefix)
        return [self._kv(k, self._data[k]) for k in keys], self._revision

    async def revision(self) -> int:
        await self._enter("read revision")
        return self._revision

    # -- writes ----------------------------------------------------------------------------

    async def create(self, key: str, value: dict[str, Any]) -> KV:
        raw = encode_value(value)
        await self._enter(f"create {key}")
        if key in self._data:
            raise AlreadyExists(key)
        self._apply([(key, raw)])
        return self._kv(key, self._data[key])

    async def update(self, key: str, value: dict[str, Any], revision: int | None = None) -> KV:
        check_revision(revision)
        raw = encode_value(value)
        await self._enter(f"update {key}")
        self._check_current(key, revision)
        self._apply([(key, raw)])
        return self._kv(key, self._data[key])

    async def put(self, key: str, value: dict[str, Any]) -> KV:
        raw = encode_value(value)
        await self._enter(f"put {key}")
        self._apply([(key, raw)])
        return self._kv(key, self._data[key])

    async def delete(self, key: str, revision: int | None = None) -> KV:
        check_revision(revision)
        await self._enter(f"delete {key}")
        entry = self._check_current(key, revision)
        self._apply([(key, None)])
        return self._kv(key, entry)

    def _check_current(self, key: str, revision: int | None) -> _Entry:
        entry = self._data.get(key)
        if entry is None:
            raise NotFound(key)
        if revision is not None and entry.mod_revision != revision:
            raise Conflict(key, revision, entry.mod_revision)
        return entry

    async def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        await self._enter(f"delete prefix {prefix}")
        keys = self._under(prefix)
        self._apply([(k, None) for k in keys])
        return len(keys)

    async def compare_and_swap(self, key: str, value: dict[str, Any] | None,
                               revision: int) -> bool:
        if revision < 0:
            raise ValueError(f"revision must not be negative, got {revision}")
        raw = None if value is None else encode_value(value)
        await self._enter(f"compare-and-swap {key}")
        if not self._matches(key, revision):
            return False
        self._apply([(key, raw)])
        return True

    async def commit(self, writes: Sequence[Write]) -> int | None:
        check_writes(writes)
        changes = [(w.key, None if w.value is None else encode_value(w.value)) for w in writes]
        await self._enter(f"write {len(writes)} keys")
        if not all(self._matches(w.key, w.revision) for w in writes):
            return None
        return self._apply(changes)

    async def compact(self, revision: int) -> None:
        await self._enter(f"compact at {revision}")
        if revision > self._revision:
            raise DatastoreError(f"compact at {revision} failed: required revision is a "
                                 f"future revision (the store is at {self._revision})")
        if revision <= self._compacted:
            return
        self._compacted = revision
        self._history = [e for e in self._history if e.revision >= revision]

    # -- watch -----------------------------------------------------------------------------

    def watch(self, prefix: str, revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        check_prefix(prefix)
        if revision < 0:
            raise ValueError(f"revision must not be negative, got {revision}")
        return self._watch(prefix, revision)

    async def _watch(self, prefix: str,
                     revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        start = prefix.encode()
        next_rev = revision + 1  # first revision not delivered yet
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                wakeup.clear()
                if self._closed:
                    raise DatastoreError(f"the store is closed (watch on {prefix} ended)")
                if self._watches_interrupted:
                    await wakeup.wait()
                    continue
                if next_rev < self._compacted:
                    keys = self._under(prefix)
                    items = [self._kv(k, self._data[k]) for k in keys]
                    next_rev = self._revision + 1
                    yield Resync(items, self._revision)
                    continue
                seen = self._revision
                pending = [e for e in self._history
                           if e.revision >= next_rev and e.key.encode().startswith(start)]
                for event in pending:
                    yield event
                    next_rev = event.revision + 1
                if pending:
                    continue  # more may have come while the consumer had the events
                next_rev = max(next_rev, seen + 1)  # nothing under the prefix up to here
                await wakeup.wait()
        finally:
            self._wakeups.discard(wakeup)
