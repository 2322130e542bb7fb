"""Base classes shared by every resource model.

Models are strict like calicoctl: an unknown field is an error. Python attribute names are
the YAML field names (camelCase) so that error paths read exactly like the user's document.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    field_validator,
)

from datastore.documents import data_problems
from datastore.labels import validate_dns1123_subdomain, validate_labels
from datastore.selector import SelectorError, parse

CALICO_API_VERSION = "projectcalico.org/v3"


class Strict(BaseModel):
    """A strict mapping: unknown fields are rejected, aliases are the YAML names.

    Numbers must be finite (also when written as strings, "nan" or "1e999"): JSON cannot
    hold the others, and NaN would break every ordering.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False,
                              allow_inf_nan=False)

    def dump(self) -> dict[str, Any]:
        """The YAML/JSON form: aliases, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Lenient(BaseModel):
    """A mapping from another API (Kubernetes) whose unused fields are accepted and dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(Strict):
    """Kubernetes-style metadata, as Calico's v3 resources carry it."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resourceVersion: str | None = None
    uid: str | None = None
    creationTimestamp: str | None = None
    generation: int | None = None
    generateName: str | None = None
    deletionTimestamp: str | None = None
    deletionGracePeriodSeconds: int | None = None
    ownerReferences: list[dict[str, Any]] | None = None
    finalizers: list[str] | None = None
    managedFields: list[dict[str, Any]] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        if v is None:
            return v
        err = validate_dns1123_subdomain(v)
        if err:
            raise ValueError(f"invalid namespace {v!r}: {err}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return check_labels(v)


class LenientMeta(Lenient):
    """Kubernetes metadata for Kubernetes kinds: what Tortie uses, the rest dropped."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    creationTimestamp: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return check_labels(v)


# Server-owned metadata: kept from the store, never taken from a file on create.
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation")


class _ResourceBehaviour:
    """What every top-level resource does, whatever its strictness."""

    API_VERSION: ClassVar[str] = CALICO_API_VERSION
    KIND: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False

    apiVersion: str
    kind: str
    metadata: ObjectMeta | LenientMeta

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validate a document; raises ``ResourceInvalid`` naming each bad field."""
        problems = data_problems(data)
        if problems:
            raise ResourceInvalid(cls.KIND, name_of(data), problems)
        try:
            obj = cls.model_validate(data)
        except ValidationError as e:
            raise ResourceInvalid(cls.KIND, name_of(data), format_errors(e)) from None
        obj.apply_defaults()
        return obj

    def apply_defaults(self) -> None:
        """Fill in Calico's defaults and run cross-field checks (after validation)."""
        self.apiVersion = self.API_VERSION
        self.kind = self.KIND
        if self.NAMESPACED and not self.metadata.namespace:
            self.metadata.namespace = "default"
        if not self.NAMESPACED and self.metadata.namespace:
            raise ResourceInvalid(
                self.KIND, self.metadata.name,
                [f"metadata.namespace: {self.KIND} is not namespaced; remove the namespace"],
            )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace


class Resource(_ResourceBehaviour, Strict):
    """A strict top-level resource: apiVersion, kind, metadata, spec."""

    apiVersion: str = CALICO_API_VERSION
    kind: str = ""
    metadata: ObjectMeta


class LenientResource(_ResourceBehaviour, Lenient):
    """A Kubernetes kind from which Tortie keeps only what it uses."""

    API_VERSION: ClassVar[str] = "v1"
    apiVersion: str = "v1"
    kind: str = ""
    metadata: LenientMeta


class ResourceInvalid(ValueError):
    """A document failed validation; ``errors`` are ``field: message`` strings."""

    def __init__(self, kind: str, name: str | None, errors: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.errors = errors
        super().__init__(f"{self.what} is invalid: " + "; ".join(errors))

    @property
    def what(self) -> str:
        """``Kind(name)``, or as much of it as is known."""
        if self.kind and self.name:
            return f"{self.kind}({self.name})"
        return self.kind or (f"document {self.name!r}" if self.name else "document")


def name_of(data: Any) -> str | None:
    """metadata.name of a document, when it is a string."""
    if isinstance(data, dict):
        meta = data.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str):
            return meta["name"]
    return None


