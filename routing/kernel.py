"""The routing agent's kernel routes, in the calling thread's network namespace
(or in ``netns`` when given: the tests use that).

Every route the agent makes carries the routing-protocol number :data:`PROTO` (80, the
number Calico's Felix uses) in the main table; the agent reads back only routes with that
number, so routes it did not make are never changed or removed.  A desired route whose
destination already has a route of another protocol (e.g. the CNI handler's /32 to a local
pod) is left alone and reported as a conflict.

Blocking calls: run :meth:`KernelRoutes.sync` in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agentkit.netns import run_in_netns
from agentkit.rtnl import RouteMessage, Rtnl
from routing.desired import Route

log = logging.getLogger("tortie.routing")

#: The routing-protocol number of every Tortie route (``ip route show proto 80``).
PROTO = 80
TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 4
AF_INET = 2
AF_INET6 = 10
#: the metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER); IPv4: 0
IPV6_DEFAULT_METRIC = 1024


def default_metric(dst: str) -> int:
    """The metric of a route to ``dst`` the agent added (none given)."""
    return IPV6_DEFAULT_METRIC if ":" in dst else 0


@dataclass(frozen=True)
class KernelRoute:
    """A route as read back from the kernel (only the fields the agent compares)."""

    dst: str
    type: int
    gateway: str | None
    oif: int | None
    onlink: bool
    priority: int = 0
    gateways: tuple[str, ...] = ()  # a multipath route's next hops (sorted); () otherwise


def _oif_lookup(ipr: IPRoute) -> Callable[[str | None], int | None]:
    """Device name -> its index (None: no device named, or none of that name), each name
    looked up once per IPRoute session."""
    devices: dict[str, int | None] = {}

    def oif_of(name: str | None) -> int | None:
        if name is None:
            return None
        if name not in devices:
            found = ipr.link_lookup(ifname=name)
            devices[name] = int(found[0]) if found else None
        return devices[name]

    return oif_of


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0                      # already right
    conflicts: list[str] = field(default_factory=list)  # a foreign route has that dst
    failed: dict[str, str] = field(default_factory=dict)  # dst -> error
    held: list[str] = field(default_factory=list)  # unwanted, but removal was held back

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


T = TypeVar("T")


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` in the named namespace (a name under /var/run/netns, or a path), on a thread
    that joined it; in the caller's namespace when ``netns`` is None.  (pyroute2's own
    ``netns=`` forks, which a process using gRPC must not do.)"""
    if netns is None:
        return fn()
    path = netns if netns.startswith("/") else f"/var/run/netns/{netns}"
    return run_in_netns(path, fn)


def _why(e: NetlinkError) -> str:
    return os.strerror(e.code) if e.code else str(e)


