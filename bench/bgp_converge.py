"""BGP convergence: N ExaBGP speakers (ExaBGPSpeaker, as tortie-node runs them), each in
its own network namespace on one bridge, in a full iBGP mesh; or (``--lab``) a real Tortie
lab of N nodes, from a block claim in etcd to the route in every other node's kernel.

    sudo .venv/bin/python bench/bgp_converge.py [--sizes 10 20] [--announces 40]
    sudo .venv/bin/python bench/bgp_converge.py --lab 10 20 [--claims 30]

Speaker mode prints, for each size,

* mesh up: from starting all speakers (ExaBGP processes included) until every speaker has
  every session Established; and the same from the moment the last ExaBGP API answered;
* announce -> known everywhere: one speaker announces a new /26, the time until every
  other speaker's route table holds it (median, p99 over ``--announces`` announcements
  from rotating speakers);
* withdraw -> gone everywhere, the same for withdrawals.

Lab mode (``--lab N ...``) brings up ``Lab(name).up(N)`` (etcd, N tortie-nodes, each with
its routing agent and ExaBGP) and prints, for each size,

* full mesh: from calling ``Lab.up`` until every node's ``/healthz`` shows all its N-1 mesh
  sessions Established (the last session's own state-change time, and when polling saw it);
* claim -> kernel: ``--claims`` times, a rotating node claims a new block through
  ``ipam.IPAM.auto_assign`` (a fresh handle taking a whole /26 of a bench pool, so every
  assignment claims one new block); from the block's create in etcd until the first and
  the last other node's kernel has the route with protocol 80 (``ip monitor route`` in
  every node namespace, started before the claims);
* release -> gone: each handle released (the emptied block is deleted from etcd), until
  the route has left the first / last other node's kernel.

Lab mode also prints where a claim's time goes, from every node's log (the routing
agent's ``routing synced`` lines, which carry the time of the event that started each sync
and of the hand-over to ExaBGP): claim committed -> the owner's agent sees the block ->
the announcement is handed to ExaBGP -> the other agents get the BGP update from their
speaker -> the route is in their kernel; and the same for releases.  It also prints the
mesh from the last tortie-node's start, and any node whose startup hold ended by its grace
time instead of a complete BGP view.

Targets: median announce latency <= 200 ms, 20-node mesh up <= 10 s (lab: after the last
tortie-node is up).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit.procs import stop_pid
from bench.node_health import node_healthz
from datastore.store import Store
from ipam.allocator import IPAM
from ipam.blocks import Block
from lab import netns
from lab.bridge_net import BridgeNet
from lab.cluster import Lab
from routing.bgp.api import BGPSettings, LearnedRoute, Neighbour
from routing.bgp.peers import ip_key
from routing.bgp.speaker import ExaBGPSpeaker
from routing.kernel import PROTO, call_in_netns

ASN = 64512
BLOCKS = ipaddress.ip_network("10.80.0.0/12")


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


class Member:
    def __init__(self, index: int, ns: str, address: str, run_dir: Path) -> None:
        self.index, self.ns, self.address = index, ns, address
        self.speaker = ExaBGPSpeaker(run_dir, netns=ns, log_level="WARNING", eor_timeout=1.0,
                                     start_timeout=120.0)
        self.routes: dict[str, LearnedRoute] = {}
        self.waiters: list[tuple[str, bool, asyncio.Future[float]]] = []
        self.speaker.on_routes(self._on_routes)

    def _on_routes(self, routes: dict[str, LearnedRoute]) -> None:
        now = time.perf_counter()
        self.routes = routes
        keep = []
        for prefix, present, fut in self.waiters:
            if (prefix in routes) == present and not fut.done():
                fut.set_result(now)
            elif not fut.done():
                keep.append((prefix, present, fut))
        self.waiters = keep

    def wait(self, prefix: str, present: bool) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if (prefix in self.routes) == present:
            fut.set_result(time.perf_counter())
        else:
            self.waiters.append((prefix, present, fut))
        return fut

    def all_up(self, n: int) -> bool:
        st = self.speaker.status()
        return len(st) == n - 1 and all(p.state == "Established" for p in st)


async def run_size(n: int, announces: int, timeout: float) -> dict[str, float]:
    tag = secrets.token_hex(2)
    root = Path(tempfile.mkdtemp(prefix=f"bgpbench{tag}-"))
    members: list[Member] = []
    with BridgeNet(f"bb{tag}-") as net:
        try:
            for i in range(1, n + 1):
                ns, addr = net.add(i)
                members.append(Member(i, ns, addr, root / f"s{i}"))
            addrs = [m.address for m in members]

            def settings_for(me: str) -> BGPSettings:
                # as routing/bgp/peers.py builds the mesh: one-way, the higher address connects
                return BGPSettings(router_id=me, local_address=me, asn=ASN, neighbours=tuple(
                    Neighbour(a, ASN, "mesh", f"n{a}", passive=ip_key(a) > ip_key(me))
                    for a in addrs if a != me))

            t0 = time.perf_counter()
            await asyncio.gather(*(m.speaker.start(settings_for(m.address)) for m in members))
            t_api = time.perf_counter()
            for m in members:  # the agent's first (empty) announcement: End-of-RIB goes out
                await m.speaker.announce({})
            deadline = time.perf_counter() + timeout
            while not all(m.all_up(n) for m in members):
                if time.perf_counter() > deadline:
                    down = sum(1 for m in members for p in m.speaker.status()
                               if p.state != "Established")
                    raise RuntimeError(f"{n}-node mesh not up in {timeout}s ({down} sessions "
                                       "not established)")
                await asyncio.sleep(0.01)
            t_up = time.perf_counter()

            subnets = BLOCKS.subnets(new_prefix=26)
            owned: dict[int, dict[str, str]] = {m.index: {} for m in members}
            add_lat: list[float] = []
            del_lat: list[float] = []
            for k in range(announces):
                m = members[k % n]
                prefix = str(next(subnets))
                others = [o for o in members if o is not m]
                futs = [o.wait(prefix, True) for o in others]
                owned[m.index][prefix] = m.address
                t = time.perf_counter()
                await m.speaker.announce(dict(owned[m.index]))
                done = await asyncio.wait_for(asyncio.gather(*futs), timeout)
                add_lat.append(max(done) - t)
                if k % 2 == 1:  # withdraw every other one again
                    futs = [o.wait(prefix, False) for o in others]
                    del owned[m.index][prefix]
                    t = time.perf_counter()
                    await m.speaker.announce(dict(owned[m.index]))
                    done = await asyncio.wait_for(asyncio.gather(*futs), timeout)
                    del_lat.append(max(done) - t)
            return {"mesh_up": t_up - t0, "mesh_up_after_api": t_up - t_api,
                    "start": t_api - t0,
                    "add_median": statistics.median(add_lat), "add_p99": p99(add_lat),
                    "del_median": statistics.median(del_lat) if del_lat else 0.0,
                    "del_p99": p99(del_lat) if del_lat else 0.0}
        finally:
            pids = [m.speaker.pid for m in members]
            await asyncio.gather(*(m.speaker.close(graceful=True) for m in members),
                                 return_exceptions=True)
            for pid in pids:
                stop_pid(pid or 0)
            shutil.rmtree(root, ignore_errors=True)


# --- lab mode: a real Tortie lab, block claim in etcd -> route in every other kernel --------

BENCH_POOL = "bench-claims"
BENCH_POOL_CIDR = "10.250.0.0/16"
BENCH_BLOCK_SIZE = 26  # Calico's default; each claim takes a whole block, so each is new


def _mesh_state(health: dict[str, Any], n: int) -> tuple[int, float]:
    """(established mesh sessions, unix time of the latest state change among them)."""
    peers = health.get("agents", {}).get("routing", {}).get("peers") or []
    up = [p for p in peers if p.get("kind") == "mesh" and p.get("state") == "Established"]
    return len(up), max((float(p.get("since") or 0) for p in up), default=0.0)


class RouteWatch:
    """``ip -n NS monitor route`` for one node: when each protocol-80 route came and went
    (perf_counter stamps, taken as the bench reads each line; iproute2 flushes per event)."""

    def __init__(self, node: str, ns: str, cond: threading.Condition) -> None:
        self.node, self.ns, self.cond = node, ns, cond
        self.events: list[tuple[float, str, bool]] = []  # (time, dst, present)
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, name=f"watch-{node}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            toks = line.split()
            present = not (toks and toks[0] == "Deleted")
            toks = toks if present else toks[1:]
            if "proto" not in toks[:-1] or toks[toks.index("proto") + 1] != str(PROTO):
                continue
            dst = toks[1] if toks[0] in ("blackhole", "unreachable", "prohibit") else toks[0]
            with self.cond:
                self.events.append((now, dst, present))
                self.cond.notify_all()

    def first(self, dst: str, present: bool, after: float) -> float | None:
        return next((t for t, d, p in self.events if d == dst and p == present and t >= after),
                    None)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class StampedIPAM(IPAM):
    """The node's IPAM, noting when a block's create / delete was committed in etcd."""

    created: dict[str, float] = {}
    deleted: dict[str, float] = {}

    async def _create_block(self, cidr: str, cfg: Any) -> None:
        await super()._create_block(cidr, cfg)
        if cidr in self._affine:  # ours: the create went through
            StampedIPAM.created[cidr] = time.perf_counter()

    async def _delete_empty(self, block: Block) -> None:
        await super()._delete_empty(block)
        StampedIPAM.deleted[block.cidr] = time.perf_counter()


_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_logfmt(line: str) -> dict[str, str]:
    """One agentkit.logs line as a dict (quoted values unquoted)."""
    out: dict[str, str] = {}
    for key, value in _KV.findall(line):
        out[key] = json.loads(value) if value.startswith('"') else value
    return out


def _events(fields: dict[str, str]) -> dict[str, float]:
    """``events=block@1.2,bgp@1.3`` -> {"block": 1.2, "bgp": 1.3}."""
    out: dict[str, float] = {}
    for item in fields.get("events", "").split(","):
        kind, _, at = item.partition("@")
        if at:
            out[kind] = float(at)
    return out


def node_syncs(log: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(``routing synced`` lines, ``routing complete`` lines) of one node's log."""
    syncs, complete = [], []
    with open(log, errors="replace") as f:
        for line in f:
            if 'msg="routing synced"' in line:
                syncs.append(parse_logfmt(line))
            elif "msg=\"routing complete" in line:
                complete.append(parse_logfmt(line))
    return syncs, complete


