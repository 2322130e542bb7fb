"""The fields Tortie accepts but does not act on: one table, what is set, the warnings.

Tortie stores every ``projectcalico.org/v3`` document calicoctl would (see the models), but
its agents act on only part of them.  :data:`UNSUPPORTED` lists, per kind, every field that
no Tortie component reads (checked against the code that consumes each model: the policy
agent, the routing agent, IPAM, the CNI handler, kube-controllers).  A field not in the
table is acted on.

A field is *set* when it is present and differs from the value that means "what Tortie does
anyway": empty (``None``, ``""``, ``[]``, ``{}``) or one of the entry's ``same`` values
(``floatingIPs: Disabled``, ``wireguardEnabled: false``, the defaults the models fill in).
A set field gives a warning at ``tortie apply`` / ``create`` / ``replace`` (the resource is
stored all the same) and a log line from the node agent that consumes the kind, once per
resource (:class:`IgnoredFieldLog`).

Rule matches Tortie cannot enforce (``http``, ``services``) never widen what is allowed:
an Allow or Pass rule with one matches nothing; a Deny or Log rule applies without the
condition (so it drops or logs more, never less).  The policy agent does that
(:func:`rule_unenforced`, used by ``policyagent.rule_translation``); the warning says which.

``docs/supported.md`` is rendered from the table (:func:`render_markdown`; regenerate with
``python -m datastore.unsupported > docs/supported.md``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from datastore.kinds import KINDS
from datastore.model_base import CALICO_API_VERSION
from datastore.model_config import FelixConfigurationSpec

log = logging.getLogger("tortie.unsupported")

#: ``all``: any resource of the kind; ``node``: only per-node configurations
#: (``node.<nodename>``), whose other fields the agents read from ``default``; ``other``:
#: configurations named neither ``default`` nor ``node.<nodename>``, which no agent reads
#: (their other entries are then not reported one by one).
Scope = Literal["all", "node", "other"]
#: ``ignored``: stored, no effect; ``match``: a rule condition Tortie cannot enforce.
Effect = Literal["ignored", "match"]


@dataclass(frozen=True)
class Unsupported:
    """One field of one kind that Tortie does not act on.

    ``path``: dotted field names, ``[*]`` for every element of a list
    (``spec.ingress[*].http``).  ``why``: what happens instead (for the docs).
    """

    kind: str
    path: str
    why: str
    same: tuple[Any, ...] = ()
    effect: Effect = "ignored"
    scope: Scope = "all"


@dataclass(frozen=True)
class IgnoredField:
    """A set field of one document that Tortie does not act on."""

    path: str                 # concrete: spec.ingress[0].http
    entry: Unsupported
    action: str | None = None  # the rule's action, for rule matches

    @property
    def message(self) -> str:
        """``<path> is ...``: the warning without the resource."""
        if self.entry.effect == "match":
            if self.action in ("Allow", "Pass"):
                return (f"{self.path} is not enforced by Tortie: this {self.action} rule "
                        "matches no traffic")
            return (f"{self.path} is not enforced by Tortie: this {self.action} rule applies "
                    "without it (to more traffic)")
        return f"{self.path} is not supported by Tortie: stored, but it has no effect"


# --- the table -----------------------------------------------------------------------------

_RULE_KINDS: Final = ("GlobalNetworkPolicy", "NetworkPolicy", "Profile")
_HTTP_WHY: Final = ("an L7 match (needs an application-layer proxy): an Allow/Pass rule with it "
                    "matches nothing, a Deny/Log rule applies without it")
_SERVICES_WHY: Final = ("a Kubernetes Service match (needs the Service's endpoints): an "
                        "Allow/Pass rule with it matches nothing, a Deny/Log rule applies "
                        "without it")


def _rule_entries() -> list[Unsupported]:
    out = []
    for kind in _RULE_KINDS:
        for direction in ("ingress", "egress"):
            base = f"spec.{direction}[*]"
            out += [
                Unsupported(kind, f"{base}.http", _HTTP_WHY, effect="match"),
                Unsupported(kind, f"{base}.source.services", _SERVICES_WHY, effect="match"),
                Unsupported(kind, f"{base}.destination.services", _SERVICES_WHY,
                            effect="match"),
            ]
    return out


#: FelixConfiguration fields the policy agent, the routing agent and the CNI handler read
#: (the tunnel MTUs: datastore/mtu.py; the VXLAN port and VNI: datastore/vxlan_settings.py);
#: every other field is in the table.
FELIX_ACTED_ON: Final = frozenset({
    "defaultEndpointToHostAction", "failsafeInboundHostPorts", "failsafeOutboundHostPorts",
    "workloadProtectedHostPorts", "vxlanMTU", "vxlanMTUV6", "ipipMTU", "vxlanPort", "vxlanVNI",
})
#: FelixConfiguration values that say what Tortie does anyway (calico-node's own default
#: FelixConfiguration is ``bpfLogLevel: ""``, ``floatingIPs: Disabled``,
#: ``logSeverityScreen: Info``, ``reportingInterval: 0s``).
_FELIX_SAME: Final[dict[str, tuple[Any, ...]]] = {
    "ipv6Support": (True,),
    "logSeverityScreen": ("Info",),
    "reportingInterval": ("0s", "0"),
    "floatingIPs": ("Disabled",),
    "bpfEnabled": (False,),
    "xdpEnabled": (False,),
    "genericXDPEnabled": (False,),
    "sidecarAccelerationEnabled": (False,),
    "usageReportingEnabled": (False,),
    "endpointReportingEnabled": (False,),
    "wireguardEnabled": (False,),
    "wireguardEnabledV6": (False,),
    "wireguardHostEncryptionEnabled": (False,),
    "nftablesMode": ("Enabled",),
    "bpfProfiling": ("Disabled",),
    "windowsManageFirewallRules": ("Disabled",),
    "awsSrcDstCheck": ("DoNothing",),
    "routeSyncDisabled": (False,),
    "interfacePrefix": ("cali",),
    "bpfLogLevel": ("Off",),
    "natOutgoingExclusions": ("IPPoolsAndHostIPs",),
    "workloadSourceSpoofing": ("Any",),
    "allowVXLANPacketsFromWorkloads": (True,),
    "allowIPIPPacketsFromWorkloads": (True,),
}
_FELIX_WHY: Final[dict[str, str]] = {
    "wireguardEnabled": "Tortie has no WireGuard encryption",
    "ipipEnabled": "tunnels follow the IPPools' ipipMode / vxlanMode",
    "vxlanEnabled": "tunnels follow the IPPools' ipipMode / vxlanMode",
    "bpfEnabled": "Tortie's dataplane is nftables only",
    "nftablesMode": "Tortie always programs nftables",
    "logSeverityScreen": "tortie-node's log level is its --log-level flag",
    "prometheusMetricsEnabled": "tortie-node always serves /metrics (its own flags)",
    "healthEnabled": "tortie-node always serves its health endpoint (its own flags)",
    "interfacePrefix": "workload interfaces are always cali*",
    "natOutgoingExclusions": "traffic to node addresses is never masqueraded (as "
                             "IPPoolsAndHostIPs)",
    "workloadSourceSpoofing": "a workload endpoint's allowSpoofedSourcePrefixes is always "
                              "honoured (as Any)",
    "allowVXLANPacketsFromWorkloads": "tunnel packets from workloads are not dropped "
                                      "specially: policy decides (as true)",
    "allowIPIPPacketsFromWorkloads": "tunnel packets from workloads are not dropped "
                                     "specially: policy decides (as true)",
}


def _felix_entries() -> list[Unsupported]:
    return [Unsupported("FelixConfiguration", f"spec.{name}",
                        _FELIX_WHY.get(name, "not read by Tortie"),
                        same=_FELIX_SAME.get(name, ()))
            for name in FelixConfigurationSpec.model_fields if name not in FELIX_ACTED_ON]


_NOT_READ: Final = "not read by Tortie"
_PER_NODE: Final = "read only from the BGPConfiguration named default"
_ONLY_NAMED: Final = "only the configurations named default and node.<nodename> are read"

UNSUPPORTED: Final[tuple[Unsupported, ...]] = (
    *_rule_entries(),
    Unsupported("GlobalNetworkPolicy", "spec.performanceHints",
                "a rendering hint; Tortie's rendering does not use it (same semantics)"),
    Unsupported("NetworkPolicy", "spec.performanceHints",
                "a rendering hint; Tortie's rendering does not use it (same semantics)"),
    Unsupported("WorkloadEndpoint", "spec.ipNATs", "Tortie has no floating IPs (1:1 NAT)"),
    Unsupported("WorkloadEndpoint", "spec.ipv4Gateway", _NOT_READ),
    Unsupported("WorkloadEndpoint", "spec.ipv6Gateway", _NOT_READ),
    Unsupported("WorkloadEndpoint", "spec.awsElasticIPs", "Tortie has no AWS integration"),
    Unsupported("WorkloadEndpoint", "spec.qosControls", "Tortie applies no QoS limits"),
    Unsupported("WorkloadEndpoint", "spec.ports[*].hostPort",
                "host ports are the portmap CNI plugin's job"),
    Unsupported("WorkloadEndpoint", "spec.ports[*].hostIP",
                "host ports are the portmap CNI plugin's job"),
    Unsupported("HostEndpoint", "spec.ports[*].hostPort", _NOT_READ),
    Unsupported("HostEndpoint", "spec.ports[*].hostIP", _NOT_READ),
    Unsupported("Node", "spec.interfaceName", _NOT_READ),
    Unsupported("BGPConfiguration", "spec.logSeverityScreen",
                "the BGP speaker's log level is tortie-node's", same=("Info",)),
    Unsupported("BGPConfiguration", "spec.serviceLoadBalancerAggregation",
                "Tortie announces every LoadBalancer IP as its own /32 (/128), as Calico does "
                "with Disabled; the serviceLoadBalancerIPs ranges are not announced whole",
                same=("Disabled",)),
    Unsupported("BGPConfiguration", "spec.bindMode",
                "the BGP speaker listens on every address", same=("None",)),
    Unsupported("BGPConfiguration", "spec.ignoredInterfaces", _NOT_READ),
    Unsupported("BGPConfiguration", "spec.localWorkloadPeeringIPV4",
                "Tortie has no workload BGP peering"),
    Unsupported("BGPConfiguration", "spec.localWorkloadPeeringIPV6",
                "Tortie has no workload BGP peering"),
    Unsupported("BGPConfiguration", "spec.programClusterRoutes",
                "Tortie always programs the cluster's routes", same=("Enabled",)),
    Unsupported("BGPConfiguration", "spec.ipv4NormalRoutePriority", _NOT_READ),
    Unsupported("BGPConfiguration", "spec.ipv6NormalRoutePriority", _NOT_READ),
    Unsupported("BGPConfiguration", "spec.asNumber", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.nodeToNodeMeshEnabled", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.nodeMeshPassword", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.nodeMeshMaxRestartTime", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.serviceClusterIPs", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.serviceExternalIPs", _PER_NODE, scope="node"),
    Unsupported("BGPConfiguration", "spec.serviceLoadBalancerIPs", _PER_NODE, scope="node"),
    Unsupported("BGPPeer", "spec.localWorkloadSelector", "Tortie has no workload BGP peering"),
    Unsupported("BGPPeer", "spec.reversePeering", _NOT_READ, same=("Auto",)),
    Unsupported("BGPConfiguration", "spec", _ONLY_NAMED, scope="other"),
    *_felix_entries(),
    Unsupported("FelixConfiguration", "spec", _ONLY_NAMED, scope="other"),
    Unsupported("KubeControllersConfiguration", "spec.logSeverityScreen",
                "tortie-kube-controllers' log level is its --log-level flag", same=("Info",)),
    Unsupported("KubeControllersConfiguration", "spec.healthChecks",
                "tortie-kube-controllers always serves /healthz", same=("Enabled",)),
    Unsupported("KubeControllersConfiguration", "spec.etcdV3CompactionPeriod",
                "Tortie does not compact etcd", same=("10m0s",)),
    Unsupported("KubeControllersConfiguration", "spec.prometheusMetricsPort",
                "the metrics port is tortie-kube-controllers' --metrics-port flag"),
    Unsupported("KubeControllersConfiguration", "spec.debugProfilePort", _NOT_READ),
    Unsupported("KubeControllersConfiguration", "spec.controllers.loadBalancer",
                "Tortie assigns no LoadBalancer IPs",
                same=({"assignIPs": "AllServices"},)),
    Unsupported("KubeControllersConfiguration", "spec.controllers.policyMigration",
                "Tortie has no policy migration", same=({"enabled": "Enabled"},)),
    Unsupported("KubeControllersConfiguration", "spec.controllers.node.hostEndpoint.templates",
                "only the default <node>-auto-hep host endpoints are created"),
)


def _by_kind() -> dict[str, tuple[Unsupported, ...]]:
    out: dict[str, list[Unsupported]] = {}
    for u in UNSUPPORTED:
        out.setdefault(u.kind, []).append(u)
    return {k: tuple(v) for k, v in out.items()}


_BY_KIND: Final = _by_kind()


# --- what is set in a document ---------------------------------------------------------------

def _segments(path: str) -> list[tuple[str, bool]]:
    """``spec.ingress[*].http`` -> [("spec", False), ("ingress", True), ("http", False)]."""
    return [(p.removesuffix("[*]"), p.endswith("[*]")) for p in path.split(".")]


def _walk(value: Any, segs: list[tuple[str, bool]], where: str, indices: tuple[int, ...],
          ) -> Iterator[tuple[str, Any, tuple[int, ...]]]:
    if not segs:
        yield where, value, indices
        return
    (name, each), rest = segs[0], segs[1:]
    if not isinstance(value, Mapping) or name not in value:
        return
    here = f"{where}.{name}" if where else name
    child = value[name]
    if not each:
        yield from _walk(child, rest, here, indices)
    elif isinstance(child, list):
        for i, item in enumerate(child):
            yield from _walk(item, rest, f"{here}[{i}]", (*indices, i))


def _is_set(value: Any, same: tuple[Any, ...] = ()) -> bool:
    """Present and meaning something: not empty (a mapping of empty values is empty too,
    e.g. ``http: {methods: []}``) and not one of ``same``."""
    if value is None or value == "" or value == [] or value == {}:
        return False
    if any(value == s and type(value) is type(s) for s in same):
        return False
    if isinstance(value, Mapping):
        return any(_is_set(v) for v in value.values())
    return True


def _rule_action(doc: Mapping[str, Any], path: str, indices: tuple[int, ...]) -> str | None:
    direction = path.split(".")[1].removesuffix("[*]")
    rules = (doc.get("spec") or {}).get(direction) or []
    rule = rules[indices[0]] if indices and indices[0] < len(rules) else None
    action = rule.get("action") if isinstance(rule, Mapping) else None
    return action if isinstance(action, str) else None


def ignored_fields(kind: str, document: Mapping[str, Any]) -> list[IgnoredField]:
    """The fields set in ``document`` (a ``projectcalico.org/v3`` document of ``kind``, as
    the model dumps it) that Tortie does not act on, in table order."""
    name = str((document.get("metadata") or {}).get("name") or "")
    scope: Scope = ("node" if name.startswith("node.") else "all" if name == "default"
                    else "other")
    entries = _BY_KIND.get(kind, ())
    if scope == "other" and any(e.scope == "other" for e in entries):
        entries = tuple(e for e in entries if e.scope == "other")
    else:
        entries = tuple(e for e in entries if e.scope in ("all", scope))
    out: list[IgnoredField] = []
    for entry in entries:
        for path, value, indices in _walk(document, _segments(entry.path), "", ()):
            if _is_set(value, entry.same):
                action = (_rule_action(document, entry.path, indices)
                          if entry.effect == "match" else None)
                out.append(IgnoredField(path, entry, action))
    return out


def resource_ignored_fields(resource: Any) -> list[IgnoredField]:
    """:func:`ignored_fields` of a model instance (none for Kubernetes kinds)."""
    if getattr(resource, "API_VERSION", None) != CALICO_API_VERSION:
        return []
    return ignored_fields(resource.KIND, resource.dump())


def describe_resource(kind: str, name: str, namespace: str | None = None) -> str:
    """``GlobalNetworkPolicy default.x`` / ``NetworkPolicy ns/name``."""
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def warnings(resource: Any) -> list[str]:
    """One ``warning: <Kind> <name>: <field> ...`` line per ignored field of ``resource``."""
    what = describe_resource(resource.KIND, resource.name, resource.namespace)
    return [f"warning: {what}: {f.message}" for f in resource_ignored_fields(resource)]


def rule_unenforced(rule: Any) -> list[str]:
    """The match conditions of a policy rule (a ``model_policy.Rule``) Tortie cannot enforce:
    ``http``, ``source.services``, ``destination.services``."""
    out = []
    if rule.http is not None and _is_set(rule.http.model_dump(exclude_none=True)):
        out.append("http")
    for side in ("source", "destination"):
        svc = getattr(rule, side).services
        if svc is not None and _is_set(svc.model_dump(exclude_none=True)):
            out.append(f"{side}.services")
    return out


# --- agents: log once per resource -------------------------------------------------------------

class IgnoredFieldLog:
    """Logs the ignored fields of each resource an agent consumes, once per resource (again
    only when the set of ignored fields changes).  ``kinds``: the kinds this agent reports
    (so that two agents watching the same kind do not both log it)."""

    def __init__(self, agent: str, kinds: set[str] | frozenset[str]) -> None:
        self.agent = agent
        self.kinds = kinds
        self._seen: dict[str, tuple[str, ...]] = {}

    def update(self, key: str, resource: Any | None) -> None:
        if resource is None:
            self._seen.pop(key, None)
            return
        if getattr(resource, "KIND", None) not in self.kinds:
            return
        try:
            fields = resource_ignored_fields(resource)
        except Exception as e:  # a check of its own must never stop the agent
            log.warning("could not check a resource for ignored fields", extra={"fields": {
                "agent": self.agent, "key": key, "error": str(e)}})
            return
        paths = tuple(f.path for f in fields)
        if self._seen.get(key) == paths:
            return
        self._seen[key] = paths
        what = describe_resource(resource.KIND, resource.name, resource.namespace)
        for f in fields:
            log.warning("resource field is not acted on", extra={"fields": {
                "agent": self.agent, "resource": what, "field": f.path,
                "detail": f.message}})


# --- docs/supported.md -------------------------------------------------------------------------

def render_markdown() -> str:
    """docs/supported.md: the table as Markdown."""
    full = [k.kind for k in KINDS if k.api_version == CALICO_API_VERSION
            and k.kind not in _BY_KIND]
    lines = [
        "# Fields Tortie accepts but does not act on",
        "",
        "Generated from `datastore/unsupported.py` (`python -m datastore.unsupported > "
        "docs/supported.md`); `tests/unit/test_unsupported.py` fails when this file is out "
        "of date.",
        "",
        "Tortie stores every field of Calico's `projectcalico.org/v3` kinds, but acts only on "
        "part of them. A field listed here that is *set* (present, not empty and not one of "
        "the listed no-effect values) gives a warning at `tortie apply` / `create` / "
        "`replace` (the resource is stored all the same), and the node agent that consumes "
        "the kind logs it once per resource. Fields of these kinds not listed here are acted "
        f"on. Kinds without an entry ({', '.join(full)}) are fully supported. Status fields "
        "are reports, not settings, and are not listed.",
        "",
        "Rule matches Tortie cannot enforce never widen what a policy allows: an Allow or "
        "Pass rule with one matches no traffic; a Deny or Log rule applies without the "
        "condition (to more traffic).",
        "",
    ]
    for kind, entries in _BY_KIND.items():
        lines += [f"## {kind}", "", "| field | no-effect values | what Tortie does |",
                  "|---|---|---|"]
        for e in entries:
            same = ", ".join(f"`{_yaml_scalar(v)}`" for v in e.same)
            where = {"all": "", "node": " (in `node.<nodename>` configurations)",
                     "other": " (of configurations with any other name)"}[e.scope]
            lines.append(f"| `{e.path}`{where} | {same} | {e.why} |")
        lines.append("")
    return "\n".join(lines)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_scalar(x)}" for k, x in v.items()) + "}"
    return str(v)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
