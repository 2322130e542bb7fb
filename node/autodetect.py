"""The node's IPv4 address (``Node.spec.bgp.ipv4Address``): Calico's ``IP`` and
``IP_AUTODETECTION_METHOD``; and its IPv6 address (``Node.spec.bgp.ipv6Address``):
``IP6`` and ``IP6_AUTODETECTION_METHOD`` (``--ip6`` / ``--ip6-autodetection-method``), the
same settings for the other family, except that ``IP6`` defaults to ``none`` as in Calico
(no IPv6 address is detected unless asked; one set by hand stays).

``--ip`` / ``IP``:

* ``autodetect`` (default) -- detect it with the autodetection method, and write it;
* ``A.B.C.D/NN`` -- this address (a bare ``A.B.C.D`` takes the prefix length of the
  interface holding it, else /32);
* ``none`` -- never write it: the address already in the Node resource (set by hand) stays.

``--ip-autodetection-method`` / ``IP_AUTODETECTION_METHOD``:

* ``first-found`` (default) -- the first usable address, interfaces carrying a default
  route first, then by interface index; interfaces matching :data:`DEFAULT_EXCLUDES` never;
* ``interface=REGEX[,REGEX...]`` -- the first usable address of an interface whose name
  matches one of the expressions (matched from the start of the name, as Go's regexp in
  Calico is used: ``eth.*``; an expression without anchors matches anywhere);
* ``skip-interface=REGEX[,REGEX...]`` -- as first-found, but never on interfaces matching;
* ``can-reach=DEST`` -- the source address the kernel would use to reach ``DEST`` (an IP or
  a host name): a route lookup (a connected UDP socket sends nothing), then the interface
  holding that address gives the prefix length;
* ``cidr=CIDR[,CIDR...]`` -- the first usable address inside one of the networks;
* ``kubernetes-internal-ip`` -- the Kubernetes Node's ``InternalIP``.  tortie-node has no
  Kubernetes credentials; tortie-kube-controllers copies the Kubernetes Node's addresses into
  the Calico Node's ``spec.addresses`` (type ``InternalIP``), where tortie-node reads it, and
  the interface holding it gives the prefix length.

Usable: a global-scope address of the family that is not loopback, link-local or multicast
(IPv6: unique local addresses count as usable, as in Calico).  Tortie's
own devices (host veths with the interface prefix, ``vxlan.tortie``, ``vxlan-v6.tortie``,
``tunl0``) are never candidates except when ``interface=`` names them.

Parsing (:func:`parse_method`, :func:`parse_ip`) and choosing (:func:`choose`) are pure;
:func:`host_addresses` and :func:`source_address` read the kernel.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("tortie.node.address")

FIRST_FOUND = "first-found"
INTERFACE = "interface"
SKIP_INTERFACE = "skip-interface"
CAN_REACH = "can-reach"
CIDR = "cidr"
KUBERNETES_INTERNAL_IP = "kubernetes-internal-ip"
METHODS = (FIRST_FOUND, INTERFACE, SKIP_INTERFACE, CAN_REACH, CIDR, KUBERNETES_INTERNAL_IP)
#: the flag and the environment variable (named in errors), per IP version
METHOD_FIELD = "--ip-autodetection-method (IP_AUTODETECTION_METHOD)"
IP_FIELD = "--ip (IP)"
METHOD_FIELDS = {4: METHOD_FIELD, 6: "--ip6-autodetection-method (IP6_AUTODETECTION_METHOD)"}
IP_FIELDS = {4: IP_FIELD, 6: "--ip6 (IP6)"}
#: where the address goes in the Node resource (under spec.bgp)
NODE_FIELDS = {4: "ipv4Address", 6: "ipv6Address"}
IP_AUTODETECT = "autodetect"
IP_NONE = "none"

MAIN_TABLE = 254
#: Interfaces first-found never takes an address from (Calico's list).
DEFAULT_EXCLUDES = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*", r"^lo",
    r"^cali.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*", r"^vxlan\.calico.*",
    r"^vxlan-v6\.calico.*", r"^wireguard\.cali.*", r"^wg-v6\.cali.*", r"^nodelocaldns.*",
)


class AutodetectError(ValueError):
    """A bad method or address (the message names the setting), or no address found."""


@dataclass(frozen=True)
class HostAddress:
    """One address of an interface."""

    interface: str
    index: int
    address: str              # "A.B.C.D/NN" or "X:..:Y/NN"
    default_route: bool = False  # the interface carries a default route
    scope: int = 0            # the kernel's address scope (0: global)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_interface(self.address).ip


@dataclass(frozen=True)
class Method:
    """A parsed autodetection method."""

    kind: str
    text: str
    patterns: tuple[re.Pattern[str], ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    destination: str = ""
    version: int = 4


@dataclass(frozen=True)
class IPSetting:
    """A parsed ``--ip``: mode ``autodetect``, ``explicit`` (with ``address``) or ``none``."""

    mode: str
    address: str = ""


@dataclass(frozen=True)
class Choice:
    """The address chosen, where it was found and why."""

    address: str              # "A.B.C.D/NN"
    interface: str            # "" when no interface holds it
    method: str               # the method's text, or "IP" for an explicit address


def _split(value: str, what: str, field: str = METHOD_FIELD) -> list[str]:
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise AutodetectError(f"{field}: {what} needs a comma-separated list without "
                              "empty entries")
    return parts


def parse_method(text: str | None, version: int = 4) -> Method:
    """Parse an autodetection method of IP ``version``; :class:`AutodetectError` naming the
    setting."""
    field = METHOD_FIELDS[version]
    text = (text or FIRST_FOUND).strip()
    kind, sep, value = text.partition("=")
    kind = kind.strip().lower()
    if kind in (FIRST_FOUND, KUBERNETES_INTERNAL_IP):
        if sep:
            raise AutodetectError(f"{field}: {kind} takes no value, got {text!r}")
        return Method(kind, text, version=version)
    if kind not in METHODS:
        raise AutodetectError(f"{field}: unknown method {text!r}; one of first-found, "
                              "interface=REGEX, skip-interface=REGEX, can-reach=DEST, "
                              "cidr=CIDR[,CIDR...], kubernetes-internal-ip")
    if not sep or not value.strip():
        raise AutodetectError(f"{field}: {kind}= needs a value, got {text!r}")
    value = value.strip()
    if kind in (INTERFACE, SKIP_INTERFACE):
        patterns = []
        for p in _split(value, kind, field):
            try:
                patterns.append(re.compile(p))
            except re.error as e:
                raise AutodetectError(f"{field}: {kind}: {p!r} is not a valid regular "
                                      f"expression: {e}") from None
        return Method(kind, text, patterns=tuple(patterns), version=version)
    if kind == CIDR:
        networks = []
        for c in _split(value, kind, field):
            try:
                net = ipaddress.ip_network(c, strict=False)
                if net.version != version:
                    raise ValueError(c)
                networks.append(net)
            except ValueError:
                raise AutodetectError(f"{field}: cidr: {c!r} is not an IPv{version} CIDR") \
                    from None
        return Method(kind, text, networks=tuple(networks), version=version)
    # can-reach: an address of the family or a host name
    if any(c.isspace() for c in value) or "/" in value:
        raise AutodetectError(f"{field}: can-reach: {value!r} is not an IP address "
                              "or a host name")
    return Method(kind, text, destination=value, version=version)


def parse_ip(text: str | None, version: int = 4) -> IPSetting:
    """Parse ``--ip`` (``--ip6`` for ``version=6``: default ``none``); :class:`AutodetectError`
    naming the setting."""
    field = IP_FIELDS[version]
    value = (text or (IP_AUTODETECT if version == 4 else IP_NONE)).strip()
    if value.lower() in (IP_AUTODETECT, IP_NONE):
        return IPSetting(value.lower())
    try:
        iface = ipaddress.ip_interface(value)
        if iface.version != version:
            raise ValueError(value)
    except ValueError:
        form = "A.B.C.D/NN" if version == 4 else "X:X::X/NN"
        raise AutodetectError(f"{field}: {value!r} is not 'autodetect', 'none' or an "
                              f"IPv{version} address {form}") from None
    if not usable(iface.ip):
        raise AutodetectError(f"{field}: {value!r} is not a usable node address "
                              "(loopback, link-local, multicast or unspecified)")
    return IPSetting("explicit", value if "/" in value else str(iface.ip))


def usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or ip.is_reserved)


def _matches(patterns: Iterable[re.Pattern[str]], name: str) -> bool:
    return any(p.search(name) for p in patterns)


def _ordered(addresses: Iterable[HostAddress]) -> list[HostAddress]:
    return sorted((a for a in addresses if a.scope == 0 and usable(a.ip)),
                  key=lambda a: (not a.default_route, a.index))


@dataclass(frozen=True)
class Own:
    """Tortie's own devices: never a node address unless ``interface=`` names them."""

    interface_prefix: str = "cali"
    devices: tuple[str, ...] = ()  # the tunnel devices (routing.desired names them)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.startswith(self.interface_prefix)
                                          or name in self.devices)


