"""Workload policy with real packets in a lab: tortie-node's policy agent end to end.

One single-node lab for the module (pods on one node: no cross-node routing needed); every
test works in namespaces of its own (random suffix). Policies go in through ``tortie apply``
(Kubernetes ``networking.k8s.io/v1 NetworkPolicy``, Calico ``GlobalNetworkPolicy``), pods
through a Pod document + CNI ADD, traffic is real: ping, TCP connects, UDP datagrams, hand-made
SCTP INIT packets, between pod network namespaces through the node's nftables.

A policy written to the datastore reaches the kernel a little later (the agent's watch), so
tests first wait (``eventually``) for a state that only the new policy can produce, then assert.

The Kubernetes NetworkPolicy semantics and anti-spoofing tests run twice (``family``): with
IPv4 pods, and with dual-stack pods (an IPv6 pool next to the IPv4 one, on the one node) probed
on their IPv6 addresses -- the same truth tables must hold for IPv6 packets.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab import workloads as wl
from lab.cluster import Lab, LabState, PodState
from lab.seeds import EXAMPLES
from policyagent import nft_apply
from policyagent.nft_render import ND_COMMENT
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

NODE = "node1"
DENY_T = 0.5  # connect timeout when a drop is expected
V6_POOL = "fd00:10:244::/112"
#: a dual-stack pod: an IPv4 and an IPv6 address from the lab's pools
DUAL_STACK = {"ipam": {"type": "tortie-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"pw{uuid.uuid4().hex[:6]}"
    lab = Lab(name)
    try:
        lab.up(1)
        yield lab
    finally:
        wl.close_client(lab)
        lab.down()
        assert netns.list_netns(f"tl-{name}-") == []


@pytest.fixture(scope="module")
def v6_pool(lab: Lab) -> Iterator[str]:
    """An IPv6 pool next to the lab's IPv4 one (dual-stack pods on the one node)."""
    name = f"v6-{_sfx()}"
    wl.apply(lab, json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                              "metadata": {"name": name},
                              "spec": {"cidr": V6_POOL, "natOutgoing": False}}))
    yield V6_POOL


class Family:
    """Pods of one address family for a test: IPv4 pods, or dual-stack pods probed on their
    IPv6 address (:meth:`ip`)."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.pool = V6_POOL if version == 6 else "10.244.0.0/16"

    def pod(self, lab: Lab, ref: str, labels: dict[str, str] | None = None,
            ports: Any = (), service_account: str = "default") -> PodState:
        if self.version == 4:
            return wl.add_pod(lab, NODE, ref, labels, ports, service_account)
        namespace, name = ref.split("/")
        wl.apply(lab, wl.pod_doc(namespace, name, NODE, labels, ports, service_account))
        pod = lab.pod_add(NODE, ref, conf=DUAL_STACK)
        assert ipaddress.ip_address(self.ip(pod)) in ipaddress.ip_network(V6_POOL), pod.ips
        return pod

    def ip(self, pod: PodState) -> str:
        return ip_of(pod, self.version)

    def host(self, pod: PodState) -> str:
        """The pod's address as a one-address CIDR."""
        return f"{self.ip(pod)}/{32 if self.version == 4 else 128}"


def ip_of(pod: PodState, version: int) -> str:
    """The pod's address of that family."""
    return next(a for a in pod.ips if ipaddress.ip_address(a).version == version)


@pytest.fixture(params=[4, 6], ids=["v4", "v6"])
def fam(request: pytest.FixtureRequest) -> Family:
    if request.param == 6:
        request.getfixturevalue("v6_pool")
    return Family(request.param)


def _sfx() -> str:
    return uuid.uuid4().hex[:6]


def _ns(lab: Lab, base: str, labels: dict[str, str] | None = None) -> str:
    name = f"{base}-{_sfx()}"
    wl.apply(lab, wl.namespace_doc(name, labels))
    return name


def knp(name: str, ns: str, spec: dict[str, object]) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


def counters(lab: Lab) -> dict[str, tuple[int, int]]:
    return nft_apply.read_counters("tortie", netns=lab.load().nodes[NODE].netns)


def packets(c: dict[str, tuple[int, int]], comment: str) -> int:
    return c.get(comment, (0, 0))[0]


