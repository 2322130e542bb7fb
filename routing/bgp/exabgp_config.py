"""Render ExaBGP 5's configuration file and environment from :class:`api.BGPSettings`.

Pure functions: no I/O.  The speaker (``speaker.py``) writes the result into its run
directory and starts / reloads ExaBGP with it.

Choices, and why:

* ``manual-eor true``: ExaBGP would send End-of-RIB the moment a session comes up, before
  the routing agent has announced anything; after a restart that would make every peer
  flush our stale routes (RFC 4724).  The speaker sends EoR itself once the agent's first
  full announcement is in ExaBGP's RIB.
* ``capability { graceful-restart N; }`` when ``graceful_restart > 0``: the peers keep our
  routes while we restart, and ExaBGP closes a GR session without a NOTIFICATION.
* One ``process`` (the relay, ``relay.py``) with the JSON encoder receives state changes,
  OPENs (for the peer's restart time), NOTIFICATIONs and parsed UPDATEs.
* ``family { ipv4 unicast; }``, plus ``ipv6 unicast`` when the node has an IPv6 address
  (``BGPSettings.ipv6``): IPv6 routes ride the IPv4 sessions as MP-BGP (RFC 4760), each
  with the announcing node's IPv6 address as next hop.  A peer that does not offer the
  family simply does not negotiate it.
* A peer at an IPv6 address (a BGPPeer with an IPv6 ``peerIP``) gets a session over IPv6:
  ``local-address`` = the node's IPv6 address, ``family { ipv6 unicast; }`` only (Calico's
  IPv6 sessions carry IPv6 routes only), and ExaBGP listens on the IPv6 address as well.
* ExaBGP never touches the FIB; nothing here asks it to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from routing.bgp.api import BGPSettings, Neighbour

PROCESS_NAME = "tortie"
FAMILY = "ipv4 unicast"
FAMILY_V6 = "ipv6 unicast"


def families(settings: BGPSettings, n: Neighbour | None = None) -> tuple[str, ...]:
    """The address families a session carries: an IPv6 session IPv6 unicast only, an IPv4
    one IPv4 unicast, and IPv6 unicast too when the node has an IPv6 address.  Without
    ``n``: those of the IPv4 sessions."""
    if n is not None and n.version == 6:
        return (FAMILY_V6,)
    return (FAMILY, FAMILY_V6) if settings.ipv6 else (FAMILY,)


def carries(settings: BGPSettings, n: Neighbour, prefix: str) -> bool:
    """Whether the session with ``n`` carries routes of ``prefix``'s address family."""
    return (FAMILY_V6 if ":" in prefix else FAMILY) in families(settings, n)


def local_address(settings: BGPSettings, n: Neighbour) -> str | None:
    """This node's end of the session with ``n``: its IPv6 address for an IPv6 peer."""
    return settings.local_address6 if n.version == 6 else settings.local_address


def _quote(text: str) -> str:
    """A double-quoted ExaBGP string (JSON escaping is a safe subset)."""
    if "\n" in text or ";" in text:
        raise ValueError(f"{text!r}: newlines and ';' are not allowed in ExaBGP strings")
    return json.dumps(text)


def render_neighbour(settings: BGPSettings, n: Neighbour) -> str:
    """One ``neighbor`` block.  Per-peer settings (BGPPeer): ``local_asn`` -> ``local-as``,
    ``hold_time`` (from keepaliveTime) -> ``hold-time``, ``restart_time`` (maxRestartTime)
    -> the graceful-restart time, ``source_address=False`` (sourceAddress None) -> no
    ``local-address`` (ExaBGP then lets the kernel pick the source)."""
    lines = [
        f"neighbor {n.address} {{",
        f"    description {_quote(f'{n.kind}:{n.name}' if n.name else n.kind)};",
        f"    router-id {settings.router_id};",
    ]
    local = local_address(settings, n)
    if n.source_address and local:
        lines.append(f"    local-address {local};")
    lines += [
        f"    local-as {n.local_asn or settings.asn};",
        f"    peer-as {n.asn};",
        f"    hold-time {settings.hold_time if n.hold_time is None else n.hold_time};",
        "    manual-eor true;",
    ]
    if n.passive:
        lines.append("    passive true;")
    if n.port:
        lines.append(f"    connect {n.port};")
    if n.password:
        lines.append(f"    md5-password {_quote(n.password)};")
    if n.ttl_security:
        # GTSM as Calico's ttlSecurity: send with TTL 255, accept only 255 - (hops - 1).
        lines.append("    outgoing-ttl 255;")
        lines.append(f"    incoming-ttl {256 - n.ttl_security};")
    caps = ["route-refresh;"]
    restart = settings.graceful_restart if n.restart_time is None else n.restart_time
    if settings.graceful_restart > 0 and restart > 0:
        caps.append(f"graceful-restart {restart};")
    lines.append(f"    capability {{ {' '.join(caps)} }}")
    lines.append(f"    family {{ {' '.join(f + ';' for f in families(settings, n))} }}")
    lines.append(f"    api {{ processes [ {PROCESS_NAME} ]; neighbor-changes; "
                 "receive { parsed; update; open; notification; } }")
    lines.append("}")
    return "\n".join(lines)


