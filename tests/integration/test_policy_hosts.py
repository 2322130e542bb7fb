"""Host endpoints with real packets in a real lab: seeds 001 (NodePort + preDNAT), 002 (host
endpoints, failsafe, doNotTrack) and 003 (automatic host endpoints, master/worker policies).

One lab for the module: etcd, two nodes running tortie-node, pods made through the CNI
chain, and an outside host on the fabric (``192.0.2.200``, outside 10.0.0.0/8, and
``10.200.0.200``, inside it; see :mod:`lab.hosts`). Resources go in with the real CLI
(``tortie apply`` / ``create`` / ``delete`` / ``label``).

Who programs nftables: tortie-node's policy agent when it has one (``agent`` mode: every
change is followed by a wait until each node's table has exactly the chains the datastore
calls for), else the test does the agent's job itself after every change (``direct`` mode:
:func:`lab.hosts.program_nodes` reads etcd, runs PolicyCalculator, resolves host endpoints
against the node's interfaces, renders and applies in the node's namespace). Force one with
``TORTIE_TEST_POLICY=agent|direct`` (direct mode next to a running agent races it).

Seed examples with placeholders are filled with lab values; each fill is spelled out where it
is made.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import policyagent.agent
from lab import hosts
from lab.cluster import FABRIC_IP, Lab, LabState, NodeState, PodState
from lab.hosts import LINK_NET, OUTSIDE_IP, OUTSIDE_UNDERLAY_IP, NodePort, Server
from lab.seeds import Example
from tests.support.tools import tools

pytestmark = [
    pytest.mark.integration,
    tools("nft", "etcd"),
]


LINK_NODE_IP = str(LINK_NET.network_address + 1)   # node1's eth1 (lab.hosts.add_direct_link)


def _agent_mode() -> bool:
    forced = os.environ.get("TORTIE_TEST_POLICY", "auto")
    if forced in ("agent", "direct"):
        return forced == "agent"
    return "placeholder" not in (policyagent.agent.__doc__ or "")


def seed(s: str, first: int, last: int) -> str:
    return Example(s, first, last, "applies").text()


@dataclass
class Env:
    lab: Lab
    st: LabState
    outside: str
    agent: bool

    @property
    def n1(self) -> NodeState:
        return self.st.nodes["node1"]

    @property
    def n2(self) -> NodeState:
        return self.st.nodes["node2"]

    def pod(self, ref: str) -> PodState:
        return self.st.pods[ref]

    def tortie(self, *args: str, input: str | None = None, ok: bool = True) -> str:
        p = self.lab.tortie(self.st, list(args), input=input)
        if ok:
            assert p.returncode == 0, f"tortie {' '.join(args)}: {p.stderr}"
        return p.stdout + p.stderr

    def sync(self, wait: bool = True) -> None:
        """Direct mode: program every node now. Agent mode: with ``wait``, wait until every
        node's table has exactly the chains the datastore calls for (else the probes'
        retries cover the agent's delay)."""
        if not self.agent:
            hosts.program_nodes(self.lab)
        elif wait:
            hosts.wait_programmed(self.lab)

    def apply(self, text: str, verb: str = "apply", *, wait: bool = False) -> None:
        self.tortie(verb, "-f", "-", input=text)
        self.sync(wait)

    def delete(self, kind: str, *names: str) -> None:
        self.tortie("delete", kind, *names)
        self.sync(wait=False)

    def reset(self) -> None:
        """Remove every host endpoint, global policy and Felix configuration."""
        want = hosts.reset_policy(self.lab)
        if self.agent:
            hosts.wait_programmed(self.lab, want_chains=want)
        else:
            hosts.program_nodes(self.lab)

    # probes: "eventually" because a real agent takes a moment after a change
    def tcp(self, ns: str, dst: str, port: int, src: str | None = None, *,
            want: bool = True, **kw: bool) -> bool:
        return hosts.eventually(lambda: hosts.tcp_ok(ns, dst, port, src=src, **kw),
                                want) == want

    def udp(self, ns: str, dst: str, port: int, src: str | None = None, *,
            want: bool = True) -> bool:
        return hosts.eventually(lambda: hosts.udp_ok(ns, dst, port, src=src), want) == want


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lab = Lab(f"h{uuid.uuid4().hex[:8]}")
    try:
        lab.up(2)
        outside_host = hosts.add_outside_host(lab)
        outside = outside_host.netns
        hosts.add_direct_link(lab, "node1", outside_host)   # node1 eth1 198.51.100.1
        lab.pod_add("node1", "web/nginx")
        lab.pod_add("node2", "tools/busybox")
        e = Env(lab, lab.load(), outside, _agent_mode())
        e.sync()
        yield e
    finally:
        lab.down()


