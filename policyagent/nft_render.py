"""Render a :class:`~policyagent.model.DataplaneModel` as one nftables ``inet`` table (pure).

The output of :func:`render` is a complete ``nft -f`` script that replaces the whole table in
one atomic transaction (``table X {}`` + ``delete table X`` + the full definition); other
tables are never touched. :func:`render_incremental` produces the smallest transaction from a
table rendered from one model to what :func:`render` makes of the next.

Layout (``cali*`` are workload interfaces; ``F`` is the mark mask below)
------------------------------------------------------------------------
* ``raw_pre`` / ``raw_out`` (priority raw, -300): host endpoints' doNotTrack (``untracked_*``)
  policy; an allow sets ``MARK_UNTRACKED`` and ``notrack``; no default drop.
* ``pre_dnat`` (prerouting, -110, before DNAT): host endpoints' preDNAT policy; an allow sets
  ``MARK_PREDNAT`` (which skips the host endpoint's normal policy); no default drop.
* ``input`` / ``forward`` / ``output`` (filter, 0): untracked packets accepted, then
  ``ct state invalid drop`` and ``ct state established,related accept``, then dispatch:
  ``iifname "cali*" jump from_wl`` (a chain clearing the verdict bits, then doing ``iifname
  vmap @wl_from`` with ``goto`` elements, so an unknown workload interface falls through to a
  drop), then for what the workload's egress policy allowed ``jump protect_host`` (input) /
  ``jump protect_fwd`` (forward): the protected host ports (see below), ``oifname "cali*"
  jump to_wl``, host endpoints through ``@hep_in`` / ``@hep_out`` / ``@hep_fwd_in`` /
  ``@hep_fwd_out`` (and their ``*`` fall-back). Traffic to or from a workload never goes
  through normal host endpoint policy; host-to-local-workload traffic is accepted in output
  (kubelet probes), as Calico does.
* Per endpoint and direction, a chain ``w{i,e}_<hash>`` / ``h{i,e}_<hash>`` / ``hf{i,e}_<hash>``
  / ``hp_<hash>`` / ``hu{i,e}_<hash>``: anti-spoofing (workload egress), failsafe ports (host,
  before policy), then the policy steps, then a counted drop (hooks with a default drop).
  The steps: for each tier, ``jump`` the tier chain and leave on accept; then the same for
  each profile. A workload chain holds only ``jump wp{i,e}_<hash>`` (the steps, in a chain
  shared by every workload with the same tiers and profiles), leave on accept, its drop.
* Tier chains ``t{i,e}_<hash>`` (shared by every endpoint with the same tier content): clear
  the accept/pass bits, ``jump`` each policy chain in order, end-of-tier ``drop`` when the
  tier's default action is deny (and the hook has a default drop) and no policy decided.
* Policy / profile chains ``p{i,e}_<hash>`` / ``r{i,e}_<hash>``: a policy chain first
  ``return``s when an earlier policy of the tier set the accept or pass bit (so the tier
  chain needs no check after each jump), a profile chain first clears both bits; then the
  rules, each with a ``counter`` and ``comment "<rule_id>"``: allow sets ``MARK_ACCEPT`` and
  returns, pass sets ``MARK_PASS`` and returns, deny drops, log logs (``tortie <rule_id>``)
  and goes on. A rule (or a named-port alternative of one) that needs an address in an IP
  set with no member cannot match and is left out -- typically every IPv6 variant in an
  IPv4-only cluster -- until the set gets a member (the chain is then refilled).

Protected host ports (:class:`~policyagent.model.ProtectedPorts`): ``protect_host`` drops
workload traffic to those ports of this host (any address), ``protect_fwd`` forwarded workload
traffic to them on any address outside the IP pools or on a node address -- unless the allow
that accepted it came from a rule naming its destination port: such a rule sets
``MARK_EXPLICIT_PORT`` with ``MARK_ACCEPT`` (both chains first return when it is set).

Chain names are a kind prefix plus 12 hex digits of SHA-256 over the id (always far below nft's
name limits); every chain carries a ``comment`` naming what it is for.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import ipaddress
import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from policyagent.model import (
    PROTOCOL_NAMES,
    DataplaneModel,
    EndpointProgram,
    FailsafeSpec,
    HostEndpointProgram,
    IPSetSpec,
    ModelDiff,
    PolicyProgram,
    ProtectedPorts,
    RuleSpec,
    TierPolicies,
    TunnelTraffic,
    ipset_family,
)

__all__ = [
    "MARK_ACCEPT",
    "MARK_EXPLICIT_PORT",
    "MARK_MASK",
    "MARK_PASS",
    "MARK_PREDNAT",
    "MARK_UNTRACKED",
    "ND_COMMENT",
    "WORKLOAD_PREFIX",
    "chain_name",
    "clear_caches",
    "comment_for",
    "policy_chain",
    "refilled_programs",
    "render",
    "render_incremental",
    "render_table_delete",
]

MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_PREDNAT = 0x40000
MARK_UNTRACKED = 0x80000
#: Set with MARK_ACCEPT by an allow rule that names the destination port: what lets workload
#: traffic through to a protected host port.
MARK_EXPLICIT_PORT = 0x100000
MARK_MASK = MARK_ACCEPT | MARK_PASS | MARK_PREDNAT | MARK_UNTRACKED | MARK_EXPLICIT_PORT
_VERDICT_BITS = MARK_ACCEPT | MARK_PASS
_CLEAR_VERDICT = f"meta mark set meta mark & {0xFFFFFFFF & ~_VERDICT_BITS:#010x}"
#: First rule of from_wl: a workload's packet starts with no verdict of any kind.
_CLEAR_WORKLOAD = (f"meta mark set meta mark & "
                   f"{0xFFFFFFFF & ~(_VERDICT_BITS | MARK_EXPLICIT_PORT):#010x}")
_ACCEPTED = f"meta mark & {MARK_ACCEPT:#x} != 0"
#: First rule of every policy chain: a policy earlier in the tier already decided.
_DECIDED = f"meta mark & {_VERDICT_BITS:#x} != 0 return"

#: Host-side workload interfaces start with this (Calico's default prefix).
WORKLOAD_PREFIX = "cali"
#: the nftables table the policy agent owns (tortie-node --policy-table)
DEFAULT_TABLE = "tortie"
_FAMILY_KW = {4: "ip", 6: "ip6"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_ICMP_KW = {4: "icmp", 6: "icmpv6"}
_MAX_COMMENT = 120
_MAX_LOG_PREFIX = 127
#: ICMPv6 a workload may always send to the host, ahead of its egress policy and of
#: anti-spoofing (link-local and unspecified sources): neighbour discovery, router
#: solicitation and MLD. Felix's list (130-133, 135, 136) plus MLDv2 reports (143), which
#: Linux sends by default. Nothing else: an echo to the host's link-local address is policy's.
_ND_TYPES = ("mld-listener-query", "mld-listener-report", "mld-listener-done",
             "nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert",
             "mld2-listener-report")
#: The comment (counter key) of the rule accepting them.
ND_COMMENT = "workload neighbour discovery and MLD"


# --- names ----------------------------------------------------------------------------------

def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=1 << 16)
def chain_name(kind: str, key: str) -> str:
    """``<kind>_<12 hex>``: the chain for ``key`` (an id, a name, a canonical tier text)."""
    return f"{kind}_{_digest(key)}"


def _dir(direction: str) -> str:
    return "i" if direction == "ingress" else "e"


@functools.lru_cache(maxsize=1 << 14)
def policy_chain(policy_id: str, direction: str, *, profile: bool = False) -> str:
    """The chain of a policy (``p``) or profile (``r``) program in one direction."""
    return chain_name(("r" if profile else "p") + _dir(direction), f"{policy_id}|{direction}")


def comment_for(text: str) -> str:
    """A safe nft comment string for ``text`` (what :func:`read_counters` keys by)."""
    clean = text.replace('"', "'").replace("\\", "/")
    if len(clean) > _MAX_COMMENT:
        clean = f"{clean[:_MAX_COMMENT - 13]}~{_digest(clean)}"
    return clean


def _quote(text: str) -> str:
    return f'"{comment_for(text)}"'


# --- rules -----------------------------------------------------------------------------------

def _port_expr(ranges: Iterable[tuple[int, int]]) -> str:
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in sorted(set(ranges))]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _net_expr(nets: Iterable[str]) -> str:
    items = sorted(set(nets))
    return items[0] if len(items) == 1 else "{ " + ", ".join(_drop_subsumed(items)) + " }"


_HOST_SUFFIXES = ("/32", "/128")


@functools.lru_cache(maxsize=1 << 16)
def _parse_net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parsed once: the same addresses appear in many sets and in every full render."""
    return ipaddress.ip_network(text, strict=False)