def tcp(a: PodState, b: PodState, port: int, want: bool) -> bool:
    """Whether a TCP connect a -> b:port gives ``want`` (connect timeout short for drops), to
    b's IPv6 address when both have one (dual-stack pods), else to its IPv4 one."""
    version = 6 if len(a.ips) > 1 and len(b.ips) > 1 else 4
    return wl.tcp_connect(a, ip_of(b, version), port, timeout=2.0 if want else DENY_T) == want


def node_log(lab: Lab) -> str:
    st: LabState = lab.load()
    return open(st.nodes[NODE].log).read()


# --- no start-up window ----------------------------------------------------------------------


def test_first_packet_after_add_meets_its_policy(lab: Lab) -> None:
    peer_ns = _ns(lab, "peer")
    peer = wl.add_pod(lab, NODE, f"{peer_ns}/peer")
    deny_ns = _ns(lab, "deny")
    wl.apply(lab, knp("default-deny", deny_ns,
                      {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    ok_ns = _ns(lab, "ok")
    wl.apply(lab, knp("default-deny", ok_ns,
                      {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    wl.apply(lab, knp("web", ok_ns, {"podSelector": {"matchLabels": {"app": "web"}},
                                     "ingress": [{}], "egress": [{}],
                                     "policyTypes": ["Ingress", "Egress"]}))
    # sentinels: the agent has every policy above once they behave so
    s_deny = wl.add_pod(lab, NODE, f"{deny_ns}/sentinel")
    s_plain = wl.add_pod(lab, NODE, f"{ok_ns}/plain")
    s_web = wl.add_pod(lab, NODE, f"{ok_ns}/sweb", labels={"app": "web"})
    until_sync(lambda: not wl.ping(s_deny, peer.ips[0]))
    until_sync(lambda: not wl.ping(s_plain, peer.ips[0]))
    until_sync(lambda: wl.ping(s_web, peer.ips[0]))

    t0 = time.monotonic()
    fresh = wl.add_pod(lab, NODE, f"{deny_ns}/fresh")
    add_s = time.monotonic() - t0
    before = counters(lab)
    out_ok = wl.ping(fresh, peer.ips[0])   # its very first packet out
    in_ok = wl.ping(peer, fresh.ips[0])    # and the first one in
    after = counters(lab)
    assert not out_ok and not in_ok
    # dropped by its policy (end of the default tier), not as an unknown interface
    for what in ("end of tier default egress", "end of tier default ingress"):
        assert packets(after, what) > packets(before, what), what
    assert packets(after, "unknown workload interface") == packets(
        before, "unknown workload interface")

    adds = [add_s]
    for i in range(3):
        t0 = time.monotonic()
        web = wl.add_pod(lab, NODE, f"{ok_ns}/web{i}", labels={"app": "web"})
        adds.append(time.monotonic() - t0)
        assert wl.ping(web, peer.ips[0], timeout=2), "first ping out of an allowed pod failed"
        assert wl.ping(peer, web.ips[0], timeout=2), "first ping into an allowed pod failed"
    print(f"\nCNI ADD incl. policy programming: {', '.join(f'{a * 1000:.0f}' for a in adds)} ms")


# --- Calico GlobalNetworkPolicy: seed 004's quarantine -------------------------------------


def test_seed_004_quarantine(lab: Lab) -> None:
    ns = _ns(lab, "q")
    a = wl.add_pod(lab, NODE, f"{ns}/a")
    b = wl.add_pod(lab, NODE, f"{ns}/b")
    assert wl.ping(a, b.ips[0]) and wl.ping(b, a.ips[0])
    seed = next(e for e in EXAMPLES if e.seed == "004" and e.first == 636)
    wl.apply(lab, seed.text())
    try:
        wl.relabel_pod(lab, b, {"quarantine": "true"})
        until_sync(lambda: not wl.ping(a, b.ips[0]))
        assert not wl.ping(b, a.ips[0])
        c = counters(lab)
        for d in ("ingress", "egress"):
            log_rule = f"gnp:security-operations.quarantine/{d}/0"
            deny_rule = f"gnp:security-operations.quarantine/{d}/1"
            assert packets(c, log_rule) > 0 and packets(c, deny_rule) > 0, (d, c)
        # a is not quarantined: still talks to others
        other = wl.add_pod(lab, NODE, f"{ns}/other")
        assert wl.ping(a, other.ips[0])
        # released: back to normal
        wl.relabel_pod(lab, b, {})
        until_sync(lambda: wl.ping(a, b.ips[0]))
    finally:
        wl.delete(lab, "globalnetworkpolicy", "security-operations.quarantine")


# --- Kubernetes NetworkPolicy semantics --------------------------------------------------------


def test_default_deny_ingress_and_egress(lab: Lab, fam: Family) -> None:
    out_ns = _ns(lab, "out")
    client = fam.pod(lab, f"{out_ns}/client")
    di = _ns(lab, "di")
    de = _ns(lab, "de")
    si = fam.pod(lab, f"{di}/s")
    se = fam.pod(lab, f"{de}/s")
    with wl.Server(si, tcp=[80]), wl.Server(se, tcp=[80]), wl.Server(client, tcp=[80]):
        assert tcp(client, si, 80, True) and tcp(client, se, 80, True)
        wl.apply(lab, knp("deny-in", di, {"podSelector": {}, "policyTypes": ["Ingress"]}))
        wl.apply(lab, knp("deny-out", de, {"podSelector": {}, "policyTypes": ["Egress"]}))
        until_sync(lambda: tcp(client, si, 80, False))
        until_sync(lambda: tcp(se, client, 80, False))
        assert tcp(si, client, 80, True)      # ingress-only isolation: egress still open
        assert tcp(client, se, 80, True)      # egress-only isolation: ingress still open
        assert not wl.ping(client, fam.ip(si))


def test_pod_and_namespace_selectors_and_vs_or(lab: Lab, fam: Family) -> None:
    tag = _sfx()
    srv = _ns(lab, "srv")
    team = _ns(lab, "team", {"team": tag})
    other = _ns(lab, "other")
    s_and = fam.pod(lab, f"{srv}/sand", labels={"app": "and"})
    s_or = fam.pod(lab, f"{srv}/sor", labels={"app": "or"})
    team_client = fam.pod(lab, f"{team}/tc", labels={"role": "client"})
    team_plain = fam.pod(lab, f"{team}/tp")
    other_client = fam.pod(lab, f"{other}/oc", labels={"role": "client"})
    srv_client = fam.pod(lab, f"{srv}/sc", labels={"role": "client"})
    wl.apply(lab, knp("and", srv, {
        "podSelector": {"matchLabels": {"app": "and"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": tag}},
                               "podSelector": {"matchLabels": {"role": "client"}}}]}]}))
    wl.apply(lab, knp("or", srv, {
        "podSelector": {"matchLabels": {"app": "or"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": tag}}},
                              {"podSelector": {"matchLabels": {"role": "client"}}}]}]}))
    with wl.Server(s_and, tcp=[80]), wl.Server(s_or, tcp=[80]):
        until_sync(lambda: tcp(team_plain, s_and, 80, False))
        # AND within one peer: the namespace AND the pod label
        assert tcp(team_client, s_and, 80, True)
        assert tcp(other_client, s_and, 80, False)
        assert tcp(srv_client, s_and, 80, False)
        # OR across peers: any pod of the team namespace, or role=client of the policy's own
        # namespace (a podSelector alone is namespace-local)
        assert tcp(team_client, s_or, 80, True)
        assert tcp(team_plain, s_or, 80, True)
        assert tcp(srv_client, s_or, 80, True)
        assert tcp(other_client, s_or, 80, False)


def test_ipblock_with_except(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "ipb")
    s = fam.pod(lab, f"{ns}/s", labels={"app": "s"})
    x = fam.pod(lab, f"{ns}/x")
    y = fam.pod(lab, f"{ns}/y")
    wl.apply(lab, knp("ipb", ns, {
        "podSelector": {"matchLabels": {"app": "s"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": fam.pool,
                                           "except": [fam.host(x)]}}]}]}))
    with wl.Server(s, tcp=[80]):
        until_sync(lambda: tcp(x, s, 80, False))
        assert tcp(y, s, 80, True)


