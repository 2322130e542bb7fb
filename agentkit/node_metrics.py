"""Where tortie-node serves ``/metrics``, ``/healthz``, ``/liveness`` and ``/readiness``: the
default address and the environment variable that sets it, shared by the daemon
(node/main.py, ``--metrics-address``) and its clients (``tortie node status``, ctl/node.py;
the policy agent, which keeps workloads off that port).

The kind DaemonSet sets :data:`METRICS_ADDRESS_ENV` (``0.0.0.0:9091``) in the container's
environment, so ``tortie node status`` run in that container (``kubectl exec``) finds the
port without a flag."""

from __future__ import annotations

from agentkit.http import parse_address

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9099
#: HOST:PORT of tortie-node's metrics and health routes (``--metrics-address``)
METRICS_ADDRESS_ENV = "TORTIE_METRICS_ADDRESS"


def default_address() -> str:
    return f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}"


def resolve(address: str | None, port: int | None = None,
            what: str = "--metrics-address") -> tuple[str, int]:
    """(host, port) tortie-node listens on: ``address`` (``HOST:PORT``) if given, else
    ``port`` (on :data:`DEFAULT_METRICS_HOST`), else the default.  ValueError naming ``what``
    if ``address`` is not ``HOST:PORT``."""
    if address:
        return parse_address(address, what)
    return DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT if port is None else port


def connect_host(host: str) -> str:
    """The address a client on the same host connects to for a listener on ``host`` (a
    wildcard listener is reached on the loopback address)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
