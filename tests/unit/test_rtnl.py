"""The rtnetlink messages agentkit/rtnl.py builds (their bytes, as the kernel parses them) and the
way it reads answers; the requests against a real kernel are tests/integration/test_cni.py."""

from __future__ import annotations

import socket
import struct
from typing import cast

import pytest

from agentkit import rtnl


def attrs_of(body: bytes, header: int) -> dict[int, bytes]:
    return rtnl._attrs(body, header)


def test_attributes_are_padded_to_four_bytes() -> None:
    a = rtnl.attr(rtnl.IFLA_IFNAME, b"eth0\0")
    assert len(a) == 12 and struct.unpack_from("=HH", a) == (9, rtnl.IFLA_IFNAME)
    assert rtnl._attrs(a + rtnl.attr(rtnl.IFLA_MTU, struct.pack("=I", 1450)), 0) == {
        rtnl.IFLA_IFNAME: b"eth0\0", rtnl.IFLA_MTU: struct.pack("=I", 1450)}


def test_new_veth_names_both_ends_and_brings_the_host_end_up() -> None:
    r = rtnl.new_veth("cali0123456789a", "eth0", 7, 1450, "ee:ee:ee:ee:ee:ee")
    assert r.kind == rtnl.RTM_NEWLINK and r.flags & rtnl.NLM_F_EXCL
    _, _, _, flags, change = struct.unpack_from("=BxHiII", r.body)
    assert flags & rtnl.IFF_UP and change & rtnl.IFF_UP
    top = attrs_of(r.body, 16)
    assert top[rtnl.IFLA_IFNAME] == b"cali0123456789a\0"
    assert top[rtnl.IFLA_ADDRESS] == b"\xee" * 6
    assert struct.unpack("=I", top[rtnl.IFLA_MTU]) == (1450,)
    info = attrs_of(top[rtnl.IFLA_LINKINFO], 0)
    assert info[rtnl.IFLA_INFO_KIND] == b"veth\0"
    peer = attrs_of(info[rtnl.IFLA_INFO_DATA], 0)[rtnl.VETH_INFO_PEER]
    _, _, _, pflags, _ = struct.unpack_from("=BxHiII", peer)
    assert not pflags & rtnl.IFF_UP  # the kernel cannot open it before its pair: ENOTCONN
    up = rtnl.set_up(4, "eth0")
    assert up.kind == rtnl.RTM_SETLINK
    assert struct.unpack_from("=BxHiII", up.body)[2:] == (4, rtnl.IFF_UP, rtnl.IFF_UP)
    pattrs = attrs_of(peer, 16)
    assert pattrs[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", pattrs[rtnl.IFLA_NET_NS_FD]) == (7,)
    assert rtnl.IFLA_ADDRESS not in pattrs  # the kernel picks the pod end's MAC


def test_new_veth_sets_the_pod_ends_mac_when_given() -> None:
    r = rtnl.new_veth("cali0123456789a", "eth0", 7, 1450, "ee:ee:ee:ee:ee:ee",
                      "0a:1b:2c:3d:4e:5f")
    top = attrs_of(r.body, 16)
    assert top[rtnl.IFLA_ADDRESS] == b"\xee" * 6
    peer = attrs_of(attrs_of(top[rtnl.IFLA_LINKINFO], 0)[rtnl.IFLA_INFO_DATA],
                    0)[rtnl.VETH_INFO_PEER]
    assert attrs_of(peer, 16)[rtnl.IFLA_ADDRESS] == bytes.fromhex("0a1b2c3d4e5f")


def test_routes_and_addresses() -> None:
    default = rtnl.new_route_v4("0.0.0.0", 0, 3, gateway="169.254.1.1")
    family, dst_len, _, _, table, proto, scope, kind, _ = struct.unpack_from(
        "=BBBBBBBBI", default.body)
    assert (family, dst_len, table, proto, scope, kind) == (
        socket.AF_INET, 0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_STATIC, rtnl.RT_SCOPE_UNIVERSE,
        rtnl.RTN_UNICAST)
    a = attrs_of(default.body, 12)
    assert rtnl.RTA_DST not in a and a[rtnl.RTA_GATEWAY] == socket.inet_aton("169.254.1.1")
    assert struct.unpack("=I", a[rtnl.RTA_OIF]) == (3,)
    host = rtnl.new_route_v4("10.0.0.5", 32, 9, scope=rtnl.RT_SCOPE_LINK, replace=True)
    assert host.flags & rtnl.NLM_F_REPLACE and not host.flags & rtnl.NLM_F_EXCL
    assert attrs_of(host.body, 12)[rtnl.RTA_DST] == socket.inet_aton("10.0.0.5")
    addr = rtnl.new_addr_v4(3, "10.0.0.5")
    assert struct.unpack_from("=BBBBI", addr.body) == (socket.AF_INET, 32, 0, 0, 3)
    assert attrs_of(addr.body, 8)[rtnl.IFA_LOCAL] == socket.inet_aton("10.0.0.5")


class FakeSocket:
    """Answers every request of a batch with an ACK, or an error for the ones asked."""

    def __init__(self, refuse: dict[int, int]) -> None:
        self.refuse = refuse  # index in the batch -> errno
        self.answer = b""

    def bind(self, address: object) -> None:
        pass

    def close(self) -> None:
        pass

    def sendto(self, data: bytes, address: object) -> None:
        offset, i, out = 0, 0, bytearray()
        while offset < len(data):
            size, _, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
            err = -self.refuse.get(i, 0)
            payload = struct.pack("=i", err) + data[offset:offset + 16]
            out += struct.pack("=IHHII", 16 + len(payload), rtnl.NLMSG_ERROR, 0, seq, 0)
            out += payload
            offset += (size + 3) & ~3
            i += 1
        self.answer = bytes(out)

    def recv(self, size: int) -> bytes:
        answer, self.answer = self.answer, b""
        return answer


def test_a_batch_reports_the_first_refused_request() -> None:
    requests = [rtnl.new_addr_v4(3, f"10.0.0.{i}") for i in range(3)]
    assert rtnl.Rtnl(cast(socket.socket, FakeSocket({}))).batch(requests) == [b"", b"", b""]
    with pytest.raises(rtnl.RtnlError) as refused:
        rtnl.Rtnl(cast(socket.socket, FakeSocket({1: 17, 2: 19}))).batch(requests)
    assert refused.value.errno == 17 and "10.0.0.1/32" in str(refused.value)


def route_payload(family: int, dst: bytes, dst_len: int, *attrs: bytes, proto: int = 80,
                  kind: int = 1, flags: int = 0, table: int = 254) -> bytes:
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, proto, 0, kind,
                       flags) + rtnl.attr(rtnl.RTA_DST, dst) + b"".join(attrs)


