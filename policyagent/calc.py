"""The policy calculation: resources in, :class:`~policyagent.model.DataplaneModel` out.

:class:`PolicyCalculator` takes the resources the policy agent watches, by kind (:data:`KINDS`,
the one table of the kind names it accepts; :class:`Kind`, what each is to the calculation),
and hands each to its handler (a dispatch table on :class:`Kind`). Two parts do the work:

* :class:`~policyagent.selector_index.SelectorIndex` -- what matches what: every item
  (endpoints and network sets of the whole cluster) with its effective labels, every selector
  in use with the items it matches, every IP set with reference-counted members;
* :class:`~policyagent.program_assembly.ProgramAssembly` -- the translated policies and
  profiles (rules: :mod:`policyagent.rule_translation`), tiers and host port configuration,
  and the cached endpoint programs: ``model()`` rebuilds only what changed.

The calculator itself keeps what only feeds labels: namespaces, service accounts, the labels
Profile resources apply (see ``kns.`` / ``ksa.`` below), and Pods' named ports.

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
* **Unsupported matches** (``services``, ``http``; see :mod:`datastore.unsupported`) never
  widen what is allowed: an Allow or Pass rule with one becomes a no-verdict (``none``) rule
  that matches nothing; a Deny or Log rule is enforced without the condition (it drops or
  logs more, never less).

Not here: interface resolution of ``expectedIPs``-only host endpoints and the choice between
several host endpoints on one interface (the renderer knows the interfaces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

from datastore.kinds import UnknownKind, plural_of
from datastore.model_k8s import K8sNetworkPolicy, Namespace, Pod
from datastore.model_policy import Profile
from policyagent.k8s_translate import calico_name, translate
from policyagent.model import PROTOCOL_NUMBERS, DataplaneModel
from policyagent.program_assembly import (
    DEFAULT_ALLOW_PROFILE,
    DEFAULT_TIER_ORDER,
    ProgramAssembly,
)
from policyagent.selector_index import NamedPorts, SelectorIndex
from policyagent.selectors import LABEL_NAME, NAMESPACE_PREFIX, SERVICE_ACCOUNT_PREFIX

__all__ = ["DEFAULT_ALLOW_PROFILE", "DEFAULT_TIER_ORDER", "KINDS", "Kind", "PolicyCalculator"]


class Kind(StrEnum):
    """What a resource is to the calculation."""

    WORKLOAD_ENDPOINT = "workload-endpoint"
    HOST_ENDPOINT = "host-endpoint"
    NETWORK_POLICY = "network-policy"
    GLOBAL_NETWORK_POLICY = "global-network-policy"
    K8S_NETWORK_POLICY = "k8s-network-policy"
    PROFILE = "profile"
    NETWORK_SET = "network-set"
    GLOBAL_NETWORK_SET = "global-network-set"
    NAMESPACE = "namespace"
    POD = "pod"
    SERVICE_ACCOUNT = "service-account"
    FELIX_CONFIGURATION = "felix-configuration"
    TIER = "tier"
    IP_POOL = "ip-pool"
    NODE = "node"


#: the datastore's plural of a kind (any spelling :func:`datastore.kinds.plural_of` knows)
#: -> what a resource of that kind is to the calculation
KINDS: Mapping[str, Kind] = {
    "workloadendpoints": Kind.WORKLOAD_ENDPOINT,
    "hostendpoints": Kind.HOST_ENDPOINT,
    "networkpolicies": Kind.NETWORK_POLICY,
    "globalnetworkpolicies": Kind.GLOBAL_NETWORK_POLICY,
    "k8snetworkpolicies": Kind.K8S_NETWORK_POLICY,
    "profiles": Kind.PROFILE,
    "networksets": Kind.NETWORK_SET,
    "globalnetworksets": Kind.GLOBAL_NETWORK_SET,
    "namespaces": Kind.NAMESPACE,
    "pods": Kind.POD,
    "serviceaccounts": Kind.SERVICE_ACCOUNT,
    "felixconfigurations": Kind.FELIX_CONFIGURATION,
    "tiers": Kind.TIER,
    "ippools": Kind.IP_POOL,
    "nodes": Kind.NODE,
}


def _kind_of(name: str) -> Kind | None:
    """What a resource of kind ``name`` is to the calculation (None: not used)."""
    try:
        return KINDS.get(plural_of(name))
    except UnknownKind:
        return None


#: A resource's id inside the calculation, from its namespace and name (the ids of policies
#: are also their ids in the model); a kind not here is known by its name
_INTERNAL_IDS: Mapping[Kind, Callable[[str, str], str]] = {
    Kind.WORKLOAD_ENDPOINT: lambda ns, name: f"wep:{ns}/{name}",
    Kind.HOST_ENDPOINT: lambda ns, name: f"hep:{name}",
    Kind.NETWORK_POLICY: lambda ns, name: f"np:{ns}:{name}",
    Kind.K8S_NETWORK_POLICY: lambda ns, name: f"np:{ns}:{calico_name(name)}",
    Kind.GLOBAL_NETWORK_POLICY: lambda ns, name: f"gnp:{name}",
    Kind.NETWORK_SET: lambda ns, name: f"netset:{ns}/{name}",
    Kind.GLOBAL_NETWORK_SET: lambda ns, name: f"gnetset:{name}",
    Kind.POD: lambda ns, name: f"{ns}/{name}",
    Kind.SERVICE_ACCOUNT: lambda ns, name: f"{ns}/{name}",
}


class PolicyCalculator:
    """Current resources -> the dataplane model of one node. Pure: no I/O.

    Feed it with :meth:`update` (``resource=None`` deletes), read it with :meth:`model`.
    ``kind`` is a kind name as :func:`datastore.kinds.plural_of` reads it (``hostendpoints``,
    ``WorkloadEndpoint``, ``NetworkPolicy`` -- a Kubernetes one is recognised by its model class --,
    ``K8sNetworkPolicy``, ``Profile``, ``Namespace``, ``Pod``, ``ServiceAccount``,
    ``FelixConfiguration``, ``Tier``, ``IPPool``, ``Node``, ...); ``key`` identifies the
    resource within its kind (the datastore key, or ``namespace/name``): a delete needs only
    the key, and a resource must always come under the same key. ServiceAccounts and Tiers,
    which Tortie has no model for, may be given as mappings (``{"metadata": {"name",
    "namespace", "labels"}}``, ``{"spec": {"order", "defaultAction"}}``).

    IP pools and Nodes feed only the protected host ports
    (:class:`~policyagent.model.ProtectedPorts`): which destinations are workloads, which are
    nodes. ``datastore_ports``: the ports of the etcd endpoints this node uses;
    ``node_ports``: the ports tortie-node listens on (``--metrics-address``); both protected
    too unless a FelixConfiguration sets ``workloadProtectedHostPorts``.
    """

    def __init__(self, node_name: str, *, datastore_ports: Iterable[int] = (),
                 node_ports: Iterable[int] = ()) -> None:
        self.node_name = node_name
        self.index = SelectorIndex(node_name, self._profile_labels)
        self.programs = ProgramAssembly(node_name, self.index, datastore_ports=datastore_ports,
                                        node_ports=node_ports)
        # profile name -> the labelsToApply of its Profile resource
        self._profile_labels_applied: dict[str, dict[str, str]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self._service_accounts: dict[tuple[str, str], dict[str, str]] = {}  # (ns, name) -> labels
        self._ids: dict[tuple[Kind, str], str] = {}  # (kind, key) -> internal id
        #: kind -> what applies a resource of that kind (``None``: deletes it), by internal id
        self._handlers: dict[Kind, Callable[[str, Any | None], None]] = {
            Kind.WORKLOAD_ENDPOINT: self.index.set_workload,
            Kind.HOST_ENDPOINT: self.index.set_host,
            Kind.NETWORK_SET: self.index.set_network_set,
            Kind.GLOBAL_NETWORK_SET: self.index.set_network_set,
            Kind.NETWORK_POLICY: self.programs.set_policy,
            Kind.GLOBAL_NETWORK_POLICY: self.programs.set_policy,
            Kind.K8S_NETWORK_POLICY: self._set_k8s_policy,
            Kind.PROFILE: self._set_profile,
            Kind.NAMESPACE: self._set_namespace,
            Kind.POD: self._set_pod,
            Kind.SERVICE_ACCOUNT: self._set_service_account,
            Kind.FELIX_CONFIGURATION: self.programs.set_felix_configuration,
            Kind.TIER: self.programs.set_tier,
            Kind.IP_POOL: self.programs.set_pool,
            Kind.NODE: self.programs.set_node,
        }

    # --- input -------------------------------------------------------------------------------

    @staticmethod
    def handles(kind: str) -> bool:
        """Whether :meth:`update` takes this kind."""
        return _kind_of(kind) is not None

    def update(self, kind: str, key: str, resource: Any | None) -> None:
        """Add, change (``resource``) or delete (``None``) one resource."""
        what = _kind_of(kind)
        if what is None:
            raise ValueError(f"the policy calculation does not use {kind!r} resources")
        if what is Kind.NETWORK_POLICY and (
                isinstance(resource, K8sNetworkPolicy)
                or (resource is None and (Kind.K8S_NETWORK_POLICY, key) in self._ids)):
            what = Kind.K8S_NETWORK_POLICY
        programs = self.programs
        model, protected, tunnels = programs.cached, programs.protected, programs.tunnels
        programs.cached = None
        old_id = self._ids.pop((what, key), None)
        new_id = None if resource is None else _internal_id(what, key, resource)
        handler = self._handlers[what]
        if old_id is not None and old_id != new_id:
            handler(old_id, None)
        if resource is not None and new_id is not None:
            self._ids[(what, key)] = new_id
            handler(new_id, resource)
        if (what in (Kind.NODE, Kind.IP_POOL) and programs.protected == protected
                and programs.tunnels == tunnels):
            programs.cached = model  # e.g. a Node's labels or status: nothing the model holds

    def model(self) -> DataplaneModel:
        """The dataplane model of this node, as of the updates so far."""
        return self.programs.model()

    # --- handlers of what only the calculator keeps ------------------------------------------

    def _set_k8s_policy(self, item_id: str, knp: K8sNetworkPolicy | None) -> None:
        self.programs.set_policy(item_id, None if knp is None else translate(knp))

    def _set_profile(self, name: str, prof: Profile | None) -> None:
        old_labels = self._profile_labels(name)
        if prof is None:
            self._profile_labels_applied.pop(name, None)
        else:
            self._profile_labels_applied[name] = dict(prof.spec.labelsToApply or {})
        self.programs.set_profile(name, prof)
        if self._profile_labels(name) != old_labels:
            self.index.relabel_profile_users(name)

    def _profile_labels(self, name: str) -> dict[str, str]:
        """The labels profile ``name`` applies: a Profile resource's, else the built-in
        namespace (``kns.``) and service account (``ksa.``) profiles'."""
        applied = self._profile_labels_applied.get(name)
        if applied is not None:
            return dict(applied)
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

    def _set_namespace(self, name: str, ns: Namespace | None) -> None:
        if ns is None:
            self._namespaces.pop(name, None)
        else:
            self._namespaces[name] = dict(ns.metadata.labels or {})
        self.index.relabel_profile_users(f"kns.{name}")

    def _set_service_account(self, key: str, sa: Any | None) -> None:
        ns, _, name = key.partition("/")
        if sa is None:
            self._service_accounts.pop((ns, name), None)
        else:
            self._service_accounts[(ns, name)] = _meta(sa)[2]
        self.index.relabel_profile_users(f"ksa.{ns}.{name}")

    def _set_pod(self, key: str, pod: Pod | None) -> None:
        ns, _, name = key.partition("/")
        ports: NamedPorts | None = None
        if pod is not None:
            ports = {}
            for (pname, proto), port in pod.named_ports().items():
                num = PROTOCOL_NUMBERS.get(proto) or PROTOCOL_NUMBERS.get(proto.upper())
                if num is not None:
                    ports[(pname, num)] = port
        self.index.set_pod_ports((ns, name), ports)


def _internal_id(kind: Kind, key: str, r: Any) -> str:
    name, ns, _ = _meta(r)
    if name is None:  # e.g. a Tier given as {"spec": {...}}: known by its key
        return key
    make = _INTERNAL_IDS.get(kind)
    if make is None:
        return str(name)
    ns = ns or (key.rpartition("/")[0].rpartition("/")[2] if "/" in key else "") or "default"
    return make(ns, name)


def _meta(r: Any) -> tuple[str | None, str | None, dict[str, str]]:
    """(name, namespace, labels) of a model object or of a plain mapping with ``metadata``
    (Tortie has no model for ServiceAccount or Tier)."""
    meta = r.get("metadata") if isinstance(r, Mapping) else getattr(r, "metadata", None)
    if meta is None:
        return None, None, {}
    if isinstance(meta, Mapping):
        return meta.get("name"), meta.get("namespace"), dict(meta.get("labels") or {})
    return meta.name, getattr(meta, "namespace", None), dict(meta.labels or {})
