"""The leader-election decisions of tortie-kube-controllers (kubecontrollers/leader.py):
what a candidate does with the Lease as read, the Lease it writes, and its own state --
no API server, no clock (every time is given)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kubecontrollers.leader import (
    Action,
    Elector,
    LeaseInvalid,
    LeaseRecord,
    Observation,
    Timing,
    Transition,
    WriteResult,
    decide,
    identity,
    lease_body,
    micro_time,
    observe,
    parse_lease,
    release_body,
    write_result,
)

ME = "host-a_101"
OTHER = "host-b_202"
T = Timing(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
WALL = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def lease_obj(holder: str | None = OTHER, rv: str = "100", duration: Any = 15,
              transitions: Any = 3, renew: str | None = "2026-01-02T03:04:00.000000Z",
              ) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration, "leaseTransitions": transitions,
                            "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": renew}
    if holder is not None:
        spec["holderIdentity"] = holder
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kc", "namespace": "kube-system", "resourceVersion": rv},
            "spec": spec}


def record(**kw: Any) -> LeaseRecord:
    return parse_lease(lease_obj(**kw))


# --- parsing ------------------------------------------------------------------------------------


def test_parse_lease_reads_the_fields() -> None:
    r = record()
    assert (r.name, r.namespace, r.resource_version) == ("kc", "kube-system", "100")
    assert (r.holder, r.duration_s, r.transitions) == (OTHER, 15, 3)
    assert r.renew_time == "2026-01-02T03:04:00.000000Z"


def test_parse_lease_without_holder_or_spec() -> None:
    assert record(holder=None).holder == ""
    obj = lease_obj()
    del obj["spec"]
    r = parse_lease(obj)
    assert (r.holder, r.duration_s, r.transitions) == ("", None, 0)


@pytest.mark.parametrize(("change", "field"), [
    (lambda o: o["metadata"].pop("resourceVersion"), "metadata.resourceVersion"),
    (lambda o: o["metadata"].pop("name"), "metadata.name"),
    (lambda o: o["spec"].update(leaseDurationSeconds="15"), "spec.leaseDurationSeconds"),
    (lambda o: o["spec"].update(leaseDurationSeconds=0), "spec.leaseDurationSeconds"),
    (lambda o: o["spec"].update(leaseTransitions=-1), "spec.leaseTransitions"),
    (lambda o: o["spec"].update(holderIdentity=7), "spec.holderIdentity"),
    (lambda o: o["spec"].update(renewTime=12), "spec.renewTime"),
])
def test_parse_lease_names_the_bad_field(change: Any, field: str) -> None:
    obj = lease_obj()
    change(obj)
    with pytest.raises(LeaseInvalid, match=field.replace(".", r"\.")):
        parse_lease(obj)


def test_identity_is_hostname_and_pid() -> None:
    assert identity("node-1.example", 42) == "node-1.example_42"
    assert identity("we ird/host", 7) == "we-ird-host_7"
    assert identity("", 7) == "unknown_7"


def test_micro_time_is_utc_with_microseconds() -> None:
    assert micro_time(WALL) == "2026-01-02T03:04:05.678901Z"
    plus2 = WALL.astimezone(timezone(timedelta(hours=2)))
    assert micro_time(plus2) == "2026-01-02T03:04:05.678901Z"


# --- timing -------------------------------------------------------------------------------------


def test_timing_defaults_are_upstreams() -> None:
    Timing().validate()
    assert (Timing().lease_duration, Timing().renew_deadline, Timing().retry_period) == (
        15.0, 10.0, 2.0)


@pytest.mark.parametrize(("timing", "flag"), [
    (Timing(10, 10, 2), "--lease-duration"),
    (Timing(15, 2, 2), "--renew-deadline"),
    (Timing(15, 10, 0), "--retry-period"),
    (Timing(-1, 10, 2), "--lease-duration"),
])
def test_timing_rejects_durations_that_cannot_work(timing: Timing, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        timing.validate()


def test_lease_duration_seconds_round_up() -> None:
    assert Timing(4, 3, 1).lease_duration_s == 4
    assert Timing(2.5, 2, 1).lease_duration_s == 3
    assert Timing(0.5, 0.4, 0.1).lease_duration_s == 1


# --- decisions ----------------------------------------------------------------------------------


def test_no_lease_is_created() -> None:
    assert decide(None, None, 0.0, ME, T, leading=False).action is Action.CREATE
    # the leader whose Lease was deleted recreates it
    assert decide(None, None, 0.0, ME, T, leading=True).action is Action.CREATE


def test_held_by_me_is_renewed() -> None:
    lease = record(holder=ME)
    d = decide(lease, Observation("100", 0.0), 100.0, ME, T, leading=True)
    assert d.action is Action.RENEW and d.holder == ME


def test_released_lease_is_taken_at_once() -> None:
    lease = record(holder="", duration=1)
    seen = observe(lease, None, 50.0)
    assert decide(lease, seen, 50.0, ME, T, leading=False).action is Action.ACQUIRE


def test_held_by_other_waits_until_unchanged_for_its_duration() -> None:
    lease = record(holder=OTHER, duration=15)
    seen = observe(lease, None, 100.0)
    d = decide(lease, seen, 100.0, ME, T, leading=False)
    assert d.action is Action.WAIT and d.holder == OTHER and d.expires_in == 15.0
    d = decide(lease, seen, 114.9, ME, T, leading=False)
    assert d.action is Action.WAIT and d.expires_in == pytest.approx(0.1)
    # exactly the duration: expired (client-go: valid only while observed+duration is after now)
    assert decide(lease, seen, 115.0, ME, T, leading=False).action is Action.ACQUIRE
    assert decide(lease, seen, 200.0, ME, T, leading=False).action is Action.ACQUIRE


def test_a_renewed_lease_restarts_the_clock() -> None:
    seen = observe(record(rv="100"), None, 100.0)
    assert observe(record(rv="100"), seen, 110.0) is seen     # unchanged: same clock
    renewed = record(rv="101")
    seen2 = observe(renewed, seen, 110.0)
    assert seen2 == Observation("101", 110.0)
    d = decide(renewed, seen2, 120.0, ME, T, leading=False)
    assert d.action is Action.WAIT and d.expires_in == 5.0


def test_the_leases_own_duration_counts_not_mine() -> None:
    lease = record(duration=60)
    seen = observe(lease, None, 0.0)
    assert decide(lease, seen, 30.0, ME, T, leading=False).action is Action.WAIT
    assert decide(lease, seen, 60.0, ME, T, leading=False).action is Action.ACQUIRE
    no_duration = record(duration=None)
    seen = observe(no_duration, None, 0.0)      # absent: mine (15 s)
    assert decide(no_duration, seen, 14.0, ME, T, leading=False).action is Action.WAIT
    assert decide(no_duration, seen, 15.0, ME, T, leading=False).action is Action.ACQUIRE


def test_a_stale_renew_time_does_not_expire_a_freshly_seen_lease() -> None:
    """Clock skew: the holder's renewTime says a year ago (its clock, or mine, is off); a
    candidate that has just seen this version still waits the full duration."""
    lease = record(renew="2025-01-01T00:00:00.000000Z")
    seen = observe(lease, None, 1000.0)
    assert decide(lease, seen, 1000.0, ME, T, leading=False).action is Action.WAIT
    future = record(renew="2099-01-01T00:00:00.000000Z")   # and a holder clock far ahead
    seen = observe(future, None, 1000.0)                  # does not keep it alive forever
    assert decide(future, seen, 1015.0, ME, T, leading=False).action is Action.ACQUIRE


def test_a_clock_going_back_never_expires_a_lease() -> None:
    lease = record()
    seen = Observation("100", 500.0)
    d = decide(lease, seen, 400.0, ME, T, leading=False)
    assert d.action is Action.WAIT and d.expires_in == 15.0


def test_leader_that_sees_another_holder_has_lost() -> None:
    lease = record(holder=OTHER)
    seen = observe(lease, None, 10.0)
    assert decide(lease, seen, 10.0, ME, T, leading=True).action is Action.LOST
    # ... unless that holder's Lease has expired: then the leader takes it back
    assert decide(lease, seen, 25.0, ME, T, leading=True).action is Action.ACQUIRE


# --- what is written ----------------------------------------------------------------------------


def test_create_body() -> None:
    body = lease_body(Action.CREATE, None, ME, Timing(4, 3, 1), WALL, name="kc",
                      namespace="ns")
    assert body["metadata"] == {"name": "kc", "namespace": "ns"}   # no resourceVersion
    assert body["spec"] == {"holderIdentity": ME, "leaseDurationSeconds": 4,
                            "acquireTime": "2026-01-02T03:04:05.678901Z",
                            "renewTime": "2026-01-02T03:04:05.678901Z", "leaseTransitions": 0}
    assert (body["apiVersion"], body["kind"]) == ("coordination.k8s.io/v1", "Lease")


def test_acquire_body_carries_the_version_read_and_counts_a_transition() -> None:
    lease = record(holder=OTHER, rv="77", transitions=3)
    body = lease_body(Action.ACQUIRE, lease, ME, T, WALL, name="kc", namespace="kube-system")
    assert body["metadata"]["resourceVersion"] == "77"
    assert body["spec"]["holderIdentity"] == ME
    assert body["spec"]["leaseTransitions"] == 4
    assert body["spec"]["acquireTime"] == body["spec"]["renewTime"] == micro_time(WALL)


def test_renew_body_keeps_acquire_time_and_transitions() -> None:
    lease = record(holder=ME, rv="78", transitions=4)
    body = lease_body(Action.RENEW, lease, ME, T, WALL, name="kc", namespace="kube-system")
    assert body["metadata"]["resourceVersion"] == "78"
    assert body["spec"]["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    assert body["spec"]["renewTime"] == micro_time(WALL)
    assert body["spec"]["leaseTransitions"] == 4
    assert body["spec"]["leaseDurationSeconds"] == 15


def test_nothing_is_written_for_wait_or_lost() -> None:
    for action in (Action.WAIT, Action.LOST):
        with pytest.raises(ValueError):
            lease_body(action, record(), ME, T, WALL, name="kc", namespace="kube-system")
    with pytest.raises(ValueError):
        lease_body(Action.RENEW, None, ME, T, WALL, name="kc", namespace="kube-system")


def test_release_body_empties_the_holder_under_the_version_held() -> None:
    lease = record(holder=ME, rv="90", transitions=5)
    body = release_body(lease, WALL)
    assert body["metadata"] == {"name": "kc", "namespace": "kube-system",
                                "resourceVersion": "90"}
    assert body["spec"]["holderIdentity"] == ""
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["spec"]["leaseTransitions"] == 5
    # a candidate reading it takes it at once
    released = parse_lease({**body, "metadata": {**body["metadata"], "resourceVersion": "91"}})
    assert decide(released, observe(released, None, 0.0), 0.0, OTHER, T,
                  leading=False).action is Action.ACQUIRE


@pytest.mark.parametrize(("status", "result"), [
    (200, WriteResult.OK), (201, WriteResult.OK), (409, WriteResult.CONFLICT),
    (403, WriteResult.ERROR), (422, WriteResult.ERROR), (500, WriteResult.ERROR),
    (504, WriteResult.ERROR)])
def test_write_results(status: int, result: WriteResult) -> None:
    assert write_result(status) is result


# --- one candidate over time --------------------------------------------------------------------


def written(holder: str, rv: str, transitions: int = 0) -> LeaseRecord:
    return record(holder=holder, rv=rv, transitions=transitions)


def test_elector_acquires_renews_and_misses_the_deadline() -> None:
    e = Elector(ME, T)
    assert e.read(None, 0.0).action is Action.CREATE
    assert e.wrote(written(ME, "1"), 0.1) is Transition.STARTED and e.leading
    assert e.read(written(ME, "1"), 2.1).action is Action.RENEW
    assert e.wrote(written(ME, "2"), 2.2) is Transition.RENEWED
    assert e.time_left(5.0) == pytest.approx(7.2)
    assert not e.deadline_passed(12.1)          # renewals failing since 2.2 ...
    assert e.time_left(12.1) == pytest.approx(0.1)
    assert e.deadline_passed(12.2)              # ... past the renew deadline: stop
    assert e.time_left(13.0) == 0.0
    assert e.stop() is Transition.STOPPED and not e.leading
    assert e.stop() is None
    assert not e.deadline_passed(100.0)         # a candidate has no deadline
    assert e.time_left(100.0) == T.renew_deadline


def test_elector_standby_takes_over_a_dead_leader() -> None:
    e = Elector(ME, T)
    for now, rv in ((0.0, "5"), (2.0, "6"), (4.0, "7")):   # the leader renews
        d = e.read(written(OTHER, rv), now)
        assert d.action is Action.WAIT and d.expires_in == 15.0
    # the leader dies: the version stops changing
    assert e.read(written(OTHER, "7"), 18.9).action is Action.WAIT
    d = e.read(written(OTHER, "7"), 19.0)
    assert d.action is Action.ACQUIRE and d.holder == OTHER


def test_elector_resource_version_conflict_then_retry() -> None:
    """Two standbys decide to take the same expired version; the one whose update gets a
    409 reads again, sees the winner's fresh version and waits."""
    a, b = Elector("a_1", T), Elector("b_2", T)
    dead = written(OTHER, "7")
    for e in (a, b):
        e.read(dead, 0.0)
    assert a.read(dead, 15.0).action is Action.ACQUIRE
    assert b.read(dead, 15.0).action is Action.ACQUIRE
    assert a.wrote(written("a_1", "8", 4), 15.1) is Transition.STARTED
    assert write_result(409) is WriteResult.CONFLICT          # b's update carried rv 7
    d = b.read(written("a_1", "8", 4), 15.2)                  # b reads again at once
    assert d.action is Action.WAIT and d.holder == "a_1" and not b.leading


