"""The etcd key layout: the one place that says where everything lives.

Layout (all values are compact JSON)::

    /tortie/v3/resources/<plural>/<name>               cluster-scoped resources
    /tortie/v3/resources/<plural>/<namespace>/<name>   namespaced resources
    /tortie/v3/ipam/...                                IPAM state (blocks, affinities, handles)
    /tortie/secrets/v3/bgp/<secret name>               BGP passwords (see datastore.bgp_secrets)

``<plural>`` is the lower-case plural of the kind (``ippools``, ``networkpolicies``,
``k8snetworkpolicies`` for the Kubernetes kind, ``k8sservices`` / ``k8sendpointslices`` for the
Services and EndpointSlices tortie-kube-controllers mirrors, ...), see ``datastore.kinds``.
A resource's ``metadata.resourceVersion`` is the etcd mod revision of its key.
"""

from __future__ import annotations

ROOT = "/tortie/v3/"
RESOURCES = ROOT + "resources/"
IPAM = ROOT + "ipam/"

#: Secret material, deliberately outside ``ROOT``: etcd RBAC grants by key prefix, so a role
#: may read ``/tortie/v3/`` (every resource) without reading this; only tortie-kube-controllers
#: (read-write) and tortie-node (read) should be granted ``SECRETS``.
SECRETS = "/tortie/secrets/v3/"
BGP_SECRETS = SECRETS + "bgp/"


def resource_prefix(plural: str, namespace: str | None = None) -> str:
    """Prefix under which every resource of a kind (optionally in one namespace) lives."""
    if namespace:
        return f"{RESOURCES}{plural}/{namespace}/"
    return f"{RESOURCES}{plural}/"


def resource_key(plural: str, name: str, namespace: str | None = None) -> str:
    """Key of one resource."""
    return resource_prefix(plural, namespace) + name


def parse_resource_key(key: str) -> tuple[str, str | None, str]:
    """Split a resource key into (plural, namespace or None, name)."""
    if not key.startswith(RESOURCES):
        raise ValueError(f"not a resource key: {key!r}")
    parts = key[len(RESOURCES):].split("/")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"not a resource key: {key!r}")
