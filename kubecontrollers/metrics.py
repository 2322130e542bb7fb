"""The metrics of tortie-kube-controllers (one set per process, labelled by resource /
controller), registered in a :class:`node.metrics.Registry`."""

from __future__ import annotations

from node.metrics import Registry


class KubeMetrics:
    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.lists = r.counter("tortie_kc_lists_total",
                               "Full lists of a Kubernetes resource, by reason (initial, gone, "
                               "error)", ("resource", "reason"))
        self.watches = r.counter("tortie_kc_watches_total",
                                 "Watch requests started", ("resource",))
        self.watch_errors = r.counter("tortie_kc_watch_errors_total",
                                      "Watches that ended in an error (connection lost, HTTP "
                                      "error)", ("resource",))
        self.events = r.counter("tortie_kc_events_total", "Watch events received, by type",
                                ("resource", "type"))
        self.bad_objects = r.counter("tortie_kc_bad_objects_total",
                                     "Objects skipped because they could not be used",
                                     ("resource",))
        self.synced = r.gauge("tortie_kc_synced", "1 once the resource has been listed",
                              ("resource",))
        self.reconciles = r.counter("tortie_kc_reconciles_total",
                                    "Reconciliations of one object, by result (ok, error)",
                                    ("controller", "result"))
        self.writes = r.counter("tortie_kc_datastore_writes_total",
                                "Datastore writes, by controller and operation",
                                ("controller", "op"))
        self.ipam_released = r.counter("tortie_kc_ipam_leaks_released_total",
                                       "Leaked IPAM addresses released")
        self.ipam_candidates = r.gauge("tortie_kc_ipam_leak_candidates",
                                       "Addresses whose pod is gone, waiting out the grace "
                                       "period")
