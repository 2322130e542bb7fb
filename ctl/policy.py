"""``tortie policy``: which policies apply to an endpoint, and per-rule packet counts.

``show`` computes what a node enforces the way its policy agent does -- every resource the
agent watches is read from the datastore into a :class:`~policyagent.calc.PolicyCalculator`
for the endpoint's node -- and prints the endpoint's program hook by hook. ``counters`` reads
the nftables table of the network namespace it runs in (``tortie lab exec --node N -- tortie
policy counters`` in the lab; ``ip netns exec``; or on the node itself).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click

from ctl.common import CLIError, run
from ctl.output import table
from datastore import keys
from datastore.kinds import KindInfo, by_plural, plurals
from datastore.model_base import ResourceInvalid
from datastore.resources import Resources
from datastore.store import KV
from policyagent import nft_apply
from policyagent.calc import PolicyCalculator
from policyagent.k8s_translate import calico_name
from policyagent.model import (
    PROTOCOL_NAMES,
    DataplaneModel,
    EndpointProgram,
    HostEndpointProgram,
    RuleSpec,
    TierPolicies,
)

log = logging.getLogger(__name__)

__all__ = ["PolicyView", "load_view", "policy", "rule_summary", "show_endpoint"]

_FORMATS = ("text", "json")
#: The kinds the policy agent watches (those its calculation takes): the CLI reads the same.
PLURALS = plurals(PolicyCalculator.handles)


# --- reading the datastore ----------------------------------------------------------------------

@dataclass
class PolicyView:
    """Everything ``policy show`` read: resources by kind, and those it had to skip."""

    resources: dict[str, list[Any]] = field(default_factory=dict)  # plural -> models
    skipped: list[str] = field(default_factory=list)

    def calculator(self, node: str) -> PolicyCalculator:
        """A calculator for ``node`` fed with every resource, as the node's agent sees them."""
        calc = PolicyCalculator(node)
        for plural in PLURALS:
            for r in self.resources.get(plural, ()):
                key = f"{r.namespace}/{r.name}" if r.namespace else r.name
                try:
                    calc.update(plural, key, r)
                except (ValueError, KeyError) as e:  # one bad resource must not hide the rest
                    self.skipped.append(f"{plural}/{key}: {e}")
        return calc

    def policy_resources(self) -> dict[str, tuple[str, Any]]:
        """Policy id -> (what to call it, the resource), for every policy kind."""
        out: dict[str, tuple[str, Any]] = {}
        for r in self.resources.get("globalnetworkpolicies", ()):
            out[f"gnp:{r.name}"] = (f"GlobalNetworkPolicy {r.name}", r)
        for r in self.resources.get("networkpolicies", ()):
            out[f"np:{r.namespace}:{r.name}"] = (f"NetworkPolicy {r.namespace}/{r.name}", r)
        for r in self.resources.get("k8snetworkpolicies", ()):
            out[f"np:{r.namespace}:{calico_name(r.name)}"] = (
                f"Kubernetes NetworkPolicy {r.namespace}/{r.name}", r)
        return out


def _parse(info: KindInfo, kv: KV, skipped: list[str]) -> Any | None:
    try:
        return info.model.model_validate(kv.value)
    except (ResourceInvalid, ValueError) as e:
        skipped.append(f"{kv.key}: {e}")
        log.warning("skipping an invalid resource", extra={"fields": {"key": kv.key}})
        return None


async def load_view(res: Resources) -> PolicyView:
    """Read every kind the policy agent watches (invalid resources are skipped and listed)."""
    view = PolicyView()
    for plural in PLURALS:
        info = by_plural(plural)
        kvs, _rev = await res.store.list(keys.resource_prefix(plural))
        view.resources[plural] = [r for kv in kvs
                                  if (r := _parse(info, kv, view.skipped)) is not None]
    return view


# --- finding the endpoint -----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    kind: str  # workload | host
    name: str  # <namespace>/<name> for a workload, the resource name for a host endpoint
    node: str
    resource: Any


def find_endpoints(view: PolicyView, text: str, namespace: str | None) -> list[Target]:
    """Workload endpoints named ``text`` (or of the pod named ``text``), else the host
    endpoint of that name. ``ns/name`` or ``namespace`` give the namespace (default:
    ``default``)."""
    ns, sep, name = text.rpartition("/")
    if sep and namespace and ns != namespace:
        raise CLIError(f"ENDPOINT: {text!r} is in namespace {ns!r}, not --namespace "
                       f"{namespace!r}")
    ns = ns or namespace or "default"
    weps = [w for w in view.resources.get("workloadendpoints", ()) if w.namespace == ns]
    found = [w for w in weps if w.name == name] or [w for w in weps if w.spec.pod == name]
    if found:
        return [Target("workload", f"{w.namespace}/{w.name}", w.spec.node or "", w)
                for w in found]
    if not sep and not namespace:
        heps = [h for h in view.resources.get("hostendpoints", ()) if h.name == name]
        if heps:
            return [Target("host", h.name, h.spec.node or "", h) for h in heps]
    hint = ""
    elsewhere = sorted(f"{w.namespace}/{w.name}" for w in view.resources.get(
        "workloadendpoints", ()) if name in (w.name, w.spec.pod) and w.namespace != ns)
    if elsewhere:
        hint = f"; in other namespaces: {', '.join(elsewhere[:5])}"
    what = "WorkloadEndpoint or pod" + ("" if sep or namespace else " or HostEndpoint")
    raise CLIError(f"ENDPOINT: no {what} named {name!r} in namespace {ns!r}{hint}")


