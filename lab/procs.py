"""Processes the lab and the tests start, stopped by PID (never by name); ``alive``,
``state`` and ``stop_pid`` are :mod:`agentkit.procs`'s."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from agentkit.procs import alive, state, stop_pid

__all__ = ["alive", "signal_and_wait", "state", "stop_pid"]


def signal_and_wait(pid: int, sig: int, timeout: float = 10.0) -> None:
    """Stop ``pid`` with ``sig`` (a stopped one is continued so that it can act on it),
    SIGKILL after ``timeout``; returns once it is gone."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop_pid(pid)