@pytest.fixture
def clean(env: Env) -> Iterator[Env]:
    """The module's lab, left without host endpoints, global policies or Felix configuration
    (whatever the test did, and even when it failed)."""
    try:
        yield env
    finally:
        env.reset()


# --- seed 001: a NodePort open only to 10.0.0.0/8 -------------------------------------------

# Lines 181-189 are rejected as written: the spec is indented under metadata. Filled: line 187
# " spec:" moved to column 0 (node1 and eth0 are the lab's own names already).
def _seed1_hep() -> str:
    text = seed("001", 181, 189)
    assert "\n spec:\n" in text
    return text.replace("\n spec:\n", "\nspec:\n")


def test_seed_001_prednat_nodeport_only_from_10_8(clean: Env) -> None:
    e = clean
    out, n1 = e.outside, e.n1
    pod = e.pod("web/nginx")
    with Server(pod.netns, tcp=[80]), Server(n1.netns, tcp=[22, 8080]), \
            NodePort(n1.netns, n1.address, 30080, pod.ips[0], 80):
        # no host endpoint: the NodePort and the host are open to everyone
        for src in (OUTSIDE_UNDERLAY_IP, OUTSIDE_IP):
            assert e.tcp(out, n1.address, 30080, src)
            assert e.tcp(out, n1.address, 8080, src)

        rejected = e.tortie("apply", "-f", "-", input=seed("001", 181, 189), ok=False)
        assert "unknown field 'spec'" in rejected
        # bar-external-consumer + drop-other-ingress, and the host endpoint
        e.apply(seed("001", 215, 241) + "---\n" + _seed1_hep(), wait=True)
        # As written, the policies select has(host-endpoint) but the endpoint is only labelled
        # role=ingress: no policy applies to it. Host traffic is dropped (no policy, no
        # profile) except failsafe; forwarded traffic to the pod is not host endpoint policy's.
        assert e.tcp(out, n1.address, 8080, OUTSIDE_IP, want=False)
        assert e.tcp(out, n1.address, 22)
        assert e.tcp(out, n1.address, 30080, OUTSIDE_UNDERLAY_IP)

        # give the endpoint the label the policies select: the NodePort only from 10/8
        e.tortie("label", "hostendpoints", "node1", "host-endpoint=ingress")
        e.sync(wait=True)
        assert e.tcp(out, n1.address, 30080, OUTSIDE_UNDERLAY_IP, want=False)
        assert e.tcp(out, n1.address, 30080, OUTSIDE_IP)
        # preDNAT policy also covers the host itself; its allow skips normal policy
        assert e.tcp(out, n1.address, 8080, OUTSIDE_UNDERLAY_IP, want=False)
        assert e.tcp(out, n1.address, 8080, OUTSIDE_IP)
        # failsafe ports come before preDNAT policy
        assert e.tcp(out, n1.address, 22, OUTSIDE_UNDERLAY_IP)

        e.delete("globalnetworkpolicies", "drop-other-ingress")
        assert e.tcp(out, n1.address, 30080, OUTSIDE_UNDERLAY_IP)   # no preDNAT deny left
        assert e.tcp(out, n1.address, 8080, OUTSIDE_UNDERLAY_IP, want=False)  # normal: drop


