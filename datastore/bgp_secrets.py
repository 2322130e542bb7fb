"""BGP passwords copied from Kubernetes Secrets into the datastore: which keys are referenced,
and the one layout of the copies.

A ``BGPPeer``'s ``spec.password.secretKeyRef`` and the ``default`` BGPConfiguration's
``spec.nodeMeshPassword.secretKeyRef`` name a key of a Secret in the namespace tortie-node runs
in (Calico's rule: calico-node's namespace).  tortie-kube-controllers, which may read that
namespace's Secrets, writes one document per *referenced* Secret under
:data:`datastore.keys.BGP_SECRETS`::

    /tortie/secrets/v3/bgp/<secret name> -> {"namespace": "kube-system",
                                             "data": {"<key>": "<password, plain text>"}}

with only the keys some peer references (never the rest of the Secret) and no document for a
Secret nothing references.  tortie-node's routing agent watches the prefix and resolves the
passwords from it.  The prefix lies outside ``/tortie/v3/`` so that etcd RBAC can keep it from
every client but those two (docs/bgp.md, "Passwords").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from datastore.keys import BGP_SECRETS
from datastore.model_bgp import GLOBAL_BGP_CONFIG_NAME, BGPConfiguration, BGPPassword, BGPPeer

#: The namespace whose Secrets hold BGP passwords when nothing says otherwise (where the
#: manifests run tortie-node, as Calico's manifests run calico-node).
DEFAULT_SECRETS_NAMESPACE = "kube-system"


def secret_key(name: str) -> str:
    """Datastore key of the copied keys of Secret ``name``."""
    if not name or "/" in name:
        raise ValueError(f"{name!r} is not a Secret name")
    return BGP_SECRETS + name


def secret_name(key: str) -> str:
    """The Secret name of a key under :data:`BGP_SECRETS`."""
    if not key.startswith(BGP_SECRETS) or "/" in key[len(BGP_SECRETS):] or key == BGP_SECRETS:
        raise ValueError(f"not a BGP secret key: {key!r}")
    return key[len(BGP_SECRETS):]


def _add(refs: dict[str, set[str]], pw: BGPPassword | None) -> None:
    if pw is not None and pw.secretKeyRef is not None:
        refs.setdefault(pw.secretKeyRef.name, set()).add(pw.secretKeyRef.key)


def referenced(peers: Iterable[BGPPeer], configs: Iterable[BGPConfiguration]
               ) -> dict[str, set[str]]:
    """Secret name -> the keys of it that BGP passwords reference (BGPPeers, and the
    ``default`` BGPConfiguration's ``nodeMeshPassword``; Calico reads it only there)."""
    refs: dict[str, set[str]] = {}
    for peer in peers:
        _add(refs, peer.spec.password)
    for config in configs:
        if config.name == GLOBAL_BGP_CONFIG_NAME:
            _add(refs, config.spec.nodeMeshPassword)
    return refs


def referrers(peers: Iterable[BGPPeer], configs: Iterable[BGPConfiguration]
              ) -> dict[tuple[str, str], list[str]]:
    """(Secret name, key) -> the resources whose password references it, as ``BGPPeer
    <name>`` / ``BGPConfiguration default``, sorted (for messages about a missing one)."""
    out: dict[tuple[str, str], set[str]] = {}

    def add(what: str, pw: BGPPassword | None) -> None:
        if pw is not None and pw.secretKeyRef is not None:
            out.setdefault((pw.secretKeyRef.name, pw.secretKeyRef.key), set()).add(what)

    for peer in peers:
        add(f"BGPPeer {peer.name}", peer.spec.password)
    for config in configs:
        if config.name == GLOBAL_BGP_CONFIG_NAME:
            add(f"BGPConfiguration {config.name}", config.spec.nodeMeshPassword)
    return {ref: sorted(whats) for ref, whats in out.items()}


def document(namespace: str, data: Mapping[str, str], wanted: Iterable[str]) -> dict[str, Any]:
    """The stored copy of a Secret: ``data`` (decoded values) reduced to the ``wanted`` keys."""
    keep = set(wanted)
    return {"namespace": namespace,
            "data": {k: v for k, v in sorted(data.items()) if k in keep}}


def parse_document(value: Mapping[str, Any]) -> dict[str, str]:
    """The key -> password map of a stored copy (ValueError naming the field if malformed)."""
    data = value.get("data")
    if not isinstance(data, dict):
        raise ValueError("data: must be a map of key -> password")
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"data.{k}: must be a string")
    return dict(data)
