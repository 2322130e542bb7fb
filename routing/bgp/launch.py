"""Exec a command that dies with its parent: ``python -I -S launch.py <parent-pid> argv...``.

The speaker starts ExaBGP through this instead of a ``preexec_fn``: Python code run between
fork and exec in tortie-node, whose etcd client (gRPC) has threads, runs gRPC's at-fork
handlers in the child, and they crash it (SIGSEGV / SIGABRT, "Check failed:
next_worker->state == KICKED") before ExaBGP is ever exec'd.  Without a ``preexec_fn``
the child is started with vfork/exec and no Python code runs in it; this tiny stdlib
program then sets PR_SET_PDEATHSIG itself and execs the real command, which keeps the
setting (the kernel clears it only for set-user-ID programs).

Exit status 127 with a message on stderr when the command cannot be exec'd; 1 when the
parent is already gone.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: launch.py PARENT_PID COMMAND [ARG...]\n")
        return 2
    parent, command = int(argv[1]), argv[2:]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    if os.getppid() != parent:  # it died before the death signal was armed
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"launch.py: cannot run {command[0]}: {e}\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