def test_forwarded_traffic_and_apply_on_forward(clean: Env) -> None:
    """Forwarded traffic to a local pod passes a host endpoint with no applyOnForward policy;
    an applyOnForward policy polices it (after DNAT) as well as traffic to the host."""
    e = clean
    out, n1 = e.outside, e.n1
    pod = e.pod("web/nginx")
    with Server(pod.netns, tcp=[80]), Server(n1.netns, tcp=[8080]), \
            NodePort(n1.netns, n1.address, 30081, pod.ips[0], 80):
        e.apply(_seed1_hep(), wait=True)
        assert e.tcp(out, n1.address, 8080, OUTSIDE_IP, want=False)
        assert e.tcp(out, n1.address, 30081, OUTSIDE_UNDERLAY_IP)
        e.apply(f"""apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: from-10-200
spec:
  selector: role == 'ingress'
  applyOnForward: true
  ingress:
  - action: Allow
    source:
      nets: [{hosts.OUTSIDE_NET}]
""")
        assert e.tcp(out, n1.address, 30081, OUTSIDE_UNDERLAY_IP, want=False)
        assert e.tcp(out, n1.address, 30081, OUTSIDE_IP)
        assert e.tcp(out, n1.address, 8080, OUTSIDE_IP)
        assert e.tcp(out, n1.address, 8080, OUTSIDE_UNDERLAY_IP, want=False)


# --- seed 003: automatic host endpoints ------------------------------------------------------

# The auto host endpoint of lines 92-113, for a lab node: master -> node1 (or node2),
# 192.168.2.10 -> the node's address, plus the labels of the article's `kubectl label`
# steps (kubernetes-host on all, kubernetes-worker on workers, which drop the master label).
def _auto_hep(node: NodeState, master: bool) -> str:
    text = seed("003", 92, 113)
    for old, new in (("hostname: master", f"hostname: {node.name}"),
                     ("name: master-auto-hep", f"name: {node.name}-auto-hep"),
                     ("- 192.168.2.10", f"- {node.address}"),
                     ("node: master", f"node: {node.name}")):
        assert old in text
        text = text.replace(old, new)
    extra = '    kubernetes-host: ""\n'
    if not master:
        text = text.replace('    node-role.kubernetes.io/master: ""\n', "")
        extra += '    kubernetes-worker: ""\n'
    return text.replace("  labels:\n", "  labels:\n" + extra, 1)


def test_seed_003_auto_host_endpoints(clean: Env) -> None:
    e = clean
    out, n1, n2 = e.outside, e.n1, e.n2
    busybox = e.pod("tools/busybox").netns  # a pod on the worker
    with Server(n1.netns, tcp=[22, 6443, 8888, 10250], udp=[53]), \
            Server(n2.netns, tcp=[22, 6443, 10250]):
        assert e.tcp(out, n1.address, 8888) and e.tcp(busybox, n1.address, 8888)

        # the auto host endpoints, ingress-k8s-masters and ingress-k8s-workers
        e.apply("---\n".join([_auto_hep(n1, master=True), _auto_hep(n2, master=False),
                              seed("003", 132, 169), seed("003", 177, 204)]), wait=True)
        # the server on the master: blocked from outside and from pods
        for src in (OUTSIDE_UNDERLAY_IP, OUTSIDE_IP):
            assert e.tcp(out, n1.address, 8888, src, want=False)
        assert e.tcp(busybox, n1.address, 8888, want=False)
        assert e.tcp(n2.netns, n1.address, 8888, want=False)
        # the rules as written: API server on masters, kubelet only from masters, DNS
        assert e.tcp(out, n1.address, 6443)
        assert e.tcp(n1.netns, n2.address, 10250)
        assert e.tcp(out, n2.address, 10250, want=False)
        assert e.tcp(n2.netns, n1.address, 10250, want=False)
        assert e.udp(out, n1.address, 53)
        assert e.tcp(out, n1.address, 22) and e.tcp(out, n2.address, 22)  # failsafe SSH

        e.apply(seed("003", 229, 239))   # global-access
        assert e.tcp(out, n1.address, 8888)
        assert e.tcp(busybox, n1.address, 8888)

        e.delete("globalnetworkpolicies", "global-access")
        # internal-access: only from has(kubernetes-host); programmed on every node before
        # the probes, so a slow agent cannot leave global-access in force meanwhile
        e.apply(seed("003", 277, 289), wait=True)
        for src in (OUTSIDE_UNDERLAY_IP, OUTSIDE_IP):
            assert e.tcp(out, n1.address, 8888, src, want=False)
        assert e.tcp(n2.netns, n1.address, 8888)
        # in the article the pod gets in too: natOutgoing masquerades it to its node's
        # address, a kubernetes-host's expectedIP. Tortie never masquerades pod traffic to a
        # node (it would arrive from a BGP peer's address), so the pod arrives as
        # itself, which this policy does not admit
        assert e.tcp(busybox, n1.address, 8888, want=False)

        # with the failsafe narrowed to SSH, 6443 is open on the master by its rule only
        e.apply("""apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  failsafeInboundHostPorts:
  - protocol: TCP
    port: 22
""")
        assert e.tcp(out, n2.address, 6443, want=False)
        assert e.tcp(out, n1.address, 6443)
        assert e.tcp(out, n1.address, 22) and e.tcp(out, n2.address, 22)


