"""One tortie-node in a network namespace of its own, with its own etcd inside it.

The namespace (``tn<id>``) gets two interfaces, each a veth whose peer stays in the same
namespace (the kernel here has no dummy links)::

    ethA  192.0.2.10/24     default route via 192.0.2.1
    ethB  198.51.100.10/24  203.0.113.0/24 via 198.51.100.1

etcd listens on the namespace's 127.0.0.1 (nothing leaves it), tortie-node runs inside with
``ip netns exec``, the tests reach it with :func:`agentkit.netns.run_in_netns` and the
``tortie`` CLI run inside.  :func:`node_ns` removes the processes (by PID), the namespace
and the files, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentkit.netns import run_in_netns
from datastore.keys import resource_key
from lab import netns
from lab.etcd import EtcdProcess
from tests.support.wait import until_sync

REPO = Path(__file__).resolve().parents[2]
ADDR_A, ADDR_B = "192.0.2.10/24", "198.51.100.10/24"
GATEWAY_A, GATEWAY_B = "192.0.2.1", "198.51.100.1"
BEHIND_B = "203.0.113.0/24"
METRICS = "127.0.0.1:9099"
START_TIMEOUT = 30.0


@dataclass
class NodeNs:
    name: str          # the namespace, also the Node resource's name
    work: Path
    etcd: EtcdProcess
    proc: subprocess.Popen[bytes] | None = None
    log_mark: int = 0

    @property
    def log(self) -> Path:
        return self.work / "tortie-node.log"

    @property
    def socket(self) -> str:
        return str(self.work / "run" / "cni.sock")

    def new_log(self) -> str:
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(self.log_mark)
            return f.read().decode(errors="replace")
        return ""

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        """Start tortie-node with ``args`` (and ``env``); wait until it says it started."""
        assert self.proc is None, "tortie-node is running already"
        cmd = ["ip", "netns", "exec", self.name, sys.executable, "-m", "node.main",
               "--node-name", self.name, "--socket", self.socket,
               "--etcd-endpoints", self.etcd.endpoint, "--etcd-timeout", "2",
               "--metrics-address", METRICS, "--log-level", "debug", *args]
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("TORTIE_", "ETCD")) and k not in ("IP",
                                                                      "IP_AUTODETECTION_METHOD")}
        full.update(PYTHONPATH=str(REPO), **(env or {}))
        self.log_mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=full, cwd=REPO,
                                         start_new_session=True)
        proc = self.proc

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"tortie-node exited ({proc.returncode}):\n"
                                     f"{self.new_log()[-3000:]}")
            return "tortie-node started" in self.new_log()
        until_sync(started, START_TIMEOUT, "tortie-node started")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def http_get(self, path: str) -> tuple[int, Any]:
        """(status, JSON body) of a GET on tortie-node's metrics address."""
        def get() -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(f"http://{METRICS}{path}", timeout=5) as r:
                    return int(r.status), json.loads(r.read())
            except urllib.error.HTTPError as e:
                return int(e.code), json.loads(e.read())
        return run_in_netns(netns.netns_path(self.name), get)

    def tortie(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The ``tortie`` CLI inside the namespace, on its etcd."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORTIE_")}
        env.update(TORTIE_ETCD_ENDPOINTS=self.etcd.endpoint, PYTHONPATH=str(REPO))
        return subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-m",
                               "ctl.main", *args], input=stdin, text=True,
                              capture_output=True, env=env, cwd=REPO, timeout=60, check=False)

    @property
    def node_key(self) -> str:
        return resource_key("nodes", self.name)

    def node_resource(self) -> dict[str, Any] | None:
        """The stored Node document (read with etcdctl: quick), None when there is none."""
        out = self.etcd.etcdctl("get", self.node_key, "--print-value-only").strip()
        if not out:
            return None
        doc: dict[str, Any] = json.loads(out)
        return doc

    def ipv4_address(self) -> str | None:
        doc = self.node_resource() or {}
        address: str | None = ((doc.get("spec") or {}).get("bgp") or {}).get("ipv4Address")
        return address

    def delete_node_resource(self) -> None:
        self.etcd.etcdctl("del", self.node_key)


@contextlib.contextmanager
def node_ns() -> Iterator[NodeNs]:
    name = f"tn{os.getpid() % 10000}{secrets.token_hex(2)}"
    work = Path(tempfile.mkdtemp(prefix="tortie-node-ns-"))
    node: NodeNs | None = None
    etcd: EtcdProcess | None = None
    try:
        netns.add_netns(name, forwarding=True)
        for dev, address in (("ethA", ADDR_A), ("ethB", ADDR_B)):
            netns.ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}p", ns=name)
            netns.ip("addr", "add", address, "dev", dev, ns=name)
            netns.ip("link", "set", f"{dev}p", "up", ns=name)
            netns.ip("link", "set", dev, "up", ns=name)
        netns.ip("route", "add", "default", "via", GATEWAY_A, "dev", "ethA", ns=name)
        netns.ip("route", "add", BEHIND_B, "via", GATEWAY_B, "dev", "ethB", ns=name)
        etcd = EtcdProcess(work / "etcd", netns=name, name=f"tortie-{name}")
        etcd.start()
        node = NodeNs(name, work, etcd)
        yield node
    finally:
        if node is not None:
            node.stop()
        if etcd is not None:
            with contextlib.suppress(ProcessLookupError):
                if etcd.is_running():
                    os.kill(etcd.pid, signal.SIGCONT)  # a test may have paused it
            etcd.stop()
        netns.del_netns(name)
        shutil.rmtree(work, ignore_errors=True)
