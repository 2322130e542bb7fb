"""Where IPAM state lives in etcd (all under ``datastore.keys.IPAM``)::

    /tortie/v3/ipam/blocks/<network>-<prefixlen>   one block document per claimed block
                                                   (``10.0.0.64-26``, ``fd00::40-122``)
    /tortie/v3/ipam/handles/<handle>               {"handle": h, "blocks": {cidr: count}}
    /tortie/v3/ipam/hosts/<node>                   {"node": n, "claim": cidr | null}: the
                                                   node's last block claim; every claim by
                                                   the node is a CAS on this key
    /tortie/v3/resources/ipamconfigurations/default   IPAMConfiguration (optional)

The slash of a block's CIDR is written as ``-`` (as Calico does) so that a block is one
path segment.
"""

from __future__ import annotations

import ipaddress

from datastore.keys import IPAM, resource_key, resource_prefix

BLOCKS = IPAM + "blocks/"
HANDLES = IPAM + "handles/"
HOSTS = IPAM + "hosts/"

IPAM_CONFIG = resource_key("ipamconfigurations", "default")
IP_POOLS = resource_prefix("ippools")
IP_RESERVATIONS = resource_prefix("ipreservations")
NODES = resource_prefix("nodes")


def block_key(cidr: str) -> str:
    """Key of the block document of ``cidr`` (normalised: ``10.0.0.64/26``)."""
    net = ipaddress.ip_network(cidr)
    return f"{BLOCKS}{net.network_address}-{net.prefixlen}"


def block_cidr(key: str) -> str:
    """The CIDR a block key stands for (inverse of :func:`block_key`)."""
    if not key.startswith(BLOCKS):
        raise ValueError(f"not a block key: {key!r}")
    addr, sep, plen = key[len(BLOCKS):].rpartition("-")
    if not sep:
        raise ValueError(f"not a block key: {key!r}")
    return str(ipaddress.ip_network(f"{addr}/{plen}"))


def handle_key(handle: str) -> str:
    if not handle or "/" in handle:
        raise ValueError(f"invalid IPAM handle {handle!r}: must be non-empty without '/'")
    return HANDLES + handle


def host_key(node: str) -> str:
    if not node or "/" in node:
        raise ValueError(f"invalid node name {node!r}")
    return HOSTS + node
