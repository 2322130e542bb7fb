"""A minimal rtnetlink client on a plain ``AF_NETLINK`` socket: the few requests a pod's
primary IPv4 veth needs, several sent in one ``send`` and acknowledged together, and a route
dump the kernel filters by table and protocol (the routing agent reads back only its own
routes, not the /32 of every pod on the node).

pyroute2's ``IPRoute`` costs about 0.3 ms to open and 0.4-1 ms per request here (it runs an
event loop of its own and parses every answer into objects); the kernel answers the same
request in tens of microseconds.  Setting up one pod took about ten pyroute2 requests on two
``IPRoute`` objects; :func:`cni.netlink.setup_veth` uses this module for the common case (the
primary interface, IPv4 only) and pyroute2 for the rest.

A netlink socket belongs to the network namespace of the thread that created it, for its
whole life: :func:`open_in` creates one while the calling thread is inside a pod's namespace,
and every request on it then acts in that namespace, from whatever thread sends it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agentkit.netns import socket_in

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
SOL_NETLINK = 270
#: dump requests' header fields become filters the kernel applies (Linux 4.20+)
NETLINK_GET_STRICT_CHK = 12
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTMGRP_LINK = 0x1
#: how long :func:`delete_link_unlisted` waits for the kernel's notice before it waits for
#: the delete call itself instead
UNLIST_NOTICE_WAIT = 5.0

_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")    # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")     # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, proto, scope,
#                                          type, flags
_RTATTR = struct.Struct("=HH")           # len, type
_RTNEXTHOP = struct.Struct("=HBBi")      # len, flags, hops, ifindex
_ERRNO = struct.Struct("=i")
RECV_SIZE = 65536


class RtnlError(OSError):
    """The kernel refused a request (``errno`` is its answer; ``what`` says which request)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (header, payload, padding to 4 bytes)."""
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes from ``offset`` on, by type (the last of each type wins)."""
    found: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            break
        found[kind & ~NLA_F_NESTED] = data[offset + _RTATTR.size:offset + size]
        offset += _align(size)
    return found


@dataclass(frozen=True)
class Request:
    """One message to send: type, flags (REQUEST and ACK are added), body, and what it is
    (for the error message)."""

    kind: int
    flags: int
    body: bytes
    what: str


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    mac: str
    kind: str | None  # IFLA_INFO_KIND ("veth"), None for a link without one


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one ``recv``."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        size, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if size < _NLMSGHDR.size:
            return
        yield kind, seq, data[offset + _NLMSGHDR.size:offset + size]
        offset += _align(size)


def _address(family: int, raw: bytes | None) -> str | None:
    return socket.inet_ntop(family, raw) if raw else None


@dataclass(frozen=True)
class RouteMessage:
    """One route of a dump (the fields the routing agent compares)."""

    family: int
    dst: str                    # canonical CIDR
    table: int
    protocol: int
    type: int
    flags: int                  # rtm_flags (RTNH_F_ONLINK for a one-hop route)
    oif: int | None
    gateway: str | None
    priority: int
    hops: tuple[tuple[int, int, str | None], ...] = ()  # multipath: (flags, ifindex, gw)


def parse_route(payload: bytes) -> RouteMessage:
    family, dst_len, _, _, table, protocol, _, kind, flags = _RTMSG.unpack_from(payload)
    attrs = _attrs(payload, _RTMSG.size)
    dst = _address(family, attrs.get(RTA_DST)) or ("::" if family == socket.AF_INET6
                                                   else "0.0.0.0")
    hops: list[tuple[int, int, str | None]] = []
    raw = attrs.get(RTA_MULTIPATH, b"")
    offset = 0
    while offset + _RTNEXTHOP.size <= len(raw):
        size, hop_flags, _, index = _RTNEXTHOP.unpack_from(raw, offset)
        if size < _RTNEXTHOP.size:
            break
        hop = _attrs(raw[offset:offset + size], _RTNEXTHOP.size)
        hops.append((hop_flags, index, _address(family, hop.get(RTA_GATEWAY))))
        offset += _align(size)
    oif = attrs.get(RTA_OIF)
    priority = attrs.get(RTA_PRIORITY)
    table_attr = attrs.get(RTA_TABLE)
    return RouteMessage(
        family=family, dst=f"{dst}/{dst_len}",
        table=struct.unpack("=I", table_attr)[0] if table_attr else table,
        protocol=protocol, type=kind, flags=flags,
        oif=struct.unpack("=I", oif)[0] if oif else None,
        gateway=_address(family, attrs.get(RTA_GATEWAY)),
        priority=struct.unpack("=I", priority)[0] if priority else 0, hops=tuple(hops))


