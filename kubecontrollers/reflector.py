"""List + watch of one Kubernetes resource, kept in a local cache.

:class:`Reflector` lists the resource (paginated with ``limit`` / ``continue``), then
watches from the list's ``resourceVersion`` with ``allowWatchBookmarks``; every event moves
the resourceVersion on (bookmarks too), so a watch that ends (the server's
``timeoutSeconds``) or breaks (connection lost, HTTP error) is resumed from where it was,
nothing missed and nothing repeated.  When the server says the resourceVersion is too old
(HTTP 410 or a watch ``ERROR`` event with code 410 ``Expired``/``Gone``), or a continue
token expired, it lists again and reports only the differences against its cache:
changed objects as updates and vanished ones as deletes, so a consumer never misses a
delete.

Listeners are plain functions called as ``listener(key, old, new)`` (``new`` ``None`` for
a delete; ``key`` is ``namespace/name`` or ``name``); an exception in one is logged and
counted.  An object without a name is logged, skipped and counted.

Transport: the kubernetes_asyncio API functions (``CoreV1Api(api).list_namespace``, ...)
called with ``_preload_content=False``; the JSON is read as is (no model classes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from agentkit.backoff import Backoff
from kubecontrollers.metrics import KubeMetrics

log = logging.getLogger("tortie.kc.reflector")

ListFunc = Callable[..., Awaitable[Any]]
Listener = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]

PAGE_SIZE = 500
WATCH_TIMEOUT = 300          # seconds the server keeps one watch open
READ_SLACK = 60              # extra seconds before a silent watch counts as broken
LIST_TIMEOUT = 120           # seconds a list page may take


class Gone(Exception):
    """The resourceVersion (or continue token) is too old: list again."""


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("object has no metadata.name")
    ns = meta.get("namespace")
    return f"{ns}/{name}" if ns else name


async def _status_error(resp: Any) -> Exception:
    text = ""
    with contextlib.suppress(Exception):
        text = (await resp.read()).decode(errors="replace")[:500]
    with contextlib.suppress(Exception):
        resp.release()
    message = text
    with contextlib.suppress(Exception):
        message = json.loads(text).get("message") or text
    if resp.status == 410:
        return Gone(message)
    return APIError(resp.status, message)


class Reflector:
    """Mirror of one Kubernetes resource (``resource`` names it in logs and metrics)."""

    def __init__(self, resource: str, list_func: ListFunc, *, metrics: KubeMetrics | None = None,
                 page_size: int = PAGE_SIZE, watch_timeout: int = WATCH_TIMEOUT,
                 kind: str = "", api_version: str = "") -> None:
        self.resource = resource
        self.list_func = list_func
        self.metrics = metrics or KubeMetrics()
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.kind, self.api_version = kind, api_version
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.listeners: list[Listener] = []
        self.synced_listeners: list[Callable[[], None]] = []
        self.relists = 0           # lists after the first
        self.last_error = ""

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        reason = "initial"
        while True:
            try:
                if self.resource_version is None:
                    await self._relist(reason)
                    backoff.reset()
                reason = "watch"
                started = asyncio.get_running_loop().time()
                if await self._watch():  # True: ended cleanly (timeout): watch again
                    backoff.reset()
                    if asyncio.get_running_loop().time() - started < 1.0:
                        await asyncio.sleep(backoff.first)  # never spin on a server that hangs up
                    continue
                backoff.reset()  # a broken stream: resume soon, from our resourceVersion
                self.metrics.watch_errors.labels(resource=self.resource).inc()
                self.last_error = "watch stream broken"
                log.info("watch broken; resuming", extra={"fields": {
                    "resource": self.resource, "resourceVersion": self.resource_version}})
            except asyncio.CancelledError:
                raise
            except Gone as e:
                log.info("resourceVersion too old; listing again", extra={"fields": {
                    "resource": self.resource, "resourceVersion": self.resource_version,
                    "error": str(e)}})
                self.resource_version = None
                if reason != "gone":
                    reason = "gone"
                    continue  # list again at once
                # gone again right after a list: do not hammer the server
            except (APIError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                self.metrics.watch_errors.labels(resource=self.resource).inc()
                self.last_error = str(e) or type(e).__name__
                reason = "error"
                log.warning("Kubernetes API request failed; retrying", extra={"fields": {
                    "resource": self.resource, "error": self.last_error,
                    "retry_s": f"{backoff.delay:g}"}})
            except Exception:
                self.metrics.watch_errors.labels(resource=self.resource).inc()
                reason = "error"
                log.exception("unexpected failure following the Kubernetes API",
                              extra={"fields": {"resource": self.resource}})
            await asyncio.sleep(backoff.next())

    async def _relist(self, reason: str) -> None:
        items: dict[str, dict[str, Any]] = {}
        token: str | None = None
        rv = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False,
                                      "_request_timeout": (30, LIST_TIMEOUT)}
            if token:
                kwargs["_continue"] = token
            resp = await self.list_func(**kwargs)
            if resp.status != 200:
                raise await _status_error(resp)
            body = await resp.json(content_type=None)
            resp.release()
            for obj in body.get("items") or []:
                self._fill_type(obj)
                try:
                    items[object_key(obj)] = obj
                except ValueError as e:
                    self._bad(obj, e)
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        if self.synced.is_set():
            self.relists += 1
        self.metrics.lists.labels(resource=self.resource, reason=reason).inc()
        self._replace(items)
        self.resource_version = rv or None
        if not self.synced.is_set():
            self.synced.set()
            self.metrics.synced.labels(resource=self.resource).set(1)
        for cb in self.synced_listeners:
            try:
                cb()
            except Exception:
                log.exception("synced callback failed",
                              extra={"fields": {"resource": self.resource}})
        log.info("listed", extra={"fields": {"resource": self.resource, "items": len(items),
                                             "resourceVersion": rv, "reason": reason}})

    async def _watch(self) -> bool:
        """One watch request; True when the server ended it cleanly."""
        self.metrics.watches.labels(resource=self.resource).inc()
        resp = await self.list_func(
            watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout, _preload_content=False,
            _request_timeout=(30, self.watch_timeout + READ_SLACK))
        if resp.status != 200:
            raise await _status_error(resp)
        try:
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError):
                    return False  # cut before the terminating chunk: resume from our rv
                if not line:
                    return True
                if line.strip():
                    self._event(line)
        finally:
            resp.release()

    def _event(self, line: bytes) -> None:
        try:
            ev = json.loads(line)
            etype = ev["type"]
            obj = ev["object"]
        except (ValueError, KeyError, TypeError) as e:
            self.metrics.bad_objects.labels(resource=self.resource).inc()
            log.warning("malformed watch event skipped", extra={"fields": {
                "resource": self.resource, "error": str(e), "line": line[:200]}})
            return
        self.metrics.events.labels(resource=self.resource, type=str(etype)).inc()
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            msg = obj.get("message", "") if isinstance(obj, dict) else str(obj)
            if code in (410, "410"):
                raise Gone(msg)
            raise APIError(int(code or 500), msg)
        rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        self._fill_type(obj)
        try:
            key = object_key(obj)
        except ValueError as e:
            self._bad(obj, e)
        else:
            if etype == "DELETED":
                self._deliver(key, None)
            elif etype in ("ADDED", "MODIFIED"):
                self._deliver(key, obj)
            else:
                self._bad(obj, ValueError(f"unknown event type {etype!r}"))
        if rv:
            self.resource_version = str(rv)

    def _fill_type(self, obj: Any) -> None:
        if isinstance(obj, dict):
            if self.kind:
                obj.setdefault("kind", self.kind)
            if self.api_version:
                obj.setdefault("apiVersion", self.api_version)

    def _bad(self, obj: Any, error: Exception) -> None:
        self.metrics.bad_objects.labels(resource=self.resource).inc()
        log.warning("object skipped", extra={"fields": {
            "resource": self.resource, "error": str(error), "object": str(obj)[:200]}})

    # --- the cache --------------------------------------------------------------------------

    def _replace(self, items: dict[str, dict[str, Any]]) -> None:
        for key in [k for k in self.cache if k not in items]:
            self._deliver(key, None)
        for key, obj in items.items():
            self._deliver(key, obj)

    def _deliver(self, key: str, obj: dict[str, Any] | None) -> None:
        old = self.cache.get(key)
        if obj is None:
            if old is None:
                return
            del self.cache[key]
        else:
            if old is not None and _rv(old) == _rv(obj) and _rv(obj):
                return
            self.cache[key] = obj
        for listener in self.listeners:
            try:
                listener(key, old, obj)
            except Exception:
                log.exception("listener failed", extra={"fields": {
                    "resource": self.resource, "key": key}})


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
