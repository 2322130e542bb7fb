"""Block maths and the block document (ipam/blocks.py): pure, no etcd."""

from __future__ import annotations

import ipaddress
import itertools
import json

import pytest

from datastore.model_network import IPPool
from datastore.resources import to_resource
from ipam import keys
from ipam.blocks import (
    AddressInUse,
    Block,
    address_order,
    block_cidrs,
    block_count,
    block_for,
    block_network,
    reserved_in,
)
from ipam.handles import (
    IPIP_HANDLE_PREFIX,
    TUNNEL_HANDLE_PREFIXES,
    VXLAN_HANDLE_PREFIX,
    WORKLOAD_HANDLE_PREFIX,
)
from ipam.watch import block_watch_prefix, parse_watched_block


def pool(cidr: str, block_size: int | None = None, name: str = "p") -> IPPool:
    spec: dict[str, object] = {"cidr": cidr}
    if block_size is not None:
        spec["blockSize"] = block_size
    _, obj = to_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": name}, "spec": spec})
    assert isinstance(obj, IPPool)
    return obj


A = {"handle": "h1", "pod": "web-0", "namespace": "default", "node": "n1", "container": "c1"}
B = {"handle": "h2", "pod": "web-1", "namespace": "default", "node": "n1", "container": "c2"}


# --- block_cidrs / block_for ---------------------------------------------------------------------

def test_block_cidrs_v4_default_size() -> None:
    blocks = list(block_cidrs("10.0.0.0/24", 26))
    assert [str(b) for b in blocks] == ["10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26",
                                        "10.0.0.192/26"]
    assert block_count("10.0.0.0/24", 26) == 4


@pytest.mark.parametrize(("pool_cidr", "size", "n", "first", "last"), [
    ("10.1.0.0/16", 26, 1024, "10.1.0.0/26", "10.1.255.192/26"),
    ("10.1.2.0/28", 30, 4, "10.1.2.0/30", "10.1.2.12/30"),
    ("10.1.2.0/30", 32, 4, "10.1.2.0/32", "10.1.2.3/32"),
    ("10.1.2.0/26", 26, 1, "10.1.2.0/26", "10.1.2.0/26"),   # pool of exactly one block
    ("fd00::/120", 122, 4, "fd00::/122", "fd00::c0/122"),
    ("fd00::/126", 128, 4, "fd00::/128", "fd00::3/128"),
])
def test_block_cidrs_sizes(pool_cidr: str, size: int, n: int, first: str, last: str) -> None:
    blocks = [str(b) for b in block_cidrs(pool_cidr, size)]
    assert len(blocks) == n == block_count(pool_cidr, size)
    assert blocks[0] == first and blocks[-1] == last
    assert len(set(blocks)) == n


def test_block_cidrs_huge_v6_pool_is_lazy() -> None:
    gen = block_cidrs("fd00::/48", 122)
    first = list(itertools.islice(gen, 3))
    assert [str(b) for b in first] == ["fd00::/122", "fd00::40/122", "fd00::80/122"]
    assert block_count("fd00::/48", 122) == 2 ** 74
    # starting in the middle, aligned down to the block
    nxt = next(block_cidrs("fd00::/48", 122, "fd00::1:0:0:5"))
    assert str(nxt) == "fd00::1:0:0:0/122"


def test_block_cidrs_start() -> None:
    assert str(next(block_cidrs("10.0.0.0/24", 26, "10.0.0.70"))) == "10.0.0.64/26"
    assert str(next(block_cidrs("10.0.0.0/24", 26, "9.0.0.0"))) == "10.0.0.0/26"
    assert list(block_cidrs("10.0.0.0/24", 26, "10.0.1.0")) == []


def test_pool_smaller_than_block_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        list(block_cidrs("10.0.0.0/28", 26))
    with pytest.raises(ValueError, match="does not fit"):
        list(block_cidrs("10.0.0.0/24", 33))


def test_block_for() -> None:
    p = pool("10.0.0.0/16")
    assert str(block_for("10.0.3.77", p)) == "10.0.3.64/26"
    p30 = pool("10.0.0.0/24", 30)
    assert str(block_for("10.0.0.7", p30)) == "10.0.0.4/30"
    p6 = pool("fd00::/64")
    assert str(block_for("fd00::1:2:3:4", p6)) == "fd00::1:2:3:0/122"
    with pytest.raises(ValueError, match="not in IP pool"):
        block_for("10.1.0.1", p)
    assert str(block_network("10.9.9.9", 32)) == "10.9.9.9/32"


