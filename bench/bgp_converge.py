"""BGP convergence: N ExaBGP speakers (ExaBGPSpeaker, as tortie-node runs them), each in
its own network namespace on one bridge, in a full iBGP mesh.

    sudo .venv/bin/python bench/bgp_converge.py [--sizes 10 20] [--announces 40]

For each size it prints

* mesh up: from starting all speakers (ExaBGP processes included) until every speaker has
  every session Established; and the same from the moment the last ExaBGP API answered;
* announce -> known everywhere: one speaker announces a new /26, the time until every
  other speaker's route table holds it (median, p99 over ``--announces`` announcements
  from rotating speakers);
* withdraw -> gone everywhere, the same for withdrawals.

Targets (issue 4): median announce latency <= 200 ms, 20-node mesh up <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.bridge_net import BridgeNet
from routing.bgp.api import BGPSettings, LearnedRoute, Neighbour
from routing.bgp.bird import stop_pid
from routing.bgp.peers import ip_key
from routing.bgp.speaker import ExaBGPSpeaker

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
    args = ap.parse_args()
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
