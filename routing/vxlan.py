"""The VXLAN tunnel device ``vxlan.tortie`` and its static forwarding state (pyroute2).

As Calico's ``vxlan.calico``: VNI 4096 and UDP port 4789 unless FelixConfiguration
``vxlanVNI`` / ``vxlanPort`` say otherwise (datastore/vxlan_settings.py), ``local`` = the
node's underlay address, no learning; the node's VTEP address (allocated from its IPAM
block, recorded in the Node as ``spec.ipv4VXLANTunnelAddr``) is the device's only address
(/32) and its MAC
(``spec.vxlanTunnelMACAddr``) is stable per node.  For each remote node the agent keeps

    neighbour  <remote VTEP address> lladdr <remote MAC>  nud permanent
    fdb        <remote MAC> dst <remote underlay address> self permanent

and routes remote blocks ``via <remote VTEP> dev vxlan.tortie onlink`` (routing/kernel.py).

The kernel cannot change a VXLAN device's VNI or port in place (``ip link set ... type vxlan
dstport`` is refused): a device whose VNI, port or ``local`` differ from the configured ones
is deleted and made anew, which takes its neighbour and FDB entries and the routes through
it along; :meth:`VXLANDevice.sync_peers` and the routing agent's route sync (the same
reconcile) put them back.

IPv6 pools get their own device, ``vxlan-v6.tortie`` (Calico's ``vxlan-v6.calico``): the
same VNI and port, ``local`` = the node's IPv6 underlay address, the VTEP address
``spec.ipv6VXLANTunnelAddr`` (/128, no duplicate address detection) and MAC
``spec.vxlanTunnelMACAddrV6``, neighbour and FDB entries of IPv6 addresses.  Its MTU is
FelixConfiguration ``vxlanMTUV6``, else the underlay's less 70 (outer IPv6 header).

Everything here touches only the device it is made for.  Blocking: use worker threads.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agentkit.links import underlay_mtu
from datastore.mtu import DEFAULT_UNDERLAY_MTU, VXLAN, VXLAN6, tunnel_mtu
from datastore.vxlan_settings import VXLAN_PORT, VXLAN_VNI
from ipam.handles import VXLAN6_HANDLE_PREFIX, VXLAN_HANDLE_PREFIX
from routing.desired import VXLAN_DEVICE, VXLAN_DEVICE_V6, VXLANPeer
from routing.kernel import call_in_netns

log = logging.getLogger("tortie.routing")

AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class VXLANConfig:
    local: str         # this node's underlay address
    address: str       # this node's VTEP address
    mac: str
    #: None: the MTU of the interface carrying ``local`` less VXLAN's overhead
    mtu: int | None = None
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT  # UDP, the destination port and the one the device listens on


def _info(link: Any) -> tuple[str | None, Any]:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


class VXLANDevice:
    """One VXLAN device: ``version`` 4 (``vxlan.tortie``, IPv4 underlay and VTEP address) or
    6 (``vxlan-v6.tortie``, IPv6 ones)."""

    def __init__(self, netns: str | None = None, name: str | None = None,
                 version: int = 4) -> None:
        if version not in (4, 6):
            raise ValueError(f"version must be 4 or 6, not {version!r}")
        self.netns = netns
        self.version = version
        self.name = name or (VXLAN_DEVICE_V6 if version == 6 else VXLAN_DEVICE)
        self.family = AF_INET6 if version == 6 else AF_INET
        self.prefixlen = 128 if version == 6 else 32

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.name)
        return int(found[0]) if found else None

    def ensure(self, cfg: VXLANConfig) -> list[str]:
        return call_in_netns(self.netns, lambda: self._ensure(cfg))

    def _ensure(self, cfg: VXLANConfig) -> list[str]:
        """Create or fix the device; returns what it changed (empty: it was right)."""
        changes: list[str] = []
        found = underlay_mtu(cfg.local)
        mtu = cfg.mtu or tunnel_mtu(found[0] if found else DEFAULT_UNDERLAY_MTU,
                                    VXLAN6 if self.version == 6 else VXLAN)
        local_attr = "IFLA_VXLAN_LOCAL6" if self.version == 6 else "IFLA_VXLAN_LOCAL"
        with IPRoute() as ipr:
            idx = self._index(ipr)
            if idx is not None:
                link = ipr.get_links(idx)[0]
                kind, data = _info(link)
                ok = (kind == "vxlan" and data is not None
                      and data.get_attr("IFLA_VXLAN_ID") == cfg.vni
                      and data.get_attr("IFLA_VXLAN_PORT") == cfg.port
                      and _same_ip(data.get_attr(local_attr), cfg.local))
                if not ok:
                    ipr.link("del", index=idx)
                    was = (f"vni {data.get_attr('IFLA_VXLAN_ID')}, "
                           f"port {data.get_attr('IFLA_VXLAN_PORT')}, "
                           f"local {data.get_attr(local_attr)}"
                           if kind == "vxlan" and data is not None else f"kind {kind}")
                    changes.append(f"deleted the device with other settings ({was})")
                    idx = None
            if idx is None:
                local = {"vxlan_local6" if self.version == 6 else "vxlan_local": cfg.local}
                ipr.link("add", ifname=self.name, kind="vxlan", vxlan_id=cfg.vni,
                         vxlan_port=cfg.port, vxlan_learning=0, address=cfg.mac, mtu=mtu,
                         **local)
                idx = self._index(ipr)
                assert idx is not None
                changes.append(f"created {self.name} (vni {cfg.vni}, port {cfg.port}, "
                               f"local {cfg.local})")
            link = ipr.get_links(idx)[0]
            if (link.get_attr("IFLA_ADDRESS") or "").lower() != cfg.mac.lower():
                ipr.link("set", index=idx, address=cfg.mac)
                changes.append(f"mac {cfg.mac}")
            if link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=idx, mtu=mtu)
                changes.append(f"mtu {mtu}")
            # the kernel's own IPv6 link-local address stays
            have = {(str(ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))), a["prefixlen"])
                    for a in ipr.get_addr(family=self.family, index=idx)
                    if not ipaddress.ip_address(a.get_attr("IFA_ADDRESS")).is_link_local}
            want = (str(ipaddress.ip_address(cfg.address)), self.prefixlen)
            for addr, plen in have - {want}:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)
                changes.append(f"removed address {addr}/{plen}")
            if want not in have:
                extra = {"flags": IFA_F_NODAD} if self.version == 6 else {}
                ipr.addr("add", index=idx, address=cfg.address, prefixlen=self.prefixlen,
                         **extra)
                changes.append(f"address {cfg.address}/{self.prefixlen}")
            if not link["flags"] & 1:  # IFF_UP
                ipr.link("set", index=idx, state="up")
                changes.append("up")
        return changes

    def remove(self) -> bool:
        return call_in_netns(self.netns, self._remove)

    def _remove(self) -> bool:
        with IPRoute() as ipr:
            idx = self._index(ipr)
            if idx is None:
                return False
            ipr.link("del", index=idx)
            return True

    def exists(self) -> bool:
        return call_in_netns(self.netns, self._exists)

    def _exists(self) -> bool:
        with IPRoute() as ipr:
            return self._index(ipr) is not None

    def entries(self) -> tuple[dict[str, str], dict[str, str]]:
        return call_in_netns(self.netns, self._entries_here)

    def _entries_here(self) -> tuple[dict[str, str], dict[str, str]]:
        """(neighbours VTEP address -> MAC, fdb MAC -> underlay address) on the device."""
        with IPRoute() as ipr:
            idx = self._index(ipr)
            if idx is None:
                return {}, {}
            return self._entries(ipr, idx)

    def _entries(self, ipr: IPRoute, idx: int) -> tuple[dict[str, str], dict[str, str]]:
        neigh: dict[str, str] = {}
        for n in ipr.get_neighbours(ifindex=idx, family=self.family):
            if n["ifindex"] == idx and n["state"] & NUD_PERMANENT:
                neigh[_canonical(n.get_attr("NDA_DST"))] = (
                    n.get_attr("NDA_LLADDR") or "").lower()
        fdb: dict[str, str] = {}
        for n in ipr.get_neighbours(ifindex=idx, family=AF_BRIDGE):
            dst = n.get_attr("NDA_DST")
            mac = (n.get_attr("NDA_LLADDR") or "").lower()
            if n["ifindex"] == idx and dst and mac and mac != "00:00:00:00:00:00":
                fdb[mac] = _canonical(dst)
        return neigh, fdb

    def sync_peers(self, peers: Mapping[str, VXLANPeer]) -> list[str]:
        return call_in_netns(self.netns, lambda: self._sync_peers(peers))

    def _sync_peers(self, peers: Mapping[str, VXLANPeer]) -> list[str]:
        """Make the device's neighbour and FDB entries equal ``peers``; returns changes."""
        changes: list[str] = []
        with IPRoute() as ipr:
            idx = self._index(ipr)
            if idx is None:
                return changes
            neigh, fdb = self._entries(ipr, idx)
            want_neigh = {_canonical(p.vtep_address): p.mac.lower() for p in peers.values()}
            want_fdb = {p.mac.lower(): _canonical(p.underlay) for p in peers.values()}
            for mac, dst in want_fdb.items():
                if fdb.get(mac) != dst:
                    ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=dst, state=NUD_PERMANENT,
                            flags=NTF_SELF)
                    changes.append(f"fdb {mac} dst {dst}")
            for addr, mac in want_neigh.items():
                if neigh.get(addr) != mac:
                    ipr.neigh("replace", ifindex=idx, dst=addr, lladdr=mac,
                              state=NUD_PERMANENT, family=self.family)
                    changes.append(f"neigh {addr} lladdr {mac}")
            for addr, mac in neigh.items():
                if addr not in want_neigh:
                    _ignore_gone(ipr.neigh, "del", ifindex=idx, dst=addr, lladdr=mac,
                                 family=self.family)
                    changes.append(f"removed neigh {addr}")
            for mac, dst in fdb.items():
                if mac not in want_fdb:
                    _ignore_gone(ipr.fdb, "del", ifindex=idx, lladdr=mac, dst=dst, flags=NTF_SELF)
                    changes.append(f"removed fdb {mac}")
        return changes


def _ignore_gone(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise


def _canonical(address: str) -> str:
    """An IP address as :mod:`ipaddress` writes it (IPv6 in its compressed form)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _same_ip(a: str | None, b: str) -> bool:
    return a is not None and _canonical(a) == _canonical(b)


def vtep_handle(node: str, version: int = 4) -> str:
    """The IPAM handle of a node's VTEP address of one address family (Calico's names:
    ``vxlan-tunnel-addr-<node>``, ``vxlan-v6-tunnel-addr-<node>``)."""
    return (VXLAN6_HANDLE_PREFIX if version == 6 else VXLAN_HANDLE_PREFIX) + node