def stage_split(claims: list[tuple[str, str, float, float]],
                logs: dict[str, list[dict[str, str]]],
                kernel: dict[tuple[str, str, bool], float]) -> dict[str, list[float]]:
    """Per stage, the seconds each claim (or release) spent there.  ``claims``: (owner,
    block, committed unix time, +1 add / -1 remove); ``kernel``: (node, block, present) ->
    unix time the route event was seen."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for owner, block, t0, sign in claims:
        tag = ("+" if sign > 0 else "-") + block
        mine = next((f for f in logs.get(owner, [])
                     if tag in f.get("announce", "").split(",")), None)
        if mine is None:
            continue
        seen = _events(mine).get("block")
        sent = float(mine["announced_at"])
        if seen is not None:
            add("owner_event", seen - t0)
            add("owner_to_exabgp", sent - seen)
        for k in ("wait_ms", "compute_ms", "bgp_ms"):
            if mine.get(k, "-") != "-":
                add(f"owner_{k}", float(mine[k]) / 1000)
        for node, syncs in logs.items():
            if node == owner:
                continue
            theirs = next((f for f in syncs if tag in f.get("routes", "").split(",")
                           and "bgp" in _events(f)), None)
            if theirs is None:
                continue
            got = _events(theirs)["bgp"]
            add("bgp_transit", got - sent)
            at = kernel.get((node, block, sign > 0))
            if at is not None:
                add("peer_to_kernel", at - got)
            for k in ("wait_ms", "compute_ms", "bgp_ms", "kernel_ms", "total_ms"):
                if theirs.get(k, "-") != "-":
                    add(f"peer_{k}", float(theirs[k]) / 1000)
    return out


def print_split(split: dict[str, list[float]], what: str) -> None:
    def med(key: str) -> str:
        v = split.get(key)
        return f"{statistics.median(v) * 1000:.1f}" if v else "-"

    def mx(key: str) -> str:
        v = split.get(key)
        return f"{max(v) * 1000:.1f}" if v else "-"
    print(f"              {what}: committed -> owner's agent sees it {med('owner_event')}"
          f" (max {mx('owner_event')}) -> handed to ExaBGP {med('owner_to_exabgp')} "
          f"(max {mx('owner_to_exabgp')}) -> update at a peer's agent {med('bgp_transit')} "
          f"(max {mx('bgp_transit')}) -> in its kernel {med('peer_to_kernel')} "
          f"(max {mx('peer_to_kernel')}) ms, medians")
    print(f"                owner's sync: event -> sync start {med('owner_wait_ms')}, compute "
          f"(with tunnel addresses) {med('owner_compute_ms')}, BGP hand-over "
          f"{med('owner_bgp_ms')} (max {mx('owner_bgp_ms')}) ms")
    print(f"                peers' syncs: event -> sync start {med('peer_wait_ms')}, compute "
          f"{med('peer_compute_ms')}, bgp {med('peer_bgp_ms')}, kernel "
          f"{med('peer_kernel_ms')}, whole sync {med('peer_total_ms')} "
          f"(max {mx('peer_total_ms')}) ms")


def _wait_all(watches: list[RouteWatch], cond: threading.Condition, dst: str, present: bool,
              after: float, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            got = [w.first(dst, present, after) for w in watches]
            if all(t is not None for t in got):
                return [t for t in got if t is not None]
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [w.node for w, t in zip(watches, got, strict=True) if t is None]
                raise RuntimeError(f"route {dst} {'not in' if present else 'still in'} "
                                   f"the kernel of {', '.join(missing)} after {timeout}s")
            cond.wait(left)


async def _claims(lab: Lab, nodes: list[str], watches: dict[str, RouteWatch],
                  cond: threading.Condition, count: int, timeout: float,
                  tag: str) -> dict[str, list[float]]:
    """Runs in the fabric namespace (where the lab's etcd listens)."""
    st = lab.load()
    out: dict[str, list[Any]] = {k: [] for k in ("add_owner", "add_first", "add_last",
                                                 "del_first", "del_last", "stamps")}
    async with Store(st.etcd_config()) as store:
        ipams = {n: StampedIPAM(store, n) for n in nodes}
        pool = next(p for p in await ipams[nodes[0]].pools() if p.name == BENCH_POOL)
        held: list[tuple[str, str, str]] = []  # (node, handle, block)
        for k in range(count):
            node = nodes[k % len(nodes)]
            handle = f"bench-{tag}-{k}"
            t0 = time.perf_counter()
            ips = await ipams[node].auto_assign(handle, {}, [pool],
                                                num=2 ** (32 - BENCH_BLOCK_SIZE))
            block = str(ipaddress.ip_network(f"{ips[0]}/{BENCH_BLOCK_SIZE}", strict=False))
            t_claim = StampedIPAM.created.get(block, t0)
            others = [w for n, w in watches.items() if n != node]
            seen = await asyncio.to_thread(_wait_all, others, cond, block, True, t0, timeout)
            owner = watches[node].first(block, True, t0)  # its blackhole for the block
            if owner is not None:
                out["add_owner"].append(owner - t_claim)
            out["add_first"].append(min(seen) - t_claim)
            out["add_last"].append(max(seen) - t_claim)
            out["stamps"].append((node, block, t_claim, 1))
            held.append((node, handle, block))
        for node, handle, block in held:
            t0 = time.perf_counter()
            await ipams[node].release_by_handle(handle)
            t_del = StampedIPAM.deleted.get(block, t0)
            others = [w for n, w in watches.items() if n != node]
            seen = await asyncio.to_thread(_wait_all, others, cond, block, False, t0, timeout)
            out["del_first"].append(min(seen) - t_del)
            out["del_last"].append(max(seen) - t_del)
            out["stamps"].append((node, block, t_del, -1))
    return out


def run_lab(n: int, claims: int, timeout: float) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    marks: dict[str, float] = {}  # "started" / "ready" -> unix time of the last node's

    def progress(msg: str) -> None:
        if msg.startswith("node ") and "tortie-node pid" in msg:
            marks["started"] = time.time()
        elif msg.startswith("node ") and "tortie-node ready" in msg:
            marks["ready"] = time.time()
    lab = Lab(f"bgp{tag}", progress=progress)
    watches: dict[str, RouteWatch] = {}
    wall = time.time() - time.perf_counter()  # perf_counter -> unix time
    cond = threading.Condition()
    load_before = os.getloadavg()
    try:
        t0_wall, t0 = time.time(), time.perf_counter()
        st = lab.up(n)
        t_up = time.perf_counter()
        nodes = {name: node.netns for name, node in st.nodes.items()}
        deadline = time.monotonic() + timeout
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 20)) as pool:
            while True:
                states = list(pool.map(
                    lambda ns: _mesh_state(_safe_healthz(ns), n), nodes.values()))
                if all(c == n - 1 for c, _ in states):
                    break
                if time.monotonic() > deadline:
                    up = sum(c for c, _ in states)
                    short = [f"{name}:{c}" for name, (c, _) in zip(nodes, states, strict=True)
                             if c != n - 1]
                    raise RuntimeError(f"{n}-node lab: mesh not up in {timeout}s ({up} of "
                                       f"{n * (n - 1)} session ends Established; nodes with "
                                       f"fewer than {n - 1}: {', '.join(short)})")
                time.sleep(0.1)
        t_polled = time.perf_counter()
        last_change = max(t for _, t in states)
        res: dict[str, Any] = {"up": t_up - t0, "mesh": last_change - t0_wall,
                               "mesh_polled": t_polled - t0, "load_before": load_before,
                               "mesh_after_started": last_change - marks["started"],
                               "mesh_after_ready": last_change - marks["ready"]}
        if claims:
            p = lab.tortie(st, ["apply", "-f", "-"], input=(
                f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: "
                f"{BENCH_POOL}\nspec:\n  cidr: {BENCH_POOL_CIDR}\n  blockSize: "
                f"{BENCH_BLOCK_SIZE}\n"))
            if p.returncode != 0:
                raise RuntimeError(f"creating pool {BENCH_POOL}: {p.stderr.strip()}")
            for name, ns in nodes.items():
                watches[name] = RouteWatch(name, ns, cond)
            time.sleep(0.5)  # the monitors are subscribed
            res.update(call_in_netns(st.fabric, lambda: asyncio.run(
                _claims(lab, list(nodes), watches, cond, claims, timeout, tag))))
            time.sleep(1.0)  # the last log lines are written
            logs, late = {}, []
            for name, node in st.nodes.items():
                logs[name], complete = node_syncs(node.log)
                late += [f"{name} after {c.get('after_s')} s waiting for {c.get('waiting_for')}"
                         for c in complete if c.get("by") == "grace"]
            firsts: dict[tuple[str, str, bool], float] = {}  # each block comes and goes once
            for w in watches.values():
                for t, d, present in list(w.events):
                    firsts.setdefault((w.node, d, present), t + wall)
            stamps = [(o, b, t + wall, sign) for o, b, t, sign in res.pop("stamps")]
            res["split_add"] = stage_split([x for x in stamps if x[3] > 0], logs, firsts)
            res["split_del"] = stage_split([x for x in stamps if x[3] < 0], logs, firsts)
            res["late_complete"] = late
        res["load_after"] = os.getloadavg()
        return res
    finally:
        for w in watches.values():
            w.close()
        lab.down()
        left = netns.list_netns(f"tl-{lab.name}-")
        if left:
            print(f"warning: lab {lab.name} left namespaces {left}", file=sys.stderr)


