"""Which datastore changes wake a node's routing agent: only those that change what that
node routes or announces (its own blocks, addresses it borrowed, its tunnel addresses), not
other nodes' blocks coming, filling and going (their routes come over BGP)."""

from __future__ import annotations

import argparse
import logging
from typing import Any, cast

import pytest

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry, value
from datastore.backend import KVStore
from datastore.keys import BGP_SECRETS, resource_key, resource_prefix
from datastore.resources import Resources
from ipam.blocks import Block
from ipam.keys import block_key
from ipam.watch import block_watch_prefix
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


# --- the dispatch table: one handler per watched prefix ----------------------------------------


def test_the_syncer_watches_exactly_the_prefixes_the_agent_handles() -> None:
    a = agent("n1")
    assert set(a.syncer.prefixes) == set(a._watches)
    assert len(a.syncer.prefixes) == len(set(a.syncer.prefixes)) == 10
    assert block_watch_prefix() in a._watches
    assert BGP_SECRETS in a._watches
    assert resource_prefix("ippools") in a._watches


def test_a_document_change_wakes_the_agent_and_marks_the_bgp_settings_stale() -> None:
    a = agent("n1")
    a._settings_stale = False
    a._dirty.clear()
    a._on_update(resource_key("bgppeers", "rr"), {
        "metadata": {"name": "rr"}, "spec": {"peerIP": "192.0.2.9", "asNumber": 64512}})
    assert a._dirty.is_set() and a._settings_stale
    assert "rr" in a.peers and "datastore" in a._events
    a._dirty.clear()
    a._on_update(resource_key("bgppeers", "rr"), None)
    assert a._dirty.is_set() and "rr" not in a.peers


def test_a_block_change_does_not_mark_the_bgp_settings_stale() -> None:
    a = agent("n1")
    a._settings_stale = False
    assert woke(a, "10.244.1.0/26", Block.new("10.244.1.0/26", "host:n1").to_dict())
    assert not a._settings_stale
    assert set(a._events) == {"block"}


def _doc_woke(a: RoutingAgent, key: str, doc: dict[str, Any] | None) -> bool:
    a._dirty.clear()
    a._on_update(key, doc)
    return a._dirty.is_set()


LB_SERVICE = {"metadata": {"name": "lb", "namespace": "shop"},
              "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                       "externalTrafficPolicy": "Local"},
              "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}


def _slice(node: str) -> dict[str, Any]:
    return {"metadata": {"name": "lb-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "lb"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.9"],
                                                  "nodeName": node}]}


def test_service_changes_wake_only_the_nodes_whose_announcements_change() -> None:
    svc_key = resource_key("k8sservices", "lb", "shop")
    slice_key = resource_key("k8sendpointslices", "lb-1", "shop")
    n1, n2 = agent("n1"), agent("k8s-name-n2")
    # n2's Node resource names its Kubernetes node: EndpointSlices use that name
    n2._on_update(resource_key("nodes", "k8s-name-n2"), {
        "metadata": {"name": "k8s-name-n2"},
        "spec": {"orchRefs": [{"orchestrator": "k8s", "nodeName": "n2"}]}})
    assert n2._k8s_node_name() == "n2" and n1._k8s_node_name() == "n1"
    # no service ranges configured: Services and slices are kept, but wake nobody
    for a in (n1, n2):
        assert not _doc_woke(a, svc_key, LB_SERVICE)
        assert not _doc_woke(a, slice_key, _slice("n2"))
    config = {"metadata": {"name": "default"},
              "spec": {"serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}]}}
    for a in (n1, n2):
        assert _doc_woke(a, resource_key("bgpconfigurations", "default"), config)
        a._settings_stale = False
    assert n2._advertisement().prefixes == {"198.51.100.7/32"}
    assert n1._advertisement().prefixes == set()
    # the endpoint moves to n1: both wake; to nowhere: n1 wakes
    assert _doc_woke(n1, slice_key, _slice("n1")) and _doc_woke(n2, slice_key, _slice("n1"))
    assert not n1._settings_stale and set(n1._events) == {"service", "datastore"}
    assert _doc_woke(n1, slice_key, None) and not _doc_woke(n2, slice_key, None)
    # a Service change that moves nothing this node announces wakes nobody
    assert not _doc_woke(n1, svc_key, {**LB_SERVICE, "metadata": {
        **LB_SERVICE["metadata"], "labels": {"new": "label"}}})
    # a bad document is counted and changes nothing
    assert not _doc_woke(n1, svc_key, {"metadata": {"name": "lb", "namespace": "shop"},
                                       "spec": {"clusterIPs": "not-a-list"}})
    assert value(n1.m_failures, what="document") == 1


def test_a_bad_document_is_counted_and_leaves_the_cache_as_it_was() -> None:
    a = agent("n1")
    key = resource_key("ippools", "p")
    a._on_update(key, {"metadata": {"name": "p"}, "spec": {"cidr": "10.244.0.0/16"}})
    pool = a.pools["p"]
    a._dirty.clear()
    a._on_update(key, {"metadata": {"name": "p"}, "spec": {"cidr": "nonsense"}})
    assert not a._dirty.is_set()
    assert a.pools["p"] is pool
    assert value(a.m_failures, what="document") == 1


def test_a_key_under_no_watched_prefix_is_counted_at_debug_and_never_wakes(
        caplog: pytest.LogCaptureFixture) -> None:
    a = agent("n1")
    a._dirty.clear()
    with caplog.at_level(logging.DEBUG, logger="tortie.routing"):
        a._on_update(resource_key("networkpolicies", "x", "default"), {"spec": {}})
        a._on_update("/somewhere/else", None)
    assert not a._dirty.is_set()
    assert value(a.m_failures, what="unknown_key") == 2
    assert value(a.m_failures, what="document") == 0
    unknown = [r for r in caplog.records if "does not watch" in r.getMessage()]
    assert len(unknown) == 2 and all(r.levelno == logging.DEBUG for r in unknown)
