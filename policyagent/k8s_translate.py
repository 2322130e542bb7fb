"""Kubernetes NetworkPolicy -> Calico NetworkPolicy, the way Calico's converter maps them.

The result is an ordinary :class:`datastore.model_policy.NetworkPolicy`, so the calculation
treats both kinds alike. The mapping:

=============================  ===============================================================
Kubernetes                     Calico
=============================  ===============================================================
``metadata.name`` *n*          ``metadata.name`` ``knp.default.<n>``, same namespace
(nothing)                      ``spec.order: 1000``, tier ``default``
``spec.podSelector`` *s*       ``spec.selector``: ``projectcalico.org/orchestrator == "k8s"
                               && <s>`` (``{}``: just the orchestrator term -- every pod of
                               the namespace; a namespaced policy only ever selects endpoints
                               of its own namespace)
``spec.policyTypes``           ``spec.types`` (the API server's default: Ingress, plus Egress
                               when there are egress rules)
ingress rule                   one ``Allow`` rule per (protocol, peer): the peer in
                               ``source``, the ports in ``destination.ports``
egress rule                    one ``Allow`` rule per (protocol, peer): peer and ports both
                               in ``destination``
empty or missing ``from/to``   no peer constraint (all sources / destinations)
empty or missing ``ports``     no protocol, no port constraint
peer ``podSelector`` *p*       ``selector``: ``projectcalico.org/orchestrator == "k8s" && <p>``
                               (within the policy's namespace unless a namespaceSelector is
                               given too)
peer ``namespaceSelector`` *q* ``namespaceSelector: <q>`` (``{}`` -> ``all()``: every
                               namespace) and ``selector`` the orchestrator term (pods only,
                               as Calico does even without a podSelector); the calculation
                               matches it against the ``pcns.`` labels the namespace profile
                               gives each endpoint
peer ``ipBlock``               ``nets: [cidr]``, ``except`` -> ``notNets``
port ``{protocol, port}``      ``protocol`` (default TCP), ``ports: [port]``; ports of one
                               protocol share a rule, overlapping numeric ranges merged
port ``port: <name>``          named port (resolved per destination endpoint)
port ``port`` + ``endPort``    range ``"port:endPort"``
port without ``port``          every port of that protocol (the protocol alone)
=============================  ===============================================================

Label selectors become Calico selectors with :func:`datastore.selector.from_k8s_label_selector`
(``matchLabels`` sorted by key, then ``matchExpressions``; In/NotIn/Exists/DoesNotExist).
"""

from __future__ import annotations

from typing import Any

from datastore.model_k8s import (
    K8sNetworkPolicy,
    LabelSelector,
    NetworkPolicyPeer,
    NetworkPolicyPort,
)
from datastore.model_policy import NetworkPolicy
from policyagent.selectors import LABEL_ORCHESTRATOR, all_of

NAME_PREFIX = "knp.default."
K8S_POLICY_ORDER = 1000
ORCHESTRATOR_K8S = f'{LABEL_ORCHESTRATOR} == "k8s"'


def calico_name(k8s_name: str) -> str:
    """The name Calico gives the translation of a Kubernetes NetworkPolicy."""
    return NAME_PREFIX + k8s_name


def pod_selector(sel: LabelSelector | None) -> str:
    """A pod selector: Kubernetes pods only, then the label selector."""
    return all_of([ORCHESTRATOR_K8S, sel.to_calico() if sel is not None else None])


def _peer(peer: NetworkPolicyPeer | None) -> dict[str, Any]:
    """The EntityRule fields for one peer (``{}`` for "any peer")."""
    if peer is None:
        return {}
    if peer.ipBlock is not None:
        ent: dict[str, Any] = {"nets": [peer.ipBlock.cidr]}
        if peer.ipBlock.except_:
            ent["notNets"] = list(peer.ipBlock.except_)
        return ent
    ent = {"selector": pod_selector(peer.podSelector)}
    if peer.namespaceSelector is not None:
        ent["namespaceSelector"] = peer.namespaceSelector.to_calico()  # {} -> all()
    return ent


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _ports_by_protocol(ports: list[NetworkPolicyPort] | None,
                       ) -> list[tuple[str | None, list[int | str] | None]]:
    """[(protocol or None, Calico ports or None for "every port")], protocols sorted."""
    if not ports:
        return [(None, None)]
    numeric: dict[str, list[tuple[int, int]]] = {}
    named: dict[str, list[str]] = {}
    every: set[str] = set()
    order: list[str] = []
    for p in ports:
        proto = p.protocol or "TCP"
        if proto not in order:
            order.append(proto)
        if p.port is None:
            every.add(proto)
        elif isinstance(p.port, str):
            named.setdefault(proto, []).append(p.port)
        else:
            numeric.setdefault(proto, []).append((p.port, p.endPort or p.port))
    out: list[tuple[str | None, list[int | str] | None]] = []
    for proto in sorted(order):
        if proto in every:
            out.append((proto, None))
            continue
        calico: list[int | str] = [lo if lo == hi else f"{lo}:{hi}"
                                   for lo, hi in _merge_ranges(numeric.get(proto, []))]
        calico += sorted(set(named.get(proto, [])))
        out.append((proto, calico))
    return out


def _rules(k8s_rules: list[Any] | None, ingress: bool) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for kr in k8s_rules or []:
        peers: list[NetworkPolicyPeer | None] = list((kr.from_ if ingress else kr.to) or [None])
        for proto, ports in _ports_by_protocol(kr.ports):
            for peer in peers:
                rule: dict[str, Any] = {"action": "Allow"}
                if proto is not None:
                    rule["protocol"] = proto
                ports_ent: dict[str, Any] = {"ports": ports} if ports else {}
                if ingress:
                    rule["source"] = _peer(peer)
                    rule["destination"] = ports_ent
                else:
                    rule["destination"] = {**_peer(peer), **ports_ent}
                rules.append(rule)
    return rules


def translate(knp: K8sNetworkPolicy) -> NetworkPolicy:
    """The Calico NetworkPolicy equivalent to a Kubernetes NetworkPolicy."""
    spec = knp.spec
    types = list(spec.policyTypes or ["Ingress"] + (["Egress"] if spec.egress else []))
    doc: dict[str, Any] = {
        "apiVersion": NetworkPolicy.API_VERSION,
        "kind": NetworkPolicy.KIND,
        "metadata": {"name": calico_name(knp.name), "namespace": knp.namespace or "default"},
        "spec": {
            "order": K8S_POLICY_ORDER,
            "selector": pod_selector(spec.podSelector),
            "types": types,
        },
    }
    for field, rules in (("ingress", _rules(spec.ingress, ingress=True)),
                         ("egress", _rules(spec.egress, ingress=False))):
        if rules and field.capitalize() in types:  # rules of an absent type are ignored
            doc["spec"][field] = rules
    return NetworkPolicy.from_dict(doc)
