"""Policy at scale: 1000 workload endpoints x 500 policies on one node.

Everything runs in scratch network namespaces of this machine. The resources are generated
(seeded, see ``generate``): deployments of 10 replicas across 20 namespaces, each pod a
WorkloadEndpoint with the labels, profiles and named ports Tortie's CNI would give it; the
policies a mix of Kubernetes NetworkPolicies, Calico NetworkPolicies and
GlobalNetworkPolicies with label, namespace and net selectors, named and numeric ports,
Allow / Deny / Log / Pass rules. The dispatch keys on interface names and nft accepts names of
interfaces that do not exist, so only the two endpoints that carry traffic have real veths.

    sudo .venv/bin/python bench/policy_scale.py [--endpoints 1000] [--policies 500]
                                                [--local 1000] [--runs 5]
                                                [--profile] [--memory]

Measures, printing every figure:

* full programming: ``update()`` of every resource into a fresh calculator, ``model()``,
  ``render()`` and applying the whole table in the node's namespace (medians of ``--runs``;
  target: the sum <= 1 s);
* one new pod: ``update()`` + ``model()`` + ``render_incremental()`` + applying that
  transaction (target <= 20 ms);
* one label change on a local pod, same path (target <= 20 ms);
* throughput: pod a -> node (router, carrying the table) -> pod b, iperf3 (one TCP stream),
  with the full table, a conntrack-only table and no table, round-robin in the same run
  (target: full / no table >= 0.9).

Every full programming starts with the calculation's and renderer's caches emptied (as cold
as an agent's first one). ``--profile`` adds where the time goes: cProfile of the Python steps
(one cold full programming; 20 more new pods and label changes), the apply split into user
time (libnftables parsing and evaluating, in-process) and system time (the kernel), the
whole table applied with and without its set elements, and the cost of the kernel's
validation of the jump graph. ``--memory`` prints the resident memory at each step: the
process then holds what tortie-node's policy agent holds (the resources as JSON documents,
as its syncer keeps them, the calculator, the model, libnftables' cache), e.g. with
``--endpoints 10000`` for 10 000 endpoints in the cluster.

Applying goes through ``policyagent.nft_apply`` as the agent's does: in-process through
libnftables when it loads (``TORTIE_NFT=cli`` forces one ``nft -f -`` process per
transaction, to compare). Wall times and CPU times (this process and any nft children) are
both printed, with the load average: other work on the machine stretches wall times a lot,
CPU times less.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import functools
import gc
import hashlib
import importlib
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit.netns import setns
from datastore.resources import to_resource
from policyagent import nft_apply, nft_render
from policyagent.calc import PolicyCalculator
from policyagent.model import DataplaneModel, FrozenMap
from policyagent.nft_render import render, render_incremental

NODE = "bench-node"
V3 = "projectcalico.org/v3"
K8S = "networking.k8s.io/v1"
TIERS = ("frontend", "backend", "db", "cache", "worker")
IPERF_PORT = 5201


# --- the resources --------------------------------------------------------------------------

def res(doc: dict[str, Any]) -> Any:
    return to_resource(doc)[1]


def iface(ns: str, pod: str) -> str:
    """Calico's host-side name: cali + 11 hex digits of a hash of namespace.pod."""
    return "cali" + hashlib.sha1(f"{ns}.{pod}".encode()).hexdigest()[:11]


class Generated:
    def __init__(self) -> None:
        self.namespaces: list[Any] = []
        self.endpoints: list[Any] = []
        self.policies: list[Any] = []
        self.apps: list[tuple[str, str, str]] = []  # (namespace, app, tier)

    def all(self) -> list[Any]:
        """In the order the agent's syncer lists them (endpoints, policies, namespaces)."""
        return [*self.endpoints, *self.policies, *self.namespaces]


def wep(i: int, ns: str, app: str, tier: str, version: str, local: bool) -> Any:
    pod = f"{app}-{hashlib.sha1(str(i).encode()).hexdigest()[:5]}"
    node = NODE if local else f"node{i % 9 + 1}"
    ports = [{"name": "http", "protocol": "TCP", "port": 8080},
             {"name": "metrics", "protocol": "TCP", "port": 9090}]
    if tier == "backend":
        ports.append({"name": "grpc", "protocol": "TCP", "port": 50051})
    return res({
        "apiVersion": V3, "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node}-k8s-{pod}-eth0", "namespace": ns,
                     "labels": {"app": app, "tier": tier, "version": version,
                                "pod-template-hash": hashlib.sha1(app.encode()).hexdigest()[:8]}},
        "spec": {"node": node, "orchestrator": "k8s", "pod": pod, "endpoint": "eth0",
                 "serviceAccountName": "default", "interfaceName": iface(ns, pod),
                 "ipNetworks": [f"10.80.{i // 250}.{i % 250 + 1}/32"],
                 "profiles": [f"kns.{ns}", f"ksa.{ns}.default"], "ports": ports}})