def format_loc(loc: tuple[Any, ...]) -> str:
    """('spec', 'ingress', 0, 'source') -> 'spec.ingress[0].source'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


_SUBPATH = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\[\d+\])?(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$")


def format_errors(e: ValidationError) -> list[str]:
    """Pydantic errors as ``field: message`` lines in the user's vocabulary."""
    lines: list[str] = []
    for err in e.errors(include_url=False):
        loc = format_loc(tuple(err["loc"]))
        typ = err["type"]
        if typ == "extra_forbidden":
            field, _, last = loc.rpartition(".")
            last = last or loc
            msg = f"unknown field {last!r}"
            lines.append(f"{field}: {msg}" if field else msg)
            continue
        if typ == "missing":
            msg = "required field is missing"
        else:
            msg = str(err["msg"])
            msg = msg.removeprefix("Value error, ")
            sub = _SUBPATH.match(msg)
            if sub:  # a model validator naming a field below its own location
                loc = f"{loc}.{sub.group(1)}" if loc else sub.group(1)
                msg = sub.group(2)
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


# --- reusable field checks -------------------------------------------------------------------

def check_name(v: str) -> str:
    """A resource name (also a reference to one): a DNS-1123 subdomain."""
    err = validate_dns1123_subdomain(v)
    if err:
        raise ValueError(f"invalid name {v!r}: {err}")
    return v


def check_labels(v: dict[str, str] | None) -> dict[str, str] | None:
    """Kubernetes label rules for every key and value."""
    if v:
        errs = validate_labels(v, field="labels")
        if errs:  # the caller's location already names the field
            raise ValueError("; ".join(e.removeprefix("labels: ") for e in errs))
    return v


def one_of(*values: str, case_insensitive: bool = False, allow_empty: bool = True,
           ) -> Callable[[str], str]:
    """A check that a string is one of ``values``.

    With ``case_insensitive`` any spelling is accepted and the canonical one is returned.
    ``allow_empty`` accepts "" (Go's zero value, meaning "unset").
    """
    canon = {v.lower(): v for v in values}

    def check(v: str) -> str:
        if v == "" and allow_empty:
            return v
        if v in values:
            return v
        if case_insensitive and v.lower() in canon:
            return canon[v.lower()]
        raise ValueError(f"{v!r} is not one of: {', '.join(values)}")

    return check


def check_selector(value: str | None) -> str | None:
    """Validate a Calico selector, keeping the user's text."""
    if value is None:
        return None
    try:
        parse(value)
    except SelectorError as e:
        raise ValueError(str(e)) from None
    return value


def check_cidr(value: str, *, allow_ip: bool = True, normalise: bool = False) -> str:
    """Validate an IPv4/IPv6 CIDR (or bare IP when allowed: it means /32 or /128)."""
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str):
        raise ValueError(f"{value!r} is not a CIDR")
    try:
        if "/" not in text:
            if not allow_ip:
                raise ValueError
            ip = ipaddress.ip_address(text)
            return f"{ip}/{ip.max_prefixlen}"
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    if normalise:
        return str(net)
    addr, _, plen = text.partition("/")
    return f"{ipaddress.ip_address(addr)}/{int(plen)}"


def check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except (ValueError, AttributeError):
        raise ValueError(f"{value!r} is not a valid IP address") from None


_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def check_duration(value: str | None) -> str | None:
    """A Go duration string like 5m0s or 90s."""
    if value is None:
        return None
    if not isinstance(value, str) or not (_DURATION.match(value) or value == "0"):
        raise ValueError(f"{value!r} is not a duration (e.g. 90s, 5m0s)")
    return value


def parse_asn(value: Any) -> int:
    """An AS number: 0..4294967295, as an integer, a numeric string or asdot ``X.Y``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an AS number")
    if isinstance(value, str):
        text = value.strip()
        if "." in text:
            hi, _, lo = text.partition(".")
            if hi.isdigit() and lo.isdigit() and int(hi) < 65536 and int(lo) < 65536:
                return int(hi) * 65536 + int(lo)
            raise ValueError(f"{value!r} is not an AS number")
        if not text.isdigit():
            raise ValueError(f"{value!r} is not an AS number")
        value = int(text)
    if not isinstance(value, int) or not 0 <= value <= 4294967295:
        raise ValueError(f"{value!r} is not an AS number (0-4294967295)")
    return value


ASNumber = Annotated[int, BeforeValidator(parse_asn)]
Duration = Annotated[str, AfterValidator(check_duration)]
SelectorText = Annotated[str, AfterValidator(check_selector)]
CIDR = Annotated[str, AfterValidator(check_cidr)]
IPAddr = Annotated[str, AfterValidator(check_ip)]
ResourceName = Annotated[str, AfterValidator(check_name)]
