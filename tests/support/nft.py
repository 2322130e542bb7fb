"""nftables tests' helpers: commands in namespaces, a node with two pods, reading scripts."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

A_IP, B_IP = "10.65.0.1", "10.65.0.2"
SERVER = """
import socket, selectors
sel = selectors.DefaultSelector()
for port in (8080, 8081):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def unique(tag: str) -> str:
    return f"tnft-{tag}-{uuid.uuid4().hex[:8]}"


class Lab:
    """A node namespace with two pods behind it: pa (A_IP) and pb (B_IP, a TCP server on
    8080 and 8081), routed as Tortie routes pods (proxy ARP for 169.254.1.1)."""

    def __init__(self) -> None:
        self.node, self.pa, self.pb = unique("node"), unique("pa"), unique("pb")
        self.server: subprocess.Popen[str] | None = None

    def up(self) -> None:
        for ns in (self.node, self.pa, self.pb):
            sh("ip", "netns", "add", ns)
            nsx(ns, "ip", "link", "set", "lo", "up")
        nsx(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # an uplink with a default route, as a real node has: proxy ARP answers for
        # 169.254.1.1 only when the node has a route to it through another interface
        nsx(self.node, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for link in ("up0", "up1"):
            nsx(self.node, "ip", "link", "set", link, "up")
        nsx(self.node, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        nsx(self.node, "ip", "route", "add", "default", "via", "192.0.2.2", "dev", "up0")
        for iface, pod, ip in (("calia", self.pa, A_IP), ("calib", self.pb, B_IP)):
            nsx(self.node, "ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0",
                "netns", pod)
            nsx(self.node, "sysctl", "-qw", f"net.ipv4.conf.{iface}.proxy_arp=1")
            nsx(self.node, "sysctl", "-qw", f"net.ipv4.neigh.{iface}.proxy_delay=0")
            nsx(self.node, "ip", "link", "set", iface, "up")
            nsx(self.node, "ip", "route", "add", f"{ip}/32", "dev", iface)
            nsx(pod, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
            nsx(pod, "ip", "link", "set", "eth0", "up")
            nsx(pod, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            nsx(pod, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.pb, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None and self.server.stdout.readline() == "ready\n"

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(5)
        for ns in (self.node, self.pa, self.pb):
            sh("ip", "netns", "del", ns, check=False)

    def tcp(self, port: int) -> bool:
        code = (f"import socket; socket.create_connection(('{B_IP}', {port}), timeout=0.7)")
        return nsx(self.pa, sys.executable, "-I", "-S", "-c", code, check=False).returncode == 0

    def ping(self) -> bool:
        return nsx(self.pa, "ping", "-c1", "-W1", B_IP, check=False).returncode == 0


def chain_body(script: str, name: str) -> list[str]:
    m = re.search(rf"\n\tchain {re.escape(name)} {{\n(.*?)\n\t}}", script, re.S)
    assert m, f"no chain {name}"
    return [line.strip() for line in m.group(1).splitlines()]
