"""calicoctl v1 documents (``apiVersion: v1``, lower-case kinds) converted to v3.

The conversion follows what Calico's own upgrade tool did: ``policy`` becomes a
GlobalNetworkPolicy (v1 policies were global), actions are capitalised, ``net`` becomes
``nets``, a host endpoint's ``metadata.node`` moves to ``spec.node``, and a profile's labels
become ``labelsToApply``.
"""

from __future__ import annotations

from typing import Any

from datastore.model_base import CALICO_API_VERSION

V1_KINDS = ("policy", "hostEndpoint", "node", "profile", "ipPool", "bgpPeer")
_ACTIONS = {"allow": "Allow", "deny": "Deny", "log": "Log", "next-tier": "Pass", "pass": "Pass"}


class V1Error(ValueError):
    pass


def is_v1(data: Any) -> bool:
    return (isinstance(data, dict) and data.get("apiVersion") == "v1"
            and data.get("kind") in V1_KINDS)


def convert(data: dict[str, Any]) -> dict[str, Any]:
    """One v1 document as its v3 equivalent (unknown fields are passed on to fail there)."""
    kind = data["kind"]
    meta = dict(_mapping(data.get("metadata"), "metadata"))
    spec = dict(_mapping(data.get("spec"), "spec"))
    extra = {k: v for k, v in data.items() if k not in ("apiVersion", "kind", "metadata", "spec")}
    if kind == "policy":
        out_kind = "GlobalNetworkPolicy"
        for direction in ("ingress", "egress"):
            if isinstance(spec.get(direction), list):
                spec[direction] = [_rule(r) for r in spec[direction]]
        if spec.get("preDNAT") or spec.get("doNotTrack"):
            spec.setdefault("applyOnForward", True)
    elif kind == "hostEndpoint":
        out_kind = "HostEndpoint"
        if "node" in meta:
            spec["node"] = meta.pop("node")
    elif kind == "node":
        out_kind = "Node"
    elif kind == "profile":
        out_kind = "Profile"
        labels = _mapping(meta.pop("labels", None), "metadata.labels")
        tags = meta.pop("tags", None) or []
        if not isinstance(tags, list):
            raise V1Error("metadata.tags: must be a list")
        to_apply = dict(labels)
        for t in tags:
            to_apply[str(t)] = ""
        if to_apply:
            spec["labelsToApply"] = to_apply
        for direction in ("ingress", "egress"):
            if isinstance(spec.get(direction), list):
                spec[direction] = [_rule(r) for r in spec[direction]]
    elif kind == "ipPool":
        out_kind = "IPPool"
        cidr = meta.pop("cidr", None)
        if cidr is None:
            raise V1Error("metadata.cidr: required field is missing")
        meta.setdefault("name", str(cidr).replace(".", "-").replace(":", "-").replace("/", "-"))
        spec["cidr"] = cidr
    else:  # bgpPeer
        out_kind = "BGPPeer"
        scope = meta.pop("scope", "global")
        if scope == "node" and "node" in meta:
            spec["node"] = meta.pop("node")
        if "peerIP" in meta:
            spec["peerIP"] = meta.pop("peerIP")
        meta.setdefault("name", str(spec.get("peerIP", "peer")).replace(".", "-")
                        .replace(":", "-"))
    return {"apiVersion": CALICO_API_VERSION, "kind": out_kind, "metadata": meta,
            "spec": spec, **extra}


def _mapping(value: Any, field: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V1Error(f"{field}: must be a mapping, not {type(value).__name__}")
    return value


def _rule(rule: Any) -> Any:
    if not isinstance(rule, dict):
        return rule
    r = dict(rule)
    action = r.get("action")
    if isinstance(action, str):
        r["action"] = _ACTIONS.get(action.lower(), action)
    for side in ("source", "destination"):
        ent = r.get(side)
        if isinstance(ent, dict):
            r[side] = _entity(ent)
    return r


def _entity(ent: dict[str, Any]) -> dict[str, Any]:
    e = dict(ent)
    for single, plural in (("net", "nets"), ("notNet", "notNets")):
        if single in e:
            nets = e.get(plural) or []
            if not isinstance(nets, list):
                raise V1Error(f"{plural}: must be a list")
            e[plural] = [*nets, e.pop(single)]
    if "tag" in e:
        tag = e.pop("tag")
        sel = f"has({tag})"
        e["selector"] = f"({e['selector']}) && {sel}" if e.get("selector") else sel
    if "notTag" in e:
        tag = e.pop("notTag")
        sel = f"has({tag})"
        e["notSelector"] = f"({e['notSelector']}) || {sel}" if e.get("notSelector") else sel
    return e
