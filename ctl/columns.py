"""The table columns of ``tortie get`` (``-o ps``, the default, and ``-o wide``), per kind.

A column is a header and the function that reads its cell from a resource.  Kinds not listed
show only their name; ``wide`` falls back to the normal columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datastore.kinds import KindInfo
from datastore.model_network import Node

Column = tuple[str, Callable[[Any], str]]


def _join(values: list[Any] | None) -> str:
    return ",".join(str(v) for v in values or [])


def _node_asn(n: Node) -> str:
    bgp = n.spec.bgp
    if bgp and bgp.asNumber is not None:
        return str(bgp.asNumber)
    return "(64512)"  # inherited from the global default, shown as calicoctl does


def _fmt_order(order: float | None) -> str:
    if order is None:
        return ""
    return str(int(order)) if float(order).is_integer() else str(order)


def _opt(v: Any) -> str:
    return "" if v is None else str(v)


def _opt_bool(v: bool | None) -> str:
    return "" if v is None else str(v).lower()


NAME: Column = ("NAME", lambda r: r.name)
NAMESPACE: Column = ("NAMESPACE", lambda r: r.namespace or "")

_POLICY_WIDE: tuple[Column, ...] = (
    NAME, ("ORDER", lambda r: _fmt_order(r.spec.order)),
    ("SELECTOR", lambda r: r.spec.selector or "all()"))
_NETSET_WIDE: tuple[Column, ...] = (NAME, ("NETS", lambda r: _join(r.spec.nets)))

#: plural -> the columns of ``tortie get`` (default: the name only)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "ippools": (NAME, ("CIDR", lambda r: r.spec.cidr),
                ("SELECTOR", lambda r: r.spec.nodeSelector)),
    "ipreservations": (NAME, ("CIDRS", lambda r: _join(r.spec.reservedCIDRs))),
    "ipamconfigurations": (NAME, ("STRICTAFFINITY", lambda r: str(r.spec.strictAffinity).lower()),
                           ("MAXBLOCKSPERHOST", lambda r: str(r.spec.maxBlocksPerHost))),
    "workloadendpoints": (("WORKLOAD", lambda r: r.spec.pod or r.spec.workload or ""),
                          ("NODE", lambda r: r.spec.node or ""),
                          ("NETWORKS", lambda r: _join(r.spec.ipNetworks)),
                          ("INTERFACE", lambda r: r.spec.interfaceName or "")),
    "hostendpoints": (NAME, ("NODE", lambda r: r.spec.node or "")),
    "bgpconfigurations": (NAME, ("LOGSEVERITY", lambda r: r.spec.logSeverityScreen or ""),
                          ("MESHENABLED", lambda r: _opt_bool(r.spec.nodeToNodeMeshEnabled)),
                          ("ASNUMBER", lambda r: _opt(r.spec.asNumber))),
    "bgppeers": (NAME, ("PEERIP", lambda r: r.spec.peerIP or ""),
                 ("NODE", lambda r: r.spec.node or r.spec.nodeSelector or "(global)"),
                 ("ASN", lambda r: _opt(r.spec.asNumber))),
    "pods": (NAME, ("NODE", lambda r: r.spec.nodeName or "")),
}

#: plural -> the columns of ``tortie get -o wide`` (default: the normal ones)
WIDE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "ippools": (NAME, ("CIDR", lambda r: r.spec.cidr),
                ("NAT", lambda r: str(r.spec.natOutgoing).lower()),
                ("IPIPMODE", lambda r: r.spec.ipipMode), ("VXLANMODE", lambda r: r.spec.vxlanMode),
                ("DISABLED", lambda r: str(bool(r.spec.disabled)).lower()),
                ("DISABLEBGPEXPORT", lambda r: str(bool(r.spec.disableBGPExport)).lower()),
                ("SELECTOR", lambda r: r.spec.nodeSelector)),
    "nodes": (NAME, ("ASN", _node_asn), ("IPV4", lambda r: r.ipv4_address() or ""),
              ("IPV6", lambda r: r.ipv6_address() or "")),
    "workloadendpoints": (NAME, ("WORKLOAD", lambda r: r.spec.pod or r.spec.workload or ""),
                          ("NODE", lambda r: r.spec.node or ""),
                          ("NETWORKS", lambda r: _join(r.spec.ipNetworks)),
                          ("INTERFACE", lambda r: r.spec.interfaceName or ""),
                          ("PROFILES", lambda r: _join(r.spec.profiles))),
    "hostendpoints": (NAME, ("NODE", lambda r: r.spec.node or ""),
                      ("INTERFACE", lambda r: r.spec.interfaceName or ""),
                      ("IPS", lambda r: _join(r.spec.expectedIPs)),
                      ("PROFILES", lambda r: _join(r.spec.profiles))),
    "networkpolicies": _POLICY_WIDE,
    "globalnetworkpolicies": _POLICY_WIDE,
    "networksets": _NETSET_WIDE,
    "globalnetworksets": _NETSET_WIDE,
}


def columns_for(info: KindInfo, *, wide: bool = False,
                all_namespaces: bool = False) -> list[Column]:
    """The columns to show ``info``'s resources with (a NAMESPACE column first when a
    namespaced kind is listed across namespaces)."""
    columns = list(COLUMNS.get(info.plural, (NAME,)))
    if wide:
        columns = list(WIDE_COLUMNS.get(info.plural, columns))
    if info.namespaced and all_namespaces:
        columns.insert(0, NAMESPACE)
    return columns
