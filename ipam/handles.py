"""Names of IPAM handles: which allocations are whose.

A handle names what holds an allocation: a container (the CNI handler's
``tortie.<containerID>``) or a node's tunnel address (Calico's ``vxlan-tunnel-addr-<node>`` /
``ipip-tunnel-addr-<node>``, allocated by the routing agent).  The IPAM garbage collector
reads these prefixes to tell a pod's leaked address from a node's tunnel address.
"""

from __future__ import annotations

#: handle of a container's addresses: prefix + container ID
WORKLOAD_HANDLE_PREFIX = "tortie."
#: handles of the nodes' tunnel addresses (Calico's names): prefix + node name
VXLAN_HANDLE_PREFIX = "vxlan-tunnel-addr-"
IPIP_HANDLE_PREFIX = "ipip-tunnel-addr-"
TUNNEL_HANDLE_PREFIXES = (VXLAN_HANDLE_PREFIX, IPIP_HANDLE_PREFIX)


def tunnel_handles(node: str) -> tuple[str, ...]:
    """The handles of ``node``'s tunnel addresses (VXLAN, IPIP)."""
    return tuple(prefix + node for prefix in TUNNEL_HANDLE_PREFIXES)