def _drop_subsumed(members: Iterable[str]) -> list[str]:
    """CIDRs minus those inside another one (nft refuses overlapping interval elements)."""
    texts = set(members)
    if all(m.endswith(_HOST_SUFFIXES) for m in texts):
        return sorted(texts)  # single addresses (canonical text): none inside another
    nets = sorted({_parse_net(m) for m in texts},
                  key=lambda n: (n.version, n.prefixlen, n.network_address))
    # Shortest prefixes first; a net is subsumed when its supernet at one of the prefix lengths
    # kept so far is kept: O(members x distinct prefix lengths), not O(members^2).
    kept: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    lengths: dict[int, list[int]] = {4: [], 6: []}
    for net in nets:
        shorter = lengths[net.version]
        if any(net.supernet(new_prefix=p) in kept for p in shorter if p < net.prefixlen):
            continue
        kept.add(net)
        if not shorter or shorter[-1] != net.prefixlen:
            shorter.append(net.prefixlen)
    return sorted(str(n) for n in kept)


def _of_family(nets: Iterable[str], family: int) -> list[str]:
    return [n for n in nets if _net_family(n) == family]


@functools.lru_cache(maxsize=1 << 16)
def _net_family(text: str) -> int:
    return 6 if ":" in text else ipaddress.ip_network(text, strict=False).version


def _rule_matches(rule: RuleSpec, family: int, empty: frozenset[str] = frozenset()
                  ) -> list[list[str]] | None:
    """The match expressions of ``rule`` for ``family``: one list per alternative (named ports
    OR port ranges expand to several rules); ``None`` when it can never match that family.

    ``empty``: ids of IP sets that have no member: a rule that needs an address (or named
    port) in one of them can never match, and is left out (as is such a named-port
    alternative)."""
    fam = _FAMILY_KW[family]
    common: list[str] = [f"meta nfproto {_NFPROTO[family]}"]
    if rule.protocol is not None:
        common.append(f"meta l4proto {rule.protocol}")
    if rule.not_protocol is not None:
        common.append(f"meta l4proto != {rule.not_protocol}")
    alternatives: list[list[list[str]]] = []
    for addr_kw, port, (nets, not_nets_all, ipsets, not_ipsets, ranges, named_all, not_ranges,
                        not_named) in (
            ("saddr", "th sport", _side(rule, "src")), ("daddr", "th dport", _side(rule, "dst"))):
        addr = f"{fam} {addr_kw}"
        if nets:
            mine = _of_family(nets, family)
            if not mine:
                return None
            common.append(f"{addr} {_net_expr(mine)}")
        if not_nets_all:
            not_nets = _of_family(not_nets_all, family)
            if not_nets:
                common.append(f"{addr} != {_net_expr(not_nets)}")
        for sid in sorted(ipsets):
            if ipset_family(sid) == family:
                if sid in empty:
                    return None
                common.append(f"{addr} @{sid}")
        for sid in sorted(not_ipsets):
            if ipset_family(sid) == family:
                common.append(f"{addr} != @{sid}")
        if ranges or named_all:
            named = sorted(s for s in named_all if ipset_family(s) == family and s not in empty)
            alts: list[list[str]] = []
            if ranges:
                alts.append([f"{port} {_port_expr(ranges)}"])
            alts.extend([f"{addr} . meta l4proto . {port} @{sid}"] for sid in named)
            if not alts:
                return None
            alternatives.append(alts)
        if not_ranges:
            common.append(f"{port} != {_port_expr(not_ranges)}")
        for sid in sorted(not_named):
            if ipset_family(sid) == family:
                common.append(f"{addr} . meta l4proto . {port} != @{sid}")
    if rule.protocol is None and (
            rule.src_ports or rule.src_not_ports or rule.src_named_port_ipsets
            or rule.src_not_named_port_ipsets or rule.dst_ports or rule.dst_not_ports
            or rule.dst_named_port_ipsets or rule.dst_not_named_port_ipsets):
        common.append("meta l4proto { tcp, udp, sctp, udplite }")
    icmp = _ICMP_KW[family]
    if rule.icmp_type is not None:
        common.append(f"{icmp} type {rule.icmp_type}")
    if rule.icmp_code is not None:
        common.append(f"{icmp} code {rule.icmp_code}")
    if rule.not_icmp_type is not None:
        if rule.not_icmp_code is None:
            common.append(f"{icmp} type != {rule.not_icmp_type}")
        else:
            common.append(f"{icmp} type . {icmp} code != "
                          f"{{ {rule.not_icmp_type} . {rule.not_icmp_code} }}")
    return [common + [m for alt in combo for m in alt]
            for combo in itertools.product(*alternatives)]


