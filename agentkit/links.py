"""The underlay interface's MTU, read with netlink in the calling thread's namespace."""

from __future__ import annotations

from pyroute2 import IPRoute

AF_INET = 2
AF_INET6 = 10
RT_TABLE_MAIN = 254


def underlay_mtu(address: str | None) -> tuple[int, str] | None:
    """(MTU, name) of the interface that carries ``address`` (an IPv4 or IPv6 address,
    optionally with ``/prefixlen``); without one, of the interface of the default IPv4 route;
    None when there is neither."""
    want = address.split("/", 1)[0] if address else None
    with IPRoute() as ipr:
        if want:
            for a in ipr.get_addr(family=AF_INET6 if ":" in want else AF_INET):
                if a.get_attr("IFA_ADDRESS") == want or a.get_attr("IFA_LOCAL") == want:
                    found = _mtu_of(ipr, a["index"])
                    if found is not None:
                        return found
        for route in ipr.get_routes(family=AF_INET, table=RT_TABLE_MAIN):
            if route["dst_len"] == 0 and route.get_attr("RTA_OIF"):
                found = _mtu_of(ipr, route.get_attr("RTA_OIF"))
                if found is not None:
                    return found
    return None


def _mtu_of(ipr: IPRoute, index: int) -> tuple[int, str] | None:
    links = ipr.get_links(index)
    if not links or not links[0].get_attr("IFLA_MTU"):
        return None
    return int(links[0].get_attr("IFLA_MTU")), str(links[0].get_attr("IFLA_IFNAME") or "")
