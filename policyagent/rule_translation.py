"""Policy and profile rules in dataplane terms: :class:`~datastore.model_policy.Rule` ->
:class:`~policyagent.model.RuleSpec`, with the IP sets the rule needs (see the semantics in
:mod:`policyagent.calc`: rule selectors, named ports, unsupported matches)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.model_policy import EntityRule, Rule
from datastore.unsupported import rule_unenforced
from policyagent.model import Action, Direction, PolicyProgram, RuleSpec
from policyagent.selector_index import IPSetKey, cidr, ip_set_ids, protocol_number
from policyagent.selectors import (
    ALL,
    all_of,
    in_namespace,
    namespace_selector,
    service_accounts,
)

__all__ = ["RulePrograms", "translate_rules"]

_PORT_PROTOCOLS = (6, 17, 132)
#: A rule's action (one of the datastore model's, any case) -> the dataplane's
_ACTIONS: Mapping[str, Action] = {"allow": "allow", "deny": "deny", "log": "log", "pass": "pass"}


@dataclass
class RulePrograms:
    """Rule translation output: the programs (by direction) and the IP sets they need."""

    programs: dict[str, PolicyProgram] = field(default_factory=dict)
    set_keys: list[IPSetKey] = field(default_factory=list)


def translate_rules(pid: str, direction: Direction, rules: list[Rule], ns: str | None,
                    out: RulePrograms) -> None:
    """Add the program of policy (or profile) ``pid`` for ``direction`` to ``out``; ``ns``:
    the namespace of a namespaced policy (rule selectors are scoped to it)."""
    specs = [_rule(f"{pid}/{direction}/{i}", r, ns, out.set_keys) for i, r in enumerate(rules)]
    out.programs[direction] = PolicyProgram(pid, direction, tuple(specs))


def _rule(rule_id: str, rule: Rule, ns: str | None, set_keys: list[IPSetKey]) -> RuleSpec:
    action = _ACTIONS[rule.action.lower()]
    if action in ("allow", "pass") and rule_unenforced(rule):
        # a condition Tortie cannot enforce (http, services): the rule must never allow more
        # than it says, so it matches nothing; a deny or log rule applies without it
        action = "none"
    proto = protocol_number(rule.protocol)
    families = {rule.ipVersion} if rule.ipVersion else {4, 6}
    if proto == 1:
        families &= {4}
    elif proto == 58:
        families &= {6}
    sides: dict[str, dict[str, Any]] = {}
    for side, ent in (("src", rule.source), ("dst", rule.destination)):
        nets = tuple(dict.fromkeys(cidr(n) for n in ent.nets or ()))
        if nets:
            families &= {ipaddress.ip_network(n).version for n in nets}
        sides[side] = {"nets": nets, "ent": ent}
    if not families:
        action = "none"  # e.g. an IPv4 source net and an IPv6 destination net
    fams = sorted(families) or [4, 6]
    kwargs: dict[str, Any] = {}
    for side, info in sides.items():
        ent = info["ent"]
        sel, not_sel = _entity_selectors(ent, ns)
        kwargs[f"{side}_nets"] = info["nets"]
        kwargs[f"{side}_not_nets"] = tuple(dict.fromkeys(cidr(n) for n in ent.notNets or ()))
        kwargs[f"{side}_ipsets"] = _use_set(("net", sel), fams, set_keys) if sel else ()
        kwargs[f"{side}_not_ipsets"] = (_use_set(("net", not_sel), fams, set_keys)
                                        if not_sel else ())
        for neg, ports in (("", ent.ports), ("not_", ent.notPorts)):
            ranges: list[tuple[int, int]] = []
            named: list[str] = []
            for p in ports or ():
                if isinstance(p, int):
                    ranges.append((p, p))
                elif p[0].isdigit():
                    lo, _, hi = p.partition(":")
                    ranges.append((int(lo), int(hi)))
                elif proto in _PORT_PROTOCOLS:
                    named += _use_set(("port", sel or ALL, proto, p), fams, set_keys)
            kwargs[f"{side}_{neg}ports"] = tuple(dict.fromkeys(ranges))
            kwargs[f"{side}_{neg}named_port_ipsets"] = tuple(named)
    icmp, not_icmp = rule.icmp, rule.notICMP
    return RuleSpec(
        rule_id=rule_id, action=action,
        ip_version=fams[0] if len(families) == 1 else None,
        protocol=proto, not_protocol=protocol_number(rule.notProtocol),
        icmp_type=icmp.type if icmp else None, icmp_code=icmp.code if icmp else None,
        not_icmp_type=not_icmp.type if not_icmp else None,
        not_icmp_code=not_icmp.code if not_icmp else None,
        **kwargs)


def _use_set(key: IPSetKey, families: Iterable[int], set_keys: list[IPSetKey]
             ) -> tuple[str, ...]:
    set_keys.append(key)
    return ip_set_ids(key, families)


def _entity_selectors(ent: EntityRule, ns: str | None) -> tuple[str | None, str | None]:
    """(selector, notSelector) of one side of a rule, as canonical selectors over endpoint
    labels, with namespace scoping, namespaceSelector and serviceAccounts folded in."""
    ns_sel = ent.namespaceSelector.strip() if ent.namespaceSelector else ""
    if ns_sel:
        scope: str | None = namespace_selector(ns_sel)
    else:
        scope = in_namespace(ns) if ns is not None else None
    sa = ent.serviceAccounts
    sa_sel = service_accounts(sa.names, sa.selector) if sa and (sa.names or sa.selector) else None
    selector = ent.selector.strip() if ent.selector else ""
    sel = all_of([scope, selector, sa_sel]) if (selector or sa_sel or ns_sel) else None
    not_sel = ent.notSelector.strip() if ent.notSelector else ""
    return sel, (all_of([scope, not_sel]) if not_sel else None)
