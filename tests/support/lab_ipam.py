"""The IPAM state of a lab, read through ``ipam/`` (its keys' only reader) in the lab's
fabric, where its etcd is reachable: blocks with their allocations, which nodes have an
IPAM host document, and the addresses of the nodes' tunnel handles."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from lab import netns
from lab.cluster import Lab
from tests.support.lab_cli import REPO

_SCRIPT = """
import asyncio, json
from datastore.etcd_config import EtcdConfig
from datastore.store import NotFound, Store
from ipam import keys
from ipam.allocator import IPAM
from ipam.handles import tunnel_handles

async def main():
    async with Store(EtcdConfig.load()) as store:
        ipam = IPAM(store, "tortie-admin")
        blocks = [{"cidr": b.cidr, "node": b.affinity_node,
                   "allocations": [dict(a, ip=ip) for ip, a in b.allocated()]}
                  for b in await ipam.list_blocks()]
        hosts, handles = [], {}
        for n in NODES:
            try:
                await store.get(keys.host_key(n))
                hosts.append(n)
            except NotFound:
                pass
            for h in tunnel_handles(n):
                handles[h] = await ipam.ips_by_handle(h)
    print(json.dumps({"blocks": blocks, "hosts": hosts, "handles": handles}))

asyncio.run(main())
"""


def ipam_state(lab: Lab, nodes: Iterable[str] | None = None) -> dict[str, Any]:
    """``{"blocks": [{"cidr", "node", "allocations": [{ip, handle, ...}]}], "hosts": [node
    with a host document], "handles": {tunnel handle: [addresses]}}`` for ``nodes`` (default:
    the lab's nodes)."""
    st = lab.load()
    names = sorted(st.nodes if nodes is None else nodes)
    p = netns.exec_in(st.fabric, [sys.executable, "-c", f"NODES = {names!r}\n" + _SCRIPT],
                      env={**st.etcd_env(), "PYTHONPATH": str(REPO)}, capture=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def holdings(state: dict[str, Any], node: str) -> dict[str, Any]:
    """What IPAM holds for ``node``: its blocks, its allocations, its host document, its
    tunnel handles' addresses."""
    return {
        "blocks": [b["cidr"] for b in state["blocks"] if b["node"] == node],
        "allocations": {a["ip"]: a["handle"] for b in state["blocks"]
                        for a in b["allocations"] if a.get("node") == node},
        "host": node in state["hosts"],
        "tunnels": {h: ips for h, ips in state["handles"].items()
                    if h.endswith(f"-{node}") and ips},
    }
