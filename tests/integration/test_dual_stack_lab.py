"""Dual-stack routing acceptance on a real lab (``tortie lab up --dual-stack``): 3 nodes on
one subnet with an IPv6 underlay, an IPv4 and an IPv6 pool, real ExaBGP in every node and a
real BIRD outside the cluster.

* every node's Node resource has the IPv6 address tortie-node autodetected;
* every pod reaches every pod over IPv4 and IPv6 (ping and a TCP connect);
* each node has a blackhole for its own /122 and a protocol-80 route to every other node's
  /122 via that node's IPv6 address, learnt over BGP (MP-BGP on the IPv4 sessions);
* BIRD learns the IPv6 blocks with the nodes' IPv6 next hops and reaches the pods;
* ``ip6 tortie-nat`` masquerades the natOutgoing IPv6 pool; ``tortie ipam show`` /
  ``ipam check`` and ``tortie node status`` cover IPv6;
* a node that dies is withdrawn: the others remove its IPv6 block routes.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab import bird_peer, netns, underlay
from lab.cluster import LAB_BGP_HOLD_TIME, Lab, LabState
from tests.support.dual_stack_lab import (
    block6,
    dual_stack_lab,
    node_docs,
    ping,
    routes6,
    v4,
    v6,
)
from tests.support.lab_cli import run_tortie
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration


def converged(st: LabState) -> bool:
    """Every node has a route to every other node's IPv6 pod block."""
    blocks = {p.node: block6(v6(st, ref)) for ref, p in st.pods.items()}
    for name, node in st.nodes.items():
        have = routes6(node.netns)
        if any(b not in have for n, b in blocks.items() if n != name):
            return False
    return True


@pytest.fixture(scope="module")
def dual() -> Iterator[tuple[Lab, LabState]]:
    with dual_stack_lab("d", converged, "IPv6 routes to every pod block",
                        tools=("bird", "ping")) as lab_st:
        yield lab_st


SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7007)); s.listen(8); print("ready", flush=True)
while True:
    c, a = s.accept(); c.sendall(b"hello " + a[0].encode()); c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7007), timeout=3)
