"""Endpoints: WorkloadEndpoint (a pod's interface) and HostEndpoint (a host's)."""

from __future__ import annotations

from pydantic import Field

from datastore.model_base import CIDR, IPAddr, Resource, ResourceInvalid, ResourceName, Strict
from datastore.model_policy import PORT_PROTOCOLS, Protocol


class EndpointPort(Strict):
    name: str
    protocol: Protocol
    port: int = Field(ge=1, le=65535)
    hostPort: int | None = Field(default=None, ge=0, le=65535)
    hostIP: IPAddr | None = None


class IPNAT(Strict):
    internalIP: IPAddr
    externalIP: IPAddr


class WorkloadEndpointSpec(Strict):
    orchestrator: str | None = None
    workload: str | None = None
    node: str | None = None
    containerID: str | None = None
    pod: str | None = None
    endpoint: str | None = None
    serviceAccountName: str | None = None
    ipNetworks: list[CIDR] | None = None
    ipNATs: list[IPNAT] | None = None
    ipv4Gateway: IPAddr | None = None
    ipv6Gateway: IPAddr | None = None
    profiles: list[ResourceName] | None = None
    interfaceName: str | None = None
    mac: str | None = None
    ports: list[EndpointPort] | None = None
    allowSpoofedSourcePrefixes: list[CIDR] | None = None
    awsElasticIPs: list[IPAddr] | None = None
    qosControls: dict[str, int] | None = None


class WorkloadEndpoint(Resource):
    KIND = "WorkloadEndpoint"
    NAMESPACED = True
    spec: WorkloadEndpointSpec = Field(default_factory=WorkloadEndpointSpec)


class HostEndpointSpec(Strict):
    node: str | None = None
    interfaceName: str | None = None
    expectedIPs: list[IPAddr] | None = None
    profiles: list[ResourceName] | None = None
    ports: list[EndpointPort] | None = None


class HostEndpoint(Resource):
    KIND = "HostEndpoint"
    spec: HostEndpointSpec

    def apply_defaults(self) -> None:
        super().apply_defaults()
        errors = []
        if not self.spec.node:
            errors.append("spec.node: required: the node that owns the interface")
        if not self.spec.interfaceName and not self.spec.expectedIPs:
            errors.append("spec: at least one of interfaceName or expectedIPs must be specified")
        for i, p in enumerate(self.spec.ports or []):
            if p.protocol not in PORT_PROTOCOLS:
                errors.append(f"spec.ports[{i}].protocol: must be TCP, UDP or SCTP")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)

    @property
    def all_interfaces(self) -> bool:
        return self.spec.interfaceName == "*"
