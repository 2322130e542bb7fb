"""The Kubernetes kinds the agents need: Namespace, Pod, Node, NetworkPolicy, Service,
EndpointSlice.

Namespace, Pod and Node accept anything Kubernetes accepts and keep what Tortie uses
(labels, annotations, node, service account, named ports, addresses). Service and
EndpointSlice keep only what service advertisement uses (routing/services.py): a Service's
type, addresses and traffic policies; an EndpointSlice's Service, address type and, per
endpoint, its node and whether it is ready. NetworkPolicy is validated as strictly as the
API server does.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from datastore.model_base import (
    Lenient,
    LenientMeta,
    LenientResource,
    ObjectMeta,
    Resource,
    Strict,
)
from datastore.selector import from_k8s_label_selector

_IANA_SVC = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class _K8sResource(Resource):
    """A Kubernetes kind: its own apiVersion."""

    API_VERSION = "v1"
    apiVersion: str = "v1"


class Namespace(LenientResource):
    KIND = "Namespace"


class ContainerPort(Lenient):
    name: str | None = None
    containerPort: int = Field(ge=1, le=65535)
    protocol: str = "TCP"
    hostPort: int | None = None
    hostIP: str | None = None


class Container(Lenient):
    name: str
    ports: list[ContainerPort] | None = None


class PodSpec(Lenient):
    nodeName: str | None = None
    serviceAccountName: str | None = None
    serviceAccount: str | None = None
    hostNetwork: bool | None = None
    containers: list[Container] = Field(default_factory=list)
    initContainers: list[Container] | None = None


class PodIP(Lenient):
    ip: str


class PodStatus(Lenient):
    phase: str | None = None
    podIP: str | None = None
    podIPs: list[PodIP] | None = None


class Pod(LenientResource):
    KIND = "Pod"
    NAMESPACED = True
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus | None = None

    def named_ports(self) -> dict[tuple[str, str], int]:
        """(port name, protocol) -> container port, for named-port rules."""
        out: dict[tuple[str, str], int] = {}
        for c in self.spec.containers:
            for p in c.ports or []:
                if p.name:
                    out[(p.name, p.protocol.upper())] = p.containerPort
        return out

    @property
    def service_account(self) -> str:
        return self.spec.serviceAccountName or self.spec.serviceAccount or "default"


class NodeAddressK8s(Lenient):
    type: str
    address: str


class K8sNodeStatus(Lenient):
    addresses: list[NodeAddressK8s] | None = None


class K8sNodeSpec(Lenient):
    podCIDR: str | None = None
    podCIDRs: list[str] | None = None


class K8sNode(LenientResource):
    KIND = "Node"
    spec: K8sNodeSpec = Field(default_factory=K8sNodeSpec)
    status: K8sNodeStatus | None = None


# --- Service and EndpointSlice (service advertisement) ----------------------------------------

#: The label that ties an EndpointSlice to its Service (discovery.k8s.io/v1).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class BareMeta(LenientMeta):
    """Metadata without labels and annotations (nothing reads them)."""

    labels: None = Field(default=None, exclude=True)
    annotations: None = Field(default=None, exclude=True)

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _drop(cls, v: Any) -> None:
        return None


class K8sServiceSpec(Lenient):
    type: str = "ClusterIP"
    clusterIP: str | None = None
    clusterIPs: list[str] | None = None
    externalIPs: list[str] | None = None
    externalTrafficPolicy: str | None = None
    internalTrafficPolicy: str | None = None


class LoadBalancerIngress(Lenient):
    ip: str | None = None


class LoadBalancerStatus(Lenient):
    ingress: list[LoadBalancerIngress] | None = None


class K8sServiceStatus(Lenient):
    loadBalancer: LoadBalancerStatus | None = None


class K8sService(LenientResource):
    KIND = "Service"
    NAMESPACED = True
    metadata: BareMeta
    spec: K8sServiceSpec = Field(default_factory=K8sServiceSpec)
    status: K8sServiceStatus | None = None

    def cluster_ips(self) -> list[str]:
        """Its cluster IPs (``clusterIPs``, else ``clusterIP``); none when headless."""
        ips = self.spec.clusterIPs or ([self.spec.clusterIP] if self.spec.clusterIP else [])
        return [ip for ip in ips if ip and ip != "None"]

    def load_balancer_ips(self) -> list[str]:
        """The IPs of ``status.loadBalancer.ingress`` (host names are not addresses)."""
        lb = self.status.loadBalancer if self.status else None
        return [i.ip for i in (lb.ingress or []) if i.ip] if lb else []


class EndpointConditions(Lenient):
    ready: bool | None = None


class SliceEndpoint(Lenient):
    nodeName: str | None = None
    conditions: EndpointConditions | None = None

    @property
    def ready(self) -> bool:
        """Kubernetes: an unknown (nil) readiness is to be taken as ready."""
        return self.conditions is None or self.conditions.ready is not False


class SliceMeta(LenientMeta):
    """Metadata with only the label naming the Service."""

    annotations: None = Field(default=None, exclude=True)

    @field_validator("labels", mode="after")
    @classmethod
    def _service_only(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if not v or SERVICE_NAME_LABEL not in v:
            return None
        return {SERVICE_NAME_LABEL: v[SERVICE_NAME_LABEL]}

    @field_validator("annotations", mode="before")
    @classmethod
    def _drop(cls, v: Any) -> None:
        return None


class K8sEndpointSlice(LenientResource):
    API_VERSION = "discovery.k8s.io/v1"
    KIND = "EndpointSlice"
    NAMESPACED = True
    apiVersion: str = "discovery.k8s.io/v1"
    metadata: SliceMeta
    addressType: str | None = None
    endpoints: list[SliceEndpoint] | None = None

    @property
    def service(self) -> str | None:
        """The name of the Service this slice belongs to (None: none)."""
        return (self.metadata.labels or {}).get(SERVICE_NAME_LABEL)

    def ready_nodes(self) -> set[str]:
        """The nodes that run a ready endpoint of this slice."""
        return {e.nodeName for e in self.endpoints or [] if e.ready and e.nodeName}


# --- networking.k8s.io/v1 NetworkPolicy (strict) ----------------------------------------------

class LabelSelectorRequirement(Strict):
    key: str
    operator: str
    values: list[str] | None = None


class LabelSelector(Strict):
    matchLabels: dict[str, str] | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = None

    @model_validator(mode="after")
    def _valid(self) -> LabelSelector:
        from_k8s_label_selector(self.dump())  # raises ValueError naming the field
        return self

    def to_calico(self) -> str:
        return from_k8s_label_selector(self.dump())


class IPBlock(Strict):
    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _valid(self) -> IPBlock:
        try:
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            raise ValueError(f"cidr: {self.cidr!r} is not a valid CIDR") from None
        for i, e in enumerate(self.except_ or []):
            try:
                sub = ipaddress.ip_network(e, strict=False)
            except ValueError:
                raise ValueError(f"except[{i}]: {e!r} is not a valid CIDR") from None
            if sub.version != net.version or not sub.subnet_of(net):
                raise ValueError(f"except[{i}]: {e} must be a strict subset of {self.cidr}")
            if sub.prefixlen <= net.prefixlen:
                raise ValueError(f"except[{i}]: {e} must be a strict subset of {self.cidr}")
        return self


class NetworkPolicyPeer(Strict):
    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ipBlock is not None and (self.podSelector or self.namespaceSelector):
            raise ValueError("may not specify ipBlock together with podSelector or "
                             "namespaceSelector")
        if self.ipBlock is None and self.podSelector is None and self.namespaceSelector is None:
            raise ValueError("must specify a peer: podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(Strict):
    protocol: str = "TCP"
    port: int | str | None = None
    endPort: int | None = None

    @field_validator("protocol")
    @classmethod
    def _proto(cls, v: str) -> str:
        if v not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"unsupported value {v!r}: supported values are TCP, UDP, SCTP")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not a port")
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError(f"{v} must be between 1 and 65535, inclusive")
        if isinstance(v, str) and not (len(v) <= 15 and _IANA_SVC.match(v)
                                       and any(c.isalpha() for c in v) and "--" not in v):
            raise ValueError(f"{v!r} is not a valid port name (IANA_SVC_NAME)")
        return v

    @model_validator(mode="after")
    def _end(self) -> NetworkPolicyPort:
        if self.endPort is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort: may not be specified unless port is a number")
            if not self.port <= self.endPort <= 65535:
                raise ValueError("endPort: must be greater than or equal to port and at most "
                                 "65535")
        return self


class NetworkPolicyIngressRule(Strict):
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(Strict):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class K8sNetworkPolicySpec(Strict):
    podSelector: LabelSelector
    policyTypes: list[str] | None = None
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None

    @field_validator("policyTypes")
    @classmethod
    def _types(cls, v: list[str] | None) -> list[str] | None:
        for t in v or []:
            if t not in ("Ingress", "Egress"):
                raise ValueError(f"unsupported value {t!r}: supported values are Ingress, Egress")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("duplicate entries")
        return v


class K8sNetworkPolicy(_K8sResource):
    API_VERSION = "networking.k8s.io/v1"
    KIND = "NetworkPolicy"
    NAMESPACED = True
    apiVersion: str = "networking.k8s.io/v1"
    metadata: ObjectMeta
    spec: K8sNetworkPolicySpec
    status: dict[str, Any] | None = None

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        if s.policyTypes is None:  # the API server's default
            s.policyTypes = ["Ingress"] + (["Egress"] if s.egress else [])
