"""tortie-kube-controllers against a real kube-apiserver, and the
kind manifests against that API server.  A 3-node lab with a real Kubernetes
(``tortie lab up --kubernetes``) whose pool uses VXLAN, so every node holds a tunnel address:

* a pod label changed with ``kubectl label`` reaches its WorkloadEndpoint and flips a
  NetworkPolicy verdict on real packets (and back);
* automatic host endpoints (seed 003): one ``<node>-auto-hep`` per node once the
  KubeControllersConfiguration enables them, carrying the node's Kubernetes labels; the
  seed's host policy then refuses, and its ``global-access`` policy re-opens, a host port;
* every manifest under integration/kind/ passes ``kubectl apply --dry-run=server``, and the
  kube-controllers' ClusterRole grants what it lists and watches;
* a BGP password: the referenced key of a kube-system Secret reaches etcd (and follows a
  change), an unreferenced Secret does not; a reference to a Secret (or key) that does not
  exist is a Warning Event about that Secret, posted once, and the password is copied once
  the Secret is made;
* a Node deleted with ``kubectl delete node`` (its kubelet, kube-proxy and tortie-node
  stopped first, as a decommissioned machine): by the time its Calico Node is gone, its
  workload endpoints, its pods' addresses, tunnel address, blocks, block affinities and IPAM
  host document are too -- read through ipam/ in the fabric.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import netns
from lab.cluster import Lab
from lab.kubernetes import AGNHOST_IMAGE
from lab.procs import alive, stop_pid
from tests.support.kubernetes import (
    K8S_MARKS,
    REPO,
    eventually,
    exec_in_pod,
    kjson,
    kubectl,
    kubernetes_lab,
    ok,
)
from tests.support.lab_cli import cli, weps
from tests.support.lab_ipam import holdings, ipam_state

pytestmark = K8S_MARKS

KIND = REPO / "integration" / "kind"
NS = "kc"
SERVER_PORT = 8080
HOST_PORT = 8888
KCC_AUTO_HEP = '{"spec": {"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}}}'


def _restart_stopped_agents(lab: Lab) -> None:
    """Before ``down``: a node whose tortie-node a test stopped gets it back, so containerd's
    CNI DELs of that node's sandboxes are answered."""
    for name, node in lab.load().nodes.items():
        if not alive(node.pid):
            lab.restart_node(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three nodes with a real Kubernetes; the pool in VXLAN mode (tunnel addresses)."""
    with kubernetes_lab(f"kc{uuid.uuid4().hex[:6]}", "--encap", "vxlan",
                        before_down=_restart_stopped_agents) as lab:
        yield lab


def pod(name: str, node: str, args: list[str], labels: dict[str, str] | None = None,
        host_network: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "agnhost", "image": AGNHOST_IMAGE,
                        "imagePullPolicy": "Never", "args": args}]}
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}}, "spec": spec}


def apply(lab: Lab, *docs: dict[str, Any]) -> None:
    ok(kubectl(lab, "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": list(docs)})))


def ready_pods(lab: Lab, *names: str) -> dict[str, dict[str, Any]]:
    ok(kubectl(lab, "wait", "-n", NS, "--for=condition=Ready", "--timeout=240s",
               *(f"pod/{n}" for n in names), timeout=300))
    return {n: kjson(lab, "get", "pod", "-n", NS, n) for n in names}


def connects(lab: Lab, src: str, dst: str) -> bool | None:
    """Whether pod ``src`` opens a TCP connection to ``dst`` (``IP:PORT``); None when the
    probe itself did not run (``kubectl exec`` failed)."""
    p = exec_in_pod(lab, NS, src, "/agnhost", "connect", dst, "--timeout=3s",
                    "--protocol=tcp", timeout=90)
    if p.returncode == 0:
        return True
    if p.stderr.startswith(("TIMEOUT", "REFUSED")):  # agnhost says why on stderr
        return False
    return None


def verdict(lab: Lab, src: str, dst: str, want: bool, what: str) -> None:
    """``src`` -> ``dst`` settles on ``want`` (policy is programmed asynchronously), and is
    still ``want`` when looked at again."""
    seen: list[bool | None] = []

    def check() -> bool:
        seen.append(connects(lab, src, dst))
        return seen[-1] is want
    try:
        eventually(check, 120, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; probes answered {seen}") from None
    assert connects(lab, src, dst) is want, f"{what}: not stable"


@pytest.fixture(scope="module")
def pods(lab: Lab) -> dict[str, dict[str, Any]]:
    """A server (node1) and a probe (node2): the probe crosses nodes through VXLAN."""
    ok(kubectl(lab, "create", "namespace", NS))
    apply(lab, pod("server", "node1", ["netexec", f"--http-port={SERVER_PORT}",
                                       "--udp-port=-1"], {"app": "server"}),
          pod("probe", "node2", ["pause"]))
    return ready_pods(lab, "server", "probe")


def endpoint_labels(lab: Lab, pod_name: str) -> dict[str, str]:
    [wep] = [w for w in weps(lab, NS) if w["spec"]["pod"] == pod_name]
    return dict(wep["metadata"].get("labels") or {})


# --- 3a: pod labels -> endpoint -> policy on real packets ---------------------------------------

SERVER_FROM_CLIENTS = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "server-from-clients", "namespace": NS},
    "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                          "ports": [{"protocol": "TCP", "port": SERVER_PORT}]}]}}


def test_pod_label_change_reaches_endpoint_and_flips_policy(
        lab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    server = f"{pods['server']['status']['podIP']}:{SERVER_PORT}"
    verdict(lab, "probe", server, True, "probe -> server before any policy")
    apply(lab, SERVER_FROM_CLIENTS)
    eventually(lambda: "server-from-clients" in cli(lab, "get", "k8snetworkpolicies", "-n",
                                                    NS).stdout, 60, "policy mirrored")
    verdict(lab, "probe", server, False, "probe without role=client refused")
    assert "role" not in endpoint_labels(lab, "probe")

    start = time.monotonic()
    ok(kubectl(lab, "label", "pod", "-n", NS, "probe", "role=client"))
    labels = eventually(lambda: endpoint_labels(lab, "probe").get("role") == "client"
                        and endpoint_labels(lab, "probe"), 60, "role=client on the endpoint")
    assert labels["projectcalico.org/namespace"] == NS
    assert labels["projectcalico.org/orchestrator"] == "k8s"
    verdict(lab, "probe", server, True, "probe with role=client connects")
    print(f"\nlabel -> endpoint -> connects: {time.monotonic() - start:.1f}s")

    ok(kubectl(lab, "label", "pod", "-n", NS, "probe", "role-"))
    eventually(lambda: "role" not in endpoint_labels(lab, "probe"), 60, "role gone")
    verdict(lab, "probe", server, False, "probe refused again without the label")
    ok(kubectl(lab, "delete", "networkpolicy", "-n", NS, "server-from-clients"))
    verdict(lab, "probe", server, True, "open again without the policy")


# --- 3c: automatic host endpoints (seed 003) ----------------------------------------------------

#: The seed's worker policy, as written there (no node here has the master label).
INGRESS_K8S_WORKERS = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: ingress-k8s-workers
spec:
  selector: has(kubernetes-worker)
  ingress:
  - action: Allow
    destination:
      nets:
      - 127.0.0.1/32
  - action: Allow
    protocol: TCP
    source:
      selector: has(node-role.kubernetes.io/master)
    destination:
      ports:
      - 10250
  - action: Allow
    protocol: UDP
    destination:
      ports:
      - 53
"""
#: The seed's ``global-access``, selecting the worker hosts only (the seed's has no selector,
#: which would put every pod of this cluster under it too).
GLOBAL_ACCESS = f"""
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: global-access
spec:
  selector: has(kubernetes-worker)
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports:
      - {HOST_PORT}
"""


def heps(lab: Lab) -> dict[str, dict[str, Any]]:
    r = cli(lab, "get", "hostendpoints", "-o", "json")
    assert r.returncode == 0, r.stderr
    return {h["metadata"]["name"]: h for h in json.loads(r.stdout)["items"]}


def test_automatic_host_endpoints_per_node(lab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    st = lab.load()
    assert heps(lab) == {}  # autoCreate is Disabled by default
    start = time.monotonic()
    ok(cli(lab, "patch", "kubecontrollersconfiguration", "default", f"--patch={KCC_AUTO_HEP}"))
    want = {f"{n}-auto-hep" for n in st.nodes}
    got = eventually(lambda: set(heps(lab)) == want and heps(lab), 60, "one hep per node")
    print(f"\nauto host endpoints {time.monotonic() - start:.1f}s after the patch")
    calico_nodes = {n["metadata"]["name"]: n for n in json.loads(
        ok(cli(lab, "get", "nodes", "-o", "json")))["items"]}
    for name, node in st.nodes.items():
        hep = got[f"{name}-auto-hep"]
        assert hep["spec"]["node"] == name and hep["spec"]["interfaceName"] == "*"
        assert hep["spec"]["profiles"] == ["projectcalico-default-allow"]
        # the node's address and its VXLAN tunnel address (what Calico takes)
        tunnel = calico_nodes[name]["spec"]["ipv4VXLANTunnelAddr"]
        assert hep["spec"]["expectedIPs"] == [node.address, tunnel], hep
        labels = hep["metadata"]["labels"]
        assert labels["projectcalico.org/created-by"] == "calico-kube-controllers"
        assert labels["kubernetes.io/hostname"] == name
        assert labels["kubernetes.io/os"] == "linux"

    # the seed's next step: label the nodes with kubectl; the labels reach the host endpoints
    ok(kubectl(lab, "label", "nodes", "--all", "kubernetes-host="))
    eventually(lambda: all("kubernetes-host" in h["metadata"]["labels"]
                           for h in heps(lab).values()), 60, "kubernetes-host on every hep")

    # the hosts' default-allow profile leaves everything working: pods across nodes, exec
    server = f"{pods['server']['status']['podIP']}:{SERVER_PORT}"
    verdict(lab, "probe", server, True, "pod -> pod across nodes with host endpoints")
    assert lab.kube(st).ready_nodes() == set(st.nodes)   # kubelets still reach the API

    # a server on node3's host network: open, then closed by the seed's worker policy on the
    # node3 host endpoint, then open again through global-access (pod on node2 -> node3)
    apply(lab, pod("hostsrv", "node3", ["netexec", f"--http-port={HOST_PORT}",
                                        "--udp-port=-1"], host_network=True))
    ready_pods(lab, "hostsrv")
    target = f"{st.nodes['node3'].address}:{HOST_PORT}"
    verdict(lab, "probe", target, True, "host port open under default-allow")
    ok(kubectl(lab, "label", "node", "node3", "kubernetes-worker="))
    eventually(lambda: "kubernetes-worker" in heps(lab)["node3-auto-hep"]["metadata"]["labels"],
               60, "kubernetes-worker on node3's hep")
    ok(cli(lab, "apply", "-f", "-", stdin=INGRESS_K8S_WORKERS))
    verdict(lab, "probe", target, False, "worker policy closes the host port")
    ok(cli(lab, "apply", "-f", "-", stdin=GLOBAL_ACCESS))
    verdict(lab, "probe", target, True, "global-access opens it again")
    for gnp in ("global-access", "ingress-k8s-workers"):
        ok(cli(lab, "delete", "globalnetworkpolicy", gnp))
    ok(kubectl(lab, "label", "node", "node3", "kubernetes-worker-"))
    ok(kubectl(lab, "delete", "pod", "-n", NS, "hostsrv", "--wait=true", timeout=180))


# --- 4: the kind manifests against this API server ----------------------------------------------


def kind_manifests() -> list[Path]:
    """Every Kubernetes manifest under integration/kind/ (resources/ holds Calico resources
    for ``tortie apply``, kind-config.yaml is kind's own configuration)."""
    out = []
    for path in sorted(KIND.rglob("*.yaml")):
        kinds = {d.get("apiVersion", "") for d in yaml.safe_load_all(path.read_text()) if d}
        if kinds and not any(a.startswith(("projectcalico.org/", "kind.x-k8s.io/"))
                             for a in kinds):
            out.append(path)
    return out


def test_kind_manifests_pass_server_dry_run(lab: Lab) -> None:
    paths = kind_manifests()
    assert {p.name for p in paths} >= {"10-etcd.yaml", "20-tortie-node.yaml",
                                       "30-kube-controllers.yaml"}
    docs = {p: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in paths}
    crds = [d for ds in docs.values() for d in ds if d["kind"] == "CustomResourceDefinition"]
    if crds:  # the dry run of a custom resource needs its definition
        apply(lab, *crds)
    # namespaced documents need their namespace: make the ones the manifests bring, for real
    existing = {n["metadata"]["name"] for n in kjson(lab, "get", "namespaces")["items"]}
    made = [d for ds in docs.values() for d in ds
            if d["kind"] == "Namespace" and d["metadata"]["name"] not in existing]
    if made:
        apply(lab, *made)
    try:
        for path in paths:
            p = kubectl(lab, "apply", "--dry-run=server", "--validate=strict", "-f", "-",
                        input=path.read_text())
            assert p.returncode == 0, f"{path.relative_to(REPO)}:\n{p.stdout}{p.stderr}"
            assert "Warning" not in p.stderr, f"{path.relative_to(REPO)}: {p.stderr}"
            assert p.stdout.count("(server dry run)") == len(docs[path]), p.stdout
        # the kube-controllers' RBAC, applied for real: its service account may read what
        # the controllers list and watch (kubecontrollers/app.py), and write nothing there
        rbac = [d for d in docs[KIND / "manifests" / "30-kube-controllers.yaml"]
                if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                 "RoleBinding")]
        apply(lab, *rbac)
        sa = "system:serviceaccount:kube-system:tortie-kube-controllers"
        for resource in ("namespaces", "pods", "nodes", "services",
                         "networkpolicies.networking.k8s.io", "endpointslices.discovery.k8s.io"):
            for verb in ("list", "watch", "get"):
                p = kubectl(lab, "auth", "can-i", verb, resource, "--all-namespaces",
                            f"--as={sa}")
                assert p.stdout.strip() == "yes", (verb, resource, p.stdout, p.stderr)
        p = kubectl(lab, "auth", "can-i", "update", "pods", "--all-namespaces", f"--as={sa}")
        assert p.stdout.strip() == "no", p.stdout
        # Secrets (BGP passwords): read in kube-system only, never written
        for verb in ("list", "watch", "get"):
            p = kubectl(lab, "auth", "can-i", verb, "secrets", "-n", "kube-system", f"--as={sa}")
            assert p.stdout.strip() == "yes", (verb, p.stdout, p.stderr)
        for args in (("list", "secrets", "-n", "default"), ("list", "secrets", "--all-namespaces"),
                     ("update", "secrets", "-n", "kube-system")):
            p = kubectl(lab, "auth", "can-i", *args, f"--as={sa}")
            assert p.stdout.strip() == "no", (args, p.stdout)
        # Events about a missing BGP password Secret: in kube-system only
        for verb in ("create", "patch"):
            p = kubectl(lab, "auth", "can-i", verb, "events", "-n", "kube-system", f"--as={sa}")
            assert p.stdout.strip() == "yes", (verb, p.stdout, p.stderr)
            p = kubectl(lab, "auth", "can-i", verb, "events", "-n", "default", f"--as={sa}")
            assert p.stdout.strip() == "no", (verb, p.stdout)
    finally:
        for d in made:
            kubectl(lab, "delete", "namespace", d["metadata"]["name"], "--wait=false")


# --- BGP passwords: Secrets copied from the real API server ---------------------------------------

#: Run in the fabric: the copies of BGP password Secrets (datastore/bgp_secrets.py).
SECRET_COPIES = """
import asyncio, json
from datastore.bgp_secrets import secret_name
from datastore.etcd_config import EtcdConfig
from datastore.keys import BGP_SECRETS
from datastore.store import Store

async def main():
    async with Store(EtcdConfig.load()) as store:
        kvs, _ = await store.list(BGP_SECRETS)
    print(json.dumps({secret_name(kv.key): kv.value for kv in kvs}))

asyncio.run(main())
"""


def secret_copies(lab: Lab) -> dict[str, Any]:
    st = lab.load()
    p = netns.exec_in(st.fabric, [sys.executable, "-c", SECRET_COPIES], env={
        **st.etcd_env(), "PYTHONPATH": str(REPO)}, capture=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_bgp_password_secret_copied_from_the_api_server(lab: Lab) -> None:
    """tortie-kube-controllers copies the referenced key of a kube-system Secret into etcd,
    follows a changed value, and copies nothing of an unreferenced Secret."""
    sfx = uuid.uuid4().hex[:6]
    used, unused = f"bgp-{sfx}", f"unref-{sfx}"
    peer = f"md5-{sfx}"
    try:
        ok(kubectl(lab, "-n", "kube-system", "create", "secret", "generic", used,
                   "--from-literal=tor=s3cret", "--from-literal=other=not-for-bgp"))
        ok(kubectl(lab, "-n", "kube-system", "create", "secret", "generic", unused,
                   "--from-literal=tor=x"))
        # a peer no node uses (its nodeSelector matches none): referenced all the same
        ok(cli(lab, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
            "metadata": {"name": peer},
            "spec": {"peerIP": "192.0.2.250", "asNumber": 65009,
                     "nodeSelector": f"tortie-test == '{sfx}'",
                     "password": {"secretKeyRef": {"name": used, "key": "tor"}}}})))
        want = {"namespace": "kube-system", "data": {"tor": "s3cret"}}
        eventually(lambda: secret_copies(lab).get(used) == want, timeout=60,
                   what="the referenced key copied into etcd")
        copies = secret_copies(lab)
        assert unused not in copies and copies[used] == want  # only the referenced key

        ok(kubectl(lab, "-n", "kube-system", "patch", "secret", used, "--type=merge",
                   "-p", json.dumps({"stringData": {"tor": "n3w"}})))
        eventually(lambda: secret_copies(lab).get(used, {}).get("data") == {"tor": "n3w"},
                   timeout=60, what="the changed value copied")

        ok(cli(lab, "delete", "bgppeer", peer))
        eventually(lambda: used not in secret_copies(lab), timeout=60,
                   what="the copy removed once nothing references it")
        assert unused not in secret_copies(lab)
    finally:
        cli(lab, "delete", "bgppeer", peer)
        kubectl(lab, "-n", "kube-system", "delete", "secret", used, unused,
                "--ignore-not-found")