def test_named_ports_and_port_ranges(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "ports")
    s = fam.pod(lab, f"{ns}/s", labels={"app": "s"},
                   ports=[("web", 8080, "TCP"), ("dns", 5353, "UDP")])
    c = fam.pod(lab, f"{ns}/c")
    wl.apply(lab, knp("named", ns, {
        "podSelector": {"matchLabels": {"app": "s"}},
        "ingress": [{"ports": [{"port": "web", "protocol": "TCP"},
                               {"port": 9000, "endPort": 9002, "protocol": "TCP"}]}]}))
    with wl.Server(s, tcp=[8080, 8081, 8999, 9000, 9001, 9002, 9003]):
        until_sync(lambda: tcp(c, s, 8081, False))
        assert tcp(c, s, 8080, True)          # the named port
        for port in (9000, 9001, 9002):
            assert tcp(c, s, port, True), port
        for port in (8999, 9003):
            assert tcp(c, s, port, False), port


def test_sctp_is_not_tcp(lab: Lab) -> None:
    ns = _ns(lab, "sctp")
    s = wl.add_pod(lab, NODE, f"{ns}/s", labels={"app": "s"})
    c = wl.add_pod(lab, NODE, f"{ns}/c")
    wl.apply(lab, knp("sctp", ns, {
        "podSelector": {"matchLabels": {"app": "s"}},
        "ingress": [{"ports": [{"port": 7000, "protocol": "SCTP"},
                               {"port": 7001, "protocol": "TCP"}]}]}))
    with wl.Server(s, tcp=[7000, 7001], raw=[132]) as server:
        until_sync(lambda: tcp(c, s, 7000, False))   # SCTP 7000 allowed: TCP 7000 is not
        assert tcp(c, s, 7001, True)
        # SCTP packets (INIT built by hand: this kernel may lack the sctp module, the raw
        # receiver sees what arrives either way): 7000 passes, 7002 does not
        wl.sctp_init(c, s.ips[0], 7002)
        wl.sctp_init(c, s.ips[0], 7000)
        until_sync(lambda: any(line.startswith("raw 132 ") and line.endswith(" 7000")
                          for line in server.received()), timeout=3)
        assert not any(line.endswith(" 7002") for line in server.received())


