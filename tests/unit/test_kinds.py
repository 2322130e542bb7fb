"""The kind registry (datastore/kinds.py): names, plurals, lookups; pure."""

from __future__ import annotations

import pytest

from datastore.kinds import (
    KINDS,
    NAME_ONLY_KINDS,
    UnknownKind,
    by_cli_name,
    by_plural,
    plural_of,
    plurals,
)
from policyagent.calc import PolicyCalculator


@pytest.mark.parametrize(("name", "plural"), [
    ("WorkloadEndpoint", "workloadendpoints"), ("weps", "workloadendpoints"),
    ("hep", "hostendpoints"), ("GlobalNetworkPolicy", "globalnetworkpolicies"),
    ("NetworkPolicy", "networkpolicies"), ("K8sNetworkPolicy", "k8snetworkpolicies"),
    ("KubernetesNetworkPolicy", "k8snetworkpolicies"), ("knp", "k8snetworkpolicies"),
    ("Node", "nodes"), ("k8snodes", "k8snodes"), ("IPPool", "ippools"),
    ("FelixConfiguration", "felixconfigurations"), ("Tier", "tiers"),
    ("serviceaccounts", "serviceaccounts"), ("ServiceAccount", "serviceaccounts"),
])
def test_plural_of(name: str, plural: str) -> None:
    assert plural_of(name) == plural


def test_plural_of_unknown() -> None:
    with pytest.raises(UnknownKind, match="'Deployment' is not known"):
        plural_of("Deployment")


def test_every_name_and_plural_is_one_kinds() -> None:
    names = [n for k in KINDS for n in k.names]
    assert len(names) == len(set(names))
    assert all(n == n.lower() for n in names)
    for k in KINDS:
        assert by_plural(k.plural) is k and plural_of(k.plural) == k.plural
        assert all(by_cli_name(n) is k for n in k.names)
    stored = {k.plural for k in KINDS}
    assert not stored & set(NAME_ONLY_KINDS)
    assert not {n for ns in NAME_ONLY_KINDS.values() for n in ns} & set(names)


def test_plurals() -> None:
    assert plurals() == tuple(k.plural for k in KINDS)
    assert plurals(lambda p: p.startswith("global")) == ("globalnetworkpolicies",
                                                         "globalnetworksets")
    # what the policy agent watches: every stored kind its calculation takes
    assert set(plurals(PolicyCalculator.handles)) == {
        "workloadendpoints", "hostendpoints", "profiles", "networkpolicies",
        "globalnetworkpolicies", "k8snetworkpolicies", "networksets", "globalnetworksets",
        "namespaces", "pods", "felixconfigurations", "ippools", "nodes"}


def test_mirrored_only_kinds_are_listed_but_never_applied() -> None:
    from datastore.kinds import MIRRORED_ONLY, by_document

    for info in MIRRORED_ONLY:
        assert by_plural(info.plural) is info and info not in KINDS
        assert all(by_cli_name(n) is info for n in info.names)
        with pytest.raises(UnknownKind, match="not stored by Tortie"):
            by_document(info.api_version, info.kind)
    assert by_cli_name("k8sservices").plural == "k8sservices"
    assert by_cli_name("k8sendpointslices").model.KIND == "EndpointSlice"
