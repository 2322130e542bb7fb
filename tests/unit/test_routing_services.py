"""routing/services.py: which service prefixes a node announces, and which learnt routes it
keeps out of the kernel (pure; IPv4 and IPv6)."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_bgp import BGPConfiguration
from routing import desired
from routing.bgp.api import LearnedRoute
from routing.services import (
    Advertisement,
    ServiceIndex,
    ServiceRanges,
    advertisement,
    parse_service,
    parse_slice,
    service_prefixes,
)

CLUSTER = "10.96.0.0/16"
EXTERNAL = "203.0.113.0/24"
LB = "198.51.100.0/24"
CLUSTER6 = "fd00:96::/112"
LB6 = "2001:db8:100::/120"


def ranges(**extra: Any) -> ServiceRanges:
    spec = {"serviceClusterIPs": [{"cidr": CLUSTER}, {"cidr": CLUSTER6}],
            "serviceExternalIPs": [{"cidr": EXTERNAL}],
            "serviceLoadBalancerIPs": [{"cidr": LB}, {"cidr": LB6}], **extra}
    return ServiceRanges.from_config(BGPConfiguration.from_dict(
        {"metadata": {"name": "default"}, "spec": spec}))


def service(name: str, *, type: str = "ClusterIP", cluster: tuple[str, ...] = ("10.96.0.10",),
            external: tuple[str, ...] = (), lb: tuple[str, ...] = (), etp: str | None = None,
            itp: str | None = None, ns: str = "shop") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type, "clusterIPs": list(cluster),
                            "ports": [{"port": 80}]}
    if cluster:
        spec["clusterIP"] = cluster[0]
    if external:
        spec["externalIPs"] = list(external)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    if lb:
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}}
    return doc


def slice_doc(service: str, endpoints: list[tuple[str, bool | None]], *, name: str = "",
              family: str = "IPv4", ns: str = "shop") -> dict[str, Any]:
    eps = []
    for i, (node, ready) in enumerate(endpoints):
        ep: dict[str, Any] = {"addresses": [f"10.244.0.{i + 1}"], "nodeName": node}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service}-abc", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "endpoints": eps, "ports": [{"port": 80}]}


def index(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> ServiceIndex:
    idx = ServiceIndex()
    for s in services:
        view = parse_service(s)
        idx.put_service(view.name, view)
    for s in slices:
        m = s["metadata"]
        idx.put_slice(f"{m['namespace']}/{m['name']}", parse_slice(s))
    return idx


NODES = ("node1", "node2", "node3")


def per_node(idx: ServiceIndex, r: ServiceRanges | None = None) -> dict[str, set[str]]:
    return {n: idx.prefixes(n, r or ranges()) for n in NODES}


def test_every_node_announces_the_cluster_and_external_ranges() -> None:
    idx = index([service("web")], [slice_doc("web", [("node2", True)])])
    for n in NODES:
        adv = advertisement(n, ranges(), idx)
        assert adv.prefixes == {CLUSTER, CLUSTER6, EXTERNAL}  # not the LB ranges
    # nothing configured: nothing announced, nothing rejected
    assert advertisement("node1", ServiceRanges(), idx) == Advertisement()


def test_cluster_policy_cluster_and_external_ips_ride_on_the_ranges() -> None:
    idx = index([service("web", external=("203.0.113.5",))],
                [slice_doc("web", [("node2", True)])])
    assert per_node(idx) == {n: set() for n in NODES}


def test_local_load_balancer_only_from_nodes_with_a_ready_endpoint() -> None:
    svc = service("lb", type="LoadBalancer", etp="Local", lb=("198.51.100.7",),
                  external=("203.0.113.9",))
    idx = index([svc], [slice_doc("lb", [("node2", True), ("node3", False)])])
    want = {"10.96.0.10/32", "198.51.100.7/32", "203.0.113.9/32"}
    assert per_node(idx) == {"node1": set(), "node2": want, "node3": set()}
    # node3's endpoint becomes ready (nil readiness counts as ready), node2's goes away
    idx = index([svc], [slice_doc("lb", [("node3", None)])])
    assert per_node(idx) == {"node1": set(), "node2": set(), "node3": want}
    # no endpoint at all: no node announces it
    idx = index([svc], [slice_doc("lb", [])])
    assert per_node(idx) == {n: set() for n in NODES}


def test_endpoints_in_several_slices_count_together() -> None:
    svc = service("lb", type="LoadBalancer", etp="Local", lb=("198.51.100.7",), cluster=())
    svc["spec"]["clusterIP"] = "10.96.0.11"
    idx = index([svc], [slice_doc("lb", [("node1", True)], name="lb-1"),
                        slice_doc("lb", [("node3", True)], name="lb-2")])
    got = per_node(idx)
    assert got["node1"] == got["node3"] == {"10.96.0.11/32", "198.51.100.7/32"}
    assert got["node2"] == set()
    idx.put_slice("shop/lb-1", None)
    assert per_node(idx)["node1"] == set() and per_node(idx)["node3"]


def test_cluster_policy_load_balancer_from_every_node_while_served() -> None:
    svc = service("lb", type="LoadBalancer", lb=("198.51.100.7",), etp="Cluster")
    idx = index([svc], [slice_doc("lb", [("node2", True)])])
    assert per_node(idx) == {n: {"198.51.100.7/32"} for n in NODES}
    idx = index([svc], [slice_doc("lb", [("node2", False)])])
    assert per_node(idx) == {n: set() for n in NODES}  # no ready endpoint anywhere


def test_addresses_outside_the_ranges_are_never_announced() -> None:
    svc = service("lb", type="LoadBalancer", etp="Local", cluster=("10.97.0.10",),
                  lb=("192.0.2.50", "198.51.100.8"), external=("203.0.114.1",))
    idx = index([svc], [slice_doc("lb", [("node1", True)])])
    assert per_node(idx)["node1"] == {"198.51.100.8/32"}
    # a load-balancer IP inside the external range is not an external IP
    svc = service("lb2", type="LoadBalancer", etp="Local", lb=("203.0.113.77",))
    idx = index([svc], [slice_doc("lb2", [("node1", True)])])
    assert per_node(idx)["node1"] == {"10.96.0.10/32"}
    # no serviceClusterIPs: cluster IPs stay unannounced even for Local Services
    r = ServiceRanges.from_config(BGPConfiguration.from_dict(
        {"metadata": {"name": "default"}, "spec": {"serviceLoadBalancerIPs": [{"cidr": LB}]}}))
    idx = index([service("lb", type="LoadBalancer", etp="Local", lb=("198.51.100.8",))],
                [slice_doc("lb", [("node1", True)])])
    assert idx.prefixes("node1", r) == {"198.51.100.8/32"}


def test_internal_traffic_policy_local_pins_the_cluster_ip() -> None:
    idx = index([service("dns", itp="Local", external=("203.0.113.5",))],
                [slice_doc("dns", [("node3", True)])])
    assert per_node(idx) == {"node1": set(), "node2": set(), "node3": {"10.96.0.10/32"}}


@pytest.mark.parametrize("svc", [
    service("headless", cluster=("None",), etp="Local"),
    service("name", type="ExternalName", cluster=(), etp="Local"),
])
def test_services_without_a_cluster_ip_are_skipped(svc: dict[str, Any]) -> None:
    idx = index([svc], [slice_doc(svc["metadata"]["name"], [("node1", True)])])
    assert per_node(idx)["node1"] == set()


def test_ipv6_per_family_readiness() -> None:
    svc = service("dual", type="LoadBalancer", etp="Local",
                  cluster=("10.96.0.20", "fd00:96::20"),
                  lb=("198.51.100.20", "2001:db8:100::20"))
    idx = index([svc], [slice_doc("dual", [("node1", True)], name="dual-v4"),
                        slice_doc("dual", [("node2", True)], name="dual-v6", family="IPv6")])
    got = per_node(idx)
    assert got["node1"] == {"10.96.0.20/32", "198.51.100.20/32"}
    assert got["node2"] == {"fd00:96::20/128", "2001:db8:100::20/128"}
    assert got["node3"] == set()


def test_slice_without_a_service_label_and_slices_of_other_namespaces() -> None:
    orphan = slice_doc("web", [("node1", True)])
    del orphan["metadata"]["labels"]
    other_ns = slice_doc("web", [("node2", True)], ns="other")
    idx = index([service("web", etp="Local")], [orphan, other_ns])
    assert per_node(idx) == {n: set() for n in NODES}
    assert parse_slice(orphan).service is None


def test_single_service_prefixes_helper() -> None:
    view = parse_service(service("lb", type="LoadBalancer", etp="Local", lb=("198.51.100.7",)))
    assert service_prefixes("node1", ranges(), view, {("node1", 4)}) == {
        "10.96.0.10/32", "198.51.100.7/32"}
    assert service_prefixes("node1", ranges(), view, {("node2", 4)}) == set()
    assert service_prefixes("node1", ServiceRanges(), view, {("node1", 4)}) == set()


# --- desired.compute with an advertisement -------------------------------------------------------

ME = desired.parse_node({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                         "metadata": {"name": "node1"},
                         "spec": {"bgp": {"ipv4Address": "192.0.2.11/24",
                                          "ipv6Address": "2001:db8:0:1::11/64"}}})
V4_ONLY = desired.parse_node({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                              "metadata": {"name": "node1"},
                              "spec": {"bgp": {"ipv4Address": "192.0.2.11/24"}}})


def test_compute_announces_service_prefixes_with_the_family_next_hop() -> None:
    adv = Advertisement(frozenset({CLUSTER, CLUSTER6, "198.51.100.7/32"}), ranges().all)
    got = desired.compute(ME, {"node1": ME}, [], [], {}, services=adv)
    assert got.announce == {CLUSTER: "192.0.2.11", CLUSTER6: "2001:db8:0:1::11",
                            "198.51.100.7/32": "192.0.2.11"}
    # no IPv6 address: no IPv6 prefix
    got = desired.compute(V4_ONLY, {"node1": V4_ONLY}, [], [], {}, services=adv)
    assert set(got.announce) == {CLUSTER, "198.51.100.7/32"}


def test_learnt_service_prefixes_never_reach_the_kernel() -> None:
    """A node learns the cluster range and a Local /32 from its peers (ECMP for the range):
    it announces the range itself and the /32 lies inside a service range, so neither
    becomes a kernel route; a pod block next to them does."""
    adv = Advertisement(frozenset({CLUSTER}), ranges().all)
    learnt = {
        CLUSTER: LearnedRoute(CLUSTER, "192.0.2.12", "192.0.2.12",
                              next_hops=("192.0.2.12", "192.0.2.13")),
        "198.51.100.7/32": LearnedRoute("198.51.100.7/32", "192.0.2.12", "192.0.2.12"),
        "fd00:96::20/128": LearnedRoute("fd00:96::20/128", "2001:db8:0:1::12",
                                        "192.0.2.12"),
        "10.244.2.0/26": LearnedRoute("10.244.2.0/26", "192.0.2.12", "192.0.2.12"),
    }
    got = desired.compute(ME, {"node1": ME}, [], [], learnt, services=adv)
    assert set(got.routes) == {"10.244.2.0/26"}
    assert CLUSTER in got.announce
    # without service advertisement the same routes are installed (ECMP for the range)
    got = desired.compute(ME, {"node1": ME}, [], [], learnt)
    assert set(got.routes) == set(learnt)
    assert got.routes[CLUSTER].gateways == ("192.0.2.12", "192.0.2.13")