class Rtnl:
    """One rtnetlink socket (see the module docstring for its namespace)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0
        self._strict = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def batch(self, requests: Sequence[Request]) -> list[bytes]:
        """Send all ``requests`` at once; the answer payload of each (empty for an ACK).
        RtnlError for the first one the kernel refused (all of them are still applied or
        refused by the kernel, each on its own: netlink has no transactions)."""
        seqs: dict[int, int] = {}
        out = bytearray()
        for i, r in enumerate(requests):
            self._seq += 1
            seqs[self._seq] = i
            out += _NLMSGHDR.pack(_NLMSGHDR.size + len(r.body), r.kind,
                                  r.flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
            out += r.body
        self.sock.sendto(bytes(out), (0, 0))  # to the kernel
        answers: list[bytes] = [b""] * len(requests)
        errors: dict[int, int] = {}
        pending = set(seqs)
        while pending:
            for kind, seq, payload in _messages(self.sock.recv(RECV_SIZE)):
                if seq not in seqs:
                    continue
                if kind == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(payload)[0]
                    if code:
                        errors[seqs[seq]] = code
                    pending.discard(seq)
                elif kind != NLMSG_DONE:
                    answers[seqs[seq]] = payload
        for i in sorted(errors):
            raise RtnlError(errors[i], requests[i].what)
        return answers

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """The payloads of one dump request's answers (``NLMSG_DONE`` ends it)."""
        self._seq += 1
        seq = self._seq
        self.sock.sendto(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind,
                                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body, (0, 0))
        out: list[bytes] = []
        while True:
            for msg, got, payload in _messages(self.sock.recv(RECV_SIZE)):
                if got != seq:
                    continue
                if msg == NLMSG_DONE:
                    return out
                if msg == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(payload)[0]
                    if code:
                        raise RtnlError(code, "dump")
                    continue
                out.append(payload)

    # --- routes --------------------------------------------------------------------------

    def routes(self, family: int, table: int = RT_TABLE_MAIN, protocol: int = 0,
               dst_lens: Container[int] | None = None) -> list[RouteMessage]:
        """The routes of ``family`` in ``table`` (of routing protocol ``protocol``; 0: of
        any), filtered by the kernel: only those cross the socket and get parsed.  With
        ``dst_lens`` only routes of those prefix lengths are parsed (the kernel cannot
        filter by length; the header's length is read first)."""
        if not self._strict:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self._strict = True
        body = _RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, protocol, 0, 0, 0)
        if table >= 256:
            body += attr(RTA_TABLE, _u32(table))
        routes = [parse_route(p) for p in self.dump(RTM_GETROUTE, body)
                  if dst_lens is None or p[1] in dst_lens]  # rtm_dst_len
        # the kernel filters what the request names; say so again for one that does not
        return [r for r in routes if r.table == table
                and (not protocol or r.protocol == protocol)]

    # --- links ---------------------------------------------------------------------------

    def get_link(self, name: str) -> Link | None:
        """The link called ``name`` in the socket's namespace, None when there is none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
        try:
            (answer,) = self.batch([Request(RTM_GETLINK, 0, body, f"get link {name}")])
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        _, _, index, flags, _ = _IFINFOMSG.unpack_from(answer)
        attrs = _attrs(answer, _IFINFOMSG.size)
        raw = attrs.get(IFLA_ADDRESS, b"")
        kind = _attrs(attrs.get(IFLA_LINKINFO, b""), 0).get(IFLA_INFO_KIND)
        return Link(index, flags, ":".join(f"{b:02x}" for b in raw),
                    kind.rstrip(b"\0").decode() if kind is not None else None)

    def delete_link(self, index: int, what: str) -> bool:
        """Delete link ``index``; False when it is gone already."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        try:
            self.batch([Request(RTM_DELLINK, 0, body, f"delete {what}")])
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True


def delete_link_unlisted(index: int, what: str) -> bool:
    """Delete link ``index`` (of the calling thread's namespace); return as soon as the
    kernel has unlisted it, not when the delete call returns.  False when it is gone already.

    The kernel answers ``RTM_DELLINK`` only after its ``rcu_barrier`` and the wait for the
    device's last references (17-38 ms for a veth here), but it unlists the device (and its
    veth peer) first: from its ``RTM_DELLINK`` notice on (0.4 ms after the request), the name
    is free in both namespaces, routes through it and its addresses are gone, and a new link
    may take its name.  So the request is sent from a thread of its own, and this returns on
    the notice; the thread waits out the kernel's answer by itself.  When the notice cannot
    be read (the monitor socket overflowed) or does not come, this waits for the answer.
    """
    outcome: list[bool | BaseException] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as monitor:
        monitor.bind((0, RTMGRP_LINK))  # subscribed before the request: no notice is missed
        wake_r, wake_w = os.pipe()

        def delete() -> None:
            try:
                with Rtnl() as sock:
                    outcome.append(sock.delete_link(index, what))
            except BaseException as e:  # handed to the caller below
                outcome.append(e)
            finally:
                with contextlib.suppress(BrokenPipeError):  # the caller had the notice
                    os.write(wake_w, b"x")
                os.close(wake_w)

        try:
            try:
                threading.Thread(target=delete, name=f"delete-{what}", daemon=True).start()
            except BaseException:
                os.close(wake_w)
                raise
            if _unlisted(monitor, wake_r, index, outcome):
                return True
            os.read(wake_r, 1)  # the answer (blocks until the thread has it)
        finally:
            os.close(wake_r)
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result