def secret_events(lab: Lab, secret: str) -> list[dict[str, Any]]:
    """The Events in kube-system about Secret ``secret``."""
    items: list[dict[str, Any]] = kjson(
        lab, "-n", "kube-system", "get", "events",
        f"--field-selector=involvedObject.kind=Secret,involvedObject.name={secret}")["items"]
    return items


def test_bgp_password_secret_missing_is_an_event(lab: Lab) -> None:
    """A BGPPeer whose password names a Secret that does not exist: one Warning Event about
    that Secret (naming the peer and the key), not one per pass; a Secret without the key:
    another; the key added: the password copied."""
    sfx = uuid.uuid4().hex[:6]
    secret, peer = f"bgp-miss-{sfx}", f"md5miss-{sfx}"
    try:
        ok(cli(lab, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
            "metadata": {"name": peer},
            "spec": {"peerIP": "192.0.2.251", "asNumber": 65009,
                     "nodeSelector": f"tortie-test == '{sfx}'",
                     "password": {"secretKeyRef": {"name": secret, "key": "tor"}}}})))

        def by_reason(reason: str) -> list[dict[str, Any]]:
            return [e for e in secret_events(lab, secret) if e.get("reason") == reason]

        eventually(lambda: by_reason("BGPPasswordSecretMissing"), timeout=60,
                   what="an Event about the missing Secret")
        [ev] = by_reason("BGPPasswordSecretMissing")
        assert ev["type"] == "Warning"
        assert ev["involvedObject"]["kind"] == "Secret"
        assert ev["involvedObject"]["namespace"] == "kube-system"
        assert ev["metadata"]["namespace"] == "kube-system"
        assert f"BGPPeer {peer}" in ev["message"] and "key tor" in ev["message"]
        assert ev["source"]["component"] == "tortie-kube-controllers"
        assert ev["count"] == 1
        # nothing changed: the controller's later passes post no more
        time.sleep(5)
        again = secret_events(lab, secret)
        assert len(again) == 1 and again[0]["count"] == 1, again

        # the Secret, without the key: an Event saying so
        ok(kubectl(lab, "-n", "kube-system", "create", "secret", "generic", secret,
                   "--from-literal=other=not-for-bgp"))
        eventually(lambda: by_reason("BGPPasswordKeyMissing"), timeout=60,
                   what="an Event about the missing key")
        assert f"BGPPeer {peer}" in by_reason("BGPPasswordKeyMissing")[0]["message"]
        assert secret not in secret_copies(lab)

        # the key added: the password is copied
        ok(kubectl(lab, "-n", "kube-system", "patch", "secret", secret, "--type=merge",
                   "-p", json.dumps({"stringData": {"tor": "s3cret"}})))
        eventually(lambda: secret_copies(lab).get(secret) == {
            "namespace": "kube-system", "data": {"tor": "s3cret"}}, timeout=60,
            what="the password copied once the key exists")
        assert len(secret_events(lab, secret)) == 2  # no Event for a password that exists
    finally:
        cli(lab, "delete", "bgppeer", peer)
        kubectl(lab, "-n", "kube-system", "delete", "secret", secret, "--ignore-not-found")
        kubectl(lab, "-n", "kube-system", "delete", "events",
                f"--field-selector=involvedObject.name={secret}")