def test_reserved_in() -> None:
    net = ipaddress.ip_network("10.0.0.0/26")
    got = reserved_in(net, ["10.0.0.0/30", "10.0.1.0/24", "fd00::/64", "10.0.0.63/32"])
    assert {str(a) for a in got} == {"10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3",
                                     "10.0.0.63"}
    assert len(reserved_in(net, ["10.0.0.0/8"])) == 64


def test_keys() -> None:
    assert keys.block_key("10.0.0.64/26") == "/tortie/v3/ipam/blocks/10.0.0.64-26"
    assert keys.block_cidr("/tortie/v3/ipam/blocks/fd00::40-122") == "fd00::40/122"
    assert keys.block_cidr(keys.block_key("fd00::/122")) == "fd00::/122"
    assert keys.handle_key("tortie.abc") == "/tortie/v3/ipam/handles/tortie.abc"
    assert keys.IPAM_CONFIG == "/tortie/v3/resources/ipamconfigurations/default"
    with pytest.raises(ValueError):
        keys.handle_key("a/b")


# --- the block document --------------------------------------------------------------------------

def test_new_block_and_assign_in_order() -> None:
    b = Block.new("10.0.0.0/26", "host:n1")
    assert b.size == 64 and b.free_count == 64 and b.is_empty
    assert b.affinity_node == "n1"
    ips = b.assign(3, A)
    assert ips == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert b.free_count == 61 and not b.is_empty
    assert b.allocations[:4] == [0, 0, 0, None]
    assert len(b.attributes) == 1  # one entry shared by the handle's addresses
    assert b.assign(2, B) == ["10.0.0.3", "10.0.0.4"]
    assert len(b.attributes) == 2
    assert b.ips_for_handle("h1") == ips
    assert b.handle_counts() == {"h1": 3, "h2": 2}


def test_assign_more_than_free_returns_what_there_is() -> None:
    b = Block.new("10.0.0.0/30")
    assert b.assign(10, A) == ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert b.free_count == 0
    assert b.assign(1, B) == []
    assert b.assign(0, B) == []
    with pytest.raises(ValueError):
        b.assign(-1, B)


def test_slash32_block() -> None:
    b = Block.new("10.0.0.9/32")
    assert b.size == 1
    assert b.assign(1, A) == ["10.0.0.9"]
    assert b.assign(1, A) == []
    assert b.release(["10.0.0.9"]) == ["10.0.0.9"]
    assert b.is_empty


def test_v6_block() -> None:
    b = Block.new("fd00::40/122", "host:n2")
    assert b.size == 64
    assert b.assign(2, A) == ["fd00::40", "fd00::41"]
    doc = json.loads(json.dumps(b.to_dict()))
    assert Block.from_dict(doc).ips_for_handle("h1") == ["fd00::40", "fd00::41"]


def test_assign_skips_reserved() -> None:
    b = Block.new("10.0.0.0/29")
    reserved = {ipaddress.ip_address("10.0.0.0"), "10.0.0.2", "10.9.9.9"}
    assert b.available(reserved) == 6
    assert b.assign(3, A, reserved) == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
    assert b.assign(10, B, reserved) == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    assert b.available(reserved) == 0 and b.free_count == 2


def test_assign_ip_and_address_in_use() -> None:
    b = Block.new("10.0.0.0/26")
    assert b.assign_ip("10.0.0.10", A) == "10.0.0.10"
    with pytest.raises(AddressInUse, match=r"10\.0\.0\.10 is already in use.*h1"):
        b.assign_ip("10.0.0.10", B)
    with pytest.raises(ValueError, match="not in block"):
        b.assign_ip("10.0.1.1", A)
    # automatic assignment does not hand it out again
    got = b.assign(64, B)
    assert "10.0.0.10" not in got and len(got) == 63


def test_release_goes_to_the_back_and_is_idempotent() -> None:
    b = Block.new("10.0.0.0/29")
    b.assign(3, A)
    assert b.release(["10.0.0.1", "10.0.0.1", "10.0.0.7"]) == ["10.0.0.1"]
    assert b.release(["10.0.0.1"]) == []
    assert b.unallocated[-1] == 1  # reused last
    assert b.assign(1, B) == ["10.0.0.3"]
    with pytest.raises(ValueError):
        b.release(["10.0.1.0"])


def test_release_handle_drops_unused_attributes() -> None:
    b = Block.new("10.0.0.0/26")
    b.assign(2, A)
    b.assign(2, B)
    assert b.release_handle("h1") == ["10.0.0.0", "10.0.0.1"]
    assert b.attributes == [B]  # compacted, indexes renumbered
    assert b.allocations[2:4] == [0, 0]
    assert b.release_handle("h1") == []
    assert b.release_handle("h2") == ["10.0.0.2", "10.0.0.3"]
    assert b.is_empty and b.attributes == []


