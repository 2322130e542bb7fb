"""What a Tortie datastore is: the :class:`KVStore` protocol, its values and its errors.

Two implementations keep these semantics: :class:`datastore.store.Store` (etcd v3, what the
daemons and the CLI use) and :class:`datastore.memory.MemoryStore` (in memory, for tests of
the logic above the store).  tests/contract/test_store_contract.py runs the same tests
against both.

The semantics are etcd's:

* one store revision, incremented by every transaction that changes something; a key's
  ``mod_revision`` is the revision of its last change, ``create_revision`` the revision that
  created it (a re-created key gets a new one);
* conditional writes compare a key's ``mod_revision`` (0: the key must not exist);
* :meth:`KVStore.watch` delivers every change under a prefix after a revision, in revision
  order (the changes of one transaction in the order it made them), each once; when that
  history was compacted it first delivers one :class:`Resync` with the full state;
* values are JSON objects, stored as compact JSON with sorted keys (:func:`encode_value`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "KV",
    "TXN_MAX_BYTES",
    "TXN_MAX_OPS",
    "AlreadyExists",
    "Conflict",
    "DatastoreError",
    "KVStore",
    "NotFound",
    "Resync",
    "Unavailable",
    "WatchEvent",
    "Write",
    "check_prefix",
    "check_revision",
    "check_writes",
    "decode_value",
    "encode_value",
]

_MiB = 1024 * 1024

#: What one transaction may hold, below etcd's defaults (--max-txn-ops 128 operations,
#: --max-request-bytes 1.5 MiB, of which this leaves room for keys and framing).
TXN_MAX_OPS = 128
TXN_MAX_BYTES = 1 * _MiB


class DatastoreError(Exception):
    """Base class of all datastore errors."""


class Unavailable(DatastoreError):
    """etcd could not be reached, or did not answer, within the configured timeout.

    For a write this means the outcome is unknown: it may or may not have been applied.
    """


class NotFound(DatastoreError):
    """The key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} not found")
        self.key = key


class AlreadyExists(DatastoreError):
    """The key exists already."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} already exists")
        self.key = key


class Conflict(DatastoreError):
    """The key's revision is not the expected one: somebody else changed it meanwhile."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{key} was modified concurrently: expected revision {expected}, "
            f"current revision is {actual}; re-read it and try again"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class KV:
    """A key with its value and etcd revisions."""

    key: str
    value: dict[str, Any]
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Write:
    """One change of :meth:`KVStore.commit`: put ``value`` (delete the key when None) if the
    key's mod revision is still ``revision``; ``revision=0``: if the key does not exist."""

    key: str
    value: dict[str, Any] | None
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """One change of one key; ``revision`` is the etcd revision of the change."""

    type: Literal["put", "delete"]
    key: str
    value: dict[str, Any] | None
    revision: int
    prev_value: dict[str, Any] | None


@dataclass(frozen=True)
class Resync:
    """The watched history was compacted: here is the full state of the prefix at
    ``revision``; replace whatever you had.  Events after ``revision`` follow."""

    items: list[KV]
    revision: int


def encode_value(value: dict[str, Any]) -> bytes:
    """The stored form of a value: compact JSON with sorted keys."""
    if not isinstance(value, dict):
        raise TypeError(f"values must be dicts, got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode_value(raw: bytes, key: str) -> dict[str, Any]:
    """Parse a stored value; raises :class:`DatastoreError` if it is not a JSON object."""
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise DatastoreError(f"value of {key} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise DatastoreError(f"value of {key} is not a JSON object")
    return value


def check_prefix(prefix: str) -> bytes:
    """The prefix as bytes; ValueError when it is empty (it would mean every key)."""
    if not prefix:
        raise ValueError("prefix must not be empty")
    return prefix.encode()


def check_writes(writes: Sequence[Write]) -> None:
    """ValueError unless ``writes`` fit one :meth:`KVStore.commit`."""
    if not writes:
        raise ValueError("nothing to commit")
    if len(writes) > TXN_MAX_OPS:
        raise ValueError(f"{len(writes)} writes: one transaction holds at most {TXN_MAX_OPS}")
    if len({w.key for w in writes}) != len(writes):
        raise ValueError("a key is written twice in one transaction")
    for w in writes:
        if w.revision < 0:
            raise ValueError(f"revision must not be negative, got {w.revision}")


def check_revision(revision: int | None) -> None:
    """ValueError for an expected revision below 1 (None: no expectation)."""
    if revision is not None and revision <= 0:
        raise ValueError(f"revision must be positive, got {revision}")


class KVStore(Protocol):
    """A key/value datastore with etcd's revisions, compare-and-swap and watch.

    What the code above the store (resources, IPAM, the CNI handler, the syncer and the
    agents on it, kube-controllers) may use; see the module docstring for the semantics.
    Every method raises :class:`DatastoreError` (:class:`Unavailable`: the outcome of a write
    is unknown) once the store is closed or when it cannot answer.
    """

    async def get(self, key: str) -> KV:
        """The key's value and revisions; :class:`NotFound` if absent."""
        ...

    async def get_many(self, keys: Sequence[str], prefixes: Sequence[str] = ()
                       ) -> dict[str, KV]:
        """Those of ``keys`` that exist and every key under ``prefixes``, all read at one
        revision (prefixes unpaged: for small ones, such as a kind's few resources)."""
        ...

    async def list(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` sorted by key (as bytes), and the store revision of the
        read: watching from it misses nothing and repeats nothing."""
        ...

    async def create(self, key: str, value: dict[str, Any]) -> KV:
        """Create the key; :class:`AlreadyExists` if it exists."""
        ...

    async def update(self, key: str, value: dict[str, Any], revision: int | None = None) -> KV:
        """Replace the value if the key's mod revision is ``revision`` (None: if it exists);
        :class:`Conflict` / :class:`NotFound`; ValueError for a revision below 1."""
        ...

    async def put(self, key: str, value: dict[str, Any]) -> KV:
        """Create or replace the key unconditionally."""
        ...

    async def delete(self, key: str, revision: int | None = None) -> KV:
        """Delete the key (if its mod revision is ``revision``); returns what was deleted.
        :class:`NotFound` / :class:`Conflict`."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (one transaction); how many were deleted."""
        ...

    async def compare_and_swap(self, key: str, value: dict[str, Any] | None,
                               revision: int) -> bool:
        """Set (``value=None``: delete) the key if its mod revision is ``revision`` (0: if
        it does not exist); whether it happened."""
        ...

    async def commit(self, writes: Sequence[Write]) -> int | None:
        """All ``writes`` in one transaction if every key still has its expected revision:
        the transaction's revision, or None (nothing written).  At most
        :data:`TXN_MAX_OPS` writes, each key once (else ValueError)."""
        ...

    async def revision(self) -> int:
        """The current store revision."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision``; :class:`DatastoreError` for a future
        revision, nothing for one compacted already."""
        ...

    def watch(self, prefix: str, revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        """Every change under ``prefix`` after ``revision``, in order, once each (a
        :class:`Resync` first when that history was compacted).  Ends with
        :class:`DatastoreError` when the store is closed.  ValueError for an empty prefix
        or a negative revision (raised by the call, not the iteration)."""
        ...

    async def close(self) -> None:
        """Close the store; running watches end with :class:`DatastoreError`."""
        ...