# --- 3b: a Node deleted with kubectl ------------------------------------------------------------

def test_deleted_node_releases_addresses_tunnel_and_blocks(
        lab: Lab, pods: dict[str, dict[str, Any]]) -> None:
    st = lab.load()
    apply(lab, pod("victim", "node3", ["pause"]))
    victim_ip = ready_pods(lab, "victim")["victim"]["status"]["podIP"]
    tunnel = json.loads(ok(cli(lab, "get", "node", "node3", "-o", "json")))["spec"][
        "ipv4VXLANTunnelAddr"]
    before = holdings(ipam_state(lab), "node3")
    assert before["blocks"] and before["host"], before
    assert before["allocations"].get(tunnel) == "vxlan-tunnel-addr-node3", before
    assert before["allocations"].get(victim_ip, "").startswith("tortie."), before
    others = {n: holdings(ipam_state(lab), n) for n in ("node1", "node2")}
    ok(cli(lab, "ipam", "check"))   # tunnel addresses count as in use

    # node3 is decommissioned: its kubelet (else it registers the node again), kube-proxy
    # and tortie-node stop; then the Node is deleted
    for key in ("node3/kubelet", "node3/kube-proxy"):
        stop_pid(st.k8s_pids.pop(key), 10.0)
    lab.save(st)
    stop_pid(st.nodes["node3"].pid, 10.0)
    start = time.monotonic()
    ok(kubectl(lab, "delete", "node", "node3"))
    eventually(lambda: "node3" not in ok(cli(lab, "get", "nodes")), 60, "Calico Node gone")
    # the node controller deletes the Calico Node last (ipam.node_release.remove_node): by
    # now its endpoints, their addresses, its tunnel address, its block affinities (the
    # empty block deleted) and its host document are gone -- whether or not the pod GC has
    # deleted its pods yet
    at_once = holdings(ipam_state(lab, ["node1", "node2", "node3"]), "node3")
    assert at_once == {"blocks": [], "allocations": {}, "host": False, "tunnels": {}}, at_once
    assert not [w for w in weps(lab, NS) if w["spec"]["node"] == "node3"]
    print(f"\nnode3 deleted -> Calico Node and what it held gone: "
          f"{time.monotonic() - start:.1f}s")
    # the pod GC deletes the pods of a node that is gone; then IPAM lets go of everything
    eventually(lambda: not kjson(lab, "get", "pods", "-n", NS, "--field-selector",
                                 "spec.nodeName=node3")["items"], 180, "node3's pods deleted")

    def released() -> dict[str, Any] | None:
        h = holdings(ipam_state(lab), "node3")
        return None if h["blocks"] or h["allocations"] or h["host"] else h
    eventually(released, 120, "node3's addresses, tunnel address, blocks and host released")
    print(f"\nnode3 deleted -> its IPAM released: {time.monotonic() - start:.1f}s")
    state = ipam_state(lab)
    allocated = {a["ip"] for b in state["blocks"] for a in b["allocations"]}
    assert victim_ip not in allocated and tunnel not in allocated
    assert not any(b["node"] == "node3" for b in state["blocks"])
    assert "Block node3" not in ok(cli(lab, "ipam", "show", "--show-blocks"))
    # the other nodes keep theirs; the victim's endpoint and node3's host endpoint are gone
    for n, held in others.items():
        now = holdings(state, n)
        assert set(held["blocks"]) <= set(now["blocks"]) and now["host"], (n, held, now)
        assert held["allocations"].items() <= now["allocations"].items(), (n, held, now)
    assert not [w for w in weps(lab, NS) if w["spec"]["pod"] == "victim"]
    assert "node3-auto-hep" not in heps(lab)
    report = ok(cli(lab, "ipam", "check"))
    assert "IPAM is consistent" in report, report
    # the rest of the cluster still works
    server = f"{pods['server']['status']['podIP']}:{SERVER_PORT}"
    verdict(lab, "probe", server, True, "pod -> pod after node3 left")
