"""Where a bench's CPU time went: per process group, from /proc, over a timed window.

``CpuAccount.start()`` before the timed part and ``stop()`` after it; ``report()`` gives CPU
seconds by group (tortie-node, etcd, ExaBGP, the executables the bench ran and reaped, the
bench itself, everything else) beside the machine's total busy time from ``/proc/stat``
(which also holds kernel work done outside any process: softirqs, kworkers).  The
executables are counted through the bench process's ``cutime``/``cstime``: a child's time
lands there when it is reaped, so every plugin run that finished inside the window counts.
Processes that ended inside the window and were not the bench's children are missed (their
time is in the machine's total, and in "unattributed").  Each group's time is split into user
time (the program's own code: the Python interpreter, libraries) and system time (the kernel
working for it: netlink requests, nftables commits, exec and page faults, futexes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _groups(argv: list[str]) -> str:
    text = " ".join(argv)
    if not argv:
        return "kernel threads"
    if "etcd" in Path(argv[0]).name:
        return "etcd"
    if "exabgp" in text:
        return "ExaBGP"
    if "node.main" in text or "tortie-node" in text or " -m node" in text:
        return "tortie-node"
    if "bird" in Path(argv[0]).name:
        return "BIRD"
    return f"other: {Path(argv[0]).name}"


@dataclass(frozen=True)
class Spent:
    """CPU seconds: user and system (kernel on the process's behalf)."""

    user: float = 0.0
    system: float = 0.0

    @property
    def total(self) -> float:
        return self.user + self.system

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.user + other.user, self.system + other.system)

    def __sub__(self, other: Spent) -> Spent:
        return Spent(max(self.user - other.user, 0.0), max(self.system - other.system, 0.0))


def _snapshot() -> dict[int, tuple[str, Spent]]:
    """pid -> (group, CPU seconds of the process itself, all its threads)."""
    out: dict[int, tuple[str, Spent]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = Spent(int(fields[11]) / TICK, int(fields[12]) / TICK)  # utime, stime
        out[int(entry.name)] = (_groups([a.decode(errors="replace") for a in argv if a]),
                                seconds)
    return out


def _machine() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in cpu[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / TICK, idle / TICK


@dataclass
class CpuAccount:
    before: dict[int, tuple[str, Spent]] = field(default_factory=dict)
    after: dict[int, tuple[str, Spent]] = field(default_factory=dict)
    machine: tuple[float, float] = (0.0, 0.0)
    children: Spent = Spent()
    own: Spent = Spent()

    def start(self) -> None:
        self.before = _snapshot()
        self.machine = _machine()
        times = os.times()
        self.children = Spent(times.children_user, times.children_system)
        self.own = Spent(times.user, times.system)

    def stop(self) -> None:
        self.after = _snapshot()
        busy, idle = _machine()
        self.machine = (busy - self.machine[0], idle - self.machine[1])
        times = os.times()
        self.children = Spent(times.children_user, times.children_system) - self.children
        self.own = Spent(times.user, times.system) - self.own

    def by_group(self) -> dict[str, Spent]:
        me = os.getpid()
        groups: dict[str, Spent] = {}
        for pid, (group, seconds) in self.after.items():
            if pid == me:
                continue
            was = self.before.get(pid)
            spent = seconds - (was[1] if was and was[0] == group else Spent())
            groups[group] = groups.get(group, Spent()) + spent
        groups["executables run by the bench (reaped)"] = self.children
        groups["the bench's own threads"] = self.own
        return groups

    def report(self, per: int, what: str = "pod") -> list[str]:
        groups = self.by_group()
        busy, idle = self.machine
        attributed = sum(v.total for v in groups.values())
        others = sorted(((k, v) for k, v in groups.items() if k.startswith("other: ")),
                        key=lambda kv: -kv[1].total)
        other = sum((v for _, v in others), Spent())
        groups = {k: v for k, v in groups.items() if not k.startswith("other: ")}
        groups["other (" + ", ".join(f"{k[7:]} {v.total:.1f} s" for k, v in others[:3])
               + ")"] = other
        lines = [f"  CPU over the window: machine busy {busy:.1f} s, idle {idle:.1f} s "
                 f"({100 * busy / max(busy + idle, 1e-9):.0f}% of all cores); "
                 f"ms/{what}: all (user + kernel)"]
        for group, spent in sorted(groups.items(), key=lambda kv: -kv[1].total):
            lines.append(f"    {group:<40} {spent.total:7.2f} s  "
                         f"{1000 * spent.total / per:6.1f} ms/{what} "
                         f"({1000 * spent.user / per:.1f} + {1000 * spent.system / per:.1f})")
        rest = busy - attributed
        lines.append(f"    {'unattributed (kernel outside processes)':<40} {rest:7.2f} s  "
                     f"{1000 * rest / per:6.1f} ms/{what}")
        return lines
