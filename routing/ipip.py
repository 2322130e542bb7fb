"""The IPIP tunnel device ``tunl0`` (pyroute2), as Calico uses it.

``tunl0`` is the ipip module's fallback device: it exists in every namespace once the module
is loaded, and receives every IPIP packet whose endpoints match no other tunnel.  The agent
brings it up with the node's IPIP tunnel address (``spec.bgp.ipv4IPIPTunnelAddr``, /32) and
MTU = underlay - 20 (or FelixConfiguration ``ipipMTU``), and routes remote blocks
``via <remote node address> dev tunl0 onlink`` (routing/kernel.py).  This machine's kernel
has no ipip module: :func:`available` says so and the agent then reports IPIP routes as
failed (the tests skip with that reason).
"""

from __future__ import annotations

import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agentkit.links import underlay_mtu
from datastore.mtu import DEFAULT_UNDERLAY_MTU, IPIP, tunnel_mtu
from ipam.handles import IPIP_HANDLE_PREFIX
from routing.desired import IPIP_DEVICE
from routing.kernel import call_in_netns

log = logging.getLogger("tortie.routing")

AF_INET = 2


class IPIPUnavailable(RuntimeError):
    pass


class IPIPDevice:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=IPIP_DEVICE)
        if found:
            return int(found[0])
        try:  # loads the module where the kernel allows it; tunl0 then appears
            ipr.link("add", ifname="tortie-ipip0", kind="ipip")
            ipr.link("del", ifname="tortie-ipip0")
        except NetlinkError as e:
            raise IPIPUnavailable(f"the kernel has no ipip support ({e})") from None
        found = ipr.link_lookup(ifname=IPIP_DEVICE)
        return int(found[0]) if found else None

    def unavailable(self) -> str | None:
        """Why IPIP cannot work here (None: it can)."""
        return call_in_netns(self.netns, self._unavailable)

    def _unavailable(self) -> str | None:
        try:
            with IPRoute() as ipr:
                return None if self._index(ipr) is not None else f"no {IPIP_DEVICE} device"
        except IPIPUnavailable as e:
            return str(e)

    def available(self) -> bool:
        return self.unavailable() is None

    def ensure(self, address: str | None, local: str | None = None,
               mtu: int | None = None) -> list[str]:
        """Bring tunl0 up with ``address``/32 and ``mtu`` (None: the MTU of the interface
        carrying ``local`` less IPIP's overhead); IPIPUnavailable without kernel support."""
        return call_in_netns(self.netns, lambda: self._ensure(address, local, mtu))

    def _ensure(self, address: str | None, local: str | None, mtu: int | None) -> list[str]:
        changes: list[str] = []
        if not mtu:
            found = underlay_mtu(local)
            mtu = tunnel_mtu(found[0] if found else DEFAULT_UNDERLAY_MTU, IPIP)
        with IPRoute() as ipr:
            idx = self._index(ipr)
            if idx is None:
                raise IPIPUnavailable(f"{IPIP_DEVICE} does not exist")
            link = ipr.get_links(idx)[0]
            if link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=idx, mtu=mtu)
                changes.append(f"mtu {mtu}")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(family=AF_INET, index=idx)}
            want = {(address, 32)} if address else set()
            for addr, plen in have - want:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)
                changes.append(f"removed address {addr}/{plen}")
            for addr, plen in want - have:
                ipr.addr("add", index=idx, address=addr, prefixlen=plen)
                changes.append(f"address {addr}/{plen}")
            if not link["flags"] & 1:
                ipr.link("set", index=idx, state="up")
                changes.append("up")
        return changes


def ipip_handle(node: str) -> str:
    """The IPAM handle of a node's IPIP tunnel address (Calico's name for it)."""
    return IPIP_HANDLE_PREFIX + node
