"""BGP resources: BGPConfiguration and BGPPeer (both cluster-scoped).

Field lists follow Calico's ``bgpconfig.go`` and ``bgppeer.go`` (open-source Calico, up to the
v3.3x API; Calico Enterprise-only fields such as ``extensions`` are not accepted). Validation
follows Calico's validator and the CRD's CEL rules; every message names the field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, NamedTuple

from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr

from datastore.model_base import (
    ASNumber,
    Duration,
    Resource,
    ResourceInvalid,
    ResourceName,
    SelectorText,
    Strict,
    one_of,
)
from datastore.model_config import (
    EnabledDisabled,
    IPv4Text,
    IPv6Text,
    LogLevel,
    NonZeroPort,
)

# Calico's defaults for the cluster when no BGPConfiguration ``default`` exists
# (BGPConfigurationSpec docs: "ASNumber ... [Default: 64512]", "NodeToNodeMeshEnabled ...
# [Default: true]", "LogSeverityScreen ... [Default: Info]", "ListenPort ... Defaults to 179").
DEFAULT_AS_NUMBER: Final = 64512
DEFAULT_NODE_TO_NODE_MESH: Final = True
DEFAULT_LOG_SEVERITY: Final = "Info"
DEFAULT_LISTEN_PORT: Final = 179
GLOBAL_BGP_CONFIG_NAME: Final = "default"


def _check_net(v: str) -> str:
    """Calico's ``net`` check: an IP, or a CIDR with no host bits set."""
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid network (an IP address or a CIDR with no "
                         "host bits set, e.g. 10.96.0.0/12)") from None
    return v


Net = Annotated[StrictStr, AfterValidator(_check_net)]

_IGNORED_IFACE_RE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}$")


def _check_ignored_interface(v: str) -> str:
    if v == "*" or not _IGNORED_IFACE_RE.match(v):
        raise ValueError(f"{v!r} is not a valid interface name or pattern "
                         f"(must match {_IGNORED_IFACE_RE.pattern} and not be '*')")
    return v


IgnoredInterface = Annotated[StrictStr, AfterValidator(_check_ignored_interface)]

# --- communities ------------------------------------------------------------------------------

_STANDARD_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE_COMMUNITY = re.compile(r"^(\d+):(\d+):(\d+)$")


def community_value_error(value: str) -> str | None:
    """Why ``value`` is not a community value (``aa:nn`` 16-bit parts, or ``aa:nn:mm`` 32-bit
    parts), or ``None`` if it is one. Not matching either shape at all is reported too."""
    if _STANDARD_COMMUNITY.match(value):
        bits = 16
    elif _LARGE_COMMUNITY.match(value):
        bits = 32
    else:
        return (f"{value!r} is not a community value: use aa:nn (standard) or aa:nn:mm "
                "(large)")
    if any(int(part) >= 1 << bits for part in value.split(":")):
        kind = "standard" if bits == 16 else "large"
        return f"invalid {kind} community value {value!r}: each part must be a {bits}-bit number"
    return None


def is_community_value(value: str) -> bool:
    """True if ``value`` has the shape of a community value (valid or not)."""
    return bool(_STANDARD_COMMUNITY.match(value) or _LARGE_COMMUNITY.match(value))


def _check_community_value(v: str) -> str:
    err = community_value_error(v)
    if err:
        raise ValueError(err)
    return v


class Community(Strict):
    """A named BGP community value."""

    name: ResourceName
    value: Annotated[StrictStr, AfterValidator(_check_community_value)]


class PrefixAdvertisement(Strict):
    """Communities to attach to the routes of one CIDR."""

    cidr: Net
    communities: list[StrictStr]


class ServiceIPBlock(Strict):
    """A CIDR block of service IPs to advertise (cluster, external or load-balancer)."""

    cidr: Net | None = None


# --- passwords --------------------------------------------------------------------------------

class SecretKeySelector(Strict):
    """A key of a Secret in calico-node's namespace (Kubernetes' SecretKeySelector)."""

    name: Annotated[StrictStr, Field(min_length=1)]
    key: Annotated[StrictStr, Field(min_length=1)]
    optional: StrictBool | None = None


