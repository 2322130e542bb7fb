"""Prometheus metrics through ``prometheus_client``: one :class:`CollectorRegistry` per daemon
(never the library's global one: tests run several daemons in one process).

Metrics are made with the library's own types, each given ``registry=``::

    requests = Counter("tortie_x_total", "...", ("kind",), registry=registry)
    requests.labels(kind="full").inc()
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["CONTENT_TYPE", "DEFAULT_BUCKETS", "new_registry", "render", "value"]

# counters and histograms without the extra ``*_created`` series (the library's switch is
# process-wide): /metrics shows only the series each metric names
prometheus_client.disable_created_metrics()

#: the text exposition format 0.0.4: what ``generate_latest`` writes for names and labels of
#: plain ASCII, as all of Tortie's are (the library's newest type, 1.0.0, only adds escaping)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: histogram buckets (seconds) of Tortie's latency metrics
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                      5.0, 10.0, 30.0, 60.0)


def new_registry() -> CollectorRegistry:
    """A registry of one daemon's metrics."""
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> str:
    """``registry`` in the text exposition format (what ``/metrics`` serves)."""
    return generate_latest(registry).decode()


def value(metric: Counter | Gauge, **labels: str) -> float:
    """The current value of one series of a counter or gauge (by its labels; 0 while the
    series does not exist yet): what tests and health reports read."""
    for family in metric.collect():
        for s in family.samples:
            if s.labels == labels and s.name in (family.name, family.name + "_total"):
                return float(s.value)
    return 0.0
