"""Policy resources: NetworkPolicy, GlobalNetworkPolicy, Profile, NetworkSet, GlobalNetworkSet.

Validation follows Calico's: ports need TCP/UDP/SCTP, ICMP fields need an ICMP protocol,
``preDNAT`` / ``doNotTrack`` need ``applyOnForward``, ``preDNAT`` has ingress rules only.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_serializer, field_validator, model_validator

from datastore.model_base import CIDR, Resource, ResourceInvalid, SelectorText, Strict

ACTIONS = ("Allow", "Deny", "Log", "Pass")
PROTOCOL_NAMES = {p.lower(): p for p in ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")}
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def parse_protocol(value: Any) -> str | int:
    """A protocol name (any case, normalised to Calico's spelling) or number 1-255."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a protocol")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError(f"protocol number {value} out of range 1-255")
        return value
    if isinstance(value, str) and value.lower() in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[value.lower()]
    raise ValueError(
        f"{value!r} is not a protocol: use one of {', '.join(PROTOCOL_NAMES.values())} "
        "or a number 1-255"
    )


def parse_port(value: Any) -> int | str:
    """A port: number 0-65535, range ``min:max``, or a named port."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} out of range 0-65535")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_port(int(text))
        if ":" in text:
            lo, _, hi = text.partition(":")
            if lo.isdigit() and hi.isdigit():
                a, b = int(lo), int(hi)
                if 0 <= a <= b <= 65535:
                    return f"{a}:{b}"
            raise ValueError(f"{value!r} is not a port range (min:max, 0-65535, min <= max)")
        if len(text) <= 15 and _PORT_NAME.match(text) and any(c.isalpha() for c in text):
            return text
    raise ValueError(f"{value!r} is not a port number, range or named port")


Protocol = Annotated[str | int, BeforeValidator(parse_protocol)]
Port = Annotated[int | str, BeforeValidator(parse_port)]


def protocol_name(p: str | int | None) -> str | None:
    """Protocol as a name where it has one (6 -> TCP), for checks."""
    numbers = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"}
    if isinstance(p, int):
        return numbers.get(p)
    return p


class ServiceAccountMatch(Strict):
    names: list[str] | None = None
    selector: SelectorText | None = None


class ServiceMatch(Strict):
    name: str | None = None
    namespace: str | None = None


class EntityRule(Strict):
    nets: list[CIDR] | None = None
    notNets: list[CIDR] | None = None
    selector: SelectorText | None = None
    notSelector: SelectorText | None = None
    namespaceSelector: SelectorText | None = None
    ports: list[Port] | None = None
    notPorts: list[Port] | None = None
    serviceAccounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    def has_ports(self) -> bool:
        return bool(self.ports or self.notPorts)

    def families(self) -> set[int]:
        return {ipaddress.ip_network(n, strict=False).version
                for n in (self.nets or []) + (self.notNets or [])}


class ICMPFields(Strict):
    type: int | None = Field(default=None, ge=0, le=254)
    code: int | None = Field(default=None, ge=0, le=255)

    @model_validator(mode="after")
    def _code_needs_type(self) -> ICMPFields:
        if self.code is not None and self.type is None:
            raise ValueError("code requires type to be set")
        return self


class HTTPMatch(Strict):
    methods: list[str] | None = None
    paths: list[dict[str, str]] | None = None


class RuleMetadata(Strict):
    annotations: dict[str, str] | None = None


class Rule(Strict):
    action: str
    ipVersion: Literal[4, 6] | None = None
    protocol: Protocol | None = None
    notProtocol: Protocol | None = None
    icmp: ICMPFields | None = None
    notICMP: ICMPFields | None = None
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @field_validator("action")
    @classmethod
    def _action(cls, v: str) -> str:
        if v not in ACTIONS:
            raise ValueError(f"{v!r} is not an action: use one of {', '.join(ACTIONS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        proto = protocol_name(self.protocol)
        for side in ("source", "destination"):
            ent: EntityRule = getattr(self, side)
            if ent.has_ports() and proto not in PORT_PROTOCOLS:
                raise ValueError(
                    f"{side}: rules that specify ports must set protocol to TCP, UDP or SCTP"
                )
            fams = ent.families()
            if self.ipVersion is not None and fams - {self.ipVersion}:
                raise ValueError(f"{side}.nets: address family does not match ipVersion "
                                 f"{self.ipVersion}")
        for name in ("icmp", "notICMP"):
            if getattr(self, name) is not None and proto not in ("ICMP", "ICMPv6"):
                raise ValueError(f"{name}: requires protocol ICMP or ICMPv6")
        if (self.ipVersion, proto) in ((4, "ICMPv6"), (6, "ICMP")):
            raise ValueError(f"protocol {proto} does not match ipVersion {self.ipVersion}")
        return self


def _check_types(kind: str, name: str, spec: Any) -> None:
    """Calico's defaulting and checks for ``types``."""
    errors = []
    if spec.types is None:
        spec.types = ["Ingress"] + (["Egress"] if spec.egress else [])
    for i, t in enumerate(spec.types):
        if t not in POLICY_TYPES:
            errors.append(f"spec.types[{i}]: {t!r} is not a policy type: use Ingress or Egress")
    if len(set(spec.types)) != len(spec.types):
        errors.append("spec.types: duplicate entries")
    if spec.ingress and "Ingress" not in spec.types:
        errors.append("spec.ingress: ingress rules are present but types does not include Ingress")
    if spec.egress and "Egress" not in spec.types:
        errors.append("spec.egress: egress rules are present but types does not include Egress")
    if errors:
        raise ResourceInvalid(kind, name, errors)


class NetworkPolicySpec(Strict):
    order: float | None = None
    tier: str | None = None
    selector: SelectorText | None = None
    types: list[str] | None = None
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    serviceAccountSelector: SelectorText | None = None
    performanceHints: list[str] | None = None

    @field_serializer("order")
    def _order(self, v: float | None) -> float | int | None:
        """Whole orders print as integers, as calicoctl shows them."""
        return int(v) if v is not None and float(v).is_integer() else v


class GlobalNetworkPolicySpec(NetworkPolicySpec):
    namespaceSelector: SelectorText | None = None
    doNotTrack: bool | None = None
    preDNAT: bool | None = None
    applyOnForward: bool | None = None


class _Policy(Resource):
    def apply_defaults(self) -> None:
        super().apply_defaults()
        spec = self.spec
        if spec.tier is None:
            spec.tier = "default"
        _check_types(self.KIND, self.name, spec)

    def sort_key(self) -> tuple[float, str]:
        """Calico's order: by ``order`` (unset last), then name."""
        order = self.spec.order
        return (float("inf") if order is None else order, self.name)


class NetworkPolicy(_Policy):
    KIND = "NetworkPolicy"
    NAMESPACED = True
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)


