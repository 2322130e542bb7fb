"""Pod churn on one node: concurrent runtimes ADD and then DEL their pods.

    sudo .venv/bin/python bench/cni_churn.py [--runtimes 8] [--pods 100]

Brings up a one-node lab (tortie-node with all its agents, a real etcd), then ``--runtimes``
threads, each a runtime on the node (its thread in the node's network namespace, the plugin
executed directly as containerd does), ADD ``--pods`` pods one after the other and then DEL
them.  The pods' namespaces are made before and removed after the timed part.

Then the same churn with Debian's reference chain (``bridge`` + ``host-local``, the chain
``bench/cni_add.py`` compares with), run by the same threads in the same node namespace, so
the two pods/s figures come from one run on one machine (``--no-reference`` skips it).

Prints pods/s (pods ADDed and DELeted over the wall-clock time of the whole churn), ADD and
DEL latency (median / p99), failures by CNI code, duplicates (an address answered while
another pod of the churn holds it), ``tortie ipam check``, and where the CPU time of the
timed part went (per process group, per pod, user and kernel time: ``bench/cputime.py``).

Then the floor of the plugin's executions (``--no-floor`` skips it): the same threads start
the CNI executable's interpreter (``python3 -I -S``) twice per pod with nothing to do, so the
CPU per pod of two interpreter starts under the same load is measured, not assumed.

Exit status 0 when there are no failures and no duplicates, the check is clean, and pods/s
reaches ``--target``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit.netns import setns
from bench.cputime import CpuAccount
from bench.node_health import node_healthz
from cni.launcher import default_interpreter
from lab import netns
from lab.cluster import Lab
from lab.cni_churn import Op, Pod, PodChurn, join_node, log


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def runtime(churn: PodChurn, pods: list[Pod], errors: list[BaseException]) -> None:
    try:
        join_node(churn.node(pods[0].node))
        for pod in pods:
            churn.add("churn", pod.node, pod)
        for pod in pods:
            churn.delete("churn", pod, remove_netns=False)
    except BaseException as e:  # reported by the main thread
        errors.append(e)


REF_DIR = Path("/usr/lib/cni")


def timed(threads: list[threading.Thread]) -> tuple[float, CpuAccount]:
    """Run ``threads`` to their end: the wall-clock seconds and where the CPU time went."""
    cpu = CpuAccount()
    cpu.start()
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    cpu.stop()
    return wall, cpu


def reference_runtime(node_netns: str, pods: list[str], conf: str, work: Path,
                      latencies: dict[str, list[float]], errors: list[BaseException]) -> None:
    """One runtime of the reference churn: ADD its pods, then DEL them (bridge + host-local
    executed directly, as containerd does)."""
    try:
        join_node_netns(node_netns)
        ids = {p: secrets.token_hex(16) for p in pods}
        for command in ("ADD", "DEL"):
            for pod in pods:
                env = {"CNI_COMMAND": command, "CNI_CONTAINERID": ids[pod],
                       "CNI_NETNS": netns.netns_path(pod), "CNI_IFNAME": "eth0",
                       "CNI_PATH": str(REF_DIR), "PATH": os.environ.get("PATH", "/usr/bin")}
                started = time.monotonic()
                p = subprocess.run([str(REF_DIR / "bridge")], env=env, input=conf, text=True,
                                   capture_output=True, check=False)
                if p.returncode != 0:
                    raise RuntimeError(f"reference {command} {pod}: {p.stdout} {p.stderr}")
                latencies[command].append((time.monotonic() - started) * 1000)
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def reference_churn(node_netns: str, runtimes: int, per: int, prefix: str) -> list[str]:
    """The same churn with the reference chain; the lines to print."""
    work = Path(tempfile.mkdtemp(prefix="tortie-churn-ref-"))
    conf = json.dumps({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge",
                       "bridge": "tbchurn0", "isGateway": True,
                       "ipam": {"type": "host-local", "subnet": "10.99.0.0/16",
                                "dataDir": str(work / "host-local")}})
    names = [[f"{prefix}-r{r}-{i}" for i in range(per)] for r in range(runtimes)]
    latencies: dict[str, list[float]] = {"ADD": [], "DEL": []}
    errors: list[BaseException] = []
    try:
        for group in names:
            for pod in group:
                netns.add_netns(pod)
        threads = [threading.Thread(target=reference_runtime,
                                    args=(node_netns, group, conf, work, latencies, errors))
                   for group in names]
        wall, cpu = timed(threads)
    finally:
        for group in names:
            for pod in group:
                netns.del_netns(pod)
        netns.ip("link", "del", "tbchurn0", ns=node_netns, check=False)
        shutil.rmtree(work, ignore_errors=True)
    if errors:
        return [f"reference churn failed: {errors[0]!r}"]
    total = runtimes * per
    lines = ["\nReference chain (bridge + host-local), same threads, same node namespace",
             f"  wall {wall:.1f} s, {total / wall:.1f} pods/s"]
    for command, ms in latencies.items():
        lines.append(f"  {command}: {len(ms)} ok, median {statistics.median(ms):.1f} ms, "
                     f"p99 {p99(ms):.1f} ms")
    return lines + cpu.report(total)


def floor_runtime(node_netns: str, starts: int, errors: list[BaseException]) -> None:
    """One runtime of the floor: ``starts`` bare starts of the client's interpreter."""
    try:
        join_node_netns(node_netns)
        argv = [default_interpreter(), "-I", "-S", "-c", "pass"]
        for _ in range(starts):
            subprocess.run(argv, env={}, input="", text=True, capture_output=True, check=True)
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def exec_floor(node_netns: str, runtimes: int, per: int) -> list[str]:
    """Two bare interpreter starts per pod (ADD and DEL), same threads: the lines to print."""
    errors: list[BaseException] = []
    threads = [threading.Thread(target=floor_runtime, args=(node_netns, 2 * per, errors))
               for _ in range(runtimes)]
    wall, cpu = timed(threads)
    if errors:
        return [f"floor run failed: {errors[0]!r}"]
    total = runtimes * per
    return ["\nFloor of the plugin's executions: two bare starts of its interpreter per pod "
            f"({default_interpreter()} -I -S -c pass), same threads",
            f"  wall {wall:.1f} s, {total / wall:.1f} pods/s if a pod cost nothing else",
            *cpu.report(total)]


