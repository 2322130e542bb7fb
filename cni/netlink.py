"""A pod's veth, addresses and routes, the way Calico wires them (pyroute2 ``IPRoute``).

Layout (host = the namespace the daemon runs in)::

    host                                         pod netns
    caliXXXXXXXXXXX  ee:ee:ee:ee:ee:ee  <─veth─>  eth0  10.0.0.5/32 (fd00::5/128)
      proxy_arp=1, proxy_delay=0                    169.254.1.1 dev eth0 scope link
      (v6: proxy_ndp=1, forwarding=1)               default via 169.254.1.1 dev eth0
    10.0.0.5/32 dev caliXXX scope link              default via fe80::ecee:eeff:feee:eeee
    fd00::5/128 dev caliXXX

The pod sends everything to 169.254.1.1, an address nobody has: the host veth answers the
ARP request by proxy ARP, so every packet from the pod reaches the host's routing table.

A pod can have more interfaces than its primary ``eth0`` (Multus, a second network): each
is a veth pair of its own (host name hashed from ``<namespace>.<pod>.<ifname>``).  A
secondary interface must not take the pod's default route from ``eth0``, so its routes go
to a routing table of its own (:func:`secondary_table`) that a source rule selects::

    net1  10.0.0.9/32
    1000:  from 10.0.0.9 lookup <table of net1>        (from fd00::9 too)
    169.254.1.1 dev net1 table <T> scope link
    default via 169.254.1.1 dev net1 table <T>         (v6: via fe80::ecee:eeff:feee:eeee)

Traffic whose source is the secondary interface's address (replies to what arrived on it,
sockets bound to it) leaves through it; everything else follows ``eth0``'s default route.

All functions are synchronous and must run on a thread without a running event loop (the
daemon uses ``asyncio.to_thread``): pyroute2's ``IPRoute`` drives its own loop.  Work inside a
pod's namespace runs on a fresh thread that ``setns()``-es into it and then exits, so no
thread is ever left in the wrong namespace; sysctls are written from that thread because
``/proc/sys/net`` is per network namespace of the calling thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agentkit import links, rtnl
from agentkit.netns import (
    NetnsError,
    NetnsGone,
    NotANetns,
    netns_identity,
    open_netns,
    read_sysctl,
    run_in_netns,
    write_sysctl,
)
from datastore.mtu import DEFAULT_UNDERLAY_MTU
from ipam.handles import PRIMARY_IFNAME

__all__ = [
    "GATEWAY_V4",
    "GATEWAY_V6",
    "HOST_MAC",
    "NetlinkFailure",
    "NetnsError",
    "NetnsGone",
    "NotANetns",
    "PendingVeth",
    "begin_primary_veth",
    "check_veth",
    "finish_primary_veth",
    "forget_pod_routing",
    "host_netns_identities",
    "host_veth_name",
    "host_veths",
    "is_host_veth_name",
    "is_primary",
    "link_exists",
    "netns_identity",
    "netns_link_exists",
    "random_mac",
    "run_in_netns",
    "secondary_table",
    "setup_veth",
    "teardown_veth",
    "underlay_mtu",
]

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"  # the EUI-64 link-local address of HOST_MAC
DEFAULT_MTU = DEFAULT_UNDERLAY_MTU
IFNAME_MAX = 15
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
IFF_UP = 0x1
#: priority of the source rules of secondary interfaces (after ``local``, before ``main``)
SECONDARY_RULE_PRIORITY = 1000
#: secondary interfaces' routing tables: base + a hash of the interface name
SECONDARY_TABLE_BASE = 1_000_000

class NetlinkFailure(NetnsError):
    """A netlink operation failed; the message says which and why.  A
    :class:`agentkit.netns.NetnsError`, as failures to enter a namespace or write a sysctl
    are: ``except NetnsError`` takes them all."""


def random_mac() -> str:
    """A random locally administered unicast MAC (``x2:..``, ``x6:..``, ``xa:..``, ``xe:..``)
    for a pod's interface: Tortie chooses it before the veth exists, so the endpoint that
    records it can be written while the veth is being made."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


