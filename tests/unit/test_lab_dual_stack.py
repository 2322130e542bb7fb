"""The dual-stack settings of the lab's Kubernetes and containerd (no process started: the
lab itself is exercised by tests/integration/test_kubernetes_dual_stack.py)."""

from __future__ import annotations

import re

import pytest

from lab import containerd, underlay
from lab.cluster import Lab, LabError
from lab.kubernetes import (
    SERVICE_CIDR,
    SERVICE_CIDR6,
    KubeError,
    NodeInfo,
    check_pools,
    service_cidrs,
)


def test_service_ranges_and_node_ips_follow_the_families() -> None:
    assert service_cidrs(False) == (SERVICE_CIDR,)
    assert service_cidrs(True) == (SERVICE_CIDR, SERVICE_CIDR6)
    assert NodeInfo("n1", "ns", "192.0.2.11", "s").addresses == ("192.0.2.11",)
    assert NodeInfo("n1", "ns", "192.0.2.11", "s", "2001:db8:0:1::11").addresses == (
        "192.0.2.11", "2001:db8:0:1::11")


def test_a_pool_overlapping_a_service_range_is_refused() -> None:
    check_pools(["10.244.0.0/16", underlay.DEFAULT_POOL6_CIDR], service_cidrs(True))
    with pytest.raises(KubeError, match="fd00:10:96::/120 overlaps the Service range"):
        check_pools(["10.244.0.0/16", "fd00:10:96::/120"], service_cidrs(True))
    with pytest.raises(KubeError, match=re.escape("10.96.5.0/24 overlaps")):
        check_pools(["10.96.5.0/24"], service_cidrs(False))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pool_cidr": "fd00::/64"}, "--pool 'fd00::/64': not an IPv4 CIDR"),
    ({"dual_stack": True, "pool6_cidr": "10.1.0.0/16"}, "--pool6 '10.1.0.0/16': not an IPv6"),
    ({"dual_stack": True, "pool6_cidr": "nonsense"}, "--pool6 'nonsense'"),
    ({"kubernetes": True, "dual_stack": True, "pool6_cidr": "fd00:10:96::/64"},
     "overlaps the Service range fd00:10:96::/112"),
])
def test_lab_up_refuses_bad_pools_before_making_anything(
        kwargs: dict[str, object], message: str) -> None:
    lab = Lab("unitpools")
    with pytest.raises(LabError, match=re.escape(message)):
        lab.up(2, **kwargs)  # type: ignore[arg-type]
    assert not lab.exists()


def test_node_conflist_asks_for_both_families_in_a_dual_stack_lab() -> None:
    base = {"cniVersion": "1.1.0", "name": "k8s-pod-network",
            "plugins": [{"type": "tortie", "ipam": {"type": "tortie-ipam"}},
                        {"type": "portmap"}]}
    out = containerd.node_conflist(base, socket="s", version="1.1.0",
                                   ipam=underlay.DUAL_STACK_IPAM)
    assert out["plugins"][0]["ipam"] == {"type": "tortie-ipam", "assign_ipv4": "true",
                                         "assign_ipv6": "true"}
    assert "assign_ipv6" not in containerd.node_conflist(
        base, socket="s", version="1.1.0")["plugins"][0]["ipam"]
    assert base["plugins"][0]["ipam"] == {"type": "tortie-ipam"}  # not changed
