"""The CNI specification as Tortie needs it (pure: no I/O; the standard library and the
Kubernetes name rules of :mod:`datastore.labels`).

* error codes and :class:`CNIError` (the spec's error object);
* the runtime's environment: :func:`parse_env` validates ``CNI_COMMAND``,
  ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` for the
  command at hand; :func:`parse_cni_args` splits ``K=V;K=V`` (kubelet's
  ``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``, ... and ``IgnoreUnknown``);
* the network configuration: :func:`parse_config` (``cniVersion``, ``name``, ``type``,
  Tortie's own fields, ``prevResult``, the GC list ``cni.dev/valid-attachments``);
* results: :class:`Result` and its parts, :meth:`Result.to_dict` in any supported
  ``cniVersion`` (1.x: interfaces / ips with an interface index / routes / dns; 0.3.x and
  0.4.0: ips also carry ``"version": "4"`` or ``"6"``), :func:`parse_result` for a
  ``prevResult`` of any supported version.

Error codes 1-99 are the spec's; 100-102 are Tortie's IPAM codes (see
docs/pod-networking.md); 999 is an internal error (libcni's ``ErrInternal``).
"""

from __future__ import annotations

import ipaddress
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.labels import validate_dns1123_label, validate_dns1123_subdomain

__all__ = [
    "COMMANDS",
    "ERR_DECODE",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_INTERNAL",
    "ERR_INVALID_CONFIG",
    "ERR_INVALID_ENV",
    "ERR_IO",
    "ERR_IPAM_EXHAUSTED",
    "ERR_LIMITED_CONNECTIVITY",
    "ERR_PLUGIN_NOT_AVAILABLE",
    "ERR_POOL_NOT_ALLOWED",
    "ERR_TRY_AGAIN_LATER",
    "ERR_UNKNOWN_CONTAINER",
    "ERR_UNKNOWN_POOL",
    "ERR_UNSUPPORTED_FIELD",
    "LATEST_VERSION",
    "MAX_QUOTE",
    "MAX_TIMEOUT",
    "SUPPORTED_VERSIONS",
    "VALID_ATTACHMENTS_KEY",
    "CNIEnv",
    "CNIError",
    "IPConfig",
    "Interface",
    "NetConf",
    "Result",
    "Route",
    "error_dict",
    "parse_cni_args",
    "parse_config",
    "parse_env",
    "parse_result",
    "parse_valid_attachments",
    "parse_version",
    "quote",
    "validate_container_id",
    "validate_ifname",
    "version_at_least",
    "version_info",
]

# --- quoting input ------------------------------------------------------------------------------

#: At most this many characters of one input value are quoted in an error or a log line.
MAX_QUOTE = 200
#: Caps of an error's msg and details (a safety net behind :func:`quote`).
MAX_MSG, MAX_DETAILS = 500, 2000

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_QUOTE
_REPR.maxlevel = 3


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(value: Any) -> str:
    """``repr(value)`` for a message or a log line, cut to about :data:`MAX_QUOTE`
    characters (a hostile input must not be copied whole into every log line)."""
    if isinstance(value, str) and len(value) > MAX_QUOTE:
        return f"{value[:MAX_QUOTE]!r}... ({len(value)} characters)"
    try:
        return _cap(_REPR.repr(value), MAX_QUOTE)
    except Exception:  # a value whose repr fails or recurses too deeply
        return f"<{type(value).__name__}>"


# --- versions -----------------------------------------------------------------------------------

#: The cniVersions Tortie reads and writes (0.1.0 / 0.2.0 results are a different shape).
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"

