"""Lab pieces for host endpoint scenarios: an outside host, servers, probes, a NodePort.

* :func:`add_outside_host` -- namespace ``tl-L-outside`` on the fabric bridge with two
  addresses: ``192.0.2.200`` (the underlay, outside 10.0.0.0/8) and ``10.200.0.200`` (a
  secondary underlay ``10.200.0.0/24``, inside 10.0.0.0/8). The fabric gets ``10.200.0.1``
  and every node a secondary ``10.200.0.(10+N)`` on its ``eth0``, so replies find their way
  back. Named after the lab, so ``Lab.down`` removes it with everything else.
* :func:`add_direct_link` -- a second host interface (``eth1``) on a node, a veth straight
  to the outside host (``198.51.100.0/24``): an interface no host endpoint may cover.
* :class:`Server` -- a TCP/UDP server (a Python one-liner started with ``ip netns exec``,
  stopped by PID): TCP answers ``ok`` to every connection, UDP echoes.
* :func:`tcp_ok` / :func:`udp_ok` -- one probe from a namespace, optionally from a given
  source address: True when the server answered.
* :class:`NodePort` -- what kube-proxy would do for a NodePort (there is none in the lab):
  a table ``ip tl-kp-<random>`` in the node namespace with a ``dstnat`` DNAT
  ``nodeIP:port -> podIP:port``. Tortie's preDNAT chain (priority -110) runs before it.
* :func:`program_nodes` -- the policy agent's job done from outside (for when tortie-node
  runs no policy agent): read every resource from the lab's etcd, compute each node's model
  (:class:`~policyagent.calc.PolicyCalculator`), resolve its host endpoints against the
  node's interfaces, render and apply it in the node's namespace. ``expected_chains`` does
  the same without applying, to wait for a real agent to catch up.

Run as ``python -m lab.hosts program|expect|reset NODE=NETNS...`` inside the fabric namespace
(it needs the lab's etcd); :func:`program_nodes` and friends do that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lab import netns
from lab.cluster import FABRIC_IP, UNDERLAY, Lab, LabState

__all__ = [
    "FABRIC_IP",
    "OUTSIDE_IP",
    "OUTSIDE_NET",
    "OUTSIDE_UNDERLAY_IP",
    "NodePort",
    "OutsideHost",
    "Server",
    "add_direct_link",
    "add_outside_host",
    "conntrack_entries",
    "eventually",
    "expected_chains",
    "node_secondary_ip",
    "ping_ok",
    "program_nodes",
    "reset_policy",
    "table_chains",
    "tcp_ok",
    "udp_ok",
    "wait_programmed",
]

OUTSIDE_NET = ipaddress.ip_network("10.200.0.0/24")
OUTSIDE_FABRIC_IP = str(OUTSIDE_NET.network_address + 1)
OUTSIDE_UNDERLAY_IP = str(UNDERLAY.network_address + 200)   # 192.0.2.200: not in 10/8
OUTSIDE_IP = str(OUTSIDE_NET.network_address + 200)         # 10.200.0.200: in 10/8
TABLE = "tortie"
#: The kinds the policy agent reads, in an order that keeps re-labelling work low.
POLICY_KINDS = ("namespaces", "pods", "profiles", "workloadendpoints", "hostendpoints",
                "networksets", "globalnetworksets", "networkpolicies", "k8snetworkpolicies",
                "globalnetworkpolicies", "felixconfigurations", "ippools", "nodes")
_CHAIN_RE = re.compile(r"^\s*chain ((?:p|r|t|w|h|hf|hp|hu)[ie]?_[0-9a-f]{12}) \{", re.MULTILINE)


# --- the outside host --------------------------------------------------------------------

@dataclass(frozen=True)
class OutsideHost:
    netns: str
    underlay_ip: str = OUTSIDE_UNDERLAY_IP
    inside_ip: str = OUTSIDE_IP


def node_secondary_ip(node_address: str) -> str:
    """The node's address in the secondary underlay (same host part as on 192.0.2.0/24)."""
    host = int(ipaddress.ip_address(node_address)) - int(UNDERLAY.network_address)
    return str(OUTSIDE_NET.network_address + host)