def _safe_healthz(ns: str) -> dict[str, Any]:
    try:
        return node_healthz(ns)
    except (OSError, ValueError):
        return {}


def print_lab(n: int, r: dict[str, Any], claims: int) -> None:
    la = " / ".join(f"{x:.1f}" for x in r["load_before"])
    lb = " / ".join(f"{x:.1f}" for x in r["load_after"])
    print(f"{n:3d}-node lab: full mesh {r['mesh']:.2f} s after Lab.up was called "
          f"(Lab.up returned after {r['up']:.2f} s; polling saw the mesh at "
          f"{r['mesh_polled']:.2f} s), {n * (n - 1) // 2} sessions")
    print(f"              full mesh {r['mesh_after_ready']:.2f} s after the last tortie-node "
          f"was up ({r['mesh_after_started']:.2f} s after it was started)")
    if claims:
        for key, what in (("add", "block claim -> route in kernel"),
                          ("del", "block freed  -> route gone  ")):
            first = [v * 1000 for v in r[f"{key}_first"]]
            last = [v * 1000 for v in r[f"{key}_last"]]
            print(f"              {what}: first node median {statistics.median(first):.1f} / "
                  f"p99 {p99(first):.1f} ms, last node median {statistics.median(last):.1f} "
                  f"/ p99 {p99(last):.1f} ms ({len(last)} blocks)")
    if claims:
        print_split(r["split_add"], "claim  ")
        print_split(r["split_del"], "release")
        for line in r["late_complete"]:
            print(f"              startup hold ended by grace, not BGP: {line}")
    if claims and r["add_owner"]:
        owner = [v * 1000 for v in r["add_owner"]]
        print(f"              (of which claim -> owner's own blackhole route: median "
              f"{statistics.median(owner):.1f} / p99 {p99(owner):.1f} ms)")
    print(f"              load average before {la}, after {lb}")
    sys.stdout.flush()


