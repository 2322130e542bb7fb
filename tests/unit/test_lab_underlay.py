"""lab/underlay.py: subnets, addresses and the pool's encapsulation for ``--subnets`` /
``--encap`` (pure)."""

from __future__ import annotations

import pytest

from lab import underlay


def test_nodes_fill_subnets_in_order() -> None:
    assert [underlay.subnet_of(i, 4, 2) for i in range(1, 5)] == [0, 0, 1, 1]
    assert [underlay.subnet_of(i, 3, 3) for i in range(1, 4)] == [0, 1, 2]
    assert [underlay.subnet_of(i, 3, 1) for i in range(1, 4)] == [0, 0, 0]
    assert underlay.node_address(3, 1) == "198.51.100.13"
    assert underlay.gateway(2) == "203.0.113.1" and underlay.bridge(0) == "br0"


def test_encapsulation_defaults_and_modes() -> None:
    assert underlay.check(1, None) == "none"
    assert underlay.check(2, None) == "vxlan"
    assert underlay.pool_modes("vxlan", 2) == {"vxlanMode": "CrossSubnet", "ipipMode": "Never"}
    assert underlay.pool_modes("vxlan", 1) == {"vxlanMode": "Always", "ipipMode": "Never"}
    assert underlay.pool_modes("ipip", 3) == {"vxlanMode": "Never", "ipipMode": "CrossSubnet"}
    assert underlay.pool_modes("none", 2) == {"vxlanMode": "Never", "ipipMode": "Never"}


@pytest.mark.parametrize(("subnets", "encap"), [(0, None), (4, None), (1, "gre")])
def test_rejects_what_it_cannot_build(subnets: int, encap: str | None) -> None:
    with pytest.raises(underlay.UnderlayError):
        underlay.check(subnets, encap)


def test_ipv6_underlay_uses_documentation_prefixes() -> None:
    import ipaddress

    doc = ipaddress.ip_network("2001:db8::/32")
    for k in range(len(underlay.SUBNETS6)):
        assert underlay.subnet6(k).subnet_of(doc)
        assert ipaddress.ip_address(underlay.gateway6(k)) in underlay.subnet6(k)
    assert underlay.node_address6(1, 0) == "2001:db8:0:1::11"
    assert underlay.node_address6(3, 1) == "2001:db8:0:2::13"
    assert ipaddress.ip_network(underlay.DEFAULT_POOL6_CIDR).is_private  # ULA


def test_ipv6_pool_follows_vxlan_never_ipip() -> None:
    assert underlay.pool6_modes("vxlan", 1) == {"vxlanMode": "Always", "ipipMode": "Never"}
    assert underlay.pool6_modes("vxlan", 2) == {"vxlanMode": "CrossSubnet", "ipipMode": "Never"}
    assert underlay.pool6_modes("ipip", 2) == {"vxlanMode": "Never", "ipipMode": "Never"}
    assert underlay.pool6_modes("none", 1) == {"vxlanMode": "Never", "ipipMode": "Never"}
