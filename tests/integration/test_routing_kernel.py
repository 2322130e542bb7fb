"""routing/kernel.py, vxlan.py, ipip.py, nat.py against the real kernel, in scratch
namespaces: our protocol only, foreign routes untouched, removal, a VXLAN tunnel that
carries packets, the NAT table on its own."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from lab import netns
from routing.desired import VXLAN_DEVICE, Route, VXLANPeer, vtep_mac
from routing.ipip import IPIPDevice
from routing.kernel import PROTO, KernelRoutes
from routing.nat import OutgoingNAT
from routing.vxlan import VXLANConfig, VXLANDevice
from tests.support.tools import skip_kernel


def _ip(ns: str, *args: str) -> str:
    return netns.ip(*args, ns=ns)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth: a0 192.0.2.1/24 in the first, b0 .2 in the second."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"trk-{tag}-a", f"trk-{tag}-b"
    try:
        for ns in (a, b):
            netns.add_netns(ns, forwarding=True)
        netns.ip("link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "b0",
                 "netns", b)
        _ip(a, "addr", "add", "192.0.2.1/24", "dev", "a0")
        _ip(b, "addr", "add", "192.0.2.2/24", "dev", "b0")
        _ip(a, "link", "set", "a0", "up")
        _ip(b, "link", "set", "b0", "up")
        yield a, b
    finally:
        for ns in (a, b):
            netns.del_netns(ns)


def proto_routes(ns: str) -> str:
    return _ip(ns, "route", "show", "proto", str(PROTO))


def test_programs_only_its_own_protocol(pair: tuple[str, str]) -> None:
    a, _ = pair
    _ip(a, "route", "add", "10.9.0.0/24", "via", "192.0.2.2", "proto", "static")
    _ip(a, "route", "add", "blackhole", "10.8.0.0/24")  # proto boot
    k = KernelRoutes(a)
    want = {
        "10.244.1.0/26": Route("10.244.1.0/26", "blackhole"),
        "10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.2"),
        "10.9.0.0/24": Route("10.9.0.0/24", "direct", "192.0.2.2"),  # foreign has it
    }
    res = k.sync(want)
    assert sorted(res.added) == ["10.244.2.0/26 via 192.0.2.2", "blackhole 10.244.1.0/26"]
    assert res.conflicts == ["10.9.0.0/24"]
    ours = proto_routes(a)
    assert "blackhole 10.244.1.0/26" in ours and "10.244.2.0/26 via 192.0.2.2" in ours
    assert "10.9.0.0" not in ours
    # idempotent
    again = k.sync(want)
    assert not again.changed and again.kept == 2
    # a flush of ours leaves the foreign routes exactly as they were
    removed = k.flush()
    assert sorted(removed) == ["10.244.1.0/26", "10.244.2.0/26"]
    everything = _ip(a, "route", "show")
    assert "10.9.0.0/24 via 192.0.2.2 dev a0 proto static" in everything
    assert "blackhole 10.8.0.0/24" in everything
    assert proto_routes(a).strip() == ""


def test_multipath_and_ipv6_routes_read_back_as_programmed(pair: tuple[str, str]) -> None:
    """The kernel-filtered dump (agentkit.rtnl) parses ECMP next hops, IPv6 routes and
    blackholes as they were written: a second sync finds every route right, among a
    hundred pod-style /32s of another protocol."""
    a, _ = pair
    _ip(a, "addr", "add", "192.0.2.3/24", "dev", "a0")
    _ip(a, "-6", "addr", "add", "2001:db8::1/64", "dev", "a0", "nodad")
    batch = "".join(f"route add 10.244.9.{i}/32 dev a0 proto static\n" for i in range(100))
    subprocess.run(["ip", "-n", a, "-batch", "-"], input=batch, text=True, check=True)
    k = KernelRoutes(a)
    want = {
        "10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.2",
                               gateways=("192.0.2.2", "192.0.2.3")),
        "fd00:10:244::40/122": Route("fd00:10:244::40/122", "direct", "2001:db8::2"),
        "fd00:10:244::/122": Route("fd00:10:244::/122", "blackhole"),
        "10.244.9.7/32": Route("10.244.9.7/32", "direct", "192.0.2.2"),  # foreign has it
    }
    res = k.sync(want)
    assert len(res.added) == 3 and res.conflicts == ["10.244.9.7/32"], res
    assert "nexthop via 192.0.2.3" in proto_routes(a)
    again = k.sync(want)
    assert not again.changed and again.kept == 3, again
    assert set(k.routes()) == {"10.244.2.0/26", "fd00:10:244::40/122", "fd00:10:244::/122"}


def test_replace_and_removal_held_back(pair: tuple[str, str]) -> None:
    a, _ = pair
    _ip(a, "addr", "add", "192.0.2.3/24", "dev", "a0")
    k = KernelRoutes(a)
    k.sync({"10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.2"),
            "10.244.3.0/26": Route("10.244.3.0/26", "direct", "192.0.2.2")})
    res = k.sync({"10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.3")},
                 remove=False)
    assert res.replaced == ["10.244.2.0/26 via 192.0.2.3"]
    assert res.held == ["10.244.3.0/26"]
    assert "10.244.3.0/26 via 192.0.2.2" in proto_routes(a)
    res = k.sync({"10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.3")})
    assert res.removed == ["10.244.3.0/26"]
    assert "10.244.3.0" not in proto_routes(a)
    # a route the kernel refuses is reported, the others still go in
    res = k.sync({"10.244.4.0/26": Route("10.244.4.0/26", "direct", "203.0.113.9"),
                  "10.244.2.0/26": Route("10.244.2.0/26", "direct", "192.0.2.3")})
    assert "10.244.4.0/26" in res.failed and res.kept == 1


def test_apply_makes_the_changes_without_reading_the_table(pair: tuple[str, str]) -> None:
    """The quick path of a BGP update: adds, replaces, removes only what changed between two
    wanted sets; refuses (None) to add over a route it did not expect, foreign or ours."""
    a, _ = pair
    _ip(a, "addr", "add", "192.0.2.3/24", "dev", "a0")
    _ip(a, "route", "add", "10.9.1.0/24", "via", "192.0.2.2", "proto", "static")
    k = KernelRoutes(a)
    direct = Route("10.244.2.0/26", "direct", "192.0.2.2")
    hole = Route("10.244.1.0/26", "blackhole")
    res = k.apply({}, {direct.dst: direct, hole.dst: hole})
    assert res is not None
    assert sorted(res.added) == ["10.244.2.0/26 via 192.0.2.2", "blackhole 10.244.1.0/26"]
    ours = proto_routes(a)
    assert "10.244.2.0/26 via 192.0.2.2" in ours and "blackhole 10.244.1.0/26" in ours
    moved = Route(direct.dst, "direct", "192.0.2.3")
    res = k.apply({direct.dst: direct, hole.dst: hole}, {moved.dst: moved})
    assert res is not None
    assert res.replaced == ["10.244.2.0/26 via 192.0.2.3"] and res.removed == ["10.244.1.0/26"]
    assert [r.strip() for r in proto_routes(a).strip().splitlines()] == [
        "10.244.2.0/26 via 192.0.2.3 dev a0"]
    # nothing changed: no netlink at all, all kept
    same = k.apply({moved.dst: moved}, {moved.dst: moved})
    assert same is not None and not same.changed and same.kept == 1
    # a route to add where a foreign one is: refused, the foreign one untouched; then the
    # full sync reports the conflict
    clash = Route("10.9.1.0/24", "direct", "192.0.2.3")
    assert k.apply({moved.dst: moved}, {moved.dst: moved, clash.dst: clash}) is None
    assert "10.9.1.0/24 via 192.0.2.2 dev a0 proto static" in _ip(a, "route", "show")
    assert k.sync({moved.dst: moved, clash.dst: clash}).conflicts == ["10.9.1.0/24"]
    # one of ours left where the caller thought there was none (a stale "before"): refused
    _ip(a, "route", "add", "10.244.7.0/26", "via", "192.0.2.2", "proto", str(PROTO))
    stale = Route("10.244.7.0/26", "direct", "192.0.2.3")
    assert k.apply({moved.dst: moved}, {moved.dst: moved, stale.dst: stale}) is None


def test_vxlan_tunnel_carries_packets(pair: tuple[str, str]) -> None:
    """Two VTEPs: each routes the other's block via the VXLAN device, onlink, with static
    FDB and neighbour entries; a ping between VTEP addresses crosses the tunnel."""
    a, b = pair
    nodes = {a: ("192.0.2.1", "10.244.1.0", vtep_mac("a"), "10.244.1.0/26"),
             b: ("192.0.2.2", "10.244.2.0", vtep_mac("b"), "10.244.2.0/26")}
    for ns, (local, vtep, mac, _) in nodes.items():
        dev = VXLANDevice(ns)
        changes = dev.ensure(VXLANConfig(local=local, address=vtep, mac=mac))
        assert any("created" in c for c in changes)
        assert dev.ensure(VXLANConfig(local=local, address=vtep, mac=mac)) == []
        other = b if ns == a else a
        olocal, ovtep, omac, oblock = nodes[other]
        assert dev.sync_peers({other: VXLANPeer(other, ovtep, omac, olocal)})
        assert dev.entries() == ({ovtep: omac}, {omac: olocal})
        KernelRoutes(ns).sync({oblock: Route(oblock, "vxlan", ovtep, VXLAN_DEVICE)})
    details = _ip(a, "-d", "link", "show", VXLAN_DEVICE)
    assert "vxlan id 4096" in details and "dstport 4789" in details
    assert "nolearning" in details and "local 192.0.2.1" in details
    assert "mtu 1450" in details
    assert f"10.244.2.0/26 via 10.244.2.0 dev {VXLAN_DEVICE} onlink" in proto_routes(a)
    # capture on the underlay while pinging through the tunnel
    out = _tunnel_ping(a, b, 4789)
    assert "VXLAN" in out or "4789" in out
    # peers removed: entries go, the device stays; remove() deletes it
    dev = VXLANDevice(a)
    assert dev.sync_peers({})
    assert dev.entries() == ({}, {})
    assert dev.remove() and not dev.exists()


def _tunnel_ping(a: str, b: str, port: int) -> str:
    """Ping b's VTEP from a's over the tunnel, capturing on b's underlay; the capture."""
    # -T vxlan: tcpdump decodes VXLAN by itself on port 4789 only
    cap = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-n", "-i", "b0", "-c", "1",
                            "-T", "vxlan", "-l", f"udp dst port {port}"],
                           stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)
        p = netns.exec_in(a, ["ping", "-c", "2", "-W", "2", "-I", "10.244.1.0", "10.244.2.0"],
                          capture=True, timeout=15)
        assert p.returncode == 0, p.stdout + p.stderr
        out, _ = cap.communicate(timeout=10)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    return out


