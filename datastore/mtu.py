"""Pod and tunnel MTUs: the underlay's MTU less the overhead of the encapsulation in use.

As Calico computes them: each encapsulation some enabled IP pool uses (``vxlanMode`` /
``ipipMode`` other than ``Never``; VXLAN of an IPv6 pool is its own encapsulation, over
the IPv6 underlay) has an MTU, FelixConfiguration's ``vxlanMTU`` / ``vxlanMTUV6`` /
``ipipMTU`` when set (not 0), else the underlay MTU less its overhead (VXLAN 50, VXLAN over
IPv6 70, IPIP 20);
a pod's MTU is the smallest of them, or the underlay MTU when no pool encapsulates.  The
CNI config's ``mtu`` (not 0) wins over all of it.  The tunnel devices (``vxlan.tortie``,
``vxlan-v6.tortie``, ``tunl0``) get their own encapsulation's MTU.

The underlay MTU is the MTU of the node's interface that carries its node address
(``cni/netlink.py`` and the routing agent find it).  FelixConfiguration ``node.<node>``
overrides ``default`` field by field.  Calico's FelixConfiguration has no general ``mtu``
field: a pod MTU that no encapsulation implies is set in the CNI config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from datastore.model_config import FelixConfiguration, felix_setting
from datastore.model_network import IPPool

Encap = Literal["vxlan", "vxlan-v6", "ipip"]
VXLAN: Final = "vxlan"
#: VXLAN of IPv6 pools: over the nodes' IPv6 addresses, device ``vxlan-v6.tortie``
VXLAN6: Final = "vxlan-v6"
IPIP: Final = "ipip"
#: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)
VXLAN_OVERHEAD: Final = 50
#: outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14)
VXLAN6_OVERHEAD: Final = 70
#: outer IPv4 header
IPIP_OVERHEAD: Final = 20
OVERHEAD: Final[Mapping[str, int]] = {VXLAN: VXLAN_OVERHEAD, VXLAN6: VXLAN6_OVERHEAD,
                                      IPIP: IPIP_OVERHEAD}
#: the underlay MTU assumed when no interface can be found
DEFAULT_UNDERLAY_MTU: Final = 1500
#: the smallest MTU an IPv4 link may have (RFC 791)
MIN_MTU: Final = 68


@dataclass(frozen=True)
class MTUOverrides:
    """Configured MTUs; None (or 0 in the resources) means "compute it"."""

    vxlan: int | None = None   # FelixConfiguration vxlanMTU
    ipip: int | None = None    # FelixConfiguration ipipMTU
    pod: int | None = None     # the CNI config's mtu
    vxlan6: int | None = None  # FelixConfiguration vxlanMTUV6

    def for_encap(self, encap: str) -> int | None:
        value = {VXLAN: self.vxlan, VXLAN6: self.vxlan6, IPIP: self.ipip}.get(encap)
        return value or None


def encaps_in_use(pools: Iterable[IPPool]) -> frozenset[str]:
    """The encapsulations some enabled pool uses (VXLAN of an IPv6 pool: :data:`VXLAN6`)."""
    used: set[str] = set()
    for p in pools:
        if p.spec.disabled:
            continue
        if (p.spec.vxlanMode or "Never") != "Never":
            used.add(VXLAN6 if p.network.version == 6 else VXLAN)
        if (p.spec.ipipMode or "Never") != "Never":
            used.add(IPIP)
    return frozenset(used)


def felix_overrides(configs: Mapping[str, FelixConfiguration], node: str) -> MTUOverrides:
    """``vxlanMTU``, ``vxlanMTUV6`` and ``ipipMTU`` from the FelixConfigurations named
    ``node.<node>`` and ``default`` (the node's wins, field by field; 0 means unset, as in
    Calico)."""

    def pick(attr: str) -> int | None:
        value = felix_setting(configs, node, attr)
        return int(value) if value else None

    return MTUOverrides(vxlan=pick("vxlanMTU"), ipip=pick("ipipMTU"),
                        vxlan6=pick("vxlanMTUV6"))


def tunnel_mtu(underlay_mtu: int, encap: str, overrides: MTUOverrides | None = None) -> int:
    """The MTU of ``encap``'s device: its configured MTU, else underlay less overhead."""
    if encap not in OVERHEAD:
        raise ValueError(f"unknown encapsulation {encap!r}: use one of {', '.join(OVERHEAD)}")
    configured = (overrides or MTUOverrides()).for_encap(encap)
    if configured:
        return configured
    return max(MIN_MTU, underlay_mtu - OVERHEAD[encap])


def pod_mtu(underlay_mtu: int, encaps: Iterable[str],
            overrides: MTUOverrides | None = None) -> int:
    """A new pod's MTU: the CNI config's, else the smallest MTU of the encapsulations in
    use, else the underlay's."""
    overrides = overrides or MTUOverrides()
    if overrides.pod:
        return overrides.pod
    mtus = [tunnel_mtu(underlay_mtu, e, overrides) for e in sorted(set(encaps))]
    return min(mtus) if mtus else underlay_mtu
