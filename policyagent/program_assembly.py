"""Program assembly: what the :class:`~policyagent.selector_index.SelectorIndex` matched ->
the :class:`~policyagent.model.DataplaneModel` of this node.

:class:`ProgramAssembly` holds the translated policies and profiles, the tiers, the failsafe
and protected host ports, and one cached program per local endpoint: :meth:`~ProgramAssembly.
model` rebuilds only the endpoint programs the index marked dirty; a policy's programs are
rebuilt when the policy changes, IP set member sets when their members change. The model's
contents -- the policies and profiles some endpoint program refers to, the IP sets those refer
to -- are kept by reference counts from the programs that changed, so a new pod costs
``model()`` its own program, not a pass over every endpoint, policy and set; a part that did
not change keeps its :class:`~policyagent.model.FrozenMap` object, which the diff then skips
(semantics: :mod:`policyagent.calc`).
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
from datastore.mtu import IPIP, VXLAN, VXLAN6, encaps_in_use
from datastore.vxlan_settings import vxlan_settings
from policyagent.model import (
    PROTOCOL_NUMBERS,
    Action,
    DataplaneModel,
    Direction,
    EndpointProgram,
    FailsafeSpec,
    FrozenMap,
    HostEndpointProgram,
    IPSetSpec,
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

    ``datastore_ports``: the ports of the etcd endpoints this node uses; ``node_ports``: the
    TCP ports tortie-node itself listens on (its ``--metrics-address``, the health routes).
    Both are protected too unless a FelixConfiguration sets ``workloadProtectedHostPorts``."""

    def __init__(self, node_name: str, index: SelectorIndex, *,
                 datastore_ports: Iterable[int] = (), node_ports: Iterable[int] = ()) -> None:
        self.node_name = node_name
        self._index = index
        self._datastore_ports = tuple(sorted(set(datastore_ports)))
        self._node_ports = tuple(sorted(set(node_ports) - {0}))
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
        # What the model holds, kept up to date from the programs that change (model() is
        # then O(change), not O(endpoints + policies + sets)): by reference counts, the
        # policies and profiles some program refers to and the IP sets those refer to.
        self._assembled = _Assembled()
        self._dirty_pids: set[str] = set()  # policies whose programs changed
        self._dirty_profiles: set[str] = set()  # profiles whose programs changed
        #: (policy ids, host, all interfaces) -> the tiered hooks (cleared on any change of a
        #: policy or tier): endpoints with the same policies share them
        self._hooks: dict[tuple[frozenset[str], bool, bool],
                          dict[str, tuple[TierPolicies, ...]]] = {}

    # --- policies ----------------------------------------------------------------------------

    def set_policy(self, pid: str, pol: NetworkPolicy | GlobalNetworkPolicy | None) -> None:
        index = self._index
        self._dirty_pids.add(pid)
        self._hooks.clear()
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
        self._dirty_profiles.add(name)
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
        defaults (for protected ports, plus the ports of this node's etcd endpoints and of
        tortie-node's own listeners)."""
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
        own = [ProtoPort(protocol="TCP", port=p)
               for p in (*self._datastore_ports, *self._node_ports)]
        protected = tuple(dict.fromkeys(pick(
            "workloadProtectedHostPorts", (*DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS, *own))))
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
        if VXLAN in encaps or VXLAN6 in encaps:  # one port for both families
            port = vxlan_settings(self._felix, self.node_name).port
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
        self._hooks.clear()
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
        host = item.kind == "host"
        res = item.resource
        all_ifaces = host and res.spec.interfaceName == "*"
        key = (frozenset(pids), host, bool(all_ifaces))
        tiers = self._hooks.get(key)
        if tiers is None:
            if len(self._hooks) > 1 << 14:
                self._hooks.clear()
            tiers = self._hooks[key] = self._tiered_hooks(pids, host, bool(all_ifaces))
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

    def _tiered_hooks(self, pids: set[str], host: bool, all_ifaces: bool
                      ) -> dict[str, tuple[TierPolicies, ...]]:
        """The tiers of each hook of an endpoint the policies ``pids`` apply to."""
        pols = sorted((self._policies[p] for p in pids),
                      key=lambda p: (self._tier_sort(p.tier), p.sort))
        lists: dict[str, list[_Policy]] = {}

        def add(hook: str, pol: _Policy) -> None:
            lists.setdefault(hook, []).append(pol)

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
        return {hook: self._tiered(pols) for hook, pols in lists.items()}

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
        if (self.cached is not None and not dirty and not index.dirty_sets
                and not self._dirty_pids and not self._dirty_profiles):
            return self.cached
        a = self._assembled
        for item_id in dirty:
            old = self._programs.pop(item_id, None)
            if old is not None:
                self._drop_program(item_id, old)
            item = index.items.get(item_id)
            if item is not None and item.local_endpoint:
                program = self._programs[item_id] = self._build_program(item)
                self._add_program(item_id, program)
        dirty.clear()
        # programs of policies and profiles that changed while referred to
        for pid in sorted(self._dirty_pids):
            if pid in a.pid_refs:
                self._unref_policy(pid)
                self._ref_policy(pid)
        self._dirty_pids.clear()
        for name in sorted(self._dirty_profiles):
            if name in a.profile_refs:
                self._unref_profile(name)
                self._ref_profile(name)
        self._dirty_profiles.clear()
        for set_id in index.dirty_sets:
            if set_id in a.ipsets:
                spec = index.ipset_spec(set_id, ipset_family(set_id))
                if spec is not a.ipsets[set_id]:
                    a.ipsets[set_id] = spec
                    a.changed.add("ipsets")
        index.dirty_sets.clear()
        self.cached = DataplaneModel(
            endpoints=a.frozen("endpoints", a.endpoints),
            host_endpoints=a.frozen("host_endpoints", a.hosts),
            policies=a.frozen("policies", a.policies),
            profiles=a.frozen("profiles", a.profiles),
            ipsets=a.frozen("ipsets", a.ipsets),
            failsafe_in=self._failsafe[0], failsafe_out=self._failsafe[1],
            protected=self.protected, tunnels=self.tunnels)
        return self.cached

    # --- the model's contents by reference counts ---------------------------------------------

    def _add_program(self, item_id: str, program: EndpointProgram) -> None:
        a = self._assembled
        if isinstance(program, HostEndpointProgram):
            a.hosts[program.name] = program
            a.changed.add("host_endpoints")
        else:
            a.endpoints[program.name] = program
            a.changed.add("endpoints")
        pids = self._program_pids[item_id] = program.policy_ids()
        for pid in pids:
            if _incref(a.pid_refs, pid):
                self._ref_policy(pid)
        for name in {p[4:] for p in program.profiles}:
            if _incref(a.profile_refs, name):
                self._ref_profile(name)

    def _drop_program(self, item_id: str, program: EndpointProgram) -> None:
        a = self._assembled
        names = a.hosts if isinstance(program, HostEndpointProgram) else a.endpoints
        if names.get(program.name) is program:
            del names[program.name]
            a.changed.add("host_endpoints" if names is a.hosts else "endpoints")
        for pid in self._program_pids.pop(item_id, frozenset()):
            if _decref(a.pid_refs, pid):
                self._unref_policy(pid)
        for name in {p[4:] for p in program.profiles}:
            if _decref(a.profile_refs, name):
                self._unref_profile(name)

    def _ref_policy(self, pid: str) -> None:
        pol = self._policies.get(pid)
        if pol is None:
            return
        if pol.set_ids is None:
            pol.set_ids = _set_ids(pol.programs)
        a = self._assembled
        a.policy_state[pid] = self._ref_programs(pid, pol.programs, pol.set_ids, a.policies,
                                                 "policies")

    def _unref_policy(self, pid: str) -> None:
        a = self._assembled
        self._unref_programs(a.policy_state.pop(pid, None), a.policies, "policies")

    def _ref_profile(self, name: str) -> None:
        a = self._assembled
        programs = self._profile_programs(name)
        a.profile_state[name] = self._ref_programs(f"pro:{name}", programs, _set_ids(programs),
                                                   a.profiles, "profiles")

    def _unref_profile(self, name: str) -> None:
        a = self._assembled
        self._unref_programs(a.profile_state.pop(name, None), a.profiles, "profiles")

    def _ref_programs(self, owner: str, programs: Mapping[str, PolicyProgram],
                      set_ids: frozenset[str], into: dict[tuple[str, str], PolicyProgram],
                      part: str) -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
        """Put one policy's or profile's programs (by direction) in the model's ``part``
        and count its IP sets; what :meth:`_unref_programs` takes out again."""
        keys = tuple((owner, d) for d in programs)
        for key, prog in zip(keys, programs.values(), strict=True):
            into[key] = prog
        self._assembled.changed.add(part)
        self._ref_sets(set_ids)
        return keys, set_ids

    def _unref_programs(self, state: tuple[tuple[tuple[str, str], ...], frozenset[str]] | None,
                        programs: dict[tuple[str, str], PolicyProgram], part: str) -> None:
        """Drop one policy's or profile's programs (``state``: their keys and IP sets)."""
        if state is None:
            return
        keys, set_ids = state
        for key in keys:
            del programs[key]
        self._assembled.changed.add(part)
        self._unref_sets(set_ids)

    def _ref_sets(self, set_ids: Iterable[str]) -> None:
        a = self._assembled
        for set_id in set_ids:
            if _incref(a.set_refs, set_id):
                a.ipsets[set_id] = self._index.ipset_spec(set_id, ipset_family(set_id))
                a.changed.add("ipsets")

    def _unref_sets(self, set_ids: Iterable[str]) -> None:
        a = self._assembled
        for set_id in set_ids:
            if _decref(a.set_refs, set_id):
                del a.ipsets[set_id]
                a.changed.add("ipsets")


def _incref(refs: dict[str, int], key: str) -> bool:
    """Count one more reference to ``key``; True when it is the first."""
    n = refs.get(key, 0)
    refs[key] = n + 1
    return not n


def _decref(refs: dict[str, int], key: str) -> bool:
    """Count one reference to ``key`` less; True when it was the last (``key`` is gone)."""
    n = refs[key] - 1
    if n:
        refs[key] = n
        return False
    del refs[key]
    return True


def _set_ids(programs: Mapping[str, PolicyProgram]) -> frozenset[str]:
    """The IP sets the programs of one policy or profile refer to."""
    return frozenset().union(*(p.ipsets() for p in programs.values()))


class _Assembled:
    """The contents of the model, by reference counts, and the immutable maps last made of
    them (reused while their part did not change)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointProgram] = {}
        self.hosts: dict[str, HostEndpointProgram] = {}
        self.policies: dict[tuple[str, str], PolicyProgram] = {}
        self.profiles: dict[tuple[str, str], PolicyProgram] = {}
        self.ipsets: dict[str, IPSetSpec] = {}
        self.pid_refs: dict[str, int] = {}  # policy id -> programs referring to it
        self.profile_refs: dict[str, int] = {}  # profile name -> programs referring to it
        self.set_refs: dict[str, int] = {}  # IP set id -> policies / profiles referring to it
        # what a referenced policy / profile put in: its program keys and IP set ids
        self.policy_state: dict[str, tuple[tuple[tuple[str, str], ...], frozenset[str]]] = {}
        self.profile_state: dict[str, tuple[tuple[tuple[str, str], ...], frozenset[str]]] = {}
        self.changed: set[str] = {"endpoints", "host_endpoints", "policies", "profiles",
                                  "ipsets"}
        self._frozen: dict[str, FrozenMap[Any, Any]] = {}

    def frozen(self, part: str, data: Mapping[Any, Any]) -> FrozenMap[Any, Any]:
        """The immutable map of one part, sorted by key; the last one when it is unchanged."""
        last = self._frozen.get(part)
        if last is None or (part in self.changed and last != data):
            order = sorted(data)  # keys, not (key, value) pairs: string compares only
            last = self._frozen[part] = FrozenMap(zip(order, map(data.__getitem__, order),
                                                      strict=True))
        self.changed.discard(part)
        return last


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
