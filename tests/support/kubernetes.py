"""Helpers of the tests that run Tortie under a real Kubernetes on the lab:
Kubernetes' own binaries (scripts/kubernetes.sh) on a lab brought up with
``tortie lab up --kubernetes``.  Used by tests/integration/test_kubernetes*.py."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab.cluster import Lab
from lab.procs import alive
from tests.support.lab_cli import run_tortie
from tests.support.tools import tools
from tests.support.wait import until_sync

REPO = Path(__file__).resolve().parents[2]
#: The marks of every real-Kubernetes test module (containerd and Kubernetes' binaries:
#: skipped when missing, a failure under CI=true).
K8S_MARKS = [
    pytest.mark.integration,
    tools("containerd", "kubernetes"),
    pytest.mark.timeout(900),
]


@contextlib.contextmanager
def kubernetes_lab(name: str, *up_args: str,
                   before_down: Callable[[Lab], None] | None = None) -> Iterator[Lab]:
    """``tortie lab up --name NAME --nodes 3 --kubernetes UP_ARGS...``; on the way out
    ``before_down(lab)`` (if given), ``lab.down()`` and a check that nothing is left: no
    namespace, mount, process or cgroup of the lab."""
    lab = Lab(name)
    try:
        start = time.monotonic()
        r = run_tortie("lab", "up", "--name", name, "--nodes", "3", "--kubernetes", *up_args,
                        timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        print(f"\nlab up with Kubernetes: {time.monotonic() - start:.1f}s")
        yield lab
    finally:
        st = lab.load() if lab.exists() else None
        try:
            if st is not None and before_down is not None:
                before_down(lab)
        finally:
            lab.down()
        assert netns.list_netns(f"tl-{name}-") == []
        assert f"/tortie-lab/{name}/" not in Path("/proc/self/mountinfo").read_text()
        if st is not None:
            for pid in st.k8s_pids.values():
                assert not alive(pid), pid
        assert not list(Path("/sys/fs/cgroup").glob(f"*/tortie-{name}-*"))


def kubectl(lab: Lab, *args: str, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return lab.kube(lab.load()).kubectl(list(args), input=input, timeout=timeout)


def kjson(lab: Lab, *args: str) -> Any:
    p = kubectl(lab, *args, "-o", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def eventually(check: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    """The first truthy ``check()`` within ``timeout`` (polled each second)."""
    return until_sync(check, timeout, what, interval=1)


def cali_links(lab: Lab) -> dict[str, set[str]]:
    out = {}
    for node in lab.load().nodes.values():
        text = netns.ip("-o", "link", "show", ns=node.netns)
        out[node.name] = {m.group(1) for m in re.finditer(r"^\d+: (cali[^:@]+)", text, re.M)}
    return out


def running_pods(lab: Lab, namespace: str, want: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]]:
        pods = kjson(lab, "get", "pods", "-n", namespace)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and p["status"].get("podIPs")]
        return running if len(running) == want and len(pods) == want else []
    return list(eventually(check, 240, f"{want} pods Running in {namespace}"))


def exec_in_pod(lab: Lab, namespace: str, pod: str, *cmd: str,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return kubectl(lab, "exec", "-n", namespace, pod, "--", *cmd, timeout=timeout)
