"""ExaBGPSpeaker: the :class:`routing.bgp.api.Speaker` that runs ExaBGP 5 as a child process.

Constructor (stable; the routing agent builds it)::

    ExaBGPSpeaker(
        run_dir,                # directory for ExaBGP's own files: exabgp.conf, api.sock,
                                # exabgp.log (created if missing; one per speaker instance)
        exabgp=None,            # path of the ``exabgp`` executable (default: next to
                                # sys.executable, else $PATH)
        *,
        netns=None,             # run ExaBGP inside this named netns (``ip netns exec``); the
                                # tests and the bench use it, tortie-node already runs in its
                                # node's namespace and leaves it None
        python=sys.executable,  # interpreter for the API relay (stdlib only, run -I -S)
        log_level="INFO",       # ExaBGP's log level (its log goes to run_dir/exabgp.log)
        eor_timeout=10.0,       # send End-of-RIB after this long even if announce() was
                                # never called
        start_timeout=20.0,     # start() fails if ExaBGP's API does not connect in time
        restart_delay=1.0,      # ExaBGP exiting unexpectedly is restarted after this delay
    )

How it talks to ExaBGP: ExaBGP runs as root (``exabgp.daemon.user=root``) and starts one
API ``process``, ``relay.py``, which connects to ``run_dir/api.sock`` where this speaker
listens; commands go down that socket, ExaBGP's ``done``/``error`` acks and its JSON
messages come back up.  ExaBGP dies with us (PR_SET_PDEATHSIG, armed by ``launch.py``: no
``preexec_fn``, see :func:`start_guarded`) and exits when the relay does, so a crashed
tortie-node never leaves an orphan holding port 179.

What ExaBGP is told, and when:

* Route commands name the peers they are for, and only peers whose session is up.  ExaBGP
  refuses ``announce route`` / ``withdraw route`` that match no neighbour (the first node of
  a cluster has none), and a command for a peer that is down stays queued in that peer's
  adj-rib-out until its next connection attempt (ExaBGP backs off up to 60 s between them).
  A peer coming up gets what it lacks, then End-of-RIB; ExaBGP itself resends what it
  already held for it.  ``self._rib`` mirrors ExaBGP's adj-rib-out of our own routes per peer.
* End-of-RIB survives reloads: ExaBGP queues an ``announce eor`` on the neighbour's
  configuration object and sends it once the peer's pending routes are out, and an applied
  reload replaces those objects (reactor/loop.py ``reload`` -> ``Peer.reconfigure``), so a
  queued End-of-RIB is silently lost.  After every applied reload the speaker sends it again
  to each peer that had one in its current session (a second one is harmless).  A peer that
  never gets it keeps our node out of its "BGP complete" view until its start-up grace.
* ``reload`` is confirmed, not assumed: ExaBGP acknowledges it before applying it, applies it
  at the top of its next loop turn, and *discards* it when an adj-rib-out is still pending
  then (reactor/loop.py rearms the signal before that check).  The speaker asks for the
  configuration ExaBGP runs with (``show neighbor configuration``), and sends the reload
  again until it names exactly the wanted neighbours; only then are commands sent for them.

Graceful restart, receiving side (RFC 4724): when an established session with a peer that
advertised the capability drops without a NOTIFICATION, its routes stay (marked stale)
for the restart time it advertised; once it is back, routes it re-announces are fresh
again and its End-of-RIB removes the ones still stale.  Sending side: ExaBGP advertises the
capability, ``close(graceful=True)`` kills it without a NOTIFICATION, and End-of-RIB is only
sent once the agent's first announcement is in (``manual-eor``), so peers keep our routes
until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentkit.backoff import Backoff
from routing.bgp.api import (
    BGPSettings,
    LearnedRoute,
    Neighbour,
    PeerStatus,
    RoutesChanged,
    RouteTable,
)
from routing.bgp.exabgp_config import (
    FAMILY,
    FAMILY_V6,
    exabgp_environment,
    families,
    neighbour_addresses,
    render_config,
    restart_needed,
)
from routing.bgp.filters import accepted, communities_for

log = logging.getLogger("tortie.bgp")

RELAY = Path(__file__).with_name("relay.py")
LAUNCH = Path(__file__).with_name("launch.py")
CONFIG_FILE = "exabgp.conf"
SOCKET_FILE = "api.sock"
LOG_FILE = "exabgp.log"
COMMAND_TIMEOUT = 10.0
RELOAD_TIMEOUT = 30.0  # a reload ExaBGP keeps discarding (a pending adj-rib-out) fails then
MAX_SOCKET_PATH = 107


class SpeakerError(RuntimeError):
    pass


def default_exabgp() -> str:
    here = Path(sys.executable).with_name("exabgp")
    if here.exists():
        return str(here)
    return shutil.which("exabgp") or "exabgp"


async def start_guarded(argv: list[str], *, python: str = sys.executable,
                        **kwargs: Any) -> asyncio.subprocess.Process:
    """Start ``argv`` so that it is killed when this process dies.

    Never with a ``preexec_fn``: that forks and runs Python code in the child, and in a
    process whose gRPC client (the etcd Store) has threads, gRPC's at-fork handlers then
    crash the child before it execs (SIGSEGV / SIGABRT; ExaBGP's "first start fails with
    an empty log").  ``launch.py`` arms PR_SET_PDEATHSIG in the child itself, then execs.
    """
    return await asyncio.create_subprocess_exec(
        python, "-I", "-S", str(LAUNCH), str(os.getpid()), *argv, **kwargs)


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _selector(addresses: Iterable[str]) -> str:
    """ExaBGP's prefix of a command for these neighbours: ``neighbor A , neighbor B``."""
    return " , ".join(f"neighbor {a}" for a in addresses)


def route_attributes(next_hop: str, prefix: str,
                     advertisements: Iterable[tuple[str, Iterable[str]]] = ()) -> str:
    """ExaBGP's attributes of one of our routes: ``next-hop N [community [..]]
    [large-community [..]]`` (the communities of the prefix advertisements that cover it)."""
    standard, large = communities_for(prefix, [(c, tuple(v)) for c, v in advertisements])
    attrs = f"next-hop {next_hop}"
    if standard:
        attrs += f" community [ {' '.join(standard)} ]"
    if large:
        attrs += f" large-community [ {' '.join(large)} ]"
    return attrs


def configured_neighbours(lines: Iterable[str]) -> set[str]:
    """The neighbour addresses in the text of ``show neighbor configuration``."""
    out: set[str] = set()
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "neighbor" and words[-1] == "{":
            out.add(words[1])
    return out


@dataclass
class _Peer:
    neighbour: Neighbour
    state: str = "Idle"
    since: float = field(default_factory=time.time)
    info: str = ""
    established: bool = False
    restart_time: int = 0            # from the peer's OPEN; 0: no graceful restart
    notified: bool = False           # a NOTIFICATION came with the last session end
    stale: set[str] = field(default_factory=set)
    stale_timer: asyncio.TimerHandle | None = None
    router_id: str = ""              # from the peer's OPEN
    synced: bool = False             # End-of-RIB received since the session came up


def _as_path(attrs: dict[str, Any]) -> tuple[int, ...]:
    raw = attrs.get("as-path")
    out: list[int] = []
    if isinstance(raw, dict):
        for key in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0):
            seg = raw[key]
            if isinstance(seg, dict):
                out.extend(int(a) for a in seg.get("value", []))
    elif isinstance(raw, list):
        out.extend(int(a) for a in raw)
    return tuple(out)