def host_veth_name(prefix: str, namespace: str | None, pod: str | None,
                   container_id: str, ifname: str = PRIMARY_IFNAME) -> str:
    """Calico's host-side name: prefix + sha1("<namespace>.<pod>") hex, 15 characters, for
    the primary interface; sha1("<namespace>.<pod>.<ifname>") for any other.

    Without a Kubernetes pod identity the container ID is hashed instead (with
    ``.<ifname>`` for an interface other than the primary one).
    """
    key = f"{namespace}.{pod}" if namespace and pod else container_id
    if ifname and ifname != PRIMARY_IFNAME:
        key = f"{key}.{ifname}"
    room = IFNAME_MAX - len(prefix)
    if room < 4:
        raise ValueError(f"interface prefix {prefix!r} is too long (at most 11 characters)")
    return prefix + hashlib.sha1(key.encode()).hexdigest()[:room]


def is_host_veth_name(prefix: str, name: str) -> bool:
    """Whether ``name`` has the shape :func:`host_veth_name` gives (prefix + hex digits)."""
    rest = name[len(prefix):]
    return (name.startswith(prefix) and len(rest) == IFNAME_MAX - len(prefix)
            and all(c in "0123456789abcdef" for c in rest))


def is_primary(ifname: str) -> bool:
    """Whether ``ifname`` is the pod's primary interface (the one with the default route)."""
    return ifname == PRIMARY_IFNAME


def secondary_table(ifname: str) -> int:
    """The routing table (in the pod's namespace) of the secondary interface ``ifname``:
    fixed by the name, so DEL finds it without any record."""
    return SECONDARY_TABLE_BASE + zlib.crc32(ifname.encode()) % SECONDARY_TABLE_BASE


# --- namespaces ------------------------------------------------------------------------------


def host_netns_identities() -> frozenset[tuple[int, int]]:
    """Identities of the namespaces no pod lives in: this process's own (the daemon's) and
    PID 1's (the machine's)."""
    found: set[tuple[int, int]] = set()
    for path in ("/proc/self/ns/net", "/proc/1/ns/net"):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            found.add((st.st_dev, st.st_ino))
    return frozenset(found)


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _iproute() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _why(e: NetlinkError) -> str:
    return os.strerror(e.code) if e.code else str(e)


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _split(addresses: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(a.split("/", 1)[0]) for a in addresses]


def _link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_exists(name: str) -> bool:
    """Whether a link of that name exists in the calling thread's namespace."""
    with _iproute() as ipr:
        return _lookup(ipr, name) is not None


def host_veths(prefix: str) -> list[str]:
    """Names of the host veths of pods in the calling thread's namespace: veths named like
    :func:`host_veth_name` (``prefix`` + hex) whose peer is in another namespace."""
    with _iproute() as ipr:
        return sorted(
            name for link in ipr.get_links()
            if is_host_veth_name(prefix, name := link.get_attr("IFLA_IFNAME") or "")
            and _link_kind(link) == "veth"
            and link.get_attr("IFLA_LINK_NETNSID") is not None)


def _peer_in_netns(ipr: IPRoute, link: Any, netns_fd: int) -> bool:
    """Whether the veth ``link``'s peer lives in the namespace of ``netns_fd`` (compared by
    the namespace id the kernel gives that namespace in ours)."""
    nsid = link.get_attr("IFLA_LINK_NETNSID")
    if nsid is None:
        return False
    try:
        found = ipr.get_netnsid(fd=netns_fd)
    except NetlinkError:
        return False
    return bool(found) and found.get("nsid") == nsid


def netns_link_exists(netns_path: str, ifname: str) -> bool:
    """Whether ``ifname`` exists in the namespace (False if the namespace is gone)."""
    try:
        with rtnl.open_in(netns_path) as pod:
            return pod.get_link(ifname) is not None
    except NetnsGone:
        return False
    except rtnl.RtnlError as e:
        raise NetlinkFailure(f"cannot read the links of {netns_path}: {e}") from None


