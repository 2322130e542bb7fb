"""networking.k8s.io/v1 NetworkPolicies -> the datastore ``k8snetworkpolicies`` kind.

Validated as strictly as the API server does (:class:`datastore.model_k8s.K8sNetworkPolicy`);
the policy agent translates them into Calico policy (``knp.default.<name>``).
"""

from __future__ import annotations

from datastore.kinds import by_plural
from kubecontrollers.controller import Context
from kubecontrollers.mirror import MirrorController
from kubecontrollers.reflector import Reflector


def make(ctx: Context, reflector: Reflector) -> MirrorController:
    return MirrorController(ctx, "networkpolicies", reflector, by_plural("k8snetworkpolicies"),
                            "policy")
