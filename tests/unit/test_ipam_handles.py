"""Workload handle names (ipam/handles.py): the two forms, their parser, round trips."""

from __future__ import annotations

import hashlib

import pytest

from cni.netlink import host_veth_name, is_host_veth_name, secondary_table
from ipam.handles import (
    PRIMARY_IFNAME,
    TUNNEL_HANDLE_PREFIXES,
    is_workload_handle,
    parse_workload_handle,
    workload_handle,
)


def test_primary_interface_keeps_the_old_form() -> None:
    assert PRIMARY_IFNAME == "eth0"
    assert workload_handle("abc123") == "tortie.abc123"
    assert workload_handle("abc123", "eth0") == "tortie.abc123"
    assert workload_handle("abc123", "") == "tortie.abc123"


def test_other_interfaces_get_their_own_handle() -> None:
    assert workload_handle("abc123", "net1") == "tortie.abc123.net1"
    assert workload_handle("abc123", "net2") != workload_handle("abc123", "net1")
    with pytest.raises(ValueError, match="container ID"):
        workload_handle("", "net1")


def test_parse_both_forms() -> None:
    assert parse_workload_handle("tortie.abc123") == ("abc123", "eth0")
    assert parse_workload_handle("tortie.abc123.net1") == ("abc123", "net1")
    assert parse_workload_handle("tortie.abc123.eth0.100") == ("abc123", "eth0.100")
    # "tortie.<x>.eth0" is never made for container x: the whole rest is the container
    assert parse_workload_handle("tortie.a.eth0") == ("a.eth0", "eth0")


def test_parse_rejects_other_handles() -> None:
    for handle in ("vxlan-tunnel-addr-n1", "ipip-tunnel-addr-n1", "k8s-pod-network.c1",
                   "tortie.", "tortie", ""):
        assert parse_workload_handle(handle) is None, handle
        assert not is_workload_handle(handle)
    assert not any(workload_handle("c1", i).startswith(TUNNEL_HANDLE_PREFIXES)
                   for i in ("eth0", "net1"))


def test_parse_with_the_container_as_hint() -> None:
    # a container ID with a dot: only the hint tells the two readings apart
    assert parse_workload_handle("tortie.ctr.v2", "ctr.v2") == ("ctr.v2", "eth0")
    assert parse_workload_handle("tortie.ctr.v2", "ctr") == ("ctr", "v2")
    assert parse_workload_handle("tortie.ctr.v2.net1", "ctr.v2") == ("ctr.v2", "net1")
    # not that container's handle
    assert parse_workload_handle("tortie.other", "ctr") is None
    assert parse_workload_handle("tortie.ctrx", "ctr") is None
    assert parse_workload_handle("tortie.ctr.eth0", "ctr") is None
    assert parse_workload_handle("tortie.ctr.", "ctr") is None


@pytest.mark.parametrize("cid", ["abc123", "a.b", "0123456789abcdef" * 4, "x-y_z"])
@pytest.mark.parametrize("ifname", ["eth0", "net1", "eth0.100", "a.b.c"])
def test_round_trip(cid: str, ifname: str) -> None:
    handle = workload_handle(cid, ifname)
    assert is_workload_handle(handle)
    assert parse_workload_handle(handle, cid) == (cid, ifname)
    parsed = parse_workload_handle(handle)
    assert parsed is not None and workload_handle(*parsed) == handle
    if "." not in cid:  # runtimes' IDs: read right without the hint
        assert parsed == (cid, ifname)


def test_host_veth_names_per_interface() -> None:
    def sha(key: str) -> str:
        return hashlib.sha1(key.encode()).hexdigest()[:11]

    eth0 = host_veth_name("cali", "shop", "web-a", "c1")
    assert eth0 == "cali" + sha("shop.web-a")
    assert host_veth_name("cali", "shop", "web-a", "c1", "eth0") == eth0
    net1 = host_veth_name("cali", "shop", "web-a", "c1", "net1")
    assert net1 == "cali" + sha("shop.web-a.net1")
    net2 = host_veth_name("cali", "shop", "web-a", "c1", "net2")
    assert len({eth0, net1, net2}) == 3
    # without a pod identity the container ID is hashed, with the interface for non-eth0
    assert host_veth_name("cali", None, None, "c1") == "cali" + sha("c1")
    assert host_veth_name("cali", None, None, "c1", "net1") == "cali" + sha("c1.net1")
    for name in (eth0, net1, net2):
        assert len(name) == 15 and is_host_veth_name("cali", name)


def test_secondary_tables_are_fixed_by_name_and_not_the_kernels() -> None:
    assert secondary_table("net1") == secondary_table("net1")
    assert secondary_table("net1") != secondary_table("net2")
    for name in ("net1", "net2", "eth1", "a" * 15):
        assert secondary_table(name) not in (0, 253, 254, 255)
        assert 0 < secondary_table(name) < 2**32