_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; :class:`CNIError` (code 1) if not ``X.Y.Z``."""
    m = _SEMVER.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"invalid cniVersion {quote(version)}",
                       "cniVersion must be a semantic version like 1.0.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def version_info(cni_version: str | None = None) -> dict[str, Any]:
    """The answer to ``VERSION``."""
    version = cni_version if cni_version in SUPPORTED_VERSIONS else LATEST_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- errors -------------------------------------------------------------------------------------

ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_PLUGIN_NOT_AVAILABLE = 50
ERR_LIMITED_CONNECTIVITY = 51
ERR_IPAM_EXHAUSTED = 100
ERR_UNKNOWN_POOL = 101
ERR_POOL_NOT_ALLOWED = 102
ERR_INTERNAL = 999


class CNIError(Exception):
    """A failure reported to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        msg, details = _cap(msg, MAX_MSG), _cap(details, MAX_DETAILS)
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict[str, Any]:
        return error_dict(self.code, self.msg, self.details, cni_version)


def error_dict(code: int, msg: str, details: str = "",
               cni_version: str | None = None) -> dict[str, Any]:
    """The spec's error object (in the request's cniVersion when it is a supported one)."""
    out: dict[str, Any] = {
        "cniVersion": cni_version if cni_version in SUPPORTED_VERSIONS else LATEST_VERSION,
        "code": code,
        "msg": msg,
    }
    if details:
        out["details"] = details
    return out


