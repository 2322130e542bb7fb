"""What :class:`cni.handler.CNIHandler` does to the kernel, behind one interface.

:class:`Dataplane` is the protocol: the few operations the handler needs on network
namespaces and pod veths.  :class:`NetlinkDataplane` (the default) does them with
:mod:`cni.netlink`; :class:`MemoryDataplane` keeps namespaces and veths in dicts, so the
handler's logic (validation, handles and names, rollback, DEL/GC decisions) is tested without
root.  The methods are synchronous (the handler runs them with ``asyncio.to_thread``) and
raise :mod:`cni.netlink`'s errors (:class:`~cni.netlink.NetnsGone`,
:class:`~cni.netlink.NotANetns`, :class:`~cni.netlink.NetlinkFailure`).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cni import netlink
from cni.netlink import (
    DEFAULT_MTU,
    HOST_MAC,
    NetlinkFailure,
    NetnsGone,
    NotANetns,
    PendingVeth,
    is_host_veth_name,
)

__all__ = ["Dataplane", "MemoryDataplane", "NetlinkDataplane"]


class Dataplane(Protocol):
    """The kernel operations of the CNI handler (see :mod:`cni.netlink` for each one's
    contract: the netlink implementation delegates to the function of the same name)."""

    def host_netns_identities(self) -> frozenset[tuple[int, int]]:
        """Identities of the namespaces no pod lives in (the daemon's, the machine's)."""
        ...

    def netns_identity(self, path: str) -> tuple[int, int]:
        """(device, inode) of the network namespace at ``path``;
        :class:`~cni.netlink.NetnsGone` / :class:`~cni.netlink.NotANetns`."""
        ...

    def netns_link_exists(self, netns_path: str, ifname: str) -> bool:
        """Whether ``ifname`` exists in the namespace (False if the namespace is gone)."""
        ...

    def underlay_mtu(self, address: str | None) -> int:
        """MTU of the interface carrying ``address`` (else of the default route's, else
        1500)."""
        ...

    def setup_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (),
                   mtu: int = DEFAULT_MTU, mac: str | None = None) -> tuple[int, str]:
        """Create and wire the pod's veth; (host ifindex, container MAC): ``mac`` when given
        (set when the pair is created), else the kernel's.  Leaves nothing behind when it
        fails."""
        ...

    def begin_veth(self, host_name: str, netns_path: str, ifname: str, mtu: int,
                   mac: str) -> PendingVeth | None:
        """The primary IPv4 veth without its addresses (made while IPAM chooses them); None,
        having made nothing, when a link of one of the names exists (then
        :meth:`setup_veth` decides).  Leaves nothing behind when it fails."""
        ...

    def finish_veth(self, pending: PendingVeth, ipv4: Sequence[str]) -> tuple[int, str]:
        """The addresses and routes of a veth :meth:`begin_veth` made; as
        :meth:`setup_veth` returns.  Deletes the veth when it fails."""
        ...

    def teardown_veth(self, host_name: str, peer_netns: str | None = None) -> bool:
        """Delete the host veth (only a veth; with ``peer_netns`` only if its peer is
        there); whether one was deleted."""
        ...

    def forget_pod_routing(self, netns_path: str, ifname: str) -> int:
        """Delete the source rules of the secondary interface ``ifname`` in the pod's
        namespace; how many (0 for the primary interface, or when the namespace is gone)."""
        ...

    def check_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (), mtu: int | None = None,
                   container_mac: str | None = None) -> list[str]:
        """What differs from what :meth:`setup_veth` makes; empty when all is well."""
        ...

    def host_veths(self, prefix: str) -> list[str]:
        """Names of the host veths of pods (named like
        :func:`~cni.netlink.host_veth_name`, peer in another namespace), sorted."""
        ...


class NetlinkDataplane:
    """The kernel, through :mod:`cni.netlink` (pyroute2)."""

    def host_netns_identities(self) -> frozenset[tuple[int, int]]:
        return netlink.host_netns_identities()

    def netns_identity(self, path: str) -> tuple[int, int]:
        return netlink.netns_identity(path)

    def netns_link_exists(self, netns_path: str, ifname: str) -> bool:
        return netlink.netns_link_exists(netns_path, ifname)

    def underlay_mtu(self, address: str | None) -> int:
        return netlink.underlay_mtu(address)

    def setup_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (),
                   mtu: int = DEFAULT_MTU, mac: str | None = None) -> tuple[int, str]:
        return netlink.setup_veth(host_name, netns_path, ifname, ipv4, ipv6, mtu, mac)

    def begin_veth(self, host_name: str, netns_path: str, ifname: str, mtu: int,
                   mac: str) -> PendingVeth | None:
        return netlink.begin_primary_veth(host_name, netns_path, ifname, mtu, mac)

    def finish_veth(self, pending: PendingVeth, ipv4: Sequence[str]) -> tuple[int, str]:
        return netlink.finish_primary_veth(pending, ipv4)

    def teardown_veth(self, host_name: str, peer_netns: str | None = None) -> bool:
        return netlink.teardown_veth(host_name, peer_netns)

    def forget_pod_routing(self, netns_path: str, ifname: str) -> int:
        return netlink.forget_pod_routing(netns_path, ifname)

    def check_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (), mtu: int | None = None,
                   container_mac: str | None = None) -> list[str]:
        return netlink.check_veth(host_name, netns_path, ifname, ipv4, ipv6, mtu,
                                  container_mac)

    def host_veths(self, prefix: str) -> list[str]:
        return netlink.host_veths(prefix)


@dataclass
class Link:
    """One link of a :class:`MemoryDataplane`: a veth end, or a link someone else made."""

    name: str
    netns: str | None  # path of its namespace; None: the host's
    kind: str = "veth"
    peer: tuple[str | None, str] | None = None  # (netns, name) of the other end
    mac: str = ""
    mtu: int = DEFAULT_MTU
    addresses: list[str] = field(default_factory=list)  # the container end's /32, /128


class MemoryDataplane:
    """Namespaces and veths in dicts, with :mod:`cni.netlink`'s outcomes and errors.

    Namespaces are registered by path (:meth:`add_netns`); the host's is
    :data:`HOST_NETNS`.  ``links`` maps (netns path or None for the host, name) to a
    :class:`Link`; :meth:`add_foreign_link` puts there what Tortie did not make.  ``calls``
    records every operation that changes something (``("setup", host_name)``,
    ``("teardown", host_name)``); ``fail_setup`` makes the next :meth:`setup_veth` raise.
    """

    HOST_NETNS = "/proc/1/ns/net"

    def __init__(self, mtu: int = DEFAULT_MTU) -> None:
        self.mtu = mtu
        self.namespaces: dict[str, tuple[int, int]] = {self.HOST_NETNS: (4, 1)}
        self.not_namespaces: set[str] = set()
        self.links: dict[tuple[str | None, str], Link] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_setup: Exception | None = None
        self.fail_finish: Exception | None = None  # makes the next finish_veth raise
        self._lock = threading.Lock()  # the handler calls from worker threads
        self._next = 2

    # --- the test's side ---------------------------------------------------------------

    def add_netns(self, path: str) -> str:
        """Register a pod namespace at ``path`` (returned)."""
        with self._lock:
            self._next += 1
            self.namespaces[path] = (4, self._next)
        return path

    def remove_netns(self, path: str) -> None:
        """The namespace is gone, and the veth ends in it (so their peers) with it."""
        with self._lock:
            self.namespaces.pop(path, None)
            for key, link in list(self.links.items()):
                if link.netns == path:
                    del self.links[key]
                    if link.peer is not None:
                        self.links.pop(link.peer, None)

    def add_foreign_link(self, name: str, netns: str | None = None, kind: str = "dummy",
                         peer: tuple[str | None, str] | None = None) -> None:
        """A link Tortie did not make (with ``peer``: a veth pair, both ends added)."""
        with self._lock:
            self.links[(netns, name)] = Link(name, netns, kind, peer)
            if peer is not None:
                self.links[peer] = Link(peer[1], peer[0], kind, (netns, name))

    def veth(self, host_name: str) -> Link | None:
        """The host end of the pod veth ``host_name``, if there is one."""
        link = self.links.get((None, host_name))
        return link if link is not None and link.kind == "veth" else None

    # --- Dataplane ------------------------------------------------------------------------

    def host_netns_identities(self) -> frozenset[tuple[int, int]]:
        return frozenset({self.namespaces[self.HOST_NETNS]})

    def netns_identity(self, path: str) -> tuple[int, int]:
        with self._lock:
            if path in self.not_namespaces:
                raise NotANetns(f"{path} is not a network namespace")
            identity = self.namespaces.get(path)
        if identity is None:
            raise NetnsGone(f"network namespace {path} does not exist")
        return identity

    def netns_link_exists(self, netns_path: str, ifname: str) -> bool:
        with self._lock:
            return netns_path in self.namespaces and (netns_path, ifname) in self.links

    def underlay_mtu(self, address: str | None) -> int:
        return self.mtu

    def setup_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (),
                   mtu: int = DEFAULT_MTU, mac: str | None = None) -> tuple[int, str]:
        self.netns_identity(netns_path)
        with self._lock:
            self.calls.append(("setup", host_name))
            if self.fail_setup is not None:
                failure, self.fail_setup = self.fail_setup, None
                raise failure
            stale = self.links.get((None, host_name))
            if stale is not None:
                if stale.kind != "veth":
                    raise NetlinkFailure(f"cannot create veth {host_name}: a link of that "
                                         "name exists and is not a veth")
                self._delete(stale)
            if (netns_path, ifname) in self.links:
                raise NetlinkFailure(f"cannot create veth {host_name}: {ifname} already "
                                     f"exists in {netns_path}")
            self._next += 1
            index = self._next
            mac = mac or f"0a:58:00:00:{index >> 8 & 0xff:02x}:{index & 0xff:02x}"
            addresses = [str(ipaddress.ip_interface(a).ip) for a in [*ipv4, *ipv6]]
            self.links[(None, host_name)] = Link(host_name, None, "veth",
                                                 (netns_path, ifname), HOST_MAC, mtu)
            self.links[(netns_path, ifname)] = Link(ifname, netns_path, "veth",
                                                    (None, host_name), mac, mtu, addresses)
        return index, mac

    def begin_veth(self, host_name: str, netns_path: str, ifname: str, mtu: int,
                   mac: str) -> PendingVeth | None:
        self.netns_identity(netns_path)
        with self._lock:
            if (None, host_name) in self.links or (netns_path, ifname) in self.links:
                return None  # as the kernel's EEXIST: setup_veth decides
        index, _ = self.setup_veth(host_name, netns_path, ifname, mtu=mtu, mac=mac)
        return PendingVeth(host_name, netns_path, ifname, index)

    def finish_veth(self, pending: PendingVeth, ipv4: Sequence[str]) -> tuple[int, str]:
        with self._lock:
            link = self.links.get((pending.netns_path, pending.ifname))
            failure, self.fail_finish = self.fail_finish, None
            if failure is not None or link is None:
                host = self.links.get((None, pending.host_name))
                if host is not None:
                    self._delete(host)
                raise failure or NetlinkFailure(
                    f"{pending.ifname} did not appear in the pod's namespace")
            link.addresses[:] = [str(ipaddress.ip_interface(a).ip) for a in ipv4]
            return pending.host_index, link.mac or ""

    def _delete(self, link: Link) -> None:
        self.links.pop((link.netns, link.name), None)
        if link.peer is not None:
            self.links.pop(link.peer, None)

    def teardown_veth(self, host_name: str, peer_netns: str | None = None) -> bool:
        with self._lock:
            if peer_netns is not None and peer_netns not in self.namespaces:
                return False
            link = self.links.get((None, host_name))
            if link is None or link.kind != "veth":
                return False
            if peer_netns is not None and (link.peer is None or link.peer[0] != peer_netns):
                return False
            self.calls.append(("teardown", host_name))
            self._delete(link)
            return True

    def forget_pod_routing(self, netns_path: str, ifname: str) -> int:
        with self._lock:
            if netlink.is_primary(ifname) or netns_path not in self.namespaces:
                return 0
            self.calls.append(("forget_routing", f"{netns_path}:{ifname}"))
            return 1

    def check_veth(self, host_name: str, netns_path: str, ifname: str,
                   ipv4: Sequence[str] = (), ipv6: Sequence[str] = (), mtu: int | None = None,
                   container_mac: str | None = None) -> list[str]:
        problems: list[str] = []
        with self._lock:
            host = self.links.get((None, host_name))
            if host is None:
                problems.append(f"host interface {host_name} does not exist")
            elif host.kind != "veth":
                problems.append(f"host interface {host_name} is not a veth")
            elif host.peer is None or host.peer[0] != netns_path:
                problems.append(f"the peer of {host_name} is not in {netns_path}")
            elif mtu and host.mtu != mtu:
                problems.append(f"host interface {host_name} has MTU {host.mtu}, "
                                f"expected {mtu}")
            if netns_path not in self.namespaces:
                problems.append(f"network namespace {netns_path} does not exist")
                return problems
            pod = self.links.get((netns_path, ifname))
            if pod is None:
                problems.append(f"{ifname} does not exist in {netns_path}")
                return problems
            if pod.peer != (None, host_name):
                problems.append(f"{ifname} in {netns_path} is not the peer of {host_name}")
            if container_mac and pod.mac.lower() != container_mac.lower():
                problems.append(f"{ifname} has MAC {pod.mac}, expected {container_mac}")
            if mtu and pod.mtu != mtu:
                problems.append(f"{ifname} has MTU {pod.mtu}, expected {mtu}")
            want = [str(ipaddress.ip_interface(a).ip) for a in [*ipv4, *ipv6]]
            for a in sorted(set(want) - set(pod.addresses)):
                problems.append(f"address {a} is missing on {ifname}")
            for a in sorted(set(pod.addresses) - set(want)):
                problems.append(f"unexpected address {a} on {ifname}")
        return problems

    def host_veths(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(link.name for (netns, name), link in self.links.items()
                          if netns is None and link.kind == "veth"
                          and is_host_veth_name(prefix, name)
                          and link.peer is not None and link.peer[0] is not None)
