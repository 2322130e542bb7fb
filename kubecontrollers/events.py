"""Kubernetes Events from tortie-kube-controllers, in the manner of client-go's recorder.

:meth:`EventRecorder.record` posts a core/v1 ``Event`` about an object.  The recorder keeps
each event it posted, by (involved object, type, reason, message): the same event again
increments that Event's ``count`` and ``lastTimestamp`` (a merge PATCH) instead of making a
new one, as client-go's correlator does, and an Event the API server no longer has (events
expire, one hour by default) is created again.  So a caller may record on every state change
without spamming; it decides what a state change is.

Posting never raises: a refusal (RBAC, an API server down) is logged with the event's
reason and object, and counted in ``tortie_kc_events_failed_total``; the controller goes on.

Transport as in :mod:`kubecontrollers.election`: kubernetes_asyncio's ``CoreV1Api`` with
``_preload_content=False``, JSON as plain dicts (:mod:`kubecontrollers.raw_api`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.raw_api import error_message, read_answer

log = logging.getLogger("tortie.kc.events")

COMPONENT = "tortie-kube-controllers"
WARNING = "Warning"
NORMAL = "Normal"
REQUEST_TIMEOUT = 10.0
#: events remembered for the count (the oldest are forgotten first, as client-go's LRU)
CACHE_SIZE = 4096


@dataclass
class _Posted:
    name: str
    namespace: str
    count: int


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(namespace: str, name: str, involved: dict[str, str], event_type: str,
               reason: str, message: str, *, host: str, instance: str,
               when: datetime) -> dict[str, Any]:
    """A new core/v1 Event (count 1)."""
    ts = _timestamp(when)
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": dict(involved), "type": event_type, "reason": reason,
            "message": message, "count": 1, "firstTimestamp": ts, "lastTimestamp": ts,
            "source": {"component": COMPONENT, "host": host},
            "reportingComponent": COMPONENT, "reportingInstance": instance}


class EventRecorder:
    def __init__(self, api_client: client.ApiClient, *, host: str, instance: str = "",
                 metrics: KubeMetrics | None = None,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.api = client.CoreV1Api(api_client)
        self.host = host
        self.instance = instance or host
        self.metrics = metrics or KubeMetrics()
        self.wall = wall
        self._posted: dict[tuple[str, ...], _Posted] = {}
        self.posted = 0
        self.last_error = ""

    async def record(self, involved: dict[str, str], event_type: str, reason: str,
                     message: str) -> bool:
        """Post (or count again) one event about ``involved`` (``kind``, ``namespace``,
        ``name``, ``apiVersion``; the Event goes to its namespace).  True when the API
        server took it."""
        namespace = involved.get("namespace") or "default"
        key = (involved.get("kind", ""), namespace, involved.get("name", ""), event_type,
               reason, message)
        fields = {"event_reason": reason, "object": f"{involved.get('kind')}/{namespace}/"
                  f"{involved.get('name')}"}
        when = self.wall()
        try:
            seen = self._posted.get(key)
            if seen is not None:
                status, body = await read_answer(await self.api.patch_namespaced_event(
                    seen.name, seen.namespace,
                    {"count": seen.count + 1, "lastTimestamp": _timestamp(when)},
                    _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                    _content_type="application/merge-patch+json"))
                if 200 <= status < 300:
                    seen.count += 1
                    self._done("patched", fields, seen.count)
                    return True
                if status != 404:
                    return self._failed(fields, status, error_message(body))
                del self._posted[key]  # expired on the API server: a new one
            name = f"{involved.get('name', 'object')}.{time.time_ns():x}"
            status, body = await read_answer(await self.api.create_namespaced_event(
                namespace, event_body(namespace, name, involved, event_type, reason, message,
                                      host=self.host, instance=self.instance, when=when),
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        except Exception as e:  # a connection error, a timeout: the next change tries again
            return self._failed(fields, 0, str(e) or type(e).__name__)
        if not 200 <= status < 300:
            return self._failed(fields, status, error_message(body))
        if len(self._posted) >= CACHE_SIZE:
            self._posted.pop(next(iter(self._posted)))
        self._posted[key] = _Posted(name, namespace, 1)
        self._done("created", fields, 1)
        return True

    def _done(self, what: str, fields: dict[str, Any], count: int) -> None:
        self.posted += 1
        log.info(f"event {what}", extra={"fields": {**fields, "count": count}})

    def _failed(self, fields: dict[str, Any], status: int, error: str) -> bool:
        self.metrics.events_failed.inc()
        self.last_error = f"HTTP {status}: {error}" if status else error
        log.warning("cannot post an event", extra={"fields": {
            **fields, "error": self.last_error}})
        return False