def test_a_dumped_route_is_parsed_with_its_gateway_device_and_metric() -> None:
    r = rtnl.parse_route(route_payload(
        socket.AF_INET, bytes([10, 244, 1, 0]), 26,
        rtnl.attr(rtnl.RTA_GATEWAY, bytes([192, 0, 2, 12])),
        rtnl.attr(rtnl.RTA_OIF, struct.pack("=I", 3)),
        rtnl.attr(rtnl.RTA_PRIORITY, struct.pack("=I", 7)),
        rtnl.attr(rtnl.RTA_TABLE, struct.pack("=I", 254)), flags=4))
    assert (r.dst, r.gateway, r.oif, r.priority, r.protocol, r.flags, r.table, r.hops) == (
        "10.244.1.0/26", "192.0.2.12", 3, 7, 80, 4, 254, ())


def test_a_multipath_route_lists_every_next_hop() -> None:
    def hop(gateway: bytes, index: int, flags: int = 0) -> bytes:
        a = rtnl.attr(rtnl.RTA_GATEWAY, gateway)
        return struct.pack("=HBBi", 8 + len(a), flags, 0, index) + a
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::12")
    r = rtnl.parse_route(route_payload(
        socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00:10:244::"), 122,
        rtnl.attr(rtnl.RTA_MULTIPATH, hop(v6, 2, 4) + hop(
            socket.inet_pton(socket.AF_INET6, "2001:db8::13"), 2, 4))))
    assert r.dst == "fd00:10:244::/122" and r.gateway is None
    assert r.hops == ((4, 2, "2001:db8::12"), (4, 2, "2001:db8::13"))


def test_a_blackhole_without_a_destination_is_the_default_route() -> None:
    payload = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 80, 0, 6, 0)
    r = rtnl.parse_route(payload)
    assert (r.dst, r.type, r.gateway, r.oif) == ("0.0.0.0/0", 6, None, None)