def _unlisted(monitor: socket.socket, wake: int, index: int, outcome: list[Any]) -> bool:
    """Whether ``monitor`` brings the ``RTM_DELLINK`` notice of link ``index`` before the
    delete's answer (``outcome``, announced on ``wake``) or :data:`UNLIST_NOTICE_WAIT`."""
    poller = select.poll()  # (not select: a daemon's descriptors may go past 1024)
    poller.register(monitor, select.POLLIN)
    poller.register(wake, select.POLLIN)
    deadline = time.monotonic() + UNLIST_NOTICE_WAIT
    while not outcome:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready = {fd for fd, _ in poller.poll(left * 1000)}
        if monitor.fileno() not in ready:
            continue
        try:
            data = monitor.recv(RECV_SIZE)
        except OSError:  # ENOBUFS: notices were lost; the answer decides
            return False
        for kind, _, payload in _messages(data):
            if kind == RTM_DELLINK and _IFINFOMSG.unpack_from(payload)[2] == index:
                return True
    return False


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def new_veth(host: str, peer: str, peer_netns_fd: int, mtu: int, host_mac: str,
             peer_mac: str | None = None) -> Request:
    """RTM_NEWLINK of a veth pair: ``host`` here with ``host_mac``, up; ``peer`` in the
    namespace of ``peer_netns_fd`` (created there, never moved) with ``peer_mac`` (the
    kernel's random one when None), down (the kernel cannot open it before its pair exists:
    ENOTCONN; see :func:`set_up`); both with ``mtu``."""
    up = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
    down = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    peer_msg = down + attr(IFLA_IFNAME, _name(peer)) + attr(IFLA_MTU, _u32(mtu)) \
        + attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))
    if peer_mac is not None:
        peer_msg += attr(IFLA_ADDRESS, _mac(peer_mac))
    # nested without NLA_F_NESTED, as iproute2 sends them (``ip link add ... type veth``)
    linkinfo = attr(IFLA_INFO_KIND, b"veth\0") + attr(
        IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg))
    body = up + attr(IFLA_IFNAME, _name(host)) + attr(IFLA_MTU, _u32(mtu)) \
        + attr(IFLA_ADDRESS, _mac(host_mac)) \
        + attr(IFLA_LINKINFO, linkinfo)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body,
                   f"create veth {host} with peer {peer}")


def set_up(index: int, name: str) -> Request:
    """RTM_SETLINK: link ``index`` up."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    return Request(RTM_SETLINK, 0, body, f"set {name} up")


def new_addr_v4(index: int, address: str) -> Request:
    """RTM_NEWADDR ``address``/32 on link ``index``."""
    raw = socket.inet_aton(address)
    body = _IFADDRMSG.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index) \
        + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {address}/32")


def new_route_v4(dst: str, dst_len: int, index: int, *, gateway: str | None = None,
                 scope: int = RT_SCOPE_UNIVERSE, replace: bool = False) -> Request:
    """RTM_NEWROUTE ``dst``/``dst_len`` out of link ``index`` (via ``gateway``), table main,
    proto static (what pyroute2 makes)."""
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope,
                       RTN_UNICAST, 0)
    if dst_len:
        body += attr(RTA_DST, socket.inet_aton(dst))
    if gateway is not None:
        body += attr(RTA_GATEWAY, socket.inet_aton(gateway))
    body += attr(RTA_OIF, _u32(index))
    flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    via = f" via {gateway}" if gateway else ""
    return Request(RTM_NEWROUTE, flags, body, f"add route {dst}/{dst_len}{via}")


def open_in(netns_path: str) -> Rtnl:
    """An rtnetlink socket of the namespace at ``netns_path`` (created by the calling thread
    while it is in that namespace for a moment, :func:`agentkit.netns.socket_in`; see the
    module docstring)."""
    return Rtnl(socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
