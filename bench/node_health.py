"""A lab node's tortie-node ``/healthz``, fetched from inside the node's namespace (the lab
runs tortie-node on its default metrics address, ``agentkit.node_metrics``)."""

from __future__ import annotations

import http.client
import json
from typing import Any

from agentkit.node_metrics import DEFAULT_METRICS_PORT
from routing.kernel import call_in_netns


def node_healthz(ns: str) -> dict[str, Any]:
    """The /healthz report of the tortie-node in namespace ``ns``."""
    def get() -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", DEFAULT_METRICS_PORT, timeout=5)
        try:
            conn.request("GET", "/healthz")
            body: dict[str, Any] = json.loads(conn.getresponse().read())
            return body
        finally:
            conn.close()
    return call_in_netns(ns, get)
