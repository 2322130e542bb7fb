"""CNI ADD / DEL latency: Tortie through its executable vs Debian's bridge + host-local.

Both run in the same run, on the same machine, from the same "runtime": this process,
moved into a lab node's network namespace, creating each pod's netns first and then
executing the plugin with the CNI environment and stdin, as containerd does. Tortie's
daemon runs in that node with a real etcd; the reference chain keeps its state on disk.

    sudo .venv/bin/python bench/cni_add.py [--pods 200] [--profile]

Prints median and p99 of ADD and DEL for both, and the ratios.  ``--profile`` also prints
where Tortie's time goes (medians over the pods): in the client (exec to the end of its
imports, its own work up to the connect, the socket round trip beyond the daemon's own time,
answer to exit) from the plugin's CLOCK_MONOTONIC marks, and inside the daemon per step
(cni.handler.STEPS, timed by the handler) from the timings it sends back when asked
(``TORTIE_CNI_PROFILE``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit.netns import setns
from lab import netns
from lab.cluster import Lab

REF_DIR = Path("/usr/lib/cni")


def enter_netns(name: str) -> None:
    """Move this thread (and the processes it starts) into a network namespace."""
    setns(netns.netns_path(name))


def leave_to(fd: int) -> None:
    setns(fd)


#: per command: one dict of phase -> ms per call (``--profile``)
PROFILES: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
PROFILE_PREFIX = "tortie-profile "


def call(exe: str, command: str, container: str, pod_ns: str, conf: dict,
         cni_path: str, profile: bool = False) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns.netns_path(pod_ns), "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod_ns}",
           "CNI_PATH": cni_path, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if profile:
        env["TORTIE_CNI_PROFILE"] = "1"
    data = json.dumps(conf)
    start = time.monotonic()
    p = subprocess.run([exe], input=data, env=env, capture_output=True, text=True, check=False)
    end = time.monotonic()
    if p.returncode != 0:
        raise RuntimeError(f"{exe} {command} failed: {p.stdout.strip()} {p.stderr.strip()}")
    if profile:
        PROFILES[command].append(_phases(p.stderr, start, end))
    return (end - start) * 1000


def _phases(stderr: str, start: float, end: float) -> dict[str, float]:
    """One call's time split (ms) from the plugin's profile line (same CLOCK_MONOTONIC)."""
    line = next(x for x in stderr.splitlines() if x.startswith(PROFILE_PREFIX))
    marks = json.loads(line[len(PROFILE_PREFIX):])
    daemon = marks.get("timings") or {}
    out = {
        "client: exec + interpreter + imports": marks["started"] - start,
        "client: read stdin, parse, connect": marks["connected"] - marks["started"],
        "socket + JSON beyond the daemon": (marks["answered"] - marks["connected"])
        - daemon.get("total", 0.0) / 1000,
        "client: answer to exit": end - marks["answered"],
    }
    out = {k: v * 1000 for k, v in out.items()}
    steps = {k: v for k, v in daemon.items() if k != "total"}
    out.update({f"daemon: {k}": v for k, v in steps.items()})
    out["daemon: between steps"] = daemon.get("total", 0.0) - sum(steps.values())
    out["daemon: total"] = daemon.get("total", 0.0)
    return out


def print_profile(pods: int) -> None:
    print(f"\nWhere a Tortie call's time goes (ms, median over {pods} pods; "
          "DEL's veth/wep/ipam overlap)")
    for command, rows in PROFILES.items():
        print(f"  {command}")
        names = list(dict.fromkeys(k for r in rows for k in r))
        for name in names:
            values = [r.get(name, 0.0) for r in rows]
            print(f"    {name:40}{statistics.median(values):8.2f}{p99(values):8.2f} (p99)")


def measure(label: str, exe: str, conf: dict, cni_path: str, pods: list[str],
            profile: bool = False) -> dict[str, list[float]]:
    ids = {p: uuid.uuid4().hex for p in pods}
    adds = [call(exe, "ADD", ids[p], p, conf, cni_path, profile) for p in pods]
    dels = [call(exe, "DEL", ids[p], p, conf, cni_path, profile) for p in pods]
    print(f"  {label}: {len(pods)} ADD + {len(pods)} DEL done", file=sys.stderr)
    return {"ADD": adds, "DEL": dels}


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--profile", action="store_true",
                    help="also print where Tortie's ADD / DEL time goes (client, daemon steps)")
    args = ap.parse_args()
    if not (REF_DIR / "bridge").exists():
        print("error: Debian's reference plugins are missing: apt-get install "
              "containernetworking-plugins", file=sys.stderr)
        return 1
    name = f"b{uuid.uuid4().hex[:6]}"
    lab = Lab(name, progress=lambda m: print(f"  {m}", file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="tortie-bench-"))
    pod_names = [f"tl-{name}-p{i}" for i in range(args.pods)]
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        st = lab.up(1)
        node = st.nodes["node1"]
        for p in pod_names:
            netns.add_netns(p)
        tortie_conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tortie",
                       "socket": node.socket, "ipam": {"type": "tortie-ipam"}}
        ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge",
                    "bridge": "tbref0", "isGateway": True,
                    "ipam": {"type": "host-local", "subnet": "10.99.0.0/16",
                             "dataDir": str(work / "host-local")}}
        enter_netns(node.netns)  # the runtime lives on the node
        results = {}
        results["reference"] = measure("bridge + host-local", str(REF_DIR / "bridge"),
                                       ref_conf, str(REF_DIR), pod_names)
        results["tortie"] = measure("tortie", str(lab.bin_dir / "tortie"), tortie_conf,
                                    f"{lab.bin_dir}:{REF_DIR}", pod_names, args.profile)
    finally:
        with contextlib.suppress(OSError):
            leave_to(home)
        for p in pod_names:
            netns.del_netns(p)
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
        os.close(home)
    print(f"\nCNI latency over {args.pods} pods (ms; median / p99)")
    print(f"{'':12}{'ADD median':>12}{'ADD p99':>10}{'DEL median':>12}{'DEL p99':>10}")
    for label, r in results.items():
        print(f"{label:12}{statistics.median(r['ADD']):12.1f}{p99(r['ADD']):10.1f}"
              f"{statistics.median(r['DEL']):12.1f}{p99(r['DEL']):10.1f}")
    t, ref = results["tortie"], results["reference"]
    print(f"{'ratio':12}{statistics.median(t['ADD']) / statistics.median(ref['ADD']):12.2f}"
          f"{p99(t['ADD']) / p99(ref['ADD']):10.2f}"
          f"{statistics.median(t['DEL']) / statistics.median(ref['DEL']):12.2f}"
          f"{p99(t['DEL']) / p99(ref['DEL']):10.2f}")
    if args.profile:
        print_profile(args.pods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