def underlay_mtu(address: str | None) -> int:
    """MTU of the interface carrying ``address`` (the node's address), else of the default
    IPv4 route's interface, else :data:`DEFAULT_MTU`."""
    found = links.underlay_mtu(address)
    return found[0] if found else DEFAULT_MTU


# --- setup --------------------------------------------------------------------------------------


def _host_sysctls(name: str, v6: bool) -> None:
    write_sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
    write_sysctl(f"net/ipv4/neigh/{name}/proxy_delay", "0")
    write_sysctl(f"net/ipv4/conf/{name}/forwarding", "1")
    if v6:
        write_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
        write_sysctl(f"net/ipv6/conf/{name}/proxy_ndp", "1")
        write_sysctl(f"net/ipv6/conf/{name}/forwarding", "1")
        write_sysctl(f"net/ipv6/conf/{name}/accept_ra", "0")
        # the pod's v6 gateway is this link's link-local address: usable at once, no DAD
        write_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")


def _source_rules(ipr: IPRoute, table: int) -> list[Any]:
    """The rules (both families) that look up ``table``."""
    return [r for family in (2, 10) for r in ipr.get_rules(family=family)
            if (r.get_attr("FRA_TABLE") or r["table"]) == table]


def _drop_source_rules(ipr: IPRoute, table: int) -> int:
    dropped = 0
    for r in _source_rules(ipr, table):
        with contextlib.suppress(NetlinkError):  # gone meanwhile
            ipr.rule("del", family=r["family"], table=table, src=r.get_attr("FRA_SRC"),
                     src_len=r["src_len"], priority=r.get_attr("FRA_PRIORITY"))
            dropped += 1
    return dropped


def _configure_container(ifname: str, addresses: list[ipaddress.IPv4Address
                                                     | ipaddress.IPv6Address]) -> str:
    """Inside the pod's namespace: addresses, routes; returns the interface's MAC.

    The primary interface gets the main table's default route; a secondary one its own
    table and source rules (the module's docstring shows both)."""
    v6 = any(a.version == 6 for a in addresses)
    with _iproute() as ipr:
        idx = _lookup(ipr, ifname)
        if idx is None:
            raise NetlinkFailure(f"{ifname} did not appear in the pod's namespace")
        if v6:
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_ra", "0")
        ipr.link("set", index=idx, state="up")
        for a in addresses:
            if a.version == 4:
                ipr.addr("add", index=idx, address=str(a), prefixlen=32)
            else:
                ipr.addr("add", index=idx, address=str(a), prefixlen=128, flags=IFA_F_NODAD)
        table = RT_TABLE_MAIN if is_primary(ifname) else secondary_table(ifname)
        if table != RT_TABLE_MAIN:
            _drop_source_rules(ipr, table)  # an earlier interface of that name's: inert
        if any(a.version == 4 for a in addresses):
            ipr.route("add", dst=f"{GATEWAY_V4}/32", oif=idx, scope=RT_SCOPE_LINK, table=table)
            ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=idx, table=table)
        if v6:
            ipr.route("add", dst="::/0", gateway=GATEWAY_V6, oif=idx, family=10, table=table)
        if table != RT_TABLE_MAIN:
            for a in addresses:
                ipr.rule("add", family=2 if a.version == 4 else 10, table=table,
                         priority=SECONDARY_RULE_PRIORITY, src=str(a),
                         src_len=32 if a.version == 4 else 128)
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    return str(mac)


def forget_pod_routing(netns_path: str, ifname: str) -> int:
    """Delete the source rules of the secondary interface ``ifname`` in the pod's namespace
    (its routes go with its link); the number deleted.  Nothing for the primary interface or
    when the namespace is gone."""
    if is_primary(ifname):
        return 0
    table = secondary_table(ifname)

    def drop() -> int:
        with _iproute() as ipr:
            return _drop_source_rules(ipr, table)

    try:
        return run_in_netns(netns_path, drop)
    except NetnsGone:
        return 0