class BGPPassword(Strict):
    secretKeyRef: SecretKeySelector | None = None


# --- BGPConfiguration -------------------------------------------------------------------------

BindMode = Annotated[StrictStr, AfterValidator(one_of("None", "NodeIP"))]
RoutePriority = Annotated[StrictInt, Field(ge=1, le=2147483646)]


class BGPConfigurationSpec(Strict):
    logSeverityScreen: LogLevel | None = None
    nodeToNodeMeshEnabled: StrictBool | None = None
    asNumber: ASNumber | None = None
    serviceLoadBalancerIPs: list[ServiceIPBlock] | None = None
    serviceExternalIPs: list[ServiceIPBlock] | None = None
    serviceClusterIPs: list[ServiceIPBlock] | None = None
    serviceLoadBalancerAggregation: EnabledDisabled | None = None
    communities: list[Community] | None = None
    prefixAdvertisements: list[PrefixAdvertisement] | None = None
    listenPort: NonZeroPort | None = None
    nodeMeshPassword: BGPPassword | None = None
    nodeMeshMaxRestartTime: Duration | None = None
    bindMode: BindMode | None = None
    ignoredInterfaces: list[IgnoredInterface] | None = None
    localWorkloadPeeringIPV4: IPv4Text | None = None
    localWorkloadPeeringIPV6: IPv6Text | None = None
    programClusterRoutes: EnabledDisabled | None = None
    ipv4NormalRoutePriority: RoutePriority | None = None
    ipv6NormalRoutePriority: RoutePriority | None = None


class BGPConfiguration(Resource):
    """BGP settings: ``default`` for the cluster, ``node.<nodename>`` per node."""

    KIND = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        errors: list[str] = []
        if s.nodeToNodeMeshEnabled is False:
            # CEL rules of the CRD: mesh settings need the mesh.
            if s.nodeMeshPassword is not None:
                errors.append("spec.nodeMeshPassword: cannot be set when "
                              "nodeToNodeMeshEnabled is false")
            if s.nodeMeshMaxRestartTime is not None:
                errors.append("spec.nodeMeshMaxRestartTime: cannot be set when "
                              "nodeToNodeMeshEnabled is false")
        names = {c.name for c in s.communities or []}
        if len(names) != len(s.communities or []):
            errors.append("spec.communities: community names must be unique")
        if s.communities and not s.prefixAdvertisements:
            errors.append("spec.communities: communities are defined but not used in "
                          "spec.prefixAdvertisements")
        for i, pa in enumerate(s.prefixAdvertisements or []):
            where = f"spec.prefixAdvertisements[{i}].communities"
            if not pa.communities:
                errors.append(f"{where}: at least one community is required")
            for j, c in enumerate(pa.communities):
                if is_community_value(c):
                    err = community_value_error(c)
                    if err:
                        errors.append(f"{where}[{j}]: {err}")
                elif c not in names:
                    errors.append(f"{where}[{j}]: {c!r} is neither a community value "
                                  "(aa:nn or aa:nn:mm) nor the name of a community defined "
                                  "in spec.communities")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)
        if s.logSeverityScreen is None:  # the CRD's schema default
            s.logSeverityScreen = DEFAULT_LOG_SEVERITY

    def community_values(self, communities: list[str]) -> list[str]:
        """Resolve community names used in a prefix advertisement to their values."""
        by_name = {c.name: c.value for c in self.spec.communities or []}
        return [by_name.get(c, c) for c in communities]

    @property
    def node_name(self) -> str | None:
        """The node a ``node.<nodename>`` configuration applies to (None for global ones)."""
        return self.name.removeprefix("node.") if self.name.startswith("node.") else None


class BGPSettings(NamedTuple):
    as_number: int
    mesh_enabled: bool
    listen_port: int