# --- environment --------------------------------------------------------------------------------

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
#: Which of CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME each command needs.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
#: The CNI_ARGS keys Tortie understands (kubelet / containerd send the K8S_* ones).
KNOWN_ARGS = frozenset({
    "IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID", "IP",
})
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NETWORK_NAME = _CONTAINER_ID
#: Longest container ID and network name: the spec sets none, but both end up in file names
#: (which hold 255 bytes); runtimes use 64 hex digits.
MAX_NAME_LENGTH = 255
IFNAMSIZ = 16
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def validate_container_id(value: str) -> str | None:
    """The problem with a container ID, or None if it is valid."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"{quote(value)} is longer than {MAX_NAME_LENGTH} characters"
    if not _CONTAINER_ID.fullmatch(value):
        return (f"{quote(value)} is invalid: must start with a letter or digit and contain only "
                "letters, digits, '_', '.' and '-'")
    return None


def validate_ifname(value: str) -> str | None:
    """The problem with an interface name, or None if it is valid (Linux's rules)."""
    if not value:
        return "must not be empty"
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return f"{quote(value)} is not valid UTF-8"
    if size > IFNAMSIZ - 1:
        return f"{quote(value)} is longer than {IFNAMSIZ - 1} bytes"
    if value in (".", ".."):
        return f"{quote(value)} is not a valid interface name"
    for ch in value:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            return f"{quote(value)} contains {quote(ch)}, which an interface name cannot contain"
    return None


def _check_ip_arg(value: str) -> str | None:
    """The problem with ``IP=`` (comma-separated addresses, at most one per family)."""
    seen: set[int] = set()
    for item in value.split(","):
        try:
            addr = ipaddress.ip_address(item.strip())
        except ValueError:
            return f"{quote(item)} is not an IP address"
        if addr.version in seen:
            return f"more than one IPv{addr.version} address"
        seen.add(addr.version)
    return None


#: Checks of the values of the CNI_ARGS keys Tortie uses (kubelet's rules for the names).
_ARG_CHECKS = {
    "K8S_POD_NAMESPACE": (validate_dns1123_label, "a namespace name (DNS-1123 label)"),
    "K8S_POD_NAME": (validate_dns1123_subdomain, "a pod name (DNS-1123 subdomain)"),
    "K8S_POD_INFRA_CONTAINER_ID": (validate_container_id, "a container ID"),
    "IP": (_check_ip_arg, "a list of IP addresses"),
}


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` -> dict; :class:`CNIError` (code 4) for a malformed pair or, unless
    ``IgnoreUnknown`` is true, an unknown key."""
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_ARGS",
                           f"{quote(item)} is not a KEY=VALUE pair")
        out[key] = value
    ignore = out.get("IgnoreUnknown")
    if ignore is not None and ignore not in _TRUE and ignore not in _FALSE:
        raise CNIError(ERR_INVALID_ENV, "invalid CNI_ARGS",
                       f"IgnoreUnknown={quote(ignore)} is not a boolean")
    if ignore not in _TRUE:
        unknown = sorted(k for k in out if k not in KNOWN_ARGS)
        if unknown:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_ARGS",
                           f"unknown argument(s) {quote(', '.join(unknown))} "
                           "(add IgnoreUnknown=1 to ignore them)")
    for key, (check, what) in _ARG_CHECKS.items():
        value = out.get(key)
        if value:  # an empty value means "not given"
            problem = check(value)
            if problem:
                raise CNIError(ERR_INVALID_ENV, f"invalid CNI_ARGS {key}",
                               f"{quote(value)} is not {what}: {problem}")
    return out


@dataclass(frozen=True)
class CNIEnv:
    """The validated CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def pod_namespace(self) -> str | None:
        return self.args.get("K8S_POD_NAMESPACE") or None

    @property
    def pod_name(self) -> str | None:
        return self.args.get("K8S_POD_NAME") or None

    @property
    def pod_uid(self) -> str | None:
        return self.args.get("K8S_POD_UID") or None

    @property
    def is_k8s(self) -> bool:
        """Whether the runtime named the Kubernetes pod (namespace and name)."""
        return bool(self.pod_namespace and self.pod_name)

    def as_dict(self) -> dict[str, str]:
        """The environment again, as the plugin forwards it."""
        out = {"CNI_COMMAND": self.command}
        if self.container_id:
            out["CNI_CONTAINERID"] = self.container_id
        if self.netns:
            out["CNI_NETNS"] = self.netns
        if self.ifname:
            out["CNI_IFNAME"] = self.ifname
        if self.args:
            out["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args.items())
        if self.path:
            out["CNI_PATH"] = ":".join(self.path)
        return out


def parse_env(env: Mapping[str, str]) -> CNIEnv:
    """Validate the environment for its command; :class:`CNIError` (code 4) naming the
    offending variable.  (Whether ``CNI_NETNS`` exists is for the caller to check.)"""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(ERR_INVALID_ENV, "CNI_COMMAND is not set",
                       f"expected one of {', '.join(COMMANDS)}")
    if command not in COMMANDS:
        raise CNIError(ERR_INVALID_ENV, f"CNI_COMMAND {quote(command)} is not supported",
                       f"expected one of {', '.join(COMMANDS)}")
    required = _REQUIRED[command]
    missing = [v for v in required if not env.get(v)]
    if missing:
        raise CNIError(ERR_INVALID_ENV, f"{', '.join(missing)} not set",
                       f"{command} needs {', '.join(required)}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id:
        problem = validate_container_id(container_id)
        if problem:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_CONTAINERID", problem)
    ifname = env.get("CNI_IFNAME", "")
    if ifname:
        problem = validate_ifname(ifname)
        if problem:
            raise CNIError(ERR_INVALID_ENV, "invalid CNI_IFNAME", problem)
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CNIError(ERR_INVALID_ENV, "invalid CNI_NETNS",
                       f"{quote(netns)} is not an absolute path")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return CNIEnv(command, container_id, netns, ifname, args, path)


# --- network configuration ----------------------------------------------------------------------

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
#: The longest ``timeout`` (seconds) a configuration may ask for.
MAX_TIMEOUT = 3600.0
#: ``ipam.type`` values the tortie plugin accepts (it always does its own IPAM).
TORTIE_IPAM_TYPES = ("tortie-ipam", "calico-ipam")


@dataclass(frozen=True)
class NetConf:
    """One plugin's network configuration (from stdin), validated."""

    cni_version: str
    name: str
    type: str
    raw: Mapping[str, Any]
    ipam: Mapping[str, Any]
    mtu: int = 0
    timeout: float | None = None
    nodename: str | None = None
    ipv4_pools: tuple[str, ...] | None = None
    ipv6_pools: tuple[str, ...] | None = None
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    prev_result: Result | None = None
    runtime_config: Mapping[str, Any] = field(default_factory=dict)
    dns: Mapping[str, Any] = field(default_factory=dict)


def _invalid(msg: str, details: str = "") -> CNIError:
    return CNIError(ERR_INVALID_CONFIG, msg, details)


def _pool_list(ipam: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = ipam.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise _invalid(f"invalid ipam.{key}", "must be a list of IP pool names or CIDRs")
    return tuple(value)


def _bool_str(ipam: Mapping[str, Any], key: str, default: bool) -> bool:
    """Calico writes ``"assign_ipv4": "true"``; accept booleans too."""
    value = ipam.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _invalid(f"invalid ipam.{key}", f"{quote(value)} must be \"true\" or \"false\"")


def _object(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """``data[key]`` when it is an object; {} when absent or null; else code 7."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{where}{key} must be an object", f"got {type(value).__name__}")
    return value


def _check_conventions(data: Mapping[str, Any]) -> None:
    """The types of the conventional fields (``args``, ``capabilities``) and of Calico's
    (``policy``, ``kubernetes``): code 7 naming the field."""
    _object(_object(data, "args"), "cni", "args.")
    for name, value in _object(data, "capabilities").items():
        if not isinstance(value, bool):
            raise _invalid(f"capabilities.{quote(name)} must be true or false",
                           f"got {type(value).__name__}")
    policy = _object(data, "policy")
    if not isinstance(policy.get("type", ""), str):
        raise _invalid("policy.type must be a string")
    kubernetes = _object(data, "kubernetes")
    for key, value in kubernetes.items():
        if not isinstance(value, str):
            raise _invalid(f"kubernetes.{quote(key)} must be a string",
                           f"got {type(value).__name__}")


def parse_config(data: Any, *, ipam_plugin: bool = False) -> NetConf:
    """Validate a plugin's network configuration (already JSON-decoded).

    Codes: 1 for an unsupported ``cniVersion``, 2 for an ``ipam.type`` the tortie plugin
    does not delegate to, 7 for anything else that is missing or malformed.
    ``ipam_plugin``: the configuration is read by the standalone IPAM plugin (its settings
    are in the ``ipam`` section; ``ipam.type`` is whatever the main plugin was told).
    """
    if not isinstance(data, dict):
        raise _invalid("the network configuration must be a JSON object",
                       f"got {type(data).__name__}")
    version = data.get("cniVersion")
    if version is None:
        raise _invalid("cniVersion is missing")
    if not isinstance(version, str):
        raise _invalid("cniVersion must be a string", f"got {quote(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI version {quote(version)}",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("name is missing", "the network configuration needs a network name")
    if len(name) > MAX_NAME_LENGTH or not _NETWORK_NAME.fullmatch(name):
        raise _invalid(f"invalid network name {quote(name)}",
                       f"at most {MAX_NAME_LENGTH} characters; must start with a letter or "
                       "digit and contain only letters, digits, '_', '.' and '-'")
    typ = data.get("type")
    if not isinstance(typ, str) or not typ:
        raise _invalid("type is missing", "the network configuration needs the plugin type")
    ipam = data.get("ipam", {})
    if ipam is None:
        ipam = {}
    if not isinstance(ipam, dict):
        raise _invalid("ipam must be an object", f"got {type(ipam).__name__}")
    ipam_type = ipam.get("type")
    if ipam_type is not None and not isinstance(ipam_type, str):
        raise _invalid("ipam.type must be a string", f"got {quote(ipam_type)}")
    if not ipam_plugin and ipam_type and ipam_type not in TORTIE_IPAM_TYPES:
        raise CNIError(ERR_UNSUPPORTED_FIELD, f"ipam.type {quote(ipam_type)} is not supported",
                       f"the tortie plugin allocates addresses itself: use "
                       f"{' or '.join(TORTIE_IPAM_TYPES)} (or leave ipam.type out)")

    mtu = data.get("mtu", 0)
    if mtu is None:
        mtu = 0
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 68 <= mtu <= 65535):
        raise _invalid(f"invalid mtu {quote(mtu)}", "must be 0 (automatic) or 68-65535")
    timeout: float | None = None
    for section in (data, ipam):
        value = section.get("timeout")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 < value <= MAX_TIMEOUT or not math.isfinite(value):
            raise _invalid(f"invalid timeout {quote(value)}",
                           f"must be a number of seconds above 0, at most {MAX_TIMEOUT:g}")
        timeout = float(value)
    for section, where in ((data, ""), (ipam, "ipam.")):
        sock = section.get("socket")
        if sock is not None and (not isinstance(sock, str) or not sock.startswith("/")):
            raise _invalid(f"invalid {where}socket {quote(sock)}", "must be an absolute path")
    nodename = data.get("nodename")
    if nodename is not None and (not isinstance(nodename, str) or not nodename):
        raise _invalid(f"invalid nodename {quote(nodename)}", "must be a non-empty string")

    prev: Result | None = None
    if "prevResult" in data and data["prevResult"] is not None:
        try:
            prev = parse_result(data["prevResult"])
        except CNIError as e:
            raise _invalid("invalid prevResult", e.msg + (f": {e.details}" if e.details
                                                           else "")) from None
    runtime = _object(data, "runtimeConfig")
    dns = _object(data, "dns")
    _check_conventions(data)
    return NetConf(
        cni_version=version, name=name, type=typ, raw=data, ipam=ipam, mtu=mtu,
        timeout=timeout, nodename=nodename,
        ipv4_pools=_pool_list(ipam, "ipv4_pools"), ipv6_pools=_pool_list(ipam, "ipv6_pools"),
        assign_ipv4=_bool_str(ipam, "assign_ipv4", True),
        assign_ipv6=_bool_str(ipam, "assign_ipv6", False),
        prev_result=prev, runtime_config=runtime, dns=dns,
    )


def parse_valid_attachments(conf: NetConf | Mapping[str, Any]) -> set[tuple[str, str]]:
    """The GC list: ``{(containerID, ifname), ...}``; code 7 if absent or malformed.

    An absent list is an error rather than "nothing is valid": a runtime that forgot it
    must not make Tortie release every pod's addresses.
    """
    raw = conf.raw if isinstance(conf, NetConf) else conf
    items = raw.get(VALID_ATTACHMENTS_KEY)
    if items is None:
        raise _invalid(f"{VALID_ATTACHMENTS_KEY} is missing", "GC needs the list of attachments "
                       "that are still valid (an empty list means none)")
    if not isinstance(items, list):
        raise _invalid(f"{VALID_ATTACHMENTS_KEY} must be a list")
    out: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _invalid(f"{VALID_ATTACHMENTS_KEY}[{i}] must be an object")
        cid, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(cid, str) or not cid or not isinstance(ifname, str) or not ifname:
            raise _invalid(f"{VALID_ATTACHMENTS_KEY}[{i}] needs containerID and ifname")
        out.add((cid, ifname))
    return out


# --- results ------------------------------------------------------------------------------------


@dataclass
class Interface:
    name: str
    mac: str | None = None
    sandbox: str | None = None
    mtu: int | None = None

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu and version_at_least(version, "1.1.0"):
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out


@dataclass
class IPConfig:
    address: str  # CIDR, e.g. 10.0.0.5/32
    gateway: str | None = None
    interface: int | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not version_at_least(version, "1.0.0"):
            out["version"] = str(self.version)
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        if self.interface is not None:
            out["interface"] = self.interface
        return out


@dataclass
class Route:
    dst: str
    gw: str | None = None

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        return out


@dataclass
class Result:
    """A CNI result, independent of version; :meth:`to_dict` writes one version."""

    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str) -> dict[str, Any]:
        if version not in SUPPORTED_VERSIONS:
            raise CNIError(ERR_INCOMPATIBLE_VERSION,
                           f"cannot convert a result to cniVersion {quote(version)}",
                           f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        out["ips"] = [ip.to_dict(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    def after(self, prev: Result | None) -> Result:
        """This result appended to a chain's ``prevResult`` (which is passed through):
        prev's interfaces, ips and routes first, this result's interface indexes shifted."""
        if prev is None:
            return self
        shift = len(prev.interfaces)
        return Result(
            interfaces=[*prev.interfaces, *self.interfaces],
            ips=[*prev.ips, *(IPConfig(ip.address, ip.gateway,
                                       None if ip.interface is None else ip.interface + shift)
                              for ip in self.ips)],
            routes=[*prev.routes, *self.routes],
            dns=self.dns or prev.dns,
        )

    def container_interface(self, ifname: str) -> int | None:
        """Index of the interface named ``ifname`` inside a sandbox, if listed."""
        for i, iface in enumerate(self.interfaces):
            if iface.name == ifname and iface.sandbox:
                return i
        return None


def _bad_result(msg: str) -> CNIError:
    return CNIError(ERR_DECODE, "invalid result", msg)


def _cidr(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad_result(f"{where} must be a CIDR string")
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise _bad_result(f"{where} {quote(value)} is not an address/prefix") from None
    if "/" not in value:
        raise _bad_result(f"{where} {quote(value)} has no prefix length")
    return value


def _ip(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad_result(f"{where} must be an IP address string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _bad_result(f"{where} {quote(value)} is not an IP address") from None


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_result(f"{key} must be a list")
    return value


def parse_result(data: Any) -> Result:
    """Read a result (e.g. a ``prevResult``) of any supported cniVersion; code 6 if it
    cannot be read."""
    if not isinstance(data, dict):
        raise _bad_result("a result must be a JSON object")
    version = data.get("cniVersion", LATEST_VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"incompatible result version {quote(version)}",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    result = Result()
    for i, raw in enumerate(_list(data, "interfaces")):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _bad_result(f"interfaces[{i}] needs a name")
        mtu = raw.get("mtu")
        result.interfaces.append(Interface(
            raw["name"], raw.get("mac") or None, raw.get("sandbox") or None,
            mtu if isinstance(mtu, int) and not isinstance(mtu, bool) else None))
    for i, raw in enumerate(_list(data, "ips")):
        if not isinstance(raw, dict):
            raise _bad_result(f"ips[{i}] must be an object")
        address = _cidr(raw.get("address"), f"ips[{i}].address")
        iface = raw.get("interface")
        if iface is not None and (isinstance(iface, bool) or not isinstance(iface, int)
                                  or not 0 <= iface < len(result.interfaces)):
            raise _bad_result(f"ips[{i}].interface {quote(iface)} is not an index into interfaces")
        fam = raw.get("version")
        if fam is not None and fam != str(ipaddress.ip_interface(address).version):
            raise _bad_result(f"ips[{i}].version {quote(fam)} does not match {quote(address)}")
        result.ips.append(IPConfig(address, _ip(raw.get("gateway"), f"ips[{i}].gateway"),
                                   iface))
    for i, raw in enumerate(_list(data, "routes")):
        if not isinstance(raw, dict):
            raise _bad_result(f"routes[{i}] must be an object")
        dst = raw.get("dst")
        if not isinstance(dst, str):
            raise _bad_result(f"routes[{i}].dst is missing")
        try:
            ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise _bad_result(f"routes[{i}].dst {quote(dst)} is not a CIDR") from None
        result.routes.append(Route(dst, _ip(raw.get("gw"), f"routes[{i}].gw")))
    dns = data.get("dns")
    if dns is None:
        dns = {}
    if not isinstance(dns, dict):
        raise _bad_result("dns must be an object")
    result.dns = dict(dns)
    return result
