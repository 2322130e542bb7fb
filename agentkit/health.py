"""Liveness and readiness of a daemon: the decisions behind ``/liveness`` and ``/readiness``.

* **live** -- every agent's loop makes progress: it beats its :class:`Heartbeat` at least
  every ``HEARTBEAT_INTERVAL`` while idle and once per iteration while working, so a beat
  older than the liveness timeout means a loop stuck in one step (a hung ``nft``, a blocked
  thread).  An agent whose task ended, or that keeps failing right after each restart
  (``CRASH_LOOP`` failures in a row, each run shorter than ``STABLE_RUN``), is dead too.  A
  datastore outage never makes a daemon unlive: its agents wait for etcd in loops that beat.
* **ready** -- the datastore answered a recent probe, every agent has programmed its first
  full sync (``Agent.ready``) and, where an agent runs BGP, every configured session is
  ``Established``.

The functions here are pure (times are passed in); :func:`probe_datastore` is the loop that
feeds a :class:`DatastoreProbe`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: An idle agent loop beats at least this often (seconds).
HEARTBEAT_INTERVAL = 10.0
#: A beat older than this (seconds) means the agent is stuck (--liveness-timeout's default).
DEFAULT_LIVENESS_TIMEOUT = 90.0
#: Failures in a row (each after a run shorter than STABLE_RUN) that make an agent dead.
CRASH_LOOP = 5
#: A run at least this long (seconds) before failing resets the count of failures in a row.
STABLE_RUN = 60.0
#: Seconds between two datastore probes; a probe older than STALE_PROBES of them is stale.
DATASTORE_PROBE_INTERVAL = 2.0
STALE_PROBES = 3
ESTABLISHED = "Established"

Clock = Callable[[], float]


class Heartbeat:
    """When an agent's loop last made progress (monotonic seconds)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self._clock()

    def age(self, now: float | None = None) -> float:
        return max(0.0, (self._clock() if now is None else now) - self.last)


@dataclass
class AgentRecord:
    """What the supervisor saw of one agent: its failures and whether its task ended."""

    failures: int = 0            # every failure since the start
    failures_in_a_row: int = 0   # failures after runs shorter than STABLE_RUN
    last_error: str = ""
    ended: str | None = None     # why the supervised task is over (None: running)

    def failed(self, error: str, ran_for: float) -> None:
        self.failures += 1
        self.failures_in_a_row = 1 if ran_for >= STABLE_RUN else self.failures_in_a_row + 1
        self.last_error = error


@dataclass(frozen=True)
class AgentView:
    """One agent as the health decisions see it."""

    name: str
    ready: bool
    heartbeat_age: float | None = None   # None: the agent has no heartbeat
    record: AgentRecord = field(default_factory=AgentRecord)
    #: (peer, state) of every configured BGP session; None: this agent runs no BGP
    bgp_sessions: tuple[tuple[str, str], ...] | None = None


