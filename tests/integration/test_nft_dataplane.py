"""The rendered ruleset in a real kernel: nft accepts it, and packets get the model's verdicts.

Every test works in network namespaces of its own (unique names, removed even on failure).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from policyagent import nft_apply
from policyagent.model import DataplaneModel
from policyagent.nft_render import render, render_incremental
from policyagent.simulate import Packet, workload_verdict
from tests.support.nft import A_IP, B_IP, Lab, nsx, sh, unique
from tests.support.policy import Cluster, gnp, hep, np_, two_pods, wep
from tests.support.tools import tools

pytestmark = [
    pytest.mark.integration,
    tools("nft", "ip"),
]

@pytest.fixture
def netns() -> Iterator[str]:
    name = unique("chk")
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def _unit_models() -> list[DataplaneModel]:
    return [
        two_pods().model(),
        two_pods(gnp("pass-it", order=1, selector="app == 'b'",
                       ingress=[{"action": "Pass", "source": {"nets": ["10.10.0.0/16"]}}]),
                   ).model(),
        Cluster().add(wep("a", ["10.65.0.1", "fd00::1"],
                          allowSpoofedSourcePrefixes=["192.168.7.0/24"])).model(),
        Cluster().add(
            wep("web", "10.65.0.5", {"app": "web"},
                ports=[{"name": "http", "protocol": "TCP", "port": 8080}]),
            gnp("named", selector="all()", ingress=[
                {"action": "Log"},
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}},
                {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                {"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 8, "code": 0}},
                {"action": "Allow", "ipVersion": 6, "protocol": "ICMPv6",
                 "icmp": {"type": 128}}])).model(),
        Cluster().add(
            hep("eth0", iface="eth0", ips=["192.168.0.1"], labels={"role": "host"}),
            hep("all", iface="*", labels={"role": "all"}),
            gnp("pd", selector="role == 'host'", preDNAT=True, applyOnForward=True,
                ingress=[{"action": "Allow", "protocol": "TCP",
                          "destination": {"ports": [80]}}]),
            gnp("fw", selector="has(role)", applyOnForward=True,
                ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}]),
            gnp("dnt", selector="role == 'host'", doNotTrack=True, applyOnForward=True,
                ingress=[{"action": "Allow", "protocol": "UDP",
                          "destination": {"ports": [53]}}],
                egress=[{"action": "Allow", "protocol": "UDP",
                         "source": {"ports": [53]}}])).model(),
        DataplaneModel(),
    ]


def test_nft_check_accepts_every_rendered_script(netns: str) -> None:
    for model in _unit_models():
        nft_apply.check(render(model), netns)
    with pytest.raises(nft_apply.NftError) as err:
        nft_apply.apply("table inet tortie {\n\tchain c {\n\t\tfwd to x\n\t}\n}\n", netns)
    assert err.value.lines and err.value.lines[0][0] == 3 and "fwd" in str(err.value)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_real_packets_follow_the_model(lab: Lab) -> None:
    # no table yet: everything flows
    assert lab.ping() and lab.tcp(8081)
    nft_apply.apply("table inet other {\n\tchain c {\n\t\tcounter\n\t}\n}\n", lab.node)

    cluster = two_pods()
    model = cluster.model()
    a_to_b = [Packet(A_IP, B_IP, "TCP", 40000, p) for p in (8080, 8081)]
    assert [workload_verdict(model, "default/b", "ingress", p) for p in a_to_b] == \
        ["allow", "deny"]
    assert workload_verdict(model, "default/b", "ingress",
                            Packet(A_IP, B_IP, "ICMP", icmp_type=8, icmp_code=0)) == "deny"

    nft_apply.apply(render(model), lab.node)
    nft_apply.apply(render(model), lab.node)  # replacing again is fine
    assert not lab.ping()
    assert lab.tcp(8080)
    assert not lab.tcp(8081)
    (rule,) = model.policies[("np:default:allow-a", "ingress")].rules
    counters = nft_apply.read_counters("tortie", lab.node)
    assert counters[rule.rule_id][0] > 0
    assert counters["end of tier default ingress"][0] >= 2  # the ping and the 8081 SYN

    # pod a loses its label: a members-only diff flips the verdict
    cluster.add(wep("a", A_IP, {"app": "x"}))
    new = cluster.model()
    diff = model.diff(new)
    assert diff.members_only
    update = render_incremental(model, new)
    assert update is not None and update.startswith("flush set inet tortie s4_")
    nft_apply.apply(update, lab.node)
    assert not lab.tcp(8080)
    cluster.add(wep("a", A_IP, {"app": "a"}))
    script = render_incremental(new, cluster.model())
    assert script is not None
    nft_apply.apply(script, lab.node)
    assert lab.tcp(8080)

    # atomic replace: one tortie table, the foreign table untouched
    tables = nft_apply.run(["list", "tables"], lab.node).split("\n")
    assert sorted(t for t in tables if t) == ["table inet other", "table inet tortie"]
    nft_apply.delete_table("tortie", lab.node)
    nft_apply.delete_table("tortie", lab.node)  # idempotent
    assert nft_apply.run(["list", "tables"], lab.node).strip() == "table inet other"
    assert lab.ping()


def test_anti_spoofing_drops_forged_sources(lab: Lab) -> None:
    model = Cluster().add(wep("a", A_IP), wep("b", B_IP)).model()
    nft_apply.apply(render(model), lab.node)
    assert lab.tcp(8081)  # kns.default profile allows all
    nsx(lab.pa, "ip", "addr", "add", "10.65.0.9/32", "dev", "eth0")
    code = (f"import socket; s = socket.socket(); s.settimeout(0.7); "
            f"s.bind(('10.65.0.9', 0)); s.connect(('{B_IP}', 8081))")
    started = time.monotonic()
    assert nsx(lab.pa, sys.executable, "-I", "-S", "-c", code, check=False).returncode != 0
    assert time.monotonic() - started < 5
    assert nft_apply.read_counters("tortie", lab.node)["default/a anti-spoof v4"][0] > 0


def test_rules_with_unenforceable_matches_never_let_more_through(lab: Lab) -> None:
    """An Allow rule with ``http`` (an L7 match Tortie cannot enforce) admits nothing; the same
    rule without it admits the traffic; a Deny rule with ``http`` drops without it."""

    def program(*ingress: dict[str, object]) -> None:
        model = Cluster().add(
            wep("a", A_IP, {"app": "a"}), wep("b", B_IP, {"app": "b"}),
            np_("web", selector="app == 'b'", ingress=list(ingress))).model()
        nft_apply.apply(render(model), lab.node)

    allow = {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'a'"},
             "destination": {"ports": [8080]}}
    with_http = {**allow, "http": {"methods": ["GET"], "paths": [{"prefix": "/"}]}}

    program(with_http)
    assert not lab.tcp(8080)
    program(allow)
    assert lab.tcp(8080)
    program(with_http, allow)  # the http rule does not get in the way of the plain one
    assert lab.tcp(8080)
    program({**with_http, "action": "Deny"}, allow)  # the Deny applies without its http
    assert not lab.tcp(8080)
    assert nft_apply.read_counters("tortie", lab.node)["np:default:web/ingress/0"][0] > 0
