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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from datastore import keys
from datastore.kinds import KindInfo, by_document
from datastore.model_base import SERVER_FIELDS, ResourceInvalid
from datastore.model_network import IPPool
from datastore.store import KV, AlreadyExists, Conflict, DatastoreError, NotFound, Store
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


def to_resource(data: Any) -> tuple[KindInfo, Any]:
    """Validate one document (v3, Kubernetes or calicoctl v1) into its model."""
    if not isinstance(data, dict):
        raise ResourceInvalid("", None,
                              [f"a resource must be a mapping, not {type(data).__name__}"])
    if is_v1(data):
        data = convert(data)
    try:
        info = by_document(data.get("apiVersion"), data.get("kind"))
    except ValueError as e:
        raise ResourceInvalid(str(data.get("kind") or ""), _name(data), [str(e)]) from None
    return info, info.model.from_dict(data)


def _name(data: dict[str, Any]) -> str | None:
    meta = data.get("metadata")
    return meta.get("name") if isinstance(meta, dict) else None


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
    """Resource-level API over a connected ``Store``."""

    def __init__(self, store: Store) -> None:
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
        meta = obj.metadata
        for f in SERVER_FIELDS:
            if hasattr(meta, f):
                setattr(meta, f, None)
        meta.uid = str(uuid.uuid4())
        meta.creationTimestamp = _now()
        key = self._key_of(info, obj)
        try:
            kv = await self.store.create(key, self._to_value(obj))
        except AlreadyExists:
            raise ResourceExists(f"{info.kind}({self._display(obj)}) already exists",
                                 key) from None
        return self._from_kv(info, kv)

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
        old = current.value.get("metadata", {})
        meta = obj.metadata
        meta.uid = old.get("uid")
        meta.creationTimestamp = old.get("creationTimestamp")
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

    # --- reads --------------------------------------------------------------------------------

    async def get(self, info: KindInfo, name: str, namespace: str | None = None) -> Any:
        obj, _ = await self._get_or_implicit(info, name, namespace)
        return obj

    async def list(self, info: KindInfo, namespace: str | None = None) -> list[Any]:
        """All resources of a kind; namespaced kinds: one namespace, or all when None."""
        ns = namespace if info.namespaced else None
        kvs, _ = await self.store.list(keys.resource_prefix(info.plural, ns))
        items = [self._from_kv(info, kv) for kv in kvs]
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
            net = ipaddress.ip_network(obj.spec.cidr)
            for other in await self.list(info):
                if other.name == obj.name:
                    continue
                onet = ipaddress.ip_network(other.spec.cidr)
                if onet.version == net.version and net.overlaps(onet):
                    raise ResourceInvalid(info.kind, obj.name, [
                        f"spec.cidr: {obj.spec.cidr} overlaps with IPPool({other.name}) "
                        f"{other.spec.cidr}"])

    @staticmethod
    def _display(obj: Any) -> str:
        return f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name

    @staticmethod
    def _display_n(info: KindInfo, name: str, namespace: str | None) -> str:
        return f"{namespace or 'default'}/{name}" if info.namespaced else name
