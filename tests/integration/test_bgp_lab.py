"""BGP acceptance on a real lab: BIRD as an outside peer learns every block with
the right next hop; with the mesh off and BIRD as route reflector pods still reach each
other; restarting a node's tortie-node keeps the routes on its peer."""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from lab import bird_peer, netns
from lab.cluster import Lab
from tests.support.lab_cli import run_tortie
from tests.support.tools import require_tools
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration


@pytest.fixture
def lab_name() -> Iterator[str]:
    require_tools("bird")
    name = f"b{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        Lab(name).down()
        assert netns.list_netns(f"tl-{name}-") == []


def node_status(lab: str, node: str) -> str:
    r = run_tortie("lab", "exec", "--name", lab, "--node", node, "--", sys.executable, "-m",
               "ctl.main", "node", "status")
    assert r.returncode == 0, r.stderr
    return r.stdout


def kernel_route(ns: str, prefix: str) -> str:
    return netns.ip("-4", "route", "show", prefix, ns=ns, check=False).strip()


def test_bird_outside_then_route_reflector_then_restart(lab_name: str) -> None:
    assert run_tortie("lab", "up", "--name", lab_name, "--nodes", "2").returncode == 0
    for node, ref in (("node1", "shop/a"), ("node2", "shop/b")):
        r = run_tortie("lab", "pod", "add", "--name", lab_name, node, ref)
        assert r.returncode == 0, r.stderr
    lab = Lab(lab_name)
    st = lab.load()
    n1, n2 = st.nodes["node1"], st.nodes["node2"]
    ip_a, ip_b = st.pods["shop/a"].ips[0], st.pods["shop/b"].ips[0]

    # 1. BIRD outside the cluster learns each node's block via that node
    r = run_tortie("lab", "peer", "bird", "--name", lab_name)
    assert r.returncode == 0, r.stderr
    bird = bird_peer.bird_of(lab)

    def blocks() -> dict[str, str]:
        return bird.routes()

    until_sync(lambda: len(blocks()) == 2, what="BIRD learns both blocks", timeout=20, interval=0.1)
    got = blocks()
    by_hop = {nh: p for p, nh in got.items()}
    assert set(by_hop) == {n1.address, n2.address}
    assert ip_a.split("/")[0] in _hosts(by_hop[n1.address])
    assert ip_b.split("/")[0] in _hosts(by_hop[n2.address])
    text = node_status(lab_name, "node1")
    assert "192.0.2.2" in text and "global" in text and "node-to-node mesh" in text

    # 2. mesh off, BIRD reflects: pods on different nodes still reach each other
    assert run_tortie("lab", "peer", "bird", "--name", lab_name, "--remove").returncode == 0
    r = run_tortie("lab", "peer", "bird", "--name", lab_name, "--route-reflector")
    assert r.returncode == 0, r.stderr

    def only_rr() -> bool:
        text = node_status(lab_name, "node1")
        return "node-to-node mesh" not in text and "| up " in text
    until_sync(only_rr, what="node1 peers only with the reflector", timeout=20, interval=0.1)
    until_sync(lambda: n2.address in kernel_route(n1.netns, by_hop[n2.address]),
               what="node1 routes node2's block via node2", timeout=20, interval=0.1)
    r = run_tortie("lab", "exec", "--name", lab_name, "shop/a", "--", "ping", "-c", "2", "-W", "2",
               ip_b.split("/")[0])
    assert r.returncode == 0, r.stdout + r.stderr

    # 3. graceful restart: node2's tortie-node (and its ExaBGP) restarts; node1 keeps the
    # route to node2's block the whole time
    block = by_hop[n2.address]
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(kernel_route(n1.netns, block))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    try:
        lab.restart_node("node2")
        time.sleep(3)
    finally:
        stop.set()
        t.join()
    assert seen and all(n2.address in s for s in seen), [s for s in seen if n2.address not in s]
    r = run_tortie("lab", "exec", "--name", lab_name, "shop/a", "--", "ping", "-c", "1", "-W", "2",
               ip_b.split("/")[0])
    assert r.returncode == 0, r.stdout + r.stderr


def _hosts(prefix: str) -> set[str]:
    return {str(h) for h in ipaddress.ip_network(prefix)}
