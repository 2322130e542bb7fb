"""The controllers of tortie-kube-controllers, wired together over one Kubernetes client and
one datastore (what ``main`` runs, and what the tests run against a fake API server).

Kubernetes resource (reflector)  ->  controllers
    namespaces                   ->  namespaces (mirror)
    pods                         ->  pods (mirror + endpoint labels/cleanup), IPAM GC
    nodes                        ->  k8snodes (mirror), nodes (Calico Node merge),
                                     hostendpoints (auto host endpoints)
    networkpolicies              ->  networkpolicies (mirror)
    services, endpointslices     ->  k8sservices, k8sendpointslices (mirror: what service
                                     advertisement needs, kubecontrollers.services)
    secrets (one namespace)      ->  BGP passwords referenced by bgppeers / bgpconfigurations
                                     (datastore.bgp_secrets layout); a missing one: a
                                     Warning Event in that namespace (kubecontrollers.events)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import Any

from kubernetes_asyncio import client

from datastore.kinds import by_plural
from datastore.store import Store
from kubecontrollers import namespaces, networkpolicies, services
from kubecontrollers.bgpsecrets import BGPSecretController
from kubecontrollers.config import ConfigWatcher
from kubecontrollers.controller import Context, Controller, Options
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.events import EventRecorder
from kubecontrollers.hostendpoints import AutoHostEndpointController
from kubecontrollers.ipam_gc import IPAMGarbageCollector
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.mirror import MirrorController
from kubecontrollers.nodes import NodeController
from kubecontrollers.pods import PodController
from kubecontrollers.reflector import PAGE_SIZE, WATCH_TIMEOUT, Reflector


class KubeControllers:
    def __init__(self, store: Store, api_client: client.ApiClient, *,
                 options: Options | None = None, metrics: KubeMetrics | None = None,
                 watch_timeout: int = WATCH_TIMEOUT, page_size: int = PAGE_SIZE) -> None:
        self.metrics = metrics or KubeMetrics()
        core = client.CoreV1Api(api_client)
        net = client.NetworkingV1Api(api_client)
        discovery = client.DiscoveryV1Api(api_client)

        def reflector(resource: str, func: Any, kind: str, api_version: str) -> Reflector:
            return Reflector(resource, func, metrics=self.metrics, page_size=page_size,
                             watch_timeout=watch_timeout, kind=kind, api_version=api_version)

        self.reflectors = {
            "namespaces": reflector("namespaces", core.list_namespace, "Namespace", "v1"),
            "pods": reflector("pods", core.list_pod_for_all_namespaces, "Pod", "v1"),
            "nodes": reflector("nodes", core.list_node, "Node", "v1"),
            "networkpolicies": reflector("networkpolicies",
                                         net.list_network_policy_for_all_namespaces,
                                         "NetworkPolicy", "networking.k8s.io/v1"),
            "services": reflector("services", core.list_service_for_all_namespaces, "Service",
                                  "v1"),
            "endpointslices": reflector("endpointslices",
                                        discovery.list_endpoint_slice_for_all_namespaces,
                                        "EndpointSlice", "discovery.k8s.io/v1"),
        }
        options = options or Options()
        # only the namespace tortie-node runs in: the RBAC grants no other Secrets
        self.reflectors["secrets"] = reflector(
            "secrets", functools.partial(core.list_namespaced_secret, options.secrets_namespace),
            "Secret", "v1")
        self.ctx = Context(store, self.metrics, self.reflectors, options)
        self.config = ConfigWatcher(self.ctx)
        self.calico_nodes = DatastoreCache(store, "nodes")
        self.heps = DatastoreCache(store, "hostendpoints")
        self.bgp_peers = DatastoreCache(store, "bgppeers")
        self.bgp_configs = DatastoreCache(store, "bgpconfigurations")
        r = self.reflectors
        self.events = EventRecorder(api_client, host=socket.gethostname(), metrics=self.metrics)
        self.pods = PodController(self.ctx, r["pods"])
        self.nodes = NodeController(self.ctx, r["nodes"], self.calico_nodes)
        self.auto_heps = AutoHostEndpointController(self.ctx, r["nodes"], self.calico_nodes,
                                                    self.heps, self.config.synced)
        self.controllers: list[Controller] = [
            namespaces.make(self.ctx, r["namespaces"]),
            self.pods,
            MirrorController(self.ctx, "k8snodes", r["nodes"], by_plural("k8snodes"), "node"),
            self.nodes,
            networkpolicies.make(self.ctx, r["networkpolicies"]),
            services.make_services(self.ctx, r["services"]),
            services.make_endpoint_slices(self.ctx, r["endpointslices"]),
            self.auto_heps,
            BGPSecretController(self.ctx, r["secrets"], self.bgp_peers, self.bgp_configs,
                                options.secrets_namespace, events=self.events),
        ]
        self.config.listeners.append(self.auto_heps.config_changed)
        self.gc = IPAMGarbageCollector(self.ctx, r["pods"], r["nodes"], self.calico_nodes)
        # a pod or a node gone: there may be addresses (of a removed node: blocks) to free
        r["pods"].add_listener(lambda key, old, new: self.gc.kick() if new is None else None)
        r["nodes"].add_listener(lambda key, old, new: self.gc.kick() if new is None else None)
        self.calico_nodes.listeners.append(
            lambda name, value: self.gc.kick() if value is None else None)
        self.synced = asyncio.Event()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.config.run(), name="kc-config"),
                 asyncio.create_task(self.calico_nodes.run(), name="kc-calico-nodes"),
                 asyncio.create_task(self.heps.run(), name="kc-heps"),
                 asyncio.create_task(self.bgp_peers.run(), name="kc-bgppeers"),
                 asyncio.create_task(self.bgp_configs.run(), name="kc-bgpconfigurations")]
        tasks += [asyncio.create_task(c.run(), name=f"kc-{c.name}") for c in self.controllers]
        tasks += [asyncio.create_task(r.run(), name=f"kc-watch-{r.resource}")
                  for r in self.reflectors.values()]
        tasks.append(asyncio.create_task(self.gc.run(), name="kc-ipam-gc"))
        try:
            await asyncio.gather(*(r.synced.wait() for r in self.reflectors.values()))
            self.synced.set()
            await asyncio.Future()  # until cancelled
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def health(self) -> dict[str, Any]:
        return {
            "synced": self.synced.is_set(),
            "resources": {name: {"synced": r.synced.is_set(),
                                 "resourceVersion": r.resource_version,
                                 "objects": len(r.cache), "relists": r.relists,
                                 "lastError": r.last_error}
                          for name, r in self.reflectors.items()},
            "controllers": {c.name: c.health() for c in self.controllers},
            "ipamGC": self.gc.health(),
        }
