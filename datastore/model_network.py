"""Addressing and node resources: IPPool, IPReservation, Node."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from datastore.model_base import (
    CIDR,
    ASNumber,
    IPAddr,
    Resource,
    ResourceInvalid,
    SelectorText,
    Strict,
    check_cidr,
    one_of,
)

ENCAP_MODES = ("Never", "Always", "CrossSubnet")
ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")
DEFAULT_BLOCK_SIZE_V4 = 26
DEFAULT_BLOCK_SIZE_V6 = 122
BLOCK_SIZE_RANGE_V4 = (20, 32)
BLOCK_SIZE_RANGE_V6 = (116, 128)


class IPIPConfigurationV1(Strict):
    """Deprecated ``ipip`` block that old IPPools carry; converted to ``ipipMode``."""

    enabled: bool | None = None
    mode: str | None = None


EncapMode = Annotated[str, AfterValidator(one_of(*ENCAP_MODES))]


class IPPoolSpec(Strict):
    cidr: str
    vxlanMode: EncapMode | None = None
    ipipMode: EncapMode | None = None
    natOutgoing: bool | None = None
    disabled: bool | None = None
    disableBGPExport: bool | None = None
    nodeSelector: SelectorText | None = None
    namespaceSelector: SelectorText | None = None
    blockSize: int | None = None
    allowedUses: list[Annotated[str, AfterValidator(one_of(*ALLOWED_USES,
                                                            allow_empty=False))]] | None = None
    assignmentMode: Annotated[str, AfterValidator(one_of("Automatic", "Manual"))] | None = None
    ipip: IPIPConfigurationV1 | None = None
    nat_outgoing: bool | None = Field(default=None, alias="nat-outgoing")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return check_cidr(v, allow_ip=False, normalise=True)



class IPPool(Resource):
    KIND = "IPPool"
    spec: IPPoolSpec

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        net = ipaddress.ip_network(s.cidr)
        errors: list[str] = []
        if s.ipip is not None:  # the deprecated form, as Calico converts it
            if s.ipipMode is None and s.ipip.enabled:
                s.ipipMode = "CrossSubnet" if (s.ipip.mode or "").lower() == "cross-subnet" \
                    else "Always"
            s.ipip = None
        if s.nat_outgoing is not None:
            if s.natOutgoing is None:
                s.natOutgoing = s.nat_outgoing
            s.nat_outgoing = None
        lo, hi = BLOCK_SIZE_RANGE_V4 if net.version == 4 else BLOCK_SIZE_RANGE_V6
        if s.blockSize is None:
            s.blockSize = DEFAULT_BLOCK_SIZE_V4 if net.version == 4 else DEFAULT_BLOCK_SIZE_V6
        if not lo <= s.blockSize <= hi:
            errors.append(f"spec.blockSize: {s.blockSize} is out of range: IPv{net.version} "
                          f"block size must be {lo}-{hi}")
        elif net.prefixlen > s.blockSize:
            errors.append(f"spec.cidr: pool {s.cidr} is smaller than one block "
                          f"(/{s.blockSize}): use a larger pool or a larger blockSize")
        s.ipipMode = s.ipipMode or "Never"
        s.vxlanMode = s.vxlanMode or "Never"
        if s.ipipMode != "Never" and s.vxlanMode != "Never":
            errors.append("spec: ipipMode and vxlanMode cannot both be enabled")
        if net.version == 6 and s.ipipMode != "Never":
            errors.append("spec.ipipMode: IPIP is not supported on an IPv6 pool")
        if net.is_link_local or net.is_loopback or net.is_multicast:
            errors.append(f"spec.cidr: {s.cidr} is a link-local, loopback or multicast range")
        if s.natOutgoing is None:
            s.natOutgoing = False
        if s.nodeSelector is None:
            s.nodeSelector = "all()"
        if s.allowedUses is None:
            s.allowedUses = ["Workload", "Tunnel"]
        if s.assignmentMode is None:
            s.assignmentMode = "Automatic"
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.spec.cidr)


class IPReservationSpec(Strict):
    reservedCIDRs: list[CIDR] = Field(default_factory=list)


class IPReservation(Resource):
    KIND = "IPReservation"
    spec: IPReservationSpec = Field(default_factory=IPReservationSpec)


class NodeBGPSpec(Strict):
    asNumber: ASNumber | None = None
    ipv4Address: CIDR | None = None
    ipv6Address: CIDR | None = None
    ipv4IPIPTunnelAddr: IPAddr | None = None
    routeReflectorClusterID: IPAddr | None = None


class OrchRef(Strict):
    nodeName: str | None = None
    orchestrator: str


class NodeAddress(Strict):
    address: str
    type: str | None = None


class NodeWireguardSpec(Strict):
    interfaceIPv4Address: IPAddr | None = None
    interfaceIPv6Address: IPAddr | None = None


class NodeSpec(Strict):
    bgp: NodeBGPSpec | None = None
    ipv4VXLANTunnelAddr: IPAddr | None = None
    vxlanTunnelMACAddr: str | None = None
    ipv6VXLANTunnelAddr: IPAddr | None = None
    vxlanTunnelMACAddrV6: str | None = None
    orchRefs: list[OrchRef] | None = None
    wireguard: NodeWireguardSpec | None = None
    addresses: list[NodeAddress] | None = None
    interfaceName: str | None = None


class Node(Resource):
    KIND = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: dict[str, Any] | None = None

    def ipv4_address(self) -> str | None:
        return self.spec.bgp.ipv4Address if self.spec.bgp else None

    def ipv6_address(self) -> str | None:
        return self.spec.bgp.ipv6Address if self.spec.bgp else None

    def host_addresses(self) -> list[str]:
        """Every address the node is known by (no prefix length, sorted, no duplicates): its
        BGP addresses, tunnel (IPIP, VXLAN) and WireGuard addresses and ``spec.addresses``
        (entries that are not an IP address or CIDR, e.g. host names, are left out)."""
        spec, bgp, wg = self.spec, self.spec.bgp, self.spec.wireguard
        texts = [bgp.ipv4Address, bgp.ipv6Address, bgp.ipv4IPIPTunnelAddr] if bgp else []
        texts += [spec.ipv4VXLANTunnelAddr, spec.ipv6VXLANTunnelAddr]
        if wg is not None:
            texts += [wg.interfaceIPv4Address, wg.interfaceIPv6Address]
        texts += [a.address for a in spec.addresses or ()]
        out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for text in texts:
            if text:
                try:
                    out.add(ipaddress.ip_interface(text.strip()).ip)
                except ValueError:
                    continue
        return [str(a) for a in sorted(out, key=lambda a: (a.version, a))]


class IPAMConfigurationSpec(Strict):
    strictAffinity: bool = False
    maxBlocksPerHost: int = Field(default=0, ge=0)
    autoAllocateBlocks: bool = True


class IPAMConfiguration(Resource):
    """Cluster IPAM settings; only the resource named ``default`` is used."""

    KIND = "IPAMConfiguration"
    spec: IPAMConfigurationSpec = Field(default_factory=IPAMConfigurationSpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        if self.name != "default":
            raise ResourceInvalid(self.KIND, self.name,
                                  ["metadata.name: the IPAMConfiguration must be named default"])
