"""The leader-election loop of tortie-kube-controllers: get / create / update one
``coordination.k8s.io/v1`` Lease through the Kubernetes API (the decisions are
:mod:`kubecontrollers.leader`'s).

:meth:`LeaderElection.run` looks at the Lease every retry period: a candidate takes it when
it is absent, released or expired; the leader renews it.  Every update carries the
resourceVersion read (optimistic concurrency): a 409 means another replica wrote first, and
the Lease is read again at once.  Each request is bounded by what is left of the renew
deadline, so a hanging API server cannot keep a leader leading past it.  ``run`` returns
when leadership is lost (the Lease taken by another, or no renewal within the renew
deadline); :attr:`leading` is set while leading.  :meth:`release` hands the Lease back at a
clean shutdown (holder emptied), so a standby takes over at its next look.

Transport as in :mod:`kubecontrollers.reflector`: kubernetes_asyncio's ``CoordinationV1Api``
with ``_preload_content=False``, the JSON read and written as plain dicts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from kubecontrollers.leader import (
    Action,
    Elector,
    LeaseInvalid,
    LeaseRecord,
    Timing,
    Transition,
    WriteResult,
    lease_body,
    parse_lease,
    release_body,
    write_result,
)
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.raw_api import error_message, read_answer

log = logging.getLogger("tortie.kc.leader")

#: Immediate re-reads after a 409 within one look (then: the next retry period).
CONFLICT_RETRIES = 3


class LeaseError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class LeaderElection:
    def __init__(self, api_client: client.ApiClient, *, name: str, namespace: str,
                 identity: str, timing: Timing, metrics: KubeMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        timing.validate()
        self.api = client.CoordinationV1Api(api_client)
        self.name, self.namespace = name, namespace
        self.identity = identity
        self.timing = timing
        self.metrics = metrics or KubeMetrics()
        self.clock, self.wall = clock, wall
        self.elector = Elector(identity, timing)
        self.leading = asyncio.Event()
        self.lost_reason = ""
        self.last_error = ""
        self.metrics.leader.set(0)

    @property
    def fields(self) -> dict[str, Any]:
        return {"identity": self.identity, "lease": f"{self.namespace}/{self.name}"}

    # --- the API ------------------------------------------------------------------------------

    async def _get(self) -> LeaseRecord | None:
        resp = await self.api.read_namespaced_lease(
            self.name, self.namespace, _preload_content=False,
            _request_timeout=self.timing.renew_deadline)
        status, body = await read_answer(resp)
        if status == 404:
            return None
        if status != 200:
            raise LeaseError(status, error_message(body))
        return parse_lease(body)

    async def _write(self, action: Action, body: dict[str, Any]) -> tuple[WriteResult, Any]:
        if action is Action.CREATE:
            resp = await self.api.create_namespaced_lease(
                self.namespace, body, _preload_content=False,
                _request_timeout=self.timing.renew_deadline)
        else:
            resp = await self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False,
                _request_timeout=self.timing.renew_deadline)
        status, answer = await read_answer(resp)
        result = write_result(status)
        if result is WriteResult.ERROR:
            raise LeaseError(status, error_message(answer))
        return result, answer

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Acquire, then renew, every retry period; return when leadership is lost."""
        log.info("waiting for the lease", extra={"fields": {
            **self.fields, "leaseDuration_s": self.timing.lease_duration,
            "renewDeadline_s": self.timing.renew_deadline,
            "retryPeriod_s": self.timing.retry_period}})
        while True:
            started = self.clock()
            await self._look()
            if self.lost_reason:
                return
            # a look every retry period (not a period after each look): a standby's looks
            # fall on the lease's expiry instead of drifting past it by the requests' time
            await asyncio.sleep(max(0.0, started + self.timing.retry_period - self.clock()))

    async def _look(self) -> None:
        """One look at the Lease: read, decide, write (re-read at once after a conflict)."""
        for _ in range(CONFLICT_RETRIES):
            try:
                async with asyncio.timeout(self.elector.time_left(self.clock())):
                    done = await self._attempt()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, LeaseError, LeaseInvalid, aiohttp.ClientError,
                    OSError) as e:
                self._failed(str(e) or type(e).__name__)
                break
            if done:
                self.last_error = ""
                return
            self.metrics.lease_conflicts.inc()
            log.debug("lease changed under us; reading it again", extra={"fields": self.fields})
        if self.elector.deadline_passed(self.clock()):
            self._lose(f"not renewed within the renew deadline "
                       f"({self.timing.renew_deadline:g}s): {self.last_error or 'conflicts'}")

    async def _attempt(self) -> bool:
        """False: a conflict, read again."""
        before = self.elector.holder
        lease = await self._get()
        decision = self.elector.read(lease, self.clock())
        if decision.holder != before and decision.holder not in ("", self.identity):
            log.info("leader observed", extra={"fields": {
                **self.fields, "holder": decision.holder}})
        if decision.action is Action.WAIT:
            return True
        if decision.action is Action.LOST:
            self._lose(f"the lease is held by {decision.holder}")
            return True
        body = lease_body(decision.action, lease, self.identity, self.timing, self.wall(),
                          name=self.name, namespace=self.namespace)
        result, answer = await self._write(decision.action, body)
        if result is WriteResult.CONFLICT:
            return False
        written = parse_lease(answer)
        transition = self.elector.wrote(written, self.clock())
        if transition is Transition.STARTED:
            self.leading.set()
            self.metrics.leader.set(1)
            self.metrics.leader_transitions.labels(event="started").inc()
            log.info("started leading", extra={"fields": {
                **self.fields, "action": decision.action.value,
                "previousHolder": decision.holder or "-",
                "leaseTransitions": written.transitions}})
        return True

    def _failed(self, error: str) -> None:
        self.last_error = error
        self.metrics.lease_errors.inc()
        log.warning("lease request failed", extra={"fields": {
            **self.fields, "leading": self.elector.leading, "error": error}})

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        if self.elector.stop() is Transition.STOPPED:
            self.metrics.leader_transitions.labels(event="lost").inc()
        self.leading.clear()
        self.metrics.leader.set(0)
        log.error("stopped leading: lost the lease", extra={"fields": {
            **self.fields, "reason": reason}})

    async def release(self) -> bool:
        """Hand the Lease back (only if this candidate holds it: the update carries the
        resourceVersion of its last write).  True when released."""
        lease = self.elector.lease
        if not self.elector.leading or lease is None or lease.holder != self.identity:
            return False
        self.elector.stop()
        self.leading.clear()
        self.metrics.leader.set(0)
        self.metrics.leader_transitions.labels(event="released").inc()
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                result, _ = await self._write(Action.RENEW, release_body(lease, self.wall()))
        except (TimeoutError, LeaseError, aiohttp.ClientError, OSError) as e:
            log.warning("stopped leading; the lease could not be released (it expires after "
                        "its duration)", extra={"fields": {**self.fields, "error": str(e)}})
            return False
        if result is not WriteResult.OK:
            log.info("stopped leading; the lease had changed already, nothing to release",
                     extra={"fields": self.fields})
            return False
        log.info("stopped leading: lease released", extra={"fields": self.fields})
        return True

    def health(self) -> dict[str, Any]:
        return {"identity": self.identity, "lease": f"{self.namespace}/{self.name}",
                "leading": self.elector.leading, "holder": self.elector.holder,
                "lastError": self.last_error}
