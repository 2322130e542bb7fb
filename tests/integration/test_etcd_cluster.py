"""A three-member etcd under load: concurrent CNI ADDs on a two-node lab while one etcd
member that does not lead is killed, and later the leader.

Every node daemon holds all three client endpoints and fails over between them; a quorum
(two of three) keeps answering, so the ADDs go on.  What must hold: no address is handed
out twice, every failed ADD is a clean CNI error 11 ("try again later") and ran while a
lost member was being noticed or a leader elected, and after the
runtime's DELs of the failed ADDs ``tortie ipam check`` finds the live pods' addresses and
nothing else (no leak, nothing missing).

The ADDs are the real ones (lab/cni_churn.py: the plugin executable, a pod namespace each,
one process per call).  The phases are timed; ``TORTIE_ETCD_CLUSTER_STEADY`` sets the
seconds of steady running between faults (default 2.5).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.cluster import Lab
from lab.cni_churn import DEL_RETRY, Op, PodChurn
from tests.support.lab_cli import cli, run_tortie
from tests.support.tools import tools
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, tools("root", "etcd", "etcdctl")]

RUNTIMES = 8  # concurrent "runtimes", each ADDing pods one after the other
# The phases are timed, not counted: how many ADDs a fault window holds depends on how
# fast an ADD is, how long it lasts does not.  A killed member is noticed after one request
# deadline (1.5 s); a killed leader, after that and the election.  An ADD may fail (cleanly,
# code 11) only if it ran in such a window; every other ADD must succeed.
STEADY = float(os.environ.get("TORTIE_ETCD_CLUSTER_STEADY", "2.5"))  # s between faults
FOLLOWER_WINDOW = 5.0  # s after a follower's kill in which an ADD may fail
ELECTED_WINDOW = 3.0   # s after a new leader answers in which an ADD may still fail
IN_FLIGHT = 2.0        # s an ADD started before a kill may still be waiting on the member
MAX_ADDS = 200         # per runtime, a bound on the run whatever the phases
NAMESPACE = "etcd3"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"e3{uuid.uuid4().hex[:8]}"
    lab = Lab(name)
    try:
        r = run_tortie("lab", "up", "--name", name, "--nodes", "2", "--etcd-members", "3",
                       timeout=300)
        assert r.returncode == 0, r.stderr
        yield lab
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{name}-") == []


def test_lab_runs_three_members_and_every_client_knows_them(lab: Lab) -> None:
    st = lab.load()
    assert st.etcd_members == 3 and len(set(st.etcd_pids)) == 3
    assert len(set(st.etcd_endpoints)) == 3
    # tortie-node got every member (its environment is the lab's etcd settings)
    env = st.etcd_env()["TORTIE_ETCD_ENDPOINTS"].split(",")
    assert env == list(st.etcd_endpoints)
    for node in st.nodes.values():
        environ = Path(f"/proc/{node.pid}/environ").read_bytes().split(b"\0")
        assert f"TORTIE_ETCD_ENDPOINTS={','.join(st.etcd_endpoints)}".encode() in environ
    rows = lab.etcd_status()
    assert [r["state"] for r in rows] == ["running"] * 3
    assert sum(r["leader"] for r in rows) == 1 and len({r["id"] for r in rows}) == 3
    leader = next(r["member"] for r in rows if r["leader"])
    r = run_tortie("lab", "etcd", "leader", "--name", lab.name)
    assert r.returncode == 0 and r.stdout.strip() == str(leader), r.stderr
    r = run_tortie("lab", "etcd", "kill", "--name", lab.name, "--member", "4")
    assert r.returncode != 0 and "member(s) 1-3, not 4" in r.stderr


@pytest.mark.timeout(600)
def test_adds_survive_losing_a_follower_then_the_leader(lab: Lab) -> None:
    churn = PodChurn(lab, tag="e", namespace=NAMESPACE)
    results: list[Op] = []
    errors: list[BaseException] = []
    faults: list[str] = []
    windows: list[tuple[float, float]] = []  # (from, to): ADDs started here may fail
    stop = threading.Event()

    def runtime(i: int) -> None:
        try:
            for _ in range(MAX_ADDS):
                if stop.is_set():
                    return
                _, op = churn.add("etcd-cluster", f"node{i % 2 + 1}")
                results.append(op)
        except BaseException as e:  # reported by the test below
            errors.append(e)

    def fault(what: str) -> float:
        faults.append(f"{what} after {len(results)} ADDs")
        return time.monotonic()

    threads = [threading.Thread(target=runtime, args=(i,), daemon=True)
               for i in range(RUNTIMES)]
    start = time.monotonic()
    for t in threads:
        t.start()
    leader = lab.etcd_leader()
    follower = next(m for m in (1, 2, 3) if m != leader)
    new_leader = 0
    try:
        time.sleep(STEADY)
        lab.etcd_kill(follower)
        killed = fault(f"member {follower} (follower) killed")
        windows.append((killed - IN_FLIGHT, killed + FOLLOWER_WINDOW))
        time.sleep(FOLLOWER_WINDOW + STEADY)
        lab.etcd_restart(signal.SIGKILL, follower)
        fault(f"member {follower} back")
        time.sleep(STEADY)
        leader = lab.etcd_leader()
        lab.etcd_kill(leader)
        killed = fault(f"member {leader} (leader) killed")
        new_leader = lab.etcd_leader(timeout=30)
        elected = fault(f"member {new_leader} elected")
        windows.append((killed - IN_FLIGHT, elected + ELECTED_WINDOW))
        time.sleep(ELECTED_WINDOW + STEADY)
        lab.etcd_restart(signal.SIGKILL, leader)
        fault(f"member {leader} back")
        time.sleep(STEADY)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
        for m in (1, 2, 3):
            if lab.etcd_state(member=m) == "down":
                lab.etcd_restart(member=m)
    seconds = time.monotonic() - start
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    def in_window(op: Op) -> bool:
        return any(lo <= op.started <= hi for lo, hi in windows)

    ok = [op for op in results if op.code == 0]
    failed = [op for op in results if op.code != 0]
    steady = [op for op in results if not in_window(op)]
    print(f"{len(results)} ADDs ({RUNTIMES} runtimes) in {seconds:.1f} s: {len(ok)} ok, "
          f"failures {dict(Counter(op.code for op in failed))}, {len(steady)} outside the "
          f"fault windows; ok answer p50 {_q([o.seconds for o in ok], 0.5):.2f} s, max "
          f"{_q([o.seconds for o in ok], 1):.2f} s; faults: {'; '.join(faults)}; "
          f"leader {leader} -> {new_leader}")
    assert new_leader not in (0, leader)  # the two others elected one of them
    # every failure is a clean "try again later", never a crash or a half answer
    assert {op.code for op in failed} <= {11}, sorted({f"{o.code}: {o.msg}" for o in failed})
    # a quorum kept answering: outside the windows in which a lost member is noticed and a
    # leader elected, every ADD went through (and there were plenty of those)
    late = [f"{op.pod} at +{op.started - start:.1f} s: {op.msg}"
            for op in steady if op.code != 0]
    assert late == [], f"ADDs failed outside the fault windows: {late[:5]}"
    assert len(steady) >= 0.25 * len(results), (len(steady), len(results))
    # no address handed out twice: every successful ADD's address is its own
    ips = Counter(op.ip for op in ok)
    assert all(ips), "an ADD succeeded without an address"
    assert [ip for ip, n in ips.items() if n > 1] == [] and churn.duplicates == []

    # the runtime DELs what failed; the live pods keep their addresses
    churn.retry_dels(time.monotonic() + DEL_RETRY)
    assert churn.unfinished == []
    check = churn.ipam_check()
    assert check["clean"], check["output"]
    r = cli(lab, "get", "workloadendpoints", "-n", NAMESPACE, "-o", "json")
    assert r.returncode == 0, r.stderr
    wep_ips = sorted(net.split("/")[0] for w in json.loads(r.stdout)["items"]
                     for net in w["spec"]["ipNetworks"])
    assert wep_ips == sorted(ips), "the live pods' endpoints are not the ADDs' addresses"


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def test_a_member_cut_off_from_its_quorum_is_passed_over(lab: Lab) -> None:
    """With two members down the third answers etcd's Status but serves nothing: a client
    says so (it does not wait on it), and works again once a quorum is back."""
    try:
        for m in (2, 3):
            lab.etcd_kill(m)

        def refused() -> str | None:
            r = cli(lab, "get", "ippools")
            return r.stderr if r.returncode != 0 and "has no leader" in r.stderr else None

        err = until_sync(refused, timeout=30, what="member 1 reported without a leader")
        assert "192.0.2.1:2379" in err, err
    finally:
        for m in (2, 3):
            if lab.etcd_state(member=m) == "down":
                lab.etcd_restart(member=m)
    r = cli(lab, "get", "ippools")
    assert r.returncode == 0 and "default-ipv4-ippool" in r.stdout, r.stderr