class KernelRoutes:
    """Programs :class:`routing.desired.Route` values into the main table."""

    def __init__(self, netns: str | None = None, proto: int = PROTO) -> None:
        self.netns = netns
        self.proto = proto

    # --- reading --------------------------------------------------------------------------

    @staticmethod
    def _dst(r: Any) -> str:
        dst = r.get_attr("RTA_DST") or ("::" if r["family"] == AF_INET6 else "0.0.0.0")
        return f"{dst}/{r['dst_len']}"

    @staticmethod
    def _kernel_route(r: RouteMessage) -> KernelRoute:
        if r.hops:  # ECMP: the next hops are in the nexthop entries
            oifs = {index for _, index, _ in r.hops}
            return KernelRoute(
                dst=r.dst, type=r.type, gateway=None,
                oif=oifs.pop() if len(oifs) == 1 else None,
                onlink=all(flags & RTNH_F_ONLINK for flags, _, _ in r.hops),
                priority=r.priority, gateways=tuple(sorted(str(gw) for _, _, gw in r.hops)))
        return KernelRoute(dst=r.dst, type=r.type, gateway=r.gateway, oif=r.oif,
                           onlink=bool(r.flags & RTNH_F_ONLINK), priority=r.priority)

    def _read(self) -> dict[str, list[KernelRoute]]:
        """Our routes by dst, IPv4 and IPv6: a dump the kernel filters by our protocol
        number, so the /32 of every local pod is neither sent nor parsed."""
        ours: dict[str, list[KernelRoute]] = {}
        with Rtnl() as nl:
            for family in (AF_INET, AF_INET6):
                for r in nl.routes(family, TABLE_MAIN, self.proto):
                    ours.setdefault(r.dst, []).append(self._kernel_route(r))
        return ours

    def _foreign(self, lengths: Set[int]) -> set[str]:
        """Destinations of prefix length in ``lengths`` with a unicast or blackhole route of
        another protocol (read only when a desired route is not ours yet: a whole-table
        dump, of which only routes of those lengths are parsed -- not every pod's /32)."""
        with Rtnl() as nl:
            return {r.dst for family in (AF_INET, AF_INET6)
                    for r in nl.routes(family, TABLE_MAIN, dst_lens=lengths)
                    if r.protocol != self.proto and r.type in (RTN_UNICAST, RTN_BLACKHOLE)}

    def routes(self) -> dict[str, list[KernelRoute]]:
        """Our routes now, by destination."""
        return call_in_netns(self.netns, self._routes)

    def _routes(self) -> dict[str, list[KernelRoute]]:
        return self._read()

    # --- writing --------------------------------------------------------------------------

    @staticmethod
    def _matches(k: KernelRoute, want: Route, oif: int | None) -> bool:
        if k.priority != default_metric(k.dst):
            return False
        if want.kind == "blackhole":
            return k.type == RTN_BLACKHOLE
        if want.gateways:
            if k.type != RTN_UNICAST or k.gateways != tuple(sorted(want.gateways)):
                return False
        elif k.type != RTN_UNICAST or k.gateways or k.gateway != want.gateway:
            return False
        if k.onlink != want.onlink:
            return False
        return want.device is None or k.oif == oif

    @staticmethod
    def _family(dst: str) -> int:
        return AF_INET6 if ":" in dst else AF_INET

    def _args(self, want: Route, oif: int | None) -> dict[str, Any]:
        args: dict[str, Any] = {"dst": want.dst, "table": TABLE_MAIN, "proto": self.proto,
                                "family": self._family(want.dst)}
        if want.kind == "blackhole":
            args["type"] = RTN_BLACKHOLE
            return args
        args["type"] = RTN_UNICAST
        if want.gateways:  # ECMP: one nexthop entry per gateway
            hop: dict[str, Any] = {}
            if oif is not None:
                hop["oif"] = oif
            if want.onlink:
                hop["flags"] = RTNH_F_ONLINK
            args["multipath"] = [{"gateway": g, **hop} for g in want.gateways]
            return args
        args["gateway"] = want.gateway
        if oif is not None:
            args["oif"] = oif
        if want.onlink:
            args["flags"] = RTNH_F_ONLINK
        return args

    def sync(self, desired: Mapping[str, Route], *, remove: bool = True,
             hold: Set[str] = frozenset()) -> SyncResult:
        """Make our routes equal ``desired`` (dst -> route).  ``remove=False`` adds and
        fixes but removes nothing; ``hold`` names the destinations (canonical CIDRs) whose
        unwanted routes stay (a restarted agent keeps the routes it adopted until its BGP
        view is complete).  Held routes are listed in :attr:`SyncResult.held`."""
        return call_in_netns(self.netns, lambda: self._sync(desired, remove, hold))

    def _sync(self, desired: Mapping[str, Route], remove: bool,
              hold: Set[str] = frozenset()) -> SyncResult:
        res = SyncResult()
        ours = self._read()
        foreign: set[str] | None = None
        with IPRoute() as ipr:
            oif_of = _oif_lookup(ipr)
            for dst, want in desired.items():
                dst = str(ipaddress.ip_network(dst, strict=False))
                have = ours.get(dst, [])
                oif = oif_of(want.device)
                if want.device is not None and oif is None:
                    res.failed[dst] = f"device {want.device} does not exist"
                    continue
                if any(self._matches(k, want, oif) for k in have) and len(have) == 1:
                    res.kept += 1
                    continue
                if not have and foreign is None:
                    foreign = self._foreign({ipaddress.ip_network(d, strict=False).prefixlen
                                             for d in desired})
                if not have and dst in (foreign or ()):
                    res.conflicts.append(dst)
                    continue
                try:
                    for k in have:  # extra metrics / a wrong route of ours
                        if k.priority != default_metric(k.dst):
                            self._delete(ipr, k)
                    ipr.route("replace", **self._args(want, oif))
                except NetlinkError as e:
                    res.failed[dst] = _why(e)
                    continue
                (res.replaced if have else res.added).append(want.describe())
            wanted = {str(ipaddress.ip_network(d, strict=False)) for d in desired}
            for dst, have in ours.items():
                if dst in wanted:
                    continue
                if not remove or dst in hold:
                    res.held.append(dst)
                    continue
                for k in have:
                    try:
                        self._delete(ipr, k)
                    except NetlinkError as e:
                        res.failed[dst] = _why(e)
                        continue
                res.removed.append(dst)
        return res

    def apply(self, before: Mapping[str, Route], desired: Mapping[str, Route], *,
              hold: Set[str] = frozenset()) -> SyncResult | None:
        """The changes from ``before`` (what the last sync left in the kernel as ours) to
        ``desired``, without reading the table back: a route that is new is *added* (never
        over a route already there), one that changed is replaced, one that went is deleted
        (only with our protocol number).  None when the kernel was not as ``before`` says (a
        route to add exists, ours or not; a failure): then :meth:`sync` must make it right.
        This is the cheap path of a BGP update; :meth:`sync` still runs on every datastore
        change and periodically."""
        return call_in_netns(self.netns, lambda: self._apply(before, desired, hold))

    def _apply(self, before: Mapping[str, Route], desired: Mapping[str, Route],
               hold: Set[str]) -> SyncResult | None:
        res = SyncResult()
        old = {str(ipaddress.ip_network(d, strict=False)): r for d, r in before.items()}
        new = {str(ipaddress.ip_network(d, strict=False)): r for d, r in desired.items()}
        changes = [(d, r) for d, r in new.items() if old.get(d) != r]
        gone = [d for d in old if d not in new]
        if not changes and not gone:
            res.kept = len(new)
            return res
        with IPRoute() as ipr:
            oif_of = _oif_lookup(ipr)
            try:
                for dst, want in changes:
                    oif = oif_of(want.device)
                    if want.device is not None and oif is None:
                        return None
                    if dst in old:
                        ipr.route("replace", **self._args(want, oif))
                        res.replaced.append(want.describe())
                    else:
                        ipr.route("add", **self._args(want, oif))  # EEXIST: not ours alone
                        res.added.append(want.describe())
                for dst in gone:
                    if dst in hold:
                        res.held.append(dst)
                        continue
                    r = old[dst]
                    self._delete(ipr, KernelRoute(
                        dst=dst, type=RTN_BLACKHOLE if r.kind == "blackhole" else RTN_UNICAST,
                        gateway=r.gateway, oif=None, onlink=r.onlink))
                    res.removed.append(dst)
            except NetlinkError as e:
                log.debug("incremental route change refused; full sync",
                          extra={"fields": {"error": _why(e)}})
                return None
        res.kept = len(new) - len(changes)
        return res

    def _delete(self, ipr: IPRoute, k: KernelRoute) -> None:
        args: dict[str, Any] = {"dst": k.dst, "table": TABLE_MAIN, "proto": self.proto,
                                "type": k.type, "family": self._family(k.dst)}
        if k.priority:
            args["priority"] = k.priority
        try:
            ipr.route("del", **args)
        except NetlinkError as e:
            if e.code != errno.ESRCH:
                raise

    def flush(self) -> list[str]:
        """Remove every route of ours (used by tests and ``--routing-cleanup``)."""
        return self.sync({}).removed
