"""Cluster configuration resources: FelixConfiguration and KubeControllersConfiguration.

Both are cluster-scoped and wire-compatible with Calico's ``projectcalico.org/v3`` kinds.

FelixConfiguration lists every ``spec`` field of Calico's FelixConfigurationSpec (the union of
the fields Calico has shipped up to v3.30, plus ``bpfAttachType`` and ``cgroupV2Path`` from
later CRDs), so any calicoctl document applies unchanged and an unknown field is an error.
Fields Tortie acts on are typed and validated precisely; the rest are checked as Calico's
validator / CRD schema checks them.

One field is a Tortie extension, after Calico's: ``workloadProtectedHostPorts`` (the ports
workloads may reach on hosts only when a policy rule names them; see
:data:`DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS` and docs/policy-agent.md).

Enumerations that Calico matches case-insensitively (the CRD patterns written ``(?i)...``) are
accepted in any case and stored in their canonical spelling; those Calico declares as a strict
enum must be spelled exactly. The empty string is accepted wherever Go's ``omitempty`` makes it
mean "unset" (calicoctl prints ``bpfLogLevel: ""`` for a default FelixConfiguration).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictInt, StrictStr

from datastore.labels import validate_dns1123_label, validate_labels
from datastore.model_base import (
    CIDR,
    Duration,
    Resource,
    ResourceInvalid,
    ResourceName,
    SelectorText,
    Strict,
    check_cidr,
    one_of,
)

# --- reusable field types (also used by model_bgp) --------------------------------------------

def _enum(*values: str, ci: bool = False) -> AfterValidator:
    """Validator metadata for a string field that must be one of ``values``."""
    return AfterValidator(one_of(*values, case_insensitive=ci))


def _check_regexp(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"{v!r} is not a valid regular expression: {e}") from None
    return v


def _check_ipv4(v: str) -> str:
    if v == "":
        return v
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IPv4 address") from None
    return v


def _check_ipv6(v: str) -> str:
    if v == "":
        return v
    try:
        ipaddress.IPv6Address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IPv6 address") from None
    return v


def _check_ipv4_cidr(v: str) -> str:
    out = check_cidr(v)
    if ipaddress.ip_network(out, strict=False).version != 4:
        raise ValueError(f"{v!r} is not an IPv4 CIDR")
    return v


_IFACE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
_IFACE_FILTER_RE = re.compile(r"^[a-zA-Z0-9:._+-]{1,15}$")
_IFACE_LIST_RE = re.compile(r"^[a-zA-Z0-9_-]{1,15}(,[a-zA-Z0-9_-]{1,15})*$")
_PROMETHEUS_HOST_RE = re.compile(r"^[a-zA-Z0-9:._+-]{1,64}$")
_KV_ITEM_RE = re.compile(r"^\s*(\w+)=(.*)$")
_HTO_NAME_RE = re.compile(r"^[a-zA-Z0-9_ -]+$")


def _matching(rx: re.Pattern[str], what: str, *, allow_empty: bool = True,
              ) -> Callable[[str], str]:
    def check(v: str) -> str:
        if (v == "" and allow_empty) or rx.match(v):
            return v
        raise ValueError(f"{v!r} is not a valid {what} (must match {rx.pattern})")

    return check


def _check_key_value_list(v: str) -> str:
    for item in v.split(","):
        if item and not _KV_ITEM_RE.match(item):
            raise ValueError(f"{v!r} is not a comma-separated list of key=value pairs")
    return v


def _check_port_range(v: Any) -> Any:
    """A numeric port or ``min:max`` range (numorstring.Port without a name), 1-65535."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"{v!r} is not a port or port range")
    text = str(v).strip()
    lo_s, sep, hi_s = text.partition(":")
    if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
        raise ValueError(f"{v!r} is not a port or a port range like 30000:32767")
    lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError(f"{v!r}: port number must be between 1 and 65535")
    if lo > hi:
        raise ValueError(f"{v!r}: port range is reversed (min > max)")
    return v