def programmings(node_netns: str) -> int:
    """tortie-node's count of nftables programmings so far (its /healthz)."""
    return int(node_healthz(node_netns)["agents"]["policy"]["programs"])


def join_node_netns(name: str) -> None:
    setns(netns.netns_path(name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", type=int, default=8)
    ap.add_argument("--pods", type=int, default=100, help="pods per runtime")
    ap.add_argument("--target", type=float, default=50.0, help="pods/s to reach")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the churn of the reference chain (bridge + host-local)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor (bare interpreter starts, two per pod)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cni_churn.py needs root (namespaces, the lab)", file=sys.stderr)
        return 2
    name = f"ch{secrets.token_hex(3)}"
    lab = Lab(name, progress=lambda m: log(f"lab: {m}"))
    try:
        lab.up(1)
        churn = PodChurn(lab, tag="k", namespace="churn", direct=True)
        log(f"making {args.runtimes * args.pods} pod namespaces")
        per_runtime = [[churn.new_pod("node1") for _ in range(args.pods)]
                       for _ in range(args.runtimes)]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=runtime, args=(churn, pods, errors))
                   for pods in per_runtime]
        log(f"{args.runtimes} runtimes x {args.pods} pods: ADD then DEL")
        node_netns = churn.node("node1").netns
        before = programmings(node_netns)
        wall, cpu = timed(threads)
        programmed = programmings(node_netns) - before
        churn.retry_dels(time.monotonic() + 30)
        check = churn.ipam_check()
        for pods in per_runtime:
            for pod in pods:
                netns.del_netns(pod.netns)
        reference: list[str] = []
        if not args.no_reference and (REF_DIR / "bridge").exists():
            log("the same churn with the reference chain")
            reference = reference_churn(churn.node("node1").netns, args.runtimes, args.pods,
                                        f"tl-{name}")
        if not args.no_floor:
            log("the floor: bare interpreter starts")
            reference += exec_floor(churn.node("node1").netns, args.runtimes, args.pods)
    finally:
        lab.down()
    if errors:
        print(f"runtime thread failed: {errors[0]!r}", file=sys.stderr)
        return 1
    ops: list[Op] = churn.ops
    total = args.runtimes * args.pods
    rate = total / wall
    codes = collections.Counter((o.command, o.code) for o in ops if o.code != 0)
    print(f"\nCNI churn: {args.runtimes} runtimes x {args.pods} pods on one node, "
          f"ADD then DEL")
    print(f"  wall {wall:.1f} s, {rate:.1f} pods/s (target {args.target:g})")
    for command in ("ADD", "DEL"):
        ms = [o.seconds * 1000 for o in ops if o.command == command and o.code == 0]
        if ms:
            print(f"  {command}: {len(ms)} ok, median {statistics.median(ms):.1f} ms, "
                  f"p99 {p99(ms):.1f} ms")
    print(f"  failures by code: {dict(codes) or 'none'}")
    print(f"  duplicates: {len(churn.duplicates)}")
    print(f"  ipam check: {'clean' if check['clean'] else check['output']}")
    print(f"  nftables programmings by tortie-node: {programmed}")
    if churn.unfinished:
        print(f"  DELs never acknowledged: {len(churn.unfinished)}")
    print("\n".join(cpu.report(total)))
    if reference:
        print("\n".join(reference))
    ok = (not codes and not churn.duplicates and check["clean"] and not churn.unfinished
          and rate >= args.target)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
