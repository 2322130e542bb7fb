"""N network namespaces on one bridge: the small underlay the BGP tests and the BGP bench
use (ExaBGP / BIRD speakers that need no etcd and no tortie-node).

    netns <prefix>hub    bridge br0, no address
    netns <prefix>N      eth0 = <subnet>.(10+N)/24 on br0

Use as a context manager; ``close()`` deletes every namespace it made (processes still in
them keep running, so stop those first).
"""

from __future__ import annotations

import ipaddress
from types import TracebackType

from lab import netns


class BridgeNet:
    def __init__(self, prefix: str, subnet: str = "192.0.2.0/24") -> None:
        self.prefix = prefix
        self.net = ipaddress.ip_network(subnet)
        self.hub = f"{prefix}hub"
        self.members: dict[str, str] = {}   # netns name -> address
        self._made: list[str] = []

    def __enter__(self) -> BridgeNet:
        netns.add_netns(self.hub)
        self._made.append(self.hub)
        netns.ip("link", "add", "br0", "type", "bridge", ns=self.hub)
        netns.ip("link", "set", "br0", "up", ns=self.hub)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add(self, index: int, *, forwarding: bool = False) -> tuple[str, str]:
        """Namespace number ``index`` with eth0 on the bridge; returns (netns, address)."""
        name = f"{self.prefix}{index}"
        address = str(self.net.network_address + 10 + index)
        netns.add_netns(name, forwarding=forwarding)
        self._made.append(name)
        port = f"p{index}"
        netns.ip("link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port,
                 "netns", self.hub)
        netns.ip("link", "set", port, "master", "br0", "up", ns=self.hub)
        netns.ip("addr", "add", f"{address}/{self.net.prefixlen}", "dev", "eth0", ns=name)
        netns.ip("link", "set", "eth0", "up", ns=name)
        self.members[name] = address
        return name, address

    def close(self) -> None:
        for name in reversed(self._made):
            netns.del_netns(name)
        self._made.clear()
