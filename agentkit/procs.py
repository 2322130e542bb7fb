"""Processes stopped by PID (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["alive", "state", "stop_pid"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a child of ours that exited is reaped on the way)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):  # our child and a zombie: reap it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return state(pid) not in ("", "Z", "X")


def state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("" when there is no such process): Z or X exited
    and waiting for its parent (e.g. shims reparented to init, which reaps late), T or t
    stopped by a signal."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL and wait for it to be gone."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and alive(pid):
            time.sleep(0.02)
