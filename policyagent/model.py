"""The dataplane model: what the policy calculation produces and the nftables renderer consumes.

Everything here is a frozen, hashable value. The calculation (:mod:`policyagent.calc`) builds a
:class:`DataplaneModel` for one node; the renderer turns it, or the :class:`ModelDiff` between
two models, into nftables transactions. No I/O happens here.

Identifiers
-----------
* **Policy ids**: ``gnp:<name>`` for a GlobalNetworkPolicy, ``np:<namespace>:<name>`` for a
  (Calico or translated Kubernetes) NetworkPolicy, ``pro:<name>`` for a profile. Programs are
  per direction, so :attr:`DataplaneModel.policies` and :attr:`DataplaneModel.profiles` are
  keyed by ``(id, direction)``.
* **Rule ids**: ``<policy id>/<direction>/<index>`` (index of the rule in the resource), stable
  while the policy is unchanged: meant for nft counters and log prefixes.
* **IP set ids**: ``<k><family>_<hash>``, ``k`` being ``s`` (addresses of everything a
  selector matches: CIDRs) or ``n`` (named port: ``ip,proto:port`` entries), ``family`` 4 or 6
  and ``hash`` 16 hex digits of SHA-256 over the canonical selector (plus protocol and port name
  for named ports). The same selector always gets the same id, on every node. Ids only use
  ``[a-z0-9_]`` so they are valid nft set names as they are.

How a rule matches (the renderer's contract)
--------------------------------------------
A :class:`RuleSpec` matches a packet when *every* present criterion matches:

* ``ip_version`` (``None``: both families); a rule is rendered for a family only if
  :meth:`RuleSpec.families` includes it.
* ``protocol`` / ``not_protocol``: IP protocol numbers.
* per side (``src_*`` / ``dst_*``):
  ``nets`` -- the address is in at least one (of the packet's family; a side listing nets of
  the other family only can never match); ``not_nets`` -- in none;
  ``ipsets`` -- in every listed set of the packet's family; ``not_ipsets`` -- in none of them;
  ports -- the port is in one of ``ports`` *or* ``(addr, proto, port)`` is in one of
  ``named_port_ipsets`` (no constraint when both are empty); ``not_ports`` /
  ``not_named_port_ipsets`` -- in none.
* ``icmp_type`` / ``icmp_code`` and ``not_icmp_type`` / ``not_icmp_code``.

Actions: ``allow`` accepts (ends all policy for this hook), ``deny`` drops, ``log`` logs and goes
on with the next rule, ``pass`` skips the rest of the tier (to the next tier, or to the
profiles after the last tier), ``none`` has no verdict (the rule only counts; used for rules
that can never match on any family and for Allow / Pass rules with match criteria Tortie does
not enforce -- ``services``, ``http`` -- so that they never allow more than asked; Deny / Log
rules with them apply without the criteria).

Evaluation order for an endpoint and direction
----------------------------------------------
For each :class:`TierPolicies` in order: the policies in order, their rules in order. If a tier
had policies but none gave a verdict, the tier's ``default_action`` applies (``deny``: drop;
``pass``: on to the next tier). When no tier applies, or every tier passed, the profiles are
evaluated in order; an ``allow`` accepts; anything else falling off the end is dropped.
A workload endpoint with no policy and no profile therefore drops everything.

Host endpoints (:class:`HostEndpointProgram`) police traffic to/from the host itself with
``ingress_policies`` / ``egress_policies`` and ``profiles``, with the failsafe ports of the
model allowed first. Their other hooks:

* ``untracked_*`` (raw, before conntrack): an ``allow`` accepts *and* untracks the packet,
  skipping pre-DNAT and normal policy; no default drop at the end.
* ``pre_dnat_ingress`` (prerouting, before DNAT; ingress only): an ``allow`` skips the normal
  policy of the host endpoint; no default drop at the end (the packet goes on to normal
  policy).
* ``forward_*`` (forwarded traffic through the interface, including to/from local workloads):
  the ``applyOnForward`` policies. With none for a direction, forwarded traffic is allowed in
  that direction; with some, the usual end-of-tier drop applies. Profiles are not used here.

Traffic forwarded to a local workload is otherwise not subject to host endpoint policy (only to
the workload's own policy).

Protected host ports (:class:`ProtectedPorts`, Tortie's own built-in rule): traffic from a
workload to one of these ports of a host -- the local host itself, any address outside
``workload_nets``, or one of ``host_addresses`` -- is dropped unless the workload's egress
``allow`` that accepted it came from a rule naming its destination port (``dst_ports`` or
``dst_named_port_ipsets``). A profile's or policy's allow-all never opens them.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "PROTOCOL_NAMES",
    "PROTOCOL_NUMBERS",
    "Action",
    "DataplaneModel",
    "Direction",
    "EndpointProgram",
    "FailsafeSpec",
    "FrozenMap",
    "HostEndpointProgram",
    "IPSetSpec",
    "KeyDiff",
    "MemberDelta",
    "ModelDiff",
    "PolicyProgram",
    "ProtectedPorts",
    "RuleSpec",
    "TierPolicies",
    "ipset_family",
    "ipset_id",
]

Action = Literal["allow", "deny", "log", "pass", "none"]
Direction = Literal["ingress", "egress"]
PortRange = tuple[int, int]

#: Calico's protocol names and their IP protocol numbers.
PROTOCOL_NUMBERS: Mapping[str, int] = {
    "TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136,
}
#: Protocol number -> the lower-case name used in named-port set entries.
PROTOCOL_NAMES: Mapping[int, str] = {n: p.lower() for p, n in PROTOCOL_NUMBERS.items()}

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping (Python has no ``frozendict``)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    # the dict's own views: set operations on them run in C (diffs of big models)
    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self is other or self._data == other._data
        if isinstance(other, dict):
            return self._data == other
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def ipset_id(kind: Literal["s", "n"], family: int, key: str) -> str:
    """The stable id of an IP set: ``s4_<hash>`` / ``n6_<hash>`` (see the module docstring)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{kind}{family}_{digest}"


