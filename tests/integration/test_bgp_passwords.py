"""BGP passwords from Secrets, end to end on a node: the routing agent (real etcd, ExaBGP in a
network namespace) peers with a real BIRD that requires TCP-MD5, the password coming from the
copy tortie-kube-controllers keeps under ``/tortie/secrets/v3/bgp/`` (datastore/bgp_secrets.py).

* no copy of the Secret: the peering is held back (no session, no connection without the
  password), a log line and ``tortie_routing_bgp_password_missing`` name peer and Secret;
* a wrong password: the peering is configured and never Established; the kernel counts the
  rejected MD5 segments (``TcpExtTCPMD5Failure``), which the agent exports
  (``tortie_routing_tcp_md5_failures``) and logs naming the peers that are down;
* the Secret's value changed to the right password: the agent reconfigures the peer, the
  session is Established and BIRD learns the node's block.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry, value
from agentkit.procs import stop_pid
from datastore import bgp_secrets
from datastore.kinds import by_plural
from datastore.model_bgp import BGPPeer
from datastore.model_network import IPPool, Node
from datastore.resources import Resources
from datastore.store import Store
from ipam.allocator import IPAM
from lab import netns
from lab.bridge_net import BridgeNet
from routing.agent import RoutingAgent
from routing.bgp.bird import BirdNeighbour, BirdPeer
from routing.bgp.speaker import ExaBGPSpeaker
from tests.support.tools import require_tools, tools
from tests.support.wait import until

pytestmark = [pytest.mark.integration, tools("root")]

ASN = 64512
BIRD_ASN = 65001
SECRET = "bgp-passwords"
TCP_MD5SIG = 14  # linux/tcp.h


def md5_problem() -> str | None:
    """Why TCP-MD5 cannot be used on this kernel (setsockopt TCP_MD5SIG refused), or None."""
    sa = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0)
          + socket.inet_aton("127.0.0.1")).ljust(128, b"\0")
    key = b"probe"
    opt = sa + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(80, b"\0")
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, opt)
        except OSError as e:
            return f"setsockopt(TCP_MD5SIG) refused: {e} (kernel without CONFIG_TCP_MD5SIG?)"
    return None


def md5_failures(ns: str) -> int:
    """The kernel's count of TCP segments dropped for a wrong / missing MD5 signature."""
    text = netns.exec_in(ns, ["cat", "/proc/net/netstat"], capture=True).stdout.splitlines()
    for head, vals in zip(text[::2], text[1::2], strict=False):
        if head.startswith("TcpExt:"):
            fields = dict(zip(head.split()[1:], vals.split()[1:], strict=False))
            return int(fields.get("TCPMD5Failure", 0))
    return 0


@pytest.fixture
def bed() -> Iterator[BridgeNet]:
    require_tools("exabgp", "bird")
    problem = md5_problem()
    if problem:
        pytest.skip(problem)
    with BridgeNet(f"tp{secrets.token_hex(3)}-") as net:
        yield net


def bgp_peer(address: str) -> BGPPeer:
    return BGPPeer.from_dict({"metadata": {"name": "bird"}, "spec": {
        "peerIP": address, "asNumber": BIRD_ASN,
        "password": {"secretKeyRef": {"name": SECRET, "key": "bird"}}}})


async def put_secret(store: Store, password: str) -> None:
    await store.put(bgp_secrets.secret_key(SECRET),
                    bgp_secrets.document("kube-system", {"bird": password}, {"bird"}))