def test_vxlan_port_and_vni_change_remakes_the_device(pair: tuple[str, str]) -> None:
    """A VXLAN device's port and VNI cannot change in place: ensure() with other ones deletes
    the device and makes it anew (one device, no stale one); its entries and the routes
    through it went with the old device and sync_peers / the route sync put them back."""
    a, b = pair
    nodes = {a: ("192.0.2.1", "10.244.1.0", vtep_mac("a"), "10.244.1.0/26"),
             b: ("192.0.2.2", "10.244.2.0", vtep_mac("b"), "10.244.2.0/26")}

    def program(port: int, vni: int) -> dict[str, list[str]]:
        changes = {}
        for ns, (local, vtep, mac, _) in nodes.items():
            other = b if ns == a else a
            olocal, ovtep, omac, oblock = nodes[other]
            dev = VXLANDevice(ns)
            changes[ns] = dev.ensure(VXLANConfig(local=local, address=vtep, mac=mac,
                                                 port=port, vni=vni))
            changes[ns] += dev.sync_peers({other: VXLANPeer(other, ovtep, omac, olocal)})
            KernelRoutes(ns).sync({oblock: Route(oblock, "vxlan", ovtep, VXLAN_DEVICE)})
        return changes

    program(4790, 4097)
    details = _ip(a, "-d", "link", "show", VXLAN_DEVICE)
    assert "vxlan id 4097" in details and "dstport 4790" in details
    assert "VXLAN" in _tunnel_ping(a, b, 4790)
    # the same settings again: nothing to do
    assert VXLANDevice(a).ensure(VXLANConfig(local="192.0.2.1", address="10.244.1.0",
                                             mac=vtep_mac("a"), port=4790, vni=4097)) == []

    changes = program(4791, 4098)
    for ns in (a, b):
        assert any("deleted the device" in c and "port 4790" in c and "vni 4097" in c
                   for c in changes[ns]), changes[ns]
        assert any("created" in c and "port 4791" in c for c in changes[ns]), changes[ns]
        # the kernel dropped the old device's entries: sync_peers put them back
        assert any(c.startswith("fdb ") for c in changes[ns]), changes[ns]
        assert any(c.startswith("neigh ") for c in changes[ns]), changes[ns]
        devices = [link["ifname"] for link in json.loads(
            _ip(ns, "-d", "-j", "link", "show", "type", "vxlan"))]
        assert devices == [VXLAN_DEVICE]
        details = _ip(ns, "-d", "link", "show", VXLAN_DEVICE)
        assert "vxlan id 4098" in details and "dstport 4791" in details
        assert "nolearning" in details
    assert VXLANDevice(a).entries() == ({"10.244.2.0": vtep_mac("b")},
                                        {vtep_mac("b"): "192.0.2.2"})
    assert f"10.244.2.0/26 via 10.244.2.0 dev {VXLAN_DEVICE} onlink" in proto_routes(a)
    out = _tunnel_ping(a, b, 4791)
    assert "VXLAN" in out and "vni 4098" in out, out


