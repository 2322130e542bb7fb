"""A reference evaluator of a :class:`~policyagent.model.DataplaneModel`: the verdict for one
packet, computed in plain Python from the contract in :mod:`policyagent.model`.

It is the executable statement of what the renderer must do: tests of the calculation ask it
for verdicts, and the renderer's tests can compare the kernel's behaviour with it. It knows
nothing about connection tracking (every packet is evaluated as a new flow).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from policyagent.model import (
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    Action,
    DataplaneModel,
    FailsafeSpec,
    HostEndpointProgram,
    PolicyProgram,
    RuleSpec,
    TierPolicies,
    ipset_family,
)

Verdict = Literal["allow", "deny"]
HostHook = Literal["normal", "forward", "pre_dnat", "untracked"]


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: int | str = "TCP"
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    @property
    def proto(self) -> int:
        p = self.protocol
        return p if isinstance(p, int) else PROTOCOL_NUMBERS[p]

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.src).version


def _in_nets(addr: str, nets: tuple[str, ...]) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n
               for n in (ipaddress.ip_network(x) for x in nets))


def _in_set(model: DataplaneModel, set_id: str, addr: str) -> bool:
    return _in_nets(addr, tuple(model.ipsets[set_id].members))


def _in_port_set(model: DataplaneModel, set_id: str, addr: str, proto: int,
                 port: int | None) -> bool:
    if port is None or proto not in PROTOCOL_NAMES:
        return False
    return f"{addr},{PROTOCOL_NAMES[proto]}:{port}" in model.ipsets[set_id].members


def rule_matches(model: DataplaneModel, rule: RuleSpec, pkt: Packet) -> bool:
    fam = pkt.family
    if fam not in rule.families():
        return False
    proto = pkt.proto
    if rule.protocol is not None and proto != rule.protocol:
        return False
    if rule.not_protocol is not None and proto == rule.not_protocol:
        return False
    for side, addr, port in (("src", pkt.src, pkt.src_port), ("dst", pkt.dst, pkt.dst_port)):
        nets = getattr(rule, f"{side}_nets")
        if nets and not _in_nets(addr, nets):
            return False
        if _in_nets(addr, getattr(rule, f"{side}_not_nets")):
            return False
        for sid in getattr(rule, f"{side}_ipsets"):
            if ipset_family(sid) == fam and not _in_set(model, sid, addr):
                return False
        for sid in getattr(rule, f"{side}_not_ipsets"):
            if ipset_family(sid) == fam and _in_set(model, sid, addr):
                return False
        ranges = getattr(rule, f"{side}_ports")
        named = getattr(rule, f"{side}_named_port_ipsets")
        if ranges or named:
            ok = port is not None and any(lo <= port <= hi for lo, hi in ranges)
            ok = ok or any(ipset_family(s) == fam and _in_port_set(model, s, addr, proto, port)
                           for s in named)
            if not ok:
                return False
        if port is not None and any(lo <= port <= hi
                                    for lo, hi in getattr(rule, f"{side}_not_ports")):
            return False
        if any(ipset_family(s) == fam and _in_port_set(model, s, addr, proto, port)
               for s in getattr(rule, f"{side}_not_named_port_ipsets")):
            return False
    if rule.icmp_type is not None and pkt.icmp_type != rule.icmp_type:
        return False
    if rule.icmp_code is not None and pkt.icmp_code != rule.icmp_code:
        return False
    return not (rule.not_icmp_type is not None and pkt.icmp_type == rule.not_icmp_type
                and (rule.not_icmp_code is None or pkt.icmp_code == rule.not_icmp_code))


def _run(model: DataplaneModel, program: PolicyProgram, pkt: Packet) -> Action | None:
    """allow / deny / pass, or None when no rule gave a verdict."""
    for rule in program.rules:
        if rule.action in ("log", "none") or not rule_matches(model, rule, pkt):
            continue
        return rule.action
    return None


def evaluate(model: DataplaneModel, tiers: tuple[TierPolicies, ...], profiles: tuple[str, ...],
             direction: str, pkt: Packet, *, default: Verdict | None = "deny",
             use_profiles: bool = True) -> Verdict | None:
    """Tiers, then profiles, then ``default`` (``None``: no verdict)."""
    for tier in tiers:
        verdict: Action | None = None
        for pid in tier.policies:
            verdict = _run(model, model.policies[(pid, direction)], pkt)
            if verdict is not None:
                break
        if verdict in ("allow", "deny"):
            return verdict
        if verdict is None and tier.default_action == "deny" and default is not None:
            return "deny"  # end of tier (hooks without a default drop go on)
    if use_profiles:
        for prof in profiles:
            verdict = _run(model, model.profiles[(prof, direction)], pkt)
            if verdict in ("allow", "deny"):
                return verdict
    return default


def workload_verdict(model: DataplaneModel, name: str, direction: str, pkt: Packet) -> Verdict:
    """The verdict for a packet to (ingress) or from (egress) a local workload endpoint."""
    ep = model.endpoints[name]
    tiers = ep.ingress_policies if direction == "ingress" else ep.egress_policies
    verdict = evaluate(model, tiers, ep.profiles, direction, pkt)
    assert verdict is not None
    return verdict


def _failsafe(entries: tuple[FailsafeSpec, ...], pkt: Packet, peer: str) -> bool:
    return any(pkt.proto == f.protocol and pkt.dst_port == f.port
               and (f.net is None or _in_nets(peer, (f.net,))) for f in entries)


def host_verdict(model: DataplaneModel, name: str, direction: str, pkt: Packet,
                 hook: HostHook = "normal") -> Verdict | None:
    """The verdict of one host endpoint hook (``None``: no verdict, processing goes on).

    ``normal`` is traffic to/from the host itself (failsafe ports first), ``forward`` traffic
    forwarded through the interface, ``pre_dnat`` / ``untracked`` those hooks."""
    hep: HostEndpointProgram = model.host_endpoints[name]
    failsafe = (_failsafe(model.failsafe_in, pkt, pkt.src) if direction == "ingress"
                else _failsafe(model.failsafe_out, pkt, pkt.dst))
    if hook == "normal":
        if failsafe:
            return "allow"
        tiers = hep.ingress_policies if direction == "ingress" else hep.egress_policies
        return evaluate(model, tiers, hep.profiles, direction, pkt)
    if hook == "forward":
        tiers = hep.forward_ingress if direction == "ingress" else hep.forward_egress
        if not tiers:
            return "allow"
        return evaluate(model, tiers, (), direction, pkt, use_profiles=False)
    if failsafe:
        return "allow"
    if hook == "pre_dnat":
        tiers = hep.pre_dnat_ingress if direction == "ingress" else ()
    else:
        tiers = hep.untracked_ingress if direction == "ingress" else hep.untracked_egress
    return evaluate(model, tiers, (), direction, pkt, default=None, use_profiles=False)
