"""Who a node peers with, as Calico computes it (pure: resources in, BGPSettings out).

Inputs: every Node, the BGPConfigurations (``default`` for the cluster, ``node.<name>`` for
one node), every BGPPeer.  Rules (Calico's confd BGP templates and its BGPPeer docs):

* The node's AS is ``spec.bgp.asNumber`` of its Node, else the cluster's (``default``
  BGPConfiguration ``asNumber``, else 64512).  Its address is ``spec.bgp.ipv4Address``
  without the prefix length; a node without one runs no BGP.
* Node-to-node mesh (``nodeToNodeMeshEnabled``, default on): a session with every other
  node that has an IPv4 address, with the mesh password (``nodeMeshPassword``) and
  ``nodeMeshMaxRestartTime`` as the graceful restart time.  Mesh sessions are one-way as
  in Calico: we wait passively for nodes with a higher address to connect.  The mesh runs
  over IPv4 only: the nodes' IPv6 routes ride it (MP-BGP), so no second, IPv6 mesh is made
  (Calico's separate IPv6 mesh comes from BIRD 1's separate IPv6 daemon, bird6).
* IPv6 peers: a BGPPeer whose ``peerIP`` is IPv6 gets a session over IPv6 from this
  node's ``spec.bgp.ipv6Address`` (skipped, and said so, on a node without one), carrying
  IPv6 routes only, as Calico's IPv6 sessions.
* A BGPPeer applies to this node when it is global (neither ``node`` nor
  ``nodeSelector``), names this node (``node``), or its ``nodeSelector`` matches this
  node's labels.  Its peers: ``peerIP`` / ``asNumber``, or every *other* node its
  ``peerSelector`` matches (their addresses and AS numbers).
* Route reflection: a node with ``routeReflectorClusterID`` is a reflector; a peer node
  selected through a BGPPeer whose cluster ID differs from ours is our ``rr client``.
  Mesh sessions are never client sessions.
* One session per address: node-specific BGPPeers win over global ones, which win over
  the mesh; never a session with ourselves.
* Passwords (``password`` / ``nodeMeshPassword``: a ``secretKeyRef``) are looked up with a
  :data:`SecretLookup`.  One that is not found (and not ``optional``) or cannot be used holds
  its peering back: no session at all (not one without the password), its address taken all
  the same so that a lower-priority peering (the mesh) does not connect there instead; the
  result lists it in ``missing_passwords`` for the caller to report.
* Per-BGPPeer session settings: ``localASNumber`` (our AS on the session),
  ``keepaliveTime`` (ExaBGP has only a hold time: three keepalives, at least 3 s),
  ``maxRestartTime`` (the graceful-restart time advertised on the session),
  ``sourceAddress: None`` (no local address: the kernel picks the source),
  ``numAllowedLocalASNumbers`` (learnt paths may carry our AS that many times),
  ``nextHopMode: Self`` (routes reflected to the peer get this node as next hop) and
  ``filters`` (the BGPFilters' rules in order; a filter that does not exist holds the
  peering back, as a missing password does: never a session without the filter asked for).
* Communities: ``prefixAdvertisements`` of this node's ``node.<name>`` configuration, else
  of ``default``, community names resolved to their values.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.model_bgp import (
    GLOBAL_BGP_CONFIG_NAME,
    BGPConfiguration,
    BGPFilter,
    BGPPassword,
    BGPPeer,
    effective_bgp_settings,
)
from datastore.model_network import Node
from datastore.selector import SelectorError, parse
from routing.bgp.api import BGPSettings, Neighbour, PeerKind
from routing.bgp.filters import rules_of

log = logging.getLogger("tortie.bgp.peers")

DEFAULT_RESTART_TIME = 120
#: (secret name, key) -> value or None; how BGP passwords in Secrets are looked up
SecretLookup = Callable[[str, str], str | None]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """A Go duration (``5m0s``, ``90s``, ``1h``) in seconds."""
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def node_ipv4(node: Node) -> str | None:
    cidr = node.ipv4_address()
    return cidr.split("/", 1)[0] if cidr else None


def node_ipv6(node: Node) -> str | None:
    cidr = node.ipv6_address()
    return cidr.split("/", 1)[0] if cidr else None


def _labels(node: Node) -> dict[str, str]:
    return dict(node.metadata.labels or {})


@dataclass(frozen=True)
class MissingPassword:
    """A peering that needs a password which cannot be had: it is left out of the speaker's
    configuration (never a session without the password the resource asks for)."""

    peer: str        # "BGPPeer <name>" or "node mesh"
    secret: str
    key: str
    problem: str     # "not found", or why the value cannot be used


@dataclass
class PeersResult:
    """The settings for this node, or why it runs no BGP; plus resources that were skipped
    and peerings held back for a password."""

    settings: BGPSettings | None
    reason: str = ""
    skipped: list[str] = field(default_factory=list)
    missing_passwords: list[MissingPassword] = field(default_factory=list)


#: TCP_MD5SIG_MAXKEYLEN of Linux
MAX_PASSWORD_BYTES = 80


def password_problem(value: str) -> str | None:
    """Why ``value`` cannot be a TCP-MD5 password of this speaker, or None."""
    if not value:
        return "empty"
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        return f"longer than {MAX_PASSWORD_BYTES} bytes"
    if any(c in value for c in "\n\r;\"\\") or not value.isprintable():
        return "contains a character ExaBGP cannot carry (newline, ';', '\"', '\\')"
    return None


def _password(pw: BGPPassword | None, secrets: SecretLookup | None,
              where: str, missing: list[MissingPassword]) -> tuple[bool, str | None]:
    """(usable, password): a password that cannot be resolved makes the peering unusable
    unless the secret reference is ``optional``."""
    if pw is None or pw.secretKeyRef is None:
        return True, None
    ref = pw.secretKeyRef
    value = secrets(ref.name, ref.key) if secrets else None
    if value is None:
        if ref.optional:
            return True, None
        missing.append(MissingPassword(where, ref.name, ref.key, "not found"))
        return False, None
    problem = password_problem(value)
    if problem is not None:
        missing.append(MissingPassword(where, ref.name, ref.key, f"unusable: {problem}"))
        return False, None
    return True, value


def _selects_node(peer: BGPPeer, node: Node) -> bool:
    s = peer.spec
    if s.node:
        return s.node == node.name
    if s.nodeSelector:
        return parse(s.nodeSelector).evaluate(_labels(node))
    return True


def compute_settings(node_name: str, nodes: Iterable[Node],
                     configs: Mapping[str, BGPConfiguration] | Iterable[BGPConfiguration],
                     peers: Iterable[BGPPeer], *, secrets: SecretLookup | None = None,
                     hold_time: int = 90,
                     filters: Mapping[str, BGPFilter] | None = None) -> PeersResult:
    """This node's :class:`BGPSettings` from the cluster's resources (see module doc)."""
    by_name = {n.name: n for n in nodes}
    if not isinstance(configs, Mapping):
        configs = {c.name: c for c in configs}
    me = by_name.get(node_name)
    if me is None:
        return PeersResult(None, f"no Node resource named {node_name!r}")
    my_ip = node_ipv4(me)
    if my_ip is None:
        return PeersResult(None, f"Node {node_name!r} has no spec.bgp.ipv4Address")
    my_ip6 = node_ipv6(me)
    default = configs.get(GLOBAL_BGP_CONFIG_NAME)
    cluster = effective_bgp_settings(default)
    own = configs.get(f"node.{node_name}")
    listen_port = (own.spec.listenPort if own and own.spec.listenPort else cluster.listen_port)

    def asn_of(node: Node) -> int:
        if node.spec.bgp and node.spec.bgp.asNumber is not None:
            return node.spec.bgp.asNumber
        return cluster.as_number

    def cluster_id_of(node: Node) -> str | None:
        return node.spec.bgp.routeReflectorClusterID if node.spec.bgp else None

    my_cid = cluster_id_of(me)
    skipped: list[str] = []
    missing: list[MissingPassword] = []
    restart = DEFAULT_RESTART_TIME
    if default and default.spec.nodeMeshMaxRestartTime and cluster.mesh_enabled:
        try:
            restart = int(duration_seconds(default.spec.nodeMeshMaxRestartTime))
        except ValueError:
            skipped.append("BGPConfiguration default: bad nodeMeshMaxRestartTime")

    # address -> (priority, neighbour, held back for a missing password)
    chosen: dict[str, tuple[int, Neighbour, bool]] = {}

    def offer(prio: int, n: Neighbour, held: bool = False) -> None:
        """A peering held back (its password is missing) still takes its address: a
        lower-priority peering (the mesh) never connects there without that password."""
        if n.address in (my_ip, my_ip6):
            return
        cur = chosen.get(n.address)
        if cur is None or prio < cur[0]:
            chosen[n.address] = (prio, n, held)

    # explicit peers: node-specific (priority 0) before global (1)
    for peer in sorted(peers, key=lambda p: p.name):
        where = f"BGPPeer {peer.name}"
        try:
            if not _selects_node(peer, me):
                continue
            s = peer.spec
            ok, password = _password(s.password, secrets, where, missing)
            prio = 1 if peer.is_global else 0
            kind: PeerKind = "global" if peer.is_global else "node"
            keep = bool(s.keepOriginalNextHop) or s.nextHopMode == "Keep"
            session, usable = _session_options(peer, filters or {}, skipped)
            ok = ok and usable
            if s.peerIP:
                addr = peer.peer_address()
                if addr is None:
                    continue
                if ":" in addr[0] and my_ip6 is None:
                    skipped.append(f"{where}: peerIP {addr[0]} is IPv6 and Node {node_name} "
                                   "has no spec.bgp.ipv6Address")
                    continue
                if not s.asNumber:
                    skipped.append(f"{where}: no asNumber")
                    continue
                offer(prio, Neighbour(addr[0], s.asNumber, kind, peer.name, password,
                                      keep_next_hop=keep, ttl_security=s.ttlSecurity or None,
                                      port=addr[1], **session), held=not ok)
            elif s.peerSelector:
                sel = parse(s.peerSelector)
                for other in sorted(by_name.values(), key=lambda n: n.name):
                    ip = node_ipv4(other)
                    if other.name == node_name or ip is None or not sel.evaluate(_labels(other)):
                        continue
                    rr_client = my_cid is not None and cluster_id_of(other) != my_cid
                    offer(prio, Neighbour(
                        ip, asn_of(other), "route-reflector-client" if rr_client else kind,
                        other.name, password, rr_client=rr_client, keep_next_hop=keep,
                        ttl_security=s.ttlSecurity or None, **session), held=not ok)
        except (SelectorError, ValueError) as e:
            skipped.append(f"{where}: {e}")

    if cluster.mesh_enabled:
        ok, mesh_pw = _password(default.spec.nodeMeshPassword if default else None, secrets,
                                "node mesh", missing)
        for other in sorted(by_name.values(), key=lambda n: n.name):
            ip = node_ipv4(other)
            if other.name == node_name or ip is None:
                continue
            # one-way, as Calico's mesh: the node with the higher address connects
            # (no connection collisions while a whole mesh comes up)
            offer(2, Neighbour(ip, asn_of(other), "mesh", other.name, mesh_pw,
                               passive=ip_key(ip) > ip_key(my_ip)), held=not ok)

    for msg in skipped:
        log.warning("bgp peering skipped", extra={"fields": {"problem": msg}})
    neighbours = tuple(n for _, (_, n, held) in sorted(chosen.items(),
                                                        key=lambda kv: ip_key(kv[0]))
                       if not held)
    return PeersResult(BGPSettings(
        router_id=my_ip, local_address=my_ip, local_address6=my_ip6, asn=asn_of(me),
        neighbours=neighbours,
        listen_port=listen_port, hold_time=hold_time, graceful_restart=restart,
        cluster_id=my_cid, prefix_communities=prefix_communities(own, default),
        ipv6=bool(me.ipv6_address())),
        skipped=skipped, missing_passwords=missing)


def _session_options(peer: BGPPeer, filters: Mapping[str, BGPFilter],
                     skipped: list[str]) -> tuple[dict[str, Any], bool]:
    """The :class:`Neighbour` fields a BGPPeer sets for its sessions, and whether the
    peering is usable (every filter it names exists)."""
    s = peer.spec
    where = f"BGPPeer {peer.name}"
    out: dict[str, Any] = {}
    if s.localASNumber:
        out["local_asn"] = int(s.localASNumber)
    if s.keepaliveTime:
        try:
            keepalive = duration_seconds(s.keepaliveTime)
            out["hold_time"] = 0 if keepalive <= 0 else max(3, round(3 * keepalive))
        except ValueError:
            skipped.append(f"{where}: bad keepaliveTime {s.keepaliveTime!r}")
    if s.maxRestartTime:
        try:
            out["restart_time"] = int(duration_seconds(s.maxRestartTime))
        except ValueError:
            skipped.append(f"{where}: bad maxRestartTime {s.maxRestartTime!r}")
    if s.sourceAddress == "None":
        out["source_address"] = False
    if s.numAllowedLocalASNumbers:
        out["allowed_local_as"] = int(s.numAllowedLocalASNumbers)
    if s.nextHopMode == "Self":
        out["next_hop_self"] = True
    usable = True
    named: list[BGPFilter] = []
    for name in s.filters or []:
        f = filters.get(name)
        if f is None:
            skipped.append(f"{where}: BGPFilter {name!r} does not exist; peering held back")
            usable = False
        else:
            named.append(f)
    if named:
        out["export_rules"] = rules_of(named, "export")
        out["import_rules"] = rules_of(named, "import")
    return out, usable


def prefix_communities(own: BGPConfiguration | None, default: BGPConfiguration | None
                       ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(cidr, community values) of the prefix advertisements that apply to this node: its
    ``node.<name>`` configuration's when it has any, else the ``default`` one's."""
    for config in (own, default):
        if config is not None and config.spec.prefixAdvertisements:
            return tuple((pa.cidr, tuple(config.community_values(pa.communities)))
                         for pa in config.spec.prefixAdvertisements)
    return ()


def reachable_routes(node_name: str, nodes: Iterable[Node],
                     peers: Iterable[BGPPeer]) -> dict[str, str]:
    """``<peer IP>/32 -> gateway`` for the BGPPeers of this node with ``reachableBy``
    (Calico adds that static route so the session never follows a route BGP learnt)."""
    me = next((n for n in nodes if n.name == node_name), None)
    if me is None:
        return {}
    out: dict[str, str] = {}
    for peer in sorted(peers, key=lambda p: p.name):
        try:
            if not peer.spec.reachableBy or not _selects_node(peer, me):
                continue
            addr = peer.peer_address()
        except (SelectorError, ValueError):
            continue
        if addr is None or ":" in addr[0] or ":" in peer.spec.reachableBy:
            continue
        out.setdefault(f"{addr[0]}/32", peer.spec.reachableBy)
    return out


def ip_key(address: str) -> tuple[int, ...]:
    """A sort key of addresses: IPv4 in numeric order, then IPv6 in numeric order."""
    try:
        return tuple(int(p) for p in address.split("."))
    except ValueError:
        pass
    try:
        return (1 << 16, int(ipaddress.IPv6Address(address)))
    except ValueError:
        return (1 << 17,)
