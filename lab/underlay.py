"""The lab's underlay: K subnets joined by the fabric namespace, which routes between them.

    subnet 0  192.0.2.0/24     bridge br0 in the fabric, gateway 192.0.2.1 (also etcd)
    subnet 1  198.51.100.0/24  bridge br1, gateway 198.51.100.1
    subnet 2  203.0.113.0/24   bridge br2, gateway 203.0.113.1

Only the three TEST-NETs of RFC 5737, so at most 3 subnets; they exist only inside the
lab's namespaces.  The fabric forwards between its bridges (it knows every subnet as a
connected route) and knows nothing else: pod addresses are not routed there, so two pods on
different subnets reach each other only through Tortie (VXLAN / IPIP, or a BGP-speaking
router).  Node N of ``nodes`` goes to subnet ``(N - 1) * K // nodes`` (consecutive nodes
share a subnet: 4 nodes over 2 subnets -> node1, node2 | node3, node4) with address
``<subnet>.(10 + N)`` and its default route via the subnet's gateway.

Dual stack (``--dual-stack``): every subnet also has an IPv6 /64 from the documentation
prefix 2001:db8::/32 (RFC 3849), ``2001:db8:0:<k+1>::/64``, gateway ``::1`` in the fabric,
node N at ``::<10 + N>`` (hex digits of the same number as the IPv4 host part), and the lab
gets an IPv6 pool from the unique-local range (:data:`DEFAULT_POOL6_CIDR`, /122 blocks).
The IPv6 pool follows ``--encap vxlan`` as the IPv4 pool does (:func:`pool6_modes`: its
traffic then runs through ``vxlan-v6.tortie`` between the nodes' IPv6 addresses); with
``none`` or ``ipip`` (no IPIP for IPv6) it is routed directly, and crosses subnets only
where the fabric routes it: the fabric knows no pod prefix.

Encapsulation of the lab's default pool (``--encap``): ``none`` -> no tunnel; ``vxlan`` /
``ipip`` -> ``vxlanMode`` / ``ipipMode`` = ``CrossSubnet`` when there is more than one
subnet (traffic inside a subnet stays unencapsulated) and ``Always`` with one subnet (there
would be nothing to encapsulate otherwise).  Default: ``none`` with one subnet, ``vxlan``
with more (cross-subnet pods are unreachable without a tunnel).
"""

from __future__ import annotations

import ipaddress

SUBNETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
SUBNETS6 = ("2001:db8:0:1::/64", "2001:db8:0:2::/64", "2001:db8:0:3::/64")
DEFAULT_POOL6_CIDR = "fd00:10:244::/56"
#: The tortie plugin's ipam settings in a dual-stack lab, whoever runs the CNI chain (the
#: lab itself or a node's containerd): an address of each family for every pod.
DUAL_STACK_IPAM = {"assign_ipv4": "true", "assign_ipv6": "true"}
ENCAPS = ("none", "vxlan", "ipip")


class UnderlayError(ValueError):
    pass


def check(subnets: int, encap: str | None) -> str:
    """Validate ``--subnets`` / ``--encap``; returns the encapsulation to use."""
    if not 1 <= subnets <= len(SUBNETS):
        raise UnderlayError(f"--subnets must be 1-{len(SUBNETS)} (the RFC 5737 TEST-NETs)")
    if encap is None:
        return "none" if subnets == 1 else "vxlan"
    if encap not in ENCAPS:
        raise UnderlayError(f"--encap must be one of {', '.join(ENCAPS)}")
    return encap


def subnet(k: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(SUBNETS[k])


def bridge(k: int) -> str:
    return f"br{k}"


def gateway(k: int) -> str:
    return str(subnet(k).network_address + 1)


def subnet6(k: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(SUBNETS6[k])


def gateway6(k: int) -> str:
    return str(subnet6(k).network_address + 1)


def node_address6(index: int, k: int) -> str:
    """Node ``index``'s IPv6 address on subnet ``k``: ``::<10 + index>`` written with the
    decimal digits of the IPv4 host part (node1: ``2001:db8:0:1::11``)."""
    return str(subnet6(k).network_address + int(str(10 + index), 16))


def subnet_of(index: int, nodes: int, subnets: int) -> int:
    """Which subnet node number ``index`` (1-based) of ``nodes`` goes to."""
    return (index - 1) * subnets // max(nodes, 1)


def node_address(index: int, k: int) -> str:
    return str(subnet(k).network_address + 10 + index)


def pool_modes(encap: str, subnets: int) -> dict[str, str]:
    """The default pool's ``vxlanMode`` / ``ipipMode`` for ``--encap``."""
    mode = "CrossSubnet" if subnets > 1 else "Always"
    if encap == "vxlan":
        return {"vxlanMode": mode, "ipipMode": "Never"}
    if encap == "ipip":
        return {"vxlanMode": "Never", "ipipMode": mode}
    return {"vxlanMode": "Never", "ipipMode": "Never"}


def pool6_modes(encap: str, subnets: int) -> dict[str, str]:
    """The IPv6 pool's ``vxlanMode`` / ``ipipMode``: VXLAN as the IPv4 pool's, never IPIP."""
    return pool_modes(encap if encap == "vxlan" else "none", subnets)
