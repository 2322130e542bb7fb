"""Workloads never reach the control plane, with real packets in a lab.

One two-node lab for the module (flat underlay, the default pool with natOutgoing): etcd on
the fabric (192.0.2.1:2379, https, client certificates from the lab's CA), ExaBGP on every
node (its address, port 179). From a pod:

* etcd, BGP and tortie-node's metrics/health port (the lab's default, 9099), on its own node
  and on the other hosts, are dropped by default; other ports of the hosts and the fabric
  (6443, the API server's port) and every port of other pods are not;
* a policy that names the port opens it, one that allows the address on any port does not;
* ``workloadProtectedHostPorts: []`` (FelixConfiguration) turns the protection off;
* even with the path open, etcd refuses a client without a certificate;
* natOutgoing does not masquerade pod traffic to a node: the node sees the pod's address.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from agentkit.node_metrics import DEFAULT_METRICS_PORT
from lab import hosts, netns
from lab import workloads as wl
from lab.cluster import ETCD_PORT, FABRIC_IP, Lab, LabState, PodState
from lab.etcd import etcdctl_flags
from policyagent import nft_apply
from tests.support.tools import tools
from tests.support.wait import until_sync

pytestmark = [
    pytest.mark.integration,
    tools("nft", "etcd", "etcdctl"),
]

BGP = 179
NODE_METRICS = DEFAULT_METRICS_PORT  # the lab's tortie-node: its default --metrics-address
PROTECTED = f"protected host port tcp:179,2379,2380,{NODE_METRICS}"
WAIT = 20.0   # the agents' watch: a change reaches the kernel a little later


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"cp{uuid.uuid4().hex[:6]}"
    lab = Lab(name)
    try:
        lab.up(2)
        yield lab
    finally:
        wl.close_client(lab)
        lab.down()
        assert netns.list_netns(f"tl-{name}-") == []


@pytest.fixture()
def pods(lab: Lab) -> Iterator[tuple[PodState, PodState]]:
    """A client pod on node1 and a server pod on node2, in a namespace of their own."""
    ns = f"cp-{uuid.uuid4().hex[:6]}"
    wl.apply(lab, wl.namespace_doc(ns))
    a = wl.add_pod(lab, "node1", f"{ns}/client", labels={"app": "client"})
    b = wl.add_pod(lab, "node2", f"{ns}/server")
    try:
        yield a, b
    finally:
        for ref in (f"{ns}/client", f"{ns}/server"):
            lab.pod_del(ref)


def tcp(pod: PodState, dst: str, port: int) -> bool:
    """One TCP connect from the pod (a short timeout: a drop is a timeout)."""
    return wl.tcp_connect(pod, dst, port, timeout=1.0)


def becomes(check: Callable[[], object], want: bool) -> bool:
    """Whether ``check()`` gives ``want`` within WAIT (else AssertionError)."""
    until_sync(lambda: bool(check()) == want, WAIT, f"the connect to become {want}",
               interval=0.3)
    return True


def counter(st: LabState, node: str, comment: str) -> int:
    return nft_apply.read_counters("tortie", st.nodes[node].netns).get(comment, (0, 0))[0]


def gnp(name: str, selector: str, egress: list[dict[str, object]]) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                       "metadata": {"name": name},
                       "spec": {"selector": selector, "types": ["Egress"], "egress": egress}})


def test_lab_etcd_refuses_clients_without_a_certificate(lab: Lab) -> None:
    st = lab.load()
    assert st.etcd_endpoint == f"https://{FABRIC_IP}:{ETCD_PORT}"
    cfg = st.etcd_config()
    assert cfg.cert_file and cfg.key_file and str(lab.dir / "pki") in cfg.ca_cert_file

    def etcdctl(*flags: str) -> subprocess.CompletedProcess[str]:
        return netns.exec_in(st.fabric, ["etcdctl", *flags, "--command-timeout=3s", "get",
                                         "--prefix", "/", "--keys-only", "--limit=1"],
                             env={"ETCDCTL_API": "3"}, capture=True, timeout=30)

    ok = etcdctl(*etcdctl_flags(cfg))
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    no_cert = etcdctl(f"--endpoints={st.etcd_endpoint}", f"--cacert={cfg.ca_cert_file}")
    assert no_cert.returncode != 0
    plain = etcdctl(f"--endpoints=http://{FABRIC_IP}:{ETCD_PORT}")
    assert plain.returncode != 0
    # the CLI and the daemons get the client certificate from the lab
    assert st.etcd_env()["TORTIE_ETCD_CERT_FILE"] == cfg.cert_file
    p = lab.tortie(st, ["get", "nodes", "-o", "name"])
    assert p.returncode == 0 and p.stdout.split() == ["node/node1", "node/node2"], p.stderr


def test_pods_reach_no_datastore_or_bgp_port_by_default(
        lab: Lab, pods: tuple[PodState, PodState]) -> None:
    a, b = pods
    st = lab.load()
    n1, n2 = st.nodes["node1"], st.nodes["node2"]
    with wl.Server(b, tcp=[BGP, ETCD_PORT, 8080]), \
            hosts.Server(n1.netns, tcp=[8080]), hosts.Server(n2.netns, tcp=[8080]), \
            hosts.Server(st.fabric, tcp=[6443, NODE_METRICS]):
        # pod to pod: every port, control-plane port numbers included
        assert becomes(lambda: tcp(a, b.ips[0], 8080), True)
        assert tcp(a, b.ips[0], BGP) and tcp(a, b.ips[0], ETCD_PORT)
        # the hosts' other ports, and the API server's port on the fabric
        assert tcp(a, n1.address, 8080) and tcp(a, n2.address, 8080)
        assert tcp(a, FABRIC_IP, 6443)
        # the ports are open to hosts: ExaBGP and etcd accept a connection from the fabric
        assert hosts.tcp_ok(st.fabric, n2.address, BGP, connect_only=True, timeout=1.0)
        assert hosts.tcp_ok(n1.netns, FABRIC_IP, ETCD_PORT, connect_only=True, timeout=1.0)
        # ... and not to the pod: etcd, BGP on its own node and on the other
        before = counter(st, "node1", f"{PROTECTED} on this host")
        assert not tcp(a, FABRIC_IP, ETCD_PORT)
        assert not tcp(a, n1.address, BGP)
        assert not tcp(a, n2.address, BGP)
        mid = counter(st, "node1", f"{PROTECTED} on this host")
        assert mid > before
        assert counter(st, "node1", f"{PROTECTED} outside the pools v4") >= 2
        # tortie-node's metrics port: open to the fabric's host, not to the pod; on its own
        # node the drop comes before the socket lookup (tortie-node listens on 127.0.0.1)
        assert hosts.tcp_ok(n1.netns, FABRIC_IP, NODE_METRICS, connect_only=True, timeout=1.0)
        assert not tcp(a, FABRIC_IP, NODE_METRICS)
        assert not tcp(a, n1.address, NODE_METRICS)
        assert counter(st, "node1", f"{PROTECTED} on this host") > mid
        # the server pod on node2 is as blocked towards node1
        assert not tcp(b, n1.address, BGP)


def test_only_a_policy_naming_the_port_opens_it(
        lab: Lab, pods: tuple[PodState, PodState]) -> None:
    a, _ = pods
    st = lab.load()
    n2 = st.nodes["node2"]
    name = f"cp-{uuid.uuid4().hex[:6]}"
    try:
        # allowing the etcd and node addresses on any port is not explicit enough
        wl.apply(lab, gnp(name, "app == 'client'", [
            {"action": "Allow", "protocol": "TCP",
             "destination": {"nets": [f"{FABRIC_IP}/32", f"{n2.address}/32"]}},
            {"action": "Allow"}]))
        with hosts.Server(n2.netns, tcp=[8081]):
            assert becomes(lambda: tcp(a, n2.address, 8081), True)
        assert not tcp(a, n2.address, BGP) and not tcp(a, FABRIC_IP, ETCD_PORT)
        # a rule that names the ports does
        wl.apply(lab, gnp(name, "app == 'client'", [
            {"action": "Allow", "protocol": "TCP",
             "destination": {"nets": [f"{FABRIC_IP}/32", f"{n2.address}/32"],
                             "ports": [BGP, ETCD_PORT]}},
            {"action": "Allow"}]))
        assert becomes(lambda: tcp(a, n2.address, BGP), True)
        assert becomes(lambda: tcp(a, FABRIC_IP, ETCD_PORT), True)
        # the path is open, the datastore still is not: no client certificate, no service
        ca = st.etcd_config().ca_cert_file
        for flags in ([f"--endpoints={st.etcd_endpoint}", f"--cacert={ca}"],
                      [f"--endpoints=http://{FABRIC_IP}:{ETCD_PORT}"]):
            p = netns.exec_in(a.netns, ["etcdctl", *flags, "--command-timeout=3s", "get",
                                        "--prefix", "/", "--keys-only"],
                              env={"ETCDCTL_API": "3"}, capture=True, timeout=30)
            assert p.returncode != 0 and not p.stdout.strip(), p.stdout
    finally:
        wl.delete(lab, "globalnetworkpolicies", name)
    assert becomes(lambda: tcp(a, n2.address, BGP), False)


def test_felix_configuration_turns_the_protection_off(
        lab: Lab, pods: tuple[PodState, PodState]) -> None:
    a, _ = pods
    n1 = lab.load().nodes["node1"]
    wl.apply(lab, json.dumps({"apiVersion": "projectcalico.org/v3",
                              "kind": "FelixConfiguration", "metadata": {"name": "node.node1"},
                              "spec": {"workloadProtectedHostPorts": []}}))
    try:
        assert becomes(lambda: tcp(a, n1.address, BGP), True)
    finally:
        wl.delete(lab, "felixconfigurations", "node.node1")
    assert becomes(lambda: tcp(a, n1.address, BGP), False)


def test_nat_outgoing_never_masquerades_pod_traffic_to_a_node(
        lab: Lab, pods: tuple[PodState, PodState]) -> None:
    a, _ = pods
    st = lab.load()
    n1, n2 = st.nodes["node1"], st.nodes["node2"]
    nat = netns.exec_in(n1.netns, ["nft", "list", "set", "ip", "tortie-nat", "no-masq"],
                        capture=True).stdout
    assert n1.address in nat and n2.address in nat
    with hosts.Server(n2.netns, tcp=[8082]), hosts.Server(st.fabric, tcp=[8082]):
        assert becomes(lambda: tcp(a, n2.address, 8082), True)
        # node2 sees the pod itself, not node1 (one of its BGP peers)
        assert hosts.conntrack_entries(n2.netns, 8082, src=a.ips[0]) > 0
        assert hosts.conntrack_entries(n2.netns, 8082, src=n1.address) == 0
        # outside the nodes natOutgoing still masquerades: the fabric has no route to the
        # pods, so only a masqueraded connection gets its answer
        assert tcp(a, FABRIC_IP, 8082)
