"""Pod networking through a real container runtime: the lab's runtime mode, where pods are pod
sandboxes of Debian's containerd (runc) made through its CRI exactly as kubelet makes them,
and containerd runs Tortie from the node's conflist with kubelet's CNI_ARGS."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.handler import handle_id
from ipam.keys import handle_key
from lab import containerd, netns
from lab.cluster import Lab, LabState
from lab.cri import SANDBOX_READY, RuntimeClient
from lab.etcd import etcdctl_flags
from tests.support.lab_cli import cli, run_tortie, weps
from tests.support.tools import tools

pytestmark = [
    pytest.mark.integration,
    tools("containerd"),  # the runtime mode
]

DMZ_DOCS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: dmz-pool
spec:
  cidr: 10.0.1.0/24
  natOutgoing: true
---
apiVersion: v1
kind: Namespace
metadata:
  name: dmz
  annotations:
    cni.projectcalico.org/ipv4pools: '["dmz-pool"]'
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A one-node lab in runtime mode, brought up the way a user does it."""
    name = f"r{uuid.uuid4().hex[:8]}"
    lab = Lab(name)
    try:
        start = time.monotonic()
        r = run_tortie("lab", "up", "--name", name, "--nodes", "1", "--runtime", "containerd")
        assert r.returncode == 0, r.stderr
        assert "containerd ready" in r.stderr, r.stderr
        print(f"\nlab up with containerd: {time.monotonic() - start:.1f}s "
              f"({_line(r.stderr, 'containerd ready')})")
        yield lab
    finally:
        lab.down()  # sandboxes via CRI, containerd by PID, mounts, namespaces, state dir
        assert netns.list_netns(f"tl-{name}-") == []
        assert f"/tortie-lab/{name}/" not in Path("/proc/self/mountinfo").read_text()


def _line(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line), "")


def etcd_get(st: LabState, key: str) -> str:
    p = netns.exec_in(st.fabric, ["etcdctl", *etcdctl_flags(st.etcd_config()), "get", key,
                                  "--print-value-only"], capture=True, timeout=30,
                      env={"ETCDCTL_API": "3"})
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def cali_links(st: LabState) -> set[str]:
    out = netns.ip("-o", "link", "show", ns=st.nodes["node1"].netns)
    return {m.group(1) for m in re.finditer(r"^\d+: (cali[^:@]+)", out, re.M)}


def cni_requests(st: LabState, command: str, container: str) -> list[str]:
    log = Path(st.nodes["node1"].log).read_text(errors="replace")
    return [line for line in log.splitlines() if '"cni request"' in line
            and f"cmd={command} " in line and f"container={container[:12]} " in line]


def test_sandbox_in_annotated_namespace_gets_dmz_address_and_leaves_nothing(lab: Lab) -> None:
    st = lab.load()
    r = cli(lab, "apply", "-f", "-", stdin=DMZ_DOCS)
    assert r.returncode == 0, r.stderr
    socket = containerd.socket_of(lab.dir / "node1" / "containerd")
    with RuntimeClient(socket) as cri:
        version = cri.version()
        assert version.runtime_name == "containerd" and version.runtime_api_version == "v1"
        uid = str(uuid.uuid4())
        t0 = time.monotonic()
        sid = cri.run_pod_sandbox("web", "dmz", uid)  # what kubelet sends for dmz/web
        t_create = time.monotonic() - t0
        status = cri.pod_sandbox_status(sid, verbose=True)
        assert status.status.state == SANDBOX_READY
        assert status.status.metadata.uid == uid
        ip = status.status.network.ip
        assert ip.startswith("10.0.1."), f"{ip} is not from dmz-pool"
        # Tortie saw the pod's identity through containerd's CNI_ARGS
        (wep,) = weps(lab, "dmz")
        assert wep["spec"]["pod"] == "web" and wep["spec"]["containerID"] == sid
        assert wep["spec"]["ipNetworks"] == [f"{ip}/32"]
        host_veth = wep["spec"]["interfaceName"]
        assert host_veth in cali_links(st)
        key = handle_key(handle_id(sid))
        assert etcd_get(st, key), f"no IPAM handle {key}"
        pod_netns = Path(cri.sandbox_netns(sid)).name
        assert f"inet {ip}/32" in netns.ip("addr", "show", "eth0", ns=pod_netns)

        t0 = time.monotonic()
        cri.stop_pod_sandbox(sid)
        t_stop = time.monotonic() - t0
        t0 = time.monotonic()
        cri.remove_pod_sandbox(sid)
        t_remove = time.monotonic() - t0
        assert sid not in {sb.id for sb in cri.list_pod_sandbox()}
    dels = cni_requests(st, "DEL", sid)
    assert len(dels) >= 2, dels  # containerd tears the network down at stop and at remove
    assert all("result=ok" in line for line in dels), dels
    assert etcd_get(st, key) == ""
    assert weps(lab, "dmz") == []
    assert host_veth not in cali_links(st)
    assert not netns.netns_exists(pod_netns)
    r = cli(lab, "ipam", "check")
    assert r.returncode == 0 and "checked 0 allocation(s)" in r.stdout, r.stdout
    print(f"\nsandbox create {t_create * 1000:.0f} ms, stop {t_stop * 1000:.0f} ms, "
          f"remove {t_remove * 1000:.0f} ms; DEL called {len(dels)}x")


