"""The policy calculation: resources in, :class:`~policyagent.model.DataplaneModel` out.

:class:`PolicyCalculator` holds the resources the policy agent watches and keeps, incrementally,
which selectors match what:

* every *item* -- workload endpoint, host endpoint, NetworkSet, GlobalNetworkSet, of the whole
  cluster -- with its effective labels (own labels, plus those its profiles apply);
* every selector some policy or profile uses (canonical text, shared), with the items it
  matches, indexed by the label keys it reads: a label change re-evaluates only the selectors
  that read a changed key;
* every IP set (a rule selector's addresses, or a named port's ``ip,proto:port`` entries),
  with reference-counted members, so a membership change is O(addresses of that item).

``model()`` assembles the program for this node (``node_name``) from cached pieces: only the
endpoint programs marked dirty since the last call are rebuilt; policy programs are rebuilt
when their policy changes; IP set member sets when their members change.

Semantics (Calico's, as its documentation describes them)
---------------------------------------------------------
* **Which policies apply**: a policy applies to a local endpoint when its selector matches
  the endpoint's labels (own + profile ``labelsToApply``). A namespaced NetworkPolicy only
  selects workload endpoints of its namespace (``projectcalico.org/namespace``); a
  GlobalNetworkPolicy's ``namespaceSelector`` restricts it to endpoints in matching
  namespaces; ``serviceAccountSelector`` to endpoints whose service account matches.
  ``types`` says for which directions. Within a tier, policies are ordered by ``order``
  (unset last), then name (``<namespace>/<name>`` for namespaced ones); tiers by their order
  (the default tier: 1,000,000; tiers without a known order last), then name.
* **Hooks**: workload endpoints get normal and ``applyOnForward`` policies (never preDNAT or
  doNotTrack ones). Host endpoints: normal policies police traffic to/from the host;
  ``applyOnForward`` ones also forwarded traffic (``forward_*``); preDNAT ones go to
  ``pre_dnat_ingress``; doNotTrack ones to ``untracked_*`` (not for ``interfaceName: "*"``).
* **Profiles** come after the tiers (reached when no policy applies in the direction, or all
  tiers passed). ``kns.<ns>`` is the namespace profile: allow all in both directions, labels
  ``pcns.<key>`` for each namespace label plus ``pcns.projectcalico.org/name``;
  ``ksa.<ns>.<sa>``: no rules, labels ``pcsa.<key>`` plus ``pcsa.projectcalico.org/name``;
  ``projectcalico-default-allow``: allow all. A Profile resource of the same name replaces the
  built-in one. ``kns.<ns>`` exists even before its Namespace is seen (a pod's namespace
  always exists in Kubernetes; it then only has the ``pcns.projectcalico.org/name`` label).
  Any other missing profile is a deny-all (as Felix does), so an endpoint can never be opened
  up by a profile that does not exist. Endpoint labels win over profile labels, and earlier
  profiles over later ones.
* **Types** default as Calico's validation defaults them (Ingress, plus Egress when there are
  egress rules): a policy with only egress rules and no ``types`` also isolates ingress.
* **Rule selectors** become IP sets of every matching item of the cluster: workload
  ``ipNetworks``, host endpoint ``expectedIPs``, network set ``nets``. In a namespaced policy,
  ``selector`` / ``notSelector`` / ``serviceAccounts`` are scoped to the policy's namespace
  unless ``namespaceSelector`` is given; a ``namespaceSelector`` only selects namespaced items
  (``global()``: only non-namespaced ones). ``serviceAccounts.names`` matches
  ``projectcalico.org/serviceaccount``; its ``selector`` the ``pcsa.`` labels.
* **Named ports** are resolved per *matching endpoint*: a rule port ``http`` with protocol
  TCP becomes an IP set of ``ip,tcp:<port>`` for every endpoint matching that side's selector
  (every endpoint when there is none) that has a TCP port named ``http`` -- from the workload
  endpoint's ``ports``, else from its Pod's containers.
* **Unsupported matches** (``services``, ``http``) make the rule a no-verdict (``none``) rule,
  so it cannot allow or deny more than it says.

Not here: interface resolution of ``expectedIPs``-only host endpoints and the choice between
several host endpoints on one interface (the renderer knows the interfaces).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.model_config import (
    DEFAULT_FAILSAFE_INBOUND,
    DEFAULT_FAILSAFE_OUTBOUND,
    DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS,
    FelixConfiguration,
    ProtoPort,
)
from datastore.model_endpoints import EndpointPort, HostEndpoint, WorkloadEndpoint
from datastore.model_k8s import K8sNetworkPolicy, Namespace, Pod
from datastore.model_network import IPPool, Node
from datastore.model_policy import (
    EntityRule,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Rule,
    protocol_name,
)
from datastore.selector import parse
from policyagent.k8s_translate import calico_name, translate
from policyagent.model import (
    PROTOCOL_NAMES,
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
    ipset_family,
    ipset_id,
)
from policyagent.selectors import (
    ALL,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT,
    NAMESPACE_PREFIX,
    SERVICE_ACCOUNT_PREFIX,
    all_of,
    in_namespace,
    namespace_selector,
    prefixed,
    service_accounts,
)

__all__ = ["DEFAULT_ALLOW_PROFILE", "DEFAULT_TIER_ORDER", "KINDS", "PolicyCalculator"]

DEFAULT_ALLOW_PROFILE = "projectcalico-default-allow"
DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1_000_000.0
_INF = float("inf")

# update() kinds (case-insensitive, singular, plural or the datastore's plural) -> internal kind
KINDS: Mapping[str, str] = {
    **{k: "wep" for k in ("workloadendpoint", "workloadendpoints", "wep")},
    **{k: "hep" for k in ("hostendpoint", "hostendpoints", "hep")},
    **{k: "np" for k in ("networkpolicy", "networkpolicies", "np")},
    **{k: "gnp" for k in ("globalnetworkpolicy", "globalnetworkpolicies", "gnp")},
    **{k: "knp" for k in ("k8snetworkpolicy", "k8snetworkpolicies", "knp",
                          "kubernetesnetworkpolicy")},
    **{k: "profile" for k in ("profile", "profiles")},
    **{k: "netset" for k in ("networkset", "networksets")},
    **{k: "gnetset" for k in ("globalnetworkset", "globalnetworksets")},
    **{k: "namespace" for k in ("namespace", "namespaces")},
    **{k: "pod" for k in ("pod", "pods")},
    **{k: "sa" for k in ("serviceaccount", "serviceaccounts")},
    **{k: "felix" for k in ("felixconfiguration", "felixconfigurations")},
    **{k: "tier" for k in ("tier", "tiers")},
    **{k: "pool" for k in ("ippool", "ippools")},
    **{k: "node" for k in ("node", "nodes")},
}

_ENDPOINT_KINDS = ("workload", "host")
_SCOPE_KEYS = frozenset({LABEL_NAMESPACE, LABEL_ORCHESTRATOR})
_PORT_PROTOCOLS = (6, 17, 132)
_DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
#: A rule's action (one of the datastore model's, any case) -> the dataplane's
_ACTIONS: Mapping[str, Action] = {"allow": "allow", "deny": "deny", "log": "log", "pass": "pass"}


def _proto_num(p: str | int | None) -> int | None:
    if p is None:
        return None
    if isinstance(p, int):
        return p
    return PROTOCOL_NUMBERS[protocol_name(p) or p]


@functools.lru_cache(maxsize=1 << 16)
def _cidr(text: str) -> str:
    """Canonical CIDR text (cached: the same nets recur in many rules and resyncs)."""
    return str(ipaddress.ip_network(text, strict=False))


def _host_cidr(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{addr.max_prefixlen}"


def _family(member: str) -> int:
    return 6 if ":" in member.partition(",")[0] else 4


# --- internal state ------------------------------------------------------------------------


class _Item:
    """Anything with labels and addresses: an endpoint (any node) or a network set."""

    __slots__ = ("addrs", "id", "kind", "labels", "local", "matched", "own", "parents",
                 "pod", "ports", "resource")

    def __init__(self, item_id: str, kind: str) -> None:
        self.id = item_id
        self.kind = kind  # workload | host | netset
        self.own: dict[str, str] = {}
        self.parents: tuple[str, ...] = ()
        self.labels: dict[str, str] = {}
        self.addrs: tuple[str, ...] = ()
        self.ports: dict[tuple[str, int], int] = {}
        self.local = False
        self.pod: tuple[str, str] | None = None
        self.resource: Any = None
        self.matched: set[str] = set()  # canonical selectors matching this item

    @property
    def local_endpoint(self) -> bool:
        return self.local and self.kind in _ENDPOINT_KINDS


class _Sel:
    __slots__ = ("canon", "index", "keys", "match", "members", "policies", "refs", "sets")

    def __init__(self, canon: str) -> None:
        s = parse(canon)
        self.canon = canon
        self.match = s.matcher
        self.keys = s.labels_used()
        # a (key, value) every match has: the selector is only tried on items with it;
        # scoping terms (namespace, orchestrator) are the least selective, so the last choice
        required = s.required_labels()
        self.index: tuple[str, str] | None = next(
            (kv for kv in required if kv[0] not in _SCOPE_KEYS), required[0] if required else None)
        self.members: set[str] = set()
        self.sets: list[_Set] = []
        self.policies: set[str] = set()
        self.refs = 0


@dataclass(eq=False)
class _Set:
    key: tuple[Any, ...]
    sel: _Sel
    ids: dict[int, str]
    proto: int | None = None
    port_name: str | None = None
    refs: int = 0
    contrib: dict[str, tuple[str, ...]] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=lambda: {4: {}, 6: {}})
    specs: dict[int, IPSetSpec] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=lambda: {4, 6})

    @property
    def named(self) -> bool:
        return self.port_name is not None

    def spec(self, family: int) -> IPSetSpec:
        if family in self.dirty or family not in self.specs:
            self.specs[family] = IPSetSpec(
                id=self.ids[family], family=family,
                members=frozenset(self.counts[family]),
                kind="ip_port" if self.named else "net", selector=self.sel.canon,
                named_port=(f"{PROTOCOL_NAMES.get(self.proto or 0, self.proto)}:"
                            f"{self.port_name}" if self.named else ""))
            self.dirty.discard(family)
        return self.specs[family]


@dataclass(eq=False)
class _Policy:
    id: str
    tier: str
    sort: tuple[float, str]
    applies: _Sel
    types: frozenset[str]
    pre_dnat: bool
    untracked: bool
    on_forward: bool
    programs: dict[str, PolicyProgram]
    set_keys: list[tuple[Any, ...]]
    set_ids: frozenset[str] | None = None  # of every program; computed by model() once


@dataclass(eq=False)
class _ProfileState:
    programs: dict[str, PolicyProgram]
    set_keys: list[tuple[Any, ...]]


@dataclass
class _Rules:
    """Rule translation output: the programs and the IP sets they need."""

    programs: dict[str, PolicyProgram] = field(default_factory=dict)
    set_keys: list[tuple[Any, ...]] = field(default_factory=list)


# --- the calculator ---------------------------------------------------------------------------


class PolicyCalculator:
    """Current resources -> the dataplane model of one node. Pure: no I/O.

    Feed it with :meth:`update` (``resource=None`` deletes), read it with :meth:`model`.
    ``kind`` is a kind name as in :data:`KINDS` (``WorkloadEndpoint``, ``hostendpoints``,
    ``NetworkPolicy`` -- a Kubernetes one is recognised by its model class --,
    ``K8sNetworkPolicy``, ``Profile``, ``Namespace``, ``Pod``, ``ServiceAccount``,
    ``FelixConfiguration``, ``Tier``, ``IPPool``, ``Node``, ...); ``key`` identifies the
    resource within its kind (the datastore key, or ``namespace/name``): a delete needs only
    the key, and a resource must always come under the same key. ServiceAccounts and Tiers,
    which Tortie has no model for, may be given as mappings (``{"metadata": {"name",
    "namespace", "labels"}}``, ``{"spec": {"order", "defaultAction"}}``).

    IP pools and Nodes feed only the protected host ports (:class:`ProtectedPorts`): which
    destinations are workloads, which are nodes. ``datastore_ports``: the ports of the etcd
    endpoints this node uses, protected too unless a FelixConfiguration sets
    ``workloadProtectedHostPorts``.
    """

    def __init__(self, node_name: str, *, datastore_ports: Iterable[int] = ()) -> None:
        self.node_name = node_name
        self._datastore_ports = tuple(sorted(set(datastore_ports)))
        self._pools: dict[str, str] = {}  # pool name -> CIDR
        self._node_addrs: dict[str, tuple[str, ...]] = {}  # node name -> its addresses (CIDRs)
        self._items: dict[str, _Item] = {}
        self._sels: dict[str, _Sel] = {}
        self._key_index: dict[str, set[_Sel]] = {}
        # selectors by the (key, value) every match has (_Sel.index), and those with none
        self._sel_index: dict[tuple[str, str], set[_Sel]] = {}
        self._sel_scan: set[_Sel] = set()
        self._items_by_label: dict[tuple[str, str], set[str]] = {}
        self._sets: dict[tuple[Any, ...], _Set] = {}
        self._set_by_id: dict[str, _Set] = {}
        self._policies: dict[str, _Policy] = {}
        self._profiles: dict[str, Profile] = {}
        self._profile_states: dict[str, _ProfileState] = {}
        self._builtin_profiles: dict[str, dict[str, PolicyProgram]] = {}
        self._profile_users: dict[str, set[str]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._service_accounts: dict[tuple[str, str], dict[str, str]] = {}
        self._pods: dict[tuple[str, str], dict[tuple[str, int], int]] = {}
        self._pod_users: dict[tuple[str, str], set[str]] = {}
        self._felix: dict[str, FelixConfiguration] = {}
        self._tiers: dict[str, tuple[float | None, str]] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (kind, key) -> internal id
        self._failsafe: tuple[tuple[FailsafeSpec, ...], tuple[FailsafeSpec, ...]] = (
            _failsafe(DEFAULT_FAILSAFE_INBOUND), _failsafe(DEFAULT_FAILSAFE_OUTBOUND))
        self._protected_ports: tuple[FailsafeSpec, ...] = ()
        self._protected = ProtectedPorts()
        self._update_failsafe()
        self._programs: dict[str, EndpointProgram] = {}
        self._program_pids: dict[str, frozenset[str]] = {}  # iid -> policy_ids() of its program
        self._dirty: set[str] = set()
        self._model: DataplaneModel | None = None

    # --- input -------------------------------------------------------------------------------

    @staticmethod
    def handles(kind: str) -> bool:
        """Whether :meth:`update` takes this kind."""
        return kind.lower() in KINDS

    def update(self, kind: str, key: str, resource: Any | None) -> None:
        """Add, change (``resource``) or delete (``None``) one resource."""
        k = KINDS.get(kind.lower())
        if k is None:
            raise ValueError(f"the policy calculation does not use {kind!r} resources")
        if k == "np" and (isinstance(resource, K8sNetworkPolicy)
                          or (resource is None and ("knp", key) in self._keys)):
            k = "knp"
        model, protected = self._model, self._protected
        self._model = None
        old_id = self._keys.pop((k, key), None)
        new_id = None if resource is None else self._internal_id(k, key, resource)
        if old_id is not None and old_id != new_id:
            self._remove(k, old_id)
        if resource is not None and new_id is not None:
            self._keys[(k, key)] = new_id
            self._apply(k, new_id, resource)
        if k in ("node", "pool") and self._protected == protected:
            self._model = model  # e.g. a Node's labels or status: nothing the model holds

    @staticmethod
    def _internal_id(k: str, key: str, r: Any) -> str:
        name, ns, _ = _meta(r)
        if name is None:  # e.g. a Tier given as {"spec": {...}}: known by its key
            return key
        ns = ns or (key.rpartition("/")[0].rpartition("/")[2] if "/" in key else "") \
            or "default"
        if k == "wep":
            return f"wep:{ns}/{name}"
        if k == "hep":
            return f"hep:{name}"
        if k == "np":
            return f"np:{ns}:{name}"
        if k == "knp":
            return f"np:{ns}:{calico_name(name)}"
        if k == "gnp":
            return f"gnp:{name}"
        if k == "netset":
            return f"netset:{ns}/{name}"
        if k == "gnetset":
            return f"gnetset:{name}"
        if k in ("pod", "sa"):
            return f"{ns}/{name}"
        return str(name)

    def _apply(self, k: str, iid: str, r: Any) -> None:
        if k == "wep":
            self._set_workload(iid, r)
        elif k == "hep":
            self._set_host(iid, r)
        elif k in ("netset", "gnetset"):
            self._set_netset(iid, r)
        elif k in ("np", "gnp"):
            self._set_policy(iid, r)
        elif k == "knp":
            self._set_policy(iid, translate(r))
        elif k == "profile":
            self._set_profile(iid, r)
        elif k == "namespace":
            self._set_namespace(iid, r)
        elif k == "pod":
            self._set_pod(iid, r)
        elif k == "sa":
            self._set_service_account(iid, r)
        elif k == "felix":
            self._felix[iid] = r
            self._update_failsafe()
        elif k == "tier":
            self._set_tier(iid, r)
        elif k == "pool":
            self._set_pool(iid, r)
        elif k == "node":
            self._set_node(iid, r)

    def _remove(self, k: str, iid: str) -> None:
        if k in ("wep", "hep", "netset", "gnetset"):
            self._remove_item(iid)
        elif k in ("np", "gnp", "knp"):
            self._set_policy(iid, None)
        elif k == "profile":
            self._set_profile(iid, None)
        elif k == "namespace":
            self._set_namespace(iid, None)
        elif k == "pod":
            self._set_pod(iid, None)
        elif k == "sa":
            self._set_service_account(iid, None)
        elif k == "felix":
            self._felix.pop(iid, None)
            self._update_failsafe()
        elif k == "tier":
            self._set_tier(iid, None)
        elif k == "pool":
            self._set_pool(iid, None)
        elif k == "node":
            self._set_node(iid, None)

    # --- items -------------------------------------------------------------------------------

    def _set_workload(self, iid: str, wep: WorkloadEndpoint) -> None:
        spec = wep.spec
        ns = wep.namespace or "default"
        own = dict(wep.metadata.labels or {})
        own[LABEL_NAMESPACE] = ns
        if spec.orchestrator:
            own[LABEL_ORCHESTRATOR] = spec.orchestrator
        if spec.serviceAccountName:
            own[LABEL_SERVICE_ACCOUNT] = spec.serviceAccountName
        pod = (ns, spec.pod) if spec.pod else None
        self._upsert_item(iid, "workload", wep, own=own, parents=tuple(spec.profiles or ()),
                          addrs=tuple(_cidr(n) for n in spec.ipNetworks or ()),
                          ports=_endpoint_ports(spec.ports), pod=pod,
                          local=bool(spec.node) and spec.node == self.node_name)

    def _set_host(self, iid: str, hep: HostEndpoint) -> None:
        spec = hep.spec
        self._upsert_item(iid, "host", hep, own=dict(hep.metadata.labels or {}),
                          parents=tuple(spec.profiles or ()),
                          addrs=tuple(_host_cidr(ip) for ip in spec.expectedIPs or ()),
                          ports=_endpoint_ports(spec.ports), pod=None,
                          local=spec.node == self.node_name)

    def _set_netset(self, iid: str, ns_res: NetworkSet | GlobalNetworkSet) -> None:
        own = dict(ns_res.metadata.labels or {})
        parents: tuple[str, ...] = ()
        if isinstance(ns_res, NetworkSet):
            ns = ns_res.namespace or "default"
            own[LABEL_NAMESPACE] = ns
            parents = (f"kns.{ns}",)
        self._upsert_item(iid, "netset", ns_res, own=own, parents=parents,
                          addrs=tuple(dict.fromkeys(_cidr(n) for n in ns_res.spec.nets or ())),
                          ports=None, pod=None, local=False)

    def _upsert_item(self, iid: str, kind: str, resource: Any, *, own: dict[str, str],
                     parents: tuple[str, ...], addrs: tuple[str, ...],
                     ports: dict[tuple[str, int], int] | None, pod: tuple[str, str] | None,
                     local: bool) -> None:
        item = self._items.get(iid)
        if item is not None and item.kind != kind:
            self._remove_item(iid)
            item = None
        new = item is None
        if item is None:
            item = _Item(iid, kind)
            self._items[iid] = item
        if item.parents != parents:
            for p in item.parents:
                self._profile_users.get(p, set()).discard(iid)
            for p in parents:
                self._profile_users.setdefault(p, set()).add(iid)
            item.parents = parents
        if item.pod != pod:
            if item.pod is not None:
                self._pod_users.get(item.pod, set()).discard(iid)
            if pod is not None:
                self._pod_users.setdefault(pod, set()).add(iid)
            item.pod = pod
        if ports is None and pod is not None:
            ports = self._pods.get(pod)
        ports = ports or {}
        was_local_ep = item.local_endpoint
        item.own, item.resource, item.local = own, resource, local
        labels = self._effective_labels(item)
        if new:
            item.labels, item.addrs, item.ports = labels, addrs, ports
            self._index_labels(iid, {}, labels)
            for sel in self._candidates(labels):
                if sel.match(labels):
                    self._join(item, sel)
        else:
            if labels != item.labels:
                self._relabel(item, labels)
            if addrs != item.addrs or ports != item.ports:
                item.addrs, item.ports = addrs, ports
                self._recontrib_item(item)
        if item.local_endpoint or was_local_ep:
            self._dirty.add(iid)

    def _remove_item(self, iid: str) -> None:
        item = self._items.pop(iid, None)
        if item is None:
            return
        self._index_labels(iid, item.labels, {})
        for canon in list(item.matched):
            self._leave(item, self._sels[canon])
        for p in item.parents:
            self._profile_users.get(p, set()).discard(iid)
        if item.pod is not None:
            self._pod_users.get(item.pod, set()).discard(iid)
        if item.local_endpoint:
            self._dirty.add(iid)

    def _index_labels(self, iid: str, old: dict[str, str], new: dict[str, str]) -> None:
        """Keep ``_items_by_label`` (``(key, value)`` -> item ids) up to date."""
        index = self._items_by_label
        for kv in old.items():
            if new.get(kv[0]) != kv[1]:
                ids = index.get(kv)
                if ids is not None:
                    ids.discard(iid)
                    if not ids:
                        del index[kv]
        for kv in new.items():
            if old.get(kv[0]) != kv[1]:
                index.setdefault(kv, set()).add(iid)

    def _effective_labels(self, item: _Item) -> dict[str, str]:
        """Own labels over the labels the profiles apply (the first profile wins)."""
        if not item.parents:
            return dict(item.own)
        labels: dict[str, str] = {}
        for p in reversed(item.parents):
            labels.update(self._profile_labels(p))
        labels.update(item.own)
        return labels

    def _relabel(self, item: _Item, labels: dict[str, str]) -> None:
        """New labels: re-evaluate only the selectors that read a changed key."""
        old = item.labels
        item.labels = labels
        self._index_labels(item.id, old, labels)
        changed = {k for k in old.keys() | labels.keys() if old.get(k) != labels.get(k)}
        if not changed:
            return
        # Only selectors reading a changed key can change their verdict. Of those, the ones
        # whose required label the item now has are evaluated (found through the index by
        # the item's labels: far fewer than all readers of, say, a namespace label); the
        # others it no longer matches (it leaves those it was in).
        matched = item.matched
        sels_ = self._sels
        evaluate = [sel for sel in self._sel_scan if not sel.keys.isdisjoint(changed)]
        index = self._sel_index
        for kv in labels.items():
            sels = index.get(kv)
            if sels:
                evaluate.extend(sel for sel in sels if not sel.keys.isdisjoint(changed))
        seen = {sel.canon for sel in evaluate}
        leave = [sels_[c] for c in matched if c not in seen
                 and not sels_[c].keys.isdisjoint(changed)]
        for sel in evaluate:
            now = sel.match(labels)
            if now != (sel.canon in matched):
                if now:
                    self._join(item, sel)
                else:
                    self._leave(item, sel)
        for sel in leave:
            self._leave(item, sel)

    def _join(self, item: _Item, sel: _Sel) -> None:
        sel.members.add(item.id)
        item.matched.add(sel.canon)
        for st in sel.sets:
            self._recontrib(st, item)
        if sel.policies and item.local_endpoint:
            self._dirty.add(item.id)

    def _leave(self, item: _Item, sel: _Sel) -> None:
        sel.members.discard(item.id)
        item.matched.discard(sel.canon)
        for st in sel.sets:
            self._recontrib(st, item, gone=True)
        if sel.policies and item.local_endpoint:
            self._dirty.add(item.id)

    def _recontrib_item(self, item: _Item) -> None:
        for canon in item.matched:
            for st in self._sels[canon].sets:
                self._recontrib(st, item)

    def _recontrib(self, st: _Set, item: _Item, gone: bool = False) -> None:
        """Bring an item's members of one IP set up to date."""
        new: tuple[str, ...] = ()
        if not gone and st.sel.canon in item.matched:
            if st.port_name is None:
                new = item.addrs
            else:
                port = item.ports.get((st.port_name, st.proto or 0))
                if port is not None:
                    proto = PROTOCOL_NAMES[st.proto or 0]
                    new = tuple(f"{ipaddress.ip_interface(a).ip},{proto}:{port}"
                                for a in item.addrs)
        old = st.contrib.get(item.id, ())
        if old == new:
            return
        for m in old:
            counts = st.counts[_family(m)]
            if counts[m] == 1:
                del counts[m]
                st.dirty.add(_family(m))
            else:
                counts[m] -= 1
        for m in new:
            counts = st.counts[_family(m)]
            if m in counts:
                counts[m] += 1
            else:
                counts[m] = 1
                st.dirty.add(_family(m))
        if new:
            st.contrib[item.id] = new
        else:
            st.contrib.pop(item.id, None)

    # --- selectors and sets ------------------------------------------------------------------

    def _candidates(self, labels: dict[str, str]) -> list[_Sel]:
        """The selectors that can match ``labels`` (a superset of those that do)."""
        out = list(self._sel_scan)
        index = self._sel_index
        for kv in labels.items():
            sels = index.get(kv)
            if sels:
                out.extend(sels)
        return out

    def _ref_sel(self, canon: str) -> _Sel:
        sel = self._sels.get(canon)
        if sel is None:
            sel = _Sel(canon)
            self._sels[canon] = sel
            for k in sel.keys:
                self._key_index.setdefault(k, set()).add(sel)
            if sel.index is None:
                self._sel_scan.add(sel)
            else:
                self._sel_index.setdefault(sel.index, set()).add(sel)
            match = sel.match
            items = self._items
            candidates: Iterable[_Item] = items.values() if sel.index is None else [
                items[iid] for iid in self._items_by_label.get(sel.index, ())]
            for item in candidates:
                if match(item.labels):
                    sel.members.add(item.id)
                    item.matched.add(canon)
        sel.refs += 1
        return sel

    def _unref_sel(self, sel: _Sel) -> None:
        sel.refs -= 1
        if sel.refs > 0:
            return
        del self._sels[sel.canon]
        for k in sel.keys:
            users = self._key_index.get(k)
            if users is not None:
                users.discard(sel)
                if not users:
                    del self._key_index[k]
        if sel.index is None:
            self._sel_scan.discard(sel)
        else:
            indexed = self._sel_index[sel.index]
            indexed.discard(sel)
            if not indexed:
                del self._sel_index[sel.index]
        for iid in sel.members:
            self._items[iid].matched.discard(sel.canon)

    def _ref_set(self, key: tuple[Any, ...]) -> None:
        st = self._sets.get(key)
        if st is None:
            if key[0] == "net":
                canon = key[1]
                st = _Set(key, self._ref_sel(canon),
                          {f: ipset_id("s", f, canon) for f in (4, 6)})
            else:
                _, canon, proto, name = key
                hkey = f"{canon}|{PROTOCOL_NAMES[proto]}:{name}"
                st = _Set(key, self._ref_sel(canon), {f: ipset_id("n", f, hkey) for f in (4, 6)},
                          proto=proto, port_name=name)
            self._sets[key] = st
            for set_id in st.ids.values():
                self._set_by_id[set_id] = st
            st.sel.sets.append(st)
            for iid in st.sel.members:
                self._recontrib(st, self._items[iid])
        st.refs += 1

    def _unref_set(self, key: tuple[Any, ...]) -> None:
        st = self._sets[key]
        st.refs -= 1
        if st.refs > 0:
            return
        del self._sets[key]
        for set_id in st.ids.values():
            del self._set_by_id[set_id]
        st.sel.sets.remove(st)
        self._unref_sel(st.sel)

    # --- policies ----------------------------------------------------------------------------

    def _set_policy(self, pid: str, pol: NetworkPolicy | GlobalNetworkPolicy | None) -> None:
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
            rules = _Rules()
            directions: tuple[tuple[Direction, list[Rule] | None], ...] = (
                ("ingress", spec.ingress), ("egress", spec.egress))
            for direction, rule_list in directions:
                if direction.capitalize() in types:
                    self._translate(pid, direction, rule_list or [], ns, rules)
            sel = self._ref_sel(applies)
            sel.policies.add(pid)
            for key in rules.set_keys:
                self._ref_set(key)
            flags = (pol.spec.preDNAT, pol.spec.doNotTrack, pol.spec.applyOnForward) \
                if isinstance(pol, GlobalNetworkPolicy) else (False, False, False)
            new = _Policy(
                id=pid, tier=spec.tier or DEFAULT_TIER,
                sort=(_INF if spec.order is None else float(spec.order), sort_name),
                applies=sel, types=types,
                pre_dnat=bool(flags[0]), untracked=bool(flags[1]), on_forward=bool(flags[2]),
                programs=rules.programs, set_keys=rules.set_keys)
            self._policies[pid] = new
            self._mark_members(sel)
        if old is not None:
            self._mark_members(old.applies)
            if pid not in self._policies or self._policies[pid].applies is not old.applies:
                old.applies.policies.discard(pid)
            self._unref_sel(old.applies)
            for key in old.set_keys:
                self._unref_set(key)

    def _mark_members(self, sel: _Sel) -> None:
        items = self._items
        for iid in sel.members:
            if items[iid].local_endpoint:
                self._dirty.add(iid)

    def _translate(self, pid: str, direction: Direction, rules: list[Rule], ns: str | None,
                   out: _Rules) -> None:
        specs = [self._rule(f"{pid}/{direction}/{i}", r, ns, out.set_keys)
                 for i, r in enumerate(rules)]
        out.programs[direction] = PolicyProgram(pid, direction, tuple(specs))

    def _rule(self, rule_id: str, rule: Rule, ns: str | None,
              set_keys: list[tuple[Any, ...]]) -> RuleSpec:
        action = _ACTIONS[rule.action.lower()]
        if rule.http is not None or rule.source.services or rule.destination.services:
            action = "none"
        proto = _proto_num(rule.protocol)
        families = {rule.ipVersion} if rule.ipVersion else {4, 6}
        if proto == 1:
            families &= {4}
        elif proto == 58:
            families &= {6}
        sides: dict[str, dict[str, Any]] = {}
        for side, ent in (("src", rule.source), ("dst", rule.destination)):
            nets = tuple(dict.fromkeys(_cidr(n) for n in ent.nets or ()))
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
            kwargs[f"{side}_not_nets"] = tuple(dict.fromkeys(_cidr(n)
                                                             for n in ent.notNets or ()))
            kwargs[f"{side}_ipsets"] = self._set_ids(("net", sel), fams, set_keys) if sel else ()
            kwargs[f"{side}_not_ipsets"] = (self._set_ids(("net", not_sel), fams, set_keys)
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
                        named += self._set_ids(("port", sel or ALL, proto, p), fams, set_keys)
                kwargs[f"{side}_{neg}ports"] = tuple(dict.fromkeys(ranges))
                kwargs[f"{side}_{neg}named_port_ipsets"] = tuple(named)
        icmp, not_icmp = rule.icmp, rule.notICMP
        return RuleSpec(
            rule_id=rule_id, action=action,
            ip_version=fams[0] if len(families) == 1 else None,
            protocol=proto, not_protocol=_proto_num(rule.notProtocol),
            icmp_type=icmp.type if icmp else None, icmp_code=icmp.code if icmp else None,
            not_icmp_type=not_icmp.type if not_icmp else None,
            not_icmp_code=not_icmp.code if not_icmp else None,
            **kwargs)

    @staticmethod
    def _set_ids(key: tuple[Any, ...], fams: Iterable[int],
                 set_keys: list[tuple[Any, ...]]) -> tuple[str, ...]:
        set_keys.append(key)
        if key[0] == "net":
            return tuple(ipset_id("s", f, key[1]) for f in fams)
        _, canon, proto, name = key
        hkey = f"{canon}|{PROTOCOL_NAMES[proto]}:{name}"
        return tuple(ipset_id("n", f, hkey) for f in fams)

    # --- profiles, namespaces, service accounts, pods -----------------------------------------

    def _set_profile(self, name: str, prof: Profile | None) -> None:
        old_labels = self._profile_labels(name)
        old_state = self._profile_states.pop(name, None)
        if prof is None:
            self._profiles.pop(name, None)
        else:
            self._profiles[name] = prof
            rules = _Rules()
            pid = f"pro:{name}"
            self._translate(pid, "ingress", prof.spec.ingress or [], None, rules)
            self._translate(pid, "egress", prof.spec.egress or [], None, rules)
            for key in rules.set_keys:
                self._ref_set(key)
            self._profile_states[name] = _ProfileState(rules.programs, rules.set_keys)
        if old_state is not None:
            for key in old_state.set_keys:
                self._unref_set(key)
        if self._profile_labels(name) != old_labels:
            self._relabel_users(name)

    def _relabel_users(self, profile: str) -> None:
        for iid in list(self._profile_users.get(profile, ())):
            item = self._items[iid]
            labels = self._effective_labels(item)
            if labels != item.labels:
                self._relabel(item, labels)

    def _profile_labels(self, name: str) -> dict[str, str]:
        prof = self._profiles.get(name)
        if prof is not None:
            return dict(prof.spec.labelsToApply or {})
        if name.startswith("kns."):
            ns = name[4:]
            labels = {NAMESPACE_PREFIX + k: v for k, v in self._namespaces.get(ns, {}).items()}
            labels[NAMESPACE_PREFIX + LABEL_NAME] = ns
            return labels
        if name.startswith("ksa.") and name.count(".") >= 2:
            ns, _, sa = name[4:].partition(".")
            labels = {SERVICE_ACCOUNT_PREFIX + k: v
                      for k, v in self._service_accounts.get((ns, sa), {}).items()}
            labels[SERVICE_ACCOUNT_PREFIX + LABEL_NAME] = sa
            return labels
        return {}

    def _profile_programs(self, name: str) -> dict[str, PolicyProgram]:
        state = self._profile_states.get(name)
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

    def _set_namespace(self, name: str, ns: Namespace | None) -> None:
        labels = dict(ns.metadata.labels or {}) if ns is not None else None
        if labels is None:
            self._namespaces.pop(name, None)
        else:
            self._namespaces[name] = labels
        self._relabel_users(f"kns.{name}")

    def _set_service_account(self, key: str, sa: Any | None) -> None:
        ns, _, name = key.partition("/")
        if sa is None:
            self._service_accounts.pop((ns, name), None)
        else:
            self._service_accounts[(ns, name)] = _meta(sa)[2]
        self._relabel_users(f"ksa.{ns}.{name}")

    def _set_pod(self, key: str, pod: Pod | None) -> None:
        ns, _, name = key.partition("/")
        ports: dict[tuple[str, int], int] = {}
        if pod is not None:
            for (pname, proto), port in pod.named_ports().items():
                num = PROTOCOL_NUMBERS.get(proto) or PROTOCOL_NUMBERS.get(proto.upper())
                if num is not None:
                    ports[(pname, num)] = port
            self._pods[(ns, name)] = ports
        else:
            self._pods.pop((ns, name), None)
        for iid in self._pod_users.get((ns, name), ()):
            item = self._items[iid]
            if item.kind == "workload" and not item.resource.spec.ports and item.ports != ports:
                item.ports = ports
                self._recontrib_item(item)

    # --- configuration -----------------------------------------------------------------------

    def _update_failsafe(self) -> None:
        """The failsafe and protected host ports: ``node.<name>`` over ``default`` over the
        defaults (for protected ports, plus the ports of this node's etcd endpoints)."""
        default = self._felix.get("default")
        node = self._felix.get(f"node.{self.node_name}")

        def pick(attr: str, fallback: Iterable[ProtoPort]) -> tuple[FailsafeSpec, ...]:
            for cfg in (node, default):
                value = getattr(cfg.spec, attr) if cfg is not None else None
                if value is not None:
                    return _failsafe(value)
            return _failsafe(fallback)

        self._failsafe = (pick("failsafeInboundHostPorts", DEFAULT_FAILSAFE_INBOUND),
                          pick("failsafeOutboundHostPorts", DEFAULT_FAILSAFE_OUTBOUND))
        datastore = [ProtoPort(protocol="TCP", port=p) for p in self._datastore_ports]
        protected = tuple(dict.fromkeys(pick(
            "workloadProtectedHostPorts", (*DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS, *datastore))))
        if protected != self._protected_ports:
            self._protected_ports = protected
            self._update_protected()

    def _set_pool(self, name: str, pool: IPPool | None) -> None:
        if pool is None:
            self._pools.pop(name, None)
        else:
            self._pools[name] = _cidr(pool.spec.cidr)
        self._update_protected()

    def _set_node(self, name: str, node: Node | None) -> None:
        addrs = () if node is None else tuple(_host_cidr(a) for a in node.host_addresses())
        if addrs == self._node_addrs.get(name, ()):
            return  # a status or label change: nothing the dataplane uses
        if addrs:
            self._node_addrs[name] = addrs
        else:
            self._node_addrs.pop(name, None)
        self._update_protected()

    def _update_protected(self) -> None:
        self._protected = ProtectedPorts(
            ports=self._protected_ports,
            workload_nets=tuple(sorted(set(self._pools.values()))),
            host_addresses=tuple(sorted({a for addrs in self._node_addrs.values()
                                         for a in addrs})))

    def _set_tier(self, name: str, tier: Any | None) -> None:
        if tier is None:
            self._tiers.pop(name, None)
        else:
            spec = tier.get("spec", tier) if isinstance(tier, Mapping) else tier.spec
            get = spec.get if isinstance(spec, Mapping) else (lambda a: getattr(spec, a, None))
            order = get("order")
            default_action = str(get("defaultAction") or "Deny").lower()
            self._tiers[name] = (None if order is None else float(order),
                                 "pass" if default_action == "pass" else "deny")
        self._dirty.update(iid for iid, it in self._items.items() if it.local_endpoint)

    def _tier_sort(self, tier: str) -> tuple[float, str]:
        known = self._tiers.get(tier)
        if known is not None and known[0] is not None:
            return (known[0], tier)
        if tier == DEFAULT_TIER and known is None:
            return (DEFAULT_TIER_ORDER, tier)
        return (_INF, tier)

    # --- output ------------------------------------------------------------------------------

    def _build_program(self, item: _Item) -> EndpointProgram:
        pids: set[str] = set()
        sels = self._sels
        for canon in item.matched:
            pids |= sels[canon].policies
        pols = sorted((self._policies[p] for p in pids),
                      key=lambda p: (self._tier_sort(p.tier), p.sort))
        host = item.kind == "host"
        res = item.resource
        lists: dict[str, list[_Policy]] = {}

        def add(hook: str, pol: _Policy) -> None:
            lists.setdefault(hook, []).append(pol)

        all_ifaces = host and res.spec.interfaceName == "*"
        for pol in pols:
            dirs = [d for d in ("ingress", "egress") if d.capitalize() in pol.types]
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
            allow_spoofed_prefixes=tuple(_cidr(c) for c in spec.allowSpoofedSourcePrefixes or ()))

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
        """The dataplane model of this node, as of the updates so far."""
        if self._model is not None and not self._dirty:
            return self._model
        for iid in self._dirty:
            item = self._items.get(iid)
            if item is None or not item.local_endpoint:
                self._programs.pop(iid, None)
                self._program_pids.pop(iid, None)
            else:
                program = self._programs[iid] = self._build_program(item)
                self._program_pids[iid] = program.policy_ids()
        self._dirty.clear()
        endpoints: dict[str, EndpointProgram] = {}
        hosts: dict[str, HostEndpointProgram] = {}
        pids: set[str] = set()
        profile_names: set[str] = set()
        program_pids = self._program_pids
        for iid, ep in self._programs.items():
            if isinstance(ep, HostEndpointProgram):
                hosts[ep.name] = ep
            else:
                endpoints[ep.name] = ep
            pids |= program_pids[iid]
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
        ipsets = {}
        for set_id in sorted(set_ids):
            spec = self._set_by_id[set_id].spec(ipset_family(set_id))
            ipsets[set_id] = spec
        self._model = DataplaneModel(
            endpoints=FrozenMap(sorted(endpoints.items())),
            host_endpoints=FrozenMap(sorted(hosts.items())),
            policies=FrozenMap(policies), profiles=FrozenMap(profiles),
            ipsets=FrozenMap(sorted(ipsets.items())),
            failsafe_in=self._failsafe[0], failsafe_out=self._failsafe[1],
            protected=self._protected)
        return self._model


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


def _endpoint_ports(ports: list[EndpointPort] | None) -> dict[tuple[str, int], int] | None:
    """An endpoint's named ports, (name, protocol number) -> port; None when it lists none."""
    if not ports:
        return None
    return {(p.name, n): p.port for p in ports if (n := _proto_num(p.protocol)) is not None}


def _meta(r: Any) -> tuple[str | None, str | None, dict[str, str]]:
    """(name, namespace, labels) of a model object or of a plain mapping with ``metadata``
    (Tortie has no model for ServiceAccount or Tier)."""
    meta = r.get("metadata") if isinstance(r, Mapping) else getattr(r, "metadata", None)
    if meta is None:
        return None, None, {}
    if isinstance(meta, Mapping):
        return meta.get("name"), meta.get("namespace"), dict(meta.get("labels") or {})
    return meta.name, getattr(meta, "namespace", None), dict(meta.labels or {})


def _failsafe(ports: Iterable[ProtoPort]) -> tuple[FailsafeSpec, ...]:
    return tuple(FailsafeSpec(PROTOCOL_NUMBERS[p.protocol], int(p.port),
                              _cidr(p.net) if p.net else None) for p in ports)