def test_policies_add_up(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "sum")
    s = fam.pod(lab, f"{ns}/s", labels={"app": "s"})
    c = fam.pod(lab, f"{ns}/c")
    with wl.Server(s, tcp=[8080, 8081, 8082]):
        wl.apply(lab, knp("p1", ns, {"podSelector": {"matchLabels": {"app": "s"}},
                                     "ingress": [{"ports": [{"port": 8080}]}]}))
        until_sync(lambda: tcp(c, s, 8081, False))
        assert tcp(c, s, 8080, True)
        wl.apply(lab, knp("p2", ns, {"podSelector": {},
                                     "ingress": [{"ports": [{"port": 8081}]}]}))
        until_sync(lambda: tcp(c, s, 8081, True))
        assert tcp(c, s, 8080, True)
        assert tcp(c, s, 8082, False)


def test_label_change_applies_to_new_flows_of_running_pods(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "lbl")
    s = fam.pod(lab, f"{ns}/s", labels={"app": "s"})
    c = fam.pod(lab, f"{ns}/c")
    wl.apply(lab, knp("clients", ns, {
        "podSelector": {"matchLabels": {"app": "s"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}))
    with wl.Server(s, tcp=[80]):
        until_sync(lambda: tcp(c, s, 80, False))
        wl.relabel_pod(lab, c, {"role": "client"})
        until_sync(lambda: tcp(c, s, 80, True))
        wl.relabel_pod(lab, c, {})
        until_sync(lambda: tcp(c, s, 80, False))


def test_seed_001_foo_bar_pair(lab: Lab) -> None:
    ns = _ns(lab, "baz")
    foo = wl.add_pod(lab, NODE, f"{ns}/foo",
                     labels={"app": "baz", "component": "foo", "foo": "producer"},
                     ports=[("http", 80, "TCP")])
    bar = wl.add_pod(lab, NODE, f"{ns}/bar",
                     labels={"app": "baz", "component": "bar", "foo": "consumer"},
                     ports=[("http", 80, "TCP")])
    other = wl.add_pod(lab, NODE, f"{ns}/other", labels={"app": "baz"})
    for first in (127, 145):
        seed = next(e for e in EXAMPLES if e.seed == "001" and e.first == first)
        wl.apply(lab, seed.text(), namespace=ns)
    with wl.Server(foo, tcp=[80]), wl.Server(bar, tcp=[80]), wl.Server(other, tcp=[80]):
        until_sync(lambda: tcp(other, foo, 80, False))
        assert tcp(bar, foo, 80, True)
        assert tcp(bar, other, 80, False)   # bar may only call foo
        assert tcp(other, bar, 80, True)    # bar's ingress is not restricted


def test_calico_policy_by_service_account(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "sa")
    s = fam.pod(lab, f"{ns}/s", labels={"app": "s"})
    robot = fam.pod(lab, f"{ns}/robot", service_account="robot")
    human = fam.pod(lab, f"{ns}/human")
    wl.apply(lab, json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "robots-only", "namespace": ns},
        "spec": {"selector": "app == 's'", "types": ["Ingress"],
                 "ingress": [{"action": "Allow", "protocol": "TCP",
                              "source": {"serviceAccounts": {"names": ["robot"]}}}]}}))
    with wl.Server(s, tcp=[80]):
        until_sync(lambda: tcp(human, s, 80, False))
        assert tcp(robot, s, 80, True)


