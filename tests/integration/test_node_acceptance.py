"""Issue-level acceptance on a real lab: pool choice through the CNI path, 8 concurrent
runtimes x 100 ADDs on one node, and a tortie-node SIGKILLed in the middle of ADDs."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from lab import netns
from lab.cluster import Lab, LabState, NodeState
from lab.etcd import etcdctl_flags
from tests.support.lab_cli import cli

pytestmark = pytest.mark.integration

RUNTIMES = 8
ADDS_PER_RUNTIME = int(os.environ.get("TORTIE_ACCEPTANCE_ADDS", "100"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(f"a{uuid.uuid4().hex[:8]}")
    try:
        lab.up(2)
        yield lab
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{lab.name}-") == []


@dataclass
class Attachment:
    netns: str
    container: str
    pod: str = ""
    namespace: str = "default"
    ip: str = ""


def cni(lab: Lab, node: NodeState, command: str, att: Attachment,
        extra: dict | None = None) -> subprocess.CompletedProcess[str]:
    """The tortie executable alone, as a runtime runs it (no chained plugins)."""
    conf = {"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "tortie",
            "socket": node.socket, "ipam": {"type": "tortie-ipam"}, **(extra or {})}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": att.container,
           "CNI_NETNS": netns.netns_path(att.netns), "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={att.namespace};"
                       f"K8S_POD_NAME={att.pod}",
           "CNI_PATH": str(lab.bin_dir), "PATH": os.environ["PATH"]}
    return subprocess.run([str(lab.bin_dir / "tortie")], input=json.dumps(conf), env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def new_attachment(lab: Lab, pod: str | None = None, namespace: str = "default") -> Attachment:
    cid = uuid.uuid4().hex
    a = Attachment(f"tl-{lab.name}-x{cid[:10]}", cid, pod or f"p-{cid[:10]}", namespace)
    netns.add_netns(a.netns)
    return a


def allocations(lab: Lab) -> dict[str, str]:
    """ip -> handle, from the datastore (through `tortie ipam check`'s view of blocks)."""
    out = cli(lab, "get", "workloadendpoints", "-A", "-o", "json")
    assert out.returncode == 0, out.stderr
    return {w["spec"]["ipNetworks"][0].split("/")[0]: w["spec"]["containerID"]
            for w in json.loads(out.stdout)["items"]}


def node_veths(node: NodeState) -> set[str]:
    out = netns.ip("-o", "link", "show", ns=node.netns)
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()
            if line.split(": ")[1].startswith("cali")}


def test_pool_choice_through_the_cni_path(lab: Lab) -> None:
    st = lab.load()
    docs = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: dmz-pool
spec:
  cidr: 10.0.1.0/24
  natOutgoing: true
  nodeSelector: type == "dmz-node"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: other-pool
spec:
  cidr: 10.0.2.0/24
---
apiVersion: v1
kind: Namespace
metadata:
  name: dmz
  annotations:
    "cni.projectcalico.org/ipv4pools": "[\\"dmz-pool\\"]"
---
apiVersion: v1
kind: Pod
metadata:
  name: special
  namespace: dmz
  annotations:
    cni.projectcalico.org/ipv4pools: '["other-pool"]'
spec:
  containers: [{name: c, image: busybox}]