def holder(addresses: Iterable[HostAddress], ip: str) -> HostAddress | None:
    """The interface address holding ``ip`` (lowest index first)."""
    want = ipaddress.ip_address(ip)
    for a in sorted(addresses, key=lambda a: a.index):
        if a.ip == want:
            return a
    return None


def choose(method: Method, addresses: Sequence[HostAddress], *, own: Own | None = None,
           source: str | None = None, internal_ips: Sequence[str] = ()) -> Choice | None:
    """The address ``method`` picks from ``addresses``; None when none fits.

    ``source``: for can-reach, the kernel's source address towards the destination;
    ``internal_ips``: for kubernetes-internal-ip, the Kubernetes Node's InternalIP(s)."""
    own = own or Own()
    if method.kind == CAN_REACH or method.kind == KUBERNETES_INTERNAL_IP:
        wanted = [source] if method.kind == CAN_REACH and source else list(internal_ips)
        for ip in wanted:
            try:
                found = holder(addresses, ip)
            except ValueError:
                continue  # not an address
            if found is not None and found.interface not in own:
                return Choice(found.address, found.interface, method.text)
        return None
    ordered = _ordered(addresses)
    if method.kind == INTERFACE:
        candidates = [a for a in ordered if _matches(method.patterns, a.interface)]
    else:
        candidates = [a for a in ordered if a.interface not in own]
        if method.kind == FIRST_FOUND:
            excludes = [re.compile(p) for p in DEFAULT_EXCLUDES]
            candidates = [a for a in candidates if not _matches(excludes, a.interface)]
        elif method.kind == SKIP_INTERFACE:
            candidates = [a for a in candidates if not _matches(method.patterns, a.interface)]
        elif method.kind == CIDR:
            candidates = [a for a in candidates
                          if any(a.ip in n for n in method.networks)]
    if not candidates:
        return None
    return Choice(candidates[0].address, candidates[0].interface, method.text)