def parse_update(msg: dict[str, Any]) -> tuple[dict[str, LearnedRoute], list[str], bool]:
    """(announced routes, withdrawn prefixes, is End-of-RIB) of one ExaBGP JSON update."""
    nb = msg.get("neighbor", {})
    peer = nb.get("address", {}).get("peer", "")
    message = nb.get("message", {})
    if "eor" in message:
        return {}, [], True
    upd = message.get("update", {})
    attrs = upd.get("attribute", {})
    path = _as_path(attrs)
    announced: dict[str, LearnedRoute] = {}
    for family, by_hop in upd.get("announce", {}).items():
        if family not in (FAMILY, FAMILY_V6) or not isinstance(by_hop, dict):
            continue
        for next_hop, nlris in by_hop.items():
            for item in nlris:
                prefix = item.get("nlri") if isinstance(item, dict) else item
                if prefix:
                    announced[prefix] = LearnedRoute(prefix, next_hop, peer, path)
    withdrawn: list[str] = []
    for family, nlris in upd.get("withdraw", {}).items():
        if family not in (FAMILY, FAMILY_V6) or not isinstance(nlris, list):
            continue
        for item in nlris:
            prefix = item.get("nlri") if isinstance(item, dict) else item
            if prefix:
                withdrawn.append(prefix)
    return announced, withdrawn, False