# --- describing rules ---------------------------------------------------------------------------

def _proto(n: int | None) -> str:
    return "" if n is None else PROTOCOL_NAMES.get(n, str(n))


def _ports(ranges: Iterable[tuple[int, int]]) -> list[str]:
    return [str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges]


def _set_text(model: DataplaneModel, set_ids: Iterable[str], *, named: bool = False
              ) -> list[str]:
    """What IP sets stand for (their selector, or named port), once per selector."""
    out: list[str] = []
    for sid in set_ids:
        spec = model.ipsets.get(sid)
        if spec is None:
            text = sid
        elif named:
            text = f"{spec.named_port} of {spec.selector}"
        else:
            text = spec.selector
        if text not in out:
            out.append(text)
    return out


def _side(model: DataplaneModel, rule: RuleSpec, side: str) -> str:
    g = lambda attr: getattr(rule, f"{side}_{attr}")  # noqa: E731
    parts: list[str] = []
    if g("nets"):
        parts.append("nets " + ",".join(g("nets")))
    if g("not_nets"):
        parts.append("not nets " + ",".join(g("not_nets")))
    parts += [f"selector {s}" for s in _set_text(model, g("ipsets"))]
    parts += [f"not selector {s}" for s in _set_text(model, g("not_ipsets"))]
    ports = _ports(g("ports")) + [f"named {s}" for s in _set_text(
        model, g("named_port_ipsets"), named=True)]
    if ports:
        parts.append("ports " + ",".join(ports))
    not_ports = _ports(g("not_ports")) + [f"named {s}" for s in _set_text(
        model, g("not_named_port_ipsets"), named=True)]
    if not_ports:
        parts.append("not ports " + ",".join(not_ports))
    return "; ".join(parts)


def rule_summary(model: DataplaneModel, rule: RuleSpec) -> dict[str, str]:
    """action, protocol, source and destination of one rule, in words."""
    proto = _proto(rule.protocol)
    if rule.not_protocol is not None:
        proto = (proto + " " if proto else "") + f"not {_proto(rule.not_protocol)}"
    if rule.ip_version is not None:
        proto = f"ipv{rule.ip_version}" + (f" {proto}" if proto else "")
    icmp = []
    if rule.icmp_type is not None:
        icmp.append(f"type {rule.icmp_type}" + (
            f" code {rule.icmp_code}" if rule.icmp_code is not None else ""))
    if rule.not_icmp_type is not None:
        icmp.append(f"not type {rule.not_icmp_type}" + (
            f" code {rule.not_icmp_code}" if rule.not_icmp_code is not None else ""))
    if icmp:
        proto = (proto + " " if proto else "") + " ".join(icmp)
    return {"id": rule.rule_id, "action": rule.action, "protocol": proto or "any",
            "source": _side(model, rule, "src") or "any",
            "destination": _side(model, rule, "dst") or "any"}


# --- the endpoint's program ---------------------------------------------------------------------

def _policy_entry(model: DataplaneModel, pid: str, direction: str, names: dict[str, tuple[str, Any]]
                  ) -> dict[str, Any]:
    title, res = names.get(pid, (pid, None))
    order = res.spec.order if res is not None and hasattr(res.spec, "order") else None
    if res is not None and title.startswith("Kubernetes"):
        order = 1000.0  # what the translation gives every Kubernetes policy
    prog = model.policies.get((pid, direction))
    return {"id": pid, "policy": title,
            "order": None if order is None else (int(order) if float(order).is_integer()
                                                 else order),
            "rules": [rule_summary(model, r) for r in (prog.rules if prog else ())]}


def _tiers(model: DataplaneModel, tiers: tuple[TierPolicies, ...], direction: str,
           names: dict[str, tuple[str, Any]], default_drop: bool) -> list[dict[str, Any]]:
    return [{"tier": t.tier,
             "policies": [_policy_entry(model, p, direction, names) for p in t.policies],
             "end_of_tier": ("drop" if t.default_action == "deny" and default_drop
                             else "pass" if t.default_action == "pass" else "next")}
            for t in tiers]


