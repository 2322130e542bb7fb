"""The metrics of tortie-kube-controllers (one set per process, labelled by resource /
controller), registered in one ``prometheus_client.CollectorRegistry``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from agentkit.metrics import new_registry


class KubeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or new_registry()
        self.lists = Counter("tortie_kc_lists_total",
                             "Full lists of a Kubernetes resource, by reason (initial, gone, "
                             "error)", ("resource", "reason"), registry=r)
        self.watches = Counter("tortie_kc_watches_total",
                               "Watch requests started", ("resource",), registry=r)
        self.watch_errors = Counter("tortie_kc_watch_errors_total",
                                    "Watches that ended in an error (connection lost, HTTP "
                                    "error)", ("resource",), registry=r)
        self.events = Counter("tortie_kc_events_total", "Watch events received, by type",
                              ("resource", "type"), registry=r)
        self.bad_objects = Counter("tortie_kc_bad_objects_total",
                                   "Objects skipped because they could not be used",
                                   ("resource",), registry=r)
        self.synced = Gauge("tortie_kc_synced", "1 once the resource has been listed",
                            ("resource",), registry=r)
        self.reconciles = Counter("tortie_kc_reconciles_total",
                                  "Reconciliations of one object, by result (ok, error)",
                                  ("controller", "result"), registry=r)
        self.writes = Counter("tortie_kc_datastore_writes_total",
                              "Datastore writes, by controller and operation",
                              ("controller", "op"), registry=r)
        self.ipam_released = Counter("tortie_kc_ipam_leaks_released_total",
                                     "Leaked IPAM addresses released", registry=r)
        self.bgp_password_refs_missing = Gauge(
            "tortie_kc_bgp_password_refs_missing",
            "Secret keys referenced as BGP passwords that do not exist (Secret or key missing)",
            registry=r)
        self.events_failed = Counter("tortie_kc_events_failed_total",
                                     "Kubernetes Events the API server did not take (RBAC, "
                                     "unreachable)", registry=r)
        self.ipam_candidates = Gauge("tortie_kc_ipam_leak_candidates",
                                     "Addresses whose pod is gone, waiting out the grace "
                                     "period", registry=r)
        self.leader = Gauge("tortie_kube_controllers_leader",
                            "1 while this replica holds the leader Lease and runs the "
                            "controllers, else 0", registry=r)
        self.leader_transitions = Counter("tortie_kc_leader_transitions_total",
                                          "Leadership changes of this replica (started, "
                                          "lost, released)", ("event",), registry=r)
        self.lease_errors = Counter("tortie_kc_lease_errors_total",
                                    "Lease requests that failed (HTTP error, timeout, "
                                    "connection)", registry=r)
        self.lease_conflicts = Counter("tortie_kc_lease_conflicts_total",
                                       "Lease writes refused because another replica wrote "
                                       "first (HTTP 409)", registry=r)
