"""The dual-stack lab of the dual-stack acceptance tests (``tortie lab up --dual-stack``):
3 nodes with one pod each (``default/p1`` on node1 ...), brought up, waited for and always
taken down; and the helpers that read its pods' addresses and the nodes' IPv6 routes.
Used by tests/integration/test_dual_stack_lab.py and test_dual_stack_vxlan_lab.py."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from lab import netns
from lab.cluster import Lab, LabState
from routing.kernel import PROTO
from tests.support.tools import require_tools
from tests.support.wait import until_sync

#: the lab's IPv6 pool's block size
BLOCK6 = 122
#: how long a new lab may take to route every pod block
CONVERGE = 40.0
NODES = 3


def v4(st: LabState, pod: str) -> str:
    return next(ip for ip in st.pods[pod].ips if ":" not in ip)


def v6(st: LabState, pod: str) -> str:
    return next(ip for ip in st.pods[pod].ips if ":" in ip)


def block6(ip: str) -> str:
    """The IPv6 block an address of the lab's IPv6 pool is in."""
    return str(ipaddress.ip_network(f"{ip}/{BLOCK6}", strict=False))


def routes6(ns: str) -> dict[str, dict[str, Any]]:
    """The node's IPv6 routes of Tortie's protocol, by destination."""
    out = netns.ip("-6", "-j", "route", "show", "proto", str(PROTO), ns=ns)
    return {r["dst"]: r for r in json.loads(out or "[]")}


def node_docs(lab: Lab, st: LabState) -> dict[str, dict[str, Any]]:
    """The lab's Node resources (``tortie get nodes -o json``), by name."""
    r = lab.tortie(st, ["get", "nodes", "-o", "json"])
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    items = docs["items"] if isinstance(docs, dict) and "items" in docs else docs
    return {d["metadata"]["name"]: d for d in items}


def ping(st: LabState, src: str, dst_ip: str) -> bool:
    """One ping from pod ``src`` to ``dst_ip`` (IPv4 or IPv6) answered."""
    argv = ["ping", "-6" if ":" in dst_ip else "-4", "-c", "1", "-W", "2", dst_ip]
    return netns.exec_in(st.pods[src].netns, argv, capture=True, timeout=30).returncode == 0


@contextlib.contextmanager
def dual_stack_lab(prefix: str, ready: Callable[[LabState], bool], what: str, *,
                   subnets: int = 1, encap: str | None = None,
                   tools: tuple[str, ...] = ("ping",)) -> Iterator[tuple[Lab, LabState]]:
    """A dual-stack lab named ``<prefix><random>`` with a pod per node, once ``ready``
    (``what`` names it in the timeout error); it goes down, and leaves no namespace, also
    when bringing it up or a test fails."""
    require_tools(*tools)
    lab = Lab(f"{prefix}{uuid.uuid4().hex[:7]}")
    try:
        lab.up(NODES, subnets=subnets, encap=encap, dual_stack=True)
        for i in range(1, NODES + 1):
            lab.pod_add(f"node{i}", f"default/p{i}")
        st = lab.load()
        until_sync(lambda: ready(st), CONVERGE, what, interval=0.2)
        yield lab, st
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{lab.name}-") == []