def add_outside_host(lab: Lab, name: str = "outside") -> OutsideHost:
    st = lab.load()
    ns = f"tl-{lab.name}-{name}"
    netns.add_netns(ns)
    netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", name,
             "netns", st.fabric)
    netns.ip("link", "set", name, "master", "br0", "up", ns=st.fabric)
    for addr in (f"{OUTSIDE_UNDERLAY_IP}/{UNDERLAY.prefixlen}",
                 f"{OUTSIDE_IP}/{OUTSIDE_NET.prefixlen}"):
        netns.ip("addr", "add", addr, "dev", "eth0", ns=ns)
    netns.ip("link", "set", "eth0", "up", ns=ns)
    fabric_addrs = netns.ip("-o", "addr", "show", "dev", "br0", ns=st.fabric)
    if f" {OUTSIDE_FABRIC_IP}/" not in fabric_addrs:
        netns.ip("addr", "add", f"{OUTSIDE_FABRIC_IP}/{OUTSIDE_NET.prefixlen}", "dev", "br0",
                 ns=st.fabric)
    for node in st.nodes.values():
        addr = node_secondary_ip(node.address)
        if f" {addr}/" not in netns.ip("-o", "addr", "show", "dev", "eth0", ns=node.netns):
            netns.ip("addr", "add", f"{addr}/{OUTSIDE_NET.prefixlen}", "dev", "eth0",
                     ns=node.netns)
    return OutsideHost(ns)


#: A second, direct link between a node and the outside host (not through the fabric).
LINK_NET = ipaddress.ip_network("198.51.100.0/24")


def add_direct_link(lab: Lab, node: str, outside: OutsideHost, ifname: str = "eth1"
                    ) -> tuple[str, str]:
    """A veth ``ifname`` on ``node`` straight to the outside host (``198.51.100.1`` on the
    node, ``.2`` outside): a host interface other than ``eth0``. Returns both addresses."""
    st = lab.load()
    node_ns = st.nodes[node].netns
    peer = f"to-{node}"[:15]
    node_ip, out_ip = (str(LINK_NET.network_address + i) for i in (1, 2))
    netns.ip("link", "add", ifname, "netns", node_ns, "type", "veth", "peer", "name", peer,
             "netns", outside.netns)
    netns.ip("addr", "add", f"{node_ip}/{LINK_NET.prefixlen}", "dev", ifname, ns=node_ns)
    netns.ip("addr", "add", f"{out_ip}/{LINK_NET.prefixlen}", "dev", peer, ns=outside.netns)
    netns.ip("link", "set", ifname, "up", ns=node_ns)
    netns.ip("link", "set", peer, "up", ns=outside.netns)
    return node_ip, out_ip


# --- servers and probes ------------------------------------------------------------------

_SERVER = """
import socket, selectors, sys, json
tcp, udp, binds = json.loads(sys.argv[1])
sel = selectors.DefaultSelector()
for port in tcp:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); sel.register(s, selectors.EVENT_READ, "t")
for port in udp:
    for addr in binds:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, port)); sel.register(u, selectors.EVENT_READ, "u")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "t":
            c, _ = key.fileobj.accept()
            try:
                c.sendall(b"ok")
            except OSError:
                pass
            c.close()
        else:
            data, peer = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(data, peer)
"""


class Server:
    """TCP and UDP servers in one process inside ``ns`` (stop() kills it by PID)."""

    def __init__(self, ns: str, tcp: Iterable[int] = (), udp: Iterable[int] = ()) -> None:
        self.ns = ns
        binds = [a.split("/")[0] for addrs in _addresses(ns).values() for a in addrs
                 if ":" not in a]
        arg = json.dumps([list(tcp), list(udp), binds])
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", _SERVER, arg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != "ready\n":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"server in {ns} did not start: {line!r} {err}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _addresses(ns: str) -> dict[str, list[str]]:
    from policyagent.hep_resolve import read_interfaces
    return read_interfaces(ns)


def _probe(ns: str, code: str, timeout: float) -> bool:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", code],
                       capture_output=True, text=True, timeout=timeout + 10, check=False)
    return p.returncode == 0


