"""Pods added and deleted the way a runtime does it, many at once, against a lab's nodes:
the fault campaign (bench/chaos.py) and the datastore tests share it.

Every call is the lab's ``tortie`` plugin executable, run inside the node's namespace with a
pod namespace of its own, one process per call (as containerd runs it).  A :class:`PodChurn`
records every call (:class:`Op`), every address an ADD answered, any address answered while
another running pod of the churn holds it (a duplicate), and the pods whose DEL still has to
succeed (a failed ADD is followed by DEL, as a runtime does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from agentkit.netns import setns
from lab import netns
from lab.cluster import Lab, LabState, NodeState

CNI_VERSION = "1.0.0"
CNI_TIMEOUT = 120.0  # the plugin's own deadline answers long before this
#: how long DELs of the churn's pods are retried at the end (a runtime never gives up)
DEL_RETRY = 90.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Op:
    """One CNI call and its outcome."""

    experiment: str        # what the call was part of (a label of the caller's)
    command: str
    pod: str
    node: str
    started: float
    seconds: float
    code: int = 0          # 0: success; else the CNI error code (-1: no CNI error answer)
    msg: str = ""
    ip: str = ""


@dataclass
class Pod:
    name: str        # also the K8S_POD_NAME
    node: str
    netns: str
    container_id: str
    ip: str = ""


class PodChurn:
    """CNI ADDs and DELs of fresh pods on a lab's nodes; safe to call from many threads.

    Pod namespaces are named ``tl-<lab>-p-<tag><random>`` (``lab down`` removes them in any
    case); pods are in Kubernetes namespace ``namespace``."""

    def __init__(self, lab: Lab, *, tag: str = "c", namespace: str = "chaos",
                 direct: bool = False) -> None:
        self.lab = lab
        #: the calling threads are in the node's namespace already (a runtime on the node,
        #: see :func:`join_node`): the plugin is executed directly, not by ``ip netns exec``
        self.direct = direct
        self.st: LabState = lab.load()
        self.exe = str(lab.bin_dir / "tortie")
        self.prefix = f"tl-{lab.name}-p-{tag}"
        self.namespace = namespace
        self.ops: list[Op] = []
        self.duplicates: list[tuple[str, str, str]] = []     # (ip, new pod, holder)
        self.running: dict[str, str] = {}                     # ip -> pod holding it
        self.unfinished: list[Pod] = []                       # DEL never acknowledged
        self._pending_del: list[tuple[str, Pod]] = []         # (experiment, pod) to DEL
        self._lock = threading.Lock()
        self._seq = 0

    def node(self, name: str) -> NodeState:
        return self.st.nodes[name]

    def new_pod(self, node: str) -> Pod:
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = f"c{os.getpid() % 10000}-{seq}"
        pod = Pod(name, node, f"{self.prefix}{secrets.token_hex(4)}", secrets.token_hex(16))
        netns.add_netns(pod.netns)
        return pod

    def cni(self, experiment: str, command: str, pod: Pod) -> Op:
        """Run the plugin once for ``pod``; the outcome is recorded and returned."""
        node = self.node(pod.node)
        conf = {"cniVersion": CNI_VERSION, "name": "k8s-pod-network", "type": "tortie",
                "mtu": 0, "socket": node.socket, "ipam": {"type": "tortie-ipam"}}
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": netns.netns_path(pod.netns), "CNI_IFNAME": "eth0",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};"
                        f"K8S_POD_NAME={pod.name};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}",
            "CNI_PATH": str(self.lab.bin_dir),
        }
        started = time.monotonic()
        try:
            if self.direct:
                env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
                p = subprocess.run([self.exe], env=env, input=json.dumps(conf), text=True,
                                   capture_output=True, timeout=CNI_TIMEOUT, check=False)
            else:
                p = netns.exec_in(node.netns, [self.exe], env=env, input=json.dumps(conf),
                                  capture=True, timeout=CNI_TIMEOUT)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", f"no answer within {CNI_TIMEOUT:g} s"
        op = Op(experiment, command, pod.name, pod.node, started, time.monotonic() - started)
        if rc == 0:
            if command == "ADD":
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    op.ip = json.loads(out)["ips"][0]["address"].split("/")[0]
        else:
            op.code, op.msg = -1, (out.strip() or err.strip())[-300:]
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                answer = json.loads(out)
                op.code = int(answer["code"])
                op.msg = str(answer.get("msg", ""))[:200]
                if answer.get("details"):
                    op.msg += f" ({str(answer['details'])[:300]})"
        with self._lock:
            self.ops.append(op)
        return op

    def add(self, experiment: str, node: str, pod: Pod | None = None) -> tuple[Pod, Op]:
        """ADD a new pod (``pod``: one :meth:`new_pod` made beforehand); a failed ADD is
        queued for DEL, as a runtime does."""
        pod = pod or self.new_pod(node)
        op = self.cni(experiment, "ADD", pod)
        if op.code == 0:
            pod.ip = op.ip
            with self._lock:
                holder = self.running.get(op.ip)
                if holder is not None:
                    self.duplicates.append((op.ip, pod.name, holder))
                    log(f"DUPLICATE {op.ip}: {pod.name} got it while {holder} holds it")
                self.running[op.ip] = pod.name
        else:
            with self._lock:
                self._pending_del.append((experiment, pod))
        return pod, op

    def delete(self, experiment: str, pod: Pod, remove_netns: bool = True) -> Op:
        """DEL a pod (it stops running first: the runtime tore its containers down); its
        namespace goes after a successful DEL unless ``remove_netns`` is False."""
        with self._lock:
            if pod.ip and self.running.get(pod.ip) == pod.name:
                del self.running[pod.ip]
        op = self.cni(experiment, "DEL", pod)
        if op.code == 0:
            if remove_netns:
                netns.del_netns(pod.netns)
        else:
            with self._lock:
                self._pending_del.append((experiment, pod))
        return op

    def retry_dels(self, deadline: float) -> None:
        """DEL what a fault left, until it succeeds or ``deadline`` (kubelet's persistence)."""
        while time.monotonic() < deadline:
            with self._lock:
                todo, self._pending_del = self._pending_del, []
            if not todo:
                return
            for experiment, pod in todo:
                self.delete(experiment, pod)
            with self._lock:
                if not self._pending_del:
                    return
            time.sleep(0.5)
        with self._lock:
            self.unfinished = [pod for _, pod in self._pending_del]

    def leftovers(self) -> list[str]:
        """The churn's pod namespaces still there (their DEL never succeeded)."""
        return netns.list_netns(self.prefix)

    def ipam_check(self) -> dict[str, Any]:
        """``tortie ipam check``: ``clean``, counts of what it reports, and its output."""
        p = self.lab.tortie(self.st, ["ipam", "check"])
        text = p.stdout + p.stderr
        kinds = {k: len(re.findall(rf"^\s+{k}:", text, re.M))
                 for k in ("leaked", "missing", "orphan block", "dangling handle")}
        return {"clean": p.returncode == 0, **kinds, "output": text.strip()}


def join_node(node: NodeState) -> None:
    """Move the calling thread into the node's network namespace, where a runtime on that
    node runs the plugin (for :class:`PodChurn` with ``direct=True``)."""
    setns(netns.netns_path(node.netns))