def _side(rule: RuleSpec, side: str) -> tuple[tuple[Any, ...], ...]:
    """One side's criteria: nets, not nets, IP sets, not IP sets, ports, named-port sets,
    not ports, not named-port sets."""
    if side == "src":
        return (rule.src_nets, rule.src_not_nets, rule.src_ipsets, rule.src_not_ipsets,
                rule.src_ports, rule.src_named_port_ipsets, rule.src_not_ports,
                rule.src_not_named_port_ipsets)
    return (rule.dst_nets, rule.dst_not_nets, rule.dst_ipsets, rule.dst_not_ipsets,
            rule.dst_ports, rule.dst_named_port_ipsets, rule.dst_not_ports,
            rule.dst_not_named_port_ipsets)


def _family_free(rule: RuleSpec) -> bool:
    """True when no criterion of the rule depends on the address family."""
    return not (rule.ip_version is not None or rule.icmp_type is not None
                or rule.icmp_code is not None or rule.not_icmp_type is not None
                or any(getattr(rule, f"{s}_{k}") for s in ("src", "dst")
                       for k in ("nets", "not_nets", "ipsets", "not_ipsets",
                                 "named_port_ipsets", "not_named_port_ipsets")))


def _action(rule: RuleSpec, egress: bool) -> str:
    cmt = f"comment {_quote(rule.rule_id)}"
    if rule.action == "allow":
        bits = MARK_ACCEPT
        if egress and (rule.dst_ports or rule.dst_named_port_ipsets):
            bits |= MARK_EXPLICIT_PORT  # names its port: may open a protected host port
        return f"counter meta mark set meta mark | {bits:#x} return {cmt}"
    if rule.action == "pass":
        return f"counter meta mark set meta mark | {MARK_PASS:#x} return {cmt}"
    if rule.action == "deny":
        return f"counter drop {cmt}"
    if rule.action == "log":
        prefix = f"tortie {comment_for(rule.rule_id)} "[:_MAX_LOG_PREFIX]
        return f'log prefix "{prefix}" counter {cmt}'
    return f"counter {cmt}"


def render_rule(rule: RuleSpec, direction: str = "ingress",
                empty: frozenset[str] = frozenset()) -> list[str]:
    """The nft rule lines of one :class:`RuleSpec` (zero when it can never match) of a policy
    or profile for ``direction``; ``empty``: the ids of IP sets with no member."""
    families = rule.families()
    if families == (4, 6) and _family_free(rule):
        variants = _rule_matches(rule, 4) or []
        lines = [[m for m in v if not m.startswith("meta nfproto")] for v in variants]
    else:
        lines = [v for f in families for v in (_rule_matches(rule, f, empty) or [])]
    action = _action(rule, direction == "egress")
    return [" ".join([*m, action]) for m in lines]


class _ProgramMemo:
    """What the renderer made of one program object: its IP sets, and its chain for each
    combination of empty sets. Kept by the program's identity (hashing a program hashes all
    its rules): the model's programs are immutable, an unchanged policy keeps its object."""

    __slots__ = ("chains", "prog", "sets")

    def __init__(self, prog: PolicyProgram) -> None:
        self.prog = prog  # kept alive: its id() is not reused while it is remembered
        self.sets = prog.ipsets()
        self.chains: dict[tuple[bool, frozenset[str]], _Chain] = {}


_PROGRAMS: dict[int, _ProgramMemo] = {}


def _memo(prog: PolicyProgram) -> _ProgramMemo:
    memo = _PROGRAMS.get(id(prog))
    if memo is None or memo.prog is not prog:
        if len(_PROGRAMS) > 1 << 14:
            _PROGRAMS.clear()
        memo = _PROGRAMS[id(prog)] = _ProgramMemo(prog)
    return memo


def _program_sets(prog: PolicyProgram) -> frozenset[str]:
    return _memo(prog).sets


def _program_chain(prog: PolicyProgram, profile: bool, model: DataplaneModel) -> _Chain:
    """The chain of a policy or profile program in ``model``: rules that need a member of
    one of its empty IP sets are left out. Rendered once per program and empty sets."""
    memo = _memo(prog)
    sets = model.ipsets
    empty = frozenset(s for s in memo.sets if s in sets and not sets[s].members)
    chain = memo.chains.get((profile, empty))
    if chain is None:
        name = policy_chain(prog.id, prog.direction, profile=profile)
        kind = "profile" if profile else "policy"
        chain = _Chain(name, f"{kind} {prog.id} {prog.direction}",
                       _policy_chain_body(prog, profile, empty))
        chain.rendered = chain.text()
        memo.chains[(profile, empty)] = chain
    return chain


def _policy_chain_body(prog: PolicyProgram, profile: bool = False,
                       empty: frozenset[str] = frozenset()) -> list[str]:
    """A policy chain starts by returning when an earlier policy of the tier set the accept
    or pass bit (so a tier chain is only jumps); a profile chain by clearing both bits. Rules
    that need a member of an empty set (``empty``) are left out: they cannot match."""
    rules = [line for rule in prog.rules for line in render_rule(rule, prog.direction, empty)]
    return [_CLEAR_VERDICT, *rules] if profile else [_DECIDED, *rules]


def _steps(tiers: tuple[TierPolicies, ...], profiles: tuple[str, ...], direction: str,
           on_accept: str, default_drop: bool) -> list[str]:
    """For each tier, then each profile: jump (the tier or profile chain first clears the
    verdict bits), leave on accept."""
    out: list[str] = []
    for tier in tiers:
        out.append(f"jump {_tier_chain_name(tier, direction, default_drop)}")
        out.append(f"{_ACCEPTED} {on_accept}")
    for prof in profiles:
        out.append(f"jump {policy_chain(prof, direction, profile=True)}")
        out.append(f"{_ACCEPTED} {on_accept}")
    return out


@functools.lru_cache(maxsize=1 << 12)
def _workload_program(tiers: tuple[TierPolicies, ...], profiles: tuple[str, ...],
                      direction: str) -> tuple[str, tuple[str, ...]]:
    """The chain (``wp{i,e}_<hash>``, named by its content) holding a workload's tier and
    profile steps, shared by every workload with the same ones; ``("", ())`` when none."""
    steps = tuple(_steps(tiers, profiles, direction, "return", True))
    if not steps:
        return "", ()
    return chain_name("wp" + _dir(direction), "\n".join(steps)), steps


# --- the table -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1 << 14)
def _tier_chain_name(tier: TierPolicies, direction: str, default_drop: bool) -> str:
    """Tier chains are shared by content: the same policies, direction and end of tier."""
    return chain_name("t" + _dir(direction),
                      f"{direction}|{tier.tier}|{','.join(tier.policies)}|{tier.default_action}|"
                      f"{default_drop}")


