"""Pod start latency through a real Kubernetes: Tortie vs Debian's bridge + host-local.

Brings up a lab with a real Kubernetes (3 nodes by default: kube-apiserver, scheduler,
controller-manager; per node a containerd, kubelet and kube-proxy; lab/kubernetes.py) and
creates bare Pod objects through the API server (one container, the pause image, never
pulled; spread evenly over the nodes by a topology spread constraint, through the scheduler)
from this process, ``--create-workers`` threads each with a keep-alive HTTPS connection. A
watch on the pods, opened before the first create (and resumed from the last resource version
when the server drops it), timestamps every change on this process's clock.

Latency of a pod: from the moment the API server answered its create (201) to the first
watch event that shows it Running with its Ready condition True. Throughput: pods / (last pod
Running - first create sent). As a cross-check the API's own timestamps are reported too:
``creationTimestamp`` to the Ready condition's ``lastTransitionTime`` (kubelet's clock, the
same machine; both have a resolution of one second). And each pod's RunPodSandbox as
containerd logs it (request to answer): the CNI ADD chain runs inside it.

Every round runs both chains on the same lab, Tortie first: the nodes' containerds run the
conflist ``tortie lab up`` wrote (tortie + portmap); then each node gets a conflist that sorts
before it (containerd 1.6 loads the first file of its conf dir and reloads on change) with
Debian's ``bridge`` + ``host-local`` (a per-node 10.250.<n>.0/24) in Tortie's place, the rest of
the chain (portmap) unchanged; removing that file restores Tortie. The swap is confirmed
through the CRI's verbose Status (the network containerd loaded) and every pod's IP is
checked against the chain's range. Between phases the pods are deleted (and their sandboxes
removed through the CRI), so each phase starts on empty nodes.

    .venv/bin/python bench/pod_start.py [--pods 100] [--rounds 3] [--nodes 3]

Prints p50 / p99 latency, pods/s and RunPodSandbox p50 / p99 per phase, their medians over
the rounds for both chains, the ratios (Tortie / reference) and each round's own ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import math
import os
import re
import secrets
import socket
import ssl
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit.netns import setns
from lab import netns
from lab.cluster import Lab, LabState
from lab.cri import CRIError, RuntimeClient, msg
from lab.kubernetes import PAUSE_IMAGE, Kubernetes

REF_DIR = Path("/usr/lib/cni")
NAMESPACE = "pod-start"
REF_NETWORK = "bench-bridge"
REF_BRIDGE = "cnibench0"
REF_CONF = "05-bench-bridge.conflist"  # sorts before 10-tortie.conflist
REF_RANGE = ipaddress.ip_network("10.250.0.0/16")
SWAP_TIMEOUT = 30.0
#: containerd's log lines around a sandbox's creation (the CNI ADD chain runs inside it)
SANDBOX_LOG = re.compile(
    r'time="([^"]+)" level=info msg="RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),'
    r'Uid:[^,]*,Namespace:' + NAMESPACE + r',Attempt:(\d+),\}( returns sandbox id)?')


# --- namespaces ------------------------------------------------------------------------------


def enter_netns(name: str) -> None:
    """Move this thread (and the threads and processes it starts) into a namespace."""
    setns(netns.netns_path(name))


# --- the API server --------------------------------------------------------------------------


class Api:
    """A minimal client of the lab's API server with the admin kubeconfig's certificate
    (the server is reachable only from inside the lab's fabric namespace)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = json.loads(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        url = urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "", url.port or 443
        self.ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        self._conn = self.connect()

    def connect(self, timeout: float | None = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             ok: tuple[int, ...] = (200, 201, 202)) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in (1, 2):  # one retry on a dropped keep-alive connection
            try:
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = self.connect()
                if attempt == 2:
                    raise
        if resp.status not in ok:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw.decode(errors='replace')}")
        return json.loads(raw) if raw else {}

    def close(self) -> None:
        self._conn.close()

    def clone(self) -> Api:
        """Another client with its own connection (one per thread)."""
        other = Api.__new__(Api)
        other.host, other.port, other.ctx = self.host, self.port, self.ctx
        other._conn = other.connect()
        return other


