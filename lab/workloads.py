"""Workloads in a lab: pods with labels and ports, servers inside pods, probes with real packets.

What a Kubernetes cluster does around a pod, done by hand for the lab:

* :func:`add_pod` writes the Pod (labels, named container ports, service account) to the
  datastore before the CNI ADD, the way the API server has it before kubelet runs the sandbox
  (the CNI handler reads it to label the WorkloadEndpoint);
* :func:`relabel_pod` changes a running pod's labels on the Pod and on its WorkloadEndpoint
  (what Calico's kube-controllers do when a Pod's labels change);
* :class:`Server` runs a small Python server (TCP accept-and-close, UDP that records what it
  receives, raw SCTP receiver) in a pod's network namespace, stopped by PID;
* :func:`ping`, :func:`tcp_connect`, :func:`udp_send`, :func:`sctp_init` send real packets
  from inside a pod.

Every process runs under ``ip netns exec`` (which execs, so the PID is the program's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cni.handler import workload_endpoint_name
from lab.cluster import POD_IFNAME, REPO, Lab, LabError, PodState, _split_ref

PY = [sys.executable, "-I", "-S"]  # isolated, no site: starts in ~20 ms


_CLIENT = r"""
import asyncio, json, sys
from datastore.documents import parse_text
from datastore.etcd_config import EtcdConfig
from datastore.kinds import by_cli_name
from datastore.resources import Resources, to_resource
from datastore.store import Store

async def handle(res, req):
    op = req["op"]
    if op == "apply":
        for doc in parse_text(req["text"], "<test>").documents:
            data = doc.data
            if req.get("namespace"):
                data.setdefault("metadata", {}).setdefault("namespace", req["namespace"])
            info, obj = to_resource(data)
            await res.apply(info, obj)
        return None
    info = by_cli_name(req["kind"])
    if op == "delete":
        await res.delete(info, req["name"], req.get("namespace"))
        return None
    if op == "get":
        return (await res.get(info, req["name"], req.get("namespace"))).dump()
    raise ValueError(op)

async def main():
    async with Store(EtcdConfig.load()) as store:  # TORTIE_ETCD_* from the lab
        res = Resources(store)
        print(json.dumps({"ok": True}), flush=True)
        for line in sys.stdin:
            try:
                out = {"ok": True, "value": await handle(res, json.loads(line))}
            except Exception as e:
                out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(out), flush=True)

asyncio.run(main())
"""

_clients: dict[str, subprocess.Popen[str]] = {}


def _request(lab: Lab, req: dict[str, object]) -> object:
    """One request to the lab's datastore through a client process kept running in the
    fabric namespace (``tortie`` as a process per call costs ~1 s of imports)."""
    proc = _clients.get(lab.name)
    if proc is None or proc.poll() is not None:
        st = lab.load()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORTIE_ETCD_")}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", st.fabric, sys.executable, "-c", _CLIENT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
            env={**env, **st.etcd_env()})
        assert proc.stdout is not None
        if not json.loads(proc.stdout.readline() or '{"ok": false}')["ok"]:
            raise LabError("the lab's datastore client did not start")
        _clients[lab.name] = proc
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    answer = json.loads(proc.stdout.readline())
    if not answer["ok"]:
        raise LabError(f"{req['op']} failed: {answer['error']}")
    return answer.get("value")


def close_client(lab: Lab) -> None:
    """Stop the lab's datastore client (by PID), if one runs."""
    proc = _clients.pop(lab.name, None)
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def apply(lab: Lab, doc: str, namespace: str | None = None) -> None:
    """Create or replace the resources of ``doc`` (YAML or JSON, as ``tortie apply``)."""
    _request(lab, {"op": "apply", "text": doc, "namespace": namespace})


def delete(lab: Lab, kind: str, name: str, namespace: str | None = None) -> None:
    _request(lab, {"op": "delete", "kind": kind, "name": name, "namespace": namespace})


def get(lab: Lab, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    value = _request(lab, {"op": "get", "kind": kind, "name": name, "namespace": namespace})
    assert isinstance(value, dict)
    return value


def namespace_doc(name: str, labels: Mapping[str, str] | None = None) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": dict(labels or {})}})


def pod_doc(namespace: str, name: str, node: str, labels: Mapping[str, str] | None = None,
            ports: Iterable[tuple[str, int, str]] = (), service_account: str = "default"
            ) -> str:
    """A Pod with one container; ``ports``: (name, containerPort, protocol)."""
    container = {"name": "c", "image": "none",
                 "ports": [{"name": n, "containerPort": p, "protocol": proto}
                           for n, p, proto in ports]}
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"nodeName": node, "serviceAccountName": service_account,
                 "containers": [container]}})


def add_pod(lab: Lab, node: str, ref: str, labels: Mapping[str, str] | None = None,
            ports: Iterable[tuple[str, int, str]] = (), service_account: str = "default"
            ) -> PodState:
    """Write the Pod, then network it (CNI ADD) on ``node``."""
    namespace, name = _split_ref(ref)
    apply(lab, pod_doc(namespace, name, node, labels, ports, service_account))
    return lab.pod_add(node, ref)


def endpoint_name(pod: PodState) -> str:
    return workload_endpoint_name(pod.node, "k8s", pod.name, POD_IFNAME)