@dataclass
class _Chain:
    name: str
    comment: str
    rules: list[str]
    base: str | None = None  # "type filter hook input priority 0; policy accept;"
    rendered: str | None = None  # the text, when it came from a cache

    def text(self) -> str:
        if self.rendered is not None:
            return self.rendered
        out = [f"\tchain {self.name} {{", f"\t\tcomment {_quote(self.comment)}"]
        if self.base:
            out.append(f"\t\t{self.base}")
        out.extend(f"\t\t{r}" for r in self.rules)
        out.append("\t}")
        return "\n".join(out)


@functools.lru_cache(maxsize=1 << 13)
def _set_text(spec: IPSetSpec) -> str:
    addr = "ipv4_addr" if spec.family == 4 else "ipv6_addr"
    if spec.kind == "net" and _hosts_only(spec.members):
        head, members = f"type {addr};", sorted(_bare(m) for m in spec.members)
    elif spec.kind == "net":
        head = f"type {addr}; flags interval;"
        members = _drop_subsumed(spec.members)
    else:
        head = f"type {addr} . inet_proto . inet_service;"
        members = sorted(_port_member(m) for m in spec.members)
    body = f"\t\t{head}\n\t\tcomment {_quote(spec.selector + ' ' + spec.named_port)}\n"
    if members:
        body += "\t\telements = { " + ",\n\t\t\t".join(members) + " }\n"
    return f"\tset {spec.id} {{\n{body}\t}}"


def _port_member(member: str) -> str:
    """``10.0.0.1,tcp:8080`` -> ``10.0.0.1 . tcp . 8080``."""
    ip, rest = member.rsplit(",", 1)
    proto, port = rest.split(":")
    return f"{ip} . {proto} . {port}"


def _bare(member: str) -> str:
    """``10.0.0.1/32`` -> ``10.0.0.1``: an element of a set without intervals."""
    return member.partition("/")[0]


def _set_member(spec: IPSetSpec, member: str) -> str:
    """A member as an element of the set ``spec`` (sets of single addresses have no
    intervals: see :func:`_set_text`)."""
    if spec.kind != "net":
        return _port_member(member)
    return _bare(member) if _hosts_only(spec.members) else member