def render_config(settings: BGPSettings, process_argv: Sequence[str]) -> str:
    """The whole configuration file: the API process, then one block per neighbour."""
    if not process_argv:
        raise ValueError("process_argv must name the API process")
    run = " ".join(process_argv)
    if ";" in run or "\n" in run:
        raise ValueError(f"{run!r}: the API process command must not contain ';' or newlines")
    parts = [
        "# Written by tortie-node (routing/bgp/exabgp_config.py); rewritten on every change.",
        f"process {PROCESS_NAME} {{",
        f"    run {run};",
        "    encoder json;",
        "}",
    ]
    by_address = {n.address: n for n in reversed(settings.neighbours)}  # first one wins
    for address in neighbour_addresses(settings):
        parts.append(render_neighbour(settings, by_address[address]))
    return "\n".join(parts) + "\n"


def neighbour_addresses(settings: BGPSettings) -> list[str]:
    """The neighbours the configuration has, in order: one session per address, never one
    with ourselves."""
    seen: list[str] = []
    for n in settings.neighbours:
        if n.address not in seen and n.address not in (settings.local_address,
                                                        settings.router_id,
                                                        settings.local_address6):
            seen.append(n.address)
    return seen


def exabgp_environment(settings: BGPSettings, base: Mapping[str, str] | None = None,
                       log_level: str = "INFO") -> dict[str, str]:
    """Environment variables for the ExaBGP process.

    ``daemon.user=root``: ExaBGP would otherwise drop to ``nobody`` (and our run directory
    and the relay would no longer be reachable).  The API CLI pipes are off: the relay is
    our only channel.  ``api.respawn`` off and ``api.terminate`` on: if the relay dies (its
    tortie-node is gone) ExaBGP exits instead of running on unsupervised.
    """
    env = dict(base or {})
    env.update({
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_tcp_bind": " ".join(bind_addresses(settings)),
        "exabgp_tcp_port": str(settings.listen_port),
        "exabgp_api_ack": "true",
        "exabgp_api_cli": "false",
        "exabgp_api_respawn": "false",
        "exabgp_api_terminate": "true",
        "exabgp_api_encoder": "json",
        "exabgp_log_level": log_level,
        "exabgp_log_destination": "stdout",
        "exabgp_log_short": "true",
        # its log is our file: unbuffered, so that what it said survives a SIGKILL
        "PYTHONUNBUFFERED": "1",
    })
    return env


def restart_needed(old: BGPSettings, new: BGPSettings) -> bool:
    """True when a change cannot be applied by reloading the configuration (the listening
    socket or this speaker's identity changes); neighbour changes only need a reload."""
    return (bind_addresses(old), old.listen_port, old.router_id, old.asn) != (
        bind_addresses(new), new.listen_port, new.router_id, new.asn)


def bind_addresses(settings: BGPSettings) -> tuple[str, ...]:
    """The addresses ExaBGP listens on: the node's IPv4 address, and its IPv6 address while
    some session runs over IPv6 (a node without IPv6 peers never depends on it)."""
    v6 = settings.local_address6 if any(n.version == 6 for n in settings.neighbours) else None
    return tuple(a for a in (settings.local_address, v6) if a)