print(c.recv(100).decode())
"""


def test_pods_have_both_families_and_nodes_their_ipv6_address(
        dual: tuple[Lab, LabState]) -> None:
    lab, st = dual
    for ref in st.pods:
        assert ipaddress.ip_address(v6(st, ref)) in ipaddress.ip_network(st.pool6_cidr)
        assert ipaddress.ip_address(v4(st, ref)) in ipaddress.ip_network(st.pool_cidr)
    got = {name: d["spec"]["bgp"].get("ipv6Address") for name, d in node_docs(lab, st).items()}
    assert got == {n.name: f"{n.address6}/64" for n in st.nodes.values()}
    # `tortie lab status` names both addresses of every node
    r = run_tortie("lab", "status", "--name", lab.name)
    assert r.returncode == 0, r.stderr
    for n in st.nodes.values():
        assert f" {n.address} " in r.stdout and f" {n.address6} netns {n.netns} " in r.stdout


def test_every_pod_reaches_every_pod_over_ipv4_and_ipv6(dual: tuple[Lab, LabState]) -> None:
    _, st = dual
    failed = [(s, d, ip) for s in st.pods for d in st.pods if s != d
              for ip in (v4(st, d), v6(st, d)) if not ping(st, s, ip)]
    assert failed == []


def test_tcp_connect_over_ipv6_between_nodes(dual: tuple[Lab, LabState]) -> None:
    _, st = dual
    server = subprocess.Popen(["ip", "netns", "exec", st.pods["default/p3"].netns,
                               sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for src in ("default/p1", "default/p2"):
            p = netns.exec_in(st.pods[src].netns,
                              [sys.executable, "-c", CLIENT, v6(st, "default/p3")],
                              capture=True, timeout=20)
            assert p.returncode == 0, p.stderr
            # the server saw the pod's own address: pod to pod is never masqueraded
            assert p.stdout.strip() == f"hello {v6(st, src)}"
    finally:
        server.kill()
        server.wait()


def test_ipv6_routes_blackholes_and_next_hops(dual: tuple[Lab, LabState]) -> None:
    _, st = dual
    owner = {block6(v6(st, ref)): st.nodes[p.node] for ref, p in st.pods.items()}
    for name, node in st.nodes.items():
        have = routes6(node.netns)
        for block, o in owner.items():
            r = have[block]
            if o.name == name:
                assert r.get("type") == "blackhole", r
            else:
                assert r.get("gateway") == o.address6 and r.get("dev") == "eth0", r


def test_bird_learns_the_ipv6_blocks(dual: tuple[Lab, LabState]) -> None:
    lab, st = dual
    bird_peer.add_bird(lab)
    bird = bird_peer.bird_of(lab)
    want = {block6(v6(st, ref)): st.nodes[p.node].address6 for ref, p in st.pods.items()}

    def learnt() -> dict[str, str]:
        return {p: nh for p, nh in bird.routes().items() if ":" in p}

    until_sync(lambda: learnt() == want, 30, "BIRD learns every IPv6 block", interval=0.2)
    until_sync(lambda: set(bird.kernel_routes(6)) >= set(want), 10,
               "BIRD installs the IPv6 blocks", interval=0.2)
    assert bird.kernel_routes(6)[block6(v6(st, "default/p1"))] == st.nodes["node1"].address6
    # the outside router reaches a pod through the node that owns its block
    p = netns.exec_in(bird.netns, ["ping", "-6", "-c", "1", "-W", "2", v6(st, "default/p2")],
                      capture=True, timeout=20)
    assert p.returncode == 0, p.stdout


def test_ipv6_outgoing_nat_table(dual: tuple[Lab, LabState]) -> None:
    _, st = dual
    text = netns.exec_in(st.nodes["node1"].netns, ["nft", "list", "table", "ip6", "tortie-nat"],
                         capture=True, timeout=10)
    assert text.returncode == 0, text.stderr
    assert st.pool6_cidr in text.stdout and "masquerade" in text.stdout
    # nodes are never masqueraded to (the set auto-merges neighbours into ranges: ask nft)
    for i in (1, 2, 3):
        got = netns.exec_in(st.nodes["node1"].netns, [
            "nft", "get", "element", "ip6", "tortie-nat", "no-masq",
            f"{{ {underlay.node_address6(i, 0)} }}"], capture=True, timeout=10)
        assert got.returncode == 0, got.stderr
    outside = netns.exec_in(st.nodes["node1"].netns, [
        "nft", "get", "element", "ip6", "tortie-nat", "no-masq", "{ 2001:db8:ff::1 }"],
        capture=True, timeout=10)
    assert outside.returncode != 0


def test_ipam_show_check_and_node_status_cover_ipv6(dual: tuple[Lab, LabState]) -> None:
    lab, st = dual
    r = lab.tortie(st, ["ipam", "show", "--show-blocks"])
    assert r.returncode == 0, r.stderr
    assert st.pool6_cidr in r.stdout
    for ref in st.pods:
        assert block6(v6(st, ref)) in r.stdout
    r = lab.tortie(st, ["ipam", "check"])
    assert r.returncode == 0 and "IPAM is consistent" in r.stdout, r.stdout + r.stderr
    r = run_tortie("lab", "exec", "--name", lab.name, "--node", "node1", "--", sys.executable,
                   "-m", "ctl.main", "node", "status")
    assert r.returncode == 0, r.stderr
    v6_part = r.stdout[r.stdout.index("IPv6 BGP status"):]
    assert "ride the IPv4 sessions" in v6_part
    assert "IPv6 routes: 1 announced, 2 learnt" in v6_part, r.stdout


def test_a_dead_node_is_withdrawn(dual: tuple[Lab, LabState]) -> None:
    lab, st = dual
    gone = block6(v6(st, "default/p3"))
    lab.kill_node("node3")
    deadline = 3 * LAB_BGP_HOLD_TIME + 10
    start = time.monotonic()
    until_sync(lambda: all(gone not in routes6(st.nodes[n].netns) for n in ("node1", "node2")),
               deadline, "node3's IPv6 block leaves the other nodes", interval=0.2)
    assert time.monotonic() - start < deadline
    assert block6(v6(st, "default/p2")) in routes6(st.nodes["node1"].netns)
