"""tortie-kube-controllers' leader election against a real kube-apiserver
(tests/support/kubernetes.py ``kube_apiserver``: Kubernetes' own binary, RBAC on, an etcd of
its own, which the controllers use as their datastore too).

The processes run as the manifest's service account (a client certificate for
``system:serviceaccount:kube-system:tortie-kube-controllers``) under the manifest's own
ClusterRole and Role, with short durations (lease 4s, renew deadline 3s, retry 1s):

* of two replicas exactly one holds the Lease, says so in ``tortie_kube_controllers_leader``
  and runs the controllers (the standby lists nothing and answers ``/healthz`` ``standby``);
* SIGKILL of the leader: the standby takes over within the lease duration + retry period;
* SIGTERM of the leader: it releases the Lease and exits 0, the standby takes over at its
  next look (well inside the lease duration);
* a leader that finds the Lease taken, or cannot renew it within the renew deadline (API
  server stopped), stops its controllers and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecontrollers.leader import identity
from lab.etcd import free_port
from lab.procs import alive, stop_pid
from tests.support.kubernetes import REPO, ApiServer, kube_apiserver
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, pytest.mark.tools("etcd", "kubernetes"),
              pytest.mark.timeout(300)]

MANIFEST = REPO / "integration" / "kind" / "manifests" / "30-kube-controllers.yaml"
SA = "system:serviceaccount:kube-system:tortie-kube-controllers"
NAMESPACE = "kube-system"
LEASE = "tortie-kube-controllers"   # the one the Role grants
DURATION, RENEW_DEADLINE, RETRY = 4.0, 3.0, 1.0
#: Polling, process start and a loaded machine (2 shared cores).
SLACK = 2.0


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with kube_apiserver() as server:
        rbac = [d for d in yaml.safe_load_all(MANIFEST.read_text())
                if d and d["kind"] != "Deployment"]
        p = server.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": rbac}))
        assert p.returncode == 0, p.stderr
        yield server


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def identity(self) -> str:
        return identity(socket.gethostname(), self.proc.pid)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str) -> float | None:
        """A metric without labels (None: not exposed, or not answering)."""
        try:
            _, text = self.get("/metrics")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def leader(self) -> float | None:
        return self.metric("tortie_kube_controllers_leader")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


class Replicas:
    """tortie-kube-controllers processes of one test, stopped (by PID) at its end."""

    def __init__(self, api: ApiServer, tmp: Path) -> None:
        self.api, self.tmp = api, tmp
        self.kubeconfig = api.kubeconfig("kc-sa", SA, ("system:serviceaccounts",
                                                       "system:serviceaccounts:kube-system"))
        self.started: list[Replica] = []

    def start(self) -> Replica:
        port = free_port()
        log = self.tmp / f"kc-{len(self.started)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kubecontrollers.main", "--kubeconfig",
                 str(self.kubeconfig), "--metrics-address", "127.0.0.1", "--metrics-port",
                 str(port), "--leader-elect", "--lease-name", LEASE, "--lease-namespace",
                 NAMESPACE, "--lease-duration", f"{DURATION:g}s", "--renew-deadline",
                 f"{RENEW_DEADLINE:g}s", "--retry-period", f"{RETRY:g}s"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO),
                     "TORTIE_ETCD_ENDPOINTS": self.api.etcd_endpoint})
        r = Replica(proc, port, log)
        self.started.append(r)
        until_sync(lambda: r.leader() is not None or proc.poll() is not None, 30,
                   "metrics served")
        assert proc.poll() is None, r.logs()
        return r

    def stop_all(self) -> None:
        for r in self.started:
            stop_pid(r.proc.pid, 10.0)
            r.proc.wait(5)
        assert not any(alive(r.proc.pid) for r in self.started)

    def report(self) -> str:
        return "\n".join(f"--- {r.identity} (rc {r.proc.poll()}):\n{r.logs()[-3000:]}"
                         for r in self.started)


@pytest.fixture
def replicas(api: ApiServer, scratch_dir: Path) -> Iterator[Replicas]:
    delete_lease(api)
    rs = Replicas(api, scratch_dir)
    try:
        yield rs
    finally:
        try:
            rs.stop_all()
        finally:
            delete_lease(api)


def delete_lease(api: ApiServer) -> None:
    p = api.kubectl("delete", "lease", "-n", NAMESPACE, LEASE, "--ignore-not-found")
    assert p.returncode == 0, p.stderr


def lease(api: ApiServer) -> dict[str, Any]:
    p = api.kubectl("get", "lease", "-n", NAMESPACE, LEASE, "-o", "json")
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def holder(api: ApiServer) -> str:
    return str(lease(api)["spec"].get("holderIdentity") or "")


def one_leader(rs: Replicas, *candidates: Replica) -> Replica:
    """Wait until exactly one of ``candidates`` reports leading and the others standing by;
    return it (the Lease names it)."""
    def check() -> Replica | None:
        states = [r.leader() for r in candidates]
        if sorted(states) != [0.0] * (len(candidates) - 1) + [1.0]:
            return None
        return candidates[states.index(1.0)]
    try:
        leader = until_sync(check, 30, "exactly one leader", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{rs.report()}") from None
    assert holder(rs.api) == leader.identity, rs.report()
    return leader


def takeover(rs: Replicas, successor: Replica, within: float) -> float:
    """Seconds until ``successor`` leads (polling its metric), at most ``within``."""
    start = time.monotonic()
    try:
        until_sync(lambda: successor.leader() == 1.0, within + 10, "takeover", interval=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{rs.report()}") from None
    took = time.monotonic() - start
    assert took <= within, f"took {took:.1f}s, more than {within:.1f}s\n{rs.report()}"
    assert holder(rs.api) == successor.identity
    return took


def test_one_leader_and_failover_on_kill_and_on_clean_shutdown(replicas: Replicas) -> None:
    a, b = replicas.start(), replicas.start()
    first = one_leader(replicas, a, b)
    standby = b if first is a else a
    spec = lease(replicas.api)["spec"]
    assert spec["leaseDurationSeconds"] == int(DURATION) and spec["renewTime"]

    # only the leader runs the controllers: it lists and becomes healthy; the standby lists
    # nothing, and is healthy as a standby
    until_sync(lambda: first.get("/healthz")[0] == 200, 60, "leader synced", interval=0.2)
    status, body = standby.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "standby", body
    assert json.loads(body)["leader"]["holder"] == first.identity
    assert "tortie_kc_lists_total{" in first.get("/metrics")[1]
    assert "tortie_kc_lists_total{" not in standby.get("/metrics")[1]
    assert f"identity={first.identity}" in first.logs().split("started leading", 1)[1]

    # SIGKILL: nothing released; the standby waits the lease out
    killed = time.monotonic()
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(5)
    takeover(replicas, standby, DURATION + RETRY + SLACK)
    took = time.monotonic() - killed
    print(f"\nleader SIGKILLed -> standby leads after {took:.1f}s (lease {DURATION:g}s)")
    assert took >= DURATION - RETRY - SLACK, "took over before the lease could expire"
    assert lease(replicas.api)["spec"]["leaseTransitions"] >= 1
    second = standby

    # a new standby; SIGTERM of the leader releases the Lease: it takes over at its next look
    third = replicas.start()
    until_sync(lambda: f"holder={second.identity}" in third.logs(), 10, "third sees the leader")
    assert third.leader() == 0.0 and second.leader() == 1.0
    stopped = time.monotonic()
    os.kill(second.proc.pid, signal.SIGTERM)
    took = takeover(replicas, third, RETRY + SLACK)
    assert second.proc.wait(10) == 0, second.logs()
    assert "stopped leading: lease released" in second.logs()
    print(f"leader SIGTERMed -> standby leads after {time.monotonic() - stopped:.1f}s")
    assert took < DURATION


def test_leader_whose_lease_is_taken_exits(replicas: Replicas) -> None:
    a = replicas.start()
    one_leader(replicas, a)
    current = lease(replicas.api)
    current["spec"]["holderIdentity"] = "intruder_1"
    p = replicas.api.kubectl("replace", "-f", "-", input=json.dumps(current))
    assert p.returncode == 0, p.stderr
    assert a.proc.wait(RETRY + 10) == 1, a.logs()
    logs = a.logs()
    assert "stopped leading: lost the lease" in logs and "held by intruder_1" in logs, logs
    assert holder(replicas.api) == "intruder_1"   # a lost lease is not released


def test_leader_that_cannot_renew_stops_within_the_renew_deadline(
        api: ApiServer, replicas: Replicas) -> None:
    a = replicas.start()
    one_leader(replicas, a)
    until_sync(lambda: a.get("/healthz")[0] == 200, 60, "synced", interval=0.2)
    os.kill(api.pid, signal.SIGSTOP)   # the API server hangs: no answer, no error
    stopped = time.time()
    try:
        rc = a.proc.wait(RENEW_DEADLINE + RETRY + 10)
    finally:
        os.kill(api.pid, signal.SIGCONT)
    assert rc == 1, a.logs()
    assert "not renewed within the renew deadline" in a.logs()
    # the controllers were stopped (the process then exits) before a standby could have
    # counted the Lease as expired
    took = logged_at(a.logs(), "tortie-kube-controllers stopped") - stopped
    print(f"\nAPI server stopped -> leader's controllers stopped after {took:.1f}s")
    assert took < DURATION, a.logs()


def logged_at(logs: str, msg: str) -> float:
    """The time (epoch seconds) of the first log line with ``msg``."""
    line = next(x for x in logs.splitlines() if f'msg="{msg}"' in x or f"msg={msg} " in x)
    ts = line.split()[0].removeprefix("ts=")
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