def explicit(setting: IPSetting, addresses: Sequence[HostAddress]) -> Choice:
    """The Choice of an explicit ``--ip`` (a bare address gets its interface's prefix)."""
    ip = setting.address.split("/")[0]
    found = holder(addresses, ip)
    if "/" in setting.address:
        return Choice(setting.address, found.interface if found else "", "IP")
    if found is not None:
        return Choice(found.address, found.interface, "IP")
    return Choice(f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}", "", "IP")


def internal_ips(node_doc: dict[str, Any] | None) -> list[str]:
    """The ``InternalIP`` entries of a Calico Node document's ``spec.addresses``."""
    spec = (node_doc or {}).get("spec") or {}
    out = []
    for a in spec.get("addresses") or []:
        if isinstance(a, dict) and a.get("type") == "InternalIP" and a.get("address"):
            out.append(str(a["address"]).split("/")[0])
    return out


# --- the kernel ---------------------------------------------------------------------------------


def _af(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def host_addresses(version: int = 4) -> list[HostAddress]:
    """Every address of IP ``version`` of this network namespace, with its interface."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME"))
                 for link in ipr.get_links()}
        default: set[int] = set()
        for route in ipr.get_routes(family=_af(version), table=MAIN_TABLE):
            if route["dst_len"] == 0 and route.get_attr("RTA_OIF"):
                default.add(int(route.get_attr("RTA_OIF")))
        out = []
        for addr in ipr.get_addr(family=_af(version)):
            ip = addr.get_attr("IFA_ADDRESS") or addr.get_attr("IFA_LOCAL")
            if ip is None:
                continue
            index = int(addr["index"])
            out.append(HostAddress(names.get(index, str(index)), index,
                                   f"{ip}/{addr['prefixlen']}", index in default,
                                   int(addr["scope"])))
    return out


def source_address(destination: str, version: int = 4) -> str:
    """The source address the kernel picks towards ``destination`` (IP or host name): a
    connected UDP socket does the route lookup and sends nothing.  OSError if there is no
    route (or the name does not resolve)."""
    infos = socket.getaddrinfo(destination, 9, _af(version), socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{destination} has no IPv{version} address")
    with socket.socket(_af(version), socket.SOCK_DGRAM) as s:
        s.connect(infos[0][4])
        return str(s.getsockname()[0])


# --- the resolver tortie-node uses --------------------------------------------------------------


class AddressResolver(Protocol):
    """What tortie-node asks for its address (:class:`NodeAddress`)."""

    #: True while the answer waits for something the Node document will carry
    pending: bool

    def resolve(self, node_doc: dict[str, Any] | None) -> str | None:
        """The address to write (``A.B.C.D/NN``), or None to leave the Node's as it is."""
        ...


class NodeAddress:
    """What tortie-node writes as ``spec.bgp.ipv4Address`` (``ipv6Address`` for
    ``version=6``) each time it registers."""

    def __init__(self, ip: IPSetting, method: Method, own: Own | None = None,
                 version: int = 4) -> None:
        self.ip = ip
        self.method = method
        self.version = version
        self.field = NODE_FIELDS[version]
        self.own = own or Own()
        #: True while the method is waiting for something (kubernetes-internal-ip without
        #: the InternalIP yet): the registrar tries again sooner
        self.pending = False
        self._last: Choice | None = None
        self._last_problem = ""

    def resolve(self, node_doc: dict[str, Any] | None) -> str | None:
        """The address to write (``A.B.C.D/NN``), or None to leave the Node's as it is.
        Reads the kernel: call it in a thread."""
        self.pending = False
        if self.ip.mode == IP_NONE:
            return None
        addresses = host_addresses(self.version)
        if self.ip.mode == "explicit":
            choice = explicit(self.ip, addresses)
            if not choice.interface:
                self._problem("the configured node address is on no interface of this node",
                              {"address": choice.address})
        else:
            try:
                choice = self._detect(addresses, node_doc)
            except OSError as e:
                self._problem("cannot autodetect the node address",
                              {"method": self.method.text, "error": str(e)})
                return None
            if choice is None:
                return None
        if choice != self._last:
            log.info("node address chosen", extra={"fields": {
                "field": self.field, "address": choice.address,
                "interface": choice.interface or "-", "method": choice.method}})
            self._last = choice
        return choice.address

    def _detect(self, addresses: Sequence[HostAddress],
                node_doc: dict[str, Any] | None) -> Choice | None:
        m = self.method
        if m.kind == CAN_REACH:
            source = source_address(m.destination, self.version)
            choice = choose(m, addresses, own=self.own, source=source)
            if choice is None:
                self._problem("no interface holds the source address towards the "
                              "destination", {"method": m.text, "source": source})
            return choice
        if m.kind == KUBERNETES_INTERNAL_IP:
            ips = internal_ips(node_doc)
            choice = choose(m, addresses, own=self.own, internal_ips=ips)
            if choice is None:
                self.pending = True
                self._problem(
                    "no Kubernetes InternalIP of this node on its interfaces yet "
                    "(tortie-kube-controllers copies it into the Node's spec.addresses)",
                    {"method": m.text, "internal_ips": ",".join(ips) or "-"})
            return choice
        choice = choose(m, addresses, own=self.own)
        if choice is None:
            self._problem("no interface address fits the autodetection method",
                          {"method": m.text, "addresses": ",".join(
                              f"{a.interface}:{a.address}" for a in addresses) or "-"})
        return choice

    def _problem(self, message: str, fields: dict[str, str]) -> None:
        fields = {"field": self.field, **fields}
        key = message + repr(sorted(fields.items()))
        if key != self._last_problem:  # once per distinct problem, not every resync
            log.warning(message, extra={"fields": fields})
            self._last_problem = key
