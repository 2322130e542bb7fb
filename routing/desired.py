"""What the routing agent wants (pure: no I/O).

From the datastore view (IP pools, Nodes, IPAM blocks) and the routes BGP learnt, compute

* the prefixes this node announces: every block affine to it (unless its pool has
  ``disableBGPExport``) and a /32 (/128) for every address it holds in a block affine to
  another node (a borrowed address), with next hop = this node's address of the family
  (``spec.bgp.ipv4Address`` / ``spec.bgp.ipv6Address``; IPv6 prefixes only when the node
  has an IPv6 address); and the service prefixes :mod:`routing.services` gives it;
* the kernel routes it wants: a blackhole per owned block, and per learnt prefix a route via
  the owner -- direct, or through the VXLAN / IPIP tunnel per the pool's ``vxlanMode`` /
  ``ipipMode`` (``CrossSubnet``: only when the owner's underlay subnet, from its Node's
  ``spec.bgp.ipv4Address`` prefix, differs from this node's).  IPv6 prefixes go via the
  owner's IPv6 address, directly or through ``vxlan-v6.tortie`` per their IPv6 pool's
  ``vxlanMode`` (CrossSubnet: the nodes' ``spec.bgp.ipv6Address`` prefixes), as Calico's
  ``vxlan-v6.calico``;
* the VXLAN forwarding entries, per address family (one per remote node with a VTEP of that
  family: its VTEP address and MAC, and the underlay address of that family behind them).

No kernel route for a learnt prefix this node announces itself, nor for one inside a
configured service range (:class:`routing.services.Advertisement`): kube-proxy serves those
addresses on every node.

Routes to pods on this node (the /32 per veth) are the CNI handler's, not in here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from datastore.model_bgp import BGPPeer
from datastore.model_network import IPPool, Node
from datastore.mtu import IPIP, VXLAN, VXLAN6, encaps_in_use
from ipam.blocks import Block
from ipam.handles import tunnel_handles
from routing.bgp.api import LearnedRoute
from routing.services import Advertisement

log = logging.getLogger("tortie.routing")

VXLAN_DEVICE = "vxlan.tortie"
#: the VXLAN device of IPv6 pools (Calico: ``vxlan-v6.calico``)
VXLAN_DEVICE_V6 = "vxlan-v6.tortie"
IPIP_DEVICE = "tunl0"

RouteKind = Literal["blackhole", "direct", "vxlan", "ipip"]
Encap = Literal["none", "vxlan", "ipip"]


@dataclass(frozen=True)
class NodeInfo:
    """What routing needs of one Node resource."""

    name: str
    address: str | None = None          # underlay IPv4 (no prefix)
    network: str | None = None          # its subnet, from spec.bgp.ipv4Address
    address6: str | None = None         # underlay IPv6 (no prefix), spec.bgp.ipv6Address
    network6: str | None = None         # its IPv6 subnet, from spec.bgp.ipv6Address
    asn: int | None = None
    vxlan_address: str | None = None    # spec.ipv4VXLANTunnelAddr
    vxlan_mac: str | None = None        # spec.vxlanTunnelMACAddr
    vxlan_address6: str | None = None   # spec.ipv6VXLANTunnelAddr
    vxlan_mac6: str | None = None       # spec.vxlanTunnelMACAddrV6
    ipip_address: str | None = None     # spec.bgp.ipv4IPIPTunnelAddr
    rr_cluster_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_node(cls, node: Node) -> NodeInfo:
        bgp = node.spec.bgp
        address = network = None
        if bgp is not None and bgp.ipv4Address:
            iface = ipaddress.ip_interface(bgp.ipv4Address)
            address, network = str(iface.ip), str(iface.network)
        address6 = network6 = None
        if bgp is not None and bgp.ipv6Address:
            iface6 = ipaddress.ip_interface(bgp.ipv6Address)
            address6, network6 = str(iface6.ip), str(iface6.network)
        return cls(
            name=node.name, address=address, network=network, address6=address6,
            network6=network6,
            asn=int(bgp.asNumber) if bgp is not None and bgp.asNumber is not None else None,
            vxlan_address=node.spec.ipv4VXLANTunnelAddr,
            vxlan_mac=node.spec.vxlanTunnelMACAddr,
            vxlan_address6=node.spec.ipv6VXLANTunnelAddr,
            vxlan_mac6=node.spec.vxlanTunnelMACAddrV6,
            ipip_address=bgp.ipv4IPIPTunnelAddr if bgp is not None else None,
            rr_cluster_id=bgp.routeReflectorClusterID if bgp is not None else None,
            labels=dict(node.metadata.labels or {}))


@dataclass(frozen=True)
class Route:
    """One kernel route the agent wants (main table, the agent's protocol number)."""

    dst: str                    # "10.244.1.0/26"
    kind: RouteKind
    gateway: str | None = None  # next hop (direct: the owner; vxlan: its VTEP; ipip: owner)
    device: str | None = None   # the tunnel device for vxlan / ipip; None: kernel picks
    #: ECMP: every next hop (two or more, ``gateway`` the first); () for a single path
    gateways: tuple[str, ...] = ()

    @property
    def onlink(self) -> bool:
        return self.kind in ("vxlan", "ipip")

    def describe(self) -> str:
        if self.kind == "blackhole":
            return f"blackhole {self.dst}"
        dev = f" dev {self.device}" if self.device else ""
        onlink = " onlink" if self.onlink else ""
        via = " ".join(f"via {g}" for g in (self.gateways or (self.gateway,)))
        return f"{self.dst} {via}{dev}{onlink}"


@dataclass(frozen=True)
class VXLANPeer:
    """Forwarding state for one remote VTEP: neighbour (address -> MAC) and FDB (MAC -> host)."""

    node: str
    vtep_address: str
    mac: str
    underlay: str


@dataclass
class Desired:
    announce: dict[str, str] = field(default_factory=dict)   # prefix -> next hop
    routes: dict[str, Route] = field(default_factory=dict)   # dst -> route
    vxlan_peers: dict[str, VXLANPeer] = field(default_factory=dict)  # node -> entry
    vxlan_peers6: dict[str, VXLANPeer] = field(default_factory=dict)  # IPv6: node -> entry
    skipped: list[str] = field(default_factory=list)         # why some routes are missing
    vxlan_needed: bool = False
    vxlan6_needed: bool = False   # some IPv6 pool uses VXLAN (vxlan-v6.tortie)
    ipip_needed: bool = False


# --- parsing datastore documents (one bad document never stops the others) --------------------


def parse_pool(doc: Mapping[str, Any]) -> IPPool:
    return IPPool.from_dict(dict(doc))


def parse_node(doc: Mapping[str, Any]) -> NodeInfo:
    return NodeInfo.from_node(Node.from_dict(dict(doc)))


# --- decisions ---------------------------------------------------------------------------------


def pool_of(prefix: str, pools: Iterable[IPPool]) -> IPPool | None:
    """The pool that contains ``prefix`` (the most specific one), if any."""
    net = ipaddress.ip_network(prefix, strict=False)
    best: IPPool | None = None
    for p in pools:
        pool_net = p.network
        if (pool_net.version == net.version and net.subnet_of(pool_net)
                and (best is None or pool_net.prefixlen > best.network.prefixlen)):
            best = p
    return best


def _underlay(n: NodeInfo, version: int) -> tuple[str | None, str | None]:
    """(address, subnet) of a node's underlay of one address family."""
    return (n.address6, n.network6) if version == 6 else (n.address, n.network)


def same_subnet(a: NodeInfo, b: NodeInfo, version: int = 4) -> bool:
    """Whether two nodes share an underlay subnet of one address family (CrossSubnet's test,
    as Calico does it: each node's address lies in the other's ``ipv4Address`` /
    ``ipv6Address`` prefix)."""
    (a_ip, a_net), (b_ip, b_net) = _underlay(a, version), _underlay(b, version)
    if not (a_ip and a_net and b_ip and b_net):
        return False
    return (ipaddress.ip_address(b_ip) in ipaddress.ip_network(a_net)
            and ipaddress.ip_address(a_ip) in ipaddress.ip_network(b_net))


def _mode_applies(mode: str | None, me: NodeInfo, peer: NodeInfo, version: int) -> bool:
    if mode == "Always":
        return True
    if mode == "CrossSubnet":
        return not same_subnet(me, peer, version)
    return False


def encapsulation(pool: IPPool | None, me: NodeInfo, peer: NodeInfo | None) -> Encap:
    """How to reach ``peer``'s addresses of ``pool`` from ``me`` (an IPv6 pool: VXLAN over
    the IPv6 underlay, never IPIP)."""
    if pool is None or peer is None:
        return "none"
    version = pool.network.version
    if _mode_applies(pool.spec.vxlanMode, me, peer, version):
        return "vxlan"
    if version == 4 and _mode_applies(pool.spec.ipipMode, me, peer, version):
        return "ipip"
    return "none"


def block_view(b: Block | None, node: str) -> tuple[Any, ...] | None:
    """What routing on ``node`` uses of a block (see :func:`compute`,
    :func:`announcements` and the agent's tunnel addresses): whether the block is the
    node's, the addresses the node borrowed from it, and the node's tunnel addresses in it.
    None when the block means nothing to the node: another node's block (being made,
    filled or deleted), with nothing of ours in it.  Two versions with one view route the
    same on ``node``, so neither pod churn in a node's own block nor other nodes' blocks
    coming and going cost the other agents a sync (their routes come from BGP)."""
    if b is None:
        return None
    mine = b.affinity_node == node
    tunnels = tunnel_handles(node)
    special = frozenset(b.allocated_where(
        lambda attrs: (not mine and attrs.get("node") == node)
        or attrs.get("handle") in tunnels))
    if not mine and not special:
        return None
    return (b.cidr, mine, special)


def owned_blocks(node: str, blocks: Iterable[Block]) -> list[Block]:
    return [b for b in blocks if b.affinity_node == node]


def borrowed_addresses(node: str, blocks: Iterable[Block]) -> list[str]:
    """Addresses ``node`` holds in blocks that are not affine to it."""
    out: list[str] = []
    for b in blocks:
        if b.affinity_node == node:
            continue
        out += [ip for ip, attrs in b.allocated() if attrs.get("node") == node]
    return out


def announcements(me: NodeInfo, pools: Iterable[IPPool], blocks: Iterable[Block],
                  services: Iterable[str] = ()) -> dict[str, str]:
    """prefix -> next hop: what this node announces over BGP (IPv6 prefixes with this
    node's IPv6 address as next hop, and only when it has one; nothing without an IPv4
    address: the BGP sessions run over IPv4); ``services``: the service prefixes it
    announces as well (:func:`routing.services.advertisement`)."""
    if not me.address:
        return {}
    pools = list(pools)
    blocks = list(blocks)
    out: dict[str, str] = {}
    hops = {4: me.address, 6: me.address6}

    def exported(prefix: str) -> bool:
        pool = pool_of(prefix, pools)
        return not (pool is not None and pool.spec.disableBGPExport)

    for b in owned_blocks(me.name, blocks):
        hop = hops[b.network.version]
        if hop and exported(b.cidr):
            out[str(b.network)] = hop
    for ip in borrowed_addresses(me.name, blocks):
        addr = ipaddress.ip_address(ip)
        prefix = f"{addr}/{addr.max_prefixlen}"
        hop = hops[addr.version]
        if hop and exported(prefix):
            out[prefix] = hop
    for prefix in sorted(services):
        net = ipaddress.ip_network(prefix, strict=False)
        hop = hops[net.version]
        if hop:
            out.setdefault(str(net), hop)
    return out


def compute(me: NodeInfo, nodes: Mapping[str, NodeInfo], pools: Iterable[IPPool],
            blocks: Iterable[Block], learnt: Mapping[str, LearnedRoute],
            static: Mapping[str, str] | None = None,
            services: Advertisement | None = None) -> Desired:
    """Everything the agent wants for node ``me`` (see the module docstring).
    ``static``: dst -> gateway routes that win over learnt ones (BGPPeer ``reachableBy``);
    ``services``: the service prefixes to announce and the ranges to install nothing in.
    A learnt route with several equally good next hops (``LearnedRoute.next_hops``)
    becomes one multipath route when every next hop is reached the same way (all direct,
    or all through the same tunnel); otherwise its best path alone is used."""
    pools = [p for p in pools]
    blocks = list(blocks)
    services = services or Advertisement()
    wanted = Desired(announce=announcements(me, pools, blocks, services.prefixes))
    by_address = {n.address: n for n in nodes.values() if n.address and n.name != me.name}
    mine = owned_blocks(me.name, blocks)
    own_prefixes = set()
    for b in mine:
        own_prefixes.add(str(b.network))
        wanted.routes[str(b.network)] = Route(str(b.network), "blackhole")
    encaps = encaps_in_use(pools)
    wanted.vxlan_needed = VXLAN in encaps
    wanted.vxlan6_needed = VXLAN6 in encaps
    wanted.ipip_needed = IPIP in encaps
    for n in nodes.values():
        if n.name == me.name:
            continue
        if wanted.vxlan_needed and n.vxlan_address and n.vxlan_mac and n.address:
            wanted.vxlan_peers[n.name] = VXLANPeer(n.name, n.vxlan_address, n.vxlan_mac, n.address)
        if wanted.vxlan6_needed and n.vxlan_address6 and n.vxlan_mac6 and n.address6:
            wanted.vxlan_peers6[n.name] = VXLANPeer(n.name, n.vxlan_address6, n.vxlan_mac6,
                                                    n.address6)
    by_address6 = {n.address6: n for n in nodes.values() if n.address6 and n.name != me.name}
    for prefix in sorted(learnt):
        r = learnt[prefix]
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            wanted.skipped.append(f"{prefix}: not a prefix")
            continue
        dst = str(net)
        if dst in own_prefixes or dst in wanted.announce:
            continue  # ours: a stale announcement of a previous owner never wins
        if services.rejects(net):
            continue  # a service address: kube-proxy serves it here
        if r.next_hop in (me.address, me.address6):
            continue
        if net.version == 6:
            hop = _ipv6_next_hop(r.next_hop)
            if hop is None:
                wanted.skipped.append(f"{dst}: next hop {r.next_hop} is not a global IPv6 "
                                      "address")
            else:
                wanted.routes[dst] = _route_via6(wanted, me, by_address6,
                                                 pool_of(dst, pools), dst, hop)
            continue
        pool = pool_of(dst, pools)
        via = {nh: _route_via(wanted, me, by_address, pool, dst, nh)
               for nh in dict.fromkeys((r.next_hop, *r.gateways)) if nh != me.address}
        first, paths = via[r.next_hop], list(via.values())
        if (len(paths) > 1 and len({(p.kind, p.device) for p in paths}) == 1
                and len({p.gateway for p in paths}) == len(paths)):
            wanted.routes[dst] = dataclasses.replace(
                first, gateways=tuple(p.gateway for p in paths if p.gateway))
        else:
            if len(paths) > 1:
                wanted.skipped.append(f"{dst}: its equal-cost next hops are reached "
                                      "differently; using the best path only")
            wanted.routes[dst] = first
    for dst, gateway in (static or {}).items():
        dst = str(ipaddress.ip_network(dst, strict=False))
        if dst not in own_prefixes:
            wanted.routes[dst] = Route(dst, "direct", gateway)
    return wanted


def _route_via(wanted: Desired, me: NodeInfo, by_address: Mapping[str, NodeInfo],
               pool: IPPool | None, dst: str, next_hop: str) -> Route:
    """The route to ``dst`` through one BGP next hop: direct, or through a tunnel."""
    peer = by_address.get(next_hop)
    encap = encapsulation(pool, me, peer)
    if encap == "vxlan":
        assert peer is not None
        if peer.name in wanted.vxlan_peers:
            return Route(dst, "vxlan", peer.vxlan_address, VXLAN_DEVICE)
        wanted.skipped.append(f"{dst}: node {peer.name} has no VXLAN tunnel "
                              "address/MAC yet; routing it directly")
    elif encap == "ipip":
        assert peer is not None
        return Route(dst, "ipip", peer.address, IPIP_DEVICE)
    return Route(dst, "direct", next_hop)


def _route_via6(wanted: Desired, me: NodeInfo, by_address6: Mapping[str, NodeInfo],
                pool: IPPool | None, dst: str, next_hop: str) -> Route:
    """The route to an IPv6 ``dst``: via the owner's IPv6 address, or through
    ``vxlan-v6.tortie`` to its IPv6 VTEP when the pool's ``vxlanMode`` says so."""
    peer = by_address6.get(next_hop)
    if encapsulation(pool, me, peer) == "vxlan":
        assert peer is not None
        if peer.name in wanted.vxlan_peers6:
            return Route(dst, "vxlan", peer.vxlan_address6, VXLAN_DEVICE_V6)
        wanted.skipped.append(f"{dst}: node {peer.name} has no IPv6 VXLAN tunnel "
                              "address/MAC yet; routing it directly")
    return Route(dst, "direct", next_hop)


def _ipv6_next_hop(text: str) -> str | None:
    """The usable IPv6 next hop of a learnt IPv6 route (its global address: ExaBGP reports
    only the first of a global + link-local pair), None when there is none."""
    try:
        ip = ipaddress.ip_address(text.split()[0] if text else "")
    except ValueError:
        return None
    if ip.version != 6 or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return str(ip)


def vtep_mac(node: str, version: int = 4) -> str:
    """A stable, locally administered unicast MAC for ``node``'s VTEP of one address family
    (same after restarts; the IPv6 VTEP's differs from the IPv4 one's)."""
    seed = f"tortie-vxlan:{node}" if version == 4 else f"tortie-vxlan-v6:{node}"
    h = hashlib.sha256(seed.encode()).digest()
    first = (h[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *h[1:6]))


def never_masqueraded(nodes: Iterable[Node], peers: Iterable[BGPPeer],
                      version: int = 4) -> list[str]:
    """The destinations of one address family natOutgoing never masquerades pod traffic to:
    every node's addresses and every BGP peer's (a pod must never appear with a BGP
    speaker's address)."""
    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for node in nodes:
        out.update(a for text in node.host_addresses()
                   if (a := ipaddress.ip_address(text)).version == version)
    for peer in peers:
        address = peer.peer_address()
        if address is not None and (ip := ipaddress.ip_address(address[0])).version == version:
            out.add(ip)
    return [str(a) for a in sorted(out)]


def masquerade_sets(pools: Iterable[IPPool], version: int = 4
                    ) -> tuple[list[str], list[str]]:
    """(pools whose traffic is masqueraded, every pool): natOutgoing's two sets, of one
    address family."""
    nat: list[str] = []
    every: list[str] = []
    for p in pools:
        if p.network.version != version:
            continue
        every.append(str(p.network))
        if p.spec.natOutgoing and not p.spec.disabled:
            nat.append(str(p.network))
    return sorted(nat), sorted(every)