# --- seed 002: host interfaces, failsafe, untracked policy --------------------------------

# Lines 168-179 filled: <name of endpoint> -> node1-eth0, <node name or hostname> -> node1,
# <list of profile IDs> -> (none), expectedIPs 10.0.0.1 -> 192.0.2.11 (node1's eth0).
def _seed2_hep(first: int, last: int, ip: str) -> str:
    text = seed("002", first, last)
    for old, new in (("<name of endpoint>", "node1-eth0"), ("<node name or hostname>", "node1"),
                     ("<list of profile IDs>", ""), ('"10.0.0.1"', f'"{ip}"')):
        assert old in text
        text = text.replace(old, new)
    return text


# Lines 119-144 filled: <your management CIDR> -> 10.200.0.0/24 (the outside host's 10.200.0.200
# is in it, its 192.0.2.200 is not), <your etcd IP>/32 -> 192.0.2.1/32 (the lab's etcd),
# <your etcd ports> -> 2379.
def _seed2_failsafe_policy() -> str:
    text = seed("002", 119, 144)
    for old, new in (("<your management CIDR>", str(hosts.OUTSIDE_NET)),
                     ("<your etcd IP>/32", f"{FABRIC_IP}/32"), ("<your etcd ports>", "2379")):
        assert old in text
        text = text.replace(old, new)
    return text


_NO_FAILSAFE = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  failsafeInboundHostPorts: []
  failsafeOutboundHostPorts: []
"""

_TRACKED_999 = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: memcached-tracked
spec:
  selector: role == "webserver"
  order: 50
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: [999]
"""

# The article's port-999 example (lines 271-273) as a policy; the egress rule is added later.
_UNTRACKED = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: memcached-untracked
spec:
  selector: role == "webserver"
  order: 10
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: [999]
"""
_UNTRACKED_EGRESS = """  egress:
  - action: Allow
    protocol: TCP
    source:
      ports: [999]
