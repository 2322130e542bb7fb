"""The decisions behind /liveness and /readiness (agentkit/health.py), the supervisor's
record of failures, and the HTTP answers of a Monitor."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentkit.agent import supervise
from agentkit.backoff import Backoff
from agentkit.health import (
    CRASH_LOOP,
    STABLE_RUN,
    AgentRecord,
    AgentView,
    DatastoreProbe,
    Heartbeat,
    Monitor,
    bgp_sessions,
    liveness,
    probe_datastore,
    readiness,
)
from agentkit.http import parse_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- liveness ----------------------------------------------------------------------------------


def test_live_while_every_heartbeat_is_recent() -> None:
    ok, body = liveness([AgentView("policy", True, 5.0), AgentView("routing", False, 80.0)],
                        90.0)
    assert ok and body["status"] == "live" and "failed" not in body
    assert body["agents"]["routing"]["live"] is True


def test_a_stuck_agent_fails_liveness_naming_it() -> None:
    ok, body = liveness([AgentView("policy", True, 5.0), AgentView("routing", True, 91.0)],
                        90.0)
    assert not ok
    assert body["failed"] == ["routing"]
    assert "stuck" in body["agents"]["routing"]["reason"]
    assert "agent routing" in body["reason"]
    assert body["agents"]["policy"]["live"] is True


def test_an_ended_or_crash_looping_agent_is_dead() -> None:
    ended = AgentRecord(ended="run returned")
    ok, body = liveness([AgentView("policy", True, 1.0, ended)], 90.0)
    assert not ok and "crashed" in body["agents"]["policy"]["reason"]
    looping = AgentRecord()
    for _ in range(CRASH_LOOP - 1):
        looping.failed("RuntimeError: boom", 0.1)
    assert liveness([AgentView("routing", True, 1.0, looping)], 90.0)[0]
    looping.failed("RuntimeError: boom", 0.1)
    ok, body = liveness([AgentView("routing", True, 1.0, looping)], 90.0)
    assert not ok and "RuntimeError: boom" in body["agents"]["routing"]["reason"]
    assert body["agents"]["routing"]["failures"] == CRASH_LOOP


def test_a_long_run_resets_the_failures_in_a_row() -> None:
    r = AgentRecord()
    for _ in range(CRASH_LOOP - 1):
        r.failed("e", 0.1)
    r.failed("e", STABLE_RUN + 1)
    assert r.failures == CRASH_LOOP and r.failures_in_a_row == 1


def test_no_heartbeat_means_no_stuck_check() -> None:
    assert liveness([AgentView("other", True, None)], 1.0)[0]


def test_heartbeat_age() -> None:
    clock = Clock()
    hb = Heartbeat(clock)
    clock.now += 12
    assert hb.age() == 12
    hb.beat()
    assert hb.age() == 0 and hb.age(clock.now + 3) == 3


# --- readiness ---------------------------------------------------------------------------------


def test_ready_when_datastore_up_agents_synced_and_sessions_established() -> None:
    agents = [AgentView("policy", True), AgentView(
        "routing", True, bgp_sessions=(("10.0.0.2", "Established"), ("10.0.0.3", "Established")))]
    ok, body = readiness(True, "", agents)
    assert ok and body["status"] == "ready" and body["datastore"] == "up"
    assert body["agents"]["routing"]["bgp"] == {"10.0.0.2": "Established",
                                                "10.0.0.3": "Established"}


@pytest.mark.parametrize(("datastore", "policy_ready", "sessions", "reason"), [
    (False, True, (), "datastore unreachable"),
    (True, False, (), "agent policy: first sync not programmed"),
    (True, True, (("10.0.0.2", "Established"), ("10.0.0.3", "Active")),
     "BGP sessions not established: 10.0.0.3 (Active)"),
])
def test_not_ready_says_why(datastore: bool, policy_ready: bool,
                            sessions: tuple[tuple[str, str], ...], reason: str) -> None:
    agents = [AgentView("policy", policy_ready), AgentView("routing", True,
                                                          bgp_sessions=sessions)]
    ok, body = readiness(datastore, "etcd gone", agents)
    assert not ok and body["status"] == "not ready"
    assert any(reason in r for r in body["reasons"]), body["reasons"]


def test_no_bgp_or_no_peers_does_not_hold_readiness() -> None:
    assert readiness(True, "", [AgentView("routing", True, bgp_sessions=None)])[0]
    assert readiness(True, "", [AgentView("routing", True, bgp_sessions=())])[0]


def test_bgp_sessions_from_an_agents_health() -> None:
    assert bgp_sessions({"ready": True}) is None
    assert bgp_sessions({"peers": []}) == ()
    assert bgp_sessions({"peers": [{"address": "10.0.0.2", "state": "Idle"}]}) == \
        (("10.0.0.2", "Idle"),)


def test_datastore_probe_goes_stale() -> None:
    clock = Clock()
    probe = DatastoreProbe(stale_after=6.0, clock=clock)
    assert probe.reachable() == (False, "no probe yet")
    probe.record(True)
    assert probe.reachable() == (True, "")
    clock.now += 7  # the next probe hangs on a frozen etcd: no result at all
    ok, why = probe.reachable()
    assert not ok and "no answer" in why
    probe.record(False, "Unavailable: etcd gone")
    assert probe.reachable() == (False, "Unavailable: etcd gone")
    probe.record(True)
    assert probe.reachable()[0]


def test_probe_loop_records_timeouts_and_errors() -> None:
    probe = DatastoreProbe()
    calls: list[str] = []

    async def check() -> None:
        calls.append("x")
        if len(calls) == 1:
            await asyncio.sleep(10)  # hangs: the timeout ends it
        elif len(calls) == 2:
            raise RuntimeError("refused")

    async def main() -> list[tuple[bool, str]]:
        seen: list[tuple[bool, str]] = []
        task = asyncio.create_task(probe_datastore(check, probe, interval=0.01, timeout=0.05))
        for _ in range(200):
            await asyncio.sleep(0.01)
            state = (probe.ok, probe.error)
            if not seen or seen[-1] != state:
                seen.append(state)
            if len(calls) >= 3 and probe.ok:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen

    seen = asyncio.run(main())
    assert (False, "no answer within 0.05s") in seen
    assert (False, "refused") in seen
    assert seen[-1] == (True, "")


# --- the supervisor's record and a Monitor -----------------------------------------------------


class FakeAgent:
    def __init__(self, name: str, fail: int = 0, peers: list[dict[str, Any]] | None = None,
                 ) -> None:
        self.name = name
        self.ready = asyncio.Event()
        self.heartbeat = Heartbeat()
        self.fail = fail
        self.peers = peers
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.fail:
            raise RuntimeError(f"failure {self.runs}")

    async def close(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {} if self.peers is None else {"peers": self.peers}


def test_supervise_records_failures_and_the_end() -> None:
    agent = FakeAgent("policy", fail=2)
    record = AgentRecord()
    asyncio.run(asyncio.wait_for(supervise(agent, Backoff(0.001, 0.002), record), 5))
    assert record.failures == 2 and record.last_error == "RuntimeError: failure 2"
    assert record.ended == "run returned"


def test_monitor_routes() -> None:
    policy = FakeAgent("policy")
    routing = FakeAgent("routing", peers=[{"address": "10.0.0.2", "state": "Connect"}])

    async def up() -> int:
        return 1

    async def main() -> None:
        mon = Monitor([policy, routing], up, liveness_timeout=30.0, probe_interval=0.01)
        status, ctype, body = mon.readiness_route()
        assert status == 503 and ctype == "application/json"
        assert "datastore unreachable" in json.loads(body)["reasons"][0]
        task = asyncio.create_task(mon.run())
        await asyncio.sleep(0.05)
        policy.ready.set()
        routing.ready.set()
        status, _, body = mon.readiness_route()
        assert status == 503 and "10.0.0.2 (Connect)" in body
        routing.peers = [{"address": "10.0.0.2", "state": "Established"}]
        assert mon.readiness_route()[0] == 200
        assert mon.liveness_route()[0] == 200
        routing.heartbeat.last -= 31
        status, _, body = mon.liveness_route()
        assert status == 503 and json.loads(body)["failed"] == ["routing"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_parse_address() -> None:
    assert parse_address("0.0.0.0:9091") == ("0.0.0.0", 9091)
    assert parse_address("[::]:0") == ("::", 0)
    for bad in ("9091", ":9091", "h:", "h:x", "h:65536"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)