def setup_veth(host_name: str, netns_path: str, ifname: str, ipv4: Sequence[str] = (),
               ipv6: Sequence[str] = (), mtu: int = DEFAULT_MTU,
               mac: str | None = None) -> tuple[int, str]:
    """Create and wire the pod's veth; returns (host ifindex, container MAC).

    ``mac``: the pod end's MAC, set when the pair is created (the kernel picks one when
    None).

    Addresses may be given with or without a prefix; they are always configured as /32
    (/128).  A stale host link of the same name (left by a pod sandbox that was never
    deleted) is replaced.  The peer is created directly in the pod's namespace in the same
    netlink request.  On failure nothing is left behind (the veth is deleted).
    """
    addresses = _split([*ipv4, *ipv6])
    v6 = any(a.version == 6 for a in addresses)
    fd = open_netns(netns_path)
    created = False
    try:
        if is_primary(ifname) and not v6:
            made = _setup_primary_v4(host_name, netns_path, fd, ifname,
                                     [str(a) for a in addresses], mtu, mac)
            if made is not None:
                return made
        with _iproute() as ipr:
            stale = _lookup(ipr, host_name)
            if stale is not None:
                if _link_kind(ipr.get_links(stale)[0]) != "veth":
                    raise NetlinkFailure(f"cannot create veth {host_name}: a link of that name "
                                         "exists and is not a veth")
                ipr.link("del", index=stale)  # a veth of that name: a sandbox's that is gone
            try:
                peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": fd, "mtu": mtu}
                if mac is not None:
                    peer["address"] = mac
                ipr.link("add", ifname=host_name, kind="veth", address=HOST_MAC, mtu=mtu,
                         peer=peer)
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise NetlinkFailure(
                        f"cannot create veth {host_name}: {ifname} already exists in "
                        f"{netns_path}") from None
                raise NetlinkFailure(f"cannot create veth {host_name} with peer {ifname} in "
                                     f"{netns_path}: {_why(e)}") from None
            created = True
            host_idx = _lookup(ipr, host_name)
            if host_idx is None:
                raise NetlinkFailure(f"veth {host_name} vanished right after creation")
            _host_sysctls(host_name, v6)
            ipr.link("set", index=host_idx, state="up")
            mac = run_in_netns(netns_path, lambda: _configure_container(ifname, addresses))
            for a in addresses:
                plen = 32 if a.version == 4 else 128
                ipr.route("replace", dst=f"{a}/{plen}", oif=host_idx, scope=RT_SCOPE_LINK,
                          family=2 if a.version == 4 else 10)
        return host_idx, mac
    except NetlinkError as e:
        if created:
            _undo(host_name, netns_path, ifname)
        raise NetlinkFailure(f"setting up {host_name} / {ifname} in {netns_path}: "
                             f"{_why(e)}") from None
    except BaseException:
        if created:
            _undo(host_name, netns_path, ifname)
        raise
    finally:
        os.close(fd)


def _setup_primary_v4(host_name: str, netns_path: str, netns_fd: int, ifname: str,
                      addresses: list[str], mtu: int,
                      mac: str | None = None) -> tuple[int, str] | None:
    """:func:`setup_veth` for the primary interface with IPv4 addresses only, in five
    netlink exchanges (:mod:`agentkit.rtnl`): :func:`begin_primary_veth`, then
    :func:`finish_primary_veth`.  None, having made nothing, when a link of one of the names
    exists (the general path replaces a stale host veth, or names the conflict)."""
    pending = _begin_primary_veth(host_name, netns_path, netns_fd, ifname, mtu, mac)
    if pending is None:
        return None
    return finish_primary_veth(pending, addresses)


@dataclass(frozen=True)
class PendingVeth:
    """A pod's primary veth made by :func:`begin_primary_veth`, its addresses still to come
    (:func:`finish_primary_veth`)."""

    host_name: str
    netns_path: str
    ifname: str
    host_index: int