class _Builder:
    """The chains, maps and dispatch of one table, built endpoint by endpoint."""

    def __init__(self, model: DataplaneModel, endpoint_to_host: str) -> None:
        self.model = model
        self.endpoint_to_host = endpoint_to_host
        self.chains: dict[str, _Chain] = {}
        self.maps: dict[str, dict[str, str]] = {
            k: {} for k in ("wl_from", "wl_to", "hep_in", "hep_out", "hep_fwd_in",
                            "hep_fwd_out", "hep_pre", "hep_raw_in", "hep_raw_out")}
        self.star: dict[str, str] = {}  # map name -> chain for an interfaceName "*" endpoint

    # chains shared by name
    def add(self, chain: _Chain) -> str:
        self.chains.setdefault(chain.name, chain)
        return chain.name

    def tier_chain(self, tier: TierPolicies, direction: str, default_drop: bool) -> str:
        name = _tier_chain_name(tier, direction, default_drop)
        if name in self.chains:  # shared: built for an earlier endpoint
            return name
        # each policy chain returns at once when an earlier one decided (_DECIDED)
        rules = [_CLEAR_VERDICT, *(f"jump {policy_chain(pid, direction)}"
                                   for pid in tier.policies)]
        if tier.default_action == "deny" and default_drop:
            rules.append(_DECIDED)
            rules.append(f"counter drop comment {_quote(f'end of tier {tier.tier} {direction}')}")
        return self.add(_Chain(name, f"tier {tier.tier} {direction}: {' '.join(tier.policies)}",
                               rules))

    def policy_steps(self, tiers: tuple[TierPolicies, ...], profiles: tuple[str, ...],
                     direction: str, on_accept: str, default_drop: bool) -> list[str]:
        for tier in tiers:
            self.tier_chain(tier, direction, default_drop)
        return _steps(tiers, profiles, direction, on_accept, default_drop)

    # workloads
    def workload(self, ep: EndpointProgram) -> None:
        if ep.interface is None:
            return
        for direction in ("ingress", "egress"):
            tiers = ep.ingress_policies if direction == "ingress" else ep.egress_policies
            rules: list[str] = []
            if direction == "egress":
                rules.extend(_anti_spoof(ep))
            program, steps = _workload_program(tiers, ep.profiles, direction)
            if program and program not in self.chains:
                # the steps in a chain shared by every workload with the same ones
                for tier in tiers:
                    self.tier_chain(tier, direction, True)
                what = " ".join([*(t.tier for t in tiers), *ep.profiles])
                self.add(_Chain(program, f"workload {direction} program: {what}", list(steps)))
            if program:
                rules.append(f"jump {program}")
                rules.append(f"{_ACCEPTED} return")
            rules.append(f"counter drop comment {_quote(f'{ep.name} {direction} default drop')}")
            name = self.add(_Chain(chain_name("w" + _dir(direction), ep.name),
                                   f"workload {ep.name} {direction}", rules))
            self.maps["wl_to" if direction == "ingress" else "wl_from"][ep.interface] = \
                f"goto {name}"

    # host endpoints
    def host(self, hep: HostEndpointProgram) -> None:
        if hep.interface is None and not hep.all_interfaces:
            return  # expectedIPs-only endpoints need interface resolution (not done here)
        key = hep.name

        def register(map_name: str, chain: str) -> None:
            if hep.interface is not None:
                self.maps[map_name][hep.interface] = f"goto {chain}"
            else:
                self.star.setdefault(map_name, chain)

        for direction in ("ingress", "egress"):
            d = _dir(direction)
            failsafe = self.model.failsafe_in if direction == "ingress" else self.model.failsafe_out
            # normal policy: traffic to / from the host itself
            tiers = hep.ingress_policies if direction == "ingress" else hep.egress_policies
            rules: list[str] = []
            if direction == "ingress":
                rules.append(f"meta mark & {MARK_PREDNAT:#x} != 0 return")
            rules.extend(_tunnel_rules(self.model.tunnels, direction, "return"))
            rules.extend(_failsafe_rules(failsafe, direction, "return"))
            rules.extend(self.policy_steps(tiers, hep.profiles, direction, "return", True))
            rules.append(f"counter drop comment {_quote(f'host {key} {direction} default drop')}")
            register("hep_in" if direction == "ingress" else "hep_out",
                     self.add(_Chain(chain_name("h" + d, key), f"host {key} {direction}",
                                     rules)))
            # applyOnForward policy on forwarded traffic
            ftiers = hep.forward_ingress if direction == "ingress" else hep.forward_egress
            if ftiers:
                # allowed by preDNAT policy: skips the forward ingress policy too (as Felix)
                rules = [f"meta mark & {MARK_PREDNAT:#x} != 0 return"] \
                    if direction == "ingress" else []
                rules += self.policy_steps(ftiers, (), direction, "return", True)
                rules.append(f"counter drop comment {_quote(f'host {key} forward {direction}')}")
                register("hep_fwd_in" if direction == "ingress" else "hep_fwd_out",
                         self.add(_Chain(chain_name("hf" + d, key),
                                         f"host {key} forward {direction}", rules)))
            # doNotTrack policy (raw)
            utiers = hep.untracked_ingress if direction == "ingress" else hep.untracked_egress
            if utiers and not hep.all_interfaces:
                rules = _tunnel_rules(self.model.tunnels, direction, "return")
                rules.extend(_failsafe_rules(failsafe, direction, "return"))
                rules.extend(self.policy_steps(
                    utiers, (), direction,
                    f"meta mark set meta mark | {MARK_UNTRACKED:#x} notrack return", False))
                register("hep_raw_in" if direction == "ingress" else "hep_raw_out",
                         self.add(_Chain(chain_name("hu" + d, key),
                                         f"host {key} untracked {direction}", rules)))
        if hep.pre_dnat_ingress:
            prednat_ok = f"meta mark set meta mark | {MARK_PREDNAT:#x} return"
            rules = _tunnel_rules(self.model.tunnels, "ingress", prednat_ok)
            rules.extend(_failsafe_rules(self.model.failsafe_in, "ingress", prednat_ok))
            rules.extend(self.policy_steps(
                hep.pre_dnat_ingress, (), "ingress",
                f"meta mark set meta mark | {MARK_PREDNAT:#x} return", False))
            register("hep_pre", self.add(_Chain(chain_name("hp", key),
                                                f"host {key} preDNAT ingress", rules)))

    def policies(self) -> None:
        for programs, profile in ((self.model.policies, False), (self.model.profiles, True)):
            for prog in programs.values():
                self.add(_program_chain(prog, profile, self.model))

    def dispatch(self, map_name: str, iface: str, what: str) -> _Chain:
        """``<iface> vmap @map`` with goto elements, then the ``*`` endpoint if any."""
        rules = [f"{iface} vmap @{map_name}"]
        if map_name in self.star:
            rules.append(f'{iface} "lo" return')
            rules.append(f"goto {self.star[map_name]}")
        return _Chain(f"{map_name}_dispatch", what, rules)

    def base_chains(self) -> list[_Chain]:
        wl = f'"{WORKLOAD_PREFIX}*"'
        ct = ["ct state invalid counter drop comment \"ct invalid\"",
              "ct state established,related accept"]
        untracked_ok = f"meta mark & {MARK_UNTRACKED:#x} != 0 accept"
        workload_to_host = {"drop": "counter drop comment \"workload to host\"",
                            "accept": "accept", "return": "return"}[self.endpoint_to_host]
        hep_maps = {k: self.dispatch(k, "oifname" if k in ("hep_out", "hep_fwd_out",
                                                           "hep_raw_out") else "iifname",
                                     f"host endpoint dispatch {k}")
                    for k in self.maps if k.startswith("hep_")}
        out = list(hep_maps.values())
        out.append(_Chain("from_wl", "traffic from workloads",
                          [_CLEAR_WORKLOAD, "iifname vmap @wl_from",
                           "counter drop comment \"unknown workload interface\""]))
        out += _protected_chains(self.model.protected)
        out.append(_Chain("to_wl", "traffic to workloads",
                          ["oifname vmap @wl_to",
                           "counter drop comment \"unknown workload interface\""]))
        nd = "{ " + ", ".join(_ND_TYPES) + " }"
        out += [
            _Chain("raw_pre", "untracked (doNotTrack) ingress", [
                f"iifname != {wl} jump hep_raw_in_dispatch"],
                "type filter hook prerouting priority raw; policy accept;"),
            _Chain("raw_out", "untracked (doNotTrack) egress", [
                f"oifname != {wl} jump hep_raw_out_dispatch"],
                "type filter hook output priority raw; policy accept;"),
            _Chain("pre_dnat", "preDNAT ingress", [
                untracked_ok,
                "ct state established,related accept",
                f"iifname != {wl} jump hep_pre_dispatch"],
                "type filter hook prerouting priority -110; policy accept;"),
            _Chain("input", "to the host", [
                untracked_ok, *ct,
                f"iifname {wl} icmpv6 type {nd} counter accept "
                f"comment {_quote(ND_COMMENT)}",
                f"iifname {wl} jump from_wl",
                f"iifname {wl} jump protect_host",
                f"iifname {wl} {workload_to_host}",
                "jump hep_in_dispatch"],
                "type filter hook input priority filter; policy accept;"),
            _Chain("forward", "forwarded", [
                untracked_ok, *ct,
                f"iifname {wl} jump from_wl",
                f"iifname {wl} jump protect_fwd",
                f"iifname != {wl} jump hep_fwd_in_dispatch",
                f"oifname {wl} jump to_wl",
                f"oifname != {wl} jump hep_fwd_out_dispatch"],
                "type filter hook forward priority filter; policy accept;"),
            _Chain("output", "from the host", [
                untracked_ok, *ct,
                f"oifname {wl} accept",
                "jump hep_out_dispatch"],
                "type filter hook output priority filter; policy accept;"),
        ]
        return out


def _anti_spoof(ep: EndpointProgram) -> list[str]:
    out = []
    allowed = list(ep.addresses) + list(ep.allow_spoofed_prefixes)
    for family in (4, 6):
        mine = _of_family(allowed, family)
        cmt = f"comment {_quote(f'{ep.name} anti-spoof v{family}')}"
        if mine:
            out.append(f"{_FAMILY_KW[family]} saddr != {_net_expr(mine)} counter drop {cmt}")
        else:
            out.append(f"meta nfproto {_NFPROTO[family]} counter drop {cmt}")
    return out


def _tunnel_rules(t: TunnelTraffic, direction: str, verdict: str) -> list[str]:
    """VXLAN and IPIP from (ingress) / to (egress) the other nodes: never host endpoint
    policy's to drop (the pods' traffic between nodes runs in them)."""
    if not t:
        return []
    side = "saddr" if direction == "ingress" else "daddr"
    out = []
    for family in (4, 6):
        hosts = _of_family(t.hosts, family)
        if not hosts:
            continue
        match = f"{_FAMILY_KW[family]} {side} {_net_expr(hosts)}"
        if t.vxlan_port is not None:
            out.append(f"{match} udp dport {t.vxlan_port} counter {verdict} "
                       f"comment {_quote(f'vxlan {direction} between nodes')}")
        if t.ipip and family == 4:
            out.append(f"{match} meta l4proto 4 counter {verdict} "
                       f"comment {_quote(f'ipip {direction} between nodes')}")
    return out


