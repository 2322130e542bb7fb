"""The ``tortie`` command line in the tests that bring up a lab (``tortie lab ...``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab.cluster import Lab

REPO = Path(__file__).resolve().parents[2]


def run_tortie(*args: str, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``tortie ARGS`` as a user runs it from the repository (``lab up``, ``lab down``...)."""
    return subprocess.run([sys.executable, "-m", "ctl.main", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, input=input, cwd=REPO)


def cli(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The tortie CLI against the lab's etcd (the datastore)."""
    return lab.tortie(lab.load(), list(args), input=stdin)


def weps(lab: Lab, namespace: str) -> list[dict[str, Any]]:
    """The lab's WorkloadEndpoints in ``namespace`` (as JSON documents)."""
    r = cli(lab, "get", "workloadendpoints", "-n", namespace, "-o", "json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout)["items"])
