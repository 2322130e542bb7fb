"""Small, synchronous helpers over ``ip`` for the lab and the tests: namespaces, links,
addresses, running commands inside a namespace. Not a hot path: clarity over speed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")


class CommandFailed(RuntimeError):
    pass


def run(*cmd: str, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout,
                       check=False)
    if check and p.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    return run(*cmd, check=check).stdout


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str, *, forwarding: bool = False) -> None:
    """A new namespace with ``lo`` up (and IP forwarding on, for nodes and routers)."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)
    if forwarding:
        sysctl(name, "net.ipv4.ip_forward", "1")
        sysctl(name, "net.ipv6.conf.all.forwarding", "1")


def del_netns(name: str) -> None:
    """Delete a namespace if it exists (its links go with it)."""
    if netns_exists(name):
        ip("netns", "del", name, check=False)


def sysctl(ns: str, key: str, value: str) -> None:
    """Write a sysctl inside ``ns`` (/proc/sys/net is per network namespace)."""
    run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


def exec_in(ns: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, capture: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the namespace (as ``ip netns exec`` does)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(["ip", "netns", "exec", ns, *argv], env=full_env, text=True,
                          capture_output=capture, timeout=timeout, input=input, check=False)


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