def effective_bgp_settings(config: BGPConfiguration | None) -> BGPSettings:
    """The cluster's (AS number, node-to-node mesh on?, listen port): the ``default``
    BGPConfiguration's values where set, Calico's defaults otherwise (also when there is no
    such resource)."""
    spec = config.spec if config is not None else BGPConfigurationSpec()
    return BGPSettings(
        as_number=DEFAULT_AS_NUMBER if spec.asNumber is None else spec.asNumber,
        mesh_enabled=(DEFAULT_NODE_TO_NODE_MESH if spec.nodeToNodeMeshEnabled is None
                      else spec.nodeToNodeMeshEnabled),
        listen_port=spec.listenPort or DEFAULT_LISTEN_PORT,
    )


# --- BGPPeer ----------------------------------------------------------------------------------

_IPV4_PORT = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+):(\d+)$")
_IPV6_PORT = re.compile(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$")


def parse_peer_ip(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """Split a ``peerIP`` (``IP``, ``IPv4:port`` or ``[IPv6]:port``) into address and port."""
    host, port = text, None
    m4, m6 = _IPV4_PORT.match(text), _IPV6_PORT.match(text)
    if m4 or m6:
        host, _, port_s = text.rpartition(":")
        host = host.strip("[]")
        port = int(port_s)
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port must be between 1 and 65535")
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        raise ValueError(f"{text!r} is not a valid peer address: use <IP>, <IPv4>:<port> or "
                         "[<IPv6>]:<port>") from None


def _check_peer_ip(v: str) -> str:
    parse_peer_ip(v)
    return v


def _check_ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IP address") from None
    return v


PeerIP = Annotated[StrictStr, AfterValidator(_check_peer_ip)]
SourceAddress = Annotated[StrictStr, AfterValidator(one_of("UseNodeIP", "None"))]
NextHopMode = Annotated[StrictStr, AfterValidator(one_of("Auto", "Self", "Keep"))]
ReversePeering = Annotated[StrictStr, AfterValidator(one_of("Auto", "Manual"))]


class BGPPeerSpec(Strict):
    node: Annotated[ResourceName, Field(max_length=253)] | None = None
    nodeSelector: SelectorText | None = None
    peerIP: PeerIP | None = None
    asNumber: ASNumber | None = None
    localASNumber: ASNumber | None = None
    peerSelector: SelectorText | None = None
    keepOriginalNextHop: StrictBool | None = None
    nextHopMode: NextHopMode | None = None
    password: BGPPassword | None = None
    sourceAddress: SourceAddress | None = None
    maxRestartTime: Duration | None = None
    keepaliveTime: Duration | None = None
    numAllowedLocalASNumbers: Annotated[StrictInt, Field(ge=0, le=2147483647)] | None = None
    ttlSecurity: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    reachableBy: Annotated[StrictStr, AfterValidator(_check_ip)] | None = None
    filters: list[ResourceName] | None = None
    localWorkloadSelector: SelectorText | None = None
    reversePeering: ReversePeering | None = None


class BGPPeer(Resource):
    """A BGP peering for all nodes, one node, or the nodes a selector picks."""

    KIND = "BGPPeer"
    spec: BGPPeerSpec = Field(default_factory=BGPPeerSpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        errors: list[str] = []
        has_asn = bool(s.asNumber)  # Calico treats 0 as unset
        if s.node and s.nodeSelector:
            errors.append("spec.node: must be empty when spec.nodeSelector is specified")
        if s.peerIP and s.peerSelector:
            errors.append("spec.peerIP: must be empty when spec.peerSelector is specified")
        if s.peerSelector and has_asn:
            errors.append("spec.asNumber: must be empty when spec.peerSelector is specified "
                          "(the AS number comes from the selected nodes)")
        if s.peerIP and not has_asn:
            errors.append("spec.asNumber: required when spec.peerIP is specified")
        if s.localWorkloadSelector:
            if s.peerIP:
                errors.append("spec.peerIP: must be empty when spec.localWorkloadSelector is "
                              "specified")
            if s.peerSelector:
                errors.append("spec.peerSelector: must be empty when "
                              "spec.localWorkloadSelector is specified")
            if not has_asn:
                errors.append("spec.asNumber: required when spec.localWorkloadSelector is "
                              "specified")
        if s.reachableBy:
            if not s.peerIP:
                errors.append("spec.reachableBy: requires spec.peerIP")
            else:
                peer, _ = parse_peer_ip(s.peerIP)
                if ipaddress.ip_address(s.reachableBy).version != peer.version:
                    errors.append("spec.reachableBy: address family does not match "
                                  "spec.peerIP")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)

    def peer_address(self) -> tuple[str, int | None] | None:
        """The peer's (IP, port or None) when ``peerIP`` is set."""
        if not self.spec.peerIP:
            return None
        ip, port = parse_peer_ip(self.spec.peerIP)
        return str(ip), port

    @property
    def is_global(self) -> bool:
        """True when the peering applies to every node."""
        return not self.spec.node and not self.spec.nodeSelector


# --- BGPFilter --------------------------------------------------------------------------------

FilterAction = Annotated[StrictStr, AfterValidator(one_of("Accept", "Reject",
                                                          allow_empty=False))]
MatchOperator = Annotated[StrictStr, AfterValidator(one_of("Equal", "NotEqual", "In", "NotIn"))]
FilterSource = Annotated[StrictStr, AfterValidator(one_of("RemotePeers"))]
FilterPeerType = Annotated[StrictStr, AfterValidator(one_of("eBGP", "iBGP"))]
_FILTER_IFACE_RE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}$")


def _check_filter_interface(v: str) -> str:
    if v and not _FILTER_IFACE_RE.match(v):
        raise ValueError(f"{v!r} is not a valid interface name or pattern "
                         f"(must match {_FILTER_IFACE_RE.pattern})")
    return v


FilterInterface = Annotated[StrictStr, AfterValidator(_check_filter_interface)]


class BGPFilterPrefixLength(Strict):
    min: Annotated[StrictInt, Field(ge=0, le=128)] | None = None
    max: Annotated[StrictInt, Field(ge=0, le=128)] | None = None


class BGPFilterRule(Strict):
    """One rule of a BGPFilter: match conditions (all must hold) and a terminal action."""

    cidr: StrictStr | None = None
    prefixLength: BGPFilterPrefixLength | None = None
    source: FilterSource | None = None
    interface: FilterInterface | None = None
    matchOperator: MatchOperator | None = None
    peerType: FilterPeerType | None = None
    action: FilterAction


class BGPFilterSpec(Strict):
    exportV4: list[BGPFilterRule] | None = None
    importV4: list[BGPFilterRule] | None = None
    exportV6: list[BGPFilterRule] | None = None
    importV6: list[BGPFilterRule] | None = None


#: the BGPFilter rule lists, with the IP version of their CIDRs
FILTER_LISTS: Final = (("exportV4", 4), ("importV4", 4), ("exportV6", 6), ("importV6", 6))


class BGPFilter(Resource):
    """Rules for the routes a node exports to / imports from the BGPPeers that name it in
    ``spec.filters`` (first matching rule decides; no match: Accept)."""

    KIND = "BGPFilter"
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        errors: list[str] = []
        for field_name, version in FILTER_LISTS:
            for i, rule in enumerate(getattr(self.spec, field_name) or []):
                where = f"spec.{field_name}[{i}]"
                if bool(rule.cidr) != bool(rule.matchOperator):
                    errors.append(f"{where}: cidr and matchOperator must both be set or "
                                  "both be empty")
                if rule.cidr:
                    try:
                        net = ipaddress.ip_network(rule.cidr, strict=False)
                    except ValueError:
                        errors.append(f"{where}.cidr: {rule.cidr!r} is not a valid CIDR")
                        continue
                    if net.version != version:
                        errors.append(f"{where}.cidr: {rule.cidr!r} is not an IPv{version} "
                                      "CIDR")
                if rule.prefixLength is not None:
                    if not rule.cidr:
                        errors.append(f"{where}.prefixLength: cidr is required when "
                                      "prefixLength is set")
                    bits = 32 if version == 4 else 128
                    for bound in ("min", "max"):
                        v = getattr(rule.prefixLength, bound)
                        if v is not None and v > bits:
                            errors.append(f"{where}.prefixLength.{bound}: must be between 0 "
                                          f"and {bits}")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)