def tcp_ok(ns: str, dst: str, port: int, *, src: str | None = None,
           timeout: float = 0.3, connect_only: bool = False) -> bool:
    """Connect from ``ns`` (from ``src`` if given) and read the server's ``ok`` (or only
    connect, for servers that are not :class:`Server`, e.g. the lab's etcd)."""
    bind = f"s.bind(({src!r}, 0)); " if src else ""
    check = "0" if connect_only else "0 if s.recv(2) == b'ok' else 1"
    code = (f"import socket, sys; s = socket.socket(); s.settimeout({timeout}); {bind}"
            f"s.connect(({dst!r}, {port})); sys.exit({check})")
    return _probe(ns, code, timeout)


def ping_ok(ns: str, dst: str, *, src: str | None = None, timeout: float = 1.0) -> bool:
    """One ICMP echo from ``ns``."""
    cmd = ["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", str(timeout),
           *(["-I", src] if src else []), dst]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10,
                          check=False).returncode == 0


def conntrack_entries(ns: str, dport: int, src: str | None = None) -> int:
    """How many conntrack entries in ``ns`` have (original) destination port ``dport`` (and
    source address ``src``)."""
    p = netns.run("ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack", check=False)
    count = 0
    for line in p.stdout.splitlines():
        fields = line.split()
        original = [f for f in fields if f.startswith(("src=", "dport="))][:3]
        if f"dport={dport}" in original and (src is None or original[0] == f"src={src}"):
            count += 1
    return count


def udp_ok(ns: str, dst: str, port: int, *, src: str | None = None,
           timeout: float = 0.3) -> bool:
    """Send a datagram from ``ns`` and wait for its echo."""
    bind = f"s.bind(({src!r}, 0)); " if src else ""
    code = (f"import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.settimeout({timeout}); {bind}s.connect(({dst!r}, {port})); s.send(b'hi'); "
            f"sys.exit(0 if s.recv(16) == b'hi' else 1)")
    return _probe(ns, code, timeout)


def eventually(probe: Callable[[], bool], want: bool, deadline: float = 15.0) -> bool:
    """Probe until it gives ``want`` (a real agent needs a moment after a change), then
    return the last result (so ``assert eventually(p, True)`` reads as it should)."""
    end = time.monotonic() + deadline
    while True:
        got = probe()
        if got == want or time.monotonic() >= end:
            return got
        time.sleep(0.2)


# --- a NodePort, as kube-proxy would program it ---------------------------------------------

class NodePort:
    """DNAT ``node_ip:port`` (TCP) to ``pod_ip:target`` in the node's namespace, in a table
    of its own (``ip tl-kp-<random>``, priority dstnat); ``close()`` deletes the table."""

    def __init__(self, node_ns: str, node_ip: str, port: int, pod_ip: str, target: int) -> None:
        self.ns = node_ns
        self.table = f"tl-kp-{uuid.uuid4().hex[:8]}"
        script = (f"table ip {self.table} {{\n"
                  f"\tchain pre {{\n"
                  f"\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                  f"\t\tip daddr {node_ip} tcp dport {port} dnat to {pod_ip}:{target}\n"
                  f"\t}}\n}}\n")
        netns.run("ip", "netns", "exec", node_ns, "nft", "-f", "-", input=script)

    def close(self) -> None:
        netns.run("ip", "netns", "exec", self.ns, "nft", "delete", "table", "ip", self.table,
                  check=False)

    def __enter__(self) -> NodePort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the policy agent's job, done from outside ------------------------------------------------

def table_chains(node_ns: str, table: str = TABLE) -> set[str]:
    """Names of the endpoint, policy and profile chains in the node's table."""
    p = netns.run("ip", "netns", "exec", node_ns, "nft", "list", "table", "inet", table,
                  check=False)
    return set(_CHAIN_RE.findall(p.stdout)) if p.returncode == 0 else set()