"""
    assert cli(lab, "apply", "-f", "-", stdin=docs).returncode == 0
    r = cli(lab, "label", "nodes", "node2", "type=dmz-node")
    assert r.returncode == 0, r.stderr
    node1, node2 = st.nodes["node1"], st.nodes["node2"]
    # the namespace annotation picks dmz-pool, which only serves dmz nodes
    a = new_attachment(lab, "web", "dmz")
    r = cni(lab, node2, "ADD", a)
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["ips"][0]["address"].startswith("10.0.1.")
    b = new_attachment(lab, "web2", "dmz")
    r = cni(lab, node1, "ADD", b)
    assert r.returncode != 0
    err = json.loads(r.stdout)
    assert err["code"] == 102 and "dmz-pool" in err["msg"] + err.get("details", "")
    # the pod annotation beats the namespace's
    c = new_attachment(lab, "special", "dmz")
    r = cni(lab, node1, "ADD", c)
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["ips"][0]["address"].startswith("10.0.2.")
    # no annotation: only pools whose nodeSelector matches: node1 never gets dmz-pool
    d = new_attachment(lab, "plain")
    r = cni(lab, node1, "ADD", d)
    assert r.returncode == 0
    assert not json.loads(r.stdout)["ips"][0]["address"].startswith("10.0.1.")
    for att, node in ((a, node2), (c, node1)):
        assert cni(lab, node, "DEL", att).returncode == 0
    # someone deletes d's endpoint behind Tortie's back: check finds the leak, release fixes it
    d_ip = allocations(lab)
    (leaked_ip,) = d_ip
    r = cli(lab, "delete", "workloadendpoint", "-n", "default", "node1-k8s-plain-eth0")
    assert r.returncode == 0, r.stderr
    r = cli(lab, "ipam", "check")
    assert r.returncode == 1 and f"leaked: {leaked_ip}" in r.stdout
    r = cli(lab, "ipam", "release", "--ip", leaked_ip)
    assert r.returncode == 0 and f"{leaked_ip}: released" in r.stdout
    r = cli(lab, "ipam", "check")
    assert r.returncode == 0, r.stdout
    assert "IPAM is consistent" in r.stdout


def test_eight_runtimes_hundred_adds_each_on_one_node(lab: Lab) -> None:
    node = lab.load().nodes["node1"]
    total = RUNTIMES * ADDS_PER_RUNTIME
    atts = [new_attachment(lab) for _ in range(total)]

    def runtime(k: int) -> list[str]:
        errors = []
        for att in atts[k::RUNTIMES]:
            r = cni(lab, node, "ADD", att)
            if r.returncode != 0:
                errors.append(r.stdout)
            else:
                att.ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
        return errors

    start = time.monotonic()
    with ThreadPoolExecutor(RUNTIMES) as pool:
        errors = [e for errs in pool.map(runtime, range(RUNTIMES)) for e in errs]
    elapsed = time.monotonic() - start
    assert errors == []
    ips = [a.ip for a in atts]
    assert len(set(ips)) == total, "an address was given twice"
    show = cli(lab, "ipam", "show", "--show-blocks")
    blocks = [line for line in show.stdout.splitlines() if line.strip().startswith("Block")]
    assert len(blocks) == -(-total // 64), show.stdout  # the fewest /26 blocks possible
    assert len(node_veths(node)) == total
    print(f"\n{total} ADDs by {RUNTIMES} runtimes in {elapsed:.1f}s")
    with ThreadPoolExecutor(RUNTIMES) as pool:
        dels = list(pool.map(lambda a: cni(lab, node, "DEL", a).returncode, atts))
    assert set(dels) == {0}
    for a in atts:
        netns.del_netns(a.netns)
    r = cli(lab, "ipam", "check")
    assert r.returncode == 0 and "checked 0 allocation(s) in 0 block(s)" in r.stdout, r.stdout
    assert node_veths(node) == set()


def test_node_killed_in_the_middle_of_adds_leaks_nothing(lab: Lab) -> None:
    st: LabState = lab.load()
    node = st.nodes["node1"]
    atts = [new_attachment(lab) for _ in range(40)]
    done: dict[str, bool] = {}

    def runtime(k: int) -> None:
        for att in atts[k::4]:
            r = cni(lab, node, "ADD", att)
            done[att.container] = r.returncode == 0
            if r.returncode == 0:
                att.ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]

    threads = [threading.Thread(target=runtime, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    while sum(done.values()) < 5:  # well into the ADDs
        time.sleep(0.01)
    os.kill(node.pid, signal.SIGKILL)
    for t in threads:
        t.join()
    succeeded = [a for a in atts if done.get(a.container)]
    failed = [a for a in atts if not done.get(a.container)]
    assert succeeded and failed, "the kill should land in the middle of the ADDs"
    node = lab.restart_node("node1", signal.SIGKILL)
    # what a crash between "veth made" and "endpoint written" leaves, made sure of: a cali
    # veth whose peer is in a pod's namespace (a namespace of the lab's, so `down` removes it)
    stray_pod = f"tl-{lab.name}-p-stray"
    netns.add_netns(stray_pod)
    netns.ip("link", "add", "calideadbeef001", "type", "veth", "peer", "name", "eth0",
             "netns", stray_pod, ns=node.netns)
    # ... and what a crash between "handle written" and "block written" leaves
    block = str(ipaddress.ip_network(f"{succeeded[0].ip}/26", strict=False))
    dangling = json.dumps({"handle": "tortie.deadbeef", "blocks": {block: 1}})
    netns.run("ip", "netns", "exec", st.fabric, "etcdctl", *etcdctl_flags(st.etcd_config()),
              "put", "/tortie/v3/ipam/handles/tortie.deadbeef", dangling)
    # the runtime garbage-collects: every attachment it does not know to be valid goes
    valid = [{"containerID": a.container, "ifname": "eth0"} for a in succeeded]
    r = cni(lab, node, "GC", atts[0], extra={"cni.dev/valid-attachments": valid})
    assert r.returncode == 0, r.stdout
    held = allocations(lab)
    assert sorted(held) == sorted(a.ip for a in succeeded)
    assert len(node_veths(node)) == len(succeeded)
    r = cli(lab, "ipam", "check")
    assert r.returncode == 0, r.stdout
    assert f"checked {len(succeeded)} allocation(s)" in r.stdout
    print(f"\nkilled after {len(succeeded)} of {len(atts)} ADDs; GC left exactly those")
    for a in atts:
        netns.del_netns(a.netns)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
