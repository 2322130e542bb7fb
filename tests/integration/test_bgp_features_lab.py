"""BGP features on a real lab with BIRD as the ToR: a BGPFilter keeps a block out of BIRD's
table, announcements carry the prefix advertisements' communities, and a prefix learnt
from two BGP speakers becomes one multipath kernel route on a node."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentkit.procs import stop_pid
from lab import bird_peer, netns
from lab.cluster import DEFAULT_POOL_CIDR, Lab, LabState
from routing.bgp.bird import BirdNeighbour
from routing.bgp.speaker import default_exabgp
from tests.support.lab_cli import run_tortie
from tests.support.tools import require_tools
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

ASN = 64512
ANYCAST = "203.0.113.7/32"


@pytest.fixture
def lab_name() -> Iterator[str]:
    require_tools("bird", "exabgp")
    name = f"f{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        Lab(name).down()
        assert netns.list_netns(f"tl-{name}-") == []


def tortie(lab: Lab, st: LabState, *args: str, doc: str | None = None) -> str:
    p = lab.tortie(st, list(args), input=doc)
    assert p.returncode == 0, p.stderr
    return p.stdout


def kernel_route(ns: str, prefix: str) -> str:
    return netns.ip("-4", "route", "show", prefix, ns=ns, check=False)


def lab_with_bird(name: str, nodes: int) -> tuple[Lab, LabState, dict[str, str]]:
    """A lab with one pod per node and BIRD as outside peer; node name -> its block."""
    assert run_tortie("lab", "up", "--name", name, "--nodes", str(nodes)).returncode == 0
    for i in range(1, nodes + 1):
        r = run_tortie("lab", "pod", "add", "--name", name, f"node{i}", f"shop/p{i}")
        assert r.returncode == 0, r.stderr
    r = run_tortie("lab", "peer", "bird", "--name", name)
    assert r.returncode == 0, r.stderr
    lab = Lab(name)
    st = lab.load()
    bird = bird_peer.bird_of(lab)
    until_sync(lambda: len(bird.routes()) == nodes, what="BIRD learns every block",
               timeout=30, interval=0.2)
    by_hop = {nh: p for p, nh in bird.routes().items()}
    return lab, st, {n: by_hop[st.nodes[n].address] for n in st.nodes}


def test_filter_keeps_a_block_from_bird_and_communities_reach_it(lab_name: str) -> None:
    lab, st, blocks = lab_with_bird(lab_name, 2)
    bird = bird_peer.bird_of(lab)
    n1, n2 = st.nodes["node1"], st.nodes["node2"]

    # communities: the pool's CIDR advertised with a named large and a plain community
    patch = ('{"spec": {"communities": [{"name": "big", "value": "64512:300:100"}], '
             f'"prefixAdvertisements": [{{"cidr": "{DEFAULT_POOL_CIDR}", '
             '"communities": ["big", "64512:120"]}]}}')
    p = lab.tortie(st, ["patch", "bgpconfiguration", "default", "-p", patch])
    if p.returncode != 0:  # no default configuration yet
        tortie(lab, st, "apply", "-f", "-", doc=(
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n"
            "  name: default\nspec:\n  communities:\n  - name: big\n    value: 64512:300:100\n"
            f"  prefixAdvertisements:\n  - cidr: {DEFAULT_POOL_CIDR}\n    communities:\n"
            "    - big\n    - 64512:120\n"))

    def with_communities() -> bool:
        text = bird.cli("show", "route", "all")
        std = re.findall(r"BGP\.community:\s*\(64512,\s*120\)", text)
        large = re.findall(r"BGP\.large_community:\s*\(64512,\s*300,\s*100\)", text)
        return len(std) == 2 and len(large) == 2
    until_sync(with_communities, what="both blocks carry the communities in BIRD", timeout=30,
               interval=0.2)

    # a BGPFilter on the ToR peering rejects node2's block; the mesh keeps it
    tortie(lab, st, "apply", "-f", "-", doc=(
        "apiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata:\n  name: no-node2\n"
        f"spec:\n  exportV4:\n  - action: Reject\n    matchOperator: Equal\n"
        f"    cidr: {blocks['node2']}\n"))
    tortie(lab, st, "patch", "bgppeer", bird_peer.PEER_NAME, "-p",
           '{"spec": {"filters": ["no-node2"]}}')
    until_sync(lambda: bird.routes() == {blocks["node1"]: n1.address},
               what="BIRD loses node2's block, keeps node1's", timeout=30, interval=0.2)
    assert n2.address in kernel_route(n1.netns, blocks["node2"])  # mesh unaffected
    text = bird.cli("show", "route", "all")
    assert blocks["node2"] not in text

    # the filter off again: the block is back
    tortie(lab, st, "patch", "bgppeer", bird_peer.PEER_NAME, "-p", '{"spec": {"filters": []}}')
    until_sync(lambda: bird.routes() == {blocks["node1"]: n1.address,
                                         blocks["node2"]: n2.address},
               what="node2's block is back in BIRD", timeout=30, interval=0.2)


def _speaker_config(me: str, peers: list[tuple[str, int]]) -> str:
    out = []
    for address, asn in peers:
        out.append(
            f"neighbor {address} {{\n    router-id {me};\n    local-address {me};\n"
            f"    local-as {ASN};\n    peer-as {asn};\n    hold-time 30;\n"
            "    family { ipv4 unicast; }\n"
            f"    static {{ route {ANYCAST} next-hop {me}; }}\n}}\n")
    return "".join(out)


def test_ecmp_prefix_from_two_speakers(lab_name: str) -> None:
    """Two more BGP speakers (ExaBGP, with Node resources so that the lab's nodes mesh with
    them) announce one /32; node1 installs one route with both next hops, and BIRD (which
    peers with them too) shows both paths."""
    lab, st, _ = lab_with_bird(lab_name, 2)
    bird = bird_peer.bird_of(lab)
    n1 = st.nodes["node1"]
    exabgp = default_exabgp()
    speakers = {"any1": "192.0.2.201", "any2": "192.0.2.202"}
    procs: list[subprocess.Popen[bytes]] = []
    run_dir = Path(lab.dir) / "anycast"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name, address in speakers.items():
            ns = f"tl-{lab_name}-{name}"
            netns.add_netns(ns)
            netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", name,
                     "netns", st.fabric)
            netns.ip("link", "set", name, "master", "br0", "up", ns=st.fabric)
            netns.ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            netns.ip("link", "set", "eth0", "up", ns=ns)
            tortie(lab, st, "apply", "-f", "-", doc=(
                f"apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\n"
                f"spec:\n  bgp:\n    ipv4Address: {address}/24\n"))
            peers = [(node.address, ASN) for node in st.nodes.values()]
            peers.append((bird_peer.BIRD_IP, bird_peer.OUTSIDE_ASN))
            conf = run_dir / f"{name}.conf"
            conf.write_text(_speaker_config(address, peers))
            log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, exabgp, str(conf)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "exabgp_daemon_user": "root",
                     "exabgp_daemon_daemonize": "false", "exabgp_log_destination": "stdout"})
            log.close()
            procs.append(proc)
        bird.reconfigure([*bird.neighbours, *(BirdNeighbour(a, ASN) for a in speakers.values())])

        def multipath() -> bool:
            text = kernel_route(n1.netns, ANYCAST)
            return all(f"nexthop via {a} " in text for a in speakers.values())
        until_sync(multipath, what="node1 has one route with both next hops", timeout=40,
                   interval=0.2)
        text = kernel_route(n1.netns, ANYCAST)
        assert text.count("nexthop via") == 2 and "proto 80" in text, text

        def bird_paths() -> list[str]:
            out = bird.cli("show", "route", "for", ANYCAST.split("/")[0], "all")
            return sorted(set(re.findall(r"BGP\.next_hop:\s*(\S+)", out)))
        until_sync(lambda: bird_paths() == sorted(speakers.values()),
                   what="BIRD holds both paths", timeout=30, interval=0.2)

        # one speaker stops: node1 falls back to a single-path route through the other
        first = procs.pop(0)
        stop_pid(first.pid)
        first.wait(timeout=5)
        until_sync(lambda: "nexthop" not in kernel_route(n1.netns, ANYCAST)
                   and f"via {speakers['any2']}" in kernel_route(n1.netns, ANYCAST),
                   what="a single path remains", timeout=60, interval=0.2)
    finally:
        for proc in procs:
            stop_pid(proc.pid)
            proc.wait(timeout=5)
