"""Service address advertisement (pure: no I/O): which Service prefixes a node announces.

Calico's rules ("Advertise Kubernetes service IP addresses"; its confd route generator),
from the ``default`` BGPConfiguration's ``serviceClusterIPs``, ``serviceExternalIPs`` and
``serviceLoadBalancerIPs`` (lists of ``{cidr}``) and the Services and EndpointSlices
tortie-kube-controllers mirrors (``k8sservices``, ``k8sendpointslices``):

* every node announces each ``serviceClusterIPs`` and ``serviceExternalIPs`` CIDR (the
  upstream routers spread the traffic over the nodes with ECMP; kube-proxy forwards it);
* a Service with ``externalTrafficPolicy: Local``: each of its cluster, external and
  load-balancer IPs that lies in a configured range of its kind is announced as a /32
  (/128) by the nodes that have a ready endpoint of it (of that address family), and only
  by them: traffic reaches a node that serves it, the client's address preserved;
* ``internalTrafficPolicy: Local`` does the same for its cluster IPs (kube-proxy then drops
  cluster-IP traffic on nodes without a local endpoint; Calico looks only at
  ``externalTrafficPolicy``);
* a load-balancer IP (``status.loadBalancer.ingress[].ip``) in a ``serviceLoadBalancerIPs``
  range with ``externalTrafficPolicy: Cluster``: a /32 (/128) from every node, while the
  Service has a ready endpoint anywhere (Calico's ``serviceLoadBalancerAggregation:
  Disabled``: the ranges themselves are not announced);
* only Services of type ClusterIP, NodePort and LoadBalancer with a cluster IP count
  (not headless or ExternalName ones); an address outside the configured ranges is never
  announced.

A node installs no kernel route for a prefix inside a configured range that it learns from
other nodes (Calico's "reject" CIDRs): kube-proxy handles service addresses on every node,
and a route to another node would take local service traffic away from it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.keys import parse_resource_key
from datastore.model_bgp import BGPConfiguration, ServiceIPBlock
from datastore.model_k8s import K8sEndpointSlice, K8sService

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Service types whose addresses are advertised (Calico's list)
ADVERTISED_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})
LOCAL = "Local"
#: EndpointSlice addressType -> IP version (FQDN slices carry no address family)
_FAMILY = {"IPv4": 4, "IPv6": 6}


def _networks(blocks: Iterable[ServiceIPBlock] | None) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(b.cidr, strict=False) for b in blocks or () if b.cidr)


def _within(net: Network, ranges: Iterable[Network]) -> bool:
    return any(net.version == r.version and net.subnet_of(r) for r in ranges)  # type: ignore[arg-type]


def _host(ip: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``ip`` as a /32 (/128); None when it is not an address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


@dataclass(frozen=True)
class ServiceRanges:
    """The service CIDRs of the ``default`` BGPConfiguration, parsed."""

    cluster: tuple[Network, ...] = ()
    external: tuple[Network, ...] = ()
    load_balancer: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config: BGPConfiguration | None) -> ServiceRanges:
        if config is None:
            return cls()
        s = config.spec
        return cls(_networks(s.serviceClusterIPs), _networks(s.serviceExternalIPs),
                   _networks(s.serviceLoadBalancerIPs))

    def __bool__(self) -> bool:
        return bool(self.cluster or self.external or self.load_balancer)

    @property
    def every_node(self) -> tuple[Network, ...]:
        """The ranges every node announces whole."""
        return self.cluster + self.external

    @property
    def all(self) -> tuple[Network, ...]:
        """Every configured range: no learnt route inside one goes into the kernel."""
        return self.cluster + self.external + self.load_balancer

    def covers(self, prefix: str) -> bool:
        """Whether ``prefix`` lies in a configured range."""
        return _within(ipaddress.ip_network(prefix, strict=False), self.all)


@dataclass(frozen=True)
class ServiceView:
    """What advertisement uses of one Service."""

    name: str                                   # namespace/name
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    external_local: bool = False
    internal_local: bool = False
    advertised: bool = True                     # type and cluster IP qualify

    @classmethod
    def from_service(cls, svc: K8sService) -> ServiceView:
        cluster = tuple(svc.cluster_ips())
        return cls(name=f"{svc.namespace}/{svc.name}", cluster_ips=cluster,
                   external_ips=tuple(svc.spec.externalIPs or ()),
                   load_balancer_ips=tuple(svc.load_balancer_ips()),
                   external_local=svc.spec.externalTrafficPolicy == LOCAL,
                   internal_local=svc.spec.internalTrafficPolicy == LOCAL,
                   advertised=svc.spec.type in ADVERTISED_TYPES and bool(cluster))


@dataclass(frozen=True)
class SliceView:
    """What advertisement uses of one EndpointSlice: its Service (``namespace/name``; None
    when it names none) and the nodes with a ready endpoint, as (node, IP version; 0 when
    the slice's address type has no family)."""

    service: str | None
    ready: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_slice(cls, es: K8sEndpointSlice) -> SliceView:
        service = f"{es.namespace}/{es.service}" if es.service else None
        version = _FAMILY.get(es.addressType or "", 0)
        return cls(service, frozenset((n, version) for n in es.ready_nodes()))


def parse_service(doc: Mapping[str, Any]) -> ServiceView:
    return ServiceView.from_service(K8sService.from_dict(dict(doc)))


def parse_slice(doc: Mapping[str, Any]) -> SliceView:
    return SliceView.from_slice(K8sEndpointSlice.from_dict(dict(doc)))


def service_prefixes(node: str, ranges: ServiceRanges, svc: ServiceView,
                     ready: Iterable[tuple[str, int]]) -> set[str]:
    """The /32 (/128) prefixes ``node`` announces for one Service (see the module
    docstring); ``ready``: (node, IP version) of its ready endpoints, over all its slices."""
    if not ranges or not svc.advertised:
        return set()
    ready = set(ready)
    anywhere = {v for _, v in ready}

    def here(net: Network) -> bool:
        return (node, net.version) in ready or (node, 0) in ready

    def served(net: Network) -> bool:
        return net.version in anywhere or 0 in anywhere

    out: set[str] = set()
    for ips, kind_ranges, local in (
            (svc.cluster_ips, ranges.cluster, svc.external_local or svc.internal_local),
            (svc.external_ips, ranges.external, svc.external_local),
            (svc.load_balancer_ips, ranges.load_balancer, svc.external_local)):
        for ip in ips:
            net = _host(ip)
            if net is None or not _within(net, kind_ranges):
                continue
            if local:
                if here(net):
                    out.add(str(net))
            elif kind_ranges is ranges.load_balancer and served(net):
                out.add(str(net))  # Cluster policy: every node (cluster / external: the range)
    return out


@dataclass
class ServiceIndex:
    """The Services and EndpointSlices a node knows (by datastore key), and what it
    announces for them."""

    services: dict[str, ServiceView] = field(default_factory=dict)      # ns/name -> view
    slices: dict[str, SliceView] = field(default_factory=dict)          # ns/slice -> view
    _by_service: dict[str, set[str]] = field(default_factory=dict)      # ns/name -> slices

    @staticmethod
    def name_of(key: str) -> str:
        """``namespace/name`` of a ``k8sservices`` / ``k8sendpointslices`` key."""
        _, ns, name = parse_resource_key(key)
        return f"{ns}/{name}"

    def put_service(self, name: str, view: ServiceView | None) -> None:
        if view is None:
            self.services.pop(name, None)
        else:
            self.services[name] = view

    def put_slice(self, name: str, view: SliceView | None) -> None:
        old = self.slices.pop(name, None)
        if old is not None and old.service is not None:
            mine = self._by_service.get(old.service, set())
            mine.discard(name)
            if not mine:
                self._by_service.pop(old.service, None)
        if view is not None:
            self.slices[name] = view
            if view.service is not None:
                self._by_service.setdefault(view.service, set()).add(name)

    def service_of_slice(self, name: str) -> str | None:
        old = self.slices.get(name)
        return old.service if old is not None else None

    def ready(self, service: str) -> set[tuple[str, int]]:
        return {r for s in self._by_service.get(service, ()) for r in self.slices[s].ready}

    def prefixes(self, node: str, ranges: ServiceRanges,
                 only: Iterable[str | None] | None = None) -> set[str]:
        """Every /32 (/128) ``node`` announces for the Services (``only``: these)."""
        if not ranges:
            return set()
        names = self.services if only is None else [n for n in only if n]
        out: set[str] = set()
        for name in names:
            svc = self.services.get(name)
            if svc is not None:
                out |= service_prefixes(node, ranges, svc, self.ready(name))
        return out


@dataclass(frozen=True)
class Advertisement:
    """What service advertisement asks of one node's routing: the prefixes it announces,
    and the ranges inside which it installs no learnt route."""

    prefixes: frozenset[str] = frozenset()
    ranges: tuple[Network, ...] = ()

    def rejects(self, net: Network) -> bool:
        return _within(net, self.ranges)


def advertisement(node: str, ranges: ServiceRanges, index: ServiceIndex) -> Advertisement:
    """This node's :class:`Advertisement`: the ranges every node announces and its
    per-Service prefixes."""
    if not ranges:
        return Advertisement()
    prefixes = {str(n) for n in ranges.every_node} | index.prefixes(node, ranges)
    return Advertisement(frozenset(prefixes), ranges.all)