def _failsafe_rules(entries: tuple[FailsafeSpec, ...], direction: str, verdict: str
                    ) -> list[str]:
    out = []
    for f in entries:
        match = []
        if f.net is not None:
            net = ipaddress.ip_network(f.net, strict=False)
            side = "saddr" if direction == "ingress" else "daddr"
            match.append(f"{_FAMILY_KW[net.version]} {side} {net}")
        proto = PROTOCOL_NAMES.get(f.protocol, str(f.protocol))
        match.append(f"meta l4proto {proto} th dport {f.port}")
        out.append(" ".join([*match, f"counter {verdict}",
                             f"comment {_quote(f'failsafe {direction} {proto}:{f.port}')}"]))
    return out


def _protected_chains(p: ProtectedPorts) -> list[_Chain]:
    """``protect_host`` (workload -> this host) and ``protect_fwd`` (workload -> forwarded):
    drop traffic to the protected ports unless an allow rule naming its port accepted it."""
    host: list[str] = []
    fwd: list[str] = []
    groups: dict[tuple[int, str | None], list[int]] = {}
    for f in p.ports:
        groups.setdefault((f.protocol, f.net), []).append(f.port)
    for (protocol, net), ports in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or "")):
        proto = PROTOCOL_NAMES.get(protocol, str(protocol))
        port = f"meta l4proto {proto} th dport {_port_expr((n, n) for n in ports)}"
        what = f"protected host port {proto}:{','.join(map(str, sorted(set(ports))))}"
        if net is not None:
            daddr = f"{_FAMILY_KW[_parse_net(net).version]} daddr {_parse_net(net)}"
            host.append(f"{daddr} {port} counter drop comment {_quote(what)}")
            fwd.append(f"{daddr} {port} counter drop comment {_quote(f'{what} to {net}')}")
            continue
        host.append(f"{port} counter drop comment {_quote(f'{what} on this host')}")
        for family in (4, 6):
            kw = _FAMILY_KW[family]
            pools = _of_family(p.workload_nets, family)
            if pools:
                fwd.append(f"{kw} daddr != {_net_expr(pools)} {port} counter drop "
                           f"comment {_quote(f'{what} outside the pools v{family}')}")
                # node addresses taken from a pool (tunnel addresses); the others are
                # outside the pools already
                nodes = [a for a in _of_family(p.host_addresses, family)
                         if any(_parse_net(a).overlaps(_parse_net(n)) for n in pools)]
                if nodes:
                    fwd.append(f"{kw} daddr {_net_expr(nodes)} {port} counter drop "
                               f"comment {_quote(f'{what} on the nodes v{family}')}")
            else:
                fwd.append(f"meta nfproto {_NFPROTO[family]} {port} counter drop "
                           f"comment {_quote(f'{what} anywhere v{family}')}")
    skip = f"meta mark & {MARK_EXPLICIT_PORT:#x} != 0 return"
    return [_Chain("protect_host", "protected host ports: workloads to this host",
                   [skip, *host] if host else []),
            _Chain("protect_fwd", "protected host ports: workloads to other hosts",
                   [skip, *fwd] if fwd else [])]


def _map_text(name: str, elements: dict[str, str]) -> str:
    body = "\t\ttype ifname : verdict;\n"
    if elements:
        body += "\t\telements = { " + ",\n\t\t\t".join(
            f'"{k}" : {v}' for k, v in sorted(elements.items())) + " }\n"
    return f"\tmap {name} {{\n{body}\t}}"


