"""The registry of kinds Tortie stores: model, key prefix, CLI names.

One entry per kind; everything that maps a name the user typed, or a document's
apiVersion/kind, to a model and a key goes through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datastore.model_base import CALICO_API_VERSION
from datastore.model_bgp import BGPConfiguration, BGPFilter, BGPPeer
from datastore.model_config import FelixConfiguration, KubeControllersConfiguration
from datastore.model_endpoints import HostEndpoint, WorkloadEndpoint
from datastore.model_k8s import (
    K8sEndpointSlice,
    K8sNetworkPolicy,
    K8sNode,
    K8sService,
    Namespace,
    Pod,
)
from datastore.model_network import IPAMConfiguration, IPPool, IPReservation, Node
from datastore.model_policy import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkPolicy,
    NetworkSet,
    Profile,
)


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    model: type
    plural: str                       # key segment, see datastore.keys
    names: tuple[str, ...]            # what the CLI accepts (lower-case)
    # singletons that exist with Calico's defaults even before anyone wrote them
    implicit_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def namespaced(self) -> bool:
        return bool(self.model.NAMESPACED)


KINDS: tuple[KindInfo, ...] = (
    KindInfo("IPPool", CALICO_API_VERSION, IPPool, "ippools",
             ("ippool", "ippools", "ipp", "ipps", "pool", "pools")),
    KindInfo("IPReservation", CALICO_API_VERSION, IPReservation, "ipreservations",
             ("ipreservation", "ipreservations", "ipr", "iprs")),
    KindInfo("IPAMConfiguration", CALICO_API_VERSION, IPAMConfiguration, "ipamconfigurations",
             ("ipamconfiguration", "ipamconfigurations", "ipamconfig", "ipamconfigs"),
             implicit_defaults={"default": {"metadata": {"name": "default"}, "spec": {}}}),
    KindInfo("Node", CALICO_API_VERSION, Node, "nodes", ("node", "nodes", "no", "nos")),
    KindInfo("WorkloadEndpoint", CALICO_API_VERSION, WorkloadEndpoint, "workloadendpoints",
             ("workloadendpoint", "workloadendpoints", "wep", "weps")),
    KindInfo("HostEndpoint", CALICO_API_VERSION, HostEndpoint, "hostendpoints",
             ("hostendpoint", "hostendpoints", "hep", "heps")),
    KindInfo("NetworkPolicy", CALICO_API_VERSION, NetworkPolicy, "networkpolicies",
             ("networkpolicy", "networkpolicies", "policy", "policies", "np", "nps",
              "pol", "pols")),
    KindInfo("GlobalNetworkPolicy", CALICO_API_VERSION, GlobalNetworkPolicy,
             "globalnetworkpolicies",
             ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps")),
    KindInfo("Profile", CALICO_API_VERSION, Profile, "profiles",
             ("profile", "profiles", "pro", "pros")),
    KindInfo("NetworkSet", CALICO_API_VERSION, NetworkSet, "networksets",
             ("networkset", "networksets", "netset", "netsets")),
    KindInfo("GlobalNetworkSet", CALICO_API_VERSION, GlobalNetworkSet, "globalnetworksets",
             ("globalnetworkset", "globalnetworksets", "gns", "globalnetsets")),
    KindInfo("BGPConfiguration", CALICO_API_VERSION, BGPConfiguration, "bgpconfigurations",
             ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs")),
    KindInfo("BGPPeer", CALICO_API_VERSION, BGPPeer, "bgppeers",
             ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps")),
    KindInfo("BGPFilter", CALICO_API_VERSION, BGPFilter, "bgpfilters",
             ("bgpfilter", "bgpfilters")),
    KindInfo("FelixConfiguration", CALICO_API_VERSION, FelixConfiguration,
             "felixconfigurations",
             ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")),
    KindInfo("KubeControllersConfiguration", CALICO_API_VERSION, KubeControllersConfiguration,
             "kubecontrollersconfigurations",
             ("kubecontrollersconfiguration", "kubecontrollersconfigurations", "kcc"),
             implicit_defaults={"default": {"metadata": {"name": "default"}, "spec": {}}}),
    # Kubernetes kinds, mirrored into the datastore for the agents.
    KindInfo("Namespace", "v1", Namespace, "namespaces", ("namespace", "namespaces", "ns")),
    KindInfo("Pod", "v1", Pod, "pods", ("pod", "pods", "po")),
    KindInfo("Node", "v1", K8sNode, "k8snodes", ("k8snode", "k8snodes")),
    KindInfo("NetworkPolicy", "networking.k8s.io/v1", K8sNetworkPolicy, "k8snetworkpolicies",
             ("k8snetworkpolicy", "k8snetworkpolicies", "knp", "knps",
              "kubernetesnetworkpolicy")),
)

#: Kubernetes kinds only tortie-kube-controllers writes (mirrored from the Kubernetes API for
#: service advertisement): ``tortie get`` / ``delete`` know them by these names, but no
#: document of theirs is ever applied (``by_document`` does not take them: a Service belongs
#: in the Kubernetes API).
MIRRORED_ONLY: tuple[KindInfo, ...] = (
    KindInfo("Service", "v1", K8sService, "k8sservices", ("k8sservice", "k8sservices")),
    KindInfo("EndpointSlice", "discovery.k8s.io/v1", K8sEndpointSlice, "k8sendpointslices",
             ("k8sendpointslice", "k8sendpointslices")),
)

#: Kinds Tortie knows by name but does not store (no model, no key): Calico's Tier and
#: Kubernetes' ServiceAccount (a policy calculation may be given them directly).
#: plural -> the names they go by (lower-case).
NAME_ONLY_KINDS: dict[str, tuple[str, ...]] = {
    "tiers": ("tier", "tiers"),
    "serviceaccounts": ("serviceaccount", "serviceaccounts"),
}


_BY_NAME: dict[str, KindInfo] = {n: k for k in (*KINDS, *MIRRORED_ONLY) for n in k.names}
_BY_DOC: dict[tuple[str, str], KindInfo] = {(k.api_version, k.kind): k for k in KINDS}
_BY_PLURAL: dict[str, KindInfo] = {k.plural: k for k in (*KINDS, *MIRRORED_ONLY)}

# Kinds users commonly put in the same files, which Tortie does not store.
NOT_STORED_HINT = "apply it to the Kubernetes API (kubectl apply); Tortie stores only " \
    "Calico resources and the Kubernetes Namespace, Pod, Node and NetworkPolicy"


class UnknownKind(ValueError):
    pass


def by_cli_name(name: str) -> KindInfo:
    """The kind the user means by a CLI name (``gnp``, ``hostendpoints``, ...)."""
    info = _BY_NAME.get(name.lower())
    if info is None:
        raise UnknownKind(f"resource type {name!r} is not supported; known types: "
                          + ", ".join(sorted(k.names[1] for k in KINDS)))
    return info


def by_document(api_version: Any, kind: Any) -> KindInfo:
    """The kind of a document by its apiVersion and kind."""
    if kind is None or kind == "":
        raise UnknownKind("kind: required field is missing")
    if not isinstance(kind, str):
        raise UnknownKind(f"kind: must be a string, not {_type_name(kind)}")
    if api_version is not None and not isinstance(api_version, str):
        raise UnknownKind(f"apiVersion: must be a string, not {_type_name(api_version)}")
    info = _BY_DOC.get((api_version, kind))
    if info is not None:
        return info
    same_kind = [k for k in KINDS if k.kind == kind]
    if same_kind:
        wanted = " or ".join(sorted({k.api_version for k in same_kind}))
        raise UnknownKind(f"apiVersion: {api_version!r} is not supported for kind {kind}: "
                          f"use {wanted}")
    raise UnknownKind(f"kind {kind} ({api_version}) is not stored by Tortie: {NOT_STORED_HINT}")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), f"a {type(value).__name__}")


def by_plural(plural: str) -> KindInfo:
    return _BY_PLURAL[plural]


def plural_of(name: str) -> str:
    """The plural (key segment) of the kind ``name`` means, in any spelling the registry
    knows, case-insensitively: a CLI name (``gnp``, ``WorkloadEndpoint``, ``hostendpoints``)
    or a name-only kind (``Tier``, ``ServiceAccount``).  :class:`UnknownKind` otherwise."""
    lowered = name.lower()
    info = _BY_NAME.get(lowered)
    if info is not None:
        return info.plural
    for plural, names in NAME_ONLY_KINDS.items():
        if lowered in names:
            return plural
    raise UnknownKind(f"kind {name!r} is not known")


def plurals(where: Callable[[str], bool] | None = None) -> tuple[str, ...]:
    """The plurals of the stored kinds, in registry order; with ``where``, those it accepts
    (e.g. the kinds a consumer takes)."""
    return tuple(k.plural for k in KINDS if where is None or where(k.plural))
