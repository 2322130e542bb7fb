"""/readiness and /liveness of a real tortie-node (policy agent, routing agent with ExaBGP)
against a real etcd in its namespace (tests/support/node_ns.py): not ready while etcd is
frozen or down or a configured BGP session is not established, ready again after; live all
along (a datastore outage is no reason to restart the daemon)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.node_ns import GATEWAY_A, NodeNs, node_ns
from tests.support.tools import tools
from tests.support.wait import until_sync

pytestmark = [pytest.mark.integration, tools("root", "ip", "etcd", "nft", "exabgp")]

#: the datastore probe runs every 2 s with a 2 s bound: 503 within a few seconds
FLIP = 20.0


@pytest.fixture
def node() -> Iterator[NodeNs]:
    with node_ns() as n:
        n.start("--bgp-hold-time", "9")
        yield n


def readiness(node: NodeNs) -> tuple[int, Any]:
    return node.http_get("/readiness")


def ready(node: NodeNs) -> Any:
    status, body = readiness(node)
    return body if status == 200 else None


def not_ready_because(node: NodeNs, words: str) -> Any:
    status, body = readiness(node)
    if status == 503 and any(words in r for r in body.get("reasons", [])):
        return body
    return None


def test_readiness_follows_the_datastore(node: NodeNs) -> None:
    body = until_sync(lambda: ready(node), 60, "ready after start")
    assert body["status"] == "ready" and body["datastore"] == "up"
    assert body["agents"]["policy"]["ready"] and body["agents"]["routing"]["ready"]
    assert node.http_get("/liveness")[0] == 200
    pid = node.etcd.pid
    os.kill(pid, signal.SIGSTOP)  # a frozen etcd: connections stay open, nothing answers
    try:
        body = until_sync(lambda: not_ready_because(node, "datastore unreachable"), FLIP,
                          "not ready while etcd is frozen")
        assert body["datastore"] == "down"
        status, live = node.http_get("/liveness")
        assert status == 200 and live["status"] == "live", live
    finally:
        os.kill(pid, signal.SIGCONT)
    until_sync(lambda: ready(node), FLIP, "ready again after etcd thawed")
    node.etcd.stop()  # etcd gone: connections refused
    until_sync(lambda: not_ready_because(node, "datastore unreachable"), FLIP,
               "not ready while etcd is down")
    assert node.http_get("/liveness")[0] == 200
    node.etcd.start()
    until_sync(lambda: ready(node), 60, "ready again after etcd restarted")


def test_readiness_waits_for_every_bgp_session(node: NodeNs) -> None:
    until_sync(lambda: ready(node), 60, "ready after start")
    # a peer that never answers (the gateway's address is on no device of the namespace)
    p = node.tortie("apply", "-f", "-", stdin=f"""
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: silent
spec:
  node: {node.name}
  peerIP: {GATEWAY_A}
  asNumber: 64513
""")
    assert p.returncode == 0, p.stderr
    body = until_sync(lambda: not_ready_because(node, "BGP sessions not established"), 30,
                      "not ready while the BGP session is down")
    assert GATEWAY_A in body["agents"]["routing"]["bgp"]
    assert node.http_get("/liveness")[0] == 200
    p = node.tortie("delete", "bgppeer", "silent")
    assert p.returncode == 0, p.stderr
    until_sync(lambda: ready(node), 30, "ready again without the peer")