Regexp = Annotated[StrictStr, AfterValidator(_check_regexp)]
IPv4Text = Annotated[StrictStr, AfterValidator(_check_ipv4)]
IPv6Text = Annotated[StrictStr, AfterValidator(_check_ipv6)]
IPv4CIDR = Annotated[StrictStr, AfterValidator(_check_ipv4_cidr)]
InterfaceName = Annotated[StrictStr, AfterValidator(_matching(_IFACE_RE, "interface name"))]
IfaceFilter = Annotated[StrictStr,
                        AfterValidator(_matching(_IFACE_FILTER_RE, "interface filter"))]
KeyValueList = Annotated[StrictStr, AfterValidator(_check_key_value_list)]
PortRange = Annotated[Any, AfterValidator(_check_port_range)]
Port = Annotated[StrictInt, Field(ge=0, le=65535)]
NonZeroPort = Annotated[StrictInt, Field(ge=1, le=65535)]
MTU = Annotated[StrictInt, Field(ge=0, le=65535)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
Uint32 = Annotated[StrictInt, Field(ge=0, le=4294967295)]
GoRuntimeInt = Annotated[StrictInt, Field(ge=-1)]
LOG_LEVELS: Final = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")
LogLevel = Annotated[StrictStr, _enum(*LOG_LEVELS, ci=True)]
EnabledDisabled = Annotated[StrictStr, _enum("Enabled", "Disabled")]
KCC_LOG_LEVELS: Final = ("None", "Debug", "Info", "Warning", "Error", "Fatal", "Panic")
IptablesBackend = Annotated[StrictStr, _enum("Auto", "Legacy", "NFT", ci=True)]
ChainInsertMode = Annotated[StrictStr, _enum("Insert", "Append", ci=True)]
DropAcceptReturn = Annotated[StrictStr, _enum("Drop", "Accept", "Return", ci=True)]
AcceptReturn = Annotated[StrictStr, _enum("Accept", "Return", ci=True)]
DropReject = Annotated[StrictStr, _enum("Drop", "Reject", ci=True)]
NATOutgoingExclusions = Annotated[StrictStr, _enum("IPPoolsOnly", "IPPoolsAndHostIPs")]
NFTablesMode = Annotated[StrictStr, _enum("Enabled", "Disabled", "Auto")]
BPFLogLevel = Annotated[StrictStr, _enum("Off", "Info", "Debug", ci=True)]
BPFConntrackLogLevel = Annotated[StrictStr, _enum("Off", "Debug")]
BPFConntrackMode = Annotated[StrictStr, _enum("Auto", "Userspace", "BPFProgram")]
BPFConnectTimeLB = Annotated[StrictStr, _enum("TCP", "Enabled", "Disabled")]
BPFExternalServiceMode = Annotated[StrictStr, _enum("Tunnel", "DSR", ci=True)]
BPFConntrackScaling = Annotated[StrictStr, _enum("Disabled", "DoubleIfFull", ci=True)]
BPFEnforceRPF = Annotated[StrictStr, _enum("Disabled", "Strict", "Loose", ci=True)]
BPFAttachType = Annotated[StrictStr, _enum("TC", "TCX")]
FlowLogsPolicyEvalMode = Annotated[StrictStr, _enum("None", "Continuous")]
BPFRedirectToPeer = Annotated[StrictStr, _enum("Enabled", "Disabled", "L2Only")]
RouteSource = Annotated[StrictStr, _enum("WorkloadIPs", "CalicoIPAM", ci=True)]
AWSSrcDstCheck = Annotated[StrictStr, _enum("DoNothing", "Enable", "Disable")]
ServiceLoopPrevention = Annotated[StrictStr, _enum("Drop", "Reject", "Disabled", ci=True)]
WorkloadSourceSpoofing = Annotated[StrictStr, _enum("Disabled", "Any", ci=True)]
AssignIPs = Annotated[StrictStr, _enum("AllServices", "RequestedServicesOnly")]
KCCLogLevel = Annotated[StrictStr, _enum(*KCC_LOG_LEVELS)]
VXLANVNI = Annotated[StrictInt, Field(ge=1, le=16777215)]  # 24 bits; 0 is no VNI
RouteProtocol = Annotated[StrictInt, Field(ge=0, le=255)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
RulePriority = Annotated[StrictInt, Field(ge=1, le=32765)]


# --- FelixConfiguration ----------------------------------------------------------------------

PROTOCOLS: Final = ("TCP", "UDP", "SCTP")


def _check_protocol(v: str) -> str:
    if v.upper() in PROTOCOLS:
        return v.upper()
    raise ValueError(f"{v!r} is not a protocol: use TCP, UDP or SCTP")


class ProtoPort(Strict):
    """One failsafe (or protected) port: a protocol, a port and optionally the CIDR it is
    limited to."""

    protocol: Annotated[StrictStr, AfterValidator(_check_protocol)] = "TCP"
    port: Port
    net: CIDR | None = None

    def __str__(self) -> str:
        text = f"{self.protocol.lower()}:{self.port}"
        return f"{text} from {self.net}" if self.net else text


def _failsafe_list(v: Any) -> Any:
    """``none`` (Felix's config-file spelling) means the same as ``[]``: no failsafe ports."""
    if isinstance(v, str) and v.strip().lower() == "none":
        return []
    return v


FailsafePorts = Annotated[list[ProtoPort] | None, BeforeValidator(_failsafe_list)]


def _pp(protocol: str, port: int) -> ProtoPort:
    return ProtoPort(protocol=protocol, port=port)


# Felix's defaults (felix/config/config_params.go, and the FelixConfigurationSpec docs:
# "[Default: tcp:22, udp:68, tcp:179, tcp:2379, tcp:2380, tcp:5473, tcp:6443, tcp:6666,
# tcp:6667]" and "[Default: udp:53, udp:67, tcp:179, tcp:2379, tcp:2380, tcp:5473, tcp:6443,
# tcp:6666, tcp:6667]").
DEFAULT_FAILSAFE_INBOUND: Final[tuple[ProtoPort, ...]] = (
    _pp("TCP", 22), _pp("UDP", 68), _pp("TCP", 179), _pp("TCP", 2379), _pp("TCP", 2380),
    _pp("TCP", 5473), _pp("TCP", 6443), _pp("TCP", 6666), _pp("TCP", 6667),
)
DEFAULT_FAILSAFE_OUTBOUND: Final[tuple[ProtoPort, ...]] = (
    _pp("UDP", 53), _pp("UDP", 67), _pp("TCP", 179), _pp("TCP", 2379), _pp("TCP", 2380),
    _pp("TCP", 5473), _pp("TCP", 6443), _pp("TCP", 6666), _pp("TCP", 6667),
)

# Tortie's own (not Calico's): the control-plane ports a workload never reaches on a host (any
# address outside the IP pools, every node address, the local host) unless an allow rule that
# names the destination port accepts it -- BGP and etcd's client and peer ports.  tortie-node
# adds the ports of its own etcd endpoints (policyagent.program_assembly).  ``[]`` / ``none``
# disables.
DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS: Final[tuple[ProtoPort, ...]] = (
    _pp("TCP", 179), _pp("TCP", 2379), _pp("TCP", 2380),
)


class HealthTimeoutOverride(Strict):
    name: Annotated[StrictStr, AfterValidator(
        _matching(_HTO_NAME_RE, "health timeout name", allow_empty=False))]
    timeout: Duration


class RouteTableRange(Strict):
    min: StrictInt
    max: StrictInt


class BPFConntrackTimeouts(Strict):
    creationGracePeriod: StrictStr | None = None
    tcpSynSent: StrictStr | None = None
    tcpEstablished: StrictStr | None = None
    tcpFinsSeen: StrictStr | None = None
    tcpResetSeen: StrictStr | None = None
    udpTimeout: StrictStr | None = None
    genericTimeout: StrictStr | None = None
    icmpTimeout: StrictStr | None = None


class FelixConfigurationSpec(Strict):
    """Every field of Calico's FelixConfigurationSpec, in Calico's order; then Tortie's."""

    useInternalDataplaneDriver: StrictBool | None = None
    dataplaneDriver: StrictStr | None = None
    dataplaneWatchdogTimeout: Duration | None = None
    ipv6Support: StrictBool | None = None
    routeRefreshInterval: Duration | None = None
    interfaceRefreshInterval: Duration | None = None
    iptablesRefreshInterval: Duration | None = None
    iptablesPostWriteCheckInterval: Duration | None = None
    iptablesLockFilePath: StrictStr | None = None
    iptablesLockTimeout: Duration | None = None
    iptablesLockProbeInterval: Duration | None = None
    featureDetectOverride: KeyValueList | None = None
    featureGates: KeyValueList | None = None
    ipsetsRefreshInterval: Duration | None = None
    maxIpsetSize: NonNegInt | None = None
    iptablesBackend: IptablesBackend | None = None
    xdpRefreshInterval: Duration | None = None
    netlinkTimeout: Duration | None = None
    metadataAddr: StrictStr | None = None
    metadataPort: Port | None = None
    openstackRegion: StrictStr | None = None
    interfacePrefix: Annotated[
        StrictStr, AfterValidator(_matching(_IFACE_LIST_RE, "interface prefix list"))
    ] | None = None
    interfaceExclude: StrictStr | None = None
    chainInsertMode: ChainInsertMode | None = None
    defaultEndpointToHostAction: DropAcceptReturn | None = None
    iptablesFilterAllowAction: AcceptReturn | None = None
    iptablesMangleAllowAction: AcceptReturn | None = None
    iptablesFilterDenyAction: DropReject | None = None
    logPrefix: StrictStr | None = None
    logFilePath: StrictStr | None = None
    logSeverityFile: LogLevel | None = None
    logSeverityScreen: LogLevel | None = None
    logSeveritySys: LogLevel | None = None
    logDebugFilenameRegex: Regexp | None = None
    ipipEnabled: StrictBool | None = None
    ipipMTU: MTU | None = None
    vxlanEnabled: StrictBool | None = None
    vxlanMTU: MTU | None = None
    vxlanMTUV6: MTU | None = None
    vxlanPort: NonZeroPort | None = None
    vxlanVNI: VXLANVNI | None = None
    allowVXLANPacketsFromWorkloads: StrictBool | None = None
    allowIPIPPacketsFromWorkloads: StrictBool | None = None
    reportingInterval: Duration | None = None
    reportingTTL: Duration | None = None
    endpointReportingEnabled: StrictBool | None = None
    endpointReportingDelay: Duration | None = None
    endpointStatusPathPrefix: StrictStr | None = None
    iptablesMarkMask: Uint32 | None = None
    disableConntrackInvalidCheck: StrictBool | None = None
    healthEnabled: StrictBool | None = None
    healthHost: StrictStr | None = None
    healthPort: Port | None = None
    healthTimeoutOverrides: list[HealthTimeoutOverride] | None = None
    prometheusMetricsEnabled: StrictBool | None = None
    prometheusMetricsHost: Annotated[
        StrictStr, AfterValidator(_matching(_PROMETHEUS_HOST_RE, "host"))
    ] | None = None
    prometheusMetricsPort: Port | None = None
    prometheusGoMetricsEnabled: StrictBool | None = None
    prometheusProcessMetricsEnabled: StrictBool | None = None
    prometheusWireGuardMetricsEnabled: StrictBool | None = None
    failsafeInboundHostPorts: FailsafePorts = None
    failsafeOutboundHostPorts: FailsafePorts = None
    kubeNodePortRanges: list[PortRange] | None = None
    policySyncPathPrefix: StrictStr | None = None
    usageReportingEnabled: StrictBool | None = None
    usageReportingInitialDelay: Duration | None = None
    usageReportingInterval: Duration | None = None
    natPortRange: PortRange | None = None
    natOutgoingAddress: IPv4Text | None = None
    natOutgoingExclusions: NATOutgoingExclusions | None = None
    deviceRouteSourceAddress: IPv4Text | None = None
    deviceRouteSourceAddressIPv6: IPv6Text | None = None
    deviceRouteProtocol: RouteProtocol | None = None
    removeExternalRoutes: StrictBool | None = None
    programClusterRoutes: EnabledDisabled | None = None
    ipForwarding: EnabledDisabled | None = None
    externalNodesList: list[IPv4CIDR] | None = None
    debugMemoryProfilePath: StrictStr | None = None
    debugDisableLogDropping: StrictBool | None = None
    debugSimulateCalcGraphHangAfter: Duration | None = None
    debugSimulateDataplaneHangAfter: Duration | None = None
    debugSimulateDataplaneApplyDelay: Duration | None = None
    debugHost: StrictStr | None = None
    debugPort: Port | None = None
    iptablesNATOutgoingInterfaceFilter: IfaceFilter | None = None
    sidecarAccelerationEnabled: StrictBool | None = None
    xdpEnabled: StrictBool | None = None
    genericXDPEnabled: StrictBool | None = None
    nftablesMode: NFTablesMode | None = None
    nftablesRefreshInterval: Duration | None = None
    nftablesFilterAllowAction: AcceptReturn | None = None
    nftablesMangleAllowAction: AcceptReturn | None = None
    nftablesFilterDenyAction: DropReject | None = None
    nftablesMarkMask: Uint32 | None = None
    bpfEnabled: StrictBool | None = None
    bpfDisableUnprivileged: StrictBool | None = None
    bpfLogLevel: BPFLogLevel | None = None
    bpfConntrackLogLevel: BPFConntrackLogLevel | None = None
    bpfConntrackMode: BPFConntrackMode | None = None
    bpfConntrackTimeouts: BPFConntrackTimeouts | None = None
    bpfLogFilters: dict[str, StrictStr] | None = None
    bpfCTLBLogFilter: StrictStr | None = None
    bpfDataIfacePattern: Regexp | None = None
    bpfL3IfacePattern: Regexp | None = None
    bpfConnectTimeLoadBalancingEnabled: StrictBool | None = None
    bpfConnectTimeLoadBalancing: BPFConnectTimeLB | None = None
    bpfHostNetworkedNATWithoutCTLB: EnabledDisabled | None = None
    bpfExternalServiceMode: BPFExternalServiceMode | None = None
    bpfDSROptoutCIDRs: list[CIDR] | None = None
    bpfExtToServiceConnmark: Uint32 | None = None
    bpfKubeProxyIptablesCleanupEnabled: StrictBool | None = None
    bpfKubeProxyMinSyncPeriod: Duration | None = None
    bpfKubeProxyEndpointSlicesEnabled: StrictBool | None = None
    bpfPSNATPorts: PortRange | None = None
    bpfMapSizeNATFrontend: NonNegInt | None = None
    bpfMapSizeNATBackend: NonNegInt | None = None
    bpfMapSizeNATAffinity: NonNegInt | None = None
    bpfMapSizeRoute: NonNegInt | None = None
    bpfMapSizeConntrack: NonNegInt | None = None
    bpfMapSizePerCpuConntrack: NonNegInt | None = None
    bpfMapSizeConntrackScaling: BPFConntrackScaling | None = None
    bpfMapSizeConntrackCleanupQueue: PositiveInt | None = None
    bpfMapSizeIPSets: NonNegInt | None = None
    bpfMapSizeIfState: NonNegInt | None = None
    bpfHostConntrackBypass: StrictBool | None = None
    bpfEnforceRPF: BPFEnforceRPF | None = None
    bpfPolicyDebugEnabled: StrictBool | None = None
    bpfForceTrackPacketsFromIfaces: list[IfaceFilter] | None = None
    bpfDisableGROForIfaces: Regexp | None = None
    bpfExcludeCIDRsFromNAT: list[CIDR] | None = None
    bpfExportBufferSizeMB: NonNegInt | None = None
    bpfAttachType: BPFAttachType | None = None
    flowLogsPolicyEvaluationMode: FlowLogsPolicyEvalMode | None = None
    bpfRedirectToPeer: BPFRedirectToPeer | None = None
    flowLogsFlushInterval: Duration | None = None
    flowLogsCollectorDebugTrace: StrictBool | None = None
    flowLogsGoldmaneServer: StrictStr | None = None
    flowLogsLocalReporter: EnabledDisabled | None = None
    bpfProfiling: EnabledDisabled | None = None
    cgroupV2Path: StrictStr | None = None
    routeSource: RouteSource | None = None
    routeTableRanges: list[RouteTableRange] | None = None
    routeTableRange: RouteTableRange | None = None
    routeSyncDisabled: StrictBool | None = None
    wireguardEnabled: StrictBool | None = None
    wireguardEnabledV6: StrictBool | None = None
    wireguardThreadingEnabled: StrictBool | None = None
    wireguardListeningPort: NonZeroPort | None = None
    wireguardListeningPortV6: NonZeroPort | None = None
    wireguardRoutingRulePriority: RulePriority | None = None
    wireguardInterfaceName: InterfaceName | None = None
    wireguardInterfaceNameV6: InterfaceName | None = None
    wireguardMTU: MTU | None = None
    wireguardMTUV6: MTU | None = None
    wireguardHostEncryptionEnabled: StrictBool | None = None
    wireguardKeepAlive: Duration | None = None
    awsSrcDstCheck: AWSSrcDstCheck | None = None
    serviceLoopPrevention: ServiceLoopPrevention | None = None
    workloadSourceSpoofing: WorkloadSourceSpoofing | None = None
    mtuIfacePattern: Regexp | None = None
    floatingIPs: EnabledDisabled | None = None
    windowsManageFirewallRules: EnabledDisabled | None = None
    goGCThreshold: GoRuntimeInt | None = None
    goMemoryLimitMB: GoRuntimeInt | None = None
    goMaxProcs: GoRuntimeInt | None = None
    requireMTUFile: StrictBool | None = None
    # --- Tortie extensions (not in Calico's FelixConfigurationSpec) ---
    workloadProtectedHostPorts: FailsafePorts = None


ROUTE_TABLE_MAX_TABLES: Final = 0xFFFF
_OPENSTACK_REGION_MAX = 63 - len("openstack-region-")


class FelixConfiguration(Resource):
    """Felix settings: ``default`` for the cluster, ``node.<nodename>`` per node."""

    KIND = "FelixConfiguration"
    spec: FelixConfigurationSpec = Field(default_factory=FelixConfigurationSpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        errors: list[str] = []
        region = s.openstackRegion
        if region:
            if len(region) > _OPENSTACK_REGION_MAX:
                errors.append(f"spec.openstackRegion: {region!r} is too long "
                              f"(at most {_OPENSTACK_REGION_MAX} characters)")
            elif validate_dns1123_label(region):
                errors.append(f"spec.openstackRegion: {region!r} must be a valid DNS label")
        rng = s.routeTableRange
        if rng is not None and rng.min > rng.max:
            errors.append(f"spec.routeTableRange: min {rng.min} is greater than max {rng.max}")
        if s.routeTableRanges:
            total = 0
            for i, r in enumerate(s.routeTableRanges):
                if r.min > r.max:
                    errors.append(f"spec.routeTableRanges[{i}]: min {r.min} is greater than "
                                  f"max {r.max}")
                total += r.max - r.min + 1
            if total > ROUTE_TABLE_MAX_TABLES:
                errors.append(f"spec.routeTableRanges: targets too many tables ({total}; "
                              f"at most {ROUTE_TABLE_MAX_TABLES})")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)

    def effective_failsafe_inbound(self) -> list[ProtoPort]:
        """The inbound failsafe ports in force: the configured list (``[]`` disables them all)
        or, when unset, Felix's defaults."""
        ports = self.spec.failsafeInboundHostPorts
        return [p.model_copy() for p in (DEFAULT_FAILSAFE_INBOUND if ports is None else ports)]

    def effective_failsafe_outbound(self) -> list[ProtoPort]:
        """The outbound failsafe ports in force (see :meth:`effective_failsafe_inbound`)."""
        ports = self.spec.failsafeOutboundHostPorts
        return [p.model_copy() for p in (DEFAULT_FAILSAFE_OUTBOUND if ports is None else ports)]

    def effective_workload_protected_host_ports(self) -> list[ProtoPort]:
        """The host ports workloads reach only through a policy naming them: the configured
        list (``[]`` disables the protection) or, when unset, Tortie's defaults (the ports of
        the node's own etcd endpoints are added by the policy agent)."""
        ports = self.spec.workloadProtectedHostPorts
        return [p.model_copy() for p in (DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS if ports is None
                                         else ports)]

    @property
    def node_name(self) -> str | None:
        """The node a ``node.<nodename>`` configuration applies to (None for global ones)."""
        return self.name.removeprefix("node.") if self.name.startswith("node.") else None


def felix_setting(configs: Mapping[str, FelixConfiguration], node: str, field: str) -> Any:
    """One FelixConfigurationSpec field as it applies to ``node``: the value in
    ``node.<node>`` when set there (not None, 0 or empty), else the one in ``default``, else
    None -- the per-node configuration overrides the cluster's field by field, as in Calico."""
    for name in (f"node.{node}", "default"):
        cfg = configs.get(name)
        value = getattr(cfg.spec, field) if cfg is not None else None
        if value:
            return value
    return None


# --- KubeControllersConfiguration -------------------------------------------------------------


def _check_labels(v: dict[str, str]) -> dict[str, str]:
    errs = validate_labels(v, field="labels")
    if errs:
        raise ValueError("; ".join(errs))
    return v


class HostEndpointTemplate(Strict):
    generateName: Annotated[ResourceName, Field(max_length=253)] | None = None
    interfaceCIDRs: list[CIDR] | None = None
    interfacePattern: Regexp | None = None
    labels: Annotated[dict[str, StrictStr], AfterValidator(_check_labels)] | None = None
    nodeSelector: SelectorText | None = None


class AutoHostEndpointConfig(Strict):
    autoCreate: EnabledDisabled | None = None
    createDefaultHostEndpoint: EnabledDisabled | None = None
    templates: list[HostEndpointTemplate] | None = None


class NodeControllerConfig(Strict):
    reconcilerPeriod: Duration | None = None
    syncLabels: EnabledDisabled | None = None
    hostEndpoint: AutoHostEndpointConfig | None = None
    leakGracePeriod: Duration | None = None


class ReconcilerConfig(Strict):
    """Policy, WorkloadEndpoint, ServiceAccount and Namespace controllers: a period only."""

    reconcilerPeriod: Duration | None = None


class LoadBalancerControllerConfig(Strict):
    assignIPs: AssignIPs | None = None


class PolicyMigrationConfig(Strict):
    enabled: EnabledDisabled | None = None


class ControllersConfig(Strict):
    node: NodeControllerConfig | None = None
    policy: ReconcilerConfig | None = None
    workloadEndpoint: ReconcilerConfig | None = None
    serviceAccount: ReconcilerConfig | None = None
    namespace: ReconcilerConfig | None = None
    loadBalancer: LoadBalancerControllerConfig | None = None
    policyMigration: PolicyMigrationConfig | None = None


class KubeControllersConfigurationSpec(Strict):
    logSeverityScreen: KCCLogLevel | None = None
    healthChecks: EnabledDisabled | None = None
    etcdV3CompactionPeriod: Duration | None = None
    prometheusMetricsPort: Port | None = None
    controllers: ControllersConfig | None = None
    debugProfilePort: Port | None = None


class KubeControllersConfigurationStatus(Strict):
    runningConfig: KubeControllersConfigurationSpec | None = None
    environmentVars: dict[str, StrictStr] | None = None


# The spec kube-controllers writes when it creates the ``default`` object
# (kube-controllers/pkg/config/runconfig.go, NewDefaultKubeControllersConfig), with durations
# as Go prints them.
DEFAULT_KUBE_CONTROLLERS_SPEC: Final[dict[str, Any]] = {
    "logSeverityScreen": "Info",
    "healthChecks": "Enabled",
    "etcdV3CompactionPeriod": "10m0s",
    "controllers": {
        "node": {
            "reconcilerPeriod": "5m0s",
            "syncLabels": "Enabled",
            "hostEndpoint": {"autoCreate": "Disabled", "createDefaultHostEndpoint": "Enabled"},
            "leakGracePeriod": "15m0s",
        },
        "policy": {"reconcilerPeriod": "5m0s"},
        "workloadEndpoint": {"reconcilerPeriod": "5m0s"},
        "serviceAccount": {"reconcilerPeriod": "5m0s"},
        "namespace": {"reconcilerPeriod": "5m0s"},
        "loadBalancer": {"assignIPs": "AllServices"},
    },
}
KUBE_CONTROLLERS_CONFIG_NAME: Final = "default"


class KubeControllersConfiguration(Resource):
    """kube-controllers settings; only the object named ``default`` exists."""

    KIND = "KubeControllersConfiguration"
    spec: KubeControllersConfigurationSpec = Field(
        default_factory=KubeControllersConfigurationSpec)
    status: KubeControllersConfigurationStatus | None = None

    def apply_defaults(self) -> None:
        super().apply_defaults()
        errors: list[str] = []
        if self.name != KUBE_CONTROLLERS_CONFIG_NAME:
            errors.append(f"metadata.name: a KubeControllersConfiguration must be named "
                          f"{KUBE_CONTROLLERS_CONFIG_NAME!r}, not {self.name!r}")
        if not self.spec.model_fields_set:
            # An empty spec is the object kube-controllers creates: Calico's full defaults.
            self.spec = KubeControllersConfigurationSpec.model_validate(
                DEFAULT_KUBE_CONTROLLERS_SPEC)
        else:
            # The CRD's schema defaults (the API server fills these in).
            s = self.spec
            if s.healthChecks is None:
                s.healthChecks = "Enabled"
            if s.controllers is None:
                s.controllers = ControllersConfig()
            c = s.controllers
            if c.loadBalancer is not None and c.loadBalancer.assignIPs is None:
                c.loadBalancer.assignIPs = "AllServices"
            if c.policyMigration is not None and c.policyMigration.enabled is None:
                c.policyMigration.enabled = "Enabled"
        for where, spec in (("spec", self.spec),
                            ("status.runningConfig",
                             self.status.runningConfig if self.status else None)):
            node = spec.controllers.node if spec and spec.controllers else None
            hep = node.hostEndpoint if node else None
            for i, t in enumerate(hep.templates or [] if hep else []):
                if not t.interfaceCIDRs and not t.interfacePattern:
                    errors.append(f"{where}.controllers.node.hostEndpoint.templates[{i}]: "
                                  "at least one of interfaceCIDRs and interfacePattern must be "
                                  "specified")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)

    def host_endpoint_auto_create(self) -> bool:
        """Whether the node controller creates host endpoints (Calico's default: no)."""
        c = self.spec.controllers
        node = c.node if c else None
        hep = node.hostEndpoint if node else None
        return bool(hep and hep.autoCreate == "Enabled")
