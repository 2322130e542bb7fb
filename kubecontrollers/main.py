"""tortie-kube-controllers: mirrors what the agents need from the Kubernetes API into etcd.

::

    tortie-kube-controllers [--kubeconfig PATH] [--etcd-endpoints URLS]
                [--etcd-ca-cert-file F] [--etcd-cert-file F] [--etcd-key-file F]
                [--etcd-username U] [--etcd-password P] [--etcd-timeout S] [-c CONFIG]
                [--metrics-address A] [--metrics-port P] [--leak-grace-period D]
                [--reconcile-period D] [--ipam-gc-interval D] [--bgp-secrets-namespace NS]
                [--log-level info]
                [--leader-elect] [--lease-name N] [--lease-namespace NS]
                [--lease-duration D] [--renew-deadline D] [--retry-period D]

* Kubernetes credentials: ``--kubeconfig`` (or ``$KUBECONFIG``), else the in-cluster service
  account when ``$KUBERNETES_SERVICE_HOST`` is set, else ``~/.kube/config``;
* etcd: the same flags, environment variables and config file as tortie-node
  (:mod:`datastore.etcd_config`);
* serves ``/metrics`` (Prometheus text) and ``/healthz`` (JSON; 503 until every resource has
  been listed) on ``A:P`` (default ``0.0.0.0:9094``, Calico's kube-controllers port);
* the durations override the KubeControllersConfiguration (Go syntax: ``90s``, ``15m0s``);
* ``--bgp-secrets-namespace`` (env ``TORTIE_BGP_SECRETS_NAMESPACE``, default ``kube-system``):
  the namespace whose Secrets hold BGP passwords, the one tortie-node runs in;
* ``--leader-elect`` (env ``TORTIE_LEADER_ELECT``; off by default, on in the manifest): the
  controllers run only while this replica holds the Lease ``--lease-namespace``/
  ``--lease-name`` (:mod:`kubecontrollers.election`); a standby serves ``/metrics`` and
  answers ``/healthz`` with 200 ``standby``.  Identity ``<hostname>_<pid>``.  Leadership
  lost (the Lease taken, or not renewed within ``--renew-deadline``): the controllers are
  stopped and the process **exits 1**, so that its Deployment restarts it as a fresh
  candidate -- as upstream kube-controllers and kube-controller-manager do.  Restarting
  the process, rather than the controllers inside it, leaves no cache, work queue or IPAM
  leak timer of the old term behind, and a controller task slow to cancel cannot write on
  next to the new leader;
* SIGTERM / SIGINT: stop the controllers, release the Lease (a standby takes over at its
  next look instead of after the lease duration), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
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
from kubecontrollers import leader
from kubecontrollers.app import KubeControllers
from kubecontrollers.controller import Options
from kubecontrollers.election import LeaderElection
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
    env = os.environ.get
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction,
                   default=_env_bool(p, "TORTIE_LEADER_ELECT"),
                   help="run the controllers only while holding the leader Lease (default "
                        "off) [env TORTIE_LEADER_ELECT]")
    p.add_argument("--lease-name", default=env("TORTIE_LEASE_NAME", leader.DEFAULT_LEASE_NAME),
                   help=f"name of the Lease (default {leader.DEFAULT_LEASE_NAME}) "
                        "[env TORTIE_LEASE_NAME]")
    p.add_argument("--lease-namespace",
                   default=env("TORTIE_LEASE_NAMESPACE", leader.DEFAULT_LEASE_NAMESPACE),
                   help=f"namespace of the Lease (default {leader.DEFAULT_LEASE_NAMESPACE}) "
                        "[env TORTIE_LEASE_NAMESPACE]")
    for flag, var, default, what in (
            ("--lease-duration", "TORTIE_LEASE_DURATION", leader.DEFAULT_LEASE_DURATION,
             "how long a standby waits, after the Lease last changed, before taking it"),
            ("--renew-deadline", "TORTIE_RENEW_DEADLINE", leader.DEFAULT_RENEW_DEADLINE,
             "how long the leader keeps leading without a successful renewal"),
            ("--retry-period", "TORTIE_RETRY_PERIOD", leader.DEFAULT_RETRY_PERIOD,
             "period of the looks at the Lease (renewals, acquisition attempts)")):
        p.add_argument(flag, default=env(var, f"{default:g}s"),
                       help=f"{what} (default {default:g}s) [env {var}]")
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
    try:
        args.timing = leader.Timing(
            lease_duration=_duration(args.lease_duration, "--lease-duration"),
            renew_deadline=_duration(args.renew_deadline, "--renew-deadline"),
            retry_period=_duration(args.retry_period, "--retry-period"))
        args.timing.validate()
    except ValueError as e:
        p.error(str(e))
    if not args.lease_name or not args.lease_namespace:
        p.error("--lease-name and --lease-namespace must not be empty")
    if not 0 <= args.metrics_port <= 65535:
        p.error("--metrics-port must be 0-65535")
    return args


def _env_bool(p: argparse.ArgumentParser, var: str) -> bool:
    text = os.environ.get(var, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    p.error(f"{var} must be true or false, got {text!r}")


def _duration(text: str, flag: str) -> float:
    try:
        return go_duration(text, 0)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None


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
    election = (LeaderElection(api, name=args.lease_name, namespace=args.lease_namespace,
                               identity=leader.identity(socket.gethostname(), os.getpid()),
                               timing=args.timing, metrics=metrics)
                if args.leader_elect else None)

    def metrics_route() -> http.Response:
        return 200, CONTENT_TYPE, render(metrics.registry)

    def health_route() -> http.Response:
        if election is not None and not election.leading.is_set():
            # a standby is healthy: it waits for the Lease, its controllers do not run
            return 200, "application/json", json.dumps(
                {"status": "standby", "synced": False, "leader": election.health()}) + "\n"
        h: dict[str, Any] = app.health()
        h["status"] = "ok" if h["synced"] else "starting"
        if election is not None:
            h["leader"] = election.health()
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
        "etcd": ",".join(etcd.endpoints), "kubernetes": api.configuration.host,
        "leaderElect": election is not None}})
    code = 0
    stopper = asyncio.create_task(stop.wait())
    electing: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    try:
        if election is not None:
            electing = asyncio.create_task(election.run(), name="kc-leader-election")
            leading = asyncio.create_task(election.leading.wait())
            await asyncio.wait({leading, stopper, electing}, return_when=asyncio.FIRST_COMPLETED)
            leading.cancel()
            if not election.leading.is_set():  # stopped, or the election itself failed
                code = _election_ended(electing)
                return code
        task = asyncio.create_task(app.run(), name="kube-controllers")
        waits = {task, stopper} | ({electing} if electing is not None else set())
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if electing is not None and electing.done():
            code = _election_ended(electing) or 1
            log.error("leadership lost: stopping the controllers and exiting, to be restarted "
                      "as a new candidate", extra={"fields": {
                          "identity": election.identity if election else "",
                          "reason": election.lost_reason if election else ""}})
        else:
            log.info("shutting down")
    finally:
        for t in (task, electing, stopper):
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in (task, electing, stopper) if t is not None),
                             return_exceptions=True)
        # the controllers are stopped: only now may another replica start its own
        if election is not None and code == 0:
            await election.release()
        server.close()
        await api.close()
        await store.close()
        log.info("tortie-kube-controllers stopped", extra={"fields": {"exit": code}})
    return code


def _election_ended(electing: asyncio.Task[None]) -> int:
    """0 while the election is still running (a stop was asked for), else 1 (logged)."""
    if not electing.done():
        return 0
    if not electing.cancelled() and electing.exception() is not None:
        log.error("leader election failed", exc_info=electing.exception())
    return 1


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