def begin_primary_veth(host_name: str, netns_path: str, ifname: str, mtu: int,
                       mac: str | None = None) -> PendingVeth | None:
    """The first half of a primary IPv4 veth, which needs no address: the pair (the pod end
    made in its namespace, the host end up), the host end's index, its sysctls -- so that
    the CNI handler can make it while IPAM chooses the address.  None, having made nothing,
    when a link of one of the names exists (then :func:`setup_veth` decides).  On failure
    nothing is left behind."""
    fd = open_netns(netns_path)
    try:
        return _begin_primary_veth(host_name, netns_path, fd, ifname, mtu, mac)
    finally:
        os.close(fd)


def _begin_primary_veth(host_name: str, netns_path: str, netns_fd: int, ifname: str,
                        mtu: int, mac: str | None) -> PendingVeth | None:
    with rtnl.Rtnl() as host:
        try:
            host.batch([rtnl.new_veth(host_name, ifname, netns_fd, mtu, HOST_MAC, mac)])
        except rtnl.RtnlError as e:
            if e.errno == errno.EEXIST:
                return None
            raise NetlinkFailure(f"cannot create veth {host_name} with peer {ifname} in "
                                 f"{netns_path}: {os.strerror(e.errno or 0)}") from None
        with _undone_on_failure(host_name, netns_path, ifname):
            link = host.get_link(host_name)
            if link is None:
                raise NetlinkFailure(f"veth {host_name} vanished right after creation")
            _host_sysctls(host_name, False)
            return PendingVeth(host_name, netns_path, ifname, link.index)


def finish_primary_veth(pending: PendingVeth, addresses: Sequence[str]) -> tuple[int, str]:
    """The rest of a veth :func:`begin_primary_veth` made: the pod end up, its IPv4
    ``addresses`` and routes in one batch, the host route; (host ifindex, pod MAC).  On
    failure the veth is deleted."""
    host_name, netns_path, ifname = pending.host_name, pending.netns_path, pending.ifname
    with _undone_on_failure(host_name, netns_path, ifname):
        with rtnl.open_in(netns_path) as pod:
            peer = pod.get_link(ifname)
            if peer is None:
                raise NetlinkFailure(f"{ifname} did not appear in the pod's namespace")
            pod.batch([
                rtnl.set_up(peer.index, ifname),
                *(rtnl.new_addr_v4(peer.index, a) for a in addresses),
                rtnl.new_route_v4(GATEWAY_V4, 32, peer.index, scope=RT_SCOPE_LINK),
                rtnl.new_route_v4("0.0.0.0", 0, peer.index, gateway=GATEWAY_V4),
            ])
        with rtnl.Rtnl() as host:
            host.batch([rtnl.new_route_v4(a, 32, pending.host_index, scope=RT_SCOPE_LINK,
                                          replace=True) for a in addresses])
        return pending.host_index, peer.mac


@contextlib.contextmanager
def _undone_on_failure(host_name: str, netns_path: str, ifname: str) -> Iterator[None]:
    """Delete the veth (:func:`_undo`) when the block fails; the kernel's refusals become
    :class:`NetlinkFailure`."""
    try:
        yield
    except rtnl.RtnlError as e:
        _undo(host_name, netns_path, ifname)
        raise NetlinkFailure(f"setting up {host_name} / {ifname} in {netns_path}: "
                             f"{e}") from None
    except BaseException:
        _undo(host_name, netns_path, ifname)
        raise


def _undo(host_name: str, netns_path: str, ifname: str) -> None:
    """What a failed :func:`setup_veth` made: the veth and a secondary interface's rules."""
    teardown_veth(host_name)
    with contextlib.suppress(NetnsError):
        forget_pod_routing(netns_path, ifname)


# --- teardown -----------------------------------------------------------------------------------


