"""Builders of policy resources and a calculator to feed them (``Cluster``).

``wep``/``hep``/``gnp``/``np_``/``knp``/``namespace``/``profile`` build validated resources
(``res`` from a whole document); ``Cluster`` wraps a PolicyCalculator; ``two_pods`` is the
small cluster many renderer and dataplane tests start from; ``random_resources`` a random
little cluster of every kind the calculation takes.
"""

from __future__ import annotations

import random
from typing import Any

from datastore.resources import to_resource
from policyagent.calc import PolicyCalculator
from policyagent.model import DataplaneModel

V3 = "projectcalico.org/v3"
NODE = "node1"


def res(doc: dict[str, Any]) -> Any:
    return to_resource(doc)[1]


def wep(name: str, ip: str | list[str], labels: dict[str, str] | None = None, *,
        ns: str = "default", node: str = NODE, sa: str = "default",
        profiles: list[str] | None = None, ports: list[dict[str, Any]] | None = None,
        k8s: bool = True, **spec: Any) -> Any:
    ips = [ip] if isinstance(ip, str) else ip
    s: dict[str, Any] = {
        "node": node, "ipNetworks": [f"{i}/{128 if ':' in i else 32}" for i in ips],
        "interfaceName": f"cali{name}"[:15], "endpoint": "eth0",
        "profiles": profiles if profiles is not None else [f"kns.{ns}", f"ksa.{ns}.{sa}"],
        **spec,
    }
    if k8s:
        s.update(orchestrator="k8s", pod=name, serviceAccountName=sa)
    if ports is not None:
        s["ports"] = ports
    return res({"apiVersion": V3, "kind": "WorkloadEndpoint",
                "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": s})


def hep(name: str, *, node: str = NODE, labels: dict[str, str] | None = None,
        iface: str | None = None, ips: list[str] | None = None,
        profiles: list[str] | None = None) -> Any:
    spec: dict[str, Any] = {"node": node}
    if iface is not None:
        spec["interfaceName"] = iface
    if ips is not None:
        spec["expectedIPs"] = ips
    if profiles is not None:
        spec["profiles"] = profiles
    return res({"apiVersion": V3, "kind": "HostEndpoint",
                "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


def gnp(name: str, **spec: Any) -> Any:
    return res({"apiVersion": V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
                "spec": spec})


def np_(name: str, ns: str = "default", **spec: Any) -> Any:
    return res({"apiVersion": V3, "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec})


def knp(name: str, ns: str = "default", **spec: Any) -> Any:
    return res({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec})


def namespace(name: str, labels: dict[str, str] | None = None) -> Any:
    return res({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}}})


def profile(name: str, **spec: Any) -> Any:
    return res({"apiVersion": V3, "kind": "Profile", "metadata": {"name": name}, "spec": spec})


class Cluster:
    """A calculator plus shorthand to feed it."""

    def __init__(self, node: str = NODE) -> None:
        self.calc = PolicyCalculator(node)

    def add(self, *resources: Any) -> Cluster:
        for r in resources:
            self.calc.update(r.kind if r.apiVersion != "networking.k8s.io/v1"
                             else "K8sNetworkPolicy", self.key(r), r)
        return self

    def delete(self, kind: str, key: str) -> None:
        self.calc.update(kind, key, None)

    @staticmethod
    def key(r: Any) -> str:
        return f"{r.namespace}/{r.name}" if r.namespace else r.name

    def model(self) -> DataplaneModel:
        return self.calc.model()


ALLOW_8080 = [{"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'a'"},
               "destination": {"ports": [8080]}}]


def two_pods(*extra: Any) -> Cluster:
    """Pod a (10.65.0.1) and pod b (10.65.0.2): b admits TCP 8080 from app == 'a' only."""
    return Cluster().add(
        wep("a", "10.65.0.1", {"app": "a"}),
        wep("b", "10.65.0.2", {"app": "b"}),
        np_("allow-a", selector="app == 'b'", ingress=ALLOW_8080),
        *extra)


def random_resources(rng: random.Random) -> list[Any]:
    """A random little cluster: every kind the calculation takes, with colliding names so that
    later picks replace earlier resources."""
    pick = rng.choice
    nss = ["n1", "n2", "n3"]
    out: list[Any] = [namespace(n, {"team": pick("ab")}) for n in nss]
    for i in range(12):
        ports = pick([None, [{"name": "http", "protocol": "TCP", "port": pick([80, 81])}]])
        ips: list[str] = pick([[f"10.66.0.{i + 1}"], [f"10.66.1.{i + 1}", f"fd00::{i + 1}"]])
        out.append(wep(f"w{i}", ips,
                       {"app": pick("xyz"), "tier": pick("12")}, ns=pick(nss),
                       node=pick([NODE, "node2"]), sa=pick(["default", "robot"]), ports=ports,
                       profiles=pick([None, ["web"], ["web", "missing"]])))
        out.append(res({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"w{i}", "namespace": pick(nss)},
                        "spec": {"containers": [{"name": "c", "ports": [
                            {"name": "http", "containerPort": pick([8080, 9090])}]}]}}))
    for i in range(3):
        out.append(hep(f"h{i}", node=pick([NODE, "node2"]), labels={"app": pick("xz")},
                       iface=pick(["eth0", "*", None]), ips=[f"192.168.0.{i + 1}"],
                       profiles=pick([None, ["projectcalico-default-allow"]])))
        out.append(res({"apiVersion": V3, "kind": "NetworkSet",
                        "metadata": {"name": f"s{i}", "namespace": pick(nss),
                                     "labels": {"app": pick("xy")}},
                        "spec": {"nets": [f"203.0.{i}.0/24"]}}))
        out.append(res({"apiVersion": V3, "kind": "GlobalNetworkSet",
                        "metadata": {"name": f"g{i}", "labels": {"tier": pick("12")}},
                        "spec": {"nets": [f"198.51.{i}.0/24"]}}))
    out.append(profile("web", labelsToApply={"tier": pick("12"), "web": "yes"},
                       ingress=[{"action": "Allow", "source": {"selector": pick(
                           ["app == 'x'", "web == 'yes'"])}}]))

    def rule() -> dict[str, Any]:
        return {"action": pick(["Allow", "Deny", "Pass", "Log"]), "protocol": "TCP",
                "source": {"selector": pick(["app == 'y'", "tier == '2'", "has(web)"]),
                           "namespaceSelector": pick([None, "team == 'a'", "global()"])},
                "destination": {"ports": [pick(["http", 443])]}}

    for i in range(8):
        out.append(gnp(f"p{i}", order=pick([None, 1, 2]),
                       selector=pick(["app == 'x'", "tier == '1'", "has(app)", "has(web)"]),
                       namespaceSelector=pick([None, "team == 'a'"]),
                       applyOnForward=pick([None, True]), ingress=[rule()]))
        out.append(np_(f"q{i}", ns=pick(nss), order=pick([None, 3]),
                       selector=pick(["app == 'y'", "all()"]), egress=[rule()],
                       types=["Egress"]))
        out.append(knp(f"k{i}", ns=pick(nss), podSelector={"matchLabels": {"app": pick("xyz")}},
                       ingress=[{"from": [{"namespaceSelector": pick([{}, {"matchLabels": {
                           "team": "b"}}])}], "ports": [{"port": pick(["http", 80])}]}]))
    return out


def kind_of(r: Any) -> str:
    return "K8sNetworkPolicy" if r.apiVersion == "networking.k8s.io/v1" else r.kind
