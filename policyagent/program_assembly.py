"""Program assembly: what the :class:`~policyagent.selector_index.SelectorIndex` matched ->
the :class:`~policyagent.model.DataplaneModel` of this node.

:class:`ProgramAssembly` holds the translated policies and profiles, the tiers, the failsafe
and protected host ports, and one cached program per local endpoint: :meth:`~ProgramAssembly.
model` rebuilds only the endpoint programs the index marked dirty; a policy's programs are
rebuilt when the policy changes, IP set member sets when their members change (semantics:
:mod:`policyagent.calc`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datastore.model_config import (
    DEFAULT_FAILSAFE_INBOUND,
    DEFAULT_FAILSAFE_OUTBOUND,
    DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS,
    FelixConfiguration,
    ProtoPort,
)
from datastore.model_network import IPPool, Node
from datastore.model_policy import GlobalNetworkPolicy, NetworkPolicy, Profile, Rule
from datastore.mtu import IPIP, VXLAN, VXLAN_PORT, encaps_in_use
from policyagent.model import (
    PROTOCOL_NUMBERS,
    Action,
    DataplaneModel,
    Direction,
    EndpointProgram,
    FailsafeSpec,
    FrozenMap,
    HostEndpointProgram,
    PolicyProgram,
    ProtectedPorts,
    RuleSpec,
    TierPolicies,
    TunnelTraffic,
    ipset_family,
)
from policyagent.rule_translation import RulePrograms, translate_rules
from policyagent.selector_index import (
    IndexedItem,
    IPSetKey,
    SelectorIndex,
    TrackedSelector,
    cidr,
    host_cidr,
)
from policyagent.selectors import (
    SERVICE_ACCOUNT_PREFIX,
    all_of,
    in_namespace,
    namespace_selector,
    prefixed,
)

__all__ = ["DEFAULT_ALLOW_PROFILE", "DEFAULT_TIER", "DEFAULT_TIER_ORDER", "ProgramAssembly"]

DEFAULT_ALLOW_PROFILE = "projectcalico-default-allow"
DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1_000_000.0
_INF = float("inf")
_DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")


def _failsafe_specs(ports: Iterable[ProtoPort]) -> tuple[FailsafeSpec, ...]:
    return tuple(FailsafeSpec(PROTOCOL_NUMBERS[p.protocol], int(p.port),
                              cidr(p.net) if p.net else None) for p in ports)


@dataclass(eq=False)
class _Policy:
    id: str
    tier: str
    sort: tuple[float, str]
    applies: TrackedSelector
    types: frozenset[str]
    pre_dnat: bool
    untracked: bool
    on_forward: bool
    programs: dict[str, PolicyProgram]
    set_keys: list[IPSetKey]
    set_ids: frozenset[str] | None = None  # of every program; computed by model() once


@dataclass(eq=False)
class _ProfileRules:
    programs: dict[str, PolicyProgram]
    set_keys: list[IPSetKey]


class ProgramAssembly:
    """Policies, profiles, tiers and host port configuration -> the model of ``node_name``.

    ``datastore_ports``: the ports of the etcd endpoints this node uses, protected too unless
    a FelixConfiguration sets ``workloadProtectedHostPorts``."""

    def __init__(self, node_name: str, index: SelectorIndex, *,
                 datastore_ports: Iterable[int] = ()) -> None:
        self.node_name = node_name
        self._index = index
        self._datastore_ports = tuple(sorted(set(datastore_ports)))
        self._policies: dict[str, _Policy] = {}
        self._profile_rules: dict[str, _ProfileRules] = {}  # of Profile resources
        self._builtin_profiles: dict[str, dict[str, PolicyProgram]] = {}
        self._tiers: dict[str, tuple[float | None, str]] = {}  # name -> (order, end of tier)
        self._felix: dict[str, FelixConfiguration] = {}
        self._pools: dict[str, str] = {}  # pool name -> CIDR
        self._pool_models: dict[str, IPPool] = {}  # pool name -> pool (its encapsulation)
        self._node_addrs: dict[str, tuple[str, ...]] = {}  # node name -> its addresses (CIDRs)
        self._underlay: dict[str, tuple[str, ...]] = {}  # node name -> its BGP addresses
        self.tunnels = TunnelTraffic()
        self._failsafe: tuple[tuple[FailsafeSpec, ...], tuple[FailsafeSpec, ...]] = (
            _failsafe_specs(DEFAULT_FAILSAFE_INBOUND), _failsafe_specs(DEFAULT_FAILSAFE_OUTBOUND))
        self._protected_ports: tuple[FailsafeSpec, ...] = ()
        self.protected = ProtectedPorts()
        self._update_failsafe()
        self._programs: dict[str, EndpointProgram] = {}
        self._program_pids: dict[str, frozenset[str]] = {}  # item_id -> policy_ids() of its program
        #: the last model, while nothing changed since (None: to be assembled)
        self.cached: DataplaneModel | None = None

    # --- policies ----------------------------------------------------------------------------

    def set_policy(self, pid: str, pol: NetworkPolicy | GlobalNetworkPolicy | None) -> None:
        index = self._index
        old = self._policies.pop(pid, None)
        if pol is not None:
            spec = pol.spec
            ns = pol.namespace if isinstance(pol, NetworkPolicy) else None
            sa_sel = (prefixed(spec.serviceAccountSelector, SERVICE_ACCOUNT_PREFIX)
                      if spec.serviceAccountSelector else None)
            if ns is not None:
                applies = all_of([in_namespace(ns), spec.selector, sa_sel])
                sort_name = f"{ns}/{pol.name}"
            else:
                ns_sel = getattr(spec, "namespaceSelector", None)
                applies = all_of([spec.selector,
                                  namespace_selector(ns_sel) if ns_sel else None, sa_sel])
                sort_name = pol.name
            types = frozenset(spec.types or ())
            rules = RulePrograms()
            directions: tuple[tuple[Direction, list[Rule] | None], ...] = (
                ("ingress", spec.ingress), ("egress", spec.egress))
            for direction, rule_list in directions:
                if direction.capitalize() in types:
                    translate_rules(pid, direction, rule_list or [], ns, rules)
            sel = index.ref_selector(applies)
            sel.policies.add(pid)
            for key in rules.set_keys:
                index.ref_set(key)
            flags = (pol.spec.preDNAT, pol.spec.doNotTrack, pol.spec.applyOnForward) \
                if isinstance(pol, GlobalNetworkPolicy) else (False, False, False)
            new = _Policy(
                id=pid, tier=spec.tier or DEFAULT_TIER,
                sort=(_INF if spec.order is None else float(spec.order), sort_name),
                applies=sel, types=types,
                pre_dnat=bool(flags[0]), untracked=bool(flags[1]), on_forward=bool(flags[2]),
                programs=rules.programs, set_keys=rules.set_keys)
            self._policies[pid] = new
            index.mark_members(sel)
        if old is not None:
            index.mark_members(old.applies)
            if pid not in self._policies or self._policies[pid].applies is not old.applies:
                old.applies.policies.discard(pid)
            index.unref_selector(old.applies)
            for key in old.set_keys:
                index.unref_set(key)

    # --- profiles ----------------------------------------------------------------------------

    def set_profile(self, name: str, prof: Profile | None) -> None:
        """A Profile resource's rules (``None``: back to the built-in profile of the name)."""
        old = self._profile_rules.pop(name, None)
        if prof is not None:
            rules = RulePrograms()
            pid = f"pro:{name}"
            translate_rules(pid, "ingress", prof.spec.ingress or [], None, rules)
            translate_rules(pid, "egress", prof.spec.egress or [], None, rules)
            for key in rules.set_keys:
                self._index.ref_set(key)
            self._profile_rules[name] = _ProfileRules(rules.programs, rules.set_keys)
        if old is not None:
            for key in old.set_keys:
                self._index.unref_set(key)

    def _profile_programs(self, name: str) -> dict[str, PolicyProgram]:
        state = self._profile_rules.get(name)
        if state is not None:
            return state.programs
        programs = self._builtin_profiles.get(name)
        if programs is None:
            pid = f"pro:{name}"
            if name.startswith("kns.") or name == DEFAULT_ALLOW_PROFILE:
                actions: tuple[Action, ...] = ("allow",)
            elif name.startswith("ksa."):
                actions = ()
            else:
                actions = ("deny",)  # missing profile: Felix's deny-all stand-in
            programs = {d: PolicyProgram(pid, d, tuple(RuleSpec(f"{pid}/{d}/{i}", a)
                                                       for i, a in enumerate(actions)))
                        for d in _DIRECTIONS}
            self._builtin_profiles[name] = programs
        return programs

    # --- configuration -----------------------------------------------------------------------

    def set_felix_configuration(self, name: str, cfg: FelixConfiguration | None) -> None:
        if cfg is None:
            self._felix.pop(name, None)
        else:
            self._felix[name] = cfg
        self._update_failsafe()

    def _update_failsafe(self) -> None:
        """The failsafe and protected host ports: ``node.<name>`` over ``default`` over the
        defaults (for protected ports, plus the ports of this node's etcd endpoints)."""
        default = self._felix.get("default")
        node = self._felix.get(f"node.{self.node_name}")

        def pick(attr: str, fallback: Iterable[ProtoPort]) -> tuple[FailsafeSpec, ...]:
            for cfg in (node, default):
                value = getattr(cfg.spec, attr) if cfg is not None else None
                if value is not None:
                    return _failsafe_specs(value)
            return _failsafe_specs(fallback)

        self._failsafe = (pick("failsafeInboundHostPorts", DEFAULT_FAILSAFE_INBOUND),
                          pick("failsafeOutboundHostPorts", DEFAULT_FAILSAFE_OUTBOUND))
        datastore = [ProtoPort(protocol="TCP", port=p) for p in self._datastore_ports]
        protected = tuple(dict.fromkeys(pick(
            "workloadProtectedHostPorts", (*DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS, *datastore))))
        if protected != self._protected_ports:
            self._protected_ports = protected
            self._update_protected()
        self._update_tunnels()

    def set_pool(self, name: str, pool: IPPool | None) -> None:
        if pool is None:
            self._pools.pop(name, None)
            self._pool_models.pop(name, None)
        else:
            self._pools[name] = cidr(pool.spec.cidr)
            self._pool_models[name] = pool
        self._update_protected()
        self._update_tunnels()

    def set_node(self, name: str, node: Node | None) -> None:
        underlay = () if node is None else _underlay_addresses(node)
        if underlay != self._underlay.get(name, ()):
            if underlay:
                self._underlay[name] = underlay
            else:
                self._underlay.pop(name, None)
            self._update_tunnels()
        addrs = () if node is None else tuple(host_cidr(a) for a in node.host_addresses())
        if addrs == self._node_addrs.get(name, ()):
            return  # a status or label change: nothing the dataplane uses
        if addrs:
            self._node_addrs[name] = addrs
        else:
            self._node_addrs.pop(name, None)
        self._update_protected()

    def _update_protected(self) -> None:
        self.protected = ProtectedPorts(
            ports=self._protected_ports,
            workload_nets=tuple(sorted(set(self._pools.values()))),
            host_addresses=tuple(sorted({a for addrs in self._node_addrs.values()
                                         for a in addrs})))

    def _update_tunnels(self) -> None:
        """VXLAN / IPIP between the nodes, let through host endpoints (see TunnelTraffic)."""
        encaps = encaps_in_use(self._pool_models.values())
        port = None
        if VXLAN in encaps:
            port = VXLAN_PORT
            for cfg in (self._felix.get(f"node.{self.node_name}"), self._felix.get("default")):
                if cfg is not None and cfg.spec.vxlanPort:
                    port = int(cfg.spec.vxlanPort)
                    break
        hosts = tuple(sorted({a for addrs in self._underlay.values() for a in addrs}))
        self.tunnels = TunnelTraffic(vxlan_port=port, ipip=IPIP in encaps, hosts=hosts)

    def set_tier(self, name: str, tier: Any | None) -> None:
        if tier is None:
            self._tiers.pop(name, None)
        else:
            spec = tier.get("spec", tier) if isinstance(tier, Mapping) else tier.spec
            get = spec.get if isinstance(spec, Mapping) else (lambda a: getattr(spec, a, None))
            order = get("order")
            default_action = str(get("defaultAction") or "Deny").lower()
            self._tiers[name] = (None if order is None else float(order),
                                 "pass" if default_action == "pass" else "deny")
        self._index.mark_local_endpoints()

    def _tier_sort(self, tier: str) -> tuple[float, str]:
        known = self._tiers.get(tier)
        if known is not None and known[0] is not None:
            return (known[0], tier)
        if tier == DEFAULT_TIER and known is None:
            return (DEFAULT_TIER_ORDER, tier)
        return (_INF, tier)

    # --- output ------------------------------------------------------------------------------

    def _build_program(self, item: IndexedItem) -> EndpointProgram:
        pids: set[str] = set()
        selectors = self._index.selectors
        for canon in item.matched:
            pids |= selectors[canon].policies
        pols = sorted((self._policies[p] for p in pids),
                      key=lambda p: (self._tier_sort(p.tier), p.sort))
        host = item.kind == "host"
        res = item.resource
        lists: dict[str, list[_Policy]] = {}

        def add(hook: str, pol: _Policy) -> None:
            lists.setdefault(hook, []).append(pol)

        all_ifaces = host and res.spec.interfaceName == "*"
        for pol in pols:
            dirs = [d for d in _DIRECTIONS if d.capitalize() in pol.types]
            if pol.pre_dnat:
                if host and "ingress" in dirs:
                    add("pre_dnat_ingress", pol)
            elif pol.untracked:
                if host and not all_ifaces:
                    for d in dirs:
                        add(f"untracked_{d}", pol)
            else:
                for d in dirs:
                    add(d, pol)
                    if host and pol.on_forward:
                        add(f"forward_{d}", pol)
        tiers = {hook: self._tiered(pols) for hook, pols in lists.items()}
        profiles = tuple(f"pro:{p}" for p in item.parents)
        if host:
            spec = res.spec
            return HostEndpointProgram(
                name=res.name,
                interface=None if all_ifaces else (spec.interfaceName or None),
                addresses=item.addrs,
                ingress_policies=tiers.get("ingress", ()),
                egress_policies=tiers.get("egress", ()),
                profiles=profiles,
                pre_dnat_ingress=tiers.get("pre_dnat_ingress", ()),
                forward_ingress=tiers.get("forward_ingress", ()),
                forward_egress=tiers.get("forward_egress", ()),
                untracked_ingress=tiers.get("untracked_ingress", ()),
                untracked_egress=tiers.get("untracked_egress", ()),
                all_interfaces=bool(all_ifaces))
        spec = res.spec
        return EndpointProgram(
            kind="workload", name=f"{res.namespace or 'default'}/{res.name}",
            interface=spec.interfaceName, addresses=item.addrs,
            ingress_policies=tiers.get("ingress", ()),
            egress_policies=tiers.get("egress", ()),
            profiles=profiles,
            allow_spoofed_prefixes=tuple(cidr(c) for c in spec.allowSpoofedSourcePrefixes or ()))

    def _tiered(self, pols: list[_Policy]) -> tuple[TierPolicies, ...]:
        out: list[TierPolicies] = []
        current: list[str] = []
        tier = None
        for pol in pols:
            if pol.tier != tier and current:
                out.append(self._tier(tier or DEFAULT_TIER, current))
                current = []
            tier = pol.tier
            current.append(pol.id)
        if current:
            out.append(self._tier(tier or DEFAULT_TIER, current))
        return tuple(out)

    def _tier(self, name: str, ids: list[str]) -> TierPolicies:
        known = self._tiers.get(name)
        return TierPolicies(name, tuple(ids), "pass" if known and known[1] == "pass" else "deny")

    def model(self) -> DataplaneModel:
        """The dataplane model of this node, as of the changes so far."""
        index = self._index
        dirty = index.dirty
        if self.cached is not None and not dirty:
            return self.cached
        for item_id in dirty:
            item = index.items.get(item_id)
            if item is None or not item.local_endpoint:
                self._programs.pop(item_id, None)
                self._program_pids.pop(item_id, None)
            else:
                program = self._programs[item_id] = self._build_program(item)
                self._program_pids[item_id] = program.policy_ids()
        dirty.clear()
        endpoints: dict[str, EndpointProgram] = {}
        hosts: dict[str, HostEndpointProgram] = {}
        pids: set[str] = set()
        profile_names: set[str] = set()
        program_pids = self._program_pids
        for item_id, ep in self._programs.items():
            if isinstance(ep, HostEndpointProgram):
                hosts[ep.name] = ep
            else:
                endpoints[ep.name] = ep
            pids |= program_pids[item_id]
            profile_names.update(p[4:] for p in ep.profiles)
        policies: dict[tuple[str, str], PolicyProgram] = {}
        set_ids: set[str] = set()
        for pid in sorted(pids):
            pol = self._policies[pid]
            for d, prog in pol.programs.items():
                policies[(pid, d)] = prog
            if pol.set_ids is None:
                pol.set_ids = frozenset().union(*(p.ipsets() for p in pol.programs.values()))
            set_ids |= pol.set_ids
        profiles: dict[tuple[str, str], PolicyProgram] = {}
        for name in sorted(profile_names):
            for d, prog in self._profile_programs(name).items():
                profiles[(f"pro:{name}", d)] = prog
                set_ids |= prog.ipsets()
        ipsets = {set_id: index.ipset_spec(set_id, ipset_family(set_id))
                  for set_id in sorted(set_ids)}
        self.cached = DataplaneModel(
            endpoints=FrozenMap(sorted(endpoints.items())),
            host_endpoints=FrozenMap(sorted(hosts.items())),
            policies=FrozenMap(policies), profiles=FrozenMap(profiles),
            ipsets=FrozenMap(sorted(ipsets.items())),
            failsafe_in=self._failsafe[0], failsafe_out=self._failsafe[1],
            protected=self.protected, tunnels=self.tunnels)
        return self.cached


def _underlay_addresses(node: Node) -> tuple[str, ...]:
    """The addresses a node's tunnels run between: its BGP addresses (without prefix)."""
    bgp = node.spec.bgp
    out = []
    for text in ((bgp.ipv4Address, bgp.ipv6Address) if bgp is not None else ()):
        if text:
            try:
                out.append(host_cidr(str(ipaddress.ip_interface(text.strip()).ip)))
            except ValueError:
                continue
    return tuple(sorted(out))