def test_allow_rule_with_http_admits_nothing(lab: Lab) -> None:
    """``http`` is an L7 match Tortie cannot enforce: the Allow rule that has it matches
    nothing (through ``tortie apply`` and the node's policy agent), the same rule without it
    admits the traffic, and the node logs the field once."""
    ns = _ns(lab, "l7")
    s = wl.add_pod(lab, NODE, f"{ns}/s", labels={"app": "s"})
    c = wl.add_pod(lab, NODE, f"{ns}/c", labels={"app": "c"})

    def policy(**extra: object) -> str:
        return json.dumps({
            "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": "app == 's'", "types": ["Ingress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP",
                                  "source": {"selector": "app == 'c'"},
                                  "destination": {"ports": [80]}, **extra}]}})

    with wl.Server(s, tcp=[80]):
        wl.apply(lab, policy(http={"methods": ["GET"]}))
        until_sync(lambda: tcp(c, s, 80, False))
        wl.apply(lab, policy())
        until_sync(lambda: tcp(c, s, 80, True))
        wl.apply(lab, policy(http={"methods": ["GET"]}))
        until_sync(lambda: tcp(c, s, 80, False))
    lines = [line for line in node_log(lab).splitlines()
             if "resource field is not acted on" in line and f"{ns}/web" in line]
    assert len(lines) == 2, lines  # once per version that has the field, not per resync
    assert all("spec.ingress[0].http" in line for line in lines)


def test_no_policy_and_no_allowing_profile_drops_everything(lab: Lab) -> None:
    ns = _ns(lab, "bare")
    a = wl.add_pod(lab, NODE, f"{ns}/a")
    b = wl.add_pod(lab, NODE, f"{ns}/b")
    assert wl.ping(a, b.ips[0])  # the namespace profile (kns.<ns>) allows
    wep = wl.get(lab, "workloadendpoints", wl.endpoint_name(b), ns)
    wep["spec"]["profiles"] = []
    wep["metadata"].pop("resourceVersion", None)
    wl.apply(lab, json.dumps(wep))
    until_sync(lambda: not wl.ping(a, b.ips[0]))
    assert not wl.ping(b, a.ips[0])
    wep["spec"]["profiles"] = ["no-such-profile"]  # a missing profile allows nothing either
    wl.apply(lab, json.dumps(wep))
    time.sleep(0.5)
    assert not wl.ping(a, b.ips[0]) and not wl.ping(b, a.ips[0])
    wep["spec"]["profiles"] = [f"kns.{ns}"]
    wl.apply(lab, json.dumps(wep))
    until_sync(lambda: wl.ping(a, b.ips[0]))


# --- anti-spoofing ---------------------------------------------------------------------------


