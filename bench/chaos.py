"""Fault campaign: the fault and bad-input experiments, against a real lab,
bounded in time, with the figures printed.

    sudo .venv/bin/python bench/chaos.py [--budget 240] [--nodes 2] [--seed N]
                                          [--lab NAME [--keep]] [--only node-kill ...]
                                          [--json figures.json]

Without ``--lab`` it brings up a lab of its own (``tortie lab up``, a unique name) and takes
it down afterwards (``--keep`` leaves it).  ``--budget`` bounds the experiments (lab up and
the final clean-up come on top); each experiment gets a share and repeats its fault until
its share is spent (at least once).

Experiments:

* ``node-kill``: ADDs to a node in flight, its tortie-node SIGKILLed after a random few
  tens of milliseconds, then started again; as a runtime does, every failed ADD is
  followed by DEL, retried until it succeeds.
* ``etcd-kill``: ADD/DEL workers on every node while etcd is SIGKILLed, left down a moment,
  and started again (``Lab.etcd_kill`` / ``etcd_restart``).
* ``etcd-pause``: the same with etcd frozen (SIGSTOP) for a few seconds, then SIGCONT; the
  CNI answer during a freeze must come within the plugin's deadline.
* ``node-restart``: pods on two nodes ping each other (20 packets/s both ways) while each
  node's tortie-node is restarted, SIGTERM and SIGKILL in turn.

Figures: ops (CNI ADD / DEL calls), faults injected, failures and their CNI codes (all, and
those outside any fault window), duplicates (an ADD answered with an address a running
pod holds), leaks (``tortie ipam check`` once every campaign pod is gone; also what it calls
missing, orphan or dangling), DELs never acknowledged, lost packets.

The CNI calls are the ones a runtime makes: the lab's ``tortie`` plugin executable, run
inside the node's namespace with a pod namespace of its own, one process per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.cluster import Lab, LabError, NodeState
from lab.cni_churn import CNI_TIMEOUT, DEL_RETRY, Op, Pod, PodChurn, log

EXPERIMENTS = ("node-kill", "etcd-kill", "etcd-pause", "node-restart")
SHARE = {"node-kill": 0.3, "etcd-kill": 0.25, "etcd-pause": 0.25, "node-restart": 0.2}
ALLOWED_CODES = {11}  # "try again later": the daemon or the datastore is unavailable
#: a failure up to this long after a fault ended still counts as inside its window
RECOVERY = 3.0
PING_INTERVAL = 0.05
RECOVERY_WAIT = 120.0  # how long pods may stay cut off after a tortie-node restart


class Campaign(PodChurn):
    """The experiments: CNI calls (lab/cni_churn.py) with faults injected around them."""

    def __init__(self, lab: Lab, seed: int) -> None:
        super().__init__(lab, tag="c", namespace="chaos")
        self.rng = random.Random(seed)
        self.faults: list[tuple[str, str, float, float]] = []  # (experiment, what, start, end)
        self.pings: list[dict[str, Any]] = []

    # -- faults ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def fault(self, experiment: str, what: str) -> Iterator[None]:
        start = time.monotonic()
        log(f"{experiment}: {what}")
        try:
            yield
        finally:
            with self._lock:
                self.faults.append((experiment, what, start, time.monotonic()))

    def in_fault_window(self, op: Op) -> bool:
        end = op.started + op.seconds
        return any(op.started <= f_end + RECOVERY and end >= f_start
                   for _, _, f_start, f_end in self.faults)

    def wait_etcd(self, timeout: float = 60.0) -> None:
        """Until the lab's CLI reads from etcd again (after a fault)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lab.tortie(self.st, ["get", "ippools"]).returncode == 0:
                return
            time.sleep(0.5)
        raise LabError("etcd did not come back")

    # -- experiments -------------------------------------------------------------------------

    def node_kill(self, until: float) -> None:
        """SIGKILL tortie-node while ADDs to it are in flight; restart; DEL what failed."""
        nodes = sorted(self.st.nodes)
        i = 0
        while True:
            began = time.monotonic()
            node = nodes[i % len(nodes)]
            i += 1
            results: list[tuple[Pod, Op]] = []

            def one_add(node: str = node, results: list[tuple[Pod, Op]] = results) -> None:
                results.append(self.add("node-kill", node))

            threads = [threading.Thread(target=one_add) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(self.rng.uniform(0.02, 0.25))
            with self.fault("node-kill", f"SIGKILL tortie-node on {node} mid-ADD"):
                self.lab.kill_node(node)
                for t in threads:
                    t.join()
                time.sleep(self.rng.uniform(0.0, 1.0))
                self.lab.restart_node(node, signal.SIGKILL)
                self.st = self.lab.load()
            self.retry_dels(time.monotonic() + DEL_RETRY)
            for pod, op in results:
                if op.code == 0:
                    self.delete("node-kill", pod)
            codes = Counter(op.code for _, op in results)
            log(f"node-kill: ADDs in flight on {node}: {dict(codes)} (0 = success)")
            if not _another_round(began, until):
                return

    def _traffic(self, experiment: str, stop: threading.Event) -> list[threading.Thread]:
        """One ADD/DEL worker per node until ``stop``: each keeps up to two pods running."""
        def worker(node: str) -> None:
            mine: list[Pod] = []
            while not stop.is_set():
                if len(mine) < 2 or self.rng.random() < 0.5:
                    pod, op = self.add(experiment, node)
                    if op.code == 0:
                        mine.append(pod)
                    else:
                        stop.wait(0.2)  # a runtime backs off before the next attempt
                else:
                    self.delete(experiment, mine.pop(self.rng.randrange(len(mine))))
            for pod in mine:
                self.delete(experiment, pod)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True)
                   for n in sorted(self.st.nodes)]
        for t in threads:
            t.start()
        return threads

    def etcd_faults(self, experiment: str, until: float) -> None:
        stop = threading.Event()
        threads = self._traffic(experiment, stop)
        try:
            while True:
                began = time.monotonic()
                time.sleep(self.rng.uniform(0.5, 1.5))  # traffic before the fault
                if experiment == "etcd-kill":
                    with self.fault(experiment, "etcd SIGKILL, down a moment, restarted"):
                        self.lab.etcd_kill()
                        time.sleep(self.rng.uniform(0.5, 2.0))
                        self.lab.etcd_restart()
                else:
                    with self.fault(experiment, "etcd SIGSTOP, a few seconds, SIGCONT"):
                        self.lab.etcd_pause()
                        try:
                            time.sleep(self.rng.uniform(2.0, 4.0))
                        finally:
                            self.lab.etcd_resume()
                self.st = self.lab.load()
                time.sleep(1.0)  # traffic after it
                if not _another_round(began, until):
                    break
        finally:
            if self.lab.etcd_state() == "paused":
                self.lab.etcd_resume()
            stop.set()
            for t in threads:
                t.join(timeout=CNI_TIMEOUT)
        self.wait_etcd()
        self.retry_dels(time.monotonic() + DEL_RETRY)

    def node_restart(self, until: float) -> None:
        """Pods on two nodes ping each other while each node's tortie-node restarts."""
        nodes = sorted(self.st.nodes)
        if len(nodes) < 2:
            log("node-restart: needs two nodes, skipped")
            return
        pods: list[Pod] = []
        try:
            for node in nodes[:2]:
                pod, op = self.add("node-restart", node)
                if op.code != 0:
                    raise LabError(f"node-restart: ADD on {node} failed: {op.msg}")
                pods.append(pod)
            a, b = pods
            self._wait_ping(a, b.ip)
            self._wait_ping(b, a.ip)
            turn = 0
            while True:
                began = time.monotonic()
                node = nodes[turn % 2]
                sig = (signal.SIGTERM, signal.SIGKILL)[(turn // 2) % 2]
                turn += 1
                pingers = [self._ping(a, b.ip), self._ping(b, a.ip)]
                try:
                    time.sleep(1.0)
                    with self.fault("node-restart", f"SIG{sig.name[3:]} restart of {node} "
                                                    f"under pings"):
                        t0 = time.monotonic()
                        self.lab.restart_node(node, sig)
                        restart_s = time.monotonic() - t0
                        self.st = self.lab.load()
                        # until both directions work again (routes back), then a little more
                        for src, dst in ((a, b), (b, a)):
                            self._wait_ping(src, dst.ip, timeout=RECOVERY_WAIT)
                        recovered_s = time.monotonic() - t0
                    time.sleep(1.0)
                except BaseException:
                    for proc in pingers:
                        proc.kill()
                        proc.wait()
                    raise
                for (src, dst), proc in zip(((a, b), (b, a)), pingers, strict=True):
                    self.pings.append(self._ping_result(proc, f"{src.node}->{dst.node}",
                                                        node, sig.name))
                    self.pings[-1].update(restart_s=round(restart_s, 1),
                                          recovered_s=round(recovered_s, 1))
                last = self.pings[-2:]
                log(f"node-restart: {sig.name} {node} (back in {restart_s:.1f} s, both ways "
                    f"ping again after {recovered_s:.1f} s): "
                    + ", ".join(f"{p['path']} {p['received']}/{p['sent']}" for p in last))
                if not _another_round(began, until):
                    return
        finally:
            for pod in pods:
                self.delete("node-restart", pod)

    def _ping(self, src: Pod, dst: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", src.netns, "ping", "-n", "-i",
                                 str(PING_INTERVAL), "-W", "1", dst],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def _wait_ping(self, src: Pod, dst: str, timeout: float = RECOVERY_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-n", "-c", "1",
                                "-W", "1", dst], capture_output=True, check=False)
            if p.returncode == 0:
                return
            time.sleep(0.5)
        raise LabError(f"{src.name} ({src.node}) cannot reach {dst}")

    @staticmethod
    def _ping_result(proc: subprocess.Popen[str], path: str, node: str,
                     sig: str) -> dict[str, Any]:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        # lost = requests with no reply before the last one answered: the one in flight
        # when ping is stopped is not a loss (ping's own summary counts it as one)
        seqs = {int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", out or "")}
        m = re.search(r"(\d+) packets transmitted", out or "")
        sent = max(seqs) if seqs else (int(m.group(1)) if m else 0)
        return {"path": path, "restarted": node, "signal": sig, "sent": sent,
                "received": len(seqs)}

@dataclass
class Figures:
    lab: str
    nodes: int
    budget: float
    seed: int
    seconds: float = 0.0
    ops: int = 0
    faults: int = 0
    failures: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    codes_outside_faults: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    leaks: int = 0
    ipam_clean: bool = True
    unfinished_dels: int = 0
    sent: int = 0
    lost: int = 0
    max_failed_answer_s: float = 0.0  # the slowest failed answer during an etcd freeze
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pings: list[dict[str, Any]] = field(default_factory=list)
    ipam_check: str = ""
    loadavg: list[str] = field(default_factory=list)  # /proc/loadavg at start and end
    notes: list[str] = field(default_factory=list)


def figures(c: Campaign, base: Figures, ipam: dict[str, Any]) -> Figures:
    f = base
    f.ops = len(c.ops)
    f.faults = len(c.faults)
    failed = [op for op in c.ops if op.code != 0]
    f.failures = len(failed)
    f.codes = {str(k): v for k, v in sorted(Counter(op.code for op in failed).items())}
    f.codes_outside_faults = {str(k): v for k, v in sorted(Counter(
        op.code for op in failed if not c.in_fault_window(op)).items())}
    f.duplicates = len(c.duplicates)
    f.leaks = ipam["leaked"]
    f.ipam_clean = ipam["clean"]
    f.ipam_check = ipam["output"]
    f.unfinished_dels = len(c.unfinished)
    f.pings = c.pings
    f.sent = sum(p["sent"] for p in c.pings)
    f.lost = sum(p["sent"] - p["received"] for p in c.pings)
    pause_failed = [op.seconds for op in failed if op.experiment == "etcd-pause"]
    f.max_failed_answer_s = round(max(pause_failed, default=0.0), 2)
    for name in EXPERIMENTS:
        ops = [op for op in c.ops if op.experiment == name]
        if not ops and not any(x[0] == name for x in c.faults):
            continue
        bad = [op for op in ops if op.code != 0]
        f.experiments[name] = {
            "ops": len(ops), "faults": sum(1 for x in c.faults if x[0] == name),
            "failures": len(bad),
            "codes": {str(k): v for k, v in sorted(Counter(op.code for op in bad).items())},
            "examples": sorted({f"{op.command} {op.code}: {op.msg}" for op in bad})[:4],
            "answer_s": {"ok_p50": _quantile([o.seconds for o in ops if o.code == 0], 0.5),
                         "ok_max": _quantile([o.seconds for o in ops if o.code == 0], 1.0),
                         "failed_p50": _quantile([o.seconds for o in bad], 0.5),
                         "failed_max": _quantile([o.seconds for o in bad], 1.0)},
            "slowest": [f"{o.command} {o.code} {o.seconds:.2f}s {o.msg[:80]}"
                        for o in sorted(ops, key=lambda o: -o.seconds)[:3]],
        }
    return f


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def report(f: Figures) -> str:
    def codes(d: dict[str, int]) -> str:
        return " ".join(f"{k}x{v}" for k, v in d.items()) or "-"

    lines = [f"chaos campaign on lab {f.lab!r}: {f.nodes} nodes, budget {f.budget:g} s, "
             f"seed {f.seed}, took {f.seconds:.0f} s; load average at start / end: "
             f"{' / '.join(f.loadavg)}",
             f"{'experiment':14} {'ops':>5} {'faults':>6} {'failed':>6}  "
             f"{'answer s: ok p50/max, failed p50/max':37} codes"]
    for name, e in f.experiments.items():
        t = e["answer_s"]
        timing = (f"{t['ok_p50']:.2f}/{t['ok_max']:.2f}, "
                  f"{t['failed_p50']:.2f}/{t['failed_max']:.2f}")
        lines.append(f"{name:14} {e['ops']:>5} {e['faults']:>6} {e['failures']:>6}  "
                     f"{timing:37} {codes(e['codes'])}")
    lines.append(f"{'total':14} {f.ops:>5} {f.faults:>6} {f.failures:>6}  {'':37} "
                 f"{codes(f.codes)}")
    lines += [
        f"failures outside fault windows: {codes(f.codes_outside_faults)}",
        f"duplicates (same IP to two running pods): {f.duplicates}",
        f"leaks (tortie ipam check after every pod is gone): {f.leaks}"
        f"{'' if f.ipam_clean else '  (ipam check NOT clean, see --json)'}",
        f"DELs never acknowledged: {f.unfinished_dels}",
        f"slowest failed answer while etcd was frozen: {f.max_failed_answer_s:.2f} s",
        f"lost packets during tortie-node restarts: {f.lost}/{f.sent}",
    ]
    for p in f.pings:
        lines.append(f"  ping {p['path']:14} {p['signal']:7} restart of {p['restarted']:6} "
                     f"(back in {p.get('restart_s', 0):.1f} s, pods reach each other again "
                     f"after {p.get('recovered_s', 0):.1f} s) {p['received']}/{p['sent']}")
    for name, e in f.experiments.items():
        lines += [f"  {name}: e.g. {x}" for x in e["examples"]]
        lines += [f"  {name}: slowest {x}" for x in e["slowest"][:1]]
    lines += [f"note: {n}" for n in f.notes]
    return "\n".join(lines)


def run(lab: Lab, budget: float, seed: int, only: tuple[str, ...]) -> Figures:
    c = Campaign(lab, seed)
    f = Figures(lab.name, len(c.st.nodes), budget, seed)
    f.loadavg.append(_loadavg())
    start = time.monotonic()
    chosen = [e for e in EXPERIMENTS if e in only]
    share = sum(SHARE[e] for e in chosen)
    steps: dict[str, Callable[[float], None]] = {
        "node-kill": c.node_kill,
        "etcd-kill": lambda until: c.etcd_faults("etcd-kill", until),
        "etcd-pause": lambda until: c.etcd_faults("etcd-pause", until),
        "node-restart": c.node_restart,
    }
    until = start
    try:
        for name in chosen:
            until = max(until, time.monotonic()) + budget * SHARE[name] / share
            log(f"{name}: until +{until - start:.0f} s")
            try:
                steps[name](until)
            except LabError as e:
                f.notes.append(f"{name}: {e}")
                log(f"{name}: {e}")
    finally:
        if lab.etcd_state() == "paused":
            lab.etcd_resume()
        if lab.etcd_state() == "down":
            lab.etcd_restart()
        for name, n in lab.load().nodes.items():
            if not _node_alive(n):
                lab.restart_node(name)
        c.st = lab.load()
        c.wait_etcd()
        c.retry_dels(time.monotonic() + DEL_RETRY)
    f.seconds = time.monotonic() - start
    f.loadavg.append(_loadavg())
    left = c.leftovers()
    if left:
        f.notes.append(f"{len(left)} campaign pod namespace(s) left: {', '.join(left[:5])}")
    return figures(c, f, c.ipam_check())


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _another_round(began: float, until: float) -> bool:
    """Whether a round like the one that began at ``began`` still fits before ``until``."""
    now = time.monotonic()
    return now + (now - began) <= until


def _node_alive(n: NodeState) -> bool:
    try:
        os.kill(n.pid, 0)
    except ProcessLookupError:
        return False
    return Path(n.socket).exists()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=240.0,
                    help="seconds for the experiments (lab up/down and clean-up on top)")
    ap.add_argument("--nodes", type=int, default=2, help="nodes of the lab it brings up")
    ap.add_argument("--lab", help="use this lab (up already) instead of bringing one up")
    ap.add_argument("--keep", action="store_true", help="leave the lab it brought up")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("chaos.py needs root (namespaces, the lab)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    name = args.lab or f"cx{secrets.token_hex(3)}"
    lab = Lab(name, progress=lambda msg: log(f"lab: {msg}"))
    made = False
    try:
        if args.lab is None:
            log(f"bringing up lab {name!r} with {args.nodes} nodes")
            lab.up(args.nodes)
            made = True
        f = run(lab, args.budget, seed, tuple(args.only))
    finally:
        if made and not args.keep:
            log(f"taking lab {name!r} down")
            lab.down()
    print(report(f))
    if args.json:
        args.json.write_text(json.dumps(asdict(f), indent=2))
    ok = (f.duplicates == 0 and f.leaks == 0 and f.ipam_clean and f.unfinished_dels == 0
          and set(map(int, f.codes)) <= ALLOWED_CODES)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
