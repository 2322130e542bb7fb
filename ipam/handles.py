"""Names of IPAM handles: which allocations are whose.

A handle names what holds an allocation: one attachment of a container (the CNI handler's
``tortie.<containerID>`` for the pod's primary interface, ``tortie.<containerID>.<ifname>``
for any other interface, as Calico names them) or a node's tunnel address (Calico's
``vxlan-tunnel-addr-<node>`` / ``vxlan-v6-tunnel-addr-<node>`` / ``ipip-tunnel-addr-<node>``,
allocated by the routing agent).
The IPAM garbage collectors read these names to tell a pod's leaked address from a node's
tunnel address, and which attachment of which container an address belongs to.

The primary interface keeps the short form so that the handles of pods set up before
interfaces other than ``eth0`` existed stay valid.  Container IDs and interface names may
both contain ``.``, so a handle alone can be read two ways when the container ID has one:
:func:`parse_workload_handle` takes the container ID as a hint when the caller knows it
(the allocation's ``container`` attribute), and otherwise reads the first ``.`` as the
separator (runtimes' container IDs are hex digits).  Either way
``workload_handle(*parse_workload_handle(h)) == h``.
"""

from __future__ import annotations

#: handle of a container's addresses: prefix + container ID (+ "." + interface)
WORKLOAD_HANDLE_PREFIX = "tortie."
#: the pod's primary interface: its handle (and host veth name) has no interface part
PRIMARY_IFNAME = "eth0"
#: handles of the nodes' tunnel addresses (Calico's names): prefix + node name
VXLAN_HANDLE_PREFIX = "vxlan-tunnel-addr-"
VXLAN6_HANDLE_PREFIX = "vxlan-v6-tunnel-addr-"
IPIP_HANDLE_PREFIX = "ipip-tunnel-addr-"
TUNNEL_HANDLE_PREFIXES = (VXLAN_HANDLE_PREFIX, VXLAN6_HANDLE_PREFIX, IPIP_HANDLE_PREFIX)


def workload_handle(container_id: str, ifname: str = PRIMARY_IFNAME) -> str:
    """The handle of one attachment's addresses: ``tortie.<containerID>`` for the primary
    interface, ``tortie.<containerID>.<ifname>`` for any other."""
    if not container_id:
        raise ValueError("a workload handle needs a container ID")
    if not ifname or ifname == PRIMARY_IFNAME:
        return WORKLOAD_HANDLE_PREFIX + container_id
    return f"{WORKLOAD_HANDLE_PREFIX}{container_id}.{ifname}"


def is_workload_handle(handle: str) -> bool:
    """Whether ``handle`` names a container's addresses (either form)."""
    return handle.startswith(WORKLOAD_HANDLE_PREFIX) and len(handle) > len(
        WORKLOAD_HANDLE_PREFIX)


def parse_workload_handle(handle: str,
                          container_id: str | None = None) -> tuple[str, str] | None:
    """``(containerID, ifname)`` of a workload handle; None for any other handle (and for
    one that is not ``container_id``'s when that is given).

    With ``container_id`` the handle is read as that container's (``tortie.<id>`` is its
    primary interface, ``tortie.<id>.<ifname>`` another); without, the first ``.`` after
    the prefix separates the two parts, unless what follows it is the primary interface's
    name (no handle has that form: the whole rest is then the container ID).
    """
    if not is_workload_handle(handle):
        return None
    rest = handle[len(WORKLOAD_HANDLE_PREFIX):]
    if container_id is not None:
        if rest == container_id:
            return container_id, PRIMARY_IFNAME
        tail = rest[len(container_id) + 1:]
        if rest.startswith(container_id + ".") and tail and tail != PRIMARY_IFNAME:
            return container_id, tail
        return None
    cid, dot, ifname = rest.partition(".")
    if not dot or not cid or not ifname or ifname == PRIMARY_IFNAME:
        return rest, PRIMARY_IFNAME
    return cid, ifname


def tunnel_handles(node: str) -> tuple[str, ...]:
    """The handles of ``node``'s tunnel addresses (VXLAN, VXLAN over IPv6, IPIP)."""
    return tuple(prefix + node for prefix in TUNNEL_HANDLE_PREFIXES)