def test_a_pod_cannot_send_with_a_forged_source(lab: Lab, fam: Family) -> None:
    ns = _ns(lab, "spoof")
    a = fam.pod(lab, f"{ns}/a")
    b = fam.pod(lab, f"{ns}/b")
    forged = "10.244.200.200" if fam.version == 4 else "fd00:10:244::c8c8"
    subprocess.run(["ip", "netns", "exec", a.netns, "ip", "addr", "add",
                    fam.host(a).replace(fam.ip(a), forged), "dev", "eth0", "nodad"],
                   check=True)
    with wl.Server(b, udp=[5000]) as server:
        spoof_rule = f"{ns}/{wl.endpoint_name(a)} anti-spoof v{fam.version}"
        before = packets(counters(lab), spoof_rule)
        wl.udp_send(a, fam.ip(b), 5000, "forged", source=forged)
        # from its own address, named: with two IPv6 addresses on eth0 the kernel's choice of
        # source could be either
        wl.udp_send(a, fam.ip(b), 5000, "genuine", source=fam.ip(a))
        until_sync(lambda: any("genuine" in line for line in server.received()), timeout=3)
        time.sleep(0.2)
        got = server.received()
        assert not any("forged" in line for line in got), got
        assert packets(counters(lab), spoof_rule) > before  # dropped by the anti-spoof rule


# --- IPv6 only: ICMPv6 types, ipVersion, neighbour discovery under default deny ------------


def _ns_exec(netns_name: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns_name, *argv], check=True, capture_output=True)


