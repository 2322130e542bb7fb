"""BIRD 2 as a router outside the cluster (or as its route reflector), for the lab and the
tests: render its configuration and run it in a network namespace, by PID.

Outside peer (default): eBGP/iBGP sessions with the nodes, imports everything they
announce into its kernel table (so the namespace can reach pods), exports nothing back.
Route reflector (``route_reflector=True``, same AS as the nodes): every node is an
``rr client``; BIRD reflects each node's blocks to the others with the next hop unchanged.
``ipv6=True``: every session also has an IPv6 channel (MP-BGP over the IPv4 session) and
BIRD installs the IPv6 routes it learns as well (its namespace then needs an IPv6 address
on the nodes' subnet: next hops are the nodes' IPv6 addresses).  A neighbour at an IPv6
address gets a session over IPv6 from BIRD's own IPv6 address (``local6``) with an IPv6
channel only, as Calico's IPv6 sessions.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentkit.procs import stop_pid

DEFAULT_BIRD = "/usr/sbin/bird"
START_TIMEOUT = 10.0


class BirdError(RuntimeError):
    pass


@dataclass(frozen=True)
class BirdNeighbour:
    address: str
    asn: int
    password: str | None = None


def _proto_name(address: str) -> str:
    return "n_" + re.sub(r"[^0-9a-zA-Z]", "_", address)


def render_bird_config(router_id: str, asn: int, neighbours: Iterable[BirdNeighbour], *,
                       route_reflector: bool = False, cluster_id: str | None = None,
                       graceful_restart: int = 120, log_file: str | None = None,
                       local_net: str | None = None, ipv6: bool = False,
                       local6: str | None = None) -> str:
    """``local_net``: BIRD's own subnet; neighbours outside it are multihop sessions whose
    next hops resolve through the kernel's routes (learnt, e.g. a default route);
    ``ipv6``: an IPv6 unicast channel on every IPv4 session, and a kernel protocol for it;
    ``local6``: BIRD's IPv6 address with its prefix length, the local end of the sessions
    with IPv6 neighbours (which carry IPv6 routes only)."""
    ipaddress.IPv4Address(router_id)
    neighbours = list(neighbours)
    net = ipaddress.ip_network(local_net or f"{router_id}/24", strict=False)
    iface6 = ipaddress.IPv6Interface(local6) if local6 else None
    if iface6 is None and any(":" in n.address for n in neighbours):
        raise BirdError("IPv6 neighbours need BIRD's own IPv6 address (local6)")
    ipv6_kernel = ipv6 or iface6 is not None
    lines = [
        "# Written by tortie (routing/bgp/bird.py).",
        f"router id {router_id};",
        f'log "{log_file}" all;' if log_file else "log stderr all;",
        "protocol device { scan time 10; }",
        "protocol direct { ipv4; ipv6; }" if ipv6_kernel else "protocol direct { ipv4; }",
        "protocol kernel {",
        "    learn;",
        "    ipv4 { import where net = 0.0.0.0/0;",
        "           export filter { if source = RTS_BGP then accept; reject; }; };",
        "}",
    ]
    if ipv6_kernel:
        lines += [
            "protocol kernel kernel6 {",
            "    ipv6 { import none;",
            "           export filter { if source = RTS_BGP then accept; reject; }; };",
            "}",
        ]
    for n in neighbours:
        ibgp = n.asn == asn
        over6 = ":" in n.address
        local = str(iface6.ip) if over6 and iface6 is not None else router_id
        lines += [
            f"protocol bgp {_proto_name(n.address)} {{",
            f"    local {local} as {asn};",
            f"    neighbor {n.address} as {n.asn};",
            "    connect delay time 1;",
            "    connect retry time 1;",
            "    error wait time 1, 10;",
            f"    graceful restart on; graceful restart time {graceful_restart};",
        ]
        on_link = ipaddress.ip_address(n.address) in (
            iface6.network if over6 and iface6 is not None else net)
        if on_link and ibgp:
            lines.append("    direct;")  # same subnet: not multihop (BIRD's iBGP default)
        elif not on_link:
            lines.append("    multihop;")
        if n.password:
            lines.append(f'    password "{n.password}";')
        if route_reflector and ibgp:
            lines.append("    rr client;")
            if cluster_id:
                lines.append(f"    rr cluster id {cluster_id};")
        export = "where source = RTS_BGP" if route_reflector else "none"
        gateway = ("    gateway direct;" if on_link else "    gateway recursive;") if ibgp else ""
        if not over6:
            lines += [
                "    ipv4 {",
                "        import all;",
                f"        export {export};",
                *([gateway] if gateway else []),
                "    };",
            ]
        if ipv6 or over6:
            lines += [
                "    ipv6 {",
                "        import all;",
                f"        export {export};",
                *([gateway] if gateway else []),
                "    };",
            ]
        lines.append("}")
    return "\n".join(lines) + "\n"



class BirdPeer:
    """One bird process in ``netns`` with its files in ``run_dir`` (config, control socket,
    log, pid)."""

    def __init__(self, run_dir: str | Path, *, netns: str, router_id: str, asn: int,
                 peers: Iterable[tuple[str, int] | BirdNeighbour], bird: str | None = None,
                 route_reflector: bool = False, cluster_id: str | None = None,
                 local_net: str | None = None, ipv6: bool = False,
                 local6: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.local_net = local_net
        self.ipv6 = ipv6
        self.local6 = local6
        self.netns = netns
        self.router_id = router_id
        self.asn = asn
        self.neighbours = [p if isinstance(p, BirdNeighbour) else BirdNeighbour(*p)
                           for p in peers]
        self.bird = bird or shutil.which("bird") or DEFAULT_BIRD
        self.birdc = str(Path(self.bird).with_name("birdc"))
        self.route_reflector = route_reflector
        self.cluster_id = cluster_id
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.run_dir / "bird.conf"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "bird.ctl"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "bird.log"

    def render(self) -> str:
        return render_bird_config(self.router_id, self.asn, self.neighbours,
                                  route_reflector=self.route_reflector,
                                  cluster_id=self.cluster_id, log_file=str(self.log_path),
                                  local_net=self.local_net, ipv6=self.ipv6,
                                  local6=self.local6)

    def start(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with open(self.run_dir / "bird.out", "ab") as out:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, self.bird, "-f", "-c",
                 str(self.config_path), "-s", str(self.socket_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.pid = self._proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket_path.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                out_text = (self.run_dir / "bird.out").read_text(errors="replace")
                raise BirdError(f"bird did not start: {out_text[-2000:]}")
            time.sleep(0.02)
        time.sleep(0.05)
        if self._proc.poll() is not None:
            out_text = (self.run_dir / "bird.out").read_text(errors="replace")
            raise BirdError(f"bird exited: {out_text[-2000:]}")
        return self.pid

    def stop(self) -> None:
        stop_pid(self.pid)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        self.pid = 0

    def reconfigure(self, peers: Iterable[tuple[str, int] | BirdNeighbour]) -> None:
        self.neighbours = [p if isinstance(p, BirdNeighbour) else BirdNeighbour(*p)
                           for p in peers]
        self.config_path.write_text(self.render())
        self.cli("configure")

    def cli(self, *args: str) -> str:
        p = subprocess.run([self.birdc, "-s", str(self.socket_path), *args],
                           capture_output=True, text=True, timeout=10, check=False)
        if p.returncode != 0:
            raise BirdError(f"birdc {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def routes(self) -> dict[str, str]:
        """BIRD's best BGP route per prefix: prefix -> next hop."""
        return parse_show_route(self.cli("show", "route", "primary", "all"))

    def protocols(self) -> dict[str, str]:
        """Session state per neighbour address (``Established``, ``Connect``, ...)."""
        out: dict[str, str] = {}
        text = self.cli("show", "protocols")
        for n in self.neighbours:
            m = re.search(rf"^{_proto_name(n.address)}\s+BGP\s+\S+\s+\S+\s+\S+\s+(\S+)",
                          text, re.M)
            out[n.address] = m.group(1) if m else "?"
        return out

    def kernel_routes(self, version: int = 4) -> dict[str, str]:
        """The kernel routes of IP ``version`` in BIRD's namespace that BIRD installed:
        prefix -> gateway."""
        p = subprocess.run(["ip", "-n", self.netns, f"-{version}", "route", "show", "proto",
                            "bird"],
                           capture_output=True, text=True, check=False)
        out: dict[str, str] = {}
        for line in p.stdout.splitlines():
            m = re.match(r"^(\S+) via (\S+)", line)
            if m:
                out[m.group(1)] = m.group(2)
        return out


def parse_show_route(text: str) -> dict[str, str]:
    """prefix -> next hop of ``birdc show route primary [all]`` output (BGP routes only): the
    BGP NEXT_HOP attribute when shown (``all``), else the gateway."""
    out: dict[str, str] = {}
    from_attr: set[str] = set()
    prefix: str | None = None
    bgp = False
    for line in text.splitlines():
        m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*/\d+)\s+(\S+)",
                     line)
        if m:
            prefix, bgp = m.group(1), "[n_" in line
            continue
        if not line.startswith((" ", "\t")):
            prefix = None
        if not (prefix and bgp):
            continue
        m = re.match(r"^\s+via (\S+)", line)
        if m and prefix not in out:
            out[prefix] = m.group(1)
        m = re.match(r"^\s+BGP\.next_hop: (\S+)", line)
        if m and prefix not in from_attr:
            out[prefix] = m.group(1)
            from_attr.add(prefix)
    return out