def relabel_pod(lab: Lab, pod: PodState, labels: Mapping[str, str]) -> None:
    """Set the pod's labels (user labels only) on its Pod and its WorkloadEndpoint."""
    apply(lab, pod_doc(pod.namespace, pod.name, pod.node, labels))
    wep = get(lab, "workloadendpoints", endpoint_name(pod), pod.namespace)
    system = {k: v for k, v in (wep["metadata"].get("labels") or {}).items()
              if k.startswith("projectcalico.org/")}
    wep["metadata"]["labels"] = {**dict(labels), **system}
    wep["metadata"].pop("resourceVersion", None)
    apply(lab, json.dumps(wep))


# --- servers --------------------------------------------------------------------------------

_SERVER = r"""
import selectors, socket, sys, json
tcp, udp, raw = (json.loads(a) for a in sys.argv[1:4])
log = open(sys.argv[4], "a", buffering=1)
sel = selectors.DefaultSelector()
def bind(fam, kind, port):
    s = socket.socket(fam, kind); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    return s
for fam in (socket.AF_INET, socket.AF_INET6):  # IPv4 and IPv6, on separate sockets
    for port in tcp:
        s = bind(fam, socket.SOCK_STREAM, port); s.listen(64)
        sel.register(s, selectors.EVENT_READ, ("tcp", port))
    for port in udp:
        sel.register(bind(fam, socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", port))
for proto in raw:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    sel.register(s, selectors.EVENT_READ, ("raw", proto))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        kind, port = key.data
        if kind == "tcp":
            conn, peer = key.fileobj.accept(); conn.close()
            log.write(f"tcp {port} {peer[0]}\n")
        elif kind == "udp":
            data, peer = key.fileobj.recvfrom(2048)
            log.write(f"udp {port} {peer[0]} {data.decode(errors='replace')}\n")
        else:
            data, peer = key.fileobj.recvfrom(65535)
            ihl = (data[0] & 15) * 4
            dport = int.from_bytes(data[ihl + 2:ihl + 4], "big")
            log.write(f"raw {port} {peer[0]} {dport}\n")
"""


class Server:
    """A server in a pod: ``tcp`` ports (accept and close), ``udp`` ports (both on IPv4 and
    IPv6) and ``raw`` IPv4 protocols (what arrives is recorded in :attr:`received`). Use as a
    context manager."""

    def __init__(self, pod: PodState, tcp: Iterable[int] = (), udp: Iterable[int] = (),
                 raw: Iterable[int] = (), log_dir: str | Path = "/tmp") -> None:
        self.pod = pod
        self.log = Path(log_dir) / f"tortie-server-{pod.netns}-{os.getpid()}-{id(self)}.log"
        self.args = [json.dumps(list(tcp)), json.dumps(list(udp)), json.dumps(list(raw))]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        self.log.write_text("")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.pod.netns, *PY, "-c", _SERVER, *self.args,
             str(self.log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise LabError(f"server in {self.pod.namespace}/{self.pod.name} failed: {err}")
        return self

    def received(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.log.unlink()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- probes ---------------------------------------------------------------------------------

def _run(netns: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          timeout=timeout + 10, check=False)


def ping(pod: PodState, ip: str, timeout: float = 1.0, count: int = 1) -> bool:
    """One ICMP echo from ``pod`` to ``ip``: answered or not."""
    wait = str(max(1, round(timeout)))
    return _run(pod.netns, ["ping", "-n", "-q", "-c", str(count), "-W", wait, ip],
                timeout * count).returncode == 0


_CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print(type(e).__name__, e); sys.exit(1)
"""


def tcp_connect(pod: PodState, ip: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connection from ``pod`` to ``ip:port`` (IPv4 or IPv6): established or not."""
    return _run(pod.netns, [*PY, "-c", _CONNECT, ip, str(port), str(timeout)],
                timeout).returncode == 0


_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1]:
    s.bind((sys.argv[1], 0))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


def udp_send(pod: PodState, ip: str, port: int, payload: str, source: str = "") -> None:
    """One UDP datagram from ``pod`` (from ``source`` if given: it must be on the pod)."""
    p = _run(pod.netns, [*PY, "-c", _UDP, source, ip, str(port), payload], 5)
    if p.returncode != 0:
        raise LabError(f"udp send failed: {p.stderr.strip()}")


_SCTP = r"""
import socket, struct, sys
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
sport, dport = 40000, int(sys.argv[2])
init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234567, 65535, 1, 1, 1)
pkt = bytearray(struct.pack("!HHII", sport, dport, 0, 0) + init)
pkt[8:12] = struct.pack("<I", crc32c(bytes(pkt)))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.sendto(bytes(pkt), (sys.argv[1], 0))
"""


def sctp_init(pod: PodState, ip: str, port: int) -> None:
    """One SCTP INIT packet (well-formed, built by hand on a raw socket: this kernel may have
    no SCTP module) from ``pod`` to ``ip:port``."""
    p = _run(pod.netns, [*PY, "-c", _SCTP, ip, str(port)], 5)
    if p.returncode != 0:
        raise LabError(f"sctp send failed: {p.stderr.strip()}")


def eventually(check: Callable[[], object], want: bool = True, timeout: float = 10.0,
               interval: float = 0.1) -> bool:
    """Poll ``check()`` until it returns ``want`` (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if bool(check()) == want:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
