"""The fault campaign, kept: the lab's fault verbs as a user types them, then a short
run of bench/chaos.py (every experiment, a small budget) on the same lab.

The campaign must find no duplicate address, no leak, no DEL left unacknowledged, and no
CNI failure other than code 11 ("try again later": the node daemon or etcd unavailable).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.cluster import Lab
from tests.support.lab_cli import run_tortie
from tests.support.tools import tools

#: ``tortie`` here: the lab verbs get more time than elsewhere (a fault may slow them).
tortie = functools.partial(run_tortie, timeout=180)

pytestmark = [pytest.mark.integration, tools("root")]  # namespaces

REPO = Path(__file__).resolve().parents[2]
BUDGET = 60  # seconds of experiments (the short form in the suite)


@pytest.fixture(scope="module")
def lab_name() -> Iterator[str]:
    name = f"cx{uuid.uuid4().hex[:8]}"
    try:
        r = tortie("lab", "up", "--name", name, "--nodes", "2", timeout=300)
        assert r.returncode == 0, r.stderr
        yield name
    finally:
        Lab(name).down()
        assert netns.list_netns(f"tl-{name}-") == []


@pytest.mark.timeout(300)
def test_lab_fault_verbs(lab_name: str) -> None:
    lab = Lab(lab_name)
    r = tortie("lab", "etcd", "pause", "--name", lab_name)
    assert r.returncode == 0 and "paused" in r.stdout, r.stderr
    r = tortie("lab", "etcd", "resume", "--name", lab_name)
    assert r.returncode == 0 and "running" in r.stdout, r.stderr
    r = tortie("lab", "etcd", "kill", "--name", lab_name)
    assert r.returncode == 0 and "down" in r.stdout, r.stderr
    old = lab.load().etcd_pid
    r = tortie("lab", "etcd", "restart", "--name", lab_name, "--signal", "KILL")
    assert r.returncode == 0 and "running" in r.stdout, r.stderr
    assert lab.load().etcd_pid != old
    assert tortie("lab", "exec", "--name", lab_name, "--", sys.executable, "-m", "ctl.main",
                  "get", "ippools").returncode == 0  # the data survived

    pid = lab.load().nodes["node2"].pid
    r = tortie("lab", "node", "kill", "--name", lab_name, "node2")
    assert r.returncode == 0, r.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    r = tortie("lab", "node", "restart", "--name", lab_name, "node2")
    assert r.returncode == 0 and "running" in r.stdout, r.stderr
    r = tortie("lab", "node", "restart", "--name", lab_name, "--signal", "KILL", "node1")
    assert r.returncode == 0, r.stderr
    r = tortie("lab", "node", "kill", "--name", lab_name, "node9")
    assert r.returncode != 0 and "no node 'node9'" in r.stderr


@pytest.mark.timeout(900)
def test_short_campaign(lab_name: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--lab", lab_name,
                        "--budget", str(BUDGET), "--seed", "15", "--json", str(out)],
                       capture_output=True, text=True, timeout=840, check=False, cwd=REPO)
    print(p.stdout)
    assert out.exists(), p.stderr[-3000:]
    f = json.loads(out.read_text())
    assert f["duplicates"] == 0, p.stdout
    assert f["leaks"] == 0 and f["ipam_clean"], f["ipam_check"]
    assert f["unfinished_dels"] == 0, p.stdout
    assert set(f["codes"]) <= {"11"}, p.stdout
    for name in ("node-kill", "etcd-kill", "etcd-pause", "node-restart"):
        assert f["experiments"][name]["faults"] >= 1, p.stdout
    assert f["experiments"]["etcd-kill"]["ops"] > 0 and f["sent"] > 0
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