def _run_in_fabric(lab: Lab, st: LabState, command: str) -> dict[str, list[str]]:
    args = [f"{n.name}={n.netns}" for n in st.nodes.values()]
    p = netns.exec_in(st.fabric, [sys.executable, "-m", "lab.hosts", command, *args],
                      env=st.etcd_env(), capture=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"lab.hosts {command} failed: {p.stderr.strip()}")
    result: dict[str, list[str]] = json.loads(p.stdout)
    return result


def program_nodes(lab: Lab) -> dict[str, list[str]]:
    """Compute and apply every node's policy from the lab's etcd; returns each node's
    endpoint/policy chains."""
    return _run_in_fabric(lab, lab.load(), "program")


def expected_chains(lab: Lab) -> dict[str, list[str]]:
    """The endpoint/policy chains each node's table should have now (nothing applied)."""
    return _run_in_fabric(lab, lab.load(), "expect")


def reset_policy(lab: Lab) -> dict[str, list[str]]:
    """Delete every host endpoint, GlobalNetworkPolicy and FelixConfiguration (one process,
    not one CLI call each); returns each node's expected chains afterwards."""
    return _run_in_fabric(lab, lab.load(), "reset")


def wait_programmed(lab: Lab, deadline: float = 20.0,
                    want_chains: dict[str, list[str]] | None = None) -> None:
    """Wait until every node's table has exactly the chains the datastore calls for."""
    st = lab.load()
    want = {k: set(v) for k, v in (want_chains or expected_chains(lab)).items()}
    end = time.monotonic() + deadline
    while True:
        got = {n.name: table_chains(n.netns) for n in st.nodes.values()}
        if got == want:
            return
        if time.monotonic() >= end:
            diff = {k: {"missing": sorted(want[k] - got[k]), "extra": sorted(got[k] - want[k])}
                    for k in want if want[k] != got[k]}
            raise TimeoutError(f"policy not programmed within {deadline}s: {diff}")
        time.sleep(0.2)


#: What :func:`reset_policy` deletes.
RESET_KINDS = ("globalnetworkpolicies", "hostendpoints", "felixconfigurations")


async def _read_resources(reset: bool = False) -> dict[str, list[Any]]:
    from datastore.etcd_config import EtcdConfig
    from datastore.kinds import by_plural
    from datastore.resources import Resources
    from datastore.store import NotFound, Store

    async with Store(EtcdConfig.load()) as store:
        res = Resources(store)
        if reset:
            for plural in RESET_KINDS:
                info = by_plural(plural)
                for obj in await res.list(info):
                    with contextlib.suppress(NotFound):
                        await res.delete(info, obj.name)
        return {plural: await res.list(by_plural(plural)) for plural in POLICY_KINDS}


def _node_script(resources: dict[str, list[Any]], node: str, node_ns: str) -> str:
    from agentkit.node_metrics import DEFAULT_METRICS_PORT
    from datastore.etcd_config import EtcdConfig
    from policyagent.calc import PolicyCalculator
    from policyagent.hep_resolve import read_interfaces, resolve
    from policyagent.nft_render import render

    # the lab's tortie-node listens on its default metrics address
    calc = PolicyCalculator(node, datastore_ports=EtcdConfig.load().ports,
                            node_ports=(DEFAULT_METRICS_PORT,))
    for plural, objs in resources.items():
        for obj in objs:
            ns = getattr(obj, "namespace", None)
            calc.update(plural, f"{ns}/{obj.name}" if ns else obj.name, obj)
    return render(resolve(calc.model(), read_interfaces(node_ns)), TABLE)


def _main(argv: list[str] | None = None) -> int:
    from policyagent import nft_apply

    parser = argparse.ArgumentParser(prog="python -m lab.hosts")
    parser.add_argument("command", choices=("program", "expect", "reset"))
    parser.add_argument("nodes", nargs="+", metavar="NODE=NETNS")
    args = parser.parse_args(argv)
    resources = asyncio.run(_read_resources(reset=args.command == "reset"))
    out: dict[str, list[str]] = {}
    for item in args.nodes:
        node, _, node_ns = item.partition("=")
        script = _node_script(resources, node, node_ns)
        if args.command == "program":
            nft_apply.apply(script, node_ns)
        out[node] = sorted(set(_CHAIN_RE.findall(script)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

