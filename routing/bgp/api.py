"""The contract between the routing agent (routing/agent.py) and the BGP speaker
(routing/bgp/speaker.py, which runs ExaBGP).

The agent owns the datastore view; it computes what to announce and who to peer with and
hands both to the speaker.  The speaker owns the ExaBGP child process; it reports what the
peers announce.  Neither touches the other's state; the kernel FIB belongs to the agent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from routing.bgp.filters import FilterRule

PeerKind = Literal["mesh", "global", "node", "route-reflector-client"]


@dataclass(frozen=True)
class Neighbour:
    """One BGP session this node should have."""

    address: str                 # peer IP
    asn: int                     # peer AS
    kind: PeerKind = "mesh"      # where it came from (node mesh, a BGPPeer, ...)
    name: str = ""               # node name (mesh) or BGPPeer name
    password: str | None = None  # TCP-MD5 secret, resolved already
    rr_client: bool = False      # we are the route reflector for this peer
    keep_next_hop: bool = False  # BGPPeer keepOriginalNextHop
    ttl_security: int | None = None
    passive: bool = False        # wait for the peer to connect (Calico's one-way node mesh)
    port: int | None = None      # the peer's BGP port when not 179 (BGPPeer peerIP "ip:port")
    local_asn: int | None = None  # BGPPeer localASNumber: our AS on this session
    hold_time: int | None = None  # from BGPPeer keepaliveTime (3 x keepalive); None: global
    restart_time: int | None = None  # BGPPeer maxRestartTime; None: the global GR time
    source_address: bool = True  # BGPPeer sourceAddress UseNodeIP (False: None, kernel picks)
    allowed_local_as: int = 0    # BGPPeer numAllowedLocalASNumbers
    next_hop_self: bool = False  # BGPPeer nextHopMode Self: reflected routes get our address
    export_rules: tuple[FilterRule, ...] = ()  # the BGPFilters of BGPPeer filters, in order
    import_rules: tuple[FilterRule, ...] = ()

    @property
    def version(self) -> int:
        """The session's IP version: 6 for a peer at an IPv6 address (a session over IPv6,
        from this node's IPv6 address, carrying IPv6 routes only, as Calico's)."""
        return 6 if ":" in self.address else 4


@dataclass(frozen=True)
class BGPSettings:
    """The speaker's whole configuration; a new value replaces the old one."""

    router_id: str                # this node's IPv4 address (no prefix)
    local_address: str            # address the sessions use (usually router_id)
    asn: int                      # this node's AS
    neighbours: tuple[Neighbour, ...] = ()
    listen_port: int = 179
    hold_time: int = 90           # seconds
    graceful_restart: int = 120   # restart time advertised; 0 turns graceful restart off
    cluster_id: str | None = None  # set when this node is a route reflector
    #: BGPConfiguration prefixAdvertisements, names resolved: (cidr, community values)
    prefix_communities: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ipv6: bool = False            # also carry IPv6 unicast (MP-BGP) on every IPv4 session
    #: this node's IPv6 address (no prefix): the local end of sessions with IPv6 peers
    local_address6: str | None = None


@dataclass(frozen=True)
class LearnedRoute:
    """A prefix a peer announces, with the next hop it gave."""

    prefix: str                 # "10.65.1.0/26"
    next_hop: str               # "192.0.2.12"
    peer: str                   # the neighbour address it came from
    as_path: tuple[int, ...] = ()
    #: every next hop of the equally good paths (ECMP), when there are several; sorted
    next_hops: tuple[str, ...] = ()

    @property
    def gateways(self) -> tuple[str, ...]:
        """The next hops to install: all equal-cost ones, else the one."""
        return self.next_hops or (self.next_hop,)


@dataclass(frozen=True)
class PeerStatus:
    """What ``tortie node status`` shows for one session."""

    address: str
    kind: PeerKind
    state: str                  # "Established", "Connect", "Active", "Idle", ...
    since: float                # unix time of the last state change
    received: int = 0           # prefixes received from it now
    sent: int = 0               # prefixes announced to it now
    info: str = ""              # last error, if any
    synced: bool = False        # End-of-RIB received since the session came up


RoutesChanged = Callable[[dict[str, LearnedRoute]], None]


class Speaker(Protocol):
    """What the routing agent needs from the BGP speaker."""

    async def start(self, settings: BGPSettings) -> None:
        """Start ExaBGP with these settings (returns once its API answers)."""

    async def configure(self, settings: BGPSettings) -> None:
        """Apply new settings: sessions of unchanged neighbours stay up."""

    async def announce(self, prefixes: dict[str, str]) -> None:
        """The full set of prefixes to announce now (prefix -> next hop); the speaker
        announces what is new and withdraws what is gone."""

    def on_routes(self, callback: RoutesChanged) -> None:
        """Call ``callback`` with the complete best-route table (prefix -> route) after
        every change, including routes dropped when a peer goes down (after the graceful
        restart time, when the peer supports it)."""

    def status(self) -> list[PeerStatus]:
        """One entry per configured neighbour."""

    async def close(self, graceful: bool = True) -> None:
        """Stop ExaBGP.  ``graceful``: leave the peers holding our routes as stale (the
        restart case); otherwise withdraw them."""


@dataclass
class RouteTable:
    """The learnt routes, as a speaker keeps them: per peer, then the best one per prefix."""

    by_peer: dict[str, dict[str, LearnedRoute]] = field(default_factory=dict)

    def best(self) -> dict[str, LearnedRoute]:
        """The best route per prefix (shortest AS path; the lowest peer address among equal
        ones).  When several peers offer equally short paths with different next hops,
        the route lists them all in ``next_hops`` (multipath, as BIRD's ``merge paths``)."""
        out: dict[str, LearnedRoute] = {}
        hops: dict[str, set[str]] = {}
        for peer in sorted(self.by_peer):
            for prefix, route in self.by_peer[peer].items():
                cur = out.get(prefix)
                if cur is None or len(route.as_path) < len(cur.as_path):
                    out[prefix] = route
                    hops[prefix] = {route.next_hop}
                elif len(route.as_path) == len(cur.as_path):
                    hops[prefix].add(route.next_hop)
        for prefix, nhs in hops.items():
            if len(nhs) > 1:
                out[prefix] = replace(out[prefix], next_hops=tuple(sorted(nhs, key=_ip_order)))
        return out


def _ip_order(address: str) -> tuple[int, int, str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0, address)
    return (ip.version, int(ip), address)