@dataclass
class PodTimes:
    """Times (time.monotonic) and the last state seen of one pod."""

    sent: float = 0.0
    created: float = 0.0
    scheduled: float = 0.0
    running: float = 0.0
    deleted: float = 0.0
    obj: dict[str, Any] = field(default_factory=dict)


class PodWatch(threading.Thread):
    """Watches the pods of one phase from a resource version on; stamps every change."""

    #: the server ends a watch after this many seconds (the watch then resumes)
    TIMEOUT_S = 3600

    def __init__(self, api: Api, selector: str, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.selector = selector
        self.pods = {n: PodTimes() for n in names}
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self._stopping = False
        self.reconnects = 0
        self._conn = api.connect(timeout=None)
        self._lister = api.clone()
        listing = api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector="
                                  f"{quote(selector)}")
        self.rv = listing["metadata"]["resourceVersion"]

    def run(self) -> None:
        try:
            while not self._stopping:
                self._stream()
                if self._stopping:
                    break
                # the server ended the stream (it closes watchers that fall behind): go on
                # from the last resource version seen, as an informer does
                self.reconnects += 1
                self._conn.close()
                time.sleep(0.2)
                self._conn = self.api.connect(timeout=None)
        except BaseException as e:  # reported to the waiting thread
            if not self._stopping:
                self.error = e
        finally:
            with self.cond:
                self.cond.notify_all()

    def _stream(self) -> None:
        """One watch request from ``self.rv``; returns when the stream ends."""
        try:
            self._conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&"
                                      f"labelSelector={quote(self.selector)}&"
                                      f"resourceVersion={self.rv}&allowWatchBookmarks=true&"
                                      f"timeoutSeconds={self.TIMEOUT_S}")
            resp = self._conn.getresponse()
        except (OSError, http.client.HTTPException):
            return
        if resp.status == 410:
            self._relist()
            return
        if resp.status != 200:
            raise RuntimeError(f"watch: {resp.status} {resp.read()[:300]!r}")
        while not self._stopping:
            try:
                line = resp.readline()
            except (OSError, http.client.HTTPException):
                return
            if not line:
                return
            now = time.monotonic()
            event = json.loads(line)
            obj = event.get("object", {})
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:  # the resource version is too old
                    self._relist()
                    return
                raise RuntimeError(f"watch: {obj}")
            self.rv = obj["metadata"]["resourceVersion"]
            if event["type"] != "BOOKMARK":
                self._seen(event["type"], obj, now)

    def _relist(self) -> None:
        """The state now (a watch could not resume): what changed is stamped now."""
        listing = self._lister.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?"
                                           f"labelSelector={quote(self.selector)}")
        now = time.monotonic()
        present = {item["metadata"]["name"] for item in listing["items"]}
        for item in listing["items"]:
            self._seen("MODIFIED", item, now)
        with self.cond:
            for name, t in self.pods.items():
                if t.obj and name not in present and not t.deleted:
                    t.deleted = now
        self.rv = listing["metadata"]["resourceVersion"]

    def _seen(self, kind: str, pod: dict[str, Any], now: float) -> None:
        with self.cond:
            t = self.pods.get(pod["metadata"]["name"])
            if t is None:
                return
            t.obj = pod
            if not t.scheduled and pod.get("spec", {}).get("nodeName"):
                t.scheduled = now
            if not t.running and running_and_ready(pod):
                t.running = now
            if kind == "DELETED" and not t.deleted:
                t.deleted = now
            self.cond.notify_all()

    def wait(self, what: str, done: str, timeout: float) -> None:
        """Until every pod has time ``done`` set (or the watch failed / time is up)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"watch failed: {self.error}")
                if all(getattr(t, done) for t in self.pods.values()):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not self.is_alive():
                    raise RuntimeError("the watch ended")
                self.cond.wait(min(left, 1.0))
            missing = {n: t.obj for n, t in self.pods.items() if not getattr(t, done)}
        raise RuntimeError(f"{len(missing)} pods not {what} within {timeout:.0f}s (watch "
                           f"resumed {self.reconnects} times); e.g. "
                           f"{describe(next(iter(missing.items())))}")

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            if self._conn.sock is not None:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._lister.close()
        self.join(5)


def running_and_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions", []))


def describe(item: tuple[str, dict[str, Any]]) -> str:
    name, pod = item
    status = pod.get("status", {})
    waiting = [cs.get("state", {}).get("waiting") for cs in status.get("containerStatuses", [])]
    conditions = [(c.get("type"), c.get("status"), c.get("message"))
                  for c in status.get("conditions", [])]
    return (f"{name}: node {pod.get('spec', {}).get('nodeName')!r}, phase "
            f"{status.get('phase')!r}, conditions {conditions}, waiting {waiting}")


def api_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def pod_manifest(name: str, run: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "pod-start", "run": run}},
        "spec": {
            "containers": [{"name": "pause", "image": PAUSE_IMAGE,
                            "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 2,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"run": run}}}],
        },
    }


# --- the chains ------------------------------------------------------------------------------


class Chains:
    """Swaps every node's containerd between Tortie's conflist and the reference one."""

    def __init__(self, lab: Lab, st: LabState) -> None:
        self.lab = lab
        self.st = st
        self.nodes = list(st.nodes.values())
        self.pool = ipaddress.ip_network(st.pool_cidr)

    def base(self, node: str) -> Path:
        return self.lab.dir / node / "containerd"

    def conf_dir(self, node: str) -> Path:
        return self.base(node) / "cni" / "net.d"

    def cri(self, node: str) -> RuntimeClient:
        return RuntimeClient(str(self.base(node) / "containerd.sock"))

    def ref_conflist(self, index: int, node: str) -> dict[str, Any]:
        tortie = json.loads((self.conf_dir(node) / "10-tortie.conflist").read_text())
        bridge = {"type": "bridge", "bridge": REF_BRIDGE, "isGateway": True, "ipMasq": False,
                  "ipam": {"type": "host-local",
                           "ranges": [[{"subnet": f"10.250.{index}.0/24"}]],
                           "routes": [{"dst": "0.0.0.0/0"}],
                           "dataDir": str(self.lab.dir / node / "bench-host-local")}}
        rest = [p for p in tortie["plugins"] if p.get("type") != "tortie"]
        return {"cniVersion": tortie["cniVersion"], "name": REF_NETWORK,
                "plugins": [bridge, *rest]}

    def loaded(self, node: str) -> str:
        """The name of the network this node's containerd runs pods on now."""
        with self.cri(node) as cri:
            info = cri.call("Status", msg["StatusRequest"](verbose=True)).info
        if info.get("lastCNILoadStatus") != "OK":
            return f"(load status: {info.get('lastCNILoadStatus')})"
        networks = json.loads(info["cniconfig"])["Networks"]
        return str(networks[-1]["Config"]["Name"])  # [0] is containerd's own loopback

    def use(self, chain: str) -> None:
        want = REF_NETWORK if chain == "reference" else "k8s-pod-network"
        for i, node in enumerate(self.nodes, start=1):
            conf = self.conf_dir(node.name) / REF_CONF
            if chain == "reference":
                tmp = conf.with_name(".bench.tmp")  # not a conf file: containerd ignores it
                tmp.write_text(json.dumps(self.ref_conflist(i, node.name), indent=2) + "\n")
                tmp.replace(conf)
            else:
                conf.unlink(missing_ok=True)
        deadline = time.monotonic() + SWAP_TIMEOUT
        for node in self.nodes:
            while (now := self.loaded(node.name)) != want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name}: containerd still runs {now!r}, not "
                                       f"{want!r}, {SWAP_TIMEOUT:.0f}s after the swap")
                time.sleep(0.1)

    def in_range(self, chain: str, ip: str) -> bool:
        net = REF_RANGE if chain == "reference" else self.pool
        return bool(ip) and ipaddress.ip_address(ip) in net

    def remove_sandboxes(self) -> int:
        """Stop and remove what is left of the bench's sandboxes (kubelet's GC would, later)."""
        removed = 0
        for node in self.nodes:
            with self.cri(node.name) as cri:
                for sb in cri.list_pod_sandbox(
                        labels={"io.kubernetes.pod.namespace": NAMESPACE}):
                    with contextlib.suppress(CRIError):
                        cri.stop_pod_sandbox(sb.id)
                    with contextlib.suppress(CRIError):
                        cri.remove_pod_sandbox(sb.id)
                    removed += 1
        return removed

    def log_offsets(self) -> dict[str, int]:
        return {n.name: self.containerd_log(n.name).stat().st_size for n in self.nodes}

    def containerd_log(self, node: str) -> Path:
        return self.base(node) / "containerd.log"

    def sandbox_times(self, since: dict[str, int], names: set[str]
                      ) -> tuple[list[float], int]:
        """Each pod's RunPodSandbox duration (s; first request to the successful answer),
        from the nodes' containerd logs written since ``since``; and how many pods needed
        more than one attempt."""
        begun: dict[str, datetime] = {}
        done: dict[str, datetime] = {}
        retried: set[str] = set()
        for node, offset in since.items():
            with open(self.containerd_log(node), "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            for m in SANDBOX_LOG.finditer(text):
                stamp, name, attempt, returned = m.groups()
                if name not in names:
                    continue
                when = api_time(stamp)
                if int(attempt) > 0:
                    retried.add(name)
                if returned:
                    done[name] = when
                else:
                    begun.setdefault(name, when)
        return ([(done[n] - begun[n]).total_seconds() for n in done if n in begun],
                len(retried))

    def clear_reference(self) -> None:
        """The bridge and host-local's files the reference phase left on the nodes."""
        for node in self.nodes:
            netns.ip("link", "del", REF_BRIDGE, ns=node.netns, check=False)
            for f in (self.lab.dir / node.name / "bench-host-local").glob("*/*"):
                f.unlink(missing_ok=True)


# --- one phase -------------------------------------------------------------------------------


@dataclass
class Phase:
    chain: str
    round: int
    latencies: list[float]  # s, created -> Running and Ready (watch)
    scheduling: list[float]  # s, created -> bound to a node (watch)
    api_latencies: list[float]  # s, creationTimestamp -> Ready lastTransitionTime
    create_s: float  # s, all creates
    span_s: float  # s, first create sent -> last pod Running
    teardown_s: float  # s, delete sent -> every pod gone
    per_node: dict[str, int]
    sandbox: list[float]  # s, containerd's RunPodSandbox per pod (CNI ADD inside)
    retried: int  # pods whose sandbox needed a second attempt
    reconnects: int  # times the watch was resumed

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 99)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.span_s


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_phase(api: Api, chains: Chains, chain: str, rnd: int, pods: int, timeout: float,
              creators: list[Api]) -> Phase:
    run = f"{chain[:3]}{rnd}-{secrets.token_hex(2)}"
    names = [f"ps-{run}-{i:03d}" for i in range(pods)]
    offsets = chains.log_offsets()
    watch = PodWatch(api, f"run={run}", names)
    watch.start()

    def create(worker: int) -> None:  # worker k creates pods k, k + workers, ...
        for n in names[worker::len(creators)]:
            sent = time.monotonic()
            creators[worker].call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods",
                                  pod_manifest(n, run))
            created = time.monotonic()
            with watch.cond:
                watch.pods[n].sent, watch.pods[n].created = sent, created

    try:
        first = time.monotonic()
        with ThreadPoolExecutor(len(creators)) as pool:
            for f in [pool.submit(create, k) for k in range(len(creators))]:
                f.result()
        create_s = time.monotonic() - first
        watch.wait("Running and Ready", "running", timeout)
        with watch.cond:
            times = {n: (t.created, t.scheduled, t.running, t.obj)
                     for n, t in watch.pods.items()}
        per_node: dict[str, int] = {}
        api_lat = []
        for n, (_, _, _, pod) in times.items():
            node = pod["spec"]["nodeName"]
            per_node[node] = per_node.get(node, 0) + 1
            ip = pod["status"].get("podIP", "")
            if not chains.in_range(chain, ip):
                raise RuntimeError(f"{n} on {node} has IP {ip!r}: not from the {chain} chain; "
                                   f"the conflist swap did not take")
            ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
            api_lat.append((api_time(ready["lastTransitionTime"])
                            - api_time(pod["metadata"]["creationTimestamp"])).total_seconds())
        last = max(r for _, _, r, _ in times.values())
        sandbox, retried = chains.sandbox_times(offsets, set(names))
        # teardown: delete them all, wait until the API has no pod left, then remove the
        # sandboxes kubelet stopped (while this chain's conflist is still in place)
        start = time.monotonic()
        api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector="
                           f"{quote('run=' + run)}")
        watch.wait("deleted", "deleted", timeout)
        teardown_s = time.monotonic() - start
        chains.remove_sandboxes()
    finally:
        watch.stop()
    return Phase(chain, rnd,
                 latencies=[r - c for c, _, r, _ in times.values()],
                 scheduling=[s - c for c, s, _, _ in times.values()],
                 api_latencies=api_lat, create_s=create_s, span_s=last - first,
                 teardown_s=teardown_s, per_node=dict(sorted(per_node.items())),
                 sandbox=sandbox, retried=retried, reconnects=watch.reconnects)


