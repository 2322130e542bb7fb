"""What the KubeControllersConfiguration says, in numbers: Go durations as seconds, and
whether default host endpoints are wanted."""

from __future__ import annotations

import re
from typing import Any

from datastore.model_config import KubeControllersConfiguration

DEFAULT_LEAK_GRACE = 900.0
DEFAULT_RECONCILER_PERIOD = 300.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def go_duration(text: str | None, default: float) -> float:
    """Seconds of a Go duration string (``15m0s``, ``90s``, ``0``); ``default`` if unset."""
    if text is None or text == "":
        return default
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for m in _PART.finditer(text):
        if m.start() != pos:
            raise ValueError(f"{text!r} is not a duration")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration")
    return total


def leak_grace(kcc: KubeControllersConfiguration) -> float:
    node = kcc.spec.controllers.node if kcc.spec.controllers else None
    return go_duration(node.leakGracePeriod if node else None, DEFAULT_LEAK_GRACE)


def reconciler_period(kcc: KubeControllersConfiguration, controller: str) -> float:
    c = kcc.spec.controllers
    sub: Any = getattr(c, controller, None) if c else None
    value = sub.reconcilerPeriod if sub is not None else None
    return go_duration(value, DEFAULT_RECONCILER_PERIOD) or DEFAULT_RECONCILER_PERIOD


def default_host_endpoints(kcc: KubeControllersConfiguration) -> bool:
    """autoCreate Enabled and createDefaultHostEndpoint not Disabled: one
    ``<node>-auto-hep`` per node."""
    if not kcc.host_endpoint_auto_create():
        return False
    node = kcc.spec.controllers.node if kcc.spec.controllers else None
    hep = node.hostEndpoint if node else None
    return not (hep and hep.createDefaultHostEndpoint == "Disabled")
