"""Pool choice (ipam/pools.py): annotations, CNI config, node selectors; pure."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from datastore.model_network import IPPool
from datastore.resources import to_resource
from ipam.pools import (
    IP_ADDRS_ANNOTATION,
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    BadAnnotation,
    NotInPool,
    PoolDisabled,
    PoolNotAllowed,
    UnknownPool,
    enabled_pool_for,
    requested_ips,
    select_pools,
)


def mkpool(name: str, cidr: str, **spec: Any) -> IPPool:
    _, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})
    assert isinstance(obj, IPPool)
    return obj


# The seed's Isle of Cats example: a DMZ pool only for nodes labelled type=dmz-node, and a
# namespace annotated to use it.
DEFAULT = mkpool("default-ipv4-ippool", "192.168.0.0/16")
DMZ = mkpool("dmz-pool", "172.16.0.0/24", nodeSelector='type == "dmz-node"')
OFF = mkpool("off-pool", "10.99.0.0/16", disabled=True)
TUNNEL = mkpool("tunnel-pool", "10.98.0.0/16", allowedUses=["Tunnel"])
MANUAL = mkpool("manual-pool", "10.97.0.0/16", assignmentMode="Manual")
V6 = mkpool("default-ipv6-ippool", "fd00:10::/64")
POOLS = [DEFAULT, DMZ, OFF, TUNNEL, MANUAL, V6]

DMZ_NS = {IPV4_POOLS_ANNOTATION: '["dmz-pool"]'}
DMZ_NODE = {"type": "dmz-node"}
PLAIN_NODE = {"kubernetes.io/hostname": "worker-1"}


def names(pools: list[IPPool]) -> list[str]:
    return [p.name for p in pools]


def test_auto_selection_uses_enabled_workload_pools_that_select_the_node() -> None:
    assert names(select_pools(POOLS, PLAIN_NODE, node="worker-1")) == ["default-ipv4-ippool"]
    assert names(select_pools(POOLS, DMZ_NODE, node="dmz-1")) == ["default-ipv4-ippool",
                                                                   "dmz-pool"]


def test_namespace_annotation_picks_the_dmz_pool_only() -> None:
    got = select_pools(POOLS, DMZ_NODE, node="dmz-1", namespace_annotations=DMZ_NS)
    assert names(got) == ["dmz-pool"]


def test_pod_annotation_beats_namespace_annotation() -> None:
    pod = {IPV4_POOLS_ANNOTATION: '["default-ipv4-ippool"]'}
    got = select_pools(POOLS, DMZ_NODE, node="dmz-1", pod_annotations=pod,
                       namespace_annotations=DMZ_NS)
    assert names(got) == ["default-ipv4-ippool"]


def test_annotation_beats_cni_config_which_beats_auto() -> None:
    cfg = ["default-ipv4-ippool"]
    assert names(select_pools(POOLS, DMZ_NODE, node="dmz-1", cni_pools=cfg)) == \
        ["default-ipv4-ippool"]
    assert names(select_pools(POOLS, DMZ_NODE, node="dmz-1", cni_pools=cfg,
                              namespace_annotations=DMZ_NS)) == ["dmz-pool"]


def test_pools_by_cidr_and_in_the_given_order() -> None:
    pod = {IPV4_POOLS_ANNOTATION: '["172.16.0.0/24", "default-ipv4-ippool"]'}
    got = select_pools(POOLS, DMZ_NODE, node="dmz-1", pod_annotations=pod)
    assert names(got) == ["dmz-pool", "default-ipv4-ippool"]


def test_dmz_pool_serves_only_labelled_nodes() -> None:
    with pytest.raises(PoolNotAllowed, match="selects node 'worker-1'"):
        select_pools(POOLS, PLAIN_NODE, node="worker-1", namespace_annotations=DMZ_NS)
    # with another pool requested too, only the one that serves the node remains
    pod = {IPV4_POOLS_ANNOTATION: '["dmz-pool", "default-ipv4-ippool"]'}
    assert names(select_pools(POOLS, PLAIN_NODE, node="worker-1", pod_annotations=pod)) == \
        ["default-ipv4-ippool"]


def test_disabled_pools_are_never_used() -> None:
    assert "off-pool" not in names(select_pools(POOLS, {}, node="n"))
    with pytest.raises(PoolDisabled, match="'off-pool' is disabled") as e:
        select_pools(POOLS, {}, node="n", pod_annotations={IPV4_POOLS_ANNOTATION: '["off-pool"]'})
    assert e.value.code == 102
    with pytest.raises(PoolDisabled):
        select_pools(POOLS, {}, node="n", cni_pools=["10.99.0.0/16"])


def test_unknown_pool() -> None:
    with pytest.raises(UnknownPool, match="'no-such-pool' does not exist") as e:
        select_pools(POOLS, {}, node="n",
                     namespace_annotations={IPV4_POOLS_ANNOTATION: '["no-such-pool"]'})
    assert e.value.code == 101 and e.value.name == "no-such-pool"
    with pytest.raises(UnknownPool):
        select_pools(POOLS, {}, node="n", cni_pools=["10.50.0.0/16"])


@pytest.mark.parametrize("value", ["dmz-pool", "[dmz-pool]", '{"a": 1}', '["a", 1]', "[]",
                                   '"dmz-pool"'])
def test_bad_annotation(value: str) -> None:
    with pytest.raises(BadAnnotation, match=IPV4_POOLS_ANNOTATION):
        select_pools(POOLS, {}, node="n", pod_annotations={IPV4_POOLS_ANNOTATION: value})


def test_tunnel_only_and_manual_pools() -> None:
    auto = names(select_pools(POOLS, {}, node="n"))
    assert "tunnel-pool" not in auto and "manual-pool" not in auto
    with pytest.raises(PoolNotAllowed, match="Workload"):
        select_pools(POOLS, {}, node="n", pod_annotations={IPV4_POOLS_ANNOTATION:
                                                           '["tunnel-pool"]'})
    # a Manual pool is used when asked for by name
    assert names(select_pools(POOLS, {}, node="n", pod_annotations={
        IPV4_POOLS_ANNOTATION: '["manual-pool"]'})) == ["manual-pool"]


def test_namespace_selector() -> None:
    pools = [mkpool("team-a", "10.20.0.0/16", namespaceSelector='team == "a"'), DEFAULT]
    assert names(select_pools(pools, {}, node="n", namespace_labels={"team": "a"})) == \
        ["team-a", "default-ipv4-ippool"]
    assert names(select_pools(pools, {}, node="n", namespace_labels={"team": "b"})) == \
        ["default-ipv4-ippool"]


def test_ipv6() -> None:
    assert names(select_pools(POOLS, {}, node="n", version=6)) == ["default-ipv6-ippool"]
    got = select_pools(POOLS, {}, node="n", version=6,
                       pod_annotations={IPV6_POOLS_ANNOTATION: '["fd00:10::/64"]',
                                        IPV4_POOLS_ANNOTATION: '["dmz-pool"]'})
    assert names(got) == ["default-ipv6-ippool"]
    with pytest.raises(PoolNotAllowed, match="not an IPv6 pool"):
        select_pools(POOLS, {}, node="n", version=6,
                     pod_annotations={IPV6_POOLS_ANNOTATION: '["dmz-pool"]'})
    assert names(select_pools(POOLS, {}, node="n", version=6,
                              cni_pools=["default-ipv6-ippool"])) == ["default-ipv6-ippool"]


def test_no_matching_pool_gives_an_empty_list() -> None:
    assert select_pools([DMZ], PLAIN_NODE, node="worker-1") == []


# --- ipAddrs ---------------------------------------------------------------------------------

def test_requested_ips() -> None:
    assert requested_ips(None, POOLS) == []
    assert requested_ips({}, POOLS) == []
    got = requested_ips({IP_ADDRS_ANNOTATION: '["192.168.3.4"]'}, POOLS)
    assert got == [ipaddress.ip_address("192.168.3.4")]
    both = requested_ips({IP_ADDRS_ANNOTATION: '["192.168.3.4", "fd00:10::5"]'}, POOLS)
    assert [str(a) for a in both] == ["192.168.3.4", "fd00:10::5"]


@pytest.mark.parametrize(("value", "error", "match"), [
    ('["10.200.0.1"]', NotInPool, "10.200.0.1 is not in any enabled IP pool"),
    ('["10.99.0.1"]', NotInPool, "not in any enabled"),          # disabled pool
    ('["not-an-ip"]', BadAnnotation, "not an IP address"),
    ('["192.168.0.1", "192.168.0.2"]', BadAnnotation, "more than one IPv4"),
    ("192.168.0.1", BadAnnotation, "not valid JSON"),
])
def test_requested_ips_errors(value: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        requested_ips({IP_ADDRS_ANNOTATION: value}, POOLS)


def test_enabled_pool_for() -> None:
    assert enabled_pool_for("172.16.0.9", POOLS).name == "dmz-pool"
    with pytest.raises(NotInPool):
        enabled_pool_for("10.99.1.1", POOLS)