def bgp_sessions(health: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """The (peer, state) pairs of an agent's ``health()`` (its ``peers`` list), or None when
    it reports none (no BGP speaker)."""
    peers = health.get("peers")
    if peers is None:
        return None
    return tuple((str(p.get("address", "?")), str(p.get("state", "?"))) for p in peers)


def agent_liveness(agent: AgentView, timeout: float) -> str:
    """Why ``agent`` is not live, or ``""`` when it is."""
    record = agent.record
    if record.ended is not None:
        return f"crashed: its task ended ({record.ended})"
    if record.failures_in_a_row >= CRASH_LOOP:
        return (f"crashed: failed {record.failures_in_a_row} times in a row, last: "
                f"{record.last_error or 'unknown error'}")
    if agent.heartbeat_age is not None and agent.heartbeat_age > timeout:
        return f"stuck: its loop made no progress for {agent.heartbeat_age:.0f}s " \
               f"(limit {timeout:g}s)"
    return ""


def liveness(agents: Sequence[AgentView], timeout: float) -> tuple[bool, dict[str, Any]]:
    """Whether the daemon is live, and the JSON body of ``/liveness``."""
    report: dict[str, Any] = {}
    failed: list[str] = []
    for a in agents:
        why = agent_liveness(a, timeout)
        entry: dict[str, Any] = {"live": not why}
        if a.heartbeat_age is not None:
            entry["heartbeat_age_s"] = round(a.heartbeat_age, 1)
        if a.record.failures:
            entry["failures"] = a.record.failures
            entry["last_error"] = a.record.last_error
        if why:
            entry["reason"] = why
            failed.append(a.name)
        report[a.name] = entry
    body: dict[str, Any] = {"status": "failed" if failed else "live", "agents": report}
    if failed:
        body["failed"] = failed
        body["reason"] = "; ".join(f"agent {n} {report[n]['reason']}" for n in failed)
    return not failed, body


def readiness(datastore_ok: bool, datastore_error: str,
              agents: Sequence[AgentView]) -> tuple[bool, dict[str, Any]]:
    """Whether the daemon is ready, and the JSON body of ``/readiness``."""
    reasons: list[str] = []
    if not datastore_ok:
        reasons.append(f"datastore unreachable: {datastore_error or 'no answer yet'}")
    report: dict[str, Any] = {}
    for a in agents:
        entry: dict[str, Any] = {"ready": a.ready}
        if not a.ready:
            reasons.append(f"agent {a.name}: first sync not programmed yet")
        if a.bgp_sessions is not None:
            entry["bgp"] = {peer: state for peer, state in a.bgp_sessions}
            down = [f"{peer} ({state})" for peer, state in a.bgp_sessions
                    if state != ESTABLISHED]
            if down:
                reasons.append(f"agent {a.name}: BGP sessions not established: "
                               f"{', '.join(down)}")
        report[a.name] = entry
    body: dict[str, Any] = {"status": "not ready" if reasons else "ready",
                            "datastore": "up" if datastore_ok else "down", "agents": report}
    if reasons:
        body["reasons"] = reasons
    return not reasons, body


class DatastoreProbe:
    """The outcome of the latest datastore probes: reachable while the last one succeeded
    and it is recent (a probe hanging on a frozen etcd makes the last success go stale)."""

    def __init__(self, stale_after: float = DATASTORE_PROBE_INTERVAL * STALE_PROBES,
                 clock: Clock = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self.last_ok: float | None = None
        self.ok = False
        self.error = "no probe yet"

    def record(self, ok: bool, error: str = "") -> None:
        self.ok = ok
        self.error = "" if ok else (error or "failed")
        if ok:
            self.last_ok = self._clock()

    def reachable(self, now: float | None = None) -> tuple[bool, str]:
        """(reachable, why not)."""
        if not self.ok:
            return False, self.error
        now = self._clock() if now is None else now
        if self.last_ok is None or now - self.last_ok > self.stale_after:
            return False, f"no answer for {self.stale_after:g}s"
        return True, ""


async def probe_datastore(check: Callable[[], Awaitable[Any]], probe: DatastoreProbe,
                          interval: float = DATASTORE_PROBE_INTERVAL,
                          timeout: float = DATASTORE_PROBE_INTERVAL) -> None:
    """Run ``check()`` every ``interval`` seconds (each bounded by ``timeout``) and record the
    outcome in ``probe``; runs until cancelled."""
    while True:
        try:
            await asyncio.wait_for(check(), timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            probe.record(False, f"no answer within {timeout:g}s")
        except Exception as e:
            probe.record(False, str(e) or type(e).__name__)
        else:
            probe.record(True)
        await asyncio.sleep(interval)


def views(agents: Iterable[Any], records: dict[str, AgentRecord],
          now: float | None = None) -> list[AgentView]:
    """:class:`AgentView` of running agents (an ``Agent`` with an optional ``heartbeat``)."""
    out = []
    for a in agents:
        beat = getattr(a, "heartbeat", None)
        try:
            sessions = bgp_sessions(a.health())
        except Exception:  # a health report that fails must not break the probes
            sessions = None
        out.append(AgentView(
            name=a.name, ready=a.ready.is_set(),
            heartbeat_age=beat.age(now) if isinstance(beat, Heartbeat) else None,
            record=records.setdefault(a.name, AgentRecord()), bgp_sessions=sessions))
    return out


class Monitor:
    """``/liveness`` and ``/readiness`` of a daemon running ``agents``: the agents' records
    (give :meth:`record` to ``supervise``) and the datastore probe (:meth:`run`)."""

    def __init__(self, agents: Sequence[Any], datastore_check: Callable[[], Awaitable[Any]],
                 *, liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
                 probe_interval: float = DATASTORE_PROBE_INTERVAL,
                 probe_timeout: float = DATASTORE_PROBE_INTERVAL) -> None:
        self.agents = agents
        self.check = datastore_check
        self.liveness_timeout = liveness_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.records: dict[str, AgentRecord] = {a.name: AgentRecord() for a in agents}
        self.datastore = DatastoreProbe(
            stale_after=max(probe_interval * STALE_PROBES, probe_interval + probe_timeout))

    def record(self, name: str) -> AgentRecord:
        return self.records.setdefault(name, AgentRecord())

    async def run(self) -> None:
        await probe_datastore(self.check, self.datastore, self.probe_interval,
                              self.probe_timeout)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return liveness(views(self.agents, self.records), self.liveness_timeout)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ok, why = self.datastore.reachable()
        return readiness(ok, why, views(self.agents, self.records))

    def liveness_route(self) -> tuple[int, str, str]:
        return _response(*self.liveness())

    def readiness_route(self) -> tuple[int, str, str]:
        return _response(*self.readiness())


def _response(ok: bool, body: dict[str, Any]) -> tuple[int, str, str]:
    return (200 if ok else 503), "application/json", json.dumps(body) + "\n"