def test_two_sandboxes_on_a_node_ping_each_other(lab: Lab) -> None:
    name = lab.name
    made: list[str] = []
    try:
        r = run_tortie("lab", "pod", "add", "--name", name, "node1", "shop/a")  # as a user would
        assert r.returncode == 0, r.stderr
        made.append("shop/a")
        lab.pod_add("node1", "shop/b")
        made.append("shop/b")
        st = lab.load()
        a, b = st.pods["shop/a"], st.pods["shop/b"]
        assert a.netns.startswith("cni-")  # the sandbox's namespace, made by containerd
        assert {w["spec"]["containerID"] for w in weps(lab, "shop")} == {a.container_id,
                                                                         b.container_id}
        r = run_tortie("lab", "exec", "--name", name, "shop/a", "--", "ping", "-c", "2", "-W", "2",
                   b.ips[0])
        assert r.returncode == 0, r.stdout + r.stderr
        p = netns.exec_in(b.netns, ["ping", "-c", "1", "-W", "2", a.ips[0]], capture=True)
        assert p.returncode == 0, p.stdout + p.stderr
        r = run_tortie("lab", "pod", "del", "--name", name, "shop/a")
        assert r.returncode == 0, r.stderr
        made.remove("shop/a")
        lab.pod_del("shop/b")
        made.remove("shop/b")
        with RuntimeClient(containerd.socket_of(lab.dir / "node1" / "containerd")) as cri:
            assert cri.list_pod_sandbox() == []
        assert cali_links(lab.load()) == set()
        assert weps(lab, "shop") == []
    finally:
        for ref in made:
            lab.pod_del(ref)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _processes_of(socket: str) -> list[int]:
    """Shims started by the containerd on ``socket``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if socket.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_containerd_killed_with_a_sandbox_then_down_leaves_nothing() -> None:
    lab = Lab(f"k{uuid.uuid4().hex[:8]}")
    try:
        lab.up(1, runtime="containerd")
        pod = lab.pod_add("node1", "shop/x")
        st = lab.load()
        base = lab.dir / "node1" / "containerd"
        (init_pid,) = [int(f.read_text()) for f in base.glob("state/*/*/*/init.pid")]
        shims = _processes_of(containerd.socket_of(base))
        assert shims and _running(init_pid)
        os.kill(st.nodes["node1"].containerd_pid, signal.SIGKILL)  # containerd crashes
    finally:
        lab.down()
    assert not any(_running(pid) for pid in [init_pid, *shims])
    assert f"/tortie-lab/{lab.name}/" not in Path("/proc/self/mountinfo").read_text()
    assert not netns.netns_exists(pod.netns)
    assert not list(containerd.CNI_CACHE.glob(f"results/*{pod.container_id}*"))
    assert not list(containerd.CGROUP_ROOT.glob(f"*/k8s.io/{pod.container_id}"))
    assert not lab.dir.exists()


def test_dual_stack_sandboxes_get_both_families_and_ping_over_ipv6() -> None:
    """``--runtime containerd --dual-stack``: the node's conflist asks for both families, so
    containerd's sandboxes get an IPv4 and an IPv6 address (its CRI status: primary and
    additional IP) and reach each other over IPv6."""
    lab = Lab(f"k{uuid.uuid4().hex[:8]}")
    try:
        st = lab.up(1, runtime="containerd", dual_stack=True)
        a, b = lab.pod_add("node1", "shop/a"), lab.pod_add("node1", "shop/b")
        for pod in (a, b):
            assert [ipaddress.ip_address(ip).version for ip in pod.ips] == [4, 6], pod.ips
            assert ipaddress.ip_address(pod.ips[0]) in ipaddress.ip_network(st.pool_cidr)
            assert ipaddress.ip_address(pod.ips[1]) in ipaddress.ip_network(st.pool6_cidr)
        p = netns.exec_in(a.netns, ["ping", "-6", "-c", "1", "-W", "2", b.ips[1]], capture=True)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        lab.down()
    assert not lab.dir.exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
