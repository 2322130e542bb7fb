"""``tortie ipam``: pool and block utilisation, consistency check, manual release."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import click

from ctl.common import CLIError, run
from ctl.output import table
from datastore.kinds import by_cli_name
from datastore.resources import Resources
from ipam.allocator import IPAM

BAR_WIDTH = 20
# The allocator acts for a node; the CLI acts for none (it never claims blocks).
ADMIN = "tortie-admin"


def bar(used: int, total: int) -> str:
    """``[#####...............]  25%``"""
    frac = used / total if total else 0.0
    filled = round(frac * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac:4.0%}"


def tunnel_addresses(node: Any) -> list[tuple[str, str]]:
    """(kind, address) of the tunnel addresses a Node resource records (the routing agent
    allocates them from IPAM: ``spec.ipv4VXLANTunnelAddr`` / ``ipv6VXLANTunnelAddr``,
    ``spec.bgp.ipv4IPIPTunnelAddr``)."""
    spec = node.spec
    bgp = spec.bgp
    out = []
    for what, text in (("VXLAN", spec.ipv4VXLANTunnelAddr), ("VXLAN", spec.ipv6VXLANTunnelAddr),
                       ("IPIP", bgp.ipv4IPIPTunnelAddr if bgp else None)):
        if text:
            with contextlib.suppress(ValueError):
                out.append((what, str(ipaddress.ip_interface(text).ip)))
    return out


@click.group()
def ipam() -> None:
    """IP address management: usage, checks, release."""


@ipam.command()
@click.option("--show-blocks", is_flag=True, help="one row per block as well")
@click.pass_context
def show(ctx: click.Context, show_blocks: bool) -> None:
    """Utilisation of every pool (and block), drawn as bars."""
    async def go(res: Resources) -> tuple[list[Any], list[Any]]:
        allocator = IPAM(res.store, ADMIN)
        return await allocator.usage(), (await allocator.list_blocks() if show_blocks else [])

    pools, blocks = run(ctx, go)
    rows: list[list[str]] = []
    for p in pools:
        rows.append([f"IP Pool {p.name}", p.cidr, str(p.size), str(p.allocated), str(p.free),
                     bar(p.allocated, p.size)])
        pool_net = ipaddress.ip_network(p.cidr)
        for b in sorted(blocks, key=lambda b: (ipaddress.ip_network(b.cidr).version,
                                               ipaddress.ip_network(b.cidr))):
            net = ipaddress.ip_network(b.cidr)
            if net.version == pool_net.version and net.subnet_of(pool_net):
                node = b.affinity_node or "(no affinity)"
                rows.append([f"  Block {node}", b.cidr, str(b.size), str(b.allocated_count),
                             str(b.free_count), bar(b.allocated_count, b.size)])
    click.echo(table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE", "USE"], rows),
               nl=False)


@ipam.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Addresses with no endpoint, endpoints with no address, blocks with no node."""
    async def go(res: Resources) -> Any:
        weps = await res.list(by_cli_name("workloadendpoints"), None)
        nodes = await res.list(by_cli_name("nodes"))
        workload_ips = {str(ipaddress.ip_interface(net).ip): f"{w.namespace}/{w.name}"
                        for w in weps for net in (w.spec.ipNetworks or [])}
        for n in nodes:  # a node's tunnel addresses come from IPAM too: in use, not leaked
            for what, ip in tunnel_addresses(n):
                workload_ips[ip] = f"node {n.name} ({what} tunnel)"
        return await IPAM(res.store, ADMIN).check(workload_ips, {n.name for n in nodes})

    report = run(ctx, go)
    click.echo(f"checked {report.allocated} allocation(s) in {report.blocks} block(s)")
    for ip, handle in report.leaked:
        click.echo(f"  leaked: {ip} (handle {handle}) has no workload endpoint")
    for ip, ep in report.missing:
        click.echo(f"  missing: endpoint {ep} has {ip}, which IPAM does not hold for it")
    for cidr, node in report.orphan_blocks:
        click.echo(f"  orphan block: {cidr} is affine to {node}, which is not a node")
    for handle, why in report.dangling_handles:
        click.echo(f"  dangling handle: {handle}: {why}")
    if not report.clean:
        raise CLIError("IPAM is not consistent (see above)")
    click.echo("IPAM is consistent")


@ipam.command()
@click.option("--ip", "ips", multiple=True, required=True, help="address to release "
              "(repeatable)")
@click.pass_context
def release(ctx: click.Context, ips: tuple[str, ...]) -> None:
    """Release addresses by hand (e.g. leaked ones that ipam check reported)."""
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CLIError(f"--ip: {ip!r} is not an IP address") from None
    released = run(ctx, lambda res: IPAM(res.store, ADMIN).release_ips(list(ips)))
    for ip in ips:
        state = "released" if ip in released else "was not allocated"
        click.echo(f"{ip}: {state}")