def reflection_attributes(msg: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(originator-id, cluster-list) of an update, empty when absent."""
    attrs = msg.get("neighbor", {}).get("message", {}).get("update", {}).get("attribute", {})
    clusters = attrs.get("cluster-list") or ()
    return str(attrs.get("originator-id") or ""), tuple(str(c) for c in clusters)


def _gr_time(open_msg: dict[str, Any]) -> int:
    for cap in (open_msg.get("capabilities") or {}).values():
        if isinstance(cap, dict) and cap.get("name") == "graceful restart":
            return int(cap.get("time", 0))
    return 0


class ExaBGPSpeaker:
    """The Speaker of api.py over an ExaBGP 5 child process (see the module docstring)."""

    def __init__(self, run_dir: str | Path, exabgp: str | None = None, *,
                 netns: str | None = None, python: str = sys.executable,
                 log_level: str = "INFO", eor_timeout: float = 10.0,
                 start_timeout: float = 20.0, restart_delay: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.exabgp = exabgp or default_exabgp()
        self.netns = netns
        self.python = python
        self.log_level = log_level
        self.eor_timeout = eor_timeout
        self.start_timeout = start_timeout
        self.restart_delay = restart_delay
        self.table = RouteTable()
        self.settings: BGPSettings | None = None
        self.restarts = 0
        self.reloads_resent = 0  # reloads ExaBGP discarded and was sent again
        self._callbacks: list[RoutesChanged] = []
        self._peers: dict[str, _Peer] = {}
        self._wanted: dict[str, str] = {}      # what the agent wants announced
        # the neighbours in the configuration the running ExaBGP has applied, and for each
        # the routes of ours its adj-rib-out holds (what we told ExaBGP for that peer)
        self._exa: set[str] = set()
        self._rib: dict[str, dict[str, str]] = {}
        self._sync_lock = asyncio.Lock()  # route commands, reloads: one batch at a time
        self._restarting = False
        self._announce_called = False
        self._eor_sent = False
        self._eor_peers: set[str] = set()  # sent End-of-RIB in their current session
        # route reflection (settings.cluster_id): reflection attributes of learnt routes,
        # (peer, prefix) -> (originator-id, cluster-list), and what we reflect to whom
        self._rr_attrs: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
        self._reflected: dict[str, dict[str, str]] = {}
        self._reflect_wanted = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected: asyncio.Event = asyncio.Event()
        # commands sent, oldest first: the answer to come, and text output collected so far
        self._pending: deque[tuple[asyncio.Future[str], list[str]]] = deque()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._log_file: Any = None

    # ----- paths ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def socket_path(self) -> Path:
        return self.run_dir / SOCKET_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        """ExaBGP's PID while it runs."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    # ----- Speaker protocol -------------------------------------------------------------

    async def start(self, settings: BGPSettings) -> None:
        self._closing = False
        self.settings = settings
        self._sync_peers(settings)
        await self._launch()

    async def configure(self, settings: BGPSettings) -> None:
        old = self.settings
        if self._restarting:  # the relaunch under way picks the new settings up
            self.settings = settings
            self._sync_peers(settings)
            return
        if old is None or self._proc is None:
            await self.start(settings)
            return
        if settings == old:
            return
        self.settings = settings
        self._sync_peers(settings)
        try:
            await self._apply_settings(old, settings)
        finally:
            # filters, communities and AS-loop limits need no reload: the routes learnt
            # are filtered again and each peer gets what it should have now
            self._emit()
        if self._proc is not None and not self._restarting:
            await self._sync_announcements()

    async def _apply_settings(self, old: BGPSettings, settings: BGPSettings) -> None:
        """Restart or reload ExaBGP for ``settings`` (already recorded) as needed."""
        if restart_needed(old, settings):
            log.info("bgp identity changed, restarting exabgp",
                     extra={"fields": {"router_id": settings.router_id, "asn": settings.asn}})
            await self._stop_process(graceful=True)
            await self._launch()
            return
        text = self._render()
        want = set(neighbour_addresses(settings))
        if text == self.config_path.read_text() and want == self._exa:
            return
        async with self._sync_lock:
            self._write_config(text)
            try:
                await self._reload(want)
            except BaseException:
                # Not applied: forget the new settings so that a retry does the whole change.
                self.settings = old
                self._write_config(self._render())
                raise
        # neighbours the reload added get our routes when their sessions come up
        self._reflect_wanted.set()

    async def announce(self, prefixes: dict[str, str]) -> None:
        self._wanted = dict(prefixes)
        self._announce_called = True
        if self._proc is None or self._restarting:
            return  # (re)start announces what is wanted then
        await self._sync_announcements()
        await self._send_eor()

    def _up_peers(self) -> list[str]:
        """Peers a route command may name: in ExaBGP's configuration and established."""
        return sorted(a for a in self._exa
                      if (p := self._peers.get(a)) is not None and p.established)

    async def _sync_announcements(self) -> None:
        """Tell ExaBGP, for each peer that is up, what its adj-rib-out lacks or has too many
        (one command per route, naming every peer it is for)."""
        async with self._sync_lock:
            withdraw: dict[str, list[str]] = {}
            announce: dict[tuple[str, str], list[str]] = {}
            ours = self._own_attributes()
            for addr in self._up_peers():
                want = self.exported_to(addr, ours)
                have = self._rib.setdefault(addr, {})
                for prefix in set(have) - set(want):
                    withdraw.setdefault(prefix, []).append(addr)
                for prefix, attrs in want.items():
                    if have.get(prefix) != attrs:
                        announce.setdefault((prefix, attrs), []).append(addr)
            for prefix, addrs in sorted(withdraw.items()):
                await self._command(f"{_selector(addrs)} withdraw route {prefix}")
                for addr in addrs:
                    self._rib[addr].pop(prefix, None)
            for (prefix, attrs), addrs in sorted(announce.items()):
                await self._command(f"{_selector(addrs)} announce route {prefix} {attrs}")
                for addr in addrs:
                    self._rib[addr][prefix] = attrs

    def _ebgp(self, n: Neighbour) -> bool:
        s = self.settings
        return s is not None and n.asn != (n.local_asn or s.asn)

    def _own_attributes(self) -> dict[str, str]:
        """prefix -> ExaBGP route attributes of every route we announce (next hop, the
        prefix advertisements' communities)."""
        s = self.settings
        ads = s.prefix_communities if s else ()
        if not ads:
            return {prefix: f"next-hop {nh}" for prefix, nh in self._wanted.items()}
        return {prefix: route_attributes(nh, prefix, ads) for prefix, nh in self._wanted.items()}

    def exported_to(self, addr: str, ours: dict[str, str] | None = None) -> dict[str, str]:
        """Our own routes for the peer ``addr``: prefix -> ExaBGP route attributes, without
        what its export filter rejects.  ``ours``: :meth:`_own_attributes`, if at hand."""
        if ours is None:
            ours = self._own_attributes()
        ours = {prefix: attrs for prefix, attrs in ours.items() if self._carries(addr, prefix)}
        p = self._peers.get(addr)
        if p is None or not p.neighbour.export_rules:
            return ours
        rules, ebgp = p.neighbour.export_rules, self._ebgp(p.neighbour)
        return {prefix: attrs for prefix, attrs in ours.items()
                if accepted(rules, prefix, ebgp=ebgp)}

    async def _reload(self, want: set[str]) -> None:
        """Make ExaBGP run with the configuration file just written, whose neighbours are
        ``want``; the caller holds ``_sync_lock``.  See the module docstring: a reload
        ExaBGP discarded is sent again once the adj-rib-out had a moment to drain."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        pause = Backoff(0.02, 1.0)
        while True:
            await self._command("reload")
            # handled after the reload's loop turn: it shows whether that applied it
            have = configured_neighbours(await self._command("show neighbor configuration"))
            if have == want:
                break
            if time.monotonic() >= deadline:
                raise SpeakerError(f"exabgp did not apply its new configuration: it runs with "
                                   f"{sorted(have)}, not {sorted(want)}")
            self.reloads_resent += 1
            log.info("exabgp discarded a reload, sending it again",
                     extra={"fields": {"running": ",".join(sorted(have)) or "-",
                                       "wanted": ",".join(sorted(want)) or "-"}})
            await asyncio.sleep(pause.next())
        for addr in self._exa - want:
            self._rib.pop(addr, None)  # ExaBGP forgets a removed neighbour's RIB
            self._reflected.pop(addr, None)
        for addr in want - self._exa:
            self._rib[addr] = {}
            self._reflected.pop(addr, None)
        self._exa = want
        await self._eor_again()

    async def _eor_again(self) -> None:
        """End-of-RIB again to the peers that had one in their current session: the reload
        just applied dropped any ExaBGP still held queued (see the module docstring)."""
        again = [a for a in self._up_peers() if a in self._eor_peers]
        if not again:
            return
        for family in (FAMILY, FAMILY_V6):
            peers = [a for a in again if family in self._families_of(a)]
            if not peers:
                continue
            try:
                await self._command(f"{_selector(peers)} announce eor {family}")
            except SpeakerError as e:
                log.warning("end-of-rib not sent again after a reload", extra={"fields": {
                    "peers": ",".join(peers), "family": family, "error": str(e)}})

    def _families_of(self, addr: str) -> tuple[str, ...]:
        """The address families the session with ``addr`` carries."""
        p = self._peers.get(addr)
        if self.settings is None:
            return (FAMILY_V6,) if ":" in addr else (FAMILY,)
        return families(self.settings, p.neighbour if p is not None else None)

    def _carries(self, addr: str, prefix: str) -> bool:
        """Whether the session with ``addr`` carries ``prefix``'s address family."""
        return (FAMILY_V6 if ":" in prefix else FAMILY) in self._families_of(addr)

    def on_routes(self, callback: RoutesChanged) -> None:
        self._callbacks.append(callback)

    def status(self) -> list[PeerStatus]:
        out = []
        settings = self.settings
        for addr, p in sorted(self._peers.items()):
            if settings is None:
                break
            out.append(PeerStatus(
                address=addr, kind=p.neighbour.kind, state=p.state, since=p.since,
                received=len(self.table.by_peer.get(addr, {})),
                sent=(len(self._rib.get(addr, {})) + len(self._reflected.get(addr, {}))
                      if p.established else 0),
                info=(f"{len(p.stale)} stale routes; {p.info}".rstrip("; ") if p.stale
                      else p.info),
                synced=p.established and p.synced,
            ))
        return out

    async def close(self, graceful: bool = True) -> None:
        self._closing = True
        if not graceful and self._proc is not None and any(self._rib.values()):
            with contextlib.suppress(SpeakerError, OSError):
                await self.announce({})
                await asyncio.sleep(0.2)  # let ExaBGP put the withdrawals on the wire
        await self._stop_process(graceful=graceful)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for p in self._peers.values():
            if p.stale_timer:
                p.stale_timer.cancel()

    # ----- process management ----------------------------------------------------------

    def _write_config(self, text: str) -> None:
        """Replace the config file atomically: ExaBGP parses a reload lazily, line by line, and
        a file rewritten in place under it mixes old and new neighbours ("duplicate peer
        definition"); after one failed reload ExaBGP 5.0's parser keeps a stale section stack
        and refuses every later reload."""
        tmp = self.config_path.with_name(self.config_path.name + ".new")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def _render(self) -> str:
        assert self.settings is not None
        return render_config(self.settings, [self.python, "-I", "-S", str(RELAY),
                                              str(self.socket_path)])

    async def _launch(self) -> None:
        assert self.settings is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise SpeakerError(f"{self.socket_path}: path too long for a unix socket")
        self._write_config(self._render())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._connected = asyncio.Event()
        self._server = await asyncio.start_unix_server(self._on_relay, path=str(self.socket_path))
        argv = [self.exabgp, str(self.config_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = exabgp_environment(self.settings, os.environ, self.log_level)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (kept open while it runs)
        self._eor_sent = False
        self._eor_peers = set()
        # a new ExaBGP runs the configuration just written, with empty RIBs
        self._exa = set(neighbour_addresses(self.settings))
        self._rib = {a: {} for a in self._exa}
        self._reflected = {}
        self._proc = await start_guarded(
            argv, python=self.python, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file, stderr=asyncio.subprocess.STDOUT, cwd=str(self.run_dir))
        proc = self._proc
        log.info("exabgp started",
                 extra={"fields": {"pid": proc.pid, "run_dir": str(self.run_dir)}})
        waiter = asyncio.ensure_future(self._connected.wait())
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=self.start_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if waiter not in done:
            exited.cancel()
            why = (f"it exited ({_describe_exit(proc.returncode)})"
                   if proc.returncode is not None
                   else f"its API did not connect within {self.start_timeout:g} s")
            await self._stop_process(graceful=True)
            raise SpeakerError(f"exabgp did not start: {why} (see {self.log_path}):\n"
                               f"{self._log_tail()}")
        exited.cancel()
        self._spawn(self._watch(proc))
        self._spawn(self._eor_after_timeout(proc))
        self._spawn(self._reflector(proc))
        self._reflect_wanted.set()
        if self._wanted:
            await self._sync_announcements()
        if self._announce_called:
            await self._send_eor()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if proc is not self._proc or self._closing:
            return
        log.error("exabgp exited", extra={"fields": {"rc": rc, "log": self._log_tail(5)}})
        self._lost_process()
        await self._stop_process(graceful=True)  # tidy up the socket and log file
        self._restarting = True
        try:
            while not self._closing and self._proc is None:
                await asyncio.sleep(self.restart_delay)
                if self._closing or self._proc is not None:
                    return
                self.restarts += 1
                try:
                    await self._launch()
                except (SpeakerError, OSError) as e:
                    log.error("exabgp restart failed", extra={"fields": {"error": str(e)}})
                    await self._stop_process(graceful=True)
        finally:
            self._restarting = False
        if self._proc is not None:
            with contextlib.suppress(SpeakerError):
                await self._sync_announcements()  # announce() calls made meanwhile

    def _lost_process(self) -> None:
        """Our ExaBGP is gone: every session is down; keep the routes of GR peers stale."""
        self._fail_pending("exabgp exited")
        for addr, p in self._peers.items():
            if p.established:
                self._session_down(addr, p, "exabgp exited")
        self._emit()

    async def _stop_process(self, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if graceful:
                proc.kill()  # no NOTIFICATION: peers keep our routes as stale
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()  # ExaBGP's shutdown: NOTIFICATION Cease to the peers
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._fail_pending("exabgp stopped")
        for p in self._peers.values():
            if p.established or p.state != "Idle":
                p.state, p.since, p.established = "Idle", time.time(), False

    # ----- API channel -----------------------------------------------------------------

    async def _on_relay(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one relay at a time
            writer.close()
            return
        self._writer = writer
        self._connected.set()
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                self._on_line(raw.decode(errors="replace").strip())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _fail_pending(self, why: str) -> None:
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(SpeakerError(why))

    async def _command(self, line: str, timeout: float = COMMAND_TIMEOUT) -> list[str]:
        """Send one API command; its text output once ExaBGP answers ``done``."""
        async with self._lock:
            writer = self._writer
            if writer is None or self._proc is None:
                raise SpeakerError(f"exabgp is not running ({line!r})")
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            output: list[str] = []
            self._pending.append((fut, output))
            writer.write(line.encode() + b"\n")
            await writer.drain()
        try:
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise SpeakerError(f"exabgp did not answer {line!r}") from None
        if answer != "done":
            raise SpeakerError(f"exabgp refused {line!r}: {answer}")
        return output

    def _on_line(self, line: str) -> None:
        if not line:
            return
        if line in ("done", "error") or line.startswith("error"):
            if self._pending:
                fut, _ = self._pending.popleft()
                if not fut.done():
                    fut.set_result(line)
            return
        if not line.startswith("{"):  # text output of the oldest command not answered yet
            if self._pending:
                self._pending[0][1].append(line)
            return
        try:
            msg = json.loads(line)
            self._on_message(msg)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("bad exabgp message", extra={"fields": {"error": str(e),
                                                                "line": line[:200]}})

    # ----- BGP state --------------------------------------------------------------------

    def _sync_peers(self, settings: BGPSettings) -> None:
        wanted = {n.address: n for n in settings.neighbours
                  if n.address not in (settings.local_address, settings.router_id)}
        for addr in list(self._peers):
            if addr not in wanted:
                p = self._peers.pop(addr)
                if p.stale_timer:
                    p.stale_timer.cancel()
                if self.table.by_peer.pop(addr, None):
                    self._emit()
        for addr, n in wanted.items():
            if addr in self._peers:
                self._peers[addr].neighbour = n
            else:
                self._peers[addr] = _Peer(n)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        nb = msg.get("neighbor", {})
        addr = nb.get("address", {}).get("peer", "")
        p = self._peers.get(addr)
        if p is None:
            return
        if kind == "state":
            self._on_state(addr, p, nb.get("state", ""), nb.get("reason", ""))
        elif kind == "open" and nb.get("direction") == "receive":
            p.restart_time = _gr_time(nb.get("open", {}))
            p.router_id = str(nb.get("open", {}).get("router_id", ""))
        elif kind == "notification":
            p.notified = True
            note = nb.get("notification", {})
            p.info = f"notification {note.get('code', '')}/{note.get('subcode', '')}"
        elif kind == "update" and nb.get("direction", "receive") == "receive":
            self._on_update(addr, p, msg)

    def _on_state(self, addr: str, p: _Peer, state: str, reason: str) -> None:
        now = time.time()
        if state in ("up", "down"):
            self._eor_peers.discard(addr)  # a new session needs its own End-of-RIB
        if state == "up":
            p.state, p.since, p.established, p.info = "Established", now, True, ""
            p.notified = p.synced = False
            self._spawn(self._peer_up(addr))
        elif state == "connected":
            if not p.established:
                p.state = "OpenSent"
        elif state == "down":
            if p.established:
                p.since = now
                self._session_down(addr, p, reason)
                self._emit()
            p.state = "Active"
            p.info = p.info if p.notified else reason

    def _session_down(self, addr: str, p: _Peer, reason: str) -> None:
        p.established = False
        p.state, p.since = "Active", time.time()
        routes = self.table.by_peer.get(addr, {})
        gr = self.settings is not None and self.settings.graceful_restart > 0
        if routes and gr and p.restart_time > 0 and not p.notified:
            p.stale = set(routes)
            self._arm_stale_timer(addr, p, p.restart_time)
            log.info("bgp peer down, keeping its routes stale",
                     extra={"fields": {"peer": addr, "routes": len(routes),
                                       "restart_time": p.restart_time, "reason": reason}})
        else:
            self.table.by_peer.pop(addr, None)
            p.stale.clear()
            log.info("bgp peer down", extra={"fields": {"peer": addr, "reason": reason}})

    def _arm_stale_timer(self, addr: str, p: _Peer, seconds: float) -> None:
        if p.stale_timer:
            p.stale_timer.cancel()
        p.stale_timer = asyncio.get_running_loop().call_later(
            seconds, self._flush_stale, addr)

    def _flush_stale(self, addr: str) -> None:
        p = self._peers.get(addr)
        if p is None:
            return
        if p.stale_timer:  # End-of-RIB came first, or the timer itself fired
            p.stale_timer.cancel()
        p.stale_timer = None
        routes = self.table.by_peer.get(addr, {})
        if not p.stale:
            return
        for prefix in p.stale:
            routes.pop(prefix, None)
        log.info("bgp stale routes removed",
                 extra={"fields": {"peer": addr, "routes": len(p.stale)}})
        p.stale.clear()
        if not routes:
            self.table.by_peer.pop(addr, None)
        self._emit()

    def _on_update(self, addr: str, p: _Peer, msg: dict[str, Any]) -> None:
        announced, withdrawn, eor = parse_update(msg)
        if eor:
            p.synced = True
            self._flush_stale(addr)
            return
        routes = self.table.by_peer.setdefault(addr, {})
        settings = self.settings
        originator, clusters = reflection_attributes(msg)
        for prefix, route in announced.items():
            if settings is not None and (
                    route.next_hop in (settings.local_address, settings.router_id,
                                       settings.local_address6)
                    or originator == settings.router_id
                    or (settings.cluster_id and settings.cluster_id in clusters)):
                # our own route, or one we reflected, coming back: a loop (RFC 4456 8)
                if routes.pop(prefix, None) is not None:
                    self._rr_attrs.pop((addr, prefix), None)
                continue
            routes[prefix] = route
            p.stale.discard(prefix)
            if originator or clusters:
                self._rr_attrs[(addr, prefix)] = (originator, clusters)
            else:
                self._rr_attrs.pop((addr, prefix), None)
        for prefix in withdrawn:
            routes.pop(prefix, None)
            p.stale.discard(prefix)
            self._rr_attrs.pop((addr, prefix), None)
        if not routes:
            self.table.by_peer.pop(addr, None)
        self._emit()

    def accepted_table(self) -> RouteTable:
        """The learnt routes the import side lets through, per peer: its BGPPeer's import
        filter rules, and the AS-loop check (a path with our AS in it more often than the
        peer's ``numAllowedLocalASNumbers``).  ``self.table`` keeps everything the peers
        sent, so a filter that changes takes effect without asking them again."""
        s = self.settings
        out = RouteTable()
        for addr, routes in self.table.by_peer.items():
            p = self._peers.get(addr)
            if p is None or s is None:
                out.by_peer[addr] = routes
                continue
            n = p.neighbour
            mine = {s.asn, n.local_asn or s.asn}
            ebgp = self._ebgp(n)
            kept = {prefix: r for prefix, r in routes.items()
                    if sum(1 for a in r.as_path if a in mine) <= n.allowed_local_as
                    and (not n.import_rules
                         or accepted(n.import_rules, prefix, remote=True, ebgp=ebgp))}
            if kept:
                out.by_peer[addr] = kept
        return out

    def _emit(self) -> None:
        self._reflect_wanted.set()
        best = self.accepted_table().best()
        for cb in list(self._callbacks):
            try:
                cb(dict(best))
            except Exception:  # a broken callback must not stop the speaker
                log.exception("routes callback failed")

    # ----- route reflection (RFC 4456) --------------------------------------------------

    def reflected_routes(self) -> dict[str, dict[str, str]]:
        """What this speaker, as route reflector, wants each peer to have:
        peer -> prefix -> ExaBGP route attributes (next hop kept, originator, cluster list)."""
        s = self.settings
        if s is None or not s.cluster_id:
            return {}
        ibgp = {a: p for a, p in self._peers.items() if p.neighbour.asn == s.asn}
        if not any(p.neighbour.rr_client for p in ibgp.values()):
            return {}
        out: dict[str, dict[str, str]] = {a: {} for a in ibgp}
        for prefix, route in self.accepted_table().best().items():
            src = ibgp.get(route.peer)
            if src is None or prefix in self._wanted:
                continue  # eBGP-learnt, or one of our own
            originator, clusters = self._rr_attrs.get((route.peer, prefix), ("", ()))
            originator = originator or src.router_id or route.peer
            attrs = (f"next-hop {route.next_hop} originator-id {originator} "
                     f"cluster-list [ {' '.join((s.cluster_id, *clusters))} ]")
            if route.as_path:
                attrs += f" as-path [ {' '.join(map(str, route.as_path))} ]"
            for target, tp in ibgp.items():
                if target == route.peer or not self._carries(target, prefix):
                    continue
                if not (src.neighbour.rr_client or tp.neighbour.rr_client):
                    continue
                if tp.neighbour.export_rules and not accepted(
                        tp.neighbour.export_rules, prefix, remote=True):
                    continue
                own = (s.local_address6 or s.local_address) if ":" in prefix else s.local_address
                out[target][prefix] = (attrs.replace(f"next-hop {route.next_hop}",
                                                     f"next-hop {own}", 1)
                                       if tp.neighbour.next_hop_self else attrs)
        return out

    async def _reflector(self, proc: asyncio.subprocess.Process) -> None:
        while proc is self._proc:
            await self._reflect_wanted.wait()
            self._reflect_wanted.clear()
            if proc is not self._proc:
                return
            try:
                await self._sync_reflections()
            except SpeakerError as e:
                log.warning("route reflection failed", extra={"fields": {"error": str(e)}})
                await asyncio.sleep(0.5)
                self._reflect_wanted.set()

    async def _sync_reflections(self) -> None:
        """What each peer that is up should have reflected to it (like _sync_announcements,
        ``_reflected`` mirrors ExaBGP's adj-rib-out of reflected routes per peer)."""
        async with self._sync_lock:
            want = self.reflected_routes()
            for target in self._up_peers():
                have = self._reflected.setdefault(target, {})
                new = want.get(target, {})
                for prefix in sorted(set(have) - set(new)):
                    await self._command(f"neighbor {target} withdraw route {prefix}")
                    del have[prefix]
                for prefix, attrs in sorted(new.items()):
                    if have.get(prefix) != attrs:
                        await self._command(
                            f"neighbor {target} announce route {prefix} {attrs}")
                        have[prefix] = attrs

    async def _peer_up(self, addr: str) -> None:
        """A session came up: ExaBGP resends what it holds for the peer; we add what it
        lacks (what changed while it was down), then End-of-RIB."""
        try:
            await self._sync_announcements()
            await self._sync_reflections()
        except SpeakerError as e:
            log.warning("routes for a peer that came up not sent",
                        extra={"fields": {"peer": addr, "error": str(e)}})
            return
        if self._eor_sent:
            await self._eor_to(addr)

    # ----- End-of-RIB -------------------------------------------------------------------

    async def _send_eor(self) -> None:
        if self._eor_sent:
            return
        self._eor_sent = True
        for addr in self._up_peers():
            await self._eor_to(addr)

    async def _eor_to(self, addr: str) -> None:
        self._eor_peers.add(addr)  # before the answer: a reload confirmed meanwhile sees it
        first, *more = self._families_of(addr)
        try:
            await self._command(f"neighbor {addr} announce eor {first}")
        except SpeakerError as e:
            self._eor_peers.discard(addr)
            p = self._peers.get(addr)
            if p is not None and p.established:  # else: sent when it is up again
                log.warning("end-of-rib not sent",
                            extra={"fields": {"peer": addr, "error": str(e)}})
            return
        for family in more:  # IPv6 on an IPv4 session: a refusal leaves IPv4's EoR standing
            try:
                await self._command(f"neighbor {addr} announce eor {family}")
            except SpeakerError as e:
                log.warning("end-of-rib not sent", extra={"fields": {
                    "peer": addr, "family": family, "error": str(e)}})

    async def _eor_after_timeout(self, proc: asyncio.subprocess.Process) -> None:
        await asyncio.sleep(self.eor_timeout)
        if proc is self._proc and not self._eor_sent:
            log.info("no announcement yet, sending end-of-rib anyway")
            await self._send_eor()