def generate(n_endpoints: int, n_policies: int, n_local: int, seed: int = 1) -> Generated:
    rng = random.Random(seed)
    g = Generated()
    nss = [f"team-{i:02d}" for i in range(20)]
    for i, ns in enumerate(nss):
        g.namespaces.append(res({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns, "labels": {"team": f"t{i % 5}", "env": "staging" if i % 4 == 0
                                   else "prod"}}}))
    n_apps = max(2, n_endpoints // 10)
    g.apps = [(nss[d % len(nss)], f"app{d:03d}", TIERS[d % len(TIERS)]) for d in range(n_apps)]
    local = set(rng.sample(range(n_endpoints), min(n_local, n_endpoints)))
    local |= {0, 1}  # the two pods that carry the iperf3 traffic
    for i in range(n_endpoints):
        ns, app, tier = g.apps[i % n_apps]
        g.endpoints.append(wep(i, ns, app, tier, "v2" if i % 5 == 0 else "v1", i in local))

    def pick_app() -> tuple[str, str, str]:
        return rng.choice(g.apps)

    # the pair that carries the throughput test may talk: the last policy of the tier for both
    (_, app_a, _), (_, app_b, _) = g.apps[0], g.apps[1]
    g.policies.append(res({
        "apiVersion": V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": "allow-iperf"},
        "spec": {"order": 5000, "selector": f"app in {{'{app_a}', '{app_b}'}}",
                 "ingress": [{"action": "Allow", "protocol": "TCP",
                              "source": {"selector": f"app == '{app_a}'"},
                              "destination": {"ports": [IPERF_PORT]}}],
                 "egress": [{"action": "Allow", "protocol": "TCP",
                             "destination": {"selector": f"app == '{app_b}'",
                                             "ports": [IPERF_PORT]}}]}}))
    for i in range(n_policies - 1):
        kind = i % 5
        ns, app, tier = pick_app()
        _, peer, peer_tier = pick_app()
        if kind in (0, 1):  # Kubernetes NetworkPolicy: allow from a peer app and monitoring
            spec: dict[str, Any] = {
                "podSelector": {"matchLabels": {"app": app}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                     "ports": [{"port": "http"}, {"port": 8443}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{i % 5}"}},
                               "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                     "ports": [{"port": "metrics"}]}]}
            if kind == 1:
                spec["egress"] = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                       "except": ["10.96.0.0/12"]}}]},
                                  {"ports": [{"port": 53, "protocol": "UDP"}]}]
            g.policies.append(res({"apiVersion": K8S, "kind": "NetworkPolicy",
                                   "metadata": {"name": f"k{i}-{app}", "namespace": ns},
                                   "spec": spec}))
        elif kind in (2, 3):  # Calico NetworkPolicy: ordered, tier/app selectors, denies, log
            g.policies.append(res({
                "apiVersion": V3, "kind": "NetworkPolicy",
                "metadata": {"name": f"c{i}-{app}", "namespace": ns},
                "spec": {"order": 100 + i % 900,
                         "selector": f"app == '{app}' && version in {{'v1', 'v2'}}",
                         "ingress": [
                             {"action": "Deny", "protocol": "TCP",
                              "destination": {"ports": [23, 25, "3389:3390"]}},
                             {"action": "Allow", "protocol": "TCP",
                              "source": {"selector": f"tier == '{peer_tier}' && "
                                                     f"app != '{peer}'"},
                              "destination": {"ports": ["grpc", "http"]}},
                             {"action": "Log", "protocol": "UDP",
                              "source": {"nets": [f"192.168.{i % 250}.0/24"]}}],
                         "egress": [
                             {"action": "Allow", "protocol": "TCP",
                              "destination": {"selector": f"app == '{peer}'",
                                              "namespaceSelector": f"team == 't{i % 5}'",
                                              "ports": [5432, 6379]}},
                             {"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}],
                         "types": ["Ingress", "Egress"]}}))
        else:  # GlobalNetworkPolicy: cluster-wide baselines, canaries, namespace scoped
            sel = rng.choice([f"tier == '{tier}'", "version == 'v2'", f"app == '{app}'",
                              "has(app)"])
            g.policies.append(res({
                "apiVersion": V3, "kind": "GlobalNetworkPolicy",
                "metadata": {"name": f"g{i}"},
                "spec": {"order": 10 + i % 90, "selector": sel,
                         "namespaceSelector": f"env == '{'staging' if i % 2 else 'prod'}'",
                         "ingress": [
                             {"action": "Deny", "protocol": "TCP",
                              "source": {"nets": [f"172.16.{i % 250}.0/24"]}},
                             {"action": "Pass", "protocol": "TCP",
                              "source": {"namespaceSelector": f"team == 't{(i + 1) % 5}'"},
                              "destination": {"ports": [9100]}}],
                         "egress": [
                             {"action": "Allow", "protocol": "UDP",
                              "destination": {"nets": ["10.96.0.10/32"], "ports": [53]}},
                             {"action": "Deny", "protocol": "TCP",
                              "destination": {"selector": f"tier == 'db' && app != '{app}'",
                                              "ports": [5432]}}],
                         "types": ["Ingress", "Egress"]}}))
    return g


def key_of(r: Any) -> str:
    return f"{r.namespace}/{r.name}" if r.namespace else r.name


def kind_of(r: Any) -> str:
    return "K8sNetworkPolicy" if r.apiVersion == K8S else r.kind


# --- namespaces -----------------------------------------------------------------------------

def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run this thread (and the nft processes it starts) in ``netns``, as the agent runs in
    its node: no ``ip netns exec`` in the timings."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(f"/var/run/netns/{netns}")
        yield
    finally:
        setns(back)
        os.close(back)


# --- programming ----------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values)


def cpu() -> float:
    """CPU seconds of this process and its finished children (the nft runs): unlike wall
    time, hardly affected by other work on the machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def thread_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this thread: with libnftables in-process, user time of
    an apply is nft parsing and evaluating the script, system time the kernel's part (netlink,
    building the objects, the commit with its validation of the jump graph)."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime


def clear_caches() -> None:
    """Empty every memo of the calculation and the renderer (``functools`` caches and the
    renderer's own), so that each full programming starts as cold as an agent's first one."""
    modules = [m for name, m in sys.modules.items()
               if name.startswith(("policyagent.", "datastore.")) and m is not None]
    for m in modules:
        for value in list(vars(m).values()):
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()
    clear = getattr(nft_render, "clear_caches", None)
    if clear is not None:
        clear()


def rss_mb() -> float:
    """Resident set size of this process now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def full_programming(g: Generated, runs: int) -> tuple[dict[str, list[float]], PolicyCalculator,
                                                         DataplaneModel]:
    splits: dict[str, list[float]] = {k: [] for k in
                                      ("update", "model", "render", "apply", "total",
                                       "apply cpu", "total cpu", "apply user", "apply sys")}
    resources = g.all()
    calc = PolicyCalculator(NODE)
    model = DataplaneModel()
    for _ in range(runs):
        nft_apply.delete_table()
        del calc, model
        clear_caches()
        gc.collect()
        c0 = cpu()
        t0 = time.perf_counter()
        calc = PolicyCalculator(NODE)
        for r in resources:
            calc.update(kind_of(r), key_of(r), r)
        t1 = time.perf_counter()
        model = calc.model()
        t2 = time.perf_counter()
        script = render(model)
        t3 = time.perf_counter()
        c3 = cpu()
        u3, s3 = thread_cpu()
        nft_apply.apply(script)
        t4 = time.perf_counter()
        c4 = cpu()
        u4, s4 = thread_cpu()
        for k, v in zip(splits, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, c4 - c3, c4 - c0,
                                 u4 - u3, s4 - s3), strict=True):
            splits[k].append(v * 1e3)
    return splits, calc, model


def timed_change(calc: PolicyCalculator, model: DataplaneModel,
                 change: Callable[[], None]) -> tuple[dict[str, float], DataplaneModel, str]:
    c0 = cpu()
    t0 = time.perf_counter()
    change()
    t1 = time.perf_counter()
    new = calc.model()
    t2 = time.perf_counter()
    script = render_incremental(model, new)
    path = "incremental"
    if script is None:
        script, path = render(new), "full"
    elif model.diff(new).members_only:
        path = "set elements"
    t3 = time.perf_counter()
    c3 = cpu()
    u3, s3 = thread_cpu()
    if script:
        nft_apply.apply(script)
    t4 = time.perf_counter()
    c4 = cpu()
    u4, s4 = thread_cpu()
    return ({"update": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "render": (t3 - t2) * 1e3,
             "apply": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3, "apply cpu": (c4 - c3) * 1e3,
             "total cpu": (c4 - c0) * 1e3, "apply user": (u4 - u3) * 1e3,
             "apply sys": (s4 - s3) * 1e3, "script bytes": len(script)}, new, path)


def changes(g: Generated, calc: PolicyCalculator, model: DataplaneModel, n: int, seed: int,
            base: int | None = None
            ) -> tuple[list[dict[str, float]], list[dict[str, float]], dict[str, int],
                       DataplaneModel]:
    """``n`` new local pods, then ``n`` label changes of local pods (tier or version), each
    timed from ``update()`` to the transaction in the kernel."""
    rng = random.Random(seed)
    new_pods: list[dict[str, float]] = []
    labels: list[dict[str, float]] = []
    paths: dict[str, int] = {}
    base = len(g.endpoints) if base is None else base
    local = [w for w in g.endpoints if w.spec.node == NODE]
    for k in range(n):
        ns, app, tier = rng.choice(g.apps)
        w = wep(base + k, ns, app, tier, "v1", True)
        t, model, path = timed_change(calc, model, lambda w=w: calc.update(
            "WorkloadEndpoint", key_of(w), w))
        new_pods.append(t)
        paths[f"new pod: {path}"] = paths.get(f"new pod: {path}", 0) + 1
    for k in range(n):
        w = rng.choice(local[2:])
        data = w.dump()
        labels_ = data["metadata"]["labels"]
        if k % 2:  # a canary: version v1 <-> v2 (rule selectors and some policies use it)
            labels_["version"] = "v2" if labels_["version"] == "v1" else "v1"
        else:  # the tier: policies select on it, rule selectors too
            labels_["tier"] = rng.choice([t for t in TIERS if t != labels_["tier"]])
        w2 = res(data)
        t, model, path = timed_change(calc, model, lambda w2=w2: calc.update(
            "WorkloadEndpoint", key_of(w2), w2))
        labels.append(t)
        paths[f"label change: {path}"] = paths.get(f"label change: {path}", 0) + 1
    return new_pods, labels, paths, model


def nft_floor(runs: int) -> float:
    """Applying an (almost) empty transaction: what every apply pays at least."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        nft_apply.apply("table inet tortie {}\n")
        times.append((time.perf_counter() - t0) * 1e3)
    return med(times)


# --- where the time goes (--profile) and the memory (--memory) ------------------------------

def top(prof: cProfile.Profile, n: int = 22) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(n)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join("    " + line for line in lines[start:] if line.strip())


def profile_full(g: Generated) -> None:
    """cProfile of the Python steps of one cold full programming (no apply)."""
    clear_caches()
    gc.collect()
    prof = cProfile.Profile()
    prof.enable()
    calc = PolicyCalculator(NODE)
    for r in g.all():
        calc.update(kind_of(r), key_of(r), r)
    render(calc.model())
    prof.disable()
    print("\n  cProfile, one cold full programming (update + model + render), by own time:")
    print(top(prof))


def profile_changes(g: Generated, calc: PolicyCalculator, model: DataplaneModel, n: int
                    ) -> DataplaneModel:
    """cProfile of ``n`` more new pods and label changes (Python and the applies)."""
    prof = cProfile.Profile()
    prof.enable()
    _, _, _, model = changes(g, calc, model, n, seed=7, base=len(g.endpoints) + 1000)
    prof.disable()
    print(f"\n  cProfile, {n} new pods + {n} label changes (calc, render and apply), by own "
          f"time:")
    print(top(prof))
    return model


def without_elements(model: DataplaneModel) -> DataplaneModel:
    return dataclasses.replace(model, ipsets=FrozenMap(
        (k, dataclasses.replace(v, members=frozenset())) for k, v in model.ipsets.items()))


def timed_apply(script: str, runs: int = 3) -> tuple[float, float, float]:
    """Medians of (wall, user, sys) ms of applying ``script`` over an empty table."""
    walls, users, syss = [], [], []
    for _ in range(runs):
        nft_apply.delete_table()
        t0, (u0, s0) = time.perf_counter(), thread_cpu()
        nft_apply.apply(script)
        t1, (u1, s1) = time.perf_counter(), thread_cpu()
        walls.append((t1 - t0) * 1e3)
        users.append((u1 - u0) * 1e3)
        syss.append((s1 - s0) * 1e3)
    return med(walls), med(users), med(syss)


def nft_breakdown(model: DataplaneModel) -> None:
    """What the full apply spends on the set elements, on the chains, and what the kernel's
    validation of the jump graph costs a transaction that adds a rule."""
    full = render(model)
    bare = render(without_elements(model))
    members = sum(len(s.members) for s in model.ipsets.values())
    by_prefix: dict[str, int] = {}
    chain = ""
    for line in full.splitlines():
        if line.startswith("\tchain "):
            chain = line.split()[1]
        elif line.startswith("\t}"):
            chain = ""
        elif chain and line.startswith("\t\t") and not line.startswith(
                ("\t\tcomment", "\t\ttype")):
            kind = chain.split("_")[0] if "_" in chain and len(chain.split("_")[-1]) == 12 \
                else "base"
            by_prefix[kind] = by_prefix.get(kind, 0) + 1
    print(f"\n  nft: {members} set members in {len(model.ipsets)} sets; rules by chain kind: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_prefix.items())))
    for what, script in (("whole table", full), ("chains + empty sets", bare)):
        wall, user, sys_ = timed_apply(script)
        print(f"  apply {what:<28}{wall:8.1f} ms  (user {user:.1f}, sys {sys_:.1f}; "
              f"{len(script) / 1e6:.2f} MB)")
    # the same table through libnftables' JSON input (as ``nft -j list`` gives it back)
    nft_apply.delete_table()
    nft_apply.apply(full)
    listed = json.loads(nft_apply.run(["-j", "list", "table", "inet", "tortie"]))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    doc = json.dumps({"nftables": [{"add": strip(item)} for item in listed["nftables"]
                                   if "metainfo" not in item]})
    try:
        walls = []
        for _ in range(3):
            nft_apply.delete_table()
            t0 = time.perf_counter()
            nft_apply.run(["-j", "-f", "-"], stdin=doc)
            walls.append((time.perf_counter() - t0) * 1e3)
        print(f"  apply {'whole table as JSON':<28}{med(walls):8.1f} ms  "
              f"({len(doc) / 1e6:.2f} MB)")
    except nft_apply.NftError as e:
        print(f"  apply whole table as JSON: refused ({str(e)[:200]})")
    nft_apply.delete_table()
    nft_apply.apply(full)
    probes = []
    for _ in range(7):
        t0 = time.perf_counter()
        nft_apply.apply("add chain inet tortie zz_probe\n"
                        "add rule inet tortie zz_probe counter accept\n")
        probes.append((time.perf_counter() - t0) * 1e3)
        nft_apply.apply("delete chain inet tortie zz_probe\n")
    print(f"  {'a rule added to an unused chain':<34}{med(probes):9.1f} ms  (the kernel "
          f"validates the whole jump graph at commit)")


# --- throughput -----------------------------------------------------------------------------

class Path3:
    """pod a -- node (router, carries the table) -- pod b, as the CNI plugin wires pods."""

    def __init__(self, tag: str, a: Any, b: Any) -> None:
        self.node, self.pa, self.pb = (f"tps-{tag}-{x}" for x in ("node", "pa", "pb"))
        self.a, self.b = a, b
        self.server: subprocess.Popen[str] | None = None

    @staticmethod
    def ip(w: Any) -> str:
        return str(w.spec.ipNetworks[0]).split("/")[0]

    def up(self) -> None:
        for ns in (self.node, self.pa, self.pb):
            sh("ip", "netns", "add", ns)
            nsx(ns, "ip", "link", "set", "lo", "up")
        nsx(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nsx(self.node, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for link in ("up0", "up1"):
            nsx(self.node, "ip", "link", "set", link, "up")
        nsx(self.node, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        nsx(self.node, "ip", "route", "add", "default", "via", "192.0.2.2", "dev", "up0")
        for w, pod in ((self.a, self.pa), (self.b, self.pb)):
            name, ip = w.spec.interfaceName, self.ip(w)
            nsx(self.node, "ip", "link", "add", name, "type", "veth", "peer", "name", "eth0",
                "netns", pod)
            nsx(self.node, "sysctl", "-qw", f"net.ipv4.conf.{name}.proxy_arp=1")
            nsx(self.node, "sysctl", "-qw", f"net.ipv4.neigh.{name}.proxy_delay=0")
            nsx(self.node, "ip", "link", "set", name, "up")
            nsx(self.node, "ip", "route", "add", f"{ip}/32", "dev", name)
            nsx(pod, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
            nsx(pod, "ip", "link", "set", "eth0", "up")
            nsx(pod, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            nsx(pod, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.pb, "iperf3", "-s", "-p", str(IPERF_PORT),
             "-B", self.ip(self.b)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while "LISTEN" not in nsx(self.pb, "ss", "-ltn", check=False).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(5)
        for ns in (self.node, self.pa, self.pb):
            sh("ip", "netns", "del", ns, check=False)

    def iperf(self, seconds: float) -> float:
        """Gbit/s received, one TCP stream a -> b."""
        out = nsx(self.pa, "iperf3", "-c", self.ip(self.b), "-p", str(IPERF_PORT), "-t",
                  str(seconds), "-J")
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


#: The stateful baseline without policy: connection tracking on the forward hook only.
CONNTRACK_ONLY = """table inet tortie {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t}
}
"""


def throughput(path: Path3, script: str, runs: int, seconds: float
               ) -> tuple[dict[str, list[float]], int]:
    """Gbit/s with the full table, with conntrack only, with no table: round-robin, so that
    other work on the machine hits all three alike."""
    results: dict[str, list[float]] = {"full table": [], "conntrack only": [], "no table": []}
    for _ in range(runs):
        for what in results:
            nft_apply.delete_table("tortie", path.node)
            if what == "full table":
                nft_apply.apply(script, path.node)
            elif what == "conntrack only":
                nft_apply.apply(CONNTRACK_ONLY, path.node)
            results[what].append(path.iperf(seconds))
    nft_apply.apply(script, path.node)
    path.iperf(1)
    counters = nft_apply.read_counters("tortie", path.node)
    allowed = counters.get("gnp:allow-iperf/ingress/0", (0, 0))[0]
    nft_apply.delete_table("tortie", path.node)
    return results, allowed


# --- main -----------------------------------------------------------------------------------

def row(label: str, values: list[float], unit: str = "ms") -> str:
    return (f"  {label:<34}{med(values):9.1f} {unit} median  (min {min(values):.1f}, "
            f"max {max(values):.1f}, n={len(values)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--local", type=int, default=1000,
                    help="how many of the endpoints are on the measured node")
    ap.add_argument("--runs", type=int, default=5, help="full programming runs")
    ap.add_argument("--changes", type=int, default=40, help="new pods, and label changes")
    ap.add_argument("--iperf-runs", type=int, default=5)
    ap.add_argument("--iperf-seconds", type=float, default=3)
    ap.add_argument("--no-iperf", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also print where the time goes: cProfile of the Python steps, "
                         "the apply's parts")
    ap.add_argument("--memory", action="store_true",
                    help="print the resident memory of the process at each step (it holds "
                         "what tortie-node's policy agent holds)")
    args = ap.parse_args()
    for tool in ("nft", "ip") + (() if args.no_iperf else ("iperf3",)):
        if shutil.which(tool) is None:
            print(f"error: {tool} is missing (apt-get install nftables iproute2 iperf3)",
                  file=sys.stderr)
            return 1
    tag = uuid.uuid4().hex[:6]
    load = os.getloadavg()
    memory = [("interpreter + policy agent imports", rss_mb())]
    if args.memory:  # the modules of the whole daemon, as tortie-node has them loaded
        importlib.import_module("node.main")
        memory.append(("+ tortie-node's other modules", rss_mb()))
    g = generate(args.endpoints, args.policies, args.local)
    # what the agent's syncer keeps: every resource as the datastore's JSON document
    syncer_cache = {f"{kind_of(r)}/{key_of(r)}": json.loads(json.dumps(r.dump()))
                    for r in g.all()}
    memory.append(("+ resources (parsed, and as JSON)", rss_mb()))
    node_ns = f"tps-{tag}-prog"
    sh("ip", "netns", "add", node_ns)
    path = Path3(tag, g.endpoints[0], g.endpoints[1])
    try:
        with inside(node_ns):
            floor = nft_floor(10)
            splits, calc, model = full_programming(g, args.runs)
            script = render(model)
            gc.collect()
            memory.append(("+ calculator, model, table applied", rss_mb()))
            t0 = time.perf_counter()
            nft_apply.apply(script)  # over the existing table (an agent restart)
            replace = (time.perf_counter() - t0) * 1e3
            new_pods, labels, paths, model = changes(g, calc, model, args.changes, seed=2)
            gc.collect()
            memory.append(("+ the changes", rss_mb()))
            if args.profile:
                model = profile_changes(g, calc, model, 20)
                nft_breakdown(model)
                profile_full(g)
            rules = sum(1 for line in script.splitlines() if line.startswith("\t\t")
                        and not line.startswith(("\t\tcomment", "\t\ttype", "\t\telements",
                                                 "\t\t\t", "\t\tflags")))
        print(f"\nload average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f} "
              f"(2 cores; wall times stretch with other work, CPU times much less)")
        print(f"\nPolicy at scale: {len(g.endpoints)} endpoints ({len(model.endpoints)} on "
              f"this node), {len(g.policies)} policies, {len(g.namespaces)} namespaces")
        print(f"  this node's table: {len(model.policies)} policy programs, "
              f"{len(model.ipsets)} IP sets, ~{rules} rules, {len(script) / 1e6:.1f} MB of "
              f"nft script")
        print("\nFull programming (fresh calculator, empty table):")
        for k, label in (("update", "update() of every resource"), ("model", "model()"),
                         ("render", "render()"), ("apply", "apply (whole table)"),
                         ("total", "total"), ("apply cpu", "  CPU of the apply"),
                         ("apply user", "    user (nft in-process)"),
                         ("apply sys", "    system (kernel)"),
                         ("total cpu", "  CPU of the total")):
            print(row(label, splits[k]))
        print(f"  {'apply over the existing table':<34}{replace:9.1f} ms")
        print(f"  {'apply of an empty transaction':<34}{floor:9.1f} ms  (the floor; applied "
              f"through {nft_apply.backend()})")
        for title, data in (("One new pod", new_pods), ("One label change", labels)):
            print(f"\n{title} (calc + smallest transaction applied):")
            for k in ("update", "model", "render", "apply", "total", "apply cpu", "apply user",
                      "apply sys", "total cpu"):
                label = (f"  CPU of {k[:-4]}" if k.endswith("cpu") else
                         f"    {k[6:]} of the apply" if k.startswith("apply ") else k)
                print(row(label, [d[k] for d in data]))
            print(row("script size", [d["script bytes"] / 1e3 for d in data], "kB"))
        print("  paths taken: " + ", ".join(f"{k} x{v}" for k, v in sorted(paths.items())))
        if not args.no_iperf:
            path.up()
            tput, allowed = throughput(path, script, args.iperf_runs, args.iperf_seconds)
            print(f"\nThroughput, one TCP stream pod a -> node -> pod b, iperf3 "
                  f"{args.iperf_seconds:g} s x {args.iperf_runs} each, round-robin:")
            for what, values in tput.items():
                print(row(f"with {what}", values, "Gbit/s"))
            base = med(tput["no table"])
            print(f"  {'ratio full / no table (medians)':<34}{med(tput['full table']) / base:9.2f}")
            print(f"  {'ratio full / conntrack only':<34}"
                  f"{med(tput['full table']) / med(tput['conntrack only']):9.2f}")
            print(f"  (the allow rule counted {allowed} packet(s) in the last run: the first "
                  f"packet of a flow goes through policy, the rest is conntrack-established)")
        if args.memory:
            print(f"\nResident memory (RSS) of this process ({len(syncer_cache)} resources; "
                  f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB):")
            for what, mb in memory:
                print(f"  {what:<40}{mb:8.1f} MB")
        print("\nTargets: full <= 1000 ms, new pod <= 20 ms, label change <= 20 ms, "
              "throughput ratio >= 0.9")
        print(f"  full {med(splits['total']):.0f} ms, new pod "
              f"{med([d['total'] for d in new_pods]):.1f} ms, label change "
              f"{med([d['total'] for d in labels]):.1f} ms")
    finally:
        path.down()
        sh("ip", "netns", "del", node_ns, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
