"""``tortie node status``: this node's BGP sessions, in the shape of ``calicoctl node status``.

Reads ``GET http://<host>:<port>/healthz`` of the tortie-node on this host (run it in the
node's network namespace), where ``agents.routing.peers`` lists one
``dataclasses.asdict(PeerStatus)`` per configured neighbour.  The address is tortie-node's
own: ``--metrics-address`` / ``TORTIE_METRICS_ADDRESS`` (the environment the kind DaemonSet
sets, so ``kubectl exec`` into tortie-node needs no flag), else its default
(agentkit/node_metrics.py); a wildcard host is reached on the loopback address.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from agentkit import node_metrics
from agentkit.node_metrics import METRICS_ADDRESS_ENV
from ctl.common import CLIError

PEER_TYPES = {
    "mesh": "node-to-node mesh",
    "global": "global",
    "node": "node specific",
    "route-reflector-client": "rr client",
}
HEADERS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "UPTIME", "RECEIVED", "SENT", "INFO")


def fetch_health(host: str, port: int, timeout: float = 3.0) -> dict[str, Any]:
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read().decode())
            return data
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CLIError(f"tortie-node is not running here (no answer on {url}: {e})") from None


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}d" if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _since(ts: float, now: float) -> str:
    if not ts:
        return "-"
    when = datetime.fromtimestamp(ts)
    return when.strftime("%H:%M:%S") if now - ts < 86400 else when.strftime("%Y-%m-%d")


def peer_rows(peers: Sequence[dict[str, Any]], now: float | None = None) -> list[tuple[str, ...]]:
    now = time.time() if now is None else now
    rows = []
    for p in peers:
        established = p.get("state") == "Established"
        since = float(p.get("since") or 0)
        rows.append((
            str(p.get("address", "")),
            PEER_TYPES.get(str(p.get("kind", "")), str(p.get("kind", ""))),
            "up" if established else "start",
            _since(since, now),
            _duration(now - since) if established and since else "-",
            str(p.get("received", 0)),
            str(p.get("sent", 0)),
            str(p.get("state", "")) + (f" ({p['info']})" if p.get("info") else ""),
        ))
    return rows


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str], center: bool = False) -> str:
        return "|" + "|".join(
            f" {c.center(w) if center else c.ljust(w)} " for c, w in zip(cells, widths,
                                                                         strict=True)) + "|"

    out = [sep, line(headers, center=True), sep, *(line(r) for r in rows), sep]
    return "\n".join(out)


def render_status(health: dict[str, Any], now: float | None = None) -> str:
    routing = (health.get("agents") or {}).get("routing")
    lines = [f"tortie-node is running on node {health.get('node', '?')}.", ""]
    if routing is None:
        lines.append("The routing agent is not running (no BGP).")
        return "\n".join(lines)
    every = routing.get("peers") or []
    families = routing.get("families") or {}
    for version in (4, 6):
        peers = [p for p in every if (":" in str(p.get("address", ""))) == (version == 6)]
        if version == 6:
            lines.append("")
        lines.append(f"IPv{version} BGP status")
        if peers:
            lines.append(render_table(HEADERS, peer_rows(peers, now)))
        else:
            lines.append(f"No IPv{version} peers found.")
        counts = families.get(f"ipv{version}")
        if version == 6 and counts and (counts.get("announced") or counts.get("learnt")):
            lines.append("IPv6 routes ride the IPv4 sessions above (MP-BGP, ipv6 unicast)"
                         + ("; the IPv6 sessions carry IPv6 routes only." if peers else "."))
        if counts:
            lines.append(f"IPv{version} routes: {counts.get('announced', 0)} announced, "
                         f"{counts.get('learnt', 0)} learnt, {counts.get('routes', 0)} "
                         "in the kernel")
    return "\n".join(lines)


@click.group()
def node() -> None:
    """This node's tortie-node (BGP sessions)."""


def target(metrics_address: str | None, metrics_port: int | None,
           host: str | None) -> tuple[str, int]:
    """(host, port) to ask: tortie-node's ``--metrics-address`` (its default if None), the
    port replaced by ``metrics_port`` and the host by ``host`` when given."""
    try:
        listen_host, port = node_metrics.resolve(metrics_address, None, "--metrics-address")
    except ValueError as e:
        raise CLIError(f"{e} (from --metrics-address or {METRICS_ADDRESS_ENV})") from None
    if metrics_port is not None and not 0 < metrics_port <= 65535:
        raise CLIError(f"--metrics-port: {metrics_port} is not a port (1-65535)")
    return (host or node_metrics.connect_host(listen_host),
            port if metrics_port is None else metrics_port)


@node.command()
@click.option("--metrics-address", envvar=METRICS_ADDRESS_ENV, default=None,
              help="tortie-node's --metrics-address, HOST:PORT [env "
                   f"{METRICS_ADDRESS_ENV}; default {node_metrics.default_address()}]")
@click.option("--metrics-port", default=None, type=int,
              help="tortie-node's /metrics and /healthz port (overrides that of "
                   "--metrics-address)")
@click.option("--host", default=None,
              help="where tortie-node listens (default: the host of --metrics-address; "
                   "0.0.0.0 is asked on 127.0.0.1)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def status(metrics_address: str | None, metrics_port: int | None, host: str | None,
           output: str) -> None:
    """BGP peers of this node: state, since, uptime, routes received and sent."""
    health = fetch_health(*target(metrics_address, metrics_port, host))
    if output == "json":
        routing = (health.get("agents") or {}).get("routing") or {}
        click.echo(json.dumps(routing.get("peers") or [], indent=2))
        return
    click.echo(render_status(health))
