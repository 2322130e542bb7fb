"""``tortie policy show`` / ``counters`` end to end: resources applied with the CLI to a real
etcd, the program computed from them; counters read from a real nft table in scratch network
namespaces after real packets went through it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctl.policy import load_view
from datastore.resources import Resources
from datastore.store import Store
from lab.etcd import EtcdProcess
from policyagent import nft_apply
from policyagent.nft_render import render
from tests.support.cli import tortie
from tests.support.nft import A_IP, B_IP, Lab
from tests.support.tools import tools

pytestmark = [
    pytest.mark.integration,
    tools("nft", "ip"),
]

NODE = "n1"
RESOURCES = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{team: blue}}}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: {NODE}-k8s-a-eth0, namespace: shop, labels: {{app: client}}}}
spec: {{node: {NODE}, orchestrator: k8s, pod: a, endpoint: eth0, interfaceName: calia,
        ipNetworks: ["{A_IP}/32"], profiles: [kns.shop]}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: {NODE}-k8s-b-eth0, namespace: shop, labels: {{app: web}}}}
spec: {{node: {NODE}, orchestrator: k8s, pod: b, endpoint: eth0, interfaceName: calib,
        ipNetworks: ["{B_IP}/32"], profiles: [kns.shop],
        ports: [{{name: http, protocol: TCP, port: 8080}}]}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: n2-k8s-c-eth0, namespace: shop, labels: {{app: client}}}}
spec: {{node: n2, orchestrator: k8s, pod: c, endpoint: eth0, interfaceName: calic,
        ipNetworks: ["10.65.0.3/32"], profiles: [kns.shop]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: deny-8081}}
spec:
  order: 10
  selector: app == "web"
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: TCP
    destination: {{ports: [8081]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: allow-web, namespace: shop}}
spec:
  order: 100
  selector: app == "web"
  ingress:
  - action: Allow
    protocol: TCP
    source: {{selector: app == "client"}}
    destination: {{ports: [http]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: admin-ssh, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 192.168.0.0/16}}}}]
    ports: [{{port: 22}}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: {NODE}-eth0, labels: {{role: host}}}}
spec: {{node: {NODE}, interfaceName: eth0, expectedIPs: [192.0.2.1]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: host-web}}
spec:
  selector: role == "host"
  preDNAT: true
  applyOnForward: true
  ingress:
  - action: Allow
    protocol: TCP
    destination: {{ports: [80, 443]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: host-out}}
spec:
  selector: role == "host"
  applyOnForward: true
  types: [Egress]
  egress:
  - action: Allow
"""


@pytest.fixture
def applied(etcd_endpoint: str, scratch_dir: Path) -> str:
    path = scratch_dir / "policy.yaml"
    path.write_text(RESOURCES)
    r = tortie(etcd_endpoint, "apply", "-f", str(path))
    assert r.code == 0, r.text
    return etcd_endpoint


def test_show_workload_policies_in_order(applied: str) -> None:
    r = tortie(applied, "policy", "show", "shop/b")
    assert r.code == 0, r.text
    out = r.out
    assert out.startswith(f"Workload endpoint shop/{NODE}-k8s-b-eth0 on node {NODE} "
                          f"(interface calib, addresses {B_IP}/32)")
    ingress, egress = out.split("\ningress ")[1].split("\negress ")
    # the tier's policies by order: 10, 100, then the Kubernetes one (1000)
    first = ingress.index("1. GlobalNetworkPolicy deny-8081 (order 10)")
    second = ingress.index("2. NetworkPolicy shop/allow-web (order 100)")
    third = ingress.index("3. Kubernetes NetworkPolicy shop/admin-ssh (order 1000)")
    assert first < second < third
    assert "deny  tcp to [ports 8081]  (gnp:deny-8081/ingress/0)" in ingress
    assert ('allow tcp from [selector projectcalico.org/namespace == "shop" && '
            'app == "client"] to [ports named tcp:http of all()]  '
            '(np:shop:allow-web/ingress/0)') in ingress
    assert "allow ipv4 tcp from [nets 192.168.0.0/16] to [ports 22]" in ingress
    assert "end of tier: drop" in ingress
    assert ingress.index("end of tier") < ingress.index("profiles:") \
        < ingress.index("kns.shop") < ingress.index("default: drop")
    # no egress policy: the namespace profile allows
    assert "tier" not in egress and "kns.shop" in egress and "allow any" in egress
    assert egress.rstrip().endswith("default: drop")

    # the same endpoint by pod name with -n, and by its own name; json
    assert tortie(applied, "policy", "show", "-n", "shop", "b").out == out
    r = tortie(applied, "policy", "show", f"shop/{NODE}-k8s-b-eth0", "-o", "json")
    data = json.loads(r.out)
    assert data["endpoint"] == f"shop/{NODE}-k8s-b-eth0" and data["node"] == NODE
    hooks = {h["hook"]: h for h in data["hooks"]}
    assert set(hooks) == {"ingress", "egress"}
    (tier,) = hooks["ingress"]["tiers"]
    assert [p["id"] for p in tier["policies"]] == [
        "gnp:deny-8081", "np:shop:allow-web", "np:shop:knp.default.admin-ssh"]
    assert tier["policies"][1]["rules"][0]["action"] == "allow"
    assert hooks["egress"]["tiers"] == [] and hooks["egress"]["default"] == "drop"
    assert [p["profile"] for p in hooks["egress"]["profiles"]] == ["kns.shop"]


