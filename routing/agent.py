"""The routing agent: datastore + BGP -> kernel routes, tunnels, outgoing NAT.

It mirrors IP pools, Nodes, BGPConfigurations, BGPPeers, BGPFilters, FelixConfigurations (for
``vxlanMTU`` / ``vxlanMTUV6`` / ``ipipMTU``, ``vxlanPort`` / ``vxlanVNI``), the BGP
passwords tortie-kube-controllers copies from Secrets
(:mod:`datastore.bgp_secrets`), the Services and EndpointSlices it mirrors (service
advertisement, :mod:`routing.services`) and the IPAM blocks (a block's affinity is in its
document) with a :class:`datastore.syncer.Syncer`, and after every change (debounced) and every
``RESYNC_INTERVAL``:

1. makes sure this node has a VTEP address (from its IPAM block, handle
   ``vxlan-tunnel-addr-<node>``) and MAC in its Node resource when a pool uses VXLAN, and
   an IPv6 one (handle ``vxlan-v6-tunnel-addr-<node>``, ``spec.ipv6VXLANTunnelAddr``,
   ``spec.vxlanTunnelMACAddrV6``) when an IPv6 pool does and the node has an IPv6 address;
2. computes what it wants (:mod:`routing.desired`): the prefixes to announce (owned blocks,
   borrowed /32s, service addresses; next hop = this node's address) and the kernel routes;
3. hands the BGP settings (neighbours: the node mesh and BGPPeers) and the announcements to
   the speaker (:class:`routing.bgp.speaker.ExaBGPSpeaker`); the speaker's learnt routes come
   back through ``on_routes`` and trigger step 2 again;
4. programs ``vxlan.tortie`` and ``vxlan-v6.tortie`` (device with its port and VNI,
   :mod:`datastore.vxlan_settings`, made anew when they change; FDB, neighbours), ``tunl0``
   (each with its MTU, :mod:`datastore.mtu`), the routes (protocol 80, :mod:`routing.kernel`) and
   ``ip tortie-nat`` (:mod:`routing.nat`).

Restarts: ``close()`` leaves every route in place and stops the speaker gracefully (peers keep
our routes as stale).  A starting agent adopts the routes with protocol 80 it finds and does
not remove any of *those* until its BGP view is complete (every neighbour established and
its End-of-RIB received, or ``--routing-startup-grace`` seconds), so a restart never drops
traffic (:class:`AdoptedRoutes`).  A route this run programmed itself goes as soon as it is
no longer wanted: its withdrawal is news, not a gap in a view still being learnt.

Every sync that changes a kernel route or the announcements logs ``routing synced`` with
where its time went (event -> start, compute, BGP hand-over, kernel) and what changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from agentkit.agent import Agent, NodeContext
from agentkit.backoff import Backoff
from agentkit.health import HEARTBEAT_INTERVAL, Heartbeat
from agentkit.metrics import DEFAULT_BUCKETS
from datastore import bgp_secrets
from datastore.keys import BGP_SECRETS, resource_prefix
from datastore.kinds import by_plural
from datastore.model_bgp import GLOBAL_BGP_CONFIG_NAME, BGPConfiguration, BGPFilter, BGPPeer
from datastore.model_config import FelixConfiguration
from datastore.model_network import IPPool, Node
from datastore.mtu import MTUOverrides, felix_overrides
from datastore.resources import ResourceConflict
from datastore.store import DatastoreError, NotFound
from datastore.syncer import Syncer, cancel_and_wait
from datastore.unsupported import IgnoredFieldLog
from datastore.vxlan_settings import VXLANSettings, vxlan_settings
from ipam.allocator import IPAM
from ipam.blocks import Block, IPAMError
from ipam.watch import block_watch_prefix, parse_watched_block
from routing import desired
from routing.bgp.api import BGPSettings, LearnedRoute, Speaker
from routing.bgp.peers import MissingPassword, compute_settings, reachable_routes
from routing.ipip import IPIPDevice, IPIPUnavailable, ipip_handle
from routing.kernel import PROTO, KernelRoutes, SyncResult
from routing.nat import NATError, OutgoingNAT
from routing.services import (
    Advertisement,
    ServiceIndex,
    ServiceRanges,
    advertisement,
    parse_service,
    parse_slice,
)
from routing.vxlan import VXLANConfig, VXLANDevice, vtep_handle

log = logging.getLogger("tortie.routing")

RESYNC_INTERVAL = 30.0
#: coalesce a burst of events into one sync: a change that comes within this long of the
#: previous sync's end waits this long; the first change after a quiet spell is synced at
#: once (events of one burst that arrive while it runs make one more sync after it)
DEBOUNCE = 0.01
SETTLE = 1.0                 # how often to re-check the startup hold-off
DEFAULT_STARTUP_GRACE = 30.0
DEFAULT_HOLD_TIME = 90
_NODE = by_plural("nodes")


#: what brings one watched change (key, document or None when deleted) into the agent's
#: view; True: what this node routes, announces or configures may have changed
_Handler = Callable[[str, dict[str, Any] | None], bool]
_T = TypeVar("_T")


def _name(key: str) -> str:
    """The resource name a key ends with."""
    return key.rsplit("/", 1)[-1]


def _mirror(cache: dict[str, _T], name: str, value: dict[str, Any] | None,
            parse: Callable[[dict[str, Any]], _T]) -> _T | None:
    """Put the parsed ``value`` in ``cache`` as ``name`` (None: take it out); what is there
    now.  A document that does not parse raises and leaves the cache as it was."""
    if value is None:
        cache.pop(name, None)
        return None
    cache[name] = parsed = parse(value)
    return parsed


#: TcpExt counters of segments the kernel dropped for their TCP-MD5 signature: wrong, missing
#: where we hold a key, present where we hold none
MD5_COUNTERS = ("TCPMD5Failure", "TCPMD5NotFound", "TCPMD5Unexpected")


def tcp_md5_failures(netstat: str) -> int:
    """The sum of :data:`MD5_COUNTERS` in a ``/proc/net/netstat`` text (0 when absent)."""
    lines = netstat.splitlines()
    total = 0
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:") and values.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            total += sum(int(row.get(c, 0)) for c in MD5_COUNTERS)
    return total


class AdoptedRoutes:
    """The routes a starting agent found in the kernel (its predecessor's), which it keeps
    while its BGP view is incomplete even when nothing wants them yet.

    Only those: a route the agent added itself in this run and that is unwanted now was
    withdrawn (or its owner's session ended) while we watched, so it goes at once.  Holding
    every unwanted route instead kept a block's route freed after start-up in the kernel
    until the start-up grace ran out (18 s in a 20-node lab: one peer's End-of-RIB late)."""

    def __init__(self) -> None:
        self.found: set[str] | None = None  # None: the kernel was not read yet

    @staticmethod
    def _canonical(dst: str) -> str:
        return str(ipaddress.ip_network(dst, strict=False))

    def adopt(self, dsts: Iterable[str]) -> None:
        """The destinations of the protocol-80 routes in the kernel at start."""
        self.found = {self._canonical(d) for d in dsts}

    def hold(self, wanted: Iterable[str], complete: bool) -> frozenset[str]:
        """The destinations whose unwanted routes stay in this sync.  An adopted route that
        is wanted again was confirmed: it is no longer held later.  Once complete, nothing
        is held again."""
        if self.found is None:
            return frozenset()
        if complete:
            self.found.clear()
            return frozenset()
        self.found -= {self._canonical(d) for d in wanted}
        return frozenset(self.found)


@dataclasses.dataclass(frozen=True)
class TunnelAddresses:
    """A node's tunnel addresses as its Node resource records them."""

    vxlan: str | None      # spec.ipv4VXLANTunnelAddr
    mac: str | None        # spec.vxlanTunnelMACAddr
    vxlan6: str | None     # spec.ipv6VXLANTunnelAddr
    mac6: str | None       # spec.vxlanTunnelMACAddrV6
    ipip: str | None       # spec.bgp.ipv4IPIPTunnelAddr


def _is_v6(prefix: str) -> bool:
    return ":" in prefix


def _family_counts(wanted: desired.Desired | None, learnt: dict[str, LearnedRoute],
                   version: int) -> dict[str, int]:
    """Per address family: prefixes announced, learnt, and kernel routes wanted."""
    v6 = version == 6
    return {
        "announced": sum(1 for p in (wanted.announce if wanted else {}) if _is_v6(p) == v6),
        "learnt": sum(1 for p in learnt if _is_v6(p) == v6),
        "routes": sum(1 for p in (wanted.routes if wanted else {}) if _is_v6(p) == v6),
    }


def _route_dst(described: str) -> str:
    """The destination in a :meth:`routing.desired.Route.describe` text."""
    words = described.split()
    return words[1] if words and words[0] == "blackhole" else words[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("routing")
    g.add_argument("--no-routing", action="store_true",
                   help="run no routing agent (no routes, tunnels, BGP or NAT)")
    g.add_argument("--no-bgp", action="store_true",
                   help="routing agent without a BGP speaker (local routes, tunnels, NAT only)")
    g.add_argument("--exabgp", help="path of the exabgp executable (default: next to python, "
                                    "else $PATH)")
    g.add_argument("--bgp-port", type=int,
                   help="BGP listen port (default: BGPConfiguration listenPort, else 179)")
    g.add_argument("--bgp-run-dir",
                   help="ExaBGP's files (default: 'bgp' next to the CNI socket)")
    g.add_argument("--bgp-hold-time", type=int, default=DEFAULT_HOLD_TIME,
                   help=f"BGP hold time in seconds (default {DEFAULT_HOLD_TIME})")
    g.add_argument("--bgp-graceful-restart", type=int,
                   help="graceful restart time advertised, seconds; 0 turns it off (default: "
                        "BGPConfiguration nodeMeshMaxRestartTime, else 120)")
    g.add_argument("--routing-startup-grace", type=float, default=DEFAULT_STARTUP_GRACE,
                   help="after a start, remove no route until BGP is complete or this many "
                        f"seconds passed (default {DEFAULT_STARTUP_GRACE:g})")


def make_agent(ctx: NodeContext) -> Agent | None:
    args = ctx.args
    if getattr(args, "no_routing", False):
        return None
    speaker: Speaker | None = None
    if not getattr(args, "no_bgp", False):
        from routing.bgp.speaker import ExaBGPSpeaker

        run_dir = getattr(args, "bgp_run_dir", None) or str(
            Path(getattr(args, "socket", "/var/run/tortie/cni.sock")).parent / "bgp")
        speaker = ExaBGPSpeaker(run_dir, getattr(args, "exabgp", None))
    return RoutingAgent(ctx, speaker, bgp_port=getattr(args, "bgp_port", None),
                        hold_time=getattr(args, "bgp_hold_time", DEFAULT_HOLD_TIME),
                        graceful_restart=getattr(args, "bgp_graceful_restart", None),
                        startup_grace=getattr(args, "routing_startup_grace",
                                              DEFAULT_STARTUP_GRACE))


class RoutingAgent:
    name = "routing"

    def __init__(self, ctx: NodeContext, speaker: Speaker | None, *,
                 bgp_port: int | None = None, hold_time: int = DEFAULT_HOLD_TIME,
                 graceful_restart: int | None = None,
                 startup_grace: float = DEFAULT_STARTUP_GRACE,
                 netns: str | None = None) -> None:
        self.ctx = ctx
        self.node = ctx.node
        self.speaker = speaker
        self.bgp_port = bgp_port
        self.hold_time = hold_time
        self.graceful_restart = graceful_restart
        self.startup_grace = startup_grace
        self.ready = asyncio.Event()
        self.heartbeat = Heartbeat()
        self.kernel = KernelRoutes(netns)
        self.vxlan = VXLANDevice(netns)
        self.vxlan6 = VXLANDevice(netns, version=6)
        self.ipip = IPIPDevice(netns)
        self.nat = OutgoingNAT(netns)
        self.nat6 = OutgoingNAT(netns, version=6)
        self.ipam = IPAM(ctx.store, self.node)
        self.pools: dict[str, IPPool] = {}
        self.nodes: dict[str, desired.NodeInfo] = {}
        self.node_models: dict[str, Node] = {}
        self.blocks: dict[str, Block] = {}
        self.configs: dict[str, BGPConfiguration] = {}
        # IPPool has no unsupported field: pools are not checked
        self._ignored = IgnoredFieldLog("routing", frozenset({"Node", "BGPConfiguration",
                                                              "BGPPeer"}))
        self.peers: dict[str, BGPPeer] = {}
        self.filters: dict[str, BGPFilter] = {}
        self.felix: dict[str, FelixConfiguration] = {}
        self.services = ServiceIndex()  # Services and EndpointSlices (service advertisement)
        self.secrets: dict[str, dict[str, str]] = {}   # Secret name -> key -> password
        self._missing: dict[MissingPassword, str] = {}  # held-back peering -> why
        self.netns = netns
        self._md5_seen: int | None = None
        self.learnt: dict[str, LearnedRoute] = {}
        #: every prefix the agent watches (the one place naming them; the syncer watches
        #: these) -> the kind of change a key under it is (see :meth:`_mark`) and the handler
        #: :meth:`_on_update` hands it to
        self._watches: dict[str, tuple[str, _Handler]] = {
            resource_prefix("ippools"): ("datastore", self._on_pool),
            resource_prefix(_NODE.plural): ("datastore", self._on_node),
            resource_prefix("bgpconfigurations"): ("datastore", self._on_bgp_config),
            resource_prefix("bgppeers"): ("datastore", self._on_bgp_peer),
            resource_prefix("bgpfilters"): ("datastore", self._on_bgp_filter),
            resource_prefix("felixconfigurations"): ("datastore", self._on_felix_config),
            BGP_SECRETS: ("datastore", self._on_bgp_secret),
            resource_prefix("k8sservices"): ("service", self._on_service),
            resource_prefix("k8sendpointslices"): ("service", self._on_endpoint_slice),
            block_watch_prefix(): ("block", self._on_block),
        }
        self.syncer = Syncer(ctx.store, tuple(self._watches), self._on_update, self._on_synced,
                             name="routing")
        self._dirty = asyncio.Event()
        self._started_at = time.monotonic()
        self._learnt_at = 0.0
        self._synced_at = 0.0  # monotonic end of the last successful sync
        self._speaker_started = False
        self._settings: BGPSettings | None = None      # what the speaker runs with
        self._bgp_wanted: BGPSettings | None = None    # bgp_settings() when last computed
        self._settings_stale = True  # a document BGP settings come from changed since
        self._announced: dict[str, str] | None = None
        self._complete = False
        self._adopted = AdoptedRoutes()
        # the quick path's starting point (see _reconcile_routes): routes of ours in the
        # kernel and this node as the last full sync left them; None: run a full sync
        self._programmed: dict[str, desired.Route] | None = None
        self._me_synced: desired.NodeInfo | None = None
        self._held: frozenset[str] = frozenset()
        self._events: dict[str, float] = {}  # kind -> unix time of its first unsynced event
        self._ipip_warned = False
        self.last: desired.Desired | None = None
        self.last_sync: SyncResult | None = None
        self.last_error = ""
        m = ctx.metrics
        self.m_routes = Gauge("tortie_routing_routes",
                              f"Kernel routes of protocol {PROTO} the agent wants, by kind",
                              ["kind"], registry=m)
        self.m_announced = Gauge("tortie_routing_announced_prefixes",
                                 "Prefixes this node announces over BGP", registry=m)
        self.m_learnt = Gauge("tortie_routing_learnt_prefixes",
                              "Best routes learnt from BGP peers", registry=m)
        self.m_changes = Counter("tortie_routing_route_changes_total",
                                 "Kernel route changes made", ["op"], registry=m)
        self.m_failures = Counter("tortie_routing_failures_total",
                                  "Failures (bad documents, rejected routes, errors)",
                                  ["what"], registry=m)
        self.m_sync = Histogram("tortie_routing_sync_seconds",
                                "Time to compute and program one routing sync",
                                buckets=DEFAULT_BUCKETS, registry=m)
        self.m_missing_password = Gauge(
            "tortie_routing_bgp_password_missing",
            "1 for each BGP peering held back (no session) because its password Secret or "
            "key is missing or unusable", ["peer", "secret", "key"], registry=m)
        self.m_md5_failures = Gauge(
            "tortie_routing_tcp_md5_failures",
            "TCP segments this node's network namespace dropped for a wrong, missing or "
            "unexpected TCP-MD5 signature (kernel TcpExt " + "/".join(MD5_COUNTERS) + "): "
            "a BGP password that differs from the peer's", registry=m)
        self.m_md5_failures.set_function(self.md5_failures)
        if speaker is not None:
            speaker.on_routes(self._on_routes)

    # --- datastore ------------------------------------------------------------------------

    def _on_update(self, key: str, value: dict[str, Any] | None) -> None:
        watched = self._watched_under(key)
        if watched is None:  # the syncer hands only watched keys: count it, never fail
            self.m_failures.labels(what="unknown_key").inc()
            log.debug("ignoring a key routing does not watch", extra={"fields": {"key": key}})
            return
        event, handler = watched
        try:
            relevant = handler(key, value)
        except Exception as e:  # one bad document never stops the others
            self.m_failures.labels(what="document").inc()
            log.warning("ignoring a document routing cannot use",
                        extra={"fields": {"key": key, "error": str(e)}})
            return
        if not relevant:
            return  # nothing this node routes or announces changed
        if event not in ("block", "service"):
            self._settings_stale = True  # BGP settings come from these documents
        self._mark(event)

    def _watched_under(self, key: str) -> tuple[str, _Handler] | None:
        """The event kind and handler of the watched prefix ``key`` is under (None: none)."""
        for prefix, watched in self._watches.items():
            if key.startswith(prefix):
                return watched
        return None

    # --- the handlers of self._watches (see _Handler) ---

    def _on_block(self, key: str, value: dict[str, Any] | None) -> bool:
        old = self.blocks.get(key)
        new = _mirror(self.blocks, key, value, lambda doc: parse_watched_block(key, doc))
        return desired.block_view(old, self.node) != desired.block_view(new, self.node)

    def _on_pool(self, key: str, value: dict[str, Any] | None) -> bool:
        _mirror(self.pools, _name(key), value, desired.parse_pool)
        return True

    def _on_node(self, key: str, value: dict[str, Any] | None) -> bool:
        name = _name(key)
        if value is None:
            self.nodes.pop(name, None)
            self.node_models.pop(name, None)
        else:
            model = Node.from_dict(value)
            self.nodes[name] = desired.NodeInfo.from_node(model)
            self.node_models[name] = model
        self._ignored.update(key, self.node_models.get(name))
        return True

    def _on_bgp_config(self, key: str, value: dict[str, Any] | None) -> bool:
        self._ignored.update(key, _mirror(self.configs, _name(key), value,
                                          BGPConfiguration.from_dict))
        return True

    def _on_bgp_peer(self, key: str, value: dict[str, Any] | None) -> bool:
        self._ignored.update(key, _mirror(self.peers, _name(key), value, BGPPeer.from_dict))
        return True

    def _on_bgp_filter(self, key: str, value: dict[str, Any] | None) -> bool:
        _mirror(self.filters, _name(key), value, BGPFilter.from_dict)
        return True

    def _on_felix_config(self, key: str, value: dict[str, Any] | None) -> bool:
        _mirror(self.felix, _name(key), value, FelixConfiguration.from_dict)
        return True

    def _on_bgp_secret(self, key: str, value: dict[str, Any] | None) -> bool:
        _mirror(self.secrets, bgp_secrets.secret_name(key), value, bgp_secrets.parse_document)
        return True

    def _on_service(self, key: str, value: dict[str, Any] | None) -> bool:
        name = ServiceIndex.name_of(key)
        view = parse_service(value) if value is not None else None
        return self._services_changed([name], lambda: self.services.put_service(name, view))

    def _on_endpoint_slice(self, key: str, value: dict[str, Any] | None) -> bool:
        name = ServiceIndex.name_of(key)
        view = parse_slice(value) if value is not None else None
        touched = [self.services.service_of_slice(name), view.service if view else None]
        return self._services_changed(touched, lambda: self.services.put_slice(name, view))

    def _services_changed(self, names: list[str | None], update: Callable[[], None]) -> bool:
        """Apply ``update`` to the service index; True when it changes what this node
        announces for the Services ``names``."""
        ranges = self._service_ranges()
        me = self._k8s_node_name()
        before = self.services.prefixes(me, ranges, names)
        update()
        return self.services.prefixes(me, ranges, names) != before

    def _service_ranges(self) -> ServiceRanges:
        return ServiceRanges.from_config(self.configs.get(GLOBAL_BGP_CONFIG_NAME))

    def _k8s_node_name(self) -> str:
        """This node's name in Kubernetes (EndpointSlices' ``nodeName``): its Node's ``k8s``
        orchRef, else the node name (as Calico's CALICO_K8S_NODE_REF, else NODENAME)."""
        model = self.node_models.get(self.node)
        for ref in (model.spec.orchRefs or []) if model is not None else []:
            if ref.orchestrator == "k8s" and ref.nodeName:
                return ref.nodeName
        return self.node

    def _advertisement(self) -> Advertisement:
        return advertisement(self._k8s_node_name(), self._service_ranges(), self.services)

    def _on_synced(self) -> None:
        self._settings_stale = True
        self._mark("datastore")

    def _on_routes(self, routes: dict[str, LearnedRoute]) -> None:
        self.learnt = dict(routes)
        self._learnt_at = time.monotonic()
        self._mark("bgp")

    def _mark(self, kind: str) -> None:
        """A change to sync: wake the loop, and note when the first unsynced change of its
        kind came."""
        self._events.setdefault(kind, time.time())
        self._dirty.set()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        syncer = asyncio.create_task(self.syncer.run(), name="routing-syncer")
        try:
            while not self.syncer.synced.is_set():  # etcd may be away: beat meanwhile
                self.heartbeat.beat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.syncer.synced.wait(), HEARTBEAT_INTERVAL)
            backoff = Backoff()
            resync_at = time.monotonic() + RESYNC_INTERVAL
            while True:
                self.heartbeat.beat()
                try:
                    async with asyncio.timeout(HEARTBEAT_INTERVAL):
                        await self._dirty.wait()
                except TimeoutError:
                    if time.monotonic() < resync_at:
                        continue  # idle: the beat says the loop is alive
                resync_at = time.monotonic() + RESYNC_INTERVAL
                quiet = time.monotonic() - self._synced_at >= DEBOUNCE
                await asyncio.sleep(0 if quiet else DEBOUNCE)  # 0: this turn's events too
                self._dirty.clear()
                events, self._events = self._events, {}
                try:
                    await self.reconcile(events)
                    self._synced_at = time.monotonic()
                    self.last_error = ""
                    backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.last_error = str(e) or type(e).__name__
                    self.m_failures.labels(what="sync").inc()
                    log.exception("routing sync failed; retrying",
                                  extra={"fields": {"retry_s": f"{backoff.delay:g}"}})
                    await asyncio.sleep(backoff.next())
                    self._dirty.set()
                if not self._complete:  # re-check the startup hold-off soon
                    asyncio.get_running_loop().call_later(SETTLE, self._dirty.set)
        finally:
            await cancel_and_wait(syncer)

    def _static_routes(self) -> dict[str, str]:
        """Routes to BGP peers that BGPPeer ``reachableBy`` pins (peer/32 -> gateway)."""
        return reachable_routes(self.node, self.node_models.values(), self.peers.values())

    def _me(self) -> desired.NodeInfo | None:
        me = self.nodes.get(self.node)
        return me if me is not None and me.address else None

    def _blocks(self) -> list[Block]:
        return list(self.blocks.values())

    async def reconcile(self, events: dict[str, float] | None = None) -> None:
        """One sync; ``events``: the kinds of change it handles (block, bgp, datastore), each
        with the unix time its first change came.  Only BGP news (learnt routes changed):
        the quick path, :meth:`_reconcile_routes`; anything else: everything."""
        if events and set(events) <= {"bgp"} and await self._reconcile_routes(events):
            return
        started, started_wall = time.monotonic(), time.time()
        me = self._me()
        if me is None:
            log.info("waiting for this node's address in its Node resource",
                     extra={"fields": {"node": self.node}})
            return
        pools = list(self.pools.values())
        errors: list[Exception] = []  # a failing step never keeps the others from running
        try:
            me = await self._tunnel_addresses(me, pools)
        except (DatastoreError, IPAMError) as e:
            errors.append(e)
        wanted = desired.compute(me, self.nodes, pools, self._blocks(), self.learnt,
                                 self._static_routes(), self._advertisement())
        for why in wanted.skipped:
            log.debug("route skipped", extra={"fields": {"why": why}})
        t_computed = time.monotonic()
        announced_before = self._announced
        try:
            await self._bgp(me, wanted)
        except Exception as e:
            self.m_failures.labels(what="bgp").inc()
            errors.append(e)
        t_bgp = time.monotonic()
        await self._tunnels(me, wanted)
        complete = self._bgp_complete()
        if self._adopted.found is None:  # the first sync: what the previous run left
            self._adopted.adopt(await asyncio.to_thread(self.kernel.routes))
        hold = self._adopted.hold(wanted.routes, complete)
        t_kernel = time.monotonic()
        res = await asyncio.to_thread(self.kernel.sync, wanted.routes, hold=hold)
        t_done = time.monotonic()
        # what the quick path starts from: the routes of ours now in the kernel, and the
        # node as this sync saw it (its tunnel addresses); not after an error
        self._programmed = None if errors else {
            d: r for d, r in wanted.routes.items()
            if d not in res.failed and d not in res.conflicts}
        self._me_synced = None if errors else me
        self._done(events, wanted, res, announced_before, complete, started, started_wall,
                   (t_computed, t_bgp, t_kernel, t_done))
        for version, nat in ((4, self.nat), (6, self.nat6)):
            masq, every = desired.masquerade_sets(pools, version)
            keep = desired.never_masqueraded(self.node_models.values(), self.peers.values(),
                                             version)
            try:
                if await nat.sync(masq, every, keep):
                    log.info("outgoing NAT updated", extra={"fields": {
                        "ip_version": version,
                        "masquerade": ",".join(masq) or "-", "pools": ",".join(every) or "-",
                        "never_to": ",".join(keep) or "-"}})
            except NATError as e:
                self.m_failures.labels(what="nat").inc()
                log.warning("cannot program outgoing NAT", extra={"fields": {
                    "ip_version": version, "error": str(e)}})
        if not self.ready.is_set():
            self.ready.set()
            log.info("routing programmed", extra={"fields": {
                "routes": len(wanted.routes), "announced": len(wanted.announce)}})
        if errors:  # the loop retries with back-off
            raise errors[0]

    async def _reconcile_routes(self, events: dict[str, float]) -> bool:
        """The quick path for BGP news: only the learnt routes changed since the last sync,
        so the tunnels, NAT, BGP settings and announcements are as that sync left them, and
        the kernel gets just the route changes (:meth:`routing.kernel.KernelRoutes.apply`,
        no table dump).  False when it cannot tell (no clean sync before, the announcements
        or the start-up hold would change, the kernel was not as expected): then the full
        sync runs."""
        me, before = self._me_synced, self._programmed
        if me is None or before is None or self._me() is None:
            return False
        started, started_wall = time.monotonic(), time.time()
        pools = list(self.pools.values())
        wanted = desired.compute(me, self.nodes, pools, self._blocks(), self.learnt,
                                 self._static_routes(), self._advertisement())
        complete = self._bgp_complete()
        if wanted.announce != self._announced or complete != self._complete:
            return False
        t_computed = time.monotonic()
        hold = self._adopted.hold(wanted.routes, complete)
        res = await asyncio.to_thread(self.kernel.apply, before, wanted.routes, hold=hold)
        t_done = time.monotonic()
        if res is None:
            self._programmed = None
            return False
        self._programmed = dict(wanted.routes)
        self._done(events, wanted, res, self._announced, complete, started, started_wall,
                   (t_computed, t_computed, t_computed, t_done))
        return True

    def _done(self, events: dict[str, float] | None, wanted: desired.Desired, res: SyncResult,
              announced_before: dict[str, str] | None, complete: bool, started: float,
              started_wall: float, stamps: tuple[float, float, float, float]) -> None:
        """After a sync: log and count what changed and where the time went, metrics,
        the start-up hold's end."""
        t_computed, t_bgp, t_kernel, t_done = stamps
        self._account(res)
        self._report_held(res.held)
        ann_added = sorted(set(wanted.announce) - set(announced_before or {}))
        ann_removed = sorted(set(announced_before or {}) - set(wanted.announce))
        if res.changed or ann_added or ann_removed:
            event_at = min(events.values()) if events else None
            log.info("routing synced", extra={"fields": {
                "events": ",".join(f"{k}@{t:.3f}" for k, t in sorted(
                    (events or {}).items(), key=lambda kv: kv[1])) or "-",
                "wait_ms": f"{(started_wall - event_at) * 1000:.1f}" if event_at else "-",
                "compute_ms": f"{(t_computed - started) * 1000:.1f}",
                "bgp_ms": f"{(t_bgp - t_computed) * 1000:.1f}",
                "kernel_ms": f"{(t_done - t_kernel) * 1000:.1f}",
                "total_ms": f"{(t_done - started) * 1000:.1f}",
                "announced_at": f"{started_wall + (t_bgp - started):.3f}",
                "announce": ",".join([f"+{p}" for p in ann_added]
                                     + [f"-{p}" for p in ann_removed]) or "-",
                "routes": ",".join([f"+{_route_dst(r)}" for r in res.added + res.replaced]
                                   + [f"-{d}" for d in res.removed]) or "-"}})
        self.last, self.last_sync = wanted, res
        kinds = {"blackhole": 0, "direct": 0, "vxlan": 0, "ipip": 0}
        for r in wanted.routes.values():
            kinds[r.kind] += 1
        for k, v in kinds.items():
            self.m_routes.labels(kind=k).set(v)
        self.m_announced.set(len(wanted.announce))
        self.m_learnt.set(len(self.learnt))
        self.m_sync.observe(time.monotonic() - started)
        if complete and not self._complete:
            waiting = self._waiting_for()
            log.info("routing complete: unwanted routes are removed from now on",
                     extra={"fields": {"after_s": f"{self._age():.1f}",
                                       "by": "grace" if waiting else "bgp",
                                       "waiting_for": ",".join(waiting) or "-"}})
        self._complete = complete

    def _account(self, res: SyncResult) -> None:
        for op, items in (("add", res.added), ("replace", res.replaced),
                          ("remove", res.removed)):
            if items:
                self.m_changes.labels(op=op).inc(len(items))
                for item in items:
                    log.info(f"route {op}", extra={"fields": {"route": item}})
        for dst, err in res.failed.items():
            self.m_failures.labels(what="route").inc()
            log.warning("kernel refused a route", extra={"fields": {"dst": dst, "error": err}})
        for dst in res.conflicts:
            log.debug("route left alone: another protocol has it",
                      extra={"fields": {"dst": dst}})

    def _report_held(self, held: list[str]) -> None:
        """Say (once per change) which adopted routes stay unwanted for an incomplete view,
        and which peers the view still waits for."""
        now = frozenset(held)
        if now and now != self._held and self.speaker is not None:
            log.info("unwanted routes kept until BGP is complete", extra={"fields": {
                "routes": ",".join(sorted(now)),
                "waiting_for": ",".join(self._waiting_for()) or "-",
                "grace_left_s": f"{self.startup_grace - self._age():.1f}"}})
        self._held = now

    def _waiting_for(self) -> list[str]:
        """The peers BGP completeness still waits for: ``address(state[, no End-of-RIB])``."""
        return [f"{s.address}({s.state}{'' if s.synced else ', no End-of-RIB'})"
                for s in (self.speaker.status() if self.speaker is not None else ())
                if not (s.state == "Established" and s.synced)]

    def _age(self) -> float:
        return time.monotonic() - self._started_at

    def _bgp_complete(self) -> bool:
        """Whether the routes BGP learnt are complete enough to remove what is not in them."""
        if self._complete:
            return True
        if self.speaker is None:
            return True
        if time.monotonic() - self._started_at >= self.startup_grace:
            return True
        if not self._speaker_started:
            return False
        # every session up and its End-of-RIB in: what the peers hold is all we learn
        return all(s.state == "Established" and s.synced for s in self.speaker.status())

    # --- BGP ------------------------------------------------------------------------------

    def bgp_settings(self) -> BGPSettings | None:
        """This node's BGP settings (routing/bgp/peers.py), with the flags' overrides."""
        res = compute_settings(self.node, self.node_models.values(), self.configs,
                               self.peers.values(), secrets=self._secret,
                               hold_time=self.hold_time, filters=self.filters)
        self._report_missing(res.missing_passwords)
        if res.settings is None:
            log.info("no BGP for this node", extra={"fields": {"reason": res.reason}})
            return None
        settings = res.settings
        if self.bgp_port:
            settings = dataclasses.replace(settings, listen_port=self.bgp_port)
        if self.graceful_restart is not None:
            settings = dataclasses.replace(settings, graceful_restart=self.graceful_restart)
        return settings

    def md5_failures(self) -> int:
        """:func:`tcp_md5_failures` of the namespace BGP runs in (ExaBGP's, else ours)."""
        pid = getattr(self.speaker, "pid", None)
        if pid:
            path = f"/proc/{pid}/net/netstat"
        elif self.netns is None:
            path = "/proc/self/net/netstat"
        else:
            return self._md5_seen or 0
        try:
            return tcp_md5_failures(Path(path).read_text())
        except (OSError, ValueError):
            return self._md5_seen or 0

    def _check_md5(self) -> None:
        """Say which sessions a growing count of TCP-MD5 drops points at: the configured
        peers with a password that are not Established."""
        now = self.md5_failures()
        before, self._md5_seen = self._md5_seen, now
        grown = now - (now if before is None else before)
        if grown <= 0 or self.speaker is None or self._settings is None:
            return
        with_password = {n.address: n for n in self._settings.neighbours if n.password}
        down = sorted(p.address for p in self.speaker.status()
                      if p.address in with_password and p.state != "Established")
        if down:
            self.m_failures.labels(what="bgp_md5").inc()
            log.warning("TCP-MD5 signatures rejected by the kernel: a BGP password differs "
                        "from the peer's", extra={"fields": {
                            "node": self.node, "segments": grown, "peers": ",".join(
                                f"{a}({with_password[a].name or with_password[a].kind})"
                                for a in down)}})

    def _secret(self, name: str, key: str) -> str | None:
        return self.secrets.get(name, {}).get(key)

    def _report_missing(self, missing: list[MissingPassword]) -> None:
        """Log each peering held back for its password once (and when it is released), and
        keep ``tortie_routing_bgp_password_missing`` equal to the set."""
        now: dict[MissingPassword, str] = {}
        for m in missing:
            why = m.problem
            if why == "not found":
                why = ("key not in the secret" if m.secret in self.secrets else
                       "secret not found (absent, not in tortie-node's namespace, or not "
                       "copied by tortie-kube-controllers)")
            now[m] = why
        for m, why in now.items():
            if self._missing.get(m) != why:
                self.m_failures.labels(what="bgp_password").inc()
                log.warning("BGP peering held back: its password is missing; no session is "
                            "made without it", extra={"fields": {
                                "node": self.node, "peer": m.peer, "secret": m.secret,
                                "key": m.key, "problem": why}})
            self.m_missing_password.labels(peer=m.peer, secret=m.secret, key=m.key).set(1)
        for m in set(self._missing) - set(now):
            log.info("BGP password found; peering configured", extra={"fields": {
                "node": self.node, "peer": m.peer, "secret": m.secret, "key": m.key}})
            with contextlib.suppress(KeyError):
                self.m_missing_password.remove(m.peer, m.secret, m.key)
        self._missing = now

    async def _bgp(self, me: desired.NodeInfo, wanted: desired.Desired) -> None:
        if self.speaker is None:
            return
        try:
            if self._settings_stale or not self._speaker_started:
                # cleared before the awaits below: a document changing meanwhile marks it
                # again
                self._settings_stale = False
                self._bgp_wanted = self.bgp_settings()
            settings = self._bgp_wanted  # else: only blocks or routes changed since
            if settings is None:
                return
            await self._apply_bgp(settings, wanted)
        except BaseException:
            self._settings_stale = True  # not applied: compute and apply them again
            raise

    async def _apply_bgp(self, settings: BGPSettings, wanted: desired.Desired) -> None:
        assert self.speaker is not None
        if not self._speaker_started:
            await self.speaker.start(settings)
            self._speaker_started = True
            self._settings = settings
            log.info("BGP speaker started", extra={"fields": {
                "router_id": settings.router_id, "asn": settings.asn,
                "neighbours": len(settings.neighbours), "port": settings.listen_port}})
        elif settings != self._settings:
            try:
                await self.speaker.configure(settings)
            except Exception as e:
                # a half-applied reload: start the speaker afresh with the whole settings
                # (graceful: the peers keep our routes meanwhile)
                self.m_failures.labels(what="bgp").inc()
                log.warning("BGP reconfiguration failed; restarting the speaker",
                            extra={"fields": {"error": str(e)}})
                self._speaker_started = False
                await self.speaker.close(graceful=True)
                await self.speaker.start(settings)
                self._speaker_started = True
                self._announced = None
            self._settings = settings
            log.info("BGP settings changed", extra={"fields": {
                "neighbours": ",".join(n.address for n in settings.neighbours) or "-"}})
        if wanted.announce != self._announced:
            await self.speaker.announce(dict(wanted.announce))
            self._announced = dict(wanted.announce)
        self._check_md5()

    # --- tunnels --------------------------------------------------------------------------

    async def _tunnel_addresses(self, me: desired.NodeInfo,
                                pools: list[IPPool]) -> desired.NodeInfo:
        """This node's VXLAN (address + MAC, IPv4 and IPv6) and IPIP tunnel addresses:
        allocated from its IPAM block while a pool of that family uses that encapsulation
        (the IPv6 VTEP only while the node has an IPv6 address), released when none does,
        and recorded in its Node resource (``spec.ipv4VXLANTunnelAddr`` /
        ``spec.vxlanTunnelMACAddr``, ``spec.ipv6VXLANTunnelAddr`` /
        ``spec.vxlanTunnelMACAddrV6``, ``spec.bgp.ipv4IPIPTunnelAddr``), as Calico does."""
        usable = [p for p in pools if not p.spec.disabled]
        vxlan_pools = [p for p in usable if p.spec.vxlanMode != "Never"
                       and p.network.version == 4]
        vxlan6_pools = [p for p in usable if p.spec.vxlanMode != "Never"
                        and p.network.version == 6 and me.address6]
        ipip_pools = [p for p in usable if p.spec.ipipMode != "Never" and p.network.version == 4]
        vxlan = await self._tunnel_address(vtep_handle(self.node), me.vxlan_address,
                                           vxlan_pools)
        vxlan6 = await self._tunnel_address(vtep_handle(self.node, 6), me.vxlan_address6,
                                            vxlan6_pools)
        ipip = await self._tunnel_address(ipip_handle(self.node), me.ipip_address, ipip_pools)
        mac = (me.vxlan_mac or desired.vtep_mac(self.node)) if vxlan else None
        mac6 = (me.vxlan_mac6 or desired.vtep_mac(self.node, 6)) if vxlan6 else None
        now = TunnelAddresses(vxlan, mac, vxlan6, mac6, ipip)
        if now != TunnelAddresses(me.vxlan_address, me.vxlan_mac, me.vxlan_address6,
                                  me.vxlan_mac6, me.ipip_address):
            await self._record_tunnels(now)
        return dataclasses.replace(me, vxlan_address=vxlan, vxlan_mac=mac,
                                   vxlan_address6=vxlan6, vxlan_mac6=mac6, ipip_address=ipip)

    async def _tunnel_address(self, handle: str, recorded: str | None,
                              pools: list[IPPool]) -> str | None:
        held = [ip for b in self._blocks() for ip in b.ips_for_handle(handle)]
        if not pools:
            if held:
                await self.ipam.release_by_handle(handle)
                log.info("released a tunnel address: no pool needs it",
                         extra={"fields": {"handle": handle, "address": ",".join(held)}})
            return None
        if not held:  # the cache may lag behind our own allocation: ask etcd itself
            held = await self.ipam.ips_by_handle(handle)
        if recorded in held:
            return recorded
        if held:
            return held[0]
        got = await self.ipam.auto_assign(handle, {"node": self.node}, pools, 1)
        log.info("allocated a tunnel address",
                 extra={"fields": {"address": got[0], "handle": handle}})
        return got[0]

    async def _record_tunnels(self, t: TunnelAddresses) -> None:
        for _ in range(5):
            try:
                node = await self.ctx.resources.get(_NODE, self.node)
            except NotFound:
                return
            doc = node.dump()
            spec = doc.setdefault("spec", {})
            for key, value in (("ipv4VXLANTunnelAddr", t.vxlan), ("vxlanTunnelMACAddr", t.mac),
                               ("ipv6VXLANTunnelAddr", t.vxlan6),
                               ("vxlanTunnelMACAddrV6", t.mac6)):
                if value:
                    spec[key] = value
                else:
                    spec.pop(key, None)
            bgp = spec.get("bgp")
            if t.ipip:
                spec.setdefault("bgp", {})["ipv4IPIPTunnelAddr"] = t.ipip
            elif isinstance(bgp, dict):
                bgp.pop("ipv4IPIPTunnelAddr", None)
            try:
                await self.ctx.resources.replace(_NODE, type(node).from_dict(doc))
            except (ResourceConflict, NotFound):
                continue
            log.info("recorded the tunnel addresses in the Node resource", extra={"fields": {
                "vxlan": t.vxlan or "-", "mac": t.mac or "-", "vxlan_v6": t.vxlan6 or "-",
                "mac_v6": t.mac6 or "-", "ipip": t.ipip or "-"}})
            return
        raise DatastoreError(f"Node {self.node} is being modified concurrently")

    def mtu_overrides(self) -> MTUOverrides:
        """The tunnel MTUs FelixConfiguration sets for this node (``vxlanMTU``,
        ``vxlanMTUV6``, ``ipipMTU``)."""
        return felix_overrides(self.felix, self.node)

    def vxlan_settings(self) -> VXLANSettings:
        """The VXLAN port and VNI FelixConfiguration sets for this node (``vxlanPort``,
        ``vxlanVNI``; both devices use them)."""
        return vxlan_settings(self.felix, self.node)

    async def _vxlan(self, device: VXLANDevice, needed: bool, cfg: VXLANConfig | None,
                     peers: dict[str, desired.VXLANPeer]) -> None:
        """One VXLAN device (IPv4 or IPv6): made and kept right while a pool of its family
        uses VXLAN and this node has its addresses (``cfg``), removed when no pool does."""
        if needed and cfg is not None:
            changes = await asyncio.to_thread(device.ensure, cfg)
            changes += await asyncio.to_thread(device.sync_peers, peers)
            if changes:
                log.info("vxlan device updated", extra={"fields": {
                    "device": device.name, "changes": "; ".join(changes)}})
        elif not needed and await asyncio.to_thread(device.exists):
            await asyncio.to_thread(device.remove)
            log.info("vxlan device removed: no pool uses VXLAN", extra={"fields": {
                "device": device.name, "ip_version": device.version}})

    async def _tunnels(self, me: desired.NodeInfo, wanted: desired.Desired) -> None:
        mtus, vx = self.mtu_overrides(), self.vxlan_settings()
        cfg = cfg6 = None
        if me.vxlan_address and me.vxlan_mac and me.address:
            cfg = VXLANConfig(local=me.address, address=me.vxlan_address, mac=me.vxlan_mac,
                              mtu=mtus.vxlan, vni=vx.vni, port=vx.port)
        if me.vxlan_address6 and me.vxlan_mac6 and me.address6:
            cfg6 = VXLANConfig(local=me.address6, address=me.vxlan_address6,
                               mac=me.vxlan_mac6, mtu=mtus.vxlan6, vni=vx.vni, port=vx.port)
        await self._vxlan(self.vxlan, wanted.vxlan_needed, cfg, wanted.vxlan_peers)
        await self._vxlan(self.vxlan6, wanted.vxlan6_needed, cfg6, wanted.vxlan_peers6)
        if wanted.ipip_needed:
            try:
                changes = await asyncio.to_thread(self.ipip.ensure, me.ipip_address,
                                                  me.address, mtus.ipip)
                if changes:
                    log.info("tunl0 updated", extra={"fields": {"changes": "; ".join(changes)}})
            except IPIPUnavailable as e:
                self.m_failures.labels(what="ipip").inc()
                if not self._ipip_warned:
                    self._ipip_warned = True
                    log.warning("a pool uses IPIP but this kernel cannot",
                                extra={"fields": {"error": str(e)}})

    # --- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the kernel as it is; stop the speaker gracefully (peers keep our routes)."""
        if self.speaker is not None and self._speaker_started:
            await self.speaker.close(graceful=True)
            self._speaker_started = False

    def health(self) -> dict[str, Any]:
        wanted, res = self.last, self.last_sync
        out: dict[str, Any] = {
            "ready": self.ready.is_set(),
            "complete": self._complete,
            "protocol": PROTO,
            "announced": len(wanted.announce) if wanted else 0,
            "learnt": len(self.learnt),
            "routes": ({k: sum(1 for r in wanted.routes.values() if r.kind == k)
                        for k in ("blackhole", "direct", "vxlan", "ipip")} if wanted else {}),
            "route_failures": dict(res.failed) if res else {},
            "error": self.last_error,
            "families": {f"ipv{v}": _family_counts(wanted, self.learnt, v) for v in (4, 6)},
        }
        if self._missing:
            out["bgp_password_missing"] = [
                {"peer": m.peer, "secret": m.secret, "key": m.key, "problem": why}
                for m, why in sorted(self._missing.items(), key=lambda kv: kv[0].peer)]
        if self.speaker is not None:
            out["peers"] = [dataclasses.asdict(p) for p in self.speaker.status()]
        return out