def test_elector_leader_that_finds_another_holder() -> None:
    e = Elector(ME, T)
    e.read(None, 0.0)
    e.wrote(written(ME, "1"), 0.0)
    d = e.read(written(OTHER, "9"), 2.0)
    assert d.action is Action.LOST and d.holder == OTHER


# --- the flags ----------------------------------------------------------------------------------


LEASE_ENV = ("TORTIE_LEADER_ELECT", "TORTIE_LEASE_NAME", "TORTIE_LEASE_NAMESPACE",
             "TORTIE_LEASE_DURATION", "TORTIE_RENEW_DEADLINE", "TORTIE_RETRY_PERIOD")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LEASE_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_flags_default_off_with_upstream_durations(clean_env: pytest.MonkeyPatch) -> None:
    from kubecontrollers.main import parse_args
    args = parse_args([])
    assert args.leader_elect is False
    assert (args.lease_name, args.lease_namespace) == ("tortie-kube-controllers", "kube-system")
    assert args.timing == Timing(15.0, 10.0, 2.0)


def test_flags_and_env(clean_env: pytest.MonkeyPatch) -> None:
    from kubecontrollers.main import parse_args
    args = parse_args(["--leader-elect", "--lease-name", "kc", "--lease-namespace", "tortie",
                       "--lease-duration", "4s", "--renew-deadline", "3s",
                       "--retry-period", "500ms"])
    assert args.leader_elect and (args.lease_name, args.lease_namespace) == ("kc", "tortie")
    assert args.timing == Timing(4.0, 3.0, 0.5)
    clean_env.setenv("TORTIE_LEADER_ELECT", "true")
    clean_env.setenv("TORTIE_LEASE_NAMESPACE", "from-env")
    clean_env.setenv("TORTIE_LEASE_DURATION", "1m")
    args = parse_args([])
    assert args.leader_elect and args.lease_namespace == "from-env"
    assert args.timing.lease_duration == 60.0
    assert parse_args(["--no-leader-elect"]).leader_elect is False


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--lease-duration", "15"], {}, "--lease-duration: '15' is not a duration"),
    (["--renew-deadline", "20s"], {}, "--lease-duration (15s) must be longer than "
                                      "--renew-deadline (20s)"),
    (["--retry-period", "9s"], {}, "--renew-deadline (10s) must be longer than 1.2 x"),
    (["--lease-name", ""], {}, "--lease-name and --lease-namespace must not be empty"),
    ([], {"TORTIE_LEADER_ELECT": "maybe"}, "TORTIE_LEADER_ELECT must be true or false"),
])
def test_bad_flags_name_the_flag(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], env: dict[str, str], message: str) -> None:
    from kubecontrollers.main import parse_args
    for var, value in env.items():
        clean_env.setenv(var, value)
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