def ipset_family(set_id: str) -> int:
    """The address family an IP set id is for."""
    return int(set_id[1])


@dataclass(frozen=True, slots=True)
class IPSetSpec:
    """One nft set. ``kind`` ``net``: members are CIDRs (``10.0.0.1/32``); ``ip_port``: members
    are ``ip,proto:port`` (``10.0.0.1,tcp:8080``), for named ports. ``selector`` (canonical)
    and ``named_port`` (``tcp:http``) say where it comes from, for comments and debugging."""

    id: str
    family: int
    members: frozenset[str]
    kind: Literal["net", "ip_port"] = "net"
    selector: str = ""
    named_port: str = ""


@dataclass(frozen=True, slots=True, repr=False)
class RuleSpec:
    """One rule of a policy or profile, in dataplane terms (see the module docstring)."""

    rule_id: str
    action: Action
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    src_nets: tuple[str, ...] = ()
    src_not_nets: tuple[str, ...] = ()
    src_ipsets: tuple[str, ...] = ()
    src_not_ipsets: tuple[str, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    src_not_ports: tuple[PortRange, ...] = ()
    src_named_port_ipsets: tuple[str, ...] = ()
    src_not_named_port_ipsets: tuple[str, ...] = ()
    dst_nets: tuple[str, ...] = ()
    dst_not_nets: tuple[str, ...] = ()
    dst_ipsets: tuple[str, ...] = ()
    dst_not_ipsets: tuple[str, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    dst_not_ports: tuple[PortRange, ...] = ()
    dst_named_port_ipsets: tuple[str, ...] = ()
    dst_not_named_port_ipsets: tuple[str, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name in ("rule_id", "action") or getattr(self, f.name) != f.default]
        return f"RuleSpec({', '.join(shown)})"

    def families(self) -> tuple[int, ...]:
        """The address families this rule can match (it is rendered only for those)."""
        return (4, 6) if self.ip_version is None else (self.ip_version,)

    def ipsets(self) -> frozenset[str]:
        """Every IP set id the rule refers to."""
        return frozenset(
            self.src_ipsets + self.src_not_ipsets + self.src_named_port_ipsets
            + self.src_not_named_port_ipsets + self.dst_ipsets + self.dst_not_ipsets
            + self.dst_named_port_ipsets + self.dst_not_named_port_ipsets)


@dataclass(frozen=True, slots=True)
class PolicyProgram:
    """The rules of one policy (or profile) for one direction."""

    id: str
    direction: Direction
    rules: tuple[RuleSpec, ...] = ()

    def ipsets(self) -> frozenset[str]:
        out: set[str] = set()
        for r in self.rules:
            out |= r.ipsets()
        return frozenset(out)


@dataclass(frozen=True, slots=True)
class TierPolicies:
    """The policies of one tier that apply to an endpoint in one direction, in order.

    A tier appears only if at least one of its policies applies; ``default_action`` is what
    happens when none of them gives a verdict (Calico's end-of-tier drop, or ``pass``)."""

    tier: str
    policies: tuple[str, ...]
    default_action: Literal["deny", "pass"] = "deny"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointProgram:
    """What to enforce on one local endpoint.

    ``name``: ``<namespace>/<name>`` for a workload endpoint, the resource name for a host
    endpoint. ``interface``: the host-side interface (``None`` for a host endpoint known only by
    its ``expectedIPs``, or one covering all interfaces). ``addresses``: CIDRs (workload
    ``ipNetworks``; host ``expectedIPs`` as /32 or /128). ``profiles`` are profile ids
    (``pro:<name>``), evaluated in order after the tiers."""

    kind: Literal["workload", "host"]
    name: str
    interface: str | None = None
    addresses: tuple[str, ...] = ()
    ingress_policies: tuple[TierPolicies, ...] = ()
    egress_policies: tuple[TierPolicies, ...] = ()
    profiles: tuple[str, ...] = ()
    allow_spoofed_prefixes: tuple[str, ...] = ()

    def policy_ids(self) -> frozenset[str]:
        """Every policy id the program refers to, in any hook."""
        return frozenset(p for tiers in self._tier_lists() for t in tiers for p in t.policies)

    def _tier_lists(self) -> tuple[tuple[TierPolicies, ...], ...]:
        return (self.ingress_policies, self.egress_policies)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostEndpointProgram(EndpointProgram):
    """A host endpoint: normal policy plus the pre-DNAT, forward and untracked hooks.

    ``all_interfaces`` is true for ``interfaceName: "*"`` (such endpoints get no untracked
    policy: Calico does not support it there)."""

    kind: Literal["workload", "host"] = "host"
    pre_dnat_ingress: tuple[TierPolicies, ...] = ()
    forward_ingress: tuple[TierPolicies, ...] = ()
    forward_egress: tuple[TierPolicies, ...] = ()
    untracked_ingress: tuple[TierPolicies, ...] = ()
    untracked_egress: tuple[TierPolicies, ...] = ()
    all_interfaces: bool = False

    def _tier_lists(self) -> tuple[tuple[TierPolicies, ...], ...]:
        return (self.ingress_policies, self.egress_policies, self.pre_dnat_ingress,
                self.forward_ingress, self.forward_egress, self.untracked_ingress,
                self.untracked_egress)


@dataclass(frozen=True, slots=True)
class FailsafeSpec:
    """One failsafe port: always allowed on host endpoints (in for inbound, out for outbound),
    optionally only from/to ``net``. Also one entry of :class:`ProtectedPorts`."""

    protocol: int
    port: int
    net: str | None = None


@dataclass(frozen=True, slots=True)
class ProtectedPorts:
    """Host ports workloads reach only through an allow rule naming the destination port.

    ``ports``: the entries (an entry with ``net`` protects only destinations in it);
    ``workload_nets``: destinations that are workloads (the IP pools), not protected unless
    listed in ``host_addresses`` (every node's addresses, tunnel addresses included, which are
    taken from the pools). Traffic to the local host is protected whatever its address."""

    ports: tuple[FailsafeSpec, ...] = ()
    workload_nets: tuple[str, ...] = ()
    host_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TunnelTraffic:
    """Encapsulated pod traffic between nodes, which host endpoint policy never drops (as
    Felix accepts VXLAN and IPIP from and to the other Calico hosts ahead of it): VXLAN (UDP
    ``vxlan_port``) while some enabled pool uses VXLAN, IPIP (IP protocol 4) while one uses
    IPIP, from and to ``hosts`` (every node's underlay addresses, IPv4 and IPv6: the VXLAN of
    IPv6 pools runs between the nodes' IPv6 addresses) only."""

    vxlan_port: int | None = None
    ipip: bool = False
    hosts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hosts) and (self.vxlan_port is not None or self.ipip)


@dataclass(frozen=True, slots=True)
class KeyDiff(Generic[K]):
    """Keys added, removed, and present in both with a different value."""

    added: frozenset[K] = frozenset()
    removed: frozenset[K] = frozenset()
    changed: frozenset[K] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @staticmethod
    def of(old: Mapping[K, Any], new: Mapping[K, Any]) -> KeyDiff[K]:
        if old is new:
            return KeyDiff()
        old_d = old._data if isinstance(old, FrozenMap) else old
        new_d = new._data if isinstance(new, FrozenMap) else new
        old_keys, new_keys = old_d.keys(), new_d.keys()
        # the keys whose values are not the same object, found in C (map, compress): a
        # model's unchanged parts are the same objects, so few are compared with ==
        both = list(old_keys & new_keys)
        other = list(itertools.compress(both, map(operator.is_not, map(old_d.__getitem__, both),
                                                  map(new_d.__getitem__, both))))
        changed = frozenset(k for k in other if old_d[k] != new_d[k])
        return KeyDiff(frozenset(new_keys - old_keys), frozenset(old_keys - new_keys), changed)


@dataclass(frozen=True, slots=True)
class MemberDelta:
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ModelDiff:
    """From one model to the next. ``ipsets.changed`` are sets in both models whose members
    differ; ``ipset_members`` says which members to add and remove for each of them."""

    endpoints: KeyDiff[str] = field(default_factory=KeyDiff)
    host_endpoints: KeyDiff[str] = field(default_factory=KeyDiff)
    policies: KeyDiff[tuple[str, str]] = field(default_factory=KeyDiff)
    profiles: KeyDiff[tuple[str, str]] = field(default_factory=KeyDiff)
    ipsets: KeyDiff[str] = field(default_factory=KeyDiff)
    ipset_members: FrozenMap[str, MemberDelta] = field(default_factory=FrozenMap)
    failsafe_changed: bool = False
    protected_changed: bool = False
    tunnels_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.endpoints or self.host_endpoints or self.policies or self.profiles
                    or self.ipsets or self.failsafe_changed or self.protected_changed
                    or self.tunnels_changed)

    @property
    def members_only(self) -> bool:
        """Only IP set members changed: the renderer can just add/delete set elements."""
        return (not (self.endpoints or self.host_endpoints or self.policies or self.profiles
                     or self.failsafe_changed or self.protected_changed
                     or self.tunnels_changed or self.ipsets.added or self.ipsets.removed)
                and bool(self.ipsets.changed))


