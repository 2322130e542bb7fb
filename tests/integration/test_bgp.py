"""The BGP speaker against real ExaBGP and BIRD processes in network namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from agentkit.procs import stop_pid
from ctl.node import render_status
from lab.bridge_net import BridgeNet
from routing.bgp.api import BGPSettings, LearnedRoute, Neighbour
from routing.bgp.bird import BirdNeighbour, BirdPeer
from routing.bgp.exabgp_config import render_config
from routing.bgp.peers import ip_key
from routing.bgp.speaker import ExaBGPSpeaker, default_exabgp, start_guarded
from tests.support.tools import require_tools, tools
from tests.support.wait import until, until_sync

pytestmark = tools("root")  # namespaces

ASN = 64512
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bed(scratch_dir: Path) -> Iterator[BridgeNet]:
    require_tools("exabgp")
    with BridgeNet(f"tb{secrets.token_hex(3)}-") as net:
        yield net


def settings(me: str, peers: list[str], *, asn: int = ASN, gr: int = 120,
             extra: tuple[Neighbour, ...] = ()) -> BGPSettings:
    return BGPSettings(router_id=me, local_address=me, asn=asn, graceful_restart=gr,
                       neighbours=tuple(Neighbour(p, ASN, name=f"n{p}",
                                                  passive=ip_key(p) > ip_key(me))
                                        for p in peers) + extra)


class Node:
    """One ExaBGP speaker in its own namespace, recording what it learns."""

    def __init__(self, bed: BridgeNet, index: int, run_root: Path) -> None:
        self.ns, self.address = bed.add(index)
        self.speaker = ExaBGPSpeaker(run_root / f"s{index}", netns=self.ns, eor_timeout=2.0)
        self.routes: dict[str, LearnedRoute] = {}
        self.speaker.on_routes(self._on_routes)

    def _on_routes(self, routes: dict[str, LearnedRoute]) -> None:
        self.routes = routes

    def state(self, peer: str) -> str:
        return next((p.state for p in self.speaker.status() if p.address == peer), "")


@pytest.fixture
def nodes(bed: BridgeNet, scratch_dir: Path,
          aio_loop: asyncio.AbstractEventLoop) -> Iterator[Callable[[int], Node]]:
    made: list[Node] = []

    def make(index: int) -> Node:
        n = Node(bed, index, scratch_dir)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in made:
            pid = n.speaker.pid
            with contextlib.suppress(Exception):
                aio_loop.run_until_complete(n.speaker.close(graceful=False))
            stop_pid(pid or 0)


def test_every_rendered_option_is_valid_exabgp(scratch_dir: Path) -> None:
    """ExaBGP itself accepts a configuration using every option the renderer writes."""
    require_tools("exabgp")
    exabgp = default_exabgp()
    s = BGPSettings("192.0.2.11", "192.0.2.11", ASN, hold_time=30, graceful_restart=60,
                    cluster_id="244.0.0.1", neighbours=(
                        Neighbour("192.0.2.12", ASN, "mesh", "n2", passive=True),
                        Neighbour("192.0.2.1", 65001, "global", "tor", password="s3cret",
                                  ttl_security=2, port=1790),
                        Neighbour("192.0.2.13", ASN, "route-reflector-client", "n3",
                                  rr_client=True),
                        Neighbour("192.0.2.14", 65002, "global", "tor2", local_asn=65010,
                                  hold_time=15, restart_time=45, source_address=False)))
    conf = scratch_dir / "exabgp.conf"
    conf.write_text(render_config(s, ["/bin/cat"]))
    ok = subprocess.run([exabgp, "validate", str(conf)], capture_output=True, text=True,
                        env={**os.environ, "exabgp_daemon_user": "root"}, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    conf.write_text(conf.read_text().replace("hold-time 30;", "hold-time 30; bogus 1;"))
    bad = subprocess.run([exabgp, "validate", str(conf)], capture_output=True, text=True,
                         env={**os.environ, "exabgp_daemon_user": "root"}, check=False)
    assert bad.returncode != 0


async def test_announce_learn_withdraw(nodes) -> None:
    a, b = nodes(1), nodes(2)
    await a.speaker.start(settings(a.address, [b.address]))
    await b.speaker.start(settings(b.address, [a.address]))
    await a.speaker.announce({"10.65.1.0/26": a.address})
    await until(lambda: "10.65.1.0/26" in b.routes, what="b learns a's block", timeout=15)
    r = b.routes["10.65.1.0/26"]
    assert (r.next_hop, r.peer) == (a.address, a.address)
    assert a.state(b.address) == "Established"
    await a.speaker.announce({"10.65.1.0/26": a.address, "10.65.1.64/26": a.address})
    await until(lambda: "10.65.1.64/26" in b.routes, what="second block", timeout=15)
    await a.speaker.announce({"10.65.1.64/26": a.address})
    await until(lambda: "10.65.1.0/26" not in b.routes, what="withdrawal", timeout=15)
    assert set(b.routes) == {"10.65.1.64/26"}
    sb = {p.address: p for p in b.speaker.status()}[a.address]
    sa = {p.address: p for p in a.speaker.status()}[b.address]
    assert (sb.received, sa.sent) == (1, 1)
    assert a.routes == {}
    # what `tortie node status` prints for this speaker
    text = render_status({"node": "b", "agents": {"routing": {
        "peers": [asdict(p) for p in b.speaker.status()]}}})
    row = next(line for line in text.splitlines() if a.address in line)
    assert [c.strip() for c in row.strip("|").split("|")][1:3] == ["node-to-node mesh", "up"]


async def test_neighbour_added_without_dropping_sessions(nodes) -> None:
    a, b, c = nodes(1), nodes(2), nodes(3)
    await a.speaker.start(settings(a.address, [b.address]))
    await b.speaker.start(settings(b.address, [a.address, c.address]))
    await c.speaker.start(settings(c.address, [b.address]))
    await a.speaker.announce({"10.65.1.0/26": a.address})
    await c.speaker.announce({"10.65.3.0/26": c.address})
    await until(lambda: a.state(b.address) == "Established", what="a-b up", timeout=15)
    since = {p.address: p.since for p in a.speaker.status()}[b.address]
    await a.speaker.configure(settings(a.address, [b.address, c.address]))
    await c.speaker.configure(settings(c.address, [b.address, a.address]))
    await until(lambda: "10.65.3.0/26" in a.routes, what="a learns c's block", timeout=15)
    await until(lambda: "10.65.1.0/26" in c.routes, what="c learns a's block", timeout=15)
    assert a.routes["10.65.3.0/26"].next_hop == c.address
    st = {p.address: p for p in a.speaker.status()}[b.address]
    assert st.state == "Established" and st.since == since  # a-b session never dropped
    # and removing c again drops only that session and c's routes
    await a.speaker.configure(settings(a.address, [b.address]))
    await until(lambda: "10.65.3.0/26" not in a.routes, what="c's routes gone", timeout=15)
    assert {p.address: p.since for p in a.speaker.status()}[b.address] == since


async def test_md5_password(nodes, bed: BridgeNet, scratch_dir: Path, bird_bin: str) -> None:
    """TCP-MD5 (BGPPeer password): ExaBGP with BIRD, right and wrong secret."""
    a, b = nodes(1), nodes(2)
    ns, addr = bed.add(9)
    bird = BirdPeer(scratch_dir / "bird", netns=ns, router_id=addr, asn=65001, bird=bird_bin,
                    peers=[BirdNeighbour(a.address, ASN, "s3cret"),
                           BirdNeighbour(b.address, ASN, "s3cret")])
    bird.start()
    try:
        await a.speaker.start(settings(a.address, [], extra=(
            Neighbour(addr, 65001, "global", "bird", password="s3cret"),)))
        await b.speaker.start(settings(b.address, [], extra=(
            Neighbour(addr, 65001, "global", "bird", password="wrong"),)))
        await a.speaker.announce({"10.65.1.0/26": a.address})
        await b.speaker.announce({"10.65.2.0/26": b.address})
        await until(lambda: bird.routes() == {"10.65.1.0/26": a.address},
                    what="the right secret peers", timeout=15)
        await asyncio.sleep(2)
        assert b.state(addr) != "Established"
        assert bird.routes() == {"10.65.1.0/26": a.address}
    finally:
        bird.stop()


@pytest.fixture
def bird_bin() -> str:
    require_tools("bird")
    return shutil.which("bird") or "/usr/sbin/bird"


async def test_bird_outside_peer_learns_blocks(nodes, bed: BridgeNet, scratch_dir: Path,
                                               bird_bin: str) -> None:
    a, b = nodes(1), nodes(2)
    ns, addr = bed.add(9)
    bird = BirdPeer(scratch_dir / "bird", netns=ns, router_id=addr, asn=65001,
                    peers=[(a.address, ASN), (b.address, ASN)], bird=bird_bin)
    bird.start()
    try:
        extra = (Neighbour(addr, 65001, kind="global", name="bird"),)
        await a.speaker.start(settings(a.address, [b.address], extra=extra))
        await b.speaker.start(settings(b.address, [a.address], extra=extra))
        await a.speaker.announce({"10.65.1.0/26": a.address})
        await b.speaker.announce({"10.65.2.0/26": b.address, "10.65.2.64/26": b.address})
        want = {"10.65.1.0/26": a.address, "10.65.2.0/26": b.address,
                "10.65.2.64/26": b.address}
        await until(lambda: bird.routes() == want, what=f"bird learns {want}", timeout=15)
        # the kernel of BIRD's namespace got them with the same next hops
        kernel = bird.kernel_routes()
        assert all(kernel.get(p) == nh for p, nh in want.items()), kernel
        assert a.state(addr) == "Established"
    finally:
        bird.stop()


async def test_bird_route_reflector(nodes, bed: BridgeNet, scratch_dir: Path,
                                   bird_bin: str) -> None:
    a, b = nodes(1), nodes(2)
    ns, addr = bed.add(9)
    bird = BirdPeer(scratch_dir / "bird", netns=ns, router_id=addr, asn=ASN,
                    peers=[(a.address, ASN), (b.address, ASN)], bird=bird_bin,
                    route_reflector=True)
    bird.start()
    try:
        rr = (Neighbour(addr, ASN, kind="global", name="rr"),)
        # mesh off: each node peers with the reflector only
        await a.speaker.start(settings(a.address, [], extra=rr))
        await b.speaker.start(settings(b.address, [], extra=rr))
        await a.speaker.announce({"10.65.1.0/26": a.address})
        await b.speaker.announce({"10.65.2.0/26": b.address})
        await until(lambda: "10.65.1.0/26" in b.routes and "10.65.2.0/26" in a.routes,
                    what="routes reflected", timeout=15)
        assert set(b.routes) == {"10.65.1.0/26"}   # only BGP routes are reflected
        assert b.routes["10.65.1.0/26"].next_hop == a.address
        assert b.routes["10.65.1.0/26"].peer == addr
        assert a.routes["10.65.2.0/26"].next_hop == b.address
    finally:
        bird.stop()


async def test_tortie_node_as_route_reflector(nodes) -> None:
    """A node with a cluster ID reflects between its clients (RFC 4456), next hop kept."""
    rr, c1, c2 = nodes(1), nodes(2), nodes(3)
    cid = "244.0.0.1"
    await rr.speaker.start(BGPSettings(
        rr.address, rr.address, ASN, cluster_id=cid, neighbours=(
            Neighbour(c1.address, ASN, "route-reflector-client", "c1", rr_client=True),
            Neighbour(c2.address, ASN, "route-reflector-client", "c2", rr_client=True))))
    await c1.speaker.start(settings(c1.address, [rr.address]))
    await c2.speaker.start(settings(c2.address, [rr.address]))
    await c1.speaker.announce({"10.65.2.0/26": c1.address})
    await c2.speaker.announce({"10.65.3.0/26": c2.address})
    await rr.speaker.announce({"10.65.1.0/26": rr.address})
    await until(lambda: set(c2.routes) == {"10.65.1.0/26", "10.65.2.0/26"},
                what="c2 gets rr's and c1's blocks", timeout=15)
    await until(lambda: set(c1.routes) == {"10.65.1.0/26", "10.65.3.0/26"},
                what="c1 gets rr's and c2's blocks", timeout=15)
    assert c2.routes["10.65.2.0/26"].next_hop == c1.address   # next hop unchanged
    assert c2.routes["10.65.2.0/26"].peer == rr.address
    await until(lambda: {p.address: p.sent for p in rr.speaker.status()} == {
        c1.address: 2, c2.address: 2}, what="rr counts what it sends each client", timeout=15)
    await until(lambda: all(p.synced for p in c1.speaker.status()), what="End-of-RIB", timeout=15)
    # c1 withdraws: the reflection goes too
    await c1.speaker.announce({})
    await until(lambda: "10.65.2.0/26" not in c2.routes, what="reflected withdrawal", timeout=15)


async def test_graceful_restart_keeps_routes_stale(nodes) -> None:
    a, b = nodes(1), nodes(2)
    await a.speaker.start(settings(a.address, [b.address], gr=3))
    await b.speaker.start(settings(b.address, [a.address], gr=3))
    await a.speaker.announce({"10.65.1.0/26": a.address, "10.65.1.64/26": a.address})
    await until(lambda: len(b.routes) == 2, what="b learns both blocks", timeout=15)
    changes: list[dict[str, LearnedRoute]] = []
    b.speaker.on_routes(changes.append)

    # a's ExaBGP dies (no NOTIFICATION): b keeps both routes, marked stale
    pid = a.speaker.pid
    assert pid
    await a.speaker.close(graceful=True)
    await until(lambda: b.state(a.address) != "Established", what="b sees a down", timeout=15)
    assert len(b.routes) == 2
    st = {p.address: p for p in b.speaker.status()}[a.address]
    assert st.received == 2 and "stale" in st.info

    # a comes back announcing only one of them: End-of-RIB removes the other
    a2 = ExaBGPSpeaker(a.speaker.run_dir, netns=a.ns, eor_timeout=2.0)
    a.speaker = a2
    await a2.start(settings(a.address, [b.address], gr=3))
    await a2.announce({"10.65.1.64/26": a.address})
    await until(lambda: set(b.routes) == {"10.65.1.64/26"}, what="stale route flushed", timeout=15)
    assert all(len(c) >= 1 for c in changes)  # never an empty table in between

    # a dies for longer than its restart time: the routes go when it expires
    await a2.close(graceful=True)
    t0 = time.monotonic()
    await until(lambda: b.routes == {}, timeout=10, what="restart time expiry")
    assert time.monotonic() - t0 >= 2.0


async def test_bird_keeps_our_routes_while_we_restart(nodes, bed: BridgeNet,
                                                      scratch_dir: Path,
                                                      bird_bin: str) -> None:
    """The sending side of graceful restart: BIRD keeps a node's routes while its speaker
    restarts, and our End-of-RIB (sent only after the new announcement) keeps them fresh."""
    a = nodes(1)
    ns, addr = bed.add(9)
    bird = BirdPeer(scratch_dir / "bird", netns=ns, router_id=addr, asn=65001,
                    peers=[(a.address, ASN)], bird=bird_bin)
    bird.start()
    try:
        s = settings(a.address, [], gr=30, extra=(Neighbour(addr, 65001, "global", "bird"),))
        await a.speaker.start(s)
        await a.speaker.announce({"10.65.1.0/26": a.address, "10.65.1.64/26": a.address})
        want = {"10.65.1.0/26": a.address, "10.65.1.64/26": a.address}
        await until(lambda: bird.routes() == want, what="BIRD learns both", timeout=15)
        await a.speaker.close(graceful=True)
        await until(lambda: bird.protocols()[a.address] != "Established", what="down", timeout=15)
        for _ in range(10):  # stale, but kept (and still in BIRD's kernel table)
            assert bird.routes() == want
            await asyncio.sleep(0.1)
        assert bird.kernel_routes().get("10.65.1.0/26") == a.address
        a2 = ExaBGPSpeaker(a.speaker.run_dir, netns=a.ns, eor_timeout=20.0)
        a.speaker = a2
        await a2.start(s)
        await until(lambda: bird.protocols()[a.address] == "Established", what="back", timeout=15)
        assert bird.routes() == want  # no End-of-RIB yet: nothing flushed
        await a2.announce({"10.65.1.64/26": a.address})
        await until(lambda: bird.routes() == {"10.65.1.64/26": a.address},
                    what="End-of-RIB flushes what was not re-announced", timeout=15)
    finally:
        bird.stop()


async def test_exabgp_crash_is_restarted(nodes) -> None:
    a, b = nodes(1), nodes(2)
    await a.speaker.start(settings(a.address, [b.address]))
    await b.speaker.start(settings(b.address, [a.address]))
    await a.speaker.announce({"10.65.1.0/26": a.address})
    await until(lambda: "10.65.1.0/26" in b.routes, what="learnt", timeout=15)
    pid = a.speaker.pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: a.speaker.restarts == 1 and a.state(b.address) == "Established",
                what="restarted and re-established", timeout=15)
    assert a.speaker.pid != pid
    assert "10.65.1.0/26" in b.routes


# --- ExaBGP's first start, and commands refused while blocks churn ---------


async def test_announce_before_any_neighbour(nodes) -> None:
    """The first node of a cluster has no neighbour yet.  ExaBGP refuses ``announce route``
    (and ``withdraw route``) when no neighbour matches the command, so the routing agent
    used to fail and back off for up to 10 s.  The speaker keeps the routes and gives them
    to the neighbours a later configure() adds."""
    a, b = nodes(1), nodes(2)
    await a.speaker.start(settings(a.address, []))
    await a.speaker.announce({"10.65.1.0/26": a.address})
    await a.speaker.announce({"10.65.1.0/26": a.address, "10.65.1.64/26": a.address})
    await b.speaker.start(settings(b.address, [a.address]))
    await a.speaker.configure(settings(a.address, [b.address]))
    await until(lambda: set(b.routes) == {"10.65.1.0/26", "10.65.1.64/26"},
                what="b learns what a announced before it had neighbours", timeout=15)
    # the last neighbour goes, a block goes meanwhile, the neighbour comes back
    await a.speaker.configure(settings(a.address, []))
    await a.speaker.announce({"10.65.1.64/26": a.address})
    await a.speaker.configure(settings(a.address, [b.address]))
    await until(lambda: set(b.routes) == {"10.65.1.64/26"},
                what="b has only the block a still announces", timeout=15)


async def test_reload_while_routes_are_pending(nodes, bed: BridgeNet) -> None:
    """ExaBGP acknowledges ``reload`` before applying it, and its reactor discards the
    reload when an adj-rib-out still holds routes to send (reactor/loop.py rearms the
    signal, then skips the loop turn).  A configured peer that is down keeps what was just
    announced pending until its next connection attempt: the neighbour that reload added
    stayed unknown, ``neighbor X announce route`` was refused for 5 s, and the agent
    restarted ExaBGP, dropping every session."""
    _, down = bed.add(1)  # configured, never answers; we connect to it (lower address)
    b, c = nodes(2), nodes(3)
    await b.speaker.start(settings(b.address, [down]))
    await c.speaker.start(settings(c.address, [b.address]))
    for i in range(3):  # each announce leaves an adj-rib-out pending for the down peer
        await b.speaker.announce({f"10.65.2.{64 * i}/26": b.address})
        await b.speaker.configure(settings(b.address, [down, c.address] if i % 2 == 0
                                           else [down]))
    await until(lambda: set(c.routes) == {"10.65.2.128/26"}, what="c learns b's block", timeout=15)
    assert b.speaker.restarts == 0 and b.state(c.address) == "Established"


async def test_exabgp_starts_while_grpc_is_busy(store) -> None:
    """ExaBGP sometimes failed its first start with an empty log: tortie-node's etcd client
    (gRPC) has threads, and forking with a ``preexec_fn`` (Python code between fork and
    exec) runs gRPC's at-fork handlers in the child, which abort it ("Check failed:
    next_worker->state == KICKED") before ExaBGP is exec'd.  Every child started the way
    the speaker starts ExaBGP must reach exec while etcd calls are in flight."""
    stop = asyncio.Event()

    async def churn(i: int) -> None:
        n = 0
        while not stop.is_set():
            await store.put(f"/tortie/test/fork/{i}", {"n": n})
            n += 1

    writers = [asyncio.ensure_future(churn(i)) for i in range(4)]
    codes: list[int] = []
    try:
        for _ in range(100):
            proc = await start_guarded(["/bin/true"], stdin=subprocess.DEVNULL)
            codes.append(await proc.wait())
    finally:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
    assert codes == [0] * len(codes), f"{sum(c != 0 for c in codes)} children died: {codes}"


def test_exabgp_dies_with_its_parent(scratch_dir: Path) -> None:
    """What the speaker starts is killed when tortie-node dies (PR_SET_PDEATHSIG): a crashed
    node never leaves an ExaBGP holding port 179."""
    pidfile = scratch_dir / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys, time\n"
         f"sys.path.insert(0, {str(REPO)!r})\n"
         "from routing.bgp.speaker import start_guarded\n"
         "async def main():\n"
         "    p = await start_guarded(['sleep', '120'])\n"
         f"    open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
         "    await asyncio.sleep(120)\n"
         "asyncio.run(main())\n"],
        start_new_session=True)
    try:
        def started() -> bool:
            assert parent.poll() is None, "no child started"
            return pidfile.exists() and bool(pidfile.read_text())
        until_sync(started, 30, "the child started")
        child = int(pidfile.read_text())
        os.kill(child, 0)
    finally:
        parent.kill()
        parent.wait()
    until_sync(lambda: not Path(f"/proc/{child}").exists() or "zombie" in _proc_state(child),
               10, "the child does not outlive its parent")


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    except OSError:
        pass
    return ""
