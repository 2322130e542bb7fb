"""The routing agent on the real datastore and kernel, without BGP (``--no-bgp``): owned
blocks become blackholes, VXLAN pools get the node a VTEP (address from its block, MAC,
both in its Node resource) and FDB entries for the other nodes, natOutgoing gets its table;
switching VXLAN off releases the VTEP; an emptied block's blackhole goes; close() leaves
the kernel as it is."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry
from datastore.kinds import by_plural
from datastore.model_network import IPPool, Node
from datastore.resources import Resources
from datastore.store import Store
from ipam.allocator import IPAM
from lab import netns
from routing.agent import RoutingAgent
from routing.desired import VXLAN_DEVICE
from routing.kernel import KernelRoutes
from routing.vxlan import VXLANDevice
from tests.support.wait import until

pytestmark = pytest.mark.integration

NODES, POOLS = by_plural("nodes"), by_plural("ippools")


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"tra-{uuid.uuid4().hex[:8]}"
    try:
        netns.add_netns(name, forwarding=True)
        netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=name)
        netns.ip("addr", "add", "192.0.2.11/24", "dev", "eth0", ns=name)
        netns.ip("link", "set", "eth0", "up", ns=name)
        netns.ip("link", "set", "peer0", "up", ns=name)
        yield name
    finally:
        netns.del_netns(name)


def node_doc(name: str, cidr: str, **spec: Any) -> Node:
    return Node.from_dict({"metadata": {"name": name},
                           "spec": {"bgp": {"ipv4Address": cidr}, **spec}})


def pool_doc(**spec: Any) -> IPPool:
    return IPPool.from_dict({"metadata": {"name": "p"},
                             "spec": {"cidr": "10.244.0.0/24", "blockSize": 28, **spec}})


async def test_agent_programs_blackholes_vtep_fdb_and_nat(store: Store, node_ns: str) -> None:
    res = Resources(store)
    await res.create(NODES, node_doc("n1", "192.0.2.11/24"))
    pool = await res.create(POOLS, pool_doc(vxlanMode="Always", natOutgoing=True))
    ipam = IPAM(store, "n1")
    pod_ip = (await ipam.auto_assign("tortie.c1", {"node": "n1"}, [pool], 1))[0]
    ctx = NodeContext("n1", store, res, new_registry(), argparse.Namespace())
    agent = RoutingAgent(ctx, None, netns=node_ns)
    kernel, vxlan = KernelRoutes(node_ns), VXLANDevice(node_ns)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        routes = await asyncio.to_thread(kernel.routes)
        assert [r.type for r in routes["10.244.0.0/28"]] == [6]  # blackhole
        node = await res.get(NODES, "n1")
        vtep, mac = node.spec.ipv4VXLANTunnelAddr, node.spec.vxlanTunnelMACAddr
        assert vtep is not None and vtep.startswith("10.244.0.") and vtep != pod_ip
        assert mac is not None
        assert f"{vtep}/32" in netns.ip("addr", "show", "dev", VXLAN_DEVICE, ns=node_ns)
        nft = netns.exec_in(node_ns, ["nft", "list", "table", "ip", "tortie-nat"],
                            capture=True).stdout
        assert "10.244.0.0/24" in nft and "masquerade" in nft
        h = agent.health()
        assert h["ready"] and h["routes"]["blackhole"] == 1 and "peers" not in h

        # another node with a VTEP: its FDB / neighbour entries appear
        await res.create(NODES, node_doc("n2", "192.0.2.12/24",
                                         ipv4VXLANTunnelAddr="10.244.0.16",
                                         vxlanTunnelMACAddr="02:00:00:00:00:02"))
        await until(lambda: vxlan.entries() == ({"10.244.0.16": "02:00:00:00:00:02"},
                                                {"02:00:00:00:00:02": "192.0.2.12"}),
                    what="n2's FDB and neighbour entries", in_thread=True)

        # VXLAN off: the VTEP address goes back to IPAM, the device and Node fields go
        cur = await res.get(POOLS, "p")
        doc = cur.dump()
        doc["spec"]["vxlanMode"] = "Never"
        await res.replace(POOLS, IPPool.from_dict(doc))
        await until(lambda: not vxlan.exists(), what="vxlan.tortie removed", in_thread=True)

        async def cleared() -> bool:
            n = await res.get(NODES, "n1")
            return n.spec.ipv4VXLANTunnelAddr is None and n.spec.vxlanTunnelMACAddr is None
        await until(cleared, what="the VTEP fields cleared from Node n1", in_thread=True)

        # the last pod leaves: the block is released and its blackhole goes
        await ipam.release_by_handle("tortie.c1")
        await until(lambda: "10.244.0.0/28" not in kernel.routes(), what="the blackhole removed",
                    in_thread=True)
        pool = await res.get(POOLS, "p")
        await ipam.auto_assign("tortie.c2", {"node": "n1"}, [pool], 1)
        await until(lambda: "10.244.0.0/28" in kernel.routes(), what="a blackhole again",
                    in_thread=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # stopping leaves the kernel alone (a restarted agent adopts what it finds)
    before = await asyncio.to_thread(kernel.routes)
    await agent.close()
    after = await asyncio.to_thread(kernel.routes)
    assert after == before and "10.244.0.0/28" in after