def teardown_veth(host_name: str, peer_netns: str | None = None) -> bool:
    """Delete the host-side veth ``host_name`` (its peer goes with it); False if there is
    no veth of that name.

    A link of that name that is not a veth is never touched.  With ``peer_netns`` the veth
    is deleted only if its peer is in that namespace (the proof that it is the pair of that
    sandbox when nothing records it); False otherwise, and when the namespace is gone.
    """
    if peer_netns is None:  # nothing to compare: a get and a delete (agentkit.rtnl)
        try:
            with rtnl.Rtnl() as host:
                link = host.get_link(host_name)
                if link is None or link.kind != "veth":
                    return False
            return rtnl.delete_link_unlisted(link.index, host_name)
        except rtnl.RtnlError as e:
            raise NetlinkFailure(f"cannot delete {host_name}: "
                                 f"{os.strerror(e.errno or 0)}") from None
    fd: int | None = None
    try:
        fd = open_netns(peer_netns)
    except NetnsGone:
        return False
    try:
        with _iproute() as ipr:
            idx = _lookup(ipr, host_name)
            if idx is None:
                return False
            try:
                link = ipr.get_links(idx)[0]
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    return False
                raise NetlinkFailure(f"cannot read {host_name}: {_why(e)}") from None
            if _link_kind(link) != "veth":
                return False
            if fd is not None and not _peer_in_netns(ipr, link, fd):
                return False
            try:
                return rtnl.delete_link_unlisted(idx, host_name)
            except rtnl.RtnlError as e:
                raise NetlinkFailure(f"cannot delete {host_name}: "
                                     f"{os.strerror(e.errno or 0)}") from None
    finally:
        if fd is not None:
            os.close(fd)
    return True


# --- check --------------------------------------------------------------------------------------


def _container_state(ifname: str, table: int) -> dict[str, Any]:
    with _iproute() as ipr:
        idx = _lookup(ipr, ifname)
        if idx is None:
            return {"exists": False}
        link = ipr.get_links(idx)[0]
        addrs = [(a.get_attr("IFA_ADDRESS"), int(a["prefixlen"]), int(a["scope"]))
                 for a in ipr.get_addr(index=idx)]
        rules = [] if table == RT_TABLE_MAIN else sorted(
            f"{r.get_attr('FRA_SRC')}/{r['src_len']}" for r in _source_rules(ipr, table))
        routes = []
        for family in (2, 10):
            for r in ipr.get_routes(family=family, table=table):
                if r.get_attr("RTA_OIF") != idx:
                    continue
                dst = r.get_attr("RTA_DST")
                routes.append({
                    "dst": f"{dst or ('0.0.0.0' if family == 2 else '::')}/{r['dst_len']}",
                    "gateway": r.get_attr("RTA_GATEWAY"),
                    "scope": int(r["scope"]),
                })
        return {
            "exists": True,
            "kind": _link_kind(link),
            "up": bool(link["flags"] & IFF_UP),
            "peer": link.get_attr("IFLA_LINK"),
            "mac": link.get_attr("IFLA_ADDRESS"),
            "mtu": link.get_attr("IFLA_MTU"),
            "addrs": addrs,
            "routes": routes,
            "rules": rules,
        }