def test_icmpv6_type_ip_version_and_neighbour_discovery(lab: Lab, v6_pool: str) -> None:
    """Under default deny, a policy admitting ICMPv6 echo requests and IPv6-only TCP: IPv6
    ping and TCP work (so neighbour discovery between the pods and their host does: it is
    never policy's), IPv4 ping and TCP do not."""
    six = Family(6)
    ns = _ns(lab, "icmp6")
    a = six.pod(lab, f"{ns}/a")
    b = six.pod(lab, f"{ns}/b")
    wl.apply(lab, knp("default-deny", ns,
                      {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    rules = [{"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128, "code": 0}},
             {"action": "Allow", "protocol": "TCP", "ipVersion": 6}]
    wl.apply(lab, json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "v6-only", "namespace": ns},
        "spec": {"selector": "all()", "types": ["Ingress", "Egress"],
                 "ingress": rules, "egress": rules}}))
    node_ns = lab.load().nodes[NODE].netns
    with wl.Server(b, tcp=[80]):
        until_sync(lambda: wl.ping(a, six.ip(b)))
        # forget every neighbour: the next packets need fresh neighbour discovery both ways
        for pod in (a, b):
            _ns_exec(pod.netns, "ip", "-6", "neigh", "flush", "dev", "eth0")
            _ns_exec(node_ns, "ip", "-6", "neigh", "flush", "to", six.host(pod))
        before = counters(lab)
        assert wl.ping(a, six.ip(b), timeout=2)
        assert tcp(a, b, 80, True)
        after = counters(lab)
        assert packets(after, ND_COMMENT) > packets(before, ND_COMMENT)
        for d in ("ingress", "egress"):
            rule = f"np:{ns}:v6-only/{d}/0"
            assert packets(after, rule) > packets(before, rule), rule
        # the IPv4 side of the same pods: neither rule admits it
        assert not wl.ping(a, ip_of(b, 4))
        assert wl.tcp_connect(a, ip_of(b, 4), 80, timeout=DENY_T) is False


def test_host_endpoint_by_ipv6_expected_ip(lab: Lab) -> None:
    """A host endpoint known only by an IPv6 ``expectedIPs`` address governs the node's
    interface holding it: its policy admits one TCP port from one IPv6 source net (and the
    ICMPv6 neighbour discovery the link needs: a host endpoint's default drop has no
    exemption for it), the next port is dropped."""
    sfx = _sfx()
    outside = f"v6h-{sfx}"
    node_ns = lab.load().nodes[NODE].netns
    host_if = f"v6h{sfx}"
    netns.add_netns(outside)
    try:
        _ns_exec(node_ns, "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                 "netns", outside)
        for ns_name, dev, addr in ((node_ns, host_if, "2001:db8:77::1/64"),
                                   (outside, "eth0", "2001:db8:77::2/64")):
            _ns_exec(ns_name, "ip", "addr", "add", addr, "dev", dev, "nodad")
            _ns_exec(ns_name, "ip", "link", "set", dev, "up")
        node = PodState("-", "node", NODE, node_ns, "")
        client = PodState("-", "outside", NODE, outside, "")
        with wl.Server(node, tcp=[18080, 18081]):
            assert wl.tcp_connect(client, "2001:db8:77::1", 18081, timeout=2)
            wl.apply(lab, json.dumps({
                "apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
                "metadata": {"name": outside, "labels": {"v6h": sfx}},
                "spec": {"node": NODE, "expectedIPs": ["2001:db8:77::1"]}}))
            wl.apply(lab, json.dumps({
                "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": outside},
                "spec": {"selector": f"v6h == '{sfx}'", "types": ["Ingress", "Egress"],
                         "ingress": [
                             {"action": "Allow", "protocol": "ICMPv6",
                              "icmp": {"type": 135}},
                             {"action": "Allow", "protocol": "ICMPv6",
                              "icmp": {"type": 136}},
                             {"action": "Allow", "protocol": "TCP",
                              "source": {"nets": ["2001:db8:77::/120"]},
                              "destination": {"ports": [18080]}}],
                         "egress": [{"action": "Allow"}]}}))
            try:
                until_sync(lambda: not wl.tcp_connect(client, "2001:db8:77::1", 18081,
                                                      timeout=DENY_T))
                _ns_exec(outside, "ip", "-6", "neigh", "flush", "dev", "eth0")
                _ns_exec(node_ns, "ip", "-6", "neigh", "flush", "dev", host_if)
                before = counters(lab)
                assert wl.tcp_connect(client, "2001:db8:77::1", 18080, timeout=2)
                after = counters(lab)
                rule = f"gnp:{outside}/ingress/2"
                assert packets(after, rule) > packets(before, rule)
                assert packets(after, f"gnp:{outside}/ingress/0") > packets(
                    before, f"gnp:{outside}/ingress/0")  # neighbour solicitations
            finally:
                wl.delete(lab, "globalnetworkpolicy", outside)
                wl.delete(lab, "hostendpoint", outside)
    finally:
        netns.del_netns(outside)


# --- agent restart -----------------------------------------------------------------------------


def _probe(stop: threading.Event, fn: object, results: list[bool]) -> None:
    assert callable(fn)
    while not stop.is_set():
        results.append(bool(fn()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_policy_stays_enforced_across_an_agent_restart(lab: Lab, sig: int) -> None:
    ns = _ns(lab, "rs")
    s = wl.add_pod(lab, NODE, f"{ns}/s", labels={"app": "s"})
    c = wl.add_pod(lab, NODE, f"{ns}/c")
    ok = wl.add_pod(lab, NODE, f"{ns}/ok", labels={"role": "client"})
    wl.apply(lab, knp("clients", ns, {
        "podSelector": {"matchLabels": {"app": "s"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}))
    with wl.Server(s, tcp=[80]):
        until_sync(lambda: tcp(c, s, 80, False))
        assert tcp(ok, s, 80, True)
        stop = threading.Event()
        denied: list[bool] = []
        allowed: list[bool] = []
        probes = [threading.Thread(target=_probe, args=(
                      stop, lambda: wl.tcp_connect(c, s.ips[0], 80, timeout=0.3), denied)),
                  threading.Thread(target=_probe, args=(
                      stop, lambda: wl.tcp_connect(ok, s.ips[0], 80, timeout=1.0), allowed))]
        for t in probes:
            t.start()
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            lab.restart_node(NODE, sig)
            # the new agent has programmed the table (a new pod gets its policy) ...
            late = wl.add_pod(lab, NODE, f"{ns}/late", labels={"role": "client"})
            restart_s = time.monotonic() - t0
            time.sleep(0.3)
        finally:
            stop.set()
            for t in probes:
                t.join(10)
        assert denied and not any(denied), "a denied flow got through during the restart"
        assert allowed and all(allowed), "an allowed flow failed during the restart"
        assert tcp(late, s, 80, True)
        assert tcp(c, s, 80, False)
        print(f"\nrestart ({signal.Signals(sig).name}) to first new pod: {restart_s:.2f} s; "
              f"{len(denied)} denied probes, {len(allowed)} allowed probes")
    assert "policy programmed" in node_log(lab)