def test_ipip_where_the_kernel_allows(pair: tuple[str, str]) -> None:
    a, _ = pair
    dev = IPIPDevice(a)
    why = dev.unavailable()
    if why is not None:
        skip_kernel(f"IPIP cannot be tested here: {why}")
    assert "address 10.244.1.1/32" in dev.ensure("10.244.1.1")
    assert "10.244.1.1/32" in _ip(a, "addr", "show", "dev", "tunl0")


def test_nat_table_is_ours_only(pair: tuple[str, str]) -> None:
    a, _ = pair
    other = "table inet tortie {\n chain c { type filter hook forward priority 0; }\n}\n"
    netns.run("ip", "netns", "exec", a, "nft", "-f", "-", input=other)

    async def go() -> None:
        nat = OutgoingNAT(a)
        pools = ["10.244.0.0/16", "10.99.0.0/16"]
        assert await nat.sync(["10.244.0.0/16"], pools, ["192.0.2.11", "192.0.2.12"])
        assert not await nat.sync(["10.244.0.0/16"], pools, ["192.0.2.11", "192.0.2.12"])
        listing = netns.run("ip", "netns", "exec", a, "nft", "list", "table", "ip",
                            "tortie-nat").stdout
        assert "10.244.0.0/16" in listing and "masquerade" in listing
        assert "daddr != @no-masq" in listing and "192.0.2.12" in listing
        assert await nat.sync(["10.244.0.0/16"], pools)  # no node known: an empty set
        assert await nat.sync([], ["10.244.0.0/16"])
        tables = netns.run("ip", "netns", "exec", a, "nft", "list", "tables").stdout
        assert "tortie-nat" not in tables and "inet tortie" in tables

    asyncio.run(go())