@dataclass(frozen=True, slots=True)
class DataplaneModel:
    """Everything one node enforces.

    ``endpoints`` / ``host_endpoints`` by name; ``policies`` / ``profiles`` by ``(id,
    direction)`` -- only those some local endpoint refers to; ``ipsets`` by id -- exactly those
    these programs refer to (a rule for both families refers to both sets of its selector,
    empty or not)."""

    endpoints: FrozenMap[str, EndpointProgram] = field(default_factory=FrozenMap)
    host_endpoints: FrozenMap[str, HostEndpointProgram] = field(default_factory=FrozenMap)
    policies: FrozenMap[tuple[str, str], PolicyProgram] = field(default_factory=FrozenMap)
    profiles: FrozenMap[tuple[str, str], PolicyProgram] = field(default_factory=FrozenMap)
    ipsets: FrozenMap[str, IPSetSpec] = field(default_factory=FrozenMap)
    failsafe_in: tuple[FailsafeSpec, ...] = ()
    failsafe_out: tuple[FailsafeSpec, ...] = ()
    protected: ProtectedPorts = field(default_factory=ProtectedPorts)
    tunnels: TunnelTraffic = field(default_factory=TunnelTraffic)

    def diff(self, other: DataplaneModel) -> ModelDiff:
        """What changes going from this model (the old one) to ``other`` (the new one)."""
        ipsets = KeyDiff.of(self.ipsets, other.ipsets)
        members = {}
        for set_id in ipsets.changed:
            old, new = self.ipsets[set_id].members, other.ipsets[set_id].members
            members[set_id] = MemberDelta(new - old, old - new)
        return ModelDiff(
            endpoints=KeyDiff.of(self.endpoints, other.endpoints),
            host_endpoints=KeyDiff.of(self.host_endpoints, other.host_endpoints),
            policies=KeyDiff.of(self.policies, other.policies),
            profiles=KeyDiff.of(self.profiles, other.profiles),
            ipsets=ipsets,
            ipset_members=FrozenMap(members),
            failsafe_changed=(self.failsafe_in != other.failsafe_in
                              or self.failsafe_out != other.failsafe_out),
            protected_changed=self.protected != other.protected,
            tunnels_changed=self.tunnels != other.tunnels,
        )