def _profiles(model: DataplaneModel, profiles: tuple[str, ...], direction: str
              ) -> list[dict[str, Any]]:
    out = []
    for pid in profiles:
        prog = model.profiles.get((pid, direction))
        out.append({"id": pid, "profile": pid.removeprefix("pro:"),
                    "rules": [rule_summary(model, r) for r in (prog.rules if prog else ())]})
    return out


def _hook(name: str, what: str, tiers: list[dict[str, Any]], profiles: list[dict[str, Any]],
          default: str, failsafe: list[str] | None = None) -> dict[str, Any]:
    hook: dict[str, Any] = {"hook": name, "what": what}
    if failsafe is not None:
        hook["failsafe"] = failsafe
    hook.update(tiers=tiers, profiles=profiles, default=default)
    return hook


def _failsafe(model: DataplaneModel, direction: str) -> list[str]:
    entries = model.failsafe_in if direction == "ingress" else model.failsafe_out
    return [f"{_proto(f.protocol)}:{f.port}" + (f" {'from' if direction == 'ingress' else 'to'} "
                                                 f"{f.net}" if f.net else "")
            for f in entries]


def show_endpoint(model: DataplaneModel, target: Target, view: PolicyView) -> dict[str, Any]:
    """The endpoint's program as plain data (what ``-o json`` prints)."""
    names = view.policy_resources()
    out: dict[str, Any] = {"endpoint": target.name, "kind": target.kind, "node": target.node}
    hooks: list[dict[str, Any]] = []
    if target.kind == "workload":
        ep: EndpointProgram | None = model.endpoints.get(target.name)
        if ep is None:
            raise CLIError(f"ENDPOINT: {target.name} has no program on node {target.node!r}")
        out.update(interface=ep.interface, addresses=list(ep.addresses))
        for d, tiers, what in (("ingress", ep.ingress_policies, "traffic to the pod"),
                               ("egress", ep.egress_policies, "traffic from the pod")):
            hooks.append(_hook(d, what, _tiers(model, tiers, d, names, True),
                               _profiles(model, ep.profiles, d), "drop"))
    else:
        hep: HostEndpointProgram | None = model.host_endpoints.get(target.name)
        if hep is None:
            raise CLIError(f"ENDPOINT: {target.name} has no program on node {target.node!r}")
        out.update(interface="*" if hep.all_interfaces else hep.interface,
                   addresses=list(hep.addresses))
        for d in ("ingress", "egress"):
            tiers = hep.ingress_policies if d == "ingress" else hep.egress_policies
            hooks.append(_hook(d, f"traffic {'to' if d == 'ingress' else 'from'} the host",
                               _tiers(model, tiers, d, names, True),
                               _profiles(model, hep.profiles, d), "drop", _failsafe(model, d)))
        hooks.append(_hook("preDNAT ingress", "before DNAT; an allow skips normal policy",
                           _tiers(model, hep.pre_dnat_ingress, "ingress", names, False), [],
                           "continue to normal policy"))
        for d in ("ingress", "egress"):
            tiers = hep.untracked_ingress if d == "ingress" else hep.untracked_egress
            hooks.append(_hook(f"doNotTrack {d}", "raw, before conntrack; an allow untracks",
                               _tiers(model, tiers, d, names, False), [],
                               "continue (tracked)",
                               _failsafe(model, d) if tiers and not hep.all_interfaces
                               else None))
        for d in ("ingress", "egress"):
            tiers = hep.forward_ingress if d == "ingress" else hep.forward_egress
            hooks.append(_hook(f"applyOnForward {d}", "forwarded through the interface",
                               _tiers(model, tiers, d, names, True), [],
                               "drop" if tiers else "allow (no applyOnForward policy)"))
    out["hooks"] = hooks
    return out


def _rule_line(r: dict[str, str]) -> str:
    text = f"{r['action']:<5} {r['protocol']}"
    if r["source"] != "any":
        text += f" from [{r['source']}]"
    if r["destination"] != "any":
        text += f" to [{r['destination']}]"
    return f"{text}  ({r['id']})"


