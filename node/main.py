"""tortie-node: the per-node daemon (asyncio).

::

    tortie-node --node-name N [--etcd-endpoints URLS] [--etcd-ca-cert-file F]
                [--etcd-cert-file F] [--etcd-key-file F] [--etcd-username U]
                [--etcd-password P] [--etcd-timeout S] [-c CONFIG]
                [--socket PATH] [--metrics-address HOST:PORT | --metrics-port P]
                [--interface-prefix cali] [--ip autodetect|none|A.B.C.D/NN]
                [--ip-autodetection-method METHOD] [--ip6 none|autodetect|X::Y/NN]
                [--ip6-autodetection-method METHOD] [--liveness-timeout S]
                [--cni-etcd-timeout S] [--cni-request-timeout S] [--log-level info]

* at start resolves the node's address once and finds the underlay MTU (the MTU of the
  interface carrying that address), from which pods' MTUs derive (datastore/mtu.py);
* registers (and keeps up to date) its calico ``Node`` resource: ``spec.bgp.ipv4Address``
  per ``--ip`` / ``IP`` and ``--ip-autodetection-method`` / ``IP_AUTODETECTION_METHOD``
  (Calico's settings, see node/autodetect.py: ``none`` keeps the address set by hand),
  and ``spec.bgp.ipv6Address`` per ``--ip6`` / ``IP6`` (default ``none``) and
  ``--ip6-autodetection-method`` / ``IP6_AUTODETECTION_METHOD``;
  ``spec.orchRefs`` names the k8s node.  The first registration writes the address
  resolved at start, unless the method needs the Node document (``kubernetes-internal-ip``
  before the InternalIP is known); every later one (each ``RESYNC_INTERVAL``, sooner while
  the address is pending, after etcd errors) resolves it again, so a moved address is
  followed;
* serves the CNI socket (mode 0600; a stale socket file is replaced, a live one is an
  error): one JSON request line per connection, answered by :class:`cni.handler.CNIHandler`;
  requests run concurrently, serialised per pod; where each request's time went is
  measured per step (:data:`cni.handler.STEPS`): the histogram
  ``tortie_cni_step_duration_seconds{command,step}``, ``<step>_ms`` fields on the request's
  log line at ``--log-level debug``, and a ``timings`` object beside the answer when the
  request asks for it (``"profile": true``, sent by the plugin run with
  ``TORTIE_CNI_PROFILE`` set; the plugin writes it to stderr, never into the CNI result);
* serves ``/metrics`` (Prometheus text), ``/healthz`` (a report), ``/liveness`` and
  ``/readiness`` (200 or 503 with a JSON body, see agentkit/health.py) on
  ``--metrics-address`` (default ``127.0.0.1:9099``, agentkit/node_metrics.py; port 0 picks a
  free port, which is logged); workloads are kept off that port (the policy agent's protected
  host ports);
* logs as ``key=value`` lines; survives etcd outages (requests then fail with code 11,
  STATUS with 50; the Node resource is written again when etcd is back);
* the CNI handler has its own etcd connection whose requests time out after
  ``--cni-etcd-timeout`` (1.5 s), below ``--etcd-timeout`` (the agents'), and every
  ADD/DEL/CHECK/STATUS answers within ``--cni-request-timeout`` (1.8 s): with etcd frozen a
  CNI request gets its code 11 (STATUS 50) within 2 s, not after the agents' timeout;
* SIGTERM / SIGINT: stop accepting, finish the requests in flight, remove the socket, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from agentkit import http, node_metrics
from agentkit.agent import Agent, NodeContext, supervise
from agentkit.backoff import Backoff
from agentkit.health import DEFAULT_LIVENESS_TIMEOUT, Monitor
from agentkit.logs import setup_logging
from agentkit.metrics import CONTENT_TYPE, DEFAULT_BUCKETS, new_registry, render, value
from agentkit.netns import read_sysctl
from agentkit.node_metrics import METRICS_ADDRESS_ENV
from cni.dataplane import Dataplane
from cni.handler import DEFAULT_REQUEST_TIMEOUT, CNIHandler, RequestInfo, response_summary
from cni.spec import ERR_DECODE, error_dict
from datastore.backend import KVStore
from datastore.etcd_config import ConfigError, EtcdConfig, add_etcd_arguments, from_arguments
from datastore.kinds import by_plural
from datastore.model_network import Node
from datastore.resources import ResourceConflict, ResourceExists, Resources
from datastore.store import DatastoreError, NotFound, Store
from node.autodetect import (
    AddressResolver,
    AutodetectError,
    NodeAddress,
    Own,
    parse_ip,
    parse_method,
)
from policyagent import agent as policy_agent
from routing import agent as routing_agent
from routing.desired import IPIP_DEVICE, VXLAN_DEVICE, VXLAN_DEVICE_V6

log = logging.getLogger("tortie.node")

DEFAULT_SOCKET = "/var/run/tortie/cni.sock"
#: Seconds one etcd request of the CNI path may take: a runtime's ADD / DEL gets its answer
#: (code 11 when etcd does not answer) within 2 s whatever the agents' --etcd-timeout.
DEFAULT_CNI_ETCD_TIMEOUT = 1.5
MAX_REQUEST = 16 * 1024 * 1024
READ_TIMEOUT = 30.0
SHUTDOWN_GRACE = 30.0
RESYNC_INTERVAL = 60.0
PENDING_RETRY = 5.0  # the node address waits for something (the Kubernetes InternalIP)
_NODE = by_plural("nodes")
#: the tunnel devices the routing agent makes: never a node address
TUNNEL_DEVICES = (VXLAN_DEVICE, VXLAN_DEVICE_V6, IPIP_DEVICE)
#: The agents tortie-node runs beside the CNI handler (see agentkit/agent.py), in start order.
AGENT_MODULES = (policy_agent, routing_agent)


# --- arguments ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tortie-node", description="Tortie's per-node daemon")
    p.add_argument("--node-name", default=os.environ.get("TORTIE_NODE_NAME")
                   or socket.gethostname(), help="this node's name (default: hostname)")
    add_etcd_arguments(p)
    p.add_argument("--socket", default=os.environ.get("TORTIE_CNI_SOCKET") or DEFAULT_SOCKET,
                   help=f"CNI socket path (default {DEFAULT_SOCKET})")
    p.add_argument("--metrics-address", default=os.environ.get(METRICS_ADDRESS_ENV),
                   help="HOST:PORT of /metrics, /healthz, /liveness and /readiness (default "
                        f"{node_metrics.default_address()}) [env {METRICS_ADDRESS_ENV}]")
    p.add_argument("--metrics-port", type=int,
                   help="port of those routes on 127.0.0.1 (0: any free port); the same as "
                        "--metrics-address 127.0.0.1:P")
    p.add_argument("--liveness-timeout", type=float, default=DEFAULT_LIVENESS_TIMEOUT,
                   help="seconds an agent's loop may go without progress before /liveness "
                        f"fails (default {DEFAULT_LIVENESS_TIMEOUT:g})")
    p.add_argument("--ip", default=os.environ.get("IP"),
                   help="this node's IPv4 address: autodetect (default), none (keep the Node "
                        "resource's), or A.B.C.D/NN [env IP]")
    p.add_argument("--ip-autodetection-method",
                   default=os.environ.get("IP_AUTODETECTION_METHOD"),
                   help="first-found (default), interface=REGEX, skip-interface=REGEX, "
                        "can-reach=DEST, cidr=CIDR[,CIDR], kubernetes-internal-ip "
                        "[env IP_AUTODETECTION_METHOD]")
    p.add_argument("--ip6", default=os.environ.get("IP6"),
                   help="this node's IPv6 address: none (default: keep the Node resource's, "
                        "if any), autodetect, or X:X::X/NN [env IP6]")
    p.add_argument("--ip6-autodetection-method",
                   default=os.environ.get("IP6_AUTODETECTION_METHOD"),
                   help="as --ip-autodetection-method, for --ip6 autodetect "
                        "[env IP6_AUTODETECTION_METHOD]")
    p.add_argument("--interface-prefix", default="cali",
                   help="prefix of the host side veth names (default cali)")
    p.add_argument("--cni-etcd-timeout", type=float, default=DEFAULT_CNI_ETCD_TIMEOUT,
                   help="seconds one etcd request of a CNI request may take (default "
                        f"{DEFAULT_CNI_ETCD_TIMEOUT:g}; at most --etcd-timeout)")
    p.add_argument("--cni-request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT,
                   help="seconds an ADD/DEL/CHECK/STATUS may take before its answer is code 11 "
                        f"(default {DEFAULT_REQUEST_TIMEOUT:g}; 0: no deadline)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    for module in AGENT_MODULES:
        module.add_arguments(p)
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name is required")
    if args.metrics_address and args.metrics_port is not None:
        p.error("give --metrics-address or --metrics-port, not both")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        p.error("--metrics-port must be 0-65535")
    try:
        args.metrics_host, args.metrics_port = node_metrics.resolve(
            args.metrics_address, args.metrics_port)
        args.ip_setting = parse_ip(args.ip)
        args.ip_method = parse_method(args.ip_autodetection_method)
        args.ip6_setting = parse_ip(args.ip6, version=6)
        args.ip6_method = parse_method(args.ip6_autodetection_method, version=6)
    except (ValueError, AutodetectError) as e:
        p.error(str(e))
    if not 0 < args.liveness_timeout <= 3600:
        p.error("--liveness-timeout must be above 0 and at most 3600 seconds")
    if not 1 <= len(args.interface_prefix) <= 11:
        p.error("--interface-prefix must be 1-11 characters")
    if not 0 <= args.cni_request_timeout <= 3600:
        p.error("--cni-request-timeout must be 0-3600 seconds")
    if not 0 < args.cni_etcd_timeout <= 3600:
        p.error("--cni-etcd-timeout must be above 0 and at most 3600 seconds")
    return args


# --- the daemon ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The node address resolved already for a registration (``address`` None: leave the
    Node's as it is)."""

    address: str | None


