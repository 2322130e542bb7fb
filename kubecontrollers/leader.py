"""Leader election over a ``coordination.k8s.io/v1`` Lease: the decisions, without I/O.

The rules are client-go's (``tools/leaderelection``), which upstream kube-controllers uses:

* a Lease held by nobody (``holderIdentity`` empty: released at a clean shutdown) or absent
  is taken at once;
* a Lease held by another is taken only once it has **not changed** for its
  ``leaseDurationSeconds``, measured on *this* process's monotonic clock from the moment this
  process saw the current version (its ``resourceVersion``) -- never by comparing the
  holder's ``renewTime`` with this machine's wall clock, so replicas whose clocks disagree
  (or a wall clock that jumps) cannot steal a live Lease.  The times written
  (``acquireTime``, ``renewTime``) are for people and tools, not for these decisions;
* the holder renews every retry period; a holder that has not renewed for ``renew_deadline``
  (shorter than the lease duration) stops leading, before any other replica can decide the
  Lease expired;
* every write carries the ``resourceVersion`` read, so of two replicas racing for the same
  version exactly one wins; the other gets HTTP 409 and reads again (:func:`write_result`).

:class:`Elector` keeps what one candidate knows (the version it saw and when, whether it
leads, its last successful renewal); the I/O loop is :mod:`kubecontrollers.election`.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Defaults of the flags (client-go's and upstream kube-controllers').
DEFAULT_LEASE_NAME = "tortie-kube-controllers"
DEFAULT_LEASE_NAMESPACE = "kube-system"
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
#: The renew deadline must leave room for this many retry periods (client-go's JitterFactor).
JITTER_FACTOR = 1.2
#: ``leaseDurationSeconds`` of a released Lease (client-go writes 1 too).
RELEASED_DURATION_S = 1

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"


class LeaseInvalid(ValueError):
    """A Lease object that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Timing:
    """The three durations of an election, in seconds."""

    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def validate(self) -> None:
        """Raise ValueError naming the flag when the durations cannot work together."""
        for flag, value in (("--lease-duration", self.lease_duration),
                            ("--renew-deadline", self.renew_deadline),
                            ("--retry-period", self.retry_period)):
            if not value > 0:
                raise ValueError(f"{flag} must be positive, got {value:g}s")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(f"--lease-duration ({self.lease_duration:g}s) must be longer "
                             f"than --renew-deadline ({self.renew_deadline:g}s)")
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(f"--renew-deadline ({self.renew_deadline:g}s) must be longer "
                             f"than {JITTER_FACTOR:g} x --retry-period "
                             f"({self.retry_period:g}s)")

    @property
    def lease_duration_s(self) -> int:
        """``leaseDurationSeconds`` as written (whole seconds, rounded up)."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (the fields the election reads)."""

    name: str
    namespace: str
    resource_version: str
    holder: str                        # "" when nobody holds it
    duration_s: int | None             # leaseDurationSeconds
    acquire_time: str | None
    renew_time: str | None
    transitions: int


