"""A small in-process Kubernetes API server speaking the real list / watch protocol.

It serves, over plain HTTP/1.1 on 127.0.0.1 (asyncio streams, no framework):

* ``GET /api/v1/namespaces``, ``/api/v1/nodes``, ``/api/v1/pods``,
  ``/api/v1/serviceaccounts``, ``/api/v1/secrets``, ``/api/v1/services``,
  ``/apis/networking.k8s.io/v1/networkpolicies``,
  ``/apis/discovery.k8s.io/v1/endpointslices`` (and the namespaced
  ``.../namespaces/<ns>/pods`` forms): a ``<Kind>List`` with
  ``metadata.resourceVersion``; ``limit`` + ``continue`` paginate (a continue token older
  than the last compaction answers HTTP 410 ``Expired``, as the API server does);
* the same paths with ``watch=true``: HTTP 200 with ``Transfer-Encoding: chunked``, one JSON
  event per chunk (``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}``),
  starting after ``resourceVersion`` (or with synthetic ADDED events for every object when
  it is empty or ``0``), ending cleanly after ``timeoutSeconds``.  A resourceVersion older
  than the last :meth:`FakeKubeAPI.compact` gets an ``ERROR`` event with a 410 ``Expired``
  Status, exactly like etcd-backed watches of the real server.

Events: ``POST /api/v1/namespaces/<ns>/events`` creates one (409 if the name exists) and
``PATCH /api/v1/namespaces/<ns>/events/<name>`` merges a JSON object into one (404 if
absent), as ``kubectl get events`` would then show them (:meth:`get`, ``resource="events"``).

The test drives the cluster through Python (:meth:`put`, :meth:`delete`) and breaks it on
purpose: :meth:`compact`, :meth:`drop_watches` (abort every open watch connection),
:meth:`bookmark`, :attr:`fail_requests` (answer the next N requests with HTTP 500).
Every object change gets the next global resourceVersion (one counter, as etcd's revision).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

# resource (plural) -> (path prefix, kind, apiVersion, namespaced)
RESOURCES: dict[str, tuple[str, str, str, bool]] = {
    "namespaces": ("/api/v1", "Namespace", "v1", False),
    "nodes": ("/api/v1", "Node", "v1", False),
    "pods": ("/api/v1", "Pod", "v1", True),
    "serviceaccounts": ("/api/v1", "ServiceAccount", "v1", True),
    "secrets": ("/api/v1", "Secret", "v1", True),
    "events": ("/api/v1", "Event", "v1", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "NetworkPolicy", "networking.k8s.io/v1",
                        True),
    "services": ("/api/v1", "Service", "v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice", "discovery.k8s.io/v1",
                       True),
}


@dataclass
class _Event:
    rv: int
    type: str
    obj: dict[str, Any]


@dataclass
class _Watcher:
    resource: str
    namespace: str | None
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.StreamWriter | None = None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _bool(value: str | None) -> bool:
    """A query flag as Go's strconv.ParseBool reads it (the client sends ``True``)."""
    return (value or "").lower() in ("1", "t", "true")