def render_text(data: dict[str, Any]) -> str:
    lines = [f"{'Workload' if data['kind'] == 'workload' else 'Host'} endpoint {data['endpoint']}"
             f" on node {data['node']} (interface {data['interface'] or '-'}, addresses "
             f"{', '.join(data['addresses']) or '-'})"]
    for hook in data["hooks"]:
        lines.append("")
        lines.append(f"{hook['hook']} ({hook['what']}):")
        if hook.get("failsafe"):
            lines.append(f"  failsafe ports, allowed first: {', '.join(hook['failsafe'])}")
        if not hook["tiers"] and not hook["profiles"]:
            lines.append("  no policy")
        for tier in hook["tiers"]:
            lines.append(f"  tier {tier['tier']}:")
            for i, pol in enumerate(tier["policies"], 1):
                order = f" (order {pol['order']})" if pol["order"] is not None else ""
                lines.append(f"    {i}. {pol['policy']}{order}")
                for r in pol["rules"]:
                    lines.append(f"         {_rule_line(r)}")
                if not pol["rules"]:
                    lines.append("         (no rules)")
            lines.append(f"    end of tier: {tier['end_of_tier']}")
        if hook["profiles"]:
            lines.append("  profiles:")
            for prof in hook["profiles"]:
                lines.append(f"    {prof['profile']}")
                for r in prof["rules"]:
                    lines.append(f"         {_rule_line(r)}")
                if not prof["rules"]:
                    lines.append("         (no rules)")
        lines.append(f"  default: {hook['default']}")
    return "\n".join(lines) + "\n"


# --- commands -----------------------------------------------------------------------------------

@click.group()
def policy() -> None:
    """Which policies apply to an endpoint, and per-rule packet counts."""


@policy.command()
@click.argument("endpoint")
@click.option("-n", "--namespace", help="namespace of a workload endpoint or pod "
              "[default: default]")
@click.option("--node", help="compute the program as this node sees it [default: the "
              "endpoint's node]")
@click.option("-o", "--output", "fmt", default="text", show_default=True,
              type=click.Choice(_FORMATS), help="output format")
@click.pass_context
def show(ctx: click.Context, endpoint: str, namespace: str | None, node: str | None,
         fmt: str) -> None:
    """Which policies and rules apply to ENDPOINT, in order, hook by hook.

    ENDPOINT is a WorkloadEndpoint name, a pod name (NAMESPACE/POD or -n NAMESPACE POD) or a
    HostEndpoint name.
    """
    view: PolicyView = run(ctx, load_view)
    for note in view.skipped:
        click.echo(f"warning: skipped {note}", err=True)
    targets = find_endpoints(view, endpoint, namespace)
    results = []
    calcs: dict[str, PolicyCalculator] = {}
    for target in targets:
        where = node or target.node
        if not where:
            raise CLIError(f"ENDPOINT: {target.name} has no spec.node; give --node")
        if node and target.node and node != target.node:
            raise CLIError(f"--node: {target.name} is on node {target.node!r}, not {node!r}")
        calc = calcs.get(where) or calcs.setdefault(where, view.calculator(where))
        results.append(show_endpoint(calc.model(), target, view))
    if fmt == "json":
        data: Any = results[0] if len(results) == 1 else results
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo("\n".join(render_text(r) for r in results), nl=False)


def describe_comment(comment: str) -> dict[str, Any]:
    """A counter's comment split into policy, direction and rule index when it is a rule id
    (``<policy id>/<direction>/<index>``)."""
    head, _, index = comment.rpartition("/")
    pid, _, direction = head.rpartition("/")
    if direction in ("ingress", "egress") and index.isdigit() and ":" in pid:
        kind, _, rest = pid.partition(":")
        if kind == "np":
            ns, _, name = rest.partition(":")
            what = f"NetworkPolicy {ns}/{name}"
        else:
            what = {"gnp": "GlobalNetworkPolicy", "pro": "Profile"}.get(kind, kind) + " " + rest
        return {"rule": comment, "policy": what, "direction": direction, "index": int(index)}
    return {"rule": comment, "policy": None, "direction": None, "index": None}


@policy.command()
@click.option("--table", "table_name", default="tortie", show_default=True,
              help="the nftables table (inet family)")
@click.option("--nonzero", is_flag=True, help="only rules that counted packets")
@click.option("-o", "--output", "fmt", default="text", show_default=True,
              type=click.Choice(_FORMATS), help="output format")
def counters(table_name: str, nonzero: bool, fmt: str) -> None:
    """Packets and bytes per rule id, from the nftables table of this network namespace.

    \b
    In the lab:  tortie lab exec --node node1 -- tortie policy counters --nonzero
    """
    try:
        found = nft_apply.read_counters(table_name)
    except FileNotFoundError:
        raise CLIError("nft is not installed (apt-get install nftables)") from None
    except nft_apply.NftError as e:
        if "No such file" in e.message or "does not exist" in e.message:
            raise CLIError(f"--table: no table inet {table_name} in this network namespace; "
                           f"run it where the policy agent programs it (in the lab: tortie "
                           f"lab exec --node NODE -- tortie policy counters)") from None
        raise CLIError(str(e)) from None
    rows = []
    for comment, (packets, nbytes) in sorted(found.items()):
        if nonzero and not packets:
            continue
        rows.append({**describe_comment(comment), "packets": packets, "bytes": nbytes})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(table(["RULE", "POLICY", "PACKETS", "BYTES"],
                     [[r["rule"], r["policy"] or "-", str(r["packets"]), str(r["bytes"])]
                      for r in rows]), nl=False)
