"""Which datastore changes wake a node's routing agent: only those that change what that
node routes or announces (its own blocks, addresses it borrowed, its tunnel addresses), not
other nodes' blocks coming, filling and going (their routes come over BGP)."""

from __future__ import annotations

import argparse
from typing import Any, cast

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry
from datastore.backend import KVStore
from datastore.resources import Resources
from ipam.blocks import Block
from ipam.keys import block_key
from routing.agent import RoutingAgent


def agent(node: str) -> RoutingAgent:
    # the store is never used: only the event handler runs
    ctx = NodeContext(node, cast(KVStore, object()), cast(Resources, object()),
                      new_registry(), argparse.Namespace())
    return RoutingAgent(ctx, None)


def woke(a: RoutingAgent, cidr: str, doc: dict[str, Any] | None) -> bool:
    a._dirty.clear()
    a._on_update(block_key(cidr), doc)
    return a._dirty.is_set()


def test_only_route_relevant_block_changes_wake_the_agent() -> None:
    cidr = "10.244.1.0/26"
    b = Block.new(cidr, "host:n1")
    made = b.to_dict()
    b.assign_ip("10.244.1.5", {"handle": "pod-a", "node": "n1"})
    with_pod = b.to_dict()
    b.assign_ip("10.244.1.6", {"handle": "pod-b", "node": "n2"})
    borrowed = b.to_dict()
    owner, other, borrower = agent("n1"), agent("n3"), agent("n2")
    # the owner: its block appearing wakes it, its own pod does not
    assert woke(owner, cidr, made)
    assert not woke(owner, cidr, with_pod)
    # another node: neither the block's creation nor its pods
    assert not woke(other, cidr, made)
    assert not woke(other, cidr, with_pod)
    assert not woke(other, cidr, borrowed)
    assert not woke(other, cidr, None)
    # a node that borrows an address from it: when it does, and when the block goes
    assert not woke(borrower, cidr, with_pod)
    assert woke(borrower, cidr, borrowed)
    assert woke(borrower, cidr, None)
    # the owner sees its block deleted
    assert woke(owner, cidr, None)
    # a bad document is counted, never wakes
    assert not woke(other, cidr, {"cidr": "nonsense"})
    # the agent's cache has every block, relevant or not (IPAM reads need no refetch)
    woke(other, cidr, borrowed)
    assert block_key(cidr) in other.blocks
