"""tortie-kube-controllers: mirrors what the agents need from the Kubernetes API into etcd.

::

    tortie-kube-controllers [--kubeconfig PATH] [--etcd-endpoints URLS]
                [--etcd-ca-cert-file F] [--etcd-cert-file F] [--etcd-key-file F]
                [--etcd-username U] [--etcd-password P] [--etcd-timeout S] [-c CONFIG]
                [--metrics-address A] [--metrics-port P] [--leak-grace-period D]
                [--reconcile-period D] [--ipam-gc-interval D] [--bgp-secrets-namespace NS]
                [--log-level info]

* Kubernetes credentials: ``--kubeconfig`` (or ``$KUBECONFIG``), else the in-cluster service
  account when ``$KUBERNETES_SERVICE_HOST`` is set, else ``~/.kube/config``;
* etcd: the same flags, environment variables and config file as tortie-node
  (:mod:`datastore.etcd_config`);
* serves ``/metrics`` (Prometheus text) and ``/healthz`` (JSON; 503 until every resource has
  been listed) on ``A:P`` (default ``0.0.0.0:9094``, Calico's kube-controllers port);
* the durations override the KubeControllersConfiguration (Go syntax: ``90s``, ``15m0s``);
* ``--bgp-secrets-namespace`` (env ``TORTIE_BGP_SECRETS_NAMESPACE``, default ``kube-system``):
  the namespace whose Secrets hold BGP passwords, the one tortie-node runs in;
* SIGTERM / SIGINT: stop, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from kubernetes_asyncio import client, config

from agentkit import http
from agentkit.logs import setup_logging
from agentkit.metrics import CONTENT_TYPE, render
from datastore.bgp_secrets import DEFAULT_SECRETS_NAMESPACE
from datastore.etcd_config import ConfigError, EtcdConfig, add_etcd_arguments, from_arguments
from datastore.store import Store
from kubecontrollers.app import KubeControllers
from kubecontrollers.controller import Options
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.settings import go_duration

log = logging.getLogger("tortie.kc")

DEFAULT_METRICS_PORT = 9094
ENV_SECRETS_NAMESPACE = "TORTIE_BGP_SECRETS_NAMESPACE"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tortie-kube-controllers",
                                description="Mirror the Kubernetes API into Tortie's datastore")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster service account, else "
                        "~/.kube/config) [env KUBECONFIG]")
    add_etcd_arguments(p)
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="address of /metrics and /healthz (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"port of /metrics and /healthz (default {DEFAULT_METRICS_PORT}; "
                        "0: any free port)")
    p.add_argument("--leak-grace-period", help="IPAM leak grace period (overrides the KCC's "
                   "controllers.node.leakGracePeriod; 0 turns the GC of live nodes' leaks "
                   "off; removed nodes are cleaned up regardless)")
    p.add_argument("--reconcile-period", help="period of full passes (overrides the KCC's "
                   "reconcilerPeriod)")
    p.add_argument("--ipam-gc-interval", default="1m", help="period of IPAM GC passes "
                   "(default 1m)")
    p.add_argument("--bgp-secrets-namespace",
                   default=os.environ.get(ENV_SECRETS_NAMESPACE) or DEFAULT_SECRETS_NAMESPACE,
                   help="namespace of the Secrets that BGPPeer / BGPConfiguration passwords "
                        f"name: where tortie-node runs (default {DEFAULT_SECRETS_NAMESPACE}) "
                        f"[env {ENV_SECRETS_NAMESPACE}]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    try:
        args.options = Options(
            period=go_duration(args.reconcile_period, 0) or None,
            leak_grace=(go_duration(args.leak_grace_period, 0)
                        if args.leak_grace_period is not None else None),
            ipam_gc_interval=go_duration(args.ipam_gc_interval, 60) or 60,
            secrets_namespace=args.bgp_secrets_namespace)
    except ValueError as e:
        p.error(str(e))
    if not 0 <= args.metrics_port <= 65535:
        p.error("--metrics-port must be 0-65535")
    return args


async def kube_client(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        return await config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        conf = client.Configuration()
        config.load_incluster_config(client_configuration=conf)
        return client.ApiClient(conf)
    return await config.new_client_from_config()


async def run(args: argparse.Namespace, etcd: EtcdConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        api = await kube_client(args.kubeconfig)
    except Exception as e:
        log.error("cannot load Kubernetes credentials", extra={"fields": {"error": str(e)}})
        return 2
    store = Store(etcd)
    metrics = KubeMetrics()
    app = KubeControllers(store, api, options=args.options, metrics=metrics)

    def metrics_route() -> http.Response:
        return 200, CONTENT_TYPE, render(metrics.registry)

    def health_route() -> http.Response:
        h: dict[str, Any] = app.health()
        h["status"] = "ok" if h["synced"] else "starting"
        return (200 if h["synced"] else 503), "application/json", json.dumps(h) + "\n"

    routes: dict[str, http.Route] = {"/metrics": metrics_route, "/healthz": health_route,
                                     "/livez": health_route, "/readyz": health_route}
    try:
        server = await http.serve(routes, args.metrics_address, args.metrics_port)
    except OSError as e:
        log.error("cannot serve metrics", extra={"fields": {"port": args.metrics_port,
                                                            "error": str(e)}})
        await api.close()
        await store.close()
        return 1
    port = http.bound_port(server)
    log.info("tortie-kube-controllers started", extra={"fields": {
        "metrics": f"{args.metrics_address}:{port}", "pid": os.getpid(),
        "etcd": ",".join(etcd.endpoints), "kubernetes": api.configuration.host}})
    task = asyncio.create_task(app.run(), name="kube-controllers")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    for t in (task, stopper):
        t.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    server.close()
    await api.close()
    await store.close()
    log.info("tortie-kube-controllers stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        etcd = from_arguments(args)
    except ConfigError as e:
        log.error("invalid etcd configuration", extra={"fields": {"error": str(e)}})
        return 2
    return asyncio.run(run(args, etcd))


if __name__ == "__main__":
    sys.exit(main())