class _Fields(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{super().format(record)} {getattr(record, 'fields', '')}"


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Fields("%(levelname)s %(message)s"))
    logging.getLogger("tortie").addHandler(handler)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--announces", type=int, default=40)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--lab", type=int, nargs="+", metavar="N",
                    help="lab mode: a real Tortie lab of N nodes per size (instead of bare "
                         "speakers)")
    ap.add_argument("--claims", type=int, default=30,
                    help="lab mode: block claims to time (0: mesh only)")
    args = ap.parse_args()
    if args.lab:
        for n in args.lab:
            print_lab(n, run_lab(n, args.claims, max(args.timeout, 120.0)), args.claims)
        return
    for n in args.sizes:
        r = asyncio.run(run_size(n, args.announces, args.timeout))
        ms = {k: v * 1000 for k, v in r.items()}
        print(f"{n:3d} speakers: mesh up {r['mesh_up']:.2f} s from launch "
              f"({r['start']:.2f} s to start ExaBGPs, {r['mesh_up_after_api']:.2f} s after), "
              f"{n * (n - 1) // 2} sessions")
        print(f"              announce -> known everywhere: median {ms['add_median']:.1f} ms, "
              f"p99 {ms['add_p99']:.1f} ms ({args.announces} announcements)")
        print(f"              withdraw -> gone everywhere:  median {ms['del_median']:.1f} ms, "
              f"p99 {ms['del_p99']:.1f} ms")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