class GlobalNetworkPolicy(_Policy):
    KIND = "GlobalNetworkPolicy"
    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)

    def apply_defaults(self) -> None:
        super().apply_defaults()
        s = self.spec
        errors = []
        if s.preDNAT and s.doNotTrack:
            errors.append("spec: preDNAT and doNotTrack cannot both be true")
        if (s.preDNAT or s.doNotTrack) and not s.applyOnForward:
            errors.append("spec.applyOnForward: must be true if either preDNAT or doNotTrack "
                          "is true")
        if s.preDNAT and s.egress:
            errors.append("spec.egress: a preDNAT policy cannot have egress rules")
        if s.preDNAT and s.types and "Egress" in s.types:
            errors.append("spec.types: a preDNAT policy cannot have the Egress type")
        if errors:
            raise ResourceInvalid(self.KIND, self.name, errors)


class ProfileSpec(Strict):
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    labelsToApply: dict[str, str] | None = None


class Profile(Resource):
    KIND = "Profile"
    spec: ProfileSpec = Field(default_factory=ProfileSpec)


class NetworkSetSpec(Strict):
    nets: list[CIDR] | None = None


class NetworkSet(Resource):
    KIND = "NetworkSet"
    NAMESPACED = True
    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)


class GlobalNetworkSet(Resource):
    KIND = "GlobalNetworkSet"
    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)