def test_show_host_endpoint_hooks(applied: str) -> None:
    r = tortie(applied, "policy", "show", f"{NODE}-eth0", "-o", "json")
    assert r.code == 0, r.text
    data = json.loads(r.out)
    assert data["kind"] == "host" and data["interface"] == "eth0"
    hooks = {h["hook"]: h for h in data["hooks"]}
    assert list(hooks) == ["ingress", "egress", "preDNAT ingress", "doNotTrack ingress",
                           "doNotTrack egress", "applyOnForward ingress",
                           "applyOnForward egress"]
    assert "tcp:22" in hooks["ingress"]["failsafe"]
    assert hooks["ingress"]["tiers"] == [] and hooks["ingress"]["default"] == "drop"
    (pre,) = hooks["preDNAT ingress"]["tiers"]
    assert [p["id"] for p in pre["policies"]] == ["gnp:host-web"]
    assert pre["policies"][0]["rules"][0]["destination"] == "ports 80,443"
    assert hooks["preDNAT ingress"]["default"] == "continue to normal policy"
    assert [p["id"] for t in hooks["applyOnForward egress"]["tiers"]
            for p in t["policies"]] == ["gnp:host-out"]
    assert [p["id"] for t in hooks["egress"]["tiers"] for p in t["policies"]] == ["gnp:host-out"]
    assert hooks["applyOnForward egress"]["default"] == "drop"
    assert hooks["applyOnForward ingress"]["default"] == "allow (no applyOnForward policy)"
    text = tortie(applied, "policy", "show", f"{NODE}-eth0").out
    assert "preDNAT ingress (before DNAT" in text and "failsafe ports, allowed first" in text


def test_show_errors(applied: str) -> None:
    r = tortie(applied, "policy", "show", "shop/nope")
    assert r.code == 1
    assert "error: ENDPOINT: no WorkloadEndpoint or pod named 'nope' in namespace 'shop'" \
        in r.err
    r = tortie(applied, "policy", "show", "b")
    assert r.code == 1 and "no WorkloadEndpoint or pod or HostEndpoint named 'b' in " \
        "namespace 'default'; in other namespaces: shop/n1-k8s-b-eth0" in r.err
    r = tortie(applied, "policy", "show", "shop/b", "--node", "n2")
    assert r.code == 1 and "--node: shop/n1-k8s-b-eth0 is on node 'n1', not 'n2'" in r.err
    r = tortie(applied, "policy", "show", "-n", "other", "shop/b")
    assert r.code == 1 and "is in namespace 'shop', not --namespace 'other'" in r.err
    # a remote endpoint is shown as its own node computes it
    r = tortie(applied, "policy", "show", "shop/c")
    assert r.code == 0 and "on node n2" in r.out


# --- counters against a real table ---------------------------------------------------------------

def _counters(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "ctl.main",
                           "policy", "counters", *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).resolve().parents[2],
                          env=dict(os.environ))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _program(etcd_server: EtcdProcess, node: str) -> Any:
    async def go() -> Any:
        async with Store(etcd_server.config) as store:
            return await load_view(Resources(store))

    view = asyncio.run(go())
    assert not view.skipped
    return view.calculator(node).model()


def test_counters_count_real_packets(applied: str, etcd_server: EtcdProcess, lab: Lab) -> None:
    r = _counters(lab.node)
    assert r.returncode == 1 and "no table inet tortie in this network namespace" in r.stderr

    model = _program(etcd_server, NODE)
    nft_apply.apply(render(model), lab.node)
    assert lab.tcp(8080)          # allow-web (named port http)
    assert not lab.tcp(8081)      # deny-8081
    assert not lab.ping()         # end of tier

    rows = json.loads(_counters(lab.node, "-o", "json").stdout)
    by_rule = {row["rule"]: row for row in rows}
    allow = by_rule["np:shop:allow-web/ingress/0"]
    assert allow["policy"] == "NetworkPolicy shop/allow-web" and allow["direction"] == "ingress"
    assert allow["index"] == 0 and allow["packets"] >= 1 and allow["bytes"] >= 60
    deny = by_rule["gnp:deny-8081/ingress/0"]
    assert deny["policy"] == "GlobalNetworkPolicy deny-8081" and deny["packets"] >= 1
    assert by_rule["np:shop:knp.default.admin-ssh/ingress/0"]["packets"] == 0
    assert by_rule["end of tier default ingress"]["packets"] >= 1
    assert by_rule["end of tier default ingress"]["policy"] is None

    nonzero = json.loads(_counters(lab.node, "--nonzero", "-o", "json").stdout)
    assert nonzero and all(row["packets"] > 0 for row in nonzero)
    assert len(nonzero) < len(rows)
    text = _counters(lab.node, "--nonzero").stdout
    lines = text.splitlines()
    assert lines[0].split() == ["RULE", "POLICY", "PACKETS", "BYTES"]
    assert any(ln.startswith("np:shop:allow-web/ingress/0") and
               "NetworkPolicy shop/allow-web" in ln for ln in lines)
    r = _counters(lab.node, "--table", "nope")
    assert r.returncode == 1 and "no table inet nope" in r.stderr
