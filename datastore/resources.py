"""Typed resource operations over the store: create, replace, apply, get, list, delete,
patch, label.

``metadata.resourceVersion`` is the etcd mod revision of the resource's key; ``replace``
and ``delete`` with a resourceVersion are conditional on it, so concurrent writers cannot
overwrite each other unnoticed (one wins, the other gets ``Conflict``).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from datastore import keys
from datastore.backend import (
    KV,
    TXN_MAX_BYTES,
    TXN_MAX_OPS,
    AlreadyExists,
    Conflict,
    DatastoreError,
    KVStore,
    NotFound,
    Unavailable,
    Write,
    encode_value,
)
from datastore.kinds import KindInfo, by_document
from datastore.model_base import SERVER_FIELDS, ResourceInvalid, name_of
from datastore.model_network import IPPool
from datastore.v1compat import convert, is_v1

# Read-modify-write operations (apply, patch, label) retry when another writer got in
# between their read and their write, with a short random backoff.
MAX_RETRIES = 30
RETRY_BACKOFF = 0.005


# The store's errors, re-worded for resources ("IPPool(dmz-pool) does not exist" rather than
# a key); still instances of the store's classes, so callers can catch either.

class ResourceNotFound(NotFound):
    def __init__(self, message: str, key: str) -> None:
        DatastoreError.__init__(self, message)
        self.key = key


class ResourceExists(AlreadyExists):
    def __init__(self, message: str, key: str) -> None:
        DatastoreError.__init__(self, message)
        self.key = key


class ResourceConflict(Conflict):
    def __init__(self, message: str, key: str, expected: int = 0, actual: int = 0) -> None:
        DatastoreError.__init__(self, message)
        self.key, self.expected, self.actual = key, expected, actual


class PartialWrite(DatastoreError):
    """A batch too large for one transaction failed after some of its transactions were
    made: ``written`` (``Kind(name)``) are stored, ``unknown`` may or may not be (etcd did
    not answer), the rest are not."""

    def __init__(self, message: str, written: list[str], unknown: list[str]) -> None:
        super().__init__(message)
        self.written = written
        self.unknown = unknown


Verb = Literal["create", "replace", "apply", "delete"]
PAST_TENSE: dict[str, str] = {"create": "created", "replace": "replaced", "apply": "applied",
                              "delete": "deleted"}


@dataclass
class BatchResult:
    """What :meth:`Resources.write_all` did: resources written, and those skipped."""

    written: list[tuple[KindInfo, Any]] = field(default_factory=list)
    skipped: list[tuple[KindInfo, Any]] = field(default_factory=list)
    transactions: int = 0


@dataclass
class _Planned:
    index: int  # in the batch
    info: KindInfo
    obj: Any
    write: Write | None  # None: skipped (exists / does not exist, as asked)
    size: int = 0


def to_resource(data: Any) -> tuple[KindInfo, Any]:
    """Validate one document (v3, Kubernetes or calicoctl v1) into its model."""
    if not isinstance(data, dict):
        raise ResourceInvalid("", None,
                              [f"a resource must be a mapping, not {type(data).__name__}"])
    kind = data.get("kind")
    kind = kind if isinstance(kind, str) else ""
    try:
        if is_v1(data):
            data = convert(data)
        info = by_document(data.get("apiVersion"), data.get("kind"))
    except ValueError as e:
        raise ResourceInvalid(kind, name_of(data), [str(e)]) from None
    return info, info.model.from_dict(data)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Resources:
    """Resource-level API over a connected :class:`~datastore.backend.KVStore`."""

    def __init__(self, store: KVStore) -> None:
        self.store = store

    # --- keys and (de)serialisation -----------------------------------------------------------

    @staticmethod
    def key(info: KindInfo, name: str, namespace: str | None) -> str:
        ns = (namespace or "default") if info.namespaced else None
        return keys.resource_key(info.plural, name, ns)

    def _key_of(self, info: KindInfo, obj: Any) -> str:
        return self.key(info, obj.name, obj.namespace)

    @staticmethod
    def _from_kv(info: KindInfo, kv: KV) -> Any:
        obj = info.model.model_validate(kv.value)
        obj.metadata.resourceVersion = str(kv.mod_revision)
        return obj

    @staticmethod
    def _to_value(obj: Any) -> dict[str, Any]:
        value = obj.dump()
        value["metadata"].pop("resourceVersion", None)
        return value

    # --- writes -------------------------------------------------------------------------------

    async def create(self, info: KindInfo, obj: Any) -> Any:
        await self._check_cross_resource(info, obj)
        self._stamp(obj, None)
        key = self._key_of(info, obj)
        try:
            kv = await self.store.create(key, self._to_value(obj))
        except AlreadyExists:
            raise ResourceExists(f"{info.kind}({self._display(obj)}) already exists",
                                 key) from None
        return self._from_kv(info, kv)

    def creation(self, info: KindInfo, obj: Any) -> Write:
        """The write that creates ``obj`` (stamped as :meth:`create` stamps it; only if its
        key does not exist), for a caller's own transaction with other keys;
        :meth:`created` is the stored resource once the transaction committed.  For kinds
        :meth:`create` checks nothing else for (ValueError for an IPPool)."""
        if isinstance(obj, IPPool):
            raise ValueError("an IPPool is created with create (it is checked against the "
                             "others)")
        self._stamp(obj, None)
        return Write(self._key_of(info, obj), self._to_value(obj), 0)

    @staticmethod
    def created(obj: Any, revision: int) -> Any:
        """``obj`` as stored by the transaction at ``revision`` that :meth:`creation`'s
        write went in."""
        obj.metadata.resourceVersion = str(revision)
        return obj

    async def replace(self, info: KindInfo, obj: Any) -> Any:
        """Replace an existing resource; conditional when the document has a resourceVersion."""
        key = self._key_of(info, obj)
        wanted = obj.metadata.resourceVersion
        current = await self._get_kv(info, key, obj)
        if wanted is not None and str(current.mod_revision) != str(wanted):
            raise ResourceConflict(f"{info.kind}({self._display(obj)}) has been modified: "
                                   f"resourceVersion {wanted} is not the current "
                                   f"{current.mod_revision}; get it again and retry", key)
        return await self._write_over(info, obj, current)

    async def apply(self, info: KindInfo, obj: Any) -> tuple[Any, bool]:
        """Create or replace; returns (stored, created)."""
        key = self._key_of(info, obj)

        async def attempt() -> tuple[Any, bool]:
            try:
                current = await self.store.get(key)
            except NotFound:
                return await self.create(info, obj), True
            return await self._write_over(info, obj, current), False

        return await self._retrying(attempt, f"{info.kind}({self._display(obj)})", key)

    @staticmethod
    async def _retrying(attempt: Callable[[], Awaitable[Any]], what: str, key: str) -> Any:
        """Run a read-modify-write ``attempt`` until no other writer gets in between."""
        for n in range(MAX_RETRIES):
            try:
                return await attempt()
            except (Conflict, AlreadyExists):
                await asyncio.sleep(random.uniform(0, RETRY_BACKOFF * (n + 1)))
        raise ResourceConflict(f"{what} is being modified concurrently; retry", key)

    async def _write_over(self, info: KindInfo, obj: Any, current: KV) -> Any:
        await self._check_cross_resource(info, obj)
        self._stamp(obj, current)
        try:
            kv = await self.store.update(current.key, self._to_value(obj), current.mod_revision)
        except Conflict as e:
            raise ResourceConflict(f"{info.kind}({self._display(obj)}) was modified "
                                   f"concurrently (resourceVersion {current.mod_revision} is "
                                   "stale); get it again and retry", current.key,
                                   e.expected, e.actual) from None
        return self._from_kv(info, kv)

    async def delete(self, info: KindInfo, name: str, namespace: str | None = None,
                     resource_version: str | None = None) -> Any:
        key = self.key(info, name, namespace)
        try:
            kv = await self.store.delete(key, int(resource_version) if resource_version else None)
        except NotFound:
            raise ResourceNotFound(f"{info.kind}({self._display_n(info, name, namespace)}) "
                                   "does not exist", key) from None
        except Conflict:
            raise ResourceConflict(f"{info.kind}({self._display_n(info, name, namespace)}) "
                                   f"has been modified: resourceVersion {resource_version} "
                                   "is stale", key) from None
        return self._from_kv(info, kv)

    async def patch(self, info: KindInfo, name: str, namespace: str | None,
                    patch: dict[str, Any]) -> Any:
        """Apply a JSON merge patch, validate the result, write it conditionally."""

        async def attempt() -> Any:
            current, kv = await self._get_or_implicit(info, name, namespace)
            data = current.dump()
            patched = merge_patch(data, patch)
            if not isinstance(patched, dict):
                raise ResourceInvalid(info.kind, name, ["patch: must be a JSON object"])
            meta = patched.setdefault("metadata", {})
            if meta.get("name") != name or (info.namespaced and meta.get("namespace")
                                            != (namespace or "default")):
                raise ResourceInvalid(info.kind, name,
                                      ["metadata.name: a patch cannot rename a resource"])
            obj = info.model.from_dict(patched)
            if kv is None:
                return await self.create(info, obj)
            return await self._write_over(info, obj, kv)

        return await self._retrying(attempt, f"{info.kind}({name})",
                                    self.key(info, name, namespace))

    async def label(self, info: KindInfo, name: str, namespace: str | None,
                    set_labels: dict[str, str], remove: list[str], overwrite: bool) -> Any:
        current, _ = await self._get_or_implicit(info, name, namespace)
        labels = dict(current.metadata.labels or {})
        for k, v in set_labels.items():
            if k in labels and labels[k] != v and not overwrite:
                raise ResourceInvalid(info.kind, name, [
                    f"metadata.labels: {k!r} already has the value {labels[k]!r}; "
                    "use --overwrite to change it"])
        for k in remove:
            if k not in labels:
                raise ResourceInvalid(info.kind, name, [f"metadata.labels: {k!r} is not set"])
        patch_labels: dict[str, Any] = dict(set_labels)
        patch_labels.update({k: None for k in remove})
        return await self.patch(info, name, namespace, {"metadata": {"labels": patch_labels}})

    # --- batches ------------------------------------------------------------------------------

    async def write_all(self, verb: Verb, items: Sequence[tuple[KindInfo, Any]],
                        skip: bool = False) -> BatchResult:
        """``verb`` every resource of ``items`` (validated models), all or nothing.

        Everything is checked against the store first (existence, ``resourceVersion``,
        overlapping IPPools, also among the items), then written in one transaction when it
        fits in one (:data:`TXN_MAX_OPS` resources, :data:`TXN_MAX_BYTES`), so a failure
        writes nothing.  Larger batches are written in their order, transaction by
        transaction; a failure after the first raises :class:`PartialWrite`, which names
        exactly what was written.  ``skip``: create skips resources that exist, delete those
        that do not.  When another writer changes one of the keys in between, what is not
        written yet is planned again (up to ``MAX_RETRIES`` times).
        """
        keys = [self._key_of(info, obj) for info, obj in items]
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                info, obj = items[i]
                raise ResourceInvalid(info.kind, obj.name, [
                    f"metadata.name: given twice in one batch (items {seen[key] + 1} and "
                    f"{i + 1})"])
            seen[key] = i
        result = BatchResult()
        pending = list(range(len(items)))  # indices of items not written (or skipped) yet
        for n in range(MAX_RETRIES):
            try:
                plan = await self._plan(verb, [(i, *items[i]) for i in pending], skip)
            except (DatastoreError, ResourceInvalid) as e:
                raise self._partial(verb, result, items, pending, e, []) from None
            done: set[int] = set()
            conflict = False
            for chunk in _chunks(plan):
                writes = [p.write for p in chunk if p.write is not None]
                revision: int | None = 0
                if writes:
                    try:
                        revision = await self.store.commit(writes)
                    except Unavailable as e:
                        raise self._partial(verb, result, items, _without(pending, done), e,
                                            chunk) from None
                    except DatastoreError as e:
                        raise self._partial(verb, result, items, _without(pending, done), e,
                                            []) from None
                    if revision is None:
                        conflict = True
                        break
                    result.transactions += 1
                for p in chunk:
                    done.add(p.index)
                    if p.write is None:
                        result.skipped.append((p.info, p.obj))
                        continue
                    if p.write.value is not None:
                        p.obj.metadata.resourceVersion = str(revision)
                    result.written.append((p.info, p.obj))
            pending = _without(pending, done)
            if not conflict:
                return result
            await asyncio.sleep(random.uniform(0, RETRY_BACKOFF * (n + 1)))
        info, obj = items[pending[0]]
        error = ResourceConflict(f"{describe(info, obj)} and others are being modified "
                                 "concurrently; retry", keys[pending[0]])
        raise self._partial(verb, result, items, pending, error, [])

    async def _plan(self, verb: Verb, items: list[tuple[int, KindInfo, Any]],
                    skip: bool) -> list[_Planned]:
        """Each item's write against the store as it is now; raises what the single
        operations raise (exists, does not exist, stale resourceVersion, overlaps)."""
        keys = [self._key_of(info, obj) for _, info, obj in items]
        current = await self.store.get_many(keys)
        plan: list[_Planned] = []
        for (index, info, obj), key in zip(items, keys, strict=True):
            kv = current.get(key)
            what = describe(info, obj)
            if verb == "delete":
                if kv is None:
                    if not skip:
                        raise ResourceNotFound(f"{what} does not exist", key)
                    plan.append(_Planned(index, info, obj, None))
                else:
                    plan.append(_Planned(index, info, obj, Write(key, None, kv.mod_revision),
                                         len(key)))
                continue
            if kv is not None and verb == "create":
                if not skip:
                    raise ResourceExists(f"{what} already exists", key)
                plan.append(_Planned(index, info, obj, None))
                continue
            if verb == "replace":
                if kv is None:
                    raise ResourceNotFound(f"{what} does not exist", key)
                wanted = obj.metadata.resourceVersion
                if wanted is not None and str(kv.mod_revision) != str(wanted):
                    raise ResourceConflict(
                        f"{what} has been modified: resourceVersion {wanted} is not the "
                        f"current {kv.mod_revision}; get it again and retry", key)
            self._stamp(obj, kv)
            value = self._to_value(obj)
            plan.append(_Planned(index, info, obj,
                                 Write(key, value, kv.mod_revision if kv else 0),
                                 len(key) + len(encode_value(value))))
        pools = [(p.info, p.obj) for p in plan if p.write is not None
                 and p.write.value is not None and isinstance(p.obj, IPPool)]
        if pools:
            await self._check_pools(pools[0][0], [obj for _, obj in pools])
        return plan

    @staticmethod
    def _stamp(obj: Any, current: KV | None) -> None:
        """Server-owned metadata: new for a create, kept from the store for a replace."""
        meta = obj.metadata
        if current is None:
            for f in SERVER_FIELDS:
                if hasattr(meta, f):
                    setattr(meta, f, None)
            meta.uid = str(uuid.uuid4())
            meta.creationTimestamp = _now()
        else:
            old = current.value.get("metadata", {})
            meta.uid = old.get("uid")
            meta.creationTimestamp = old.get("creationTimestamp")

    @staticmethod
    def _partial(verb: Verb, result: BatchResult, items: Sequence[tuple[KindInfo, Any]],
                 pending: list[int], cause: Exception, unknown: list[_Planned]) -> Exception:
        """``cause`` as it is when nothing was written yet, else a :class:`PartialWrite`
        naming what was written, what may have been, and what was not."""
        done = [describe(i, o) for i, o in result.written]
        maybe_index = {p.index for p in unknown if p.write is not None}
        maybe = [describe(*items[i]) for i in pending if i in maybe_index]
        if not done and not maybe:
            return cause
        rest = [describe(*items[i]) for i in pending if i not in maybe_index]
        past = PAST_TENSE[verb]
        parts = []
        if done:
            parts.append(f"{past} {len(done)}: {', '.join(done)}")
        if maybe:
            parts.append(f"maybe {past} (etcd did not answer) {len(maybe)}: "
                         f"{', '.join(maybe)}")
        if rest:
            parts.append(f"not {past} {len(rest)}: {', '.join(rest)}")
        return PartialWrite(f"{cause}\n  " + "\n  ".join(parts), done, maybe)

    # --- reads --------------------------------------------------------------------------------

    async def get(self, info: KindInfo, name: str, namespace: str | None = None) -> Any:
        obj, _ = await self._get_or_implicit(info, name, namespace)
        return obj

    async def get_many(self, refs: Sequence[tuple[KindInfo, str, str | None]]
                       ) -> list[KV | None]:
        """The stored documents of several resources (kind, name, namespace), read at one
        revision in one transaction; None for one that does not exist.  Turn one into its
        model with :meth:`parse` (which applies no implicit default)."""
        docs, _, _ = await self.read(refs)
        return docs

    async def read(self, refs: Sequence[tuple[KindInfo, str, str | None]],
                   kinds: Sequence[KindInfo] = (), raw_keys: Sequence[str] = ()
                   ) -> tuple[list[KV | None], dict[str, list[Any]], dict[str, KV]]:
        """One transaction, one revision: the documents of ``refs`` (as :meth:`get_many`),
        every resource of each of ``kinds`` (cluster-wide, as :meth:`list` makes them; by
        plural) and those of ``raw_keys`` that exist (another package's keys, which that
        package names and interprets)."""
        ref_keys = [self.key(*ref) for ref in refs]
        prefixes = [keys.resource_prefix(info.plural, None) for info in kinds]
        found = await self.store.get_many([*ref_keys, *raw_keys], prefixes)
        lists = {info.plural: self._listed(info, [kv for k, kv in found.items()
                                                  if k.startswith(prefix)])
                 for info, prefix in zip(kinds, prefixes, strict=True)}
        return ([found.get(k) for k in ref_keys], lists,
                {k: found[k] for k in raw_keys if k in found})

    @classmethod
    def parse(cls, info: KindInfo, kv: KV) -> Any:
        """The model of a stored document (ResourceInvalid / ValueError when it is not
        one)."""
        return cls._from_kv(info, kv)

    async def list(self, info: KindInfo, namespace: str | None = None) -> list[Any]:
        """All resources of a kind; namespaced kinds: one namespace, or all when None."""
        ns = namespace if info.namespaced else None
        kvs, _ = await self.store.list(keys.resource_prefix(info.plural, ns))
        return self._listed(info, kvs)

    @classmethod
    def _listed(cls, info: KindInfo, kvs: Sequence[KV]) -> list[Any]:
        """The resources of ``kvs`` (all of one kind), with the kind's implicit defaults
        that are not among them, sorted by namespace and name."""
        items = [cls._from_kv(info, kv) for kv in kvs]
        present = {i.name for i in items}
        for name, doc in info.implicit_defaults.items():
            if name not in present:
                items.append(info.model.from_dict(copy.deepcopy(doc)))
        return sorted(items, key=lambda r: (r.namespace or "", r.name))

    async def _get_or_implicit(self, info: KindInfo, name: str,
                               namespace: str | None) -> tuple[Any, KV | None]:
        key = self.key(info, name, namespace)
        try:
            kv = await self.store.get(key)
        except NotFound:
            if name in info.implicit_defaults:
                return info.model.from_dict(copy.deepcopy(info.implicit_defaults[name])), None
            raise ResourceNotFound(f"{info.kind}({self._display_n(info, name, namespace)}) "
                                   "does not exist", key) from None
        return self._from_kv(info, kv), kv

    async def _get_kv(self, info: KindInfo, key: str, obj: Any) -> KV:
        try:
            return await self.store.get(key)
        except NotFound:
            raise ResourceNotFound(f"{info.kind}({self._display(obj)}) does not exist",
                                   key) from None

    # --- checks across resources --------------------------------------------------------------

    async def _check_cross_resource(self, info: KindInfo, obj: Any) -> None:
        if isinstance(obj, IPPool):
            _check_pool(obj, await self.list(info))

    async def _check_pools(self, info: KindInfo, pools: list[IPPool]) -> None:
        """No pool of ``pools`` overlaps a stored one or one before it in ``pools``."""
        names = {p.name for p in pools}
        others = [p for p in await self.list(info) if p.name not in names]
        for p in pools:
            _check_pool(p, others)
            others.append(p)

    @staticmethod
    def _display(obj: Any) -> str:
        return f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name

    @staticmethod
    def _display_n(info: KindInfo, name: str, namespace: str | None) -> str:
        return f"{namespace or 'default'}/{name}" if info.namespaced else name


def _check_pool(pool: IPPool, others: list[IPPool]) -> None:
    net = ipaddress.ip_network(pool.spec.cidr)
    for other in others:
        if other.name == pool.name:
            continue
        onet = ipaddress.ip_network(other.spec.cidr)
        if onet.version == net.version and net.overlaps(onet):
            raise ResourceInvalid(pool.kind, pool.name, [
                f"spec.cidr: {pool.spec.cidr} overlaps with IPPool({other.name}) "
                f"{other.spec.cidr}"])


def _chunks(plan: list[_Planned]) -> list[list[_Planned]]:
    """The plan in transactions etcd takes (skipped items ride along, costing nothing)."""
    chunks: list[list[_Planned]] = [[]]
    ops = size = 0
    for p in plan:
        if p.write is not None:
            if chunks[-1] and (ops + 1 > TXN_MAX_OPS or size + p.size > TXN_MAX_BYTES):
                chunks.append([])
                ops = size = 0
            ops += 1
            size += p.size
        chunks[-1].append(p)
    return chunks


def _without(indices: list[int], done: set[int]) -> list[int]:
    return [i for i in indices if i not in done]


def describe(info: KindInfo, obj: Any) -> str:
    """``Kind(name)`` or ``Kind(namespace/name)``, as messages name a resource."""
    return f"{info.kind}({Resources._display(obj)})"