def report(ph: Phase) -> None:
    print(f"  round {ph.round} {ph.chain:9}: p50 {ph.p50:5.2f} s  p99 {ph.p99:5.2f} s  "
          f"{ph.rate:5.2f} pods/s  RunPodSandbox p50 {median(ph.sandbox):.2f} s "
          f"p99 {pct(ph.sandbox, 99):.2f} s  (scheduled p50 "
          f"{statistics.median(ph.scheduling):.2f} s; "
          f"API timestamps p50/p99 {statistics.median(ph.api_latencies):.0f}/"
          f"{pct(ph.api_latencies, 99):.0f} s; creates {ph.create_s:.1f} s; "
          f"all gone {ph.teardown_s:.1f} s after delete; sandbox retries {ph.retried}; "
          f"watch resumed {ph.reconnects}x; "
          f"{' '.join(f'{k}={v}' for k, v in ph.per_node.items())})", flush=True)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


# --- main ------------------------------------------------------------------------------------


def up(lab: Lab, nodes: int, attempts: int) -> LabState:
    """``tortie lab up --kubernetes``, again when it fails (it removes what it made first):
    on a loaded machine a readiness probe of lab/kubernetes.py can time out."""
    for attempt in range(1, attempts):
        try:
            return lab.up(nodes, kubernetes=True)
        except Exception as e:
            print(f"  lab up failed (attempt {attempt}/{attempts}): {type(e).__name__}: "
                  f"{str(e).splitlines()[-1] if str(e) else ''}; again", file=sys.stderr)
    return lab.up(nodes, kubernetes=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=100, help="pods per phase")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each: Tortie, reference)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=6,
                    help="pods per chain started (not measured) before the first round")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase step, seconds")
    ap.add_argument("--create-workers", type=int, default=10,
                    help="threads (connections) creating the pods")
    ap.add_argument("--up-attempts", type=int, default=3,
                    help="tries of the lab's bring-up (it can time out on a loaded machine)")
    args = ap.parse_args()
    if not (REF_DIR / "bridge").exists() or not (REF_DIR / "host-local").exists():
        print("error: Debian's reference plugins are missing: apt-get install "
              "containernetworking-plugins", file=sys.stderr)
        return 1
    name = f"ps{secrets.token_hex(2)}"
    lab = Lab(name, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    chains: Chains | None = None
    phases: list[Phase] = []
    loads = [load_note()]
    started = time.monotonic()
    try:
        st = up(lab, args.nodes, args.up_attempts)
        k8s: Kubernetes = lab.kube(st)
        chains = Chains(lab, st)
        enter_netns(st.fabric)  # the API server is reachable only inside the lab
        api = Api(k8s.admin_kubeconfig)
        creators = [api.clone() for _ in range(max(1, args.create_workers))]
        api.call("POST", "/api/v1/namespaces",
                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        for chain in ("tortie", "reference"):
            if args.warmup:
                chains.use(chain)
                run_phase(api, chains, chain, 0, args.warmup, args.timeout, creators)
                print(f"  warm-up: {args.warmup} pods with {chain}", file=sys.stderr)
        chains.use("tortie")
        for rnd in range(1, args.rounds + 1):
            for chain in ("tortie", "reference"):
                chains.use(chain)
                ph = run_phase(api, chains, chain, rnd, args.pods, args.timeout, creators)
                phases.append(ph)
                report(ph)
            loads.append(load_note())
        chains.use("tortie")
        chains.clear_reference()
        for c in [api, *creators]:
            c.close()
    finally:
        with contextlib.suppress(OSError):
            setns(home)
        os.close(home)
        if chains is not None:  # the reference's sandboxes go while its conflist is in place
            with contextlib.suppress(Exception):
                chains.remove_sandboxes()
            with contextlib.suppress(Exception):
                chains.use("tortie")
        lab.down()
    by = {c: [p for p in phases if p.chain == c] for c in ("tortie", "reference")}
    med = {c: (statistics.median(p.p50 for p in ps), statistics.median(p.p99 for p in ps),
               statistics.median(p.rate for p in ps),
               statistics.median(median(p.sandbox) for p in ps),
               statistics.median(pct(p.sandbox, 99) for p in ps)) for c, ps in by.items()}
    print(f"\nPod start over {args.nodes} nodes, {args.pods} pods per phase, {args.rounds} "
          f"round(s) ({time.monotonic() - started:.0f} s in all; {loads[0]} before, "
          f"{loads[-1]} at the end)")
    print("latency: API server's create answer -> watch shows Running + Ready; "
          "RunPodSandbox: containerd's log; medians over the rounds")
    print(f"{'':12}{'p50 (s)':>10}{'p99 (s)':>10}{'pods/s':>10}{'sandbox p50':>13}"
          f"{'sandbox p99':>13}")
    label = {"tortie": "tortie", "reference": "bridge+h-l"}
    for c, (p50, p99, rate, sb50, sb99) in med.items():
        print(f"{label[c]:12}{p50:10.2f}{p99:10.2f}{rate:10.2f}{sb50:13.2f}{sb99:13.2f}")
    t, r = med["tortie"], med["reference"]
    print(f"{'ratio':12}" + "".join(f"{a / b:{w}.2f}" for a, b, w in zip(
        t, r, (10, 10, 10, 13, 13), strict=True)))
    pairs = list(zip(by["tortie"], by["reference"], strict=True))
    print("ratio of each round (Tortie / the reference measured right after it), p50 / pods/s: "
          + ", ".join(f"{a.p50 / b.p50:.2f} / {a.rate / b.rate:.2f}" for a, b in pairs)
          + f"; median {statistics.median(a.p50 / b.p50 for a, b in pairs):.2f} / "
          f"{statistics.median(a.rate / b.rate for a, b in pairs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
