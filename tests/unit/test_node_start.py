"""tortie-node's start (node/main.py): the node address is resolved once, and that one
answer serves both the underlay MTU detection and the first Node registration; later
registrations resolve it again.

The daemon runs in-process on the datastore and dataplane twins (MemoryStore,
MemoryDataplane), without agents, its CNI socket in a scratch directory and its HTTP routes
on a free loopback port.  The resolver is a counting twin of node/autodetect.py's
NodeAddress (which reads the kernel)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agentkit.metrics import value
from cni.dataplane import MemoryDataplane
from datastore.etcd_config import EtcdConfig
from datastore.kinds import by_plural
from datastore.memory import MemoryStore
from datastore.model_network import Node
from datastore.resources import Resources
from node.autodetect import internal_ips
from node.main import NodeDaemon, parse_args
from tests.support.wait import until

NODE = "n1"
_NODE = by_plural("nodes")


class CountingResolver:
    """Answers ``address``, counting each question; with ``from_node`` the answer is the
    Node document's InternalIP instead (pending without one), as kubernetes-internal-ip."""

    def __init__(self, address: str, *, from_node: bool = False) -> None:
        self.address = address
        self.from_node = from_node
        self.pending = False
        self.asked: list[dict[str, Any] | None] = []  # the node document of each question

    def resolve(self, node_doc: dict[str, Any] | None) -> str | None:
        self.asked.append(node_doc)
        if not self.from_node:
            return self.address
        ips = internal_ips(node_doc)
        self.pending = not ips
        return f"{ips[0]}/24" if ips else None


class Started:
    """A running daemon and what it runs on."""

    def __init__(self, scratch: Path, resolver: CountingResolver, store: MemoryStore) -> None:
        args = parse_args(["--node-name", NODE, "--socket", str(scratch / "cni.sock"),
                           "--metrics-port", "0", "--no-routing", "--no-policy"])
        self.store = store
        self.dataplane = MemoryDataplane(mtu=1440)
        self.daemon = NodeDaemon(args, EtcdConfig(), store=store, address=resolver,
                                 dataplane=self.dataplane)
        self.task = asyncio.create_task(self.daemon.run())

    async def registered(self) -> Node:
        await until(lambda: self.task.done() or value(self.daemon.m_registered) == 1,
                    what="the Node registered")
        assert not self.task.done(), self.task
        node: Node = await Resources(self.store).get(_NODE, NODE)
        return node

    async def stop(self) -> None:
        self.daemon._stop.set()
        assert await asyncio.wait_for(self.task, 30) == 0


async def test_the_address_is_resolved_once_for_the_underlay_and_the_registration(
        scratch_dir: Path) -> None:
    resolver = CountingResolver("192.0.2.5/24")
    started = Started(scratch_dir, resolver, MemoryStore())
    try:
        node = await started.registered()
        assert resolver.asked == [None]  # one resolution at start, before any Node document
        assert node.spec.bgp is not None and node.spec.bgp.ipv4Address == "192.0.2.5/24"
        assert started.daemon.handler.underlay_mtu == 1440
        # a later registration (the periodic resync) resolves again, with the Node document
        resolver.address = "192.0.2.6/24"
        started.daemon._resync.set()
        await until(lambda: len(resolver.asked) == 2, what="the resync's resolution")
        seen = resolver.asked[1]
        assert seen is not None and seen["metadata"]["name"] == NODE

        async def moved() -> bool:
            node = await Resources(started.store).get(_NODE, NODE)
            return node.spec.bgp is not None and node.spec.bgp.ipv4Address == "192.0.2.6/24"

        await until(moved, what="the moved address written")
    finally:
        await started.stop()
    assert len(resolver.asked) == 2


async def test_an_address_waiting_for_the_node_document_is_resolved_again_with_it(
        scratch_dir: Path) -> None:
    store = MemoryStore()
    await Resources(store).create(_NODE, Node.from_dict({
        "metadata": {"name": NODE},
        "spec": {"addresses": [{"address": "192.0.2.7", "type": "InternalIP"}]}}))
    resolver = CountingResolver("", from_node=True)
    started = Started(scratch_dir, resolver, store)
    try:
        node = await started.registered()
    finally:
        await started.stop()
    # at start (no document: pending, the underlay falls back), then the first registration
    # with the document, which has the InternalIP
    assert len(resolver.asked) == 2
    assert resolver.asked[0] is None and resolver.asked[1] is not None
    assert not resolver.pending
    assert node.spec.bgp is not None and node.spec.bgp.ipv4Address == "192.0.2.7/24"