class NodeDaemon:
    """tortie-node.  ``store``, ``address`` and ``dataplane`` replace etcd (a
    :class:`datastore.memory.MemoryStore`, also for the CNI path), the node address
    resolver and the kernel's pod interfaces (tests' twins); by default they are made from
    ``config`` and ``args``."""

    def __init__(self, args: argparse.Namespace, config: EtcdConfig, *,
                 store: KVStore | None = None, address: AddressResolver | None = None,
                 dataplane: Dataplane | None = None) -> None:
        self.args = args
        self.config = config
        self.node = args.node_name
        self.socket_path = Path(args.socket)
        self.store: KVStore = Store(config) if store is None else store
        self.resources = Resources(self.store)
        # the CNI path's own connection and deadline (see the module docstring)
        cni_timeout = min(config.timeout, args.cni_etcd_timeout)
        self.cni_store: KVStore = (
            self.store if store is not None or cni_timeout == config.timeout
            else Store(dataclasses.replace(config, timeout=cni_timeout)))
        self.handler = CNIHandler(self.cni_store, self.node,
                                  interface_prefix=args.interface_prefix,
                                  request_timeout=args.cni_request_timeout or None,
                                  dataplane=dataplane)
        self.metrics = m = new_registry()
        self.m_requests = Counter(
            "tortie_cni_requests_total", "CNI requests served, by command and result",
            ("command", "result"), registry=m)
        self.m_errors = Counter(
            "tortie_cni_errors_total", "CNI requests that failed, by command and CNI error code",
            ("command", "code"), registry=m)
        self.m_duration = Histogram(
            "tortie_cni_request_duration_seconds", "Time to serve a CNI request", ("command",),
            buckets=DEFAULT_BUCKETS, registry=m)
        self.m_step = Histogram(
            "tortie_cni_step_duration_seconds",
            "Time a CNI request spent in each step (cni.handler.STEPS), by command and step",
            ("command", "step"), buckets=DEFAULT_BUCKETS, registry=m)
        self.m_inflight = Gauge(
            "tortie_cni_requests_in_flight", "CNI requests being served now", registry=m)
        self.m_etcd_up = Gauge(
            "tortie_node_etcd_up", "1 if the last datastore operation of the node succeeded",
            registry=m)
        self.m_registered = Gauge(
            "tortie_node_registered", "1 once the Node resource has been written", registry=m)
        self.m_start = Gauge(
            "tortie_node_start_time_seconds", "Start time of tortie-node (unix time)",
            registry=m)
        self.m_start.set(time.time())
        self._stop = asyncio.Event()
        self._conns: set[asyncio.Task[None]] = set()
        self._cni_server: asyncio.Server | None = None
        self._http_server: asyncio.Server | None = None
        self.metrics_port = 0
        self.address: AddressResolver = address if address is not None else NodeAddress(
            args.ip_setting, args.ip_method,
            Own(args.interface_prefix, TUNNEL_DEVICES))
        self.address6 = NodeAddress(
            args.ip6_setting, args.ip6_method,
            Own(args.interface_prefix, TUNNEL_DEVICES), version=6)
        self._resync = asyncio.Event()
        ctx = NodeContext(node=self.node, store=self.store, resources=self.resources,
                          metrics=self.metrics, args=args)
        self.agents: list[Agent] = [a for a in (m.make_agent(ctx) for m in AGENT_MODULES)
                                    if a is not None]
        for agent in self.agents:
            ready_hook = getattr(agent, "endpoint_ready", None)
            if ready_hook is not None:
                self.handler.on_endpoint_ready = ready_hook
                self.handler.on_endpoint_coming = getattr(agent, "endpoint_coming", None)
        self.health = Monitor(self.agents, self.store.revision,
                              liveness_timeout=args.liveness_timeout)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._check_forwarding()
        first = await self._resolve_at_start()
        try:
            await self._start_cni_server()
        except OSError as e:
            log.error("cannot serve the CNI socket",
                      extra={"fields": {"socket": str(self.socket_path), "error": str(e)}})
            await self._close_stores()
            return 1
        routes: dict[str, http.Route] = {"/metrics": self._metrics_route}
        routes.update(dict.fromkeys(("/healthz", "/health", "/livez"), self._health_route))
        routes["/liveness"] = self.health.liveness_route
        routes["/readiness"] = self.health.readiness_route
        host = self.args.metrics_host
        try:
            self._http_server = await http.serve(routes, host, self.args.metrics_port)
        except OSError as e:
            log.error("cannot serve metrics", extra={"fields": {
                "address": f"{host}:{self.args.metrics_port}", "error": str(e)}})
            await self._shutdown([])
            return 1
        self.metrics_port = http.bound_port(self._http_server)
        log.info("tortie-node started", extra={"fields": {
            "node": self.node, "socket": str(self.socket_path),
            "metrics": f"{host}:{self.metrics_port}", "pid": os.getpid(),
            "etcd": ",".join(self.config.endpoints)}})
        background = [asyncio.create_task(self._registrar(first), name="registrar"),
                      asyncio.create_task(self.health.run(), name="health")]
        background += [asyncio.create_task(
            supervise(a, record=self.health.record(a.name)), name=a.name)
            for a in self.agents]
        await self._stop.wait()
        log.info("shutting down", extra={"fields": {"in_flight": len(self._conns)}})
        await self._shutdown(background)
        log.info("tortie-node stopped")
        return 0

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        if self._cni_server is not None:
            self._cni_server.close()
        if self._conns:
            _, pending = await asyncio.wait(set(self._conns), timeout=SHUTDOWN_GRACE)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.handler.drain(SHUTDOWN_GRACE)  # requests past their deadline roll back
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for agent in self.agents:
            try:
                await agent.close()
            except Exception:
                log.exception("agent failed to close", extra={"fields": {"agent": agent.name}})
        if self._http_server is not None:
            self._http_server.close()
        with contextlib.suppress(FileNotFoundError):
            if self._cni_server is not None:
                self.socket_path.unlink()
        await self._close_stores()

    async def _close_stores(self) -> None:
        if self.cni_store is not self.store:
            await self.cni_store.close()
        await self.store.close()

    async def _resolve_at_start(self) -> Resolved | None:
        """Resolve the node's address (once) and detect the underlay MTU pods' MTUs derive
        from: that of the interface carrying the address (datastore/mtu.py).  The address,
        for the first registration; None when the method waits for the Node document
        (then the registrar resolves it with the document)."""
        address = await self._resolve(None)
        mtu = await self.handler.detect_underlay(address)
        log.info("underlay MTU detected", extra={"fields": {
            "node": self.node, "address": address or "-", "mtu": mtu}})
        return None if self.address.pending else Resolved(address)

    async def _resolve(self, node_doc: dict[str, Any] | None) -> str | None:
        """The node's address now (the resolver reads the kernel: in a thread)."""
        return await asyncio.to_thread(self.address.resolve, node_doc)

    async def _address(self, resolved: Resolved | None,
                       node_doc: dict[str, Any] | None) -> str | None:
        """``resolved``'s address when given, else the address resolved now."""
        return resolved.address if resolved is not None else await self._resolve(node_doc)

    def _check_forwarding(self) -> None:
        if read_sysctl("net/ipv4/ip_forward") == "0":
            log.warning("net.ipv4.ip_forward is 0 in this namespace: pods will reach this "
                        "host but not each other or anything beyond it")

    # --- the CNI socket ---------------------------------------------------------------------

    async def _start_cni_server(self) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket")
            if await self._socket_alive(path):
                raise OSError(f"another tortie-node is serving {path}")
            log.info("removing stale socket", extra={"fields": {"socket": str(path)}})
            path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: root only
        try:
            self._cni_server = await asyncio.start_unix_server(
                self._accept, path=str(path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    @staticmethod
    async def _socket_alive(path: Path) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self._serve_cni(reader, writer)
        finally:
            if task is not None:
                self._conns.discard(task)

    async def _serve_cni(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        info = RequestInfo()
        request: Any = None
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError,
                    asyncio.IncompleteReadError, ConnectionError) as e:
                log.warning("bad CNI connection", extra={"fields": {"error": repr(e)}})
                return
            if not line.strip():
                return
            self.m_inflight.inc()
            try:
                try:
                    request = json.loads(line, parse_constant=_not_json)
                except (ValueError, RecursionError) as e:  # also nested too deeply
                    response: dict[str, Any] = {"ok": False, "error": error_dict(
                        ERR_DECODE, "cannot decode the request", str(e)[:200])}
                    info.code = ERR_DECODE
                else:
                    response = await self.handler.handle(request, info)
            finally:
                self.m_inflight.dec()
            self._account(info, response)
            if isinstance(request, dict) and request.get("profile") is True:
                # asked for by the plugin (TORTIE_CNI_PROFILE): where the time went, in ms;
                # the plugin writes it to stderr, never into the CNI result
                response["timings"] = {**{k: round(v * 1000, 3) for k, v in info.steps.items()},
                                       "total": round(info.duration * 1000, 3)}
            writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
            try:
                await writer.drain()
            except ConnectionError:
                log.warning("the plugin went away before the answer",
                            extra={"fields": {"cmd": info.command, "container": info.container}})
        except Exception:
            log.exception("failure serving a CNI connection")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _account(self, info: RequestInfo, response: dict[str, Any]) -> None:
        command = info.command if info.command in (
            "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION") else "invalid"
        self.m_requests.labels(command=command, result=info.result).inc()
        self.m_duration.labels(command=command).observe(info.duration)
        for step, seconds in info.steps.items():
            self.m_step.labels(command=command, step=step).observe(seconds)
        if info.code is not None:
            self.m_errors.labels(command=command, code=str(info.code)).inc()
        if info.etcd_ok is not None:
            self.m_etcd_up.set(1 if info.etcd_ok else 0)
        fields: dict[str, Any] = {"cmd": info.command, "container": info.container[:12]}
        if info.pod:
            fields["pod"] = info.pod
        if info.ips:
            fields["ip"] = ",".join(info.ips)
        fields["result"] = response_summary(response)
        fields["ms"] = f"{info.duration * 1000:.1f}"
        level = logging.INFO if info.code is None else logging.WARNING
        if log.isEnabledFor(logging.DEBUG):
            fields.update({f"{k}_ms": f"{v * 1000:.1f}" for k, v in info.steps.items()})
        log.log(level, "cni request", extra={"fields": fields})

    # --- HTTP: /metrics, /healthz -----------------------------------------------------------

    def _metrics_route(self) -> http.Response:
        return 200, CONTENT_TYPE, render(self.metrics)

    def _health_route(self) -> http.Response:
        body = json.dumps({
            "status": "ok",
            "node": self.node,
            "socket": str(self.socket_path),
            "etcd": "up" if value(self.m_etcd_up) else "down",
            "registered": bool(value(self.m_registered)),
            "agents": {a.name: a.health() for a in self.agents},
        }) + "\n"
        return 200, "application/json", body

    # --- the Node resource ------------------------------------------------------------------

    async def _registrar(self, first: Resolved | None = None) -> None:
        """Write the Node resource, the first time with ``first`` (the address resolved at
        start) when given; again every RESYNC_INTERVAL and after etcd errors, each time
        resolving the address anew."""
        backoff = Backoff()
        while True:
            resolved, first = first, None
            try:
                await self.register_node(resolved)
                self.m_etcd_up.set(1)
                self.m_registered.set(1)
                backoff.reset()
                wait = (PENDING_RETRY if self.address.pending or self.address6.pending
                        else RESYNC_INTERVAL)
            except (DatastoreError, OSError) as e:
                self.m_etcd_up.set(0)
                log.warning("cannot register the Node resource; retrying",
                            extra={"fields": {"node": self.node, "error": str(e),
                                              "retry_s": f"{backoff.delay:g}"}})
                wait = backoff.next()
            except Exception:
                log.exception("unexpected failure registering the Node resource")
                wait = backoff.next()
            self._resync.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), wait)

    async def register_node(self, resolved: Resolved | None = None) -> Node:
        """Create the Node, or bring its address (node/autodetect.py: None leaves it as it
        is) and orchRefs up to date, keeping the rest.  ``resolved``: the address to write,
        resolved already; else it is resolved here (with the Node document when there is
        one)."""
        for _ in range(10):
            try:
                current: Node = await self.resources.get(_NODE, self.node)
            except NotFound:
                address = await self._address(resolved, None)
                address6 = await asyncio.to_thread(self.address6.resolve, None)
                doc: dict[str, Any] = {"metadata": {"name": self.node}, "spec": {}}
                _update_node_doc(doc, self.node, address, address6)
                try:
                    node: Node = await self.resources.create(_NODE, Node.from_dict(doc))
                except ResourceExists:
                    continue
                log.info("registered the Node resource",
                         extra={"fields": {"node": self.node, "ipv4": address or "",
                                           "ipv6": address6 or ""}})
                return node
            doc = current.dump()
            address = await self._address(resolved, doc)
            address6 = await asyncio.to_thread(self.address6.resolve, doc)
            before = json.dumps(doc, sort_keys=True)
            _update_node_doc(doc, self.node, address, address6)
            if json.dumps(doc, sort_keys=True) == before:
                return current
            try:
                node = await self.resources.replace(_NODE, Node.from_dict(doc))
            except (ResourceConflict, NotFound):
                continue
            log.info("updated the Node resource",
                     extra={"fields": {"node": self.node, "ipv4": address or "",
                                       "ipv6": address6 or ""}})
            return node
        raise DatastoreError(f"Node {self.node} is being modified concurrently")


def _not_json(name: str) -> Any:
    """``parse_constant`` of the CNI socket: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _update_node_doc(doc: dict[str, Any], node: str, address: str | None,
                     address6: str | None = None) -> None:
    spec = doc.setdefault("spec", {})
    if address:
        spec.setdefault("bgp", {})["ipv4Address"] = address
    if address6:
        spec.setdefault("bgp", {})["ipv6Address"] = address6
    refs = [r for r in spec.get("orchRefs") or [] if r.get("orchestrator") != "k8s"]
    refs.append({"nodeName": node, "orchestrator": "k8s"})
    spec["orchRefs"] = refs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = from_arguments(args)
    except ConfigError as e:
        log.error("invalid etcd configuration", extra={"fields": {"error": str(e)}})
        return 2
    return asyncio.run(NodeDaemon(args, config).run())


if __name__ == "__main__":
    sys.exit(main())
