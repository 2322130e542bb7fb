"""Namespaces -> the datastore ``namespaces`` kind, as they are (labels, annotations).

The policy agent derives the ``kns.<namespace>`` profile (``pcns.<label>`` labels) from it,
and the CNI handler reads the ``cni.projectcalico.org/ipv4pools`` / ``ipv6pools``
annotations from it to choose a pod's pool.
"""

from __future__ import annotations

from datastore.kinds import by_plural
from kubecontrollers.controller import Context
from kubecontrollers.mirror import MirrorController
from kubecontrollers.reflector import Reflector


def make(ctx: Context, reflector: Reflector) -> MirrorController:
    return MirrorController(ctx, "namespaces", reflector, by_plural("namespaces"), "namespace")
