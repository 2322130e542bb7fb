"""Helpers of the tests that run Tortie under a real Kubernetes on the lab:
Kubernetes' own binaries (scripts/kubernetes.sh) on a lab brought up with
``tortie lab up --kubernetes``.  Used by tests/integration/test_kubernetes*.py.

:func:`kube_apiserver` is the light one: a lone real kube-apiserver on 127.0.0.1 with an etcd
of its own, no nodes, for tests that need only the API (tests/integration/test_leader_election.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab.cluster import Lab
from lab.etcd import free_port, run_etcd
from lab.kubernetes import SERVICE_CIDR, bin_dir
from lab.pki import Pki
from lab.procs import alive, stop_pid
from tests.support.lab_cli import run_tortie
from tests.support.tools import tools
from tests.support.wait import until_sync

REPO = Path(__file__).resolve().parents[2]
#: The marks of every real-Kubernetes test module (containerd and Kubernetes' binaries:
#: skipped when missing, a failure under CI=true).
K8S_MARKS = [
    pytest.mark.integration,
    tools("containerd", "kubernetes"),
    pytest.mark.timeout(900),
]


@contextlib.contextmanager
def kubernetes_lab(name: str, *up_args: str,
                   before_down: Callable[[Lab], None] | None = None) -> Iterator[Lab]:
    """``tortie lab up --name NAME --nodes 3 --kubernetes UP_ARGS...``; on the way out
    ``before_down(lab)`` (if given), ``lab.down()`` and a check that nothing is left: no
    namespace, mount, process or cgroup of the lab."""
    lab = Lab(name)
    try:
        start = time.monotonic()
        r = run_tortie("lab", "up", "--name", name, "--nodes", "3", "--kubernetes", *up_args,
                        timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        print(f"\nlab up with Kubernetes: {time.monotonic() - start:.1f}s")
        yield lab
    finally:
        st = lab.load() if lab.exists() else None
        try:
            if st is not None and before_down is not None:
                before_down(lab)
        finally:
            lab.down()
        assert netns.list_netns(f"tl-{name}-") == []
        assert f"/tortie-lab/{name}/" not in Path("/proc/self/mountinfo").read_text()
        if st is not None:
            for pid in st.k8s_pids.values():
                assert not alive(pid), pid
        assert not list(Path("/sys/fs/cgroup").glob(f"*/tortie-{name}-*"))


def kubectl(lab: Lab, *args: str, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return lab.kube(lab.load()).kubectl(list(args), input=input, timeout=timeout)


def kjson(lab: Lab, *args: str) -> Any:
    p = kubectl(lab, *args, "-o", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def eventually(check: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    """The first truthy ``check()`` within ``timeout`` (polled each second)."""
    return until_sync(check, timeout, what, interval=1)


def cali_links(lab: Lab) -> dict[str, set[str]]:
    out = {}
    for node in lab.load().nodes.values():
        text = netns.ip("-o", "link", "show", ns=node.netns)
        out[node.name] = {m.group(1) for m in re.finditer(r"^\d+: (cali[^:@]+)", text, re.M)}
    return out


def running_pods(lab: Lab, namespace: str, want: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]]:
        pods = kjson(lab, "get", "pods", "-n", namespace)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and p["status"].get("podIPs")]
        return running if len(running) == want and len(pods) == want else []
    return list(eventually(check, 240, f"{want} pods Running in {namespace}"))


def exec_in_pod(lab: Lab, namespace: str, pod: str, *cmd: str,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return kubectl(lab, "exec", "-n", namespace, pod, "--", *cmd, timeout=timeout)


# --- a lone kube-apiserver ----------------------------------------------------------------------


@dataclass(frozen=True)
class ApiServer:
    """A running kube-apiserver (``url``), its CA and files under ``dir``."""

    url: str
    dir: Path
    pki: Pki
    bin: Path
    pid: int
    etcd_endpoint: str

    def kubeconfig(self, name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for user ``cn`` (groups ``orgs``) with a client certificate; RBAC
        sees a user ``system:serviceaccount:NS:NAME`` as that service account."""
        cert = self.pki.issue(f"user-{name}", cn, orgs=orgs)
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "t", "cluster": {
                "server": self.url, "certificate-authority": str(self.pki.ca.cert)}}],
            "users": [{"name": cn, "user": {"client-certificate": str(cert.cert),
                                            "client-key": str(cert.key)}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": cn}}],
            "current-context": "t"}, indent=2) + "\n")
        return path

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin", "kubernetes-admin", ("system:masters",))

    def kubectl(self, *args: str, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "kubectl"), "--kubeconfig",
                               str(self.admin_kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def log_tail(self, lines: int = 30) -> str:
        text = (self.dir / "kube-apiserver.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def kube_apiserver(ready_timeout: float = 120.0) -> Iterator[ApiServer]:
    """A real kube-apiserver (RBAC on) on a free 127.0.0.1 port, on an etcd of its own;
    everything (processes by PID, files) removed on the way out, also on failure."""
    work = Path(tempfile.mkdtemp(prefix="tortie-apiserver-"))
    pid = 0
    try:
        with run_etcd(work) as etcd:
            pki = Pki(work / "pki", ca_name="tortie-test-ca")
            ca = pki.ensure_ca()
            serving = pki.issue("apiserver", "kube-apiserver", server=True, client=False,
                                ips=("127.0.0.1",), dns=("localhost",))
            sa = pki.key_pair("service-accounts")
            port = free_port()
            binaries = bin_dir(build=False)
            argv = [
                str(binaries / "kube-apiserver"), f"--etcd-servers={etcd.endpoint}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={port}", "--endpoint-reconciler-type=none",
                f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}", f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--authorization-mode=RBAC", "--profiling=false", "--v=1"]
            with open(work / "kube-apiserver.log", "ab") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, cwd=work, env=dict(os.environ))
            pid = proc.pid
            api = ApiServer(f"https://127.0.0.1:{port}", work, pki, binaries, pid,
                            etcd.endpoint)
            deadline = time.monotonic() + ready_timeout
            while True:
                p = api.kubectl("get", "--raw", "/readyz", timeout=10)
                if p.returncode == 0 and p.stdout.strip() == "ok":
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"kube-apiserver not ready: {p.stderr.strip()}\n"
                                         f"{api.log_tail()}")
                time.sleep(0.5)
            try:
                yield api
            finally:
                stop_pid(pid, 10.0)
                proc.wait(5)
    finally:
        if pid:
            stop_pid(pid, 10.0)
        shutil.rmtree(work, ignore_errors=True)