async def test_password_from_secret_copy(store: Store, bed: BridgeNet, scratch_dir: Path,
                                         caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="tortie.routing")
    monkeypatch.setattr("routing.agent.RESYNC_INTERVAL", 1.0)  # the MD5 check runs per sync
    node_ns, node_ip = bed.add(1, forwarding=True)
    bird_ns, bird_ip = bed.add(9)
    bird = BirdPeer(scratch_dir / "bird", netns=bird_ns, router_id=bird_ip, asn=BIRD_ASN,
                    bird=shutil.which("bird") or "/usr/sbin/bird",
                    peers=[BirdNeighbour(node_ip, ASN, "s3cret")])
    res = Resources(store)
    await res.create(by_plural("nodes"), Node.from_dict(
        {"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4Address": f"{node_ip}/24"}}}))
    pool = await res.create(by_plural("ippools"), IPPool.from_dict(
        {"metadata": {"name": "p"}, "spec": {"cidr": "10.66.0.0/24", "blockSize": 26}}))
    await IPAM(store, "n1").auto_assign(f"tortie.{uuid.uuid4().hex}", {"node": "n1"}, [pool], 1)
    await res.create(by_plural("bgppeers"), bgp_peer(bird_ip))
    ctx = NodeContext("n1", store, res, new_registry(), argparse.Namespace())
    speaker = ExaBGPSpeaker(scratch_dir / "exabgp", netns=node_ns, eor_timeout=2.0)
    agent = RoutingAgent(ctx, speaker, netns=node_ns, startup_grace=0)
    bird.start()
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 20)

        # 1. no copy of the Secret: held back, reported, never connected
        labels = {"peer": "BGPPeer bird", "secret": SECRET, "key": "bird"}
        await until(lambda: value(agent.m_missing_password, **labels) == 1,
                    what="the missing password metric", timeout=10)
        held = [r for r in caplog.records if "held back" in r.getMessage()]
        assert held, "no log line about the held-back peering"
        fields = held[0].__dict__["fields"]
        assert (fields["peer"], fields["secret"], fields["key"]) == (
            "BGPPeer bird", SECRET, "bird")
        assert "secret not found" in fields["problem"]
        assert agent.health()["bgp_password_missing"][0]["secret"] == SECRET
        assert bird_ip not in {p.address for p in speaker.status()}
        assert bird_ip not in speaker.config_path.read_text()
        await asyncio.sleep(2)
        assert bird.routes() == {} and bird.protocols()[node_ip] != "Established"

        # 2. a wrong password: configured, never Established; the kernel says why
        await put_secret(store, "wrong")
        await until(lambda: bird_ip in {p.address for p in speaker.status()},
                    what="the peer configured with the wrong password", timeout=15)
        assert value(agent.m_missing_password, **labels) == 0
        assert 'md5-password "wrong"' in speaker.config_path.read_text()
        await until(lambda: md5_failures(bird_ns) + md5_failures(node_ns) > 0,
                    what="segments dropped for a bad MD5 signature", timeout=15,
                    in_thread=True)
        # the node's own drops: the metric, and a log line naming the peer
        await until(lambda: value(agent.m_md5_failures) > 0,
                    what="tortie_routing_tcp_md5_failures", timeout=15)

        def md5_logged() -> bool:
            return any("TCP-MD5 signatures rejected" in r.getMessage()
                       and bird_ip in r.__dict__["fields"]["peers"] for r in caplog.records)
        await until(md5_logged, what="a log line naming the peer whose password differs",
                    timeout=15)
        await asyncio.sleep(3)
        state = next(p.state for p in speaker.status() if p.address == bird_ip)
        assert state != "Established" and bird.routes() == {}

        # 3. the Secret's value changed to the right one: reconfigured, Established, learnt
        await put_secret(store, "s3cret")
        await until(lambda: bird.routes() == {"10.66.0.0/26": node_ip},
                    what="BIRD learns the node's block over the MD5 session", timeout=30)
        assert bird.protocols()[node_ip] == "Established"
        assert next(p.state for p in speaker.status() if p.address == bird_ip) == "Established"
        assert "bgp_password_missing" not in agent.health()

        # 4. the copy removed (Secret deleted / no longer referenced): held back again, the
        # session goes (BIRD may keep the routes as stale for the graceful restart time) and
        # nothing connects without the password
        await store.delete(bgp_secrets.secret_key(SECRET))
        await until(lambda: value(agent.m_missing_password, **labels) == 1,
                    what="the missing password reported again", timeout=10)
        await until(lambda: bird.protocols()[node_ip] != "Established",
                    what="BIRD loses the session", timeout=30, in_thread=True)
        assert bird_ip not in speaker.config_path.read_text()
        await asyncio.sleep(3)
        assert bird.protocols()[node_ip] != "Established"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        pid = speaker.pid
        with contextlib.suppress(Exception):
            await speaker.close(graceful=False)
        stop_pid(pid or 0)
        bird.stop()