"""


def test_seed_002_host_endpoint_failsafe_and_untracked(clean: Env) -> None:
    e = clean
    out, n1 = e.outside, e.n1
    with Server(n1.netns, tcp=[22, 80, 999]), \
            Server(out, tcp=[2379, 8080], udp=[53, 67]):
        assert e.tcp(out, n1.address, 80) and e.tcp(n1.netns, OUTSIDE_UNDERLAY_IP, 8080)

        e.apply(_seed2_hep(168, 179, n1.address), verb="create", wait=True)
        # no policy: everything dropped but the failsafe ports (in 22, out 53/67/2379/...)
        assert e.tcp(out, n1.address, 80, want=False)
        assert not hosts.ping_ok(out, n1.address)
        assert e.tcp(out, n1.address, 22)
        assert e.tcp(out, LINK_NODE_IP, 80)   # eth1 has no host endpoint: not policed
        assert e.tcp(n1.netns, OUTSIDE_UNDERLAY_IP, 8080, want=False)
        assert e.tcp(n1.netns, OUTSIDE_UNDERLAY_IP, 2379)
        assert e.udp(n1.netns, OUTSIDE_UNDERLAY_IP, 53)   # and the reply comes back (conntrack)
        assert e.udp(n1.netns, OUTSIDE_UNDERLAY_IP, 67)

        e.apply(_seed2_failsafe_policy(), verb="create")
        e.apply(_NO_FAILSAFE)                      # "you may want to disable the failsafe rules"
        assert e.tcp(out, n1.address, 22, OUTSIDE_UNDERLAY_IP, want=False)
        assert e.tcp(out, n1.address, 22, OUTSIDE_IP)
        assert hosts.ping_ok(out, n1.address)
        assert e.tcp(n1.netns, FABRIC_IP, 2379, connect_only=True)  # etcd, by the policy
        assert e.tcp(n1.netns, OUTSIDE_UNDERLAY_IP, 2379, want=False)
        assert e.udp(n1.netns, OUTSIDE_UNDERLAY_IP, 67)
        assert e.udp(n1.netns, OUTSIDE_UNDERLAY_IP, 53, want=False)
        assert e.tcp(out, n1.address, 80, want=False)

        e.apply(seed("002", 235, 248), verb="create")   # webserver, as written
        assert e.tcp(out, n1.address, 80, OUTSIDE_UNDERLAY_IP)
        assert e.tcp(n1.netns, OUTSIDE_UNDERLAY_IP, 8080)  # egress: allow

        # a server on 999 opened by normal (tracked) policy: replies pass by conntrack
        e.apply(_TRACKED_999)
        assert e.tcp(out, n1.address, 999)
        assert hosts.conntrack_entries(n1.netns, 999) > 0
        # doNotTrack with only the ingress rule: the SYN is let in untracked, skipping normal
        # policy; the SYN-ACK has no connection to belong to and nothing lets it out
        e.apply(_UNTRACKED)
        assert e.tcp(out, n1.address, 999, want=False)
        e.apply(_UNTRACKED + _UNTRACKED_EGRESS)        # the symmetric egress rule
        assert e.tcp(out, n1.address, 999)
        # ... and leaves no connection state, where a tracked one adds an entry
        before = hosts.conntrack_entries(n1.netns, 999)
        assert e.tcp(out, n1.address, 999)
        assert hosts.conntrack_entries(n1.netns, 999) == before
        before = hosts.conntrack_entries(n1.netns, 80)
        assert e.tcp(out, n1.address, 80)
        assert hosts.conntrack_entries(n1.netns, 80) == before + 1


# Lines 199-209 filled as above, expectedIPs -> 198.51.100.1 (node1's eth1, a direct link to the
# outside host): the endpoint has no interfaceName, so it polices the interface holding that
# address -- eth1, and not eth0.
def test_seed_002_expected_ips_only_host_endpoint(clean: Env) -> None:
    e = clean
    out, n1 = e.outside, e.n1
    with Server(n1.netns, tcp=[22, 80]):
        assert e.tcp(out, LINK_NODE_IP, 80) and e.tcp(out, n1.address, 80)
        e.apply(_seed2_hep(199, 209, LINK_NODE_IP), verb="create", wait=True)
        assert e.tcp(out, LINK_NODE_IP, 80, want=False)   # eth1 holds the address: policed
        assert e.tcp(out, LINK_NODE_IP, 22)               # failsafe
        assert e.tcp(out, n1.address, 80)                 # eth0: no host endpoint
        e.apply(seed("002", 235, 248), verb="create")     # webserver
        assert e.tcp(out, LINK_NODE_IP, 80)
        e.delete("globalnetworkpolicies", "webserver")
        assert e.tcp(out, LINK_NODE_IP, 80, want=False)
        e.delete("hostendpoints", "node1-eth0")
        assert e.tcp(out, LINK_NODE_IP, 80)               # no endpoint: not policed