def _int_field(spec: dict[str, Any], field: str, minimum: int) -> int | None:
    value = spec.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LeaseInvalid(f"spec.{field} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_lease(obj: Any) -> LeaseRecord:
    """The record of a Lease object as the API returned it (raises LeaseInvalid)."""
    if not isinstance(obj, dict):
        raise LeaseInvalid(f"a Lease must be an object, got {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise LeaseInvalid("metadata is missing")
    name, rv = meta.get("name"), meta.get("resourceVersion")
    if not isinstance(name, str) or not name:
        raise LeaseInvalid("metadata.name is missing")
    if not isinstance(rv, str) or not rv:
        raise LeaseInvalid("metadata.resourceVersion is missing")
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise LeaseInvalid("spec must be an object")
    holder = spec.get("holderIdentity") or ""
    if not isinstance(holder, str):
        raise LeaseInvalid(f"spec.holderIdentity must be a string, got {holder!r}")
    times = {}
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is not None and not isinstance(value, str):
            raise LeaseInvalid(f"spec.{field} must be a timestamp string, got {value!r}")
        times[field] = value
    return LeaseRecord(
        name=name, namespace=str(meta.get("namespace") or ""), resource_version=rv,
        holder=holder, duration_s=_int_field(spec, "leaseDurationSeconds", 1),
        acquire_time=times["acquireTime"], renew_time=times["renewTime"],
        transitions=_int_field(spec, "leaseTransitions", 0) or 0)


def micro_time(when: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_IDENTITY_BAD = re.compile(r"[^A-Za-z0-9._:-]")


def identity(hostname: str, pid: int) -> str:
    """``<hostname>_<pid>``: unique per process, stable for its life."""
    return f"{_IDENTITY_BAD.sub('-', hostname) or 'unknown'}_{pid}"


# --- decisions --------------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"      # no Lease: create it, holding it
    ACQUIRE = "acquire"    # released or expired: take it (update, with its resourceVersion)
    RENEW = "renew"        # held by me: renew it
    WAIT = "wait"          # held by another, still valid: look again after the retry period
    LOST = "lost"          # I lead, but another holds it now: stop leading at once


@dataclass(frozen=True)
class Observation:
    """The version of the Lease this candidate last saw change, and when (monotonic)."""

    resource_version: str
    at: float


@dataclass(frozen=True)
class Decision:
    action: Action
    holder: str                   # the holder as read ("" none)
    expires_in: float             # seconds until the Lease counts as expired here (0: now)


def observe(lease: LeaseRecord, seen: Observation | None, now: float) -> Observation:
    """The observation after reading ``lease`` at ``now``: unchanged version, unchanged
    clock; a new version starts the clock again."""
    if seen is not None and seen.resource_version == lease.resource_version:
        return seen
    return Observation(lease.resource_version, now)


def decide(lease: LeaseRecord | None, seen: Observation | None, now: float, me: str,
           timing: Timing, *, leading: bool) -> Decision:
    """What to do with the Lease as read (``seen``: the observation *after* this read)."""
    if lease is None:
        return Decision(Action.CREATE, "", 0.0)
    if lease.holder == me:
        return Decision(Action.RENEW, me, 0.0)
    if not lease.holder:
        return Decision(Action.ACQUIRE, "", 0.0)
    duration = lease.duration_s if lease.duration_s else timing.lease_duration
    age = 0.0 if seen is None else max(0.0, now - seen.at)  # a clock going back: not aged
    left = duration - age
    if left <= 0:
        return Decision(Action.ACQUIRE, lease.holder, 0.0)
    return Decision(Action.LOST if leading else Action.WAIT, lease.holder, left)


class WriteResult(enum.Enum):
    OK = "ok"
    CONFLICT = "conflict"      # someone else wrote first: read again and decide again
    ERROR = "error"            # anything else: try again after the retry period


def write_result(status: int) -> WriteResult:
    """What the HTTP status of a create / update of the Lease means."""
    if 200 <= status < 300:
        return WriteResult.OK
    if status == 409:  # resourceVersion conflict, or AlreadyExists on create
        return WriteResult.CONFLICT
    return WriteResult.ERROR


def lease_body(decision: Action, lease: LeaseRecord | None, me: str, timing: Timing,
               now: datetime, *, name: str, namespace: str) -> dict[str, Any]:
    """The Lease to write for ``decision`` (CREATE, ACQUIRE or RENEW): an update carries the
    resourceVersion read, so it fails (409) if the Lease changed meanwhile."""
    stamp = micro_time(now)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    spec: dict[str, Any] = {"holderIdentity": me, "leaseDurationSeconds": timing.lease_duration_s,
                            "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}
    if decision is Action.CREATE or lease is None:
        if decision is not Action.CREATE:
            raise ValueError(f"{decision.value} needs the Lease as read")
    elif decision is Action.RENEW:
        meta["resourceVersion"] = lease.resource_version
        spec["acquireTime"] = lease.acquire_time or stamp
        spec["leaseTransitions"] = lease.transitions
    elif decision is Action.ACQUIRE:
        meta["resourceVersion"] = lease.resource_version
        spec["leaseTransitions"] = lease.transitions + (1 if lease.holder != me else 0)
    else:
        raise ValueError(f"nothing to write for {decision.value}")
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def release_body(lease: LeaseRecord, now: datetime) -> dict[str, Any]:
    """The Lease handed back at a clean shutdown: no holder, so the next candidate takes it
    at its next look instead of waiting out the lease duration."""
    stamp = micro_time(now)
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": lease.name, "namespace": lease.namespace,
                         "resourceVersion": lease.resource_version},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": RELEASED_DURATION_S,
                     "acquireTime": stamp, "renewTime": stamp,
                     "leaseTransitions": lease.transitions}}


# --- one candidate's state --------------------------------------------------------------------


class Transition(enum.Enum):
    STARTED = "started leading"
    RENEWED = "renewed"
    STOPPED = "stopped leading"


class Elector:
    """What one candidate knows between two looks at the Lease (no I/O, no clock of its
    own: every method takes ``now``, a monotonic time)."""

    def __init__(self, me: str, timing: Timing) -> None:
        self.me = me
        self.timing = timing
        self.seen: Observation | None = None
        self.leading = False
        self.last_renew: float | None = None   # monotonic time of the last successful write
        self.holder = ""                       # the holder last read
        self.lease: LeaseRecord | None = None  # the Lease last read or written

    def read(self, lease: LeaseRecord | None, now: float) -> Decision:
        """The Lease was read at ``now`` (None: there is none)."""
        self.lease = lease
        if lease is None:
            self.seen = None
        else:
            self.seen = observe(lease, self.seen, now)
        d = decide(lease, self.seen, now, self.me, self.timing, leading=self.leading)
        self.holder = d.holder
        return d

    def wrote(self, lease: LeaseRecord, now: float) -> Transition:
        """A create / update succeeded (``lease``: as the server returned it)."""
        self.lease = lease
        self.seen = Observation(lease.resource_version, now)
        self.holder = lease.holder
        self.last_renew = now
        if self.leading:
            return Transition.RENEWED
        self.leading = True
        return Transition.STARTED

    def deadline_passed(self, now: float) -> bool:
        """Leading, and no successful renewal for the renew deadline: stop leading."""
        return (self.leading and self.last_renew is not None
                and now - self.last_renew >= self.timing.renew_deadline)

    def time_left(self, now: float) -> float:
        """Seconds a request may take before the renew deadline passes (leading), or a
        retry period's worth (not leading)."""
        if not self.leading or self.last_renew is None:
            return self.timing.renew_deadline
        return max(0.0, self.last_renew + self.timing.renew_deadline - now)

    def stop(self) -> Transition | None:
        """Stop leading (lost, deadline passed, or released)."""
        if not self.leading:
            return None
        self.leading = False
        return Transition.STOPPED