def test_attributes_are_normalised() -> None:
    b = Block.new("10.0.0.0/26")
    b.assign(1, {"handle": "h", "pod": None, "extra": "x"})
    assert b.attributes == [{"handle": "h"}]
    with pytest.raises(ValueError, match="handle"):
        b.assign(1, {"pod": "p"})


def test_round_trip_and_json_safe() -> None:
    b = Block.new("10.0.0.0/26", "host:n1", strict_affinity=True)
    b.assign(5, A)
    b.release(["10.0.0.2"])
    doc = b.to_dict()
    text = json.dumps(doc)
    assert set(doc) == {"cidr", "affinity", "strictAffinity", "allocations", "attributes",
                        "unallocated"}
    back = Block.from_dict(json.loads(text), revision=7)
    assert back.revision == 7
    assert back.to_dict() == doc
    assert back.strict_affinity is True
    assert [ip for ip, _ in back.allocated()] == ["10.0.0.0", "10.0.0.1", "10.0.0.3",
                                                  "10.0.0.4"]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("cidr"), "valid cidr"),
    (lambda d: d.update(allocations=[None] * 3), "64 entries"),
    (lambda d: d["allocations"].__setitem__(0, 5), "attribute index"),
    (lambda d: d.update(unallocated=[1, 2]), "unallocated"),
    (lambda d: d.update(attributes=[{"pod": "x"}]), "handle"),
    (lambda d: d.update(affinity=3), "affinity"),
])
def test_from_dict_rejects_bad_documents(mutate: object, message: str) -> None:
    b = Block.new("10.0.0.0/26")
    b.assign(1, A)
    doc = b.to_dict()
    mutate(doc)
    with pytest.raises(ValueError, match=message):
        Block.from_dict(doc)


def test_copy_is_independent() -> None:
    b = Block.new("10.0.0.0/30")
    c = b.copy()
    c.assign(1, A)
    assert b.is_empty and not c.is_empty


def test_address_order_puts_v4_before_v6() -> None:
    ips = ["fd00::2", "10.0.0.10", "fd00::1", "10.0.0.9"]
    assert sorted(ips, key=address_order) == ["10.0.0.9", "10.0.0.10", "fd00::1", "fd00::2"]


def test_handle_prefixes() -> None:
    assert TUNNEL_HANDLE_PREFIXES == ("vxlan-tunnel-addr-", "vxlan-v6-tunnel-addr-",
                                      "ipip-tunnel-addr-")
    assert (VXLAN_HANDLE_PREFIX + "n1").startswith(TUNNEL_HANDLE_PREFIXES)
    assert (IPIP_HANDLE_PREFIX + "n1").startswith(TUNNEL_HANDLE_PREFIXES)
    assert not (WORKLOAD_HANDLE_PREFIX + "c1").startswith(TUNNEL_HANDLE_PREFIXES)


# --- watching blocks (ipam/watch.py) -------------------------------------------------------------


def test_watched_block_keys_are_under_the_watch_prefix() -> None:
    for cidr in ("10.0.0.64/26", "fd00::40/122"):
        assert keys.block_key(cidr).startswith(block_watch_prefix())
    assert not keys.handle_key("h").startswith(block_watch_prefix())
    assert not keys.host_key("n1").startswith(block_watch_prefix())


def test_parse_watched_block() -> None:
    block = Block.new("10.0.0.64/26", "host:n1")
    block.assign(2, A)
    got = parse_watched_block(keys.block_key("10.0.0.64/26"), block.to_dict(), 7)
    assert got == Block.from_dict(block.to_dict(), 7) and got.revision == 7
    assert got.affinity_node == "n1" and got.ips_for_handle("h1") == ["10.0.0.64", "10.0.0.65"]
    v6 = Block.new("fd00::40/122")
    assert parse_watched_block(keys.block_key("fd00::40/122"), v6.to_dict()).cidr == \
        "fd00::40/122"


def test_parse_watched_block_rejects_bad_input() -> None:
    doc = Block.new("10.0.0.64/26").to_dict()
    with pytest.raises(ValueError, match="not a block key"):
        parse_watched_block(keys.handle_key("h1"), doc)
    with pytest.raises(ValueError, match=r"is for block 10\.0\.0\.64/26, not 10\.0\.0\.128/26"):
        parse_watched_block(keys.block_key("10.0.0.128/26"), doc)
    with pytest.raises(ValueError, match="allocations must list 64 entries"):
        parse_watched_block(keys.block_key("10.0.0.64/26"), {**doc, "allocations": []})