def check_veth(host_name: str, netns_path: str, ifname: str, ipv4: Sequence[str] = (),
               ipv6: Sequence[str] = (), mtu: int | None = None,
               container_mac: str | None = None) -> list[str]:
    """Everything that differs from what :func:`setup_veth` makes; empty when all is well."""
    problems: list[str] = []
    addresses = _split([*ipv4, *ipv6])
    fd: int | None = None
    with contextlib.suppress(NetnsGone):
        fd = open_netns(netns_path)
    try:
        with _iproute() as ipr:
            host_idx = _lookup(ipr, host_name)
            if host_idx is None:
                problems.append(f"host interface {host_name} does not exist")
            else:
                link = ipr.get_links(host_idx)[0]
                if _link_kind(link) != "veth":
                    problems.append(f"host interface {host_name} is not a veth")
                elif fd is not None and not _peer_in_netns(ipr, link, fd):
                    problems.append(f"the peer of {host_name} is not in {netns_path}")
                if not link["flags"] & IFF_UP:
                    problems.append(f"host interface {host_name} is down")
                if (link.get_attr("IFLA_ADDRESS") or "").lower() != HOST_MAC:
                    problems.append(f"host interface {host_name} has MAC "
                                    f"{link.get_attr('IFLA_ADDRESS')}, expected {HOST_MAC}")
                if mtu and link.get_attr("IFLA_MTU") != mtu:
                    problems.append(f"host interface {host_name} has MTU "
                                    f"{link.get_attr('IFLA_MTU')}, expected {mtu}")
                if read_sysctl(f"net/ipv4/conf/{host_name}/proxy_arp") != "1":
                    problems.append(f"proxy_arp is off on {host_name}")
                for a in addresses:
                    plen = 32 if a.version == 4 else 128
                    # with dst, pyroute2 asks the kernel which route it would use (ip route get)
                    found = [r for r in ipr.get_routes(family=2 if a.version == 4 else 10,
                                                       dst=str(a))
                             if r.get_attr("RTA_OIF") == host_idx]
                    if not found:
                        problems.append(f"host route {a}/{plen} dev {host_name} is missing")
    finally:
        if fd is not None:
            os.close(fd)
    if fd is None:
        problems.append(f"network namespace {netns_path} does not exist")
        return problems
    table = RT_TABLE_MAIN if is_primary(ifname) else secondary_table(ifname)
    try:
        state = run_in_netns(netns_path, lambda: _container_state(ifname, table))
    except NetnsGone:
        problems.append(f"network namespace {netns_path} does not exist")
        return problems
    if not state["exists"]:
        problems.append(f"{ifname} does not exist in {netns_path}")
        return problems
    if state["kind"] != "veth":
        problems.append(f"{ifname} in {netns_path} is not a veth")
    if not state["up"]:
        problems.append(f"{ifname} in {netns_path} is down")
    if host_idx is not None and state["peer"] != host_idx:
        problems.append(f"{ifname} in {netns_path} is not the peer of {host_name}")
    if container_mac and (state["mac"] or "").lower() != container_mac.lower():
        problems.append(f"{ifname} has MAC {state['mac']}, expected {container_mac}")
    if mtu and state["mtu"] != mtu:
        problems.append(f"{ifname} has MTU {state['mtu']}, expected {mtu}")
    have = {(ipaddress.ip_address(a), plen) for a, plen, scope in state["addrs"]
            if scope == RT_SCOPE_UNIVERSE}
    want = {(a, 32 if a.version == 4 else 128) for a in addresses}
    for a, plen in sorted(want - have, key=str):
        problems.append(f"address {a}/{plen} is missing on {ifname}")
    for a, plen in sorted(have - want, key=str):
        problems.append(f"unexpected address {a}/{plen} on {ifname}")
    routes = state["routes"]

    def has_route(dst: str, gateway: str | None) -> bool:
        return any(r["dst"] == dst and r["gateway"] == gateway for r in routes)

    where = "" if table == RT_TABLE_MAIN else f" (table {table})"
    if any(a.version == 4 for a in addresses):
        if not has_route(f"{GATEWAY_V4}/32", None):
            problems.append(f"route {GATEWAY_V4} dev {ifname} scope link is missing in the "
                            f"pod{where}")
        if not has_route("0.0.0.0/0", GATEWAY_V4):
            problems.append(f"default route via {GATEWAY_V4} is missing in the pod{where}")
    if any(a.version == 6 for a in addresses) and not has_route("::/0", GATEWAY_V6):
        problems.append(f"default route via {GATEWAY_V6} is missing in the pod{where}")
    if table != RT_TABLE_MAIN:
        for a in addresses:
            rule = f"{a}/{32 if a.version == 4 else 128}"
            if rule not in state["rules"]:
                problems.append(f"rule from {rule} lookup {table} is missing in the pod")
    return problems
