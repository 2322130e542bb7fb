"""The policy agent on a real etcd and a real nftables (in a network namespace of its own).

The wiring: resources in the datastore -> the table in the kernel; bad resources skipped and
counted; the smallest transaction chosen; endpoint_ready returning once the kernel has the
endpoint, batching concurrent calls; the table never missing across a stop and start.  The
agent's choices alone (which programming, fall-backs, retries) are tested on the in-memory
store and a recording applier in tests/unit/test_policy_agent_logic.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry, render, value
from datastore.keys import resource_key
from datastore.model_endpoints import WorkloadEndpoint
from datastore.resources import Resources
from datastore.store import Store
from policyagent import nft_apply
from policyagent.agent import PolicyAgent
from policyagent.nft_render import policy_chain
from tests.support.tools import tools
from tests.support.wait import until

pytestmark = [
    pytest.mark.integration,
    tools("nft"),
]

NODE = "n1"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tpa-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def wep_doc(name: str, ns: str, node: str, ip: str, labels: dict[str, str] | None = None,
            iface: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"projectcalico.org/namespace": ns,
                                    "projectcalico.org/orchestrator": "k8s",
                                    **(labels or {})}},
            "spec": {"node": node, "orchestrator": "k8s", "pod": name, "endpoint": "eth0",
                     "ipNetworks": [f"{ip}/32"], "profiles": [f"kns.{ns}"],
                     "interfaceName": iface or f"cali{uuid.uuid4().hex[:11]}"}}


def gnp_doc(name: str, selector: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"selector": selector, "types": ["Ingress"], "ingress": ingress}}


async def put(store: Store, plural: str, doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    key = resource_key(plural, meta["name"], meta.get("namespace"))
    await store.put(key, doc)
    return key


def table_text(ns: str, table: str) -> str:
    return nft_apply.run(["list", "table", "inet", table], ns)


async def start(store: Store, netns: str, table: str) -> tuple[PolicyAgent, asyncio.Task[None]]:
    ctx = NodeContext(node=NODE, store=store, resources=Resources(store), metrics=new_registry(),
                      args=argparse.Namespace())
    agent = PolicyAgent(ctx, table=table, netns=netns, counters_interval=0.0)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.ready.wait(), 20)
    return agent, task


async def stop(agent: PolicyAgent, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.close()


def _table(tag: str) -> str:
    return f"tpa{tag}{uuid.uuid4().hex[:6]}"


async def test_resources_to_table_and_smallest_transactions(store: Store, netns: str) -> None:
    table = _table("a")
    await put(store, "workloadendpoints", wep_doc("a", "ns1", NODE, "10.1.0.1", {"app": "a"},
                                                  "caliaaaaaaaaaaa"))
    await put(store, "globalnetworkpolicies", gnp_doc(
        "from-b", "app == 'a'", [{"action": "Allow", "source": {"selector": "app == 'b'"}}]))
    # the rule's source set is not empty (a rule needing a member of an empty set is left
    # out, and comes with the set's first member: a chain change, not a set change)
    await put(store, "workloadendpoints", wep_doc("b0", "ns1", "other", "10.1.0.9",
                                                  {"app": "b"}))
    agent, task = await start(store, netns, table)
    try:
        text = table_text(netns, table)
        assert "caliaaaaaaaaaaa" in text
        assert policy_chain("gnp:from-b", "ingress") in text
        programs = agent.m_programs
        assert value(programs, kind="full") == 1
        # a remote endpoint joins the rule's selector: only set elements change
        await put(store, "workloadendpoints", wep_doc("b", "ns1", "other", "10.1.0.2",
                                                      {"app": "b"}))
        await until(lambda: value(programs, kind="sets") == 1)
        assert "10.1.0.2" in table_text(netns, table)
        # the policy's rules change: only its chain is replaced
        await put(store, "globalnetworkpolicies", gnp_doc(
            "from-b", "app == 'a'", [{"action": "Allow", "protocol": "TCP",
                                      "source": {"selector": "app == 'b'"}}]))
        await until(lambda: value(programs, kind="chain") == 1)
        assert "tcp" in nft_apply.run(["list", "chain", "inet", table,
                                       policy_chain("gnp:from-b", "ingress")], netns)
        # per-rule counters: read from nft in a thread on scrape, shown by the next scrape
        agent.counters_interval = 0.01
        render(agent.ctx.metrics)
        rule = 'tortie_policy_rule_packets_total{rule_id="gnp:from-b/ingress/0"} 0.0'
        await until(lambda: rule in render(agent.ctx.metrics).splitlines())
        # a bad resource: skipped, counted, the rest goes on
        await store.put(resource_key("globalnetworkpolicies", "broken"),
                        {"metadata": {"name": "broken"}, "spec": {"order": "not a number"}})
        await until(lambda: value(agent.m_skipped, kind="globalnetworkpolicies") == 1)
        # a delete reaches the table
        await store.delete(resource_key("workloadendpoints", "a", "ns1"))
        await until(lambda: value(programs, kind="full") + value(programs, kind="endpoints") >= 2)
        assert "caliaaaaaaaaaaa" not in table_text(netns, table)
        assert value(agent.m_errors, kind="full") == 0
        h = agent.health()
        assert h["synced"] and h["last_error"] == "" and h["endpoints"] == 0
        assert "tortie_policy_programs_total" in render(agent.ctx.metrics)
    finally:
        await stop(agent, task)
        nft_apply.delete_table(table, netns)


async def test_endpoint_ready_programs_before_returning_and_batches(store: Store,
                                                                    netns: str) -> None:
    table = _table("b")
    agent, task = await start(store, netns, table)
    try:
        base = sum(value(agent.m_programs, kind=k) for k in ("full", "sets", "chain", "endpoints"))
        weps = []
        for i in range(20):
            doc = wep_doc(f"p{i}", "ns2", NODE, f"10.2.0.{i + 1}",
                          iface=f"calib{i:010d}")
            weps.append(WorkloadEndpoint.model_validate(doc))
        # (not in the datastore: only endpoint_ready tells the agent about them)
        # one at a time: in the kernel when the call returns
        await agent.endpoint_ready(weps[0])
        assert "calib0000000000" in table_text(netns, table)
        # many at once: all in, with fewer programmings than calls
        t0 = time.monotonic()
        await asyncio.gather(*(agent.endpoint_ready(w) for w in weps[1:]))
        took = time.monotonic() - t0
        text = table_text(netns, table)
        assert all(f"calib{i:010d}" in text for i in range(20))
        done = sum(value(agent.m_programs, kind=k)
                   for k in ("full", "sets", "chain", "endpoints")) - base
        assert 1 <= done < 19, done
        print(f"\n19 concurrent endpoint_ready: {took * 1000:.0f} ms, {done} programmings")
    finally:
        await stop(agent, task)
        nft_apply.delete_table(table, netns)


async def test_the_table_never_goes_missing_across_stop_and_start(store: Store,
                                                                  netns: str) -> None:
    table = _table("c")
    await put(store, "workloadendpoints", wep_doc("a", "ns3", NODE, "10.3.0.1",
                                                  iface="calicccccccccc"))
    agent, task = await start(store, netns, table)
    stop_poll = threading.Event()
    missing: list[float] = []
    polls = [0]

    def poll() -> None:
        while not stop_poll.is_set():
            r = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "tables"],
                               capture_output=True, text=True, check=False)
            names = [t["table"]["name"] for t in json.loads(r.stdout or "{}").get(
                "nftables", []) if "table" in t]
            if table not in names:
                missing.append(time.monotonic())
            polls[0] += 1

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        await stop(agent, task)
        assert "calicccccccccc" in table_text(netns, table)  # left as it was
        agent, task = await start(store, netns, table)
        assert value(agent.m_programs, kind="full") == 1
        await stop(agent, task)
    finally:
        stop_poll.set()
        await asyncio.to_thread(poller.join, 10)
        nft_apply.delete_table(table, netns)
    assert polls[0] > 0 and not missing


async def test_run_again_after_a_failure_catches_up_with_deletes(store: Store,
                                                                 netns: str) -> None:
    table = _table("d")
    key = await put(store, "workloadendpoints", wep_doc("a", "ns4", NODE, "10.4.0.1",
                                                        iface="calidddddddddd"))
    agent, task = await start(store, netns, table)
    try:
        task.cancel()  # as if run() had failed: tortie-node calls run() again
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.delete(key)  # missed while not running
        await put(store, "workloadendpoints", wep_doc("b", "ns4", NODE, "10.4.0.2",
                                                      iface="calieeeeeeeeee"))
        full = value(agent.m_programs, kind="full")
        task = asyncio.create_task(agent.run())
        await until(lambda: value(agent.m_programs, kind="full") > full)
        text = table_text(netns, table)
        assert "calieeeeeeeeee" in text and "calidddddddddd" not in text
    finally:
        await stop(agent, task)
        nft_apply.delete_table(table, netns)


async def test_felix_endpoint_to_host_action(store: Store, netns: str) -> None:
    table = _table("e")
    agent, task = await start(store, netns, table)
    try:
        def input_chain() -> str:
            return nft_apply.run(["list", "chain", "inet", table, "input"], netns)

        assert 'iifname "cali*" accept' in input_chain()  # the Kubernetes manifests' default
        full = value(agent.m_programs, kind="full")
        await put(store, "felixconfigurations", {
            "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"defaultEndpointToHostAction": "Drop"}})
        await until(lambda: value(agent.m_programs, kind="full") > full)
        assert "workload to host" in input_chain()
    finally:
        await stop(agent, task)
        nft_apply.delete_table(table, netns)


async def test_a_reused_address_leaves_the_old_endpoints_labels_behind(store: Store,
                                                                       netns: str) -> None:
    table = _table("f")
    await put(store, "workloadendpoints", wep_doc("srv", "ns5", NODE, "10.5.0.1",
                                                  {"app": "srv"}, "califfffffffff"))
    await put(store, "globalnetworkpolicies", gnp_doc(
        "admins", "app == 'srv'", [{"action": "Allow", "source": {"selector": "role == 'admin'"}}]))
    # an admin pod that is gone, but whose delete the agent has not seen yet
    old = wep_doc("gone", "ns5", NODE, "10.5.0.2", {"role": "admin"}, "caligggggggggg")
    await put(store, "workloadendpoints", old)
    agent, task = await start(store, netns, table)
    try:
        await until(lambda: "10.5.0.2" in table_text(netns, table))
        assert any("elements" in line and "10.5.0.2" in line
                   for line in table_text(netns, table).splitlines())  # in the admins' set
        # a new pod gets the address: the admin's labels must not come with it
        new = WorkloadEndpoint.model_validate(
            wep_doc("next", "ns5", NODE, "10.5.0.2", {}, "calihhhhhhhhhh"))
        await agent.endpoint_ready(new)
        text = table_text(netns, table)
        assert "calihhhhhhhhhh" in text and "caligggggggggg" not in text
        lines = [line for line in text.splitlines() if "10.5.0.2" in line]
        # only in the new pod's anti-spoofing rule: in no selector's set any more
        assert lines and all("saddr" in line for line in lines), lines
    finally:
        await stop(agent, task)
        nft_apply.delete_table(table, netns)


async def test_a_refused_programming_fails_the_add_and_is_retried(store: Store,
                                                                  netns: str) -> None:
    ctx = NodeContext(node=NODE, store=store, resources=Resources(store), metrics=new_registry(),
                      args=argparse.Namespace())
    agent = PolicyAgent(ctx, table="no such;table", netns=netns)  # nft refuses the name
    task = asyncio.create_task(agent.run())
    try:
        wep = WorkloadEndpoint.model_validate(wep_doc("a", "ns6", NODE, "10.6.0.1"))
        with pytest.raises(RuntimeError, match="policy programming failed"):
            await agent.endpoint_ready(wep)
        assert not agent.ready.is_set()
        assert value(agent.m_errors, kind="full") >= 1
        assert "nft" in agent.health()["last_error"]
        errors = value(agent.m_errors, kind="full")
        await until(lambda: value(agent.m_errors, kind="full") > errors, timeout=5)  # retried
    finally:
        await stop(agent, task)
