"""Services and EndpointSlices -> the datastore ``k8sservices`` / ``k8sendpointslices`` kinds.

What service advertisement needs (routing/services.py, docs/bgp.md "Service addresses"), and
nothing more (datastore.model_k8s): of a Service its type, cluster / external / load-balancer
IPs and traffic policies; of an EndpointSlice its Service and, per endpoint, the node and
whether it is ready.  Endpoint addresses, ports and most labels are dropped, so an endpoint
moving between pods of one node writes nothing new.
"""

from __future__ import annotations

from datastore.kinds import by_plural
from kubecontrollers.controller import Context
from kubecontrollers.mirror import MirrorController
from kubecontrollers.reflector import Reflector


def make_services(ctx: Context, reflector: Reflector) -> MirrorController:
    return MirrorController(ctx, "services", reflector, by_plural("k8sservices"), "node")


def make_endpoint_slices(ctx: Context, reflector: Reflector) -> MirrorController:
    return MirrorController(ctx, "endpointslices", reflector, by_plural("k8sendpointslices"),
                            "node")