class FakeKubeAPI:
    """The fake API server; ``async with FakeKubeAPI() as api: api.url``."""

    def __init__(self) -> None:
        self.rv = 1
        self.compacted = 0
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in
                                                                          RESOURCES}
        self.history: dict[str, list[_Event]] = {r: [] for r in RESOURCES}
        self.watchers: list[_Watcher] = []
        self.fail_requests = 0
        self.requests: list[str] = []          # "GET /api/v1/pods?watch=true&..." in order
        self.watch_count: dict[str, int] = {r: 0 for r in RESOURCES}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> FakeKubeAPI:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_watches()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    # --- the cluster, driven by the test -------------------------------------------------

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update an object (as the API server stores it); returns the stored copy."""
        _, kind, api_version, namespaced = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        old = self.objects[resource].get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        obj["kind"], obj["apiVersion"] = kind, api_version
        self.objects[resource][key] = obj
        self._emit(resource, _Event(self.rv, "MODIFIED" if old else "ADDED", obj))
        return copy.deepcopy(obj)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        key = (namespace or ("default" if RESOURCES[resource][3] else ""), name)
        old = self.objects[resource].pop(key)
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(resource, _Event(self.rv, "DELETED", gone))

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        key = (namespace or ("default" if RESOURCES[resource][3] else ""), name)
        return copy.deepcopy(self.objects[resource][key])

    def compact(self) -> None:
        """Forget all history: watches and continue tokens from before now get 410."""
        self.compacted = self.rv
        for r in self.history:
            self.history[r] = []

    def drop_watches(self) -> None:
        """Abort every open watch connection (no terminating chunk: a broken stream)."""
        for w in list(self.watchers):
            if w.writer is not None:
                w.writer.transport.abort()
            w.queue.put_nowait(None)

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to every watcher."""
        for w in self.watchers:
            _, kind, api_version, _ = RESOURCES[w.resource]
            w.queue.put_nowait(_Event(self.rv, "BOOKMARK", {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.rv)}}))

    def open_watches(self, resource: str) -> int:
        return sum(1 for w in self.watchers if w.resource == resource)

    def _emit(self, resource: str, ev: _Event) -> None:
        self.history[resource].append(ev)
        for w in self.watchers:
            if w.resource == resource and (w.namespace is None
                                           or w.namespace == ev.obj["metadata"].get("namespace")):
                w.queue.put_nowait(ev)

    # --- HTTP -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            self.requests.append(f"{method} {target}")
            length = 0
            for h in head.decode("latin-1").split("\r\n")[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip() or 0)
            body = await reader.readexactly(length) if length else b""
            if method in ("POST", "PATCH") and "/events" in target and not self.fail_requests:
                await self._write_event(method, urlsplit(target).path, body, writer)
                return
            await self._route(method, target, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
                  500: "Internal Server Error"}.get(code, "")
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()

    async def _write_event(self, method: str, path: str, body: bytes,
                           writer: asyncio.StreamWriter) -> None:
        head, _, rest = path.partition("/api/v1/namespaces/")
        ns, _, tail = rest.partition("/events")
        if head or not ns or "/" in ns or (method == "POST") != (tail == ""):
            await self._reply(writer, 404, _status(404, "NotFound", f"{path} not found"))
            return
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            await self._reply(writer, 400, _status(400, "BadRequest", "not JSON"))
            return
        if method == "POST":
            name = data.get("metadata", {}).get("name", "")
            if (ns, name) in self.objects["events"]:
                await self._reply(writer, 409, _status(409, "AlreadyExists", name))
                return
            data.setdefault("metadata", {})["namespace"] = ns
            await self._reply(writer, 201, self.put("events", data))
            return
        name = tail.lstrip("/")
        if (ns, name) not in self.objects["events"]:
            await self._reply(writer, 404, _status(404, "NotFound", f"events {name!r}"))
            return
        obj = self.get("events", name, ns)
        obj.update({k: v for k, v in data.items() if k != "metadata"})
        await self._reply(writer, 200, self.put("events", obj))

    def _parse(self, path: str) -> tuple[str, str | None] | None:
        for resource, (prefix, *_rest) in RESOURCES.items():
            if path == f"{prefix}/{resource}":
                return resource, None
            head = f"{prefix}/namespaces/"
            if path.startswith(head) and path.endswith(f"/{resource}"):
                ns = path[len(head):-len(resource) - 1]
                if ns and "/" not in ns:
                    return resource, ns
        return None

    async def _route(self, method: str, target: str, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if self.fail_requests > 0:
            self.fail_requests -= 1
            await self._reply(writer, 500, _status(500, "InternalError", "injected failure"))
            return
        parsed = self._parse(url.path)
        if parsed is None:
            await self._reply(writer, 404, _status(404, "NotFound", f"{url.path} not found"))
            return
        if method != "GET":
            await self._reply(writer, 405, _status(405, "MethodNotAllowed", method))
            return
        resource, ns = parsed
        if _bool(q.get("watch")):
            await self._watch(resource, ns, q, writer)
        else:
            await self._list(resource, ns, q, writer)

    def _current(self, resource: str, ns: str | None) -> list[dict[str, Any]]:
        items = [o for (ons, _), o in sorted(self.objects[resource].items())
                 if ns is None or ons == ns]
        return copy.deepcopy(items)

    async def _list(self, resource: str, ns: str | None, q: dict[str, str],
                    writer: asyncio.StreamWriter) -> None:
        _, kind, api_version, _ = RESOURCES[resource]
        limit = int(q.get("limit") or 0)
        offset, rv = 0, self.rv
        token = q.get("continue")
        if token:
            rv, offset = json.loads(base64.urlsafe_b64decode(token.encode()))
            if rv < self.compacted:
                await self._reply(writer, 410, _status(
                    410, "Expired", "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue "
                    "parameter."))
                return
        items = self._current(resource, ns)
        page = items[offset:offset + limit] if limit else items[offset:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and offset + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps([rv, offset + limit]).encode()).decode()
        for it in page:  # list items carry no kind / apiVersion, as in the real API
            it.pop("kind", None)
            it.pop("apiVersion", None)
        await self._reply(writer, 200, {"kind": f"{kind}List", "apiVersion": api_version,
                                        "metadata": meta, "items": page})

    async def _watch(self, resource: str, ns: str | None, q: dict[str, str],
                     writer: asyncio.StreamWriter) -> None:
        self.watch_count[resource] += 1
        start = q.get("resourceVersion") or "0"
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = _bool(q.get("allowWatchBookmarks"))
        w = _Watcher(resource, ns, writer=writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")

        def send(ev: _Event) -> None:
            body = json.dumps({"type": ev.type, "object": ev.obj}).encode() + b"\n"
            writer.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")

        if start == "0":
            for obj in self._current(resource, ns):
                send(_Event(self.rv, "ADDED", obj))
        else:
            since = int(start)
            if since < self.compacted:
                send(_Event(self.rv, "ERROR", _status(
                    410, "Expired", f"too old resource version: {since} ({self.compacted})")))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            for ev in self.history[resource]:
                if ev.rv > since and (ns is None or ev.obj["metadata"].get("namespace") == ns):
                    send(ev)
        self.watchers.append(w)
        try:
            await writer.drain()
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    break
                if ev is None:  # dropped
                    return
                if ev.type == "BOOKMARK" and not bookmarks:
                    continue
                send(ev)
                await writer.drain()
            writer.write(b"0\r\n\r\n")  # a clean end of the stream
            await writer.drain()
        finally:
            self.watchers.remove(w)
