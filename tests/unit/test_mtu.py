"""Pod and tunnel MTUs (datastore/mtu.py): underlay less the overhead of the encapsulation
in use, FelixConfiguration's vxlanMTU / ipipMTU, the CNI config's mtu winning."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_config import FelixConfiguration
from datastore.model_network import IPPool
from datastore.mtu import (
    IPIP,
    VXLAN,
    MTUOverrides,
    encaps_in_use,
    felix_overrides,
    pod_mtu,
    tunnel_mtu,
)


def pool(name: str, cidr: str = "10.1.0.0/16", **spec: Any) -> IPPool:
    return IPPool.from_dict({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                             "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


def felix(name: str, **spec: Any) -> FelixConfiguration:
    return FelixConfiguration.from_dict({"apiVersion": "projectcalico.org/v3",
                                         "kind": "FelixConfiguration",
                                         "metadata": {"name": name}, "spec": spec})


@pytest.mark.parametrize(("underlay", "encaps", "overrides", "want"), [
    (1500, [], None, 1500),                                   # no encapsulation
    (1500, [VXLAN], None, 1450),
    (1500, [IPIP], None, 1480),
    (9000, [VXLAN], None, 8950),                              # jumbo underlay
    (1500, [VXLAN, IPIP], None, 1450),                        # the smallest wins
    (1500, [IPIP, VXLAN, VXLAN], None, 1450),
    (1500, [VXLAN], MTUOverrides(vxlan=1400), 1400),          # Felix vxlanMTU
    (1500, [VXLAN, IPIP], MTUOverrides(ipip=1300), 1300),     # Felix ipipMTU, smaller
    (1500, [VXLAN, IPIP], MTUOverrides(ipip=1490), 1450),     # ... or not
    (1500, [IPIP], MTUOverrides(vxlan=1000), 1480),           # unused encap: ignored
    (1500, [], MTUOverrides(vxlan=1000, ipip=1000), 1500),
    (1500, [VXLAN], MTUOverrides(vxlan=0), 1450),             # 0 means computed
    (1500, [VXLAN], MTUOverrides(vxlan=1400, pod=1200), 1200),  # the CNI config wins
    (1500, [], MTUOverrides(pod=9000), 9000),
    (1500, [VXLAN], MTUOverrides(pod=0), 1450),
])
def test_pod_mtu(underlay: int, encaps: list[str], overrides: MTUOverrides | None,
                 want: int) -> None:
    assert pod_mtu(underlay, encaps, overrides) == want


def test_tunnel_mtu() -> None:
    assert tunnel_mtu(1500, VXLAN) == 1450
    assert tunnel_mtu(1500, IPIP) == 1480
    assert tunnel_mtu(1500, VXLAN, MTUOverrides(vxlan=1410, ipip=1440)) == 1410
    assert tunnel_mtu(1500, IPIP, MTUOverrides(vxlan=1410, ipip=1440)) == 1440
    assert tunnel_mtu(100, VXLAN) == 68  # never below the IPv4 minimum
    with pytest.raises(ValueError, match="unknown encapsulation 'gre'"):
        tunnel_mtu(1500, "gre")


def test_encaps_in_use_counts_enabled_pools_only() -> None:
    assert encaps_in_use([]) == frozenset()
    assert encaps_in_use([pool("a")]) == frozenset()
    assert encaps_in_use([pool("a", vxlanMode="CrossSubnet")]) == {VXLAN}
    assert encaps_in_use([pool("a", vxlanMode="Always"),
                          pool("b", "10.2.0.0/16", ipipMode="Always")]) == {VXLAN, IPIP}
    assert encaps_in_use([pool("a", vxlanMode="Always", disabled=True),
                          pool("b", "10.2.0.0/16", ipipMode="CrossSubnet")]) == {IPIP}
    assert encaps_in_use([pool("a", ipip={"enabled": True})]) == {IPIP}  # Calico v1 form


def test_felix_overrides_node_over_default_field_by_field() -> None:
    node = "node-1"
    assert felix_overrides({}, node) == MTUOverrides()
    default = felix("default", vxlanMTU=1410, ipipMTU=1440)
    assert felix_overrides({"default": default}, node) == MTUOverrides(vxlan=1410, ipip=1440)
    mine = felix(f"node.{node}", vxlanMTU=1380)
    other = felix("node.node-2", vxlanMTU=1000, ipipMTU=1000)
    configs = {"default": default, f"node.{node}": mine, "node.node-2": other}
    assert felix_overrides(configs, node) == MTUOverrides(vxlan=1380, ipip=1440)
    zero = felix(f"node.{node}", vxlanMTU=0)  # 0: not set, the default's applies
    assert felix_overrides({"default": default, f"node.{node}": zero}, node).vxlan == 1410


def test_ipv6_pool_vxlan_is_its_own_encapsulation_with_70_bytes_and_vxlan_mtu_v6() -> None:
    from datastore.mtu import VXLAN6
    v6 = IPPool.model_validate({"metadata": {"name": "p6"}, "spec": {
        "cidr": "fd00:10:244::/56", "vxlanMode": "Always"}})
    v4 = IPPool.model_validate({"metadata": {"name": "p4"}, "spec": {
        "cidr": "10.244.0.0/16", "vxlanMode": "Always"}})
    assert encaps_in_use([v6]) == {VXLAN6}
    assert encaps_in_use([v4, v6]) == {VXLAN, VXLAN6}
    assert tunnel_mtu(1500, VXLAN6) == 1430
    # a pod gets the smallest MTU of what is in use
    assert pod_mtu(1500, encaps_in_use([v4, v6])) == 1430
    felix = {"default": FelixConfiguration.model_validate({
        "metadata": {"name": "default"}, "spec": {"vxlanMTUV6": 1400, "vxlanMTU": 1440}})}
    o = felix_overrides(felix, "n1")
    assert (o.vxlan, o.vxlan6) == (1440, 1400)
    assert tunnel_mtu(1500, VXLAN6, o) == 1400 and tunnel_mtu(1500, VXLAN, o) == 1440