def render(model: DataplaneModel, table: str = DEFAULT_TABLE, *,
           endpoint_to_host: str = "drop") -> str:
    """The whole table as one atomic ``nft -f`` transaction (deterministic output).

    ``endpoint_to_host``: what happens to traffic from a workload to the host after the
    workload's egress policy allowed it -- ``drop`` (Calico's default
    ``DefaultEndpointToHostAction``), ``accept``, or ``return`` (on to host endpoint policy)."""
    if endpoint_to_host not in ("drop", "accept", "return"):
        raise ValueError(f"endpoint_to_host must be drop, accept or return: {endpoint_to_host}")
    with _gc_paused():
        return _render(model, table, endpoint_to_host)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused. A full render makes ~10^5 short-lived objects
    (chains, lists, no cycles); each collection of the oldest generation they trigger walks
    every live object of the process (the calculation's ~10^6 with 1000 endpoints): with it on,
    a cold render of 1000 endpoints x 500 policies took ~150-170 ms of CPU, paused ~50-65."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _render(model: DataplaneModel, table: str, endpoint_to_host: str) -> str:
    builder = _Builder(model, endpoint_to_host)
    for ep in model.endpoints.values():
        builder.workload(ep)
    for hep in model.host_endpoints.values():
        builder.host(hep)
    builder.policies()
    base = builder.base_chains()
    parts = [f"table inet {table} {{}}", f"delete table inet {table}",
             f"table inet {table} {{"]
    parts += [_set_text(spec) for _, spec in sorted(model.ipsets.items())]
    parts += [_map_text(name, elements) for name, elements in sorted(builder.maps.items())]
    parts += [c.text() for c in base]
    parts += [builder.chains[n].text() for n in sorted(builder.chains)]
    parts.append("}")
    return "\n".join(parts) + "\n"


def clear_caches() -> None:
    """Forget every memo of the renderer (names, chain and set texts)."""
    for cached in (chain_name, policy_chain, _net_family, _tier_chain_name, _set_text,
                   _workload_program, _parse_net):
        cached.cache_clear()
    _PROGRAMS.clear()
    _USES_CACHE.clear()
    _HOSTS_ONLY.clear()


def render_table_delete(table: str = DEFAULT_TABLE) -> str:
    """Delete the table if it exists (never an error when it does not)."""
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


# --- incremental updates --------------------------------------------------------------------

_USES_CACHE: list[tuple[DataplaneModel, Counter[str]]] = []


def _shared(chain: str) -> bool:
    """Tier and workload program chains: shared by content, made and deleted by use count."""
    return chain.startswith(("t", "wp"))


def _endpoint_uses(ep: EndpointProgram) -> list[str]:
    """The shared chains a workload's chains use (tier chains counted once per direction)."""
    if ep.interface is None:
        return []
    out: list[str] = []
    for d, tiers in (("ingress", ep.ingress_policies), ("egress", ep.egress_policies)):
        out.extend(_tier_chain_name(t, d, True) for t in tiers)
        program, _ = _workload_program(tiers, ep.profiles, d)
        if program:
            out.append(program)
    return out


def _shared_uses(model: DataplaneModel) -> Counter[str]:
    """How many endpoint hooks use each shared chain :func:`render` makes (cached for the last
    few models)."""
    for cached, cached_uses in _USES_CACHE:
        if cached is model:
            return cached_uses
    uses: Counter[str] = Counter()
    for ep in model.endpoints.values():
        uses.update(_endpoint_uses(ep))
    for hep in model.host_endpoints.values():
        if hep.interface is None and not hep.all_interfaces:
            continue
        for d, normal, fwd, untracked in (
                ("ingress", hep.ingress_policies, hep.forward_ingress, hep.untracked_ingress),
                ("egress", hep.egress_policies, hep.forward_egress, hep.untracked_egress)):
            uses.update(_tier_chain_name(t, d, True) for t in normal + fwd)
            if not hep.all_interfaces:
                uses.update(_tier_chain_name(t, d, False) for t in untracked)
        uses.update(_tier_chain_name(t, "ingress", False) for t in hep.pre_dnat_ingress)
    _remember(model, uses)
    return uses


def _remember(model: DataplaneModel, uses: Counter[str]) -> None:
    _USES_CACHE.insert(0, (model, uses))
    del _USES_CACHE[3:]


def refilled_programs(old: DataplaneModel, new: DataplaneModel, diff: ModelDiff,
                      profiles: bool = False) -> set[str]:
    """The unchanged policies (``profiles``: profiles) whose chains :func:`render_incremental`
    refills although they did not change: those using a set that became empty or got its
    first member (the rules needing a member of it come or go)."""
    flipped = {sid for sid in diff.ipsets.changed
               if bool(old.ipsets[sid].members) != bool(new.ipsets[sid].members)}
    if not flipped:
        return set()
    programs, keys = (new.profiles, diff.profiles) if profiles else (new.policies, diff.policies)
    return {key for key, prog in programs.items() if key not in keys.added
            and key not in keys.changed and not flipped.isdisjoint(_program_sets(prog))}


_INTERFACE = operator.attrgetter("interface")
_is_not_none = functools.partial(operator.is_not, None)


def render_incremental(old: DataplaneModel, new: DataplaneModel, table: str = DEFAULT_TABLE,
                       diff: ModelDiff | None = None) -> str | None:
    """One transaction taking a table rendered from ``old`` to what :func:`render` makes of
    ``new``, touching only what changed (a new pod: its two chains, perhaps a tier chain,
    two map elements and its addresses in the sets it joins).

    ``None`` when only a full :func:`render` will do: host endpoints, failsafe or protected
    ports changed, or two endpoints claim one interface. Unchanged chains keep their counters; a
    changed endpoint's or policy's chain is flushed and refilled (its counters restart), as is
    the chain of a policy using a set that became empty or got its first member.

    Set members and map elements are added with set / map blocks (no ``add element``) and
    removed with ``delete element`` when that is the cheaper (:func:`_deletes_pay`), else by
    flushing and refilling the set or map.  ``diff``: ``old.diff(new)`` when the caller has
    it already."""
    if diff is None:
        diff = old.diff(new)
    if (diff.host_endpoints or diff.failsafe_changed or diff.protected_changed
            or diff.tunnels_changed):
        return None
    # (in C: map / filter over every endpoint of the node, on every programming)
    ifaces = list(filter(_is_not_none, map(_INTERFACE, new.endpoints.values())))
    if len(set(ifaces)) != len(ifaces):
        return None  # two endpoints claim one interface (stale data): the full render decides
    for sid in diff.ipsets.changed:
        before, after = old.ipsets[sid], new.ipsets[sid]
        if after.kind == "net" and _hosts_only(before.members) != _hosts_only(
                after.members, before.members, diff.ipset_members[sid].added):
            return None  # a set with and without intervals: another type of set
    if diff.empty:
        return ""
    t = f"inet {table}"
    head: list[str] = []    # commands before the block of definitions
    blocks: list[str] = []  # set and chain definitions: table inet X { ... }
    tail: list[str] = []    # map elements and deletions, after the definitions
    for sid in sorted(diff.ipsets.added):
        blocks.append(_set_text(new.ipsets[sid]))
    deleting = _set_changes(diff, old, new, t, head, blocks)

    def define(name: str, chain: _Chain, replace: bool) -> None:
        if replace:
            head.append(f"add chain {t} {name}")
            head.append(f"flush chain {t} {name}")
        blocks.append(chain.text())

    for programs, profile, keys in ((new.policies, False, diff.policies),
                                    (new.profiles, True, diff.profiles)):
        redo = set(keys.changed) | refilled_programs(old, new, diff, profile)
        for key in sorted(keys.added | redo):
            chain = _program_chain(programs[key], profile, new)
            define(chain.name, chain, key in redo)
    if diff.members_only:
        return _join(head, blocks, tail, t)
    builder = _Builder(new, "drop")
    touched = sorted(diff.endpoints.added | diff.endpoints.changed)
    had_chains: set[str] = set()  # endpoint chains the old table has (refilled, not created)
    for name in touched:
        builder.workload(new.endpoints[name])
        before = old.endpoints.get(name)
        if before is not None and before.interface is not None:
            had_chains.update(chain_name(k, name) for k in ("wi", "we"))
    # shared chains by use count, updated from the old model's (host endpoints are unchanged)
    old_uses = _shared_uses(old)
    new_uses = old_uses.copy()
    for name in diff.endpoints.removed | diff.endpoints.changed:
        new_uses.subtract(_endpoint_uses(old.endpoints[name]))
    for name in touched:
        new_uses.update(_endpoint_uses(new.endpoints[name]))
    new_uses = +new_uses  # drop the unused
    _remember(new, new_uses)
    gone_shared = old_uses.keys() - new_uses.keys()
    fresh_shared = new_uses.keys() - old_uses.keys()
    for chain_id, chain in sorted(builder.chains.items()):
        if not _shared(chain_id):
            define(chain_id, chain, chain_id in had_chains)
        elif chain_id in fresh_shared:
            define(chain_id, chain, False)
    maps = ("wl_to", "wl_from")
    gone = sorted({old.endpoints[name].interface for name in
                   diff.endpoints.removed | diff.endpoints.changed
                   if old.endpoints[name].interface is not None and (
                       name not in new.endpoints
                       or new.endpoints[name].interface != old.endpoints[name].interface)})
    if gone and not _deletes_pay(old, 2 * len(new.endpoints), deleting):
        tail.extend(f"flush map {t} {m}" for m in maps)
        refill = {m: {ep.interface: f"goto {chain_name(k, ep.name)}"
                      for ep in new.endpoints.values() if ep.interface is not None}
                  for m, k in zip(maps, ("wi", "we"), strict=True)}
    else:
        if gone:  # their elements go before the new ones are added (a name may come back)
            items = ", ".join(f'"{i}"' for i in gone)
            tail.extend(f"delete element {t} {m} {{ {items} }}" for m in maps)
        refill = {m: {} for m in maps}
        for name in touched:
            ep, before = new.endpoints[name], old.endpoints.get(name)
            if ep.interface is not None and (before is None
                                             or before.interface != ep.interface):
                for m, k in zip(maps, ("wi", "we"), strict=True):
                    refill[m][ep.interface] = f"goto {chain_name(k, ep.name)}"
    if any(refill.values()):
        tail.append(f"table {t} {{\n" + "\n".join(
            _map_text(m, elements) for m, elements in refill.items() if elements) + "\n}")
    for name in sorted(diff.endpoints.removed | diff.endpoints.changed):
        before, after = old.endpoints[name], new.endpoints.get(name)
        if before.interface is not None and (after is None or after.interface is None):
            tail.extend(f"delete chain {t} {chain_name(k, name)}" for k in ("wi", "we"))
    # program chains first: they jump to the tier chains
    tail.extend(f"delete chain {t} {n}" for n in sorted(gone_shared, key=lambda n: (n[0], n),
                                                          reverse=True))
    for keys, profile in ((diff.policies, False), (diff.profiles, True)):
        tail.extend(f"delete chain {t} {policy_chain(pid, d, profile=profile)}"
                    for pid, d in sorted(keys.removed))
    tail.extend(f"delete set {t} {sid}" for sid in sorted(diff.ipsets.removed))
    return _join(head, blocks, tail, t)


def _join(head: list[str], blocks: list[str], tail: list[str], t: str) -> str:
    out = list(head)
    if blocks:
        out.append(f"table {t} {{\n" + "\n".join(blocks) + "\n}")
    out.extend(tail)
    return "".join(line + "\n" for line in out)


#: What one element re-sent by a flush + refill costs, in elements of interval sets fetched
#: (see :func:`_deletes_pay`).  Measured with nft 1.0.6 through libnftables (docs/policy.md):
#: a refill ~4 us per element, the fetch ~1.3 us per interval element.
DELETE_RATIO = 3
#: Tests force one way (``True``: always delete elements, ``False``: always refill).
FORCE_DELETES: bool | None = None


def _interval_elements(model: DataplaneModel) -> int:
    """Elements of the model's sets with intervals (CIDRs), roughly what nft fetches."""
    return sum(len(s.members) for s in model.ipsets.values()
               if s.kind == "net" and s.members and not _hosts_only(s.members))


def _deletes_pay(old: DataplaneModel, resend: int, already: bool = False) -> bool:
    """Whether to remove elements with ``delete element`` rather than flush and re-send
    ``resend`` elements.  Any ``delete element`` in a transaction makes nft 1.0 first fetch
    the elements of every *interval* set of the table (its other sets it does not fetch):
    ~0.26 s for 1000 sets of 200 CIDRs, nothing without such sets.  ``already``: the
    transaction pays that fetch anyway."""
    if FORCE_DELETES is not None:
        return FORCE_DELETES
    return already or resend * DELETE_RATIO >= _interval_elements(old)


def _set_changes(diff: ModelDiff, old: DataplaneModel, new: DataplaneModel, t: str,
                 head: list[str], blocks: list[str]) -> bool:
    """Member changes of existing sets, as set blocks that add elements, after a ``flush set``
    or ``delete element`` (:func:`_deletes_pay`) for sets that lose members (or whose new
    members overlap).  True when it deletes elements.

    Not ``add element``: a set block adds them without nft fetching anything first."""
    plan: list[tuple[str, bool]] = []  # (set id, refill)
    for sid in sorted(diff.ipset_members):
        delta = diff.ipset_members[sid]
        spec = new.ipsets[sid]
        refill = bool(delta.removed)
        before = old.ipsets[sid].members if sid in old.ipsets else None
        if spec.kind == "net" and not refill and not _hosts_only(spec.members, before,
                                                                   delta.added):
            refill = len(_drop_subsumed(spec.members)) != len(spec.members)
        plan.append((sid, refill))
    resend = sum(len(new.ipsets[sid].members) for sid, refill in plan if refill)
    deletes = resend > 0 and _deletes_pay(old, resend)
    deleted = False
    for sid, refill in plan:
        delta, spec = diff.ipset_members[sid], new.ipsets[sid]
        members: Iterable[str] = delta.added
        if refill:
            # deleting is safe when every old and new member is an element as it is (no
            # subsumed CIDRs, which the kernel never held, nor overlaps among the new ones)
            before = old.ipsets[sid].members
            exact = spec.kind != "net" or (_hosts_only(spec.members, before, delta.added)
                                           and _hosts_only(before))
            if deletes and exact:
                items = ", ".join(sorted(_set_member(spec, m) for m in delta.removed))
                head.append(f"delete element {t} {sid} {{ {items} }}")
                deleted = True
            else:
                head.append(f"flush set {t} {sid}")
                members = spec.members
        if members:
            blocks.append(_set_block(spec, members))
    return deleted


_HOSTS_ONLY: dict[int, tuple[frozenset[str], bool]] = {}  # by id(), the set kept alive


def _hosts_only(members: frozenset[str], old: frozenset[str] | None = None,
                added: Iterable[str] = ()) -> bool:
    """Every member is a single address (so no member can overlap another). Remembered per
    set object; derived from ``old`` (a set it was made from by adding ``added`` and removing
    some) without a scan when that one was all addresses."""
    hit = _HOSTS_ONLY.get(id(members))
    if hit is not None and hit[0] is members:
        return hit[1]
    if old is not None and _hosts_only(old) and all(m.endswith(_HOST_SUFFIXES) for m in added):
        result = True
    else:
        result = all(m.endswith(_HOST_SUFFIXES) for m in members)
    if len(_HOSTS_ONLY) > 1 << 14:
        _HOSTS_ONLY.clear()
    _HOSTS_ONLY[id(members)] = (members, result)
    return result


def _set_block(spec: IPSetSpec, members: Iterable[str]) -> str:
    """A set block (no comment: a declaration that only adds elements to an existing set)."""
    addr = "ipv4_addr" if spec.family == 4 else "ipv6_addr"
    if spec.kind == "net" and _hosts_only(spec.members):
        head, items = f"type {addr};", sorted(_bare(m) for m in members)
    elif spec.kind == "net":
        head, items = f"type {addr}; flags interval;", _drop_subsumed(members)
    else:
        head, items = (f"type {addr} . inet_proto . inet_service;",
                       sorted(_port_member(m) for m in members))
    return (f"\tset {spec.id} {{\n\t\t{head}\n\t\telements = {{ "
            + ",\n\t\t\t".join(items) + " }\n\t}")
