"""The policy agent's logic (policyagent/agent.py) on the in-memory store and a recording
applier: which programming it chooses (full, sets, chain, endpoints), the fall-back to a
full programming when nft refuses, retries, endpoint_ready batching, resources skipped,
catching up after a restart, the per-rule counters.  The same agent on a real etcd and a
real nftables table is tests/integration/test_policy_agent.py."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agentkit.agent import NodeContext
from agentkit.metrics import new_registry, value
from agentkit.metrics import render as render_metrics
from datastore.backend import KVStore
from datastore.keys import resource_key
from datastore.memory import MemoryStore
from datastore.model_endpoints import WorkloadEndpoint
from datastore.resources import Resources
from policyagent import agent as agent_module
from policyagent.agent import PolicyAgent
from policyagent.applier import RecordingApplier
from policyagent.nft_render import policy_chain, render
from tests.support.wait import until

NODE = "n1"
KINDS = ("full", "sets", "chain", "endpoints")


@pytest.fixture(autouse=True)
def no_host_interfaces(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent's host interface poll reads nothing of this machine."""
    monkeypatch.setattr(agent_module, "read_interfaces", lambda netns=None: {})
    yield


def wep_doc(name: str, ns: str, node: str, ip: str, labels: dict[str, str] | None = None,
            iface: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"projectcalico.org/namespace": ns,
                                    "projectcalico.org/orchestrator": "k8s",
                                    **(labels or {})}},
            "spec": {"node": node, "orchestrator": "k8s", "pod": name, "endpoint": "eth0",
                     "ipNetworks": [f"{ip}/32"], "profiles": [f"kns.{ns}"],
                     "interfaceName": iface or f"cali{name:0>11}"[:15]}}


def gnp_doc(name: str, selector: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"selector": selector, "types": ["Ingress"], "ingress": ingress}}


async def put(store: KVStore, plural: str, doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    key = resource_key(plural, meta["name"], meta.get("namespace"))
    await store.put(key, doc)
    return key


def make_agent(store: KVStore, applier: RecordingApplier, **kw: Any) -> PolicyAgent:
    ctx = NodeContext(node=NODE, store=store, resources=Resources(store), metrics=new_registry(),
                      args=argparse.Namespace())
    return PolicyAgent(ctx, table="tortie", counters_interval=0.0, applier=applier, **kw)


async def start(agent: PolicyAgent) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.ready.wait(), 5)
    return task


async def stop(agent: PolicyAgent, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.close()


def programs(agent: PolicyAgent) -> int:
    return int(sum(value(agent.m_programs, kind=k) for k in KINDS))


async def test_resources_to_scripts_and_smallest_transactions() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    await put(store, "workloadendpoints", wep_doc("a", "ns1", NODE, "10.1.0.1", {"app": "a"},
                                                  "caliaaaaaaaaaaa"))
    await put(store, "globalnetworkpolicies", gnp_doc(
        "from-b", "app == 'a'", [{"action": "Allow", "source": {"selector": "app == 'b'"}}]))
    # the rule's source set is not empty (a rule needing a member of an empty set is left
    # out, and comes with the set's first member: a chain change, not a set change)
    await put(store, "workloadendpoints", wep_doc("b0", "ns1", "other", "10.1.0.9",
                                                  {"app": "b"}))
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        assert applier.kinds == ["full"]
        full = applier.last_full or ""
        assert "caliaaaaaaaaaaa" in full and policy_chain("gnp:from-b", "ingress") in full
        counts = agent.m_programs
        assert value(counts, kind="full") == 1
        # a remote endpoint joins the rule's selector: only set elements change
        await put(store, "workloadendpoints", wep_doc("b", "ns1", "other", "10.1.0.2",
                                                      {"app": "b"}))
        await until(lambda: value(counts, kind="sets") == 1)
        assert applier.applied[-1][0] == "incremental" and "10.1.0.2" in applier.applied[-1][1]
        # the policy's rules change: only its chain is replaced
        await put(store, "globalnetworkpolicies", gnp_doc(
            "from-b", "app == 'a'", [{"action": "Allow", "protocol": "TCP",
                                      "source": {"selector": "app == 'b'"}}]))
        await until(lambda: value(counts, kind="chain") == 1)
        script = applier.applied[-1][1]
        assert policy_chain("gnp:from-b", "ingress") in script and "meta l4proto" in script
        assert "caliaaaaaaaaaaa" not in script  # nothing else
        # a bad resource: skipped, counted, the rest goes on
        await store.put(resource_key("globalnetworkpolicies", "broken"),
                        {"metadata": {"name": "broken"}, "spec": {"order": "not a number"}})
        await until(lambda: value(agent.m_skipped, kind="globalnetworkpolicies") == 1)
        # a delete reaches the table: an endpoint going is a structural change
        await store.delete(resource_key("workloadendpoints", "a", "ns1"))
        await until(lambda: value(counts, kind="full") + value(counts, kind="endpoints") >= 2)
        assert value(counts, kind="endpoints") == 1
        assert value(agent.m_errors, kind="full") == 0
        h = agent.health()
        assert h["synced"] and h["last_error"] == "" and h["endpoints"] == 0
        assert h["programs"] == 4 and h["last_program_kind"] == "endpoints"
    finally:
        await stop(agent, task)


async def test_nothing_is_programmed_when_nothing_changed() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        # an endpoint of another node no policy selects: the model stays the same
        key = await put(store, "workloadendpoints", wep_doc("x", "ns1", "other", "10.9.0.1"))
        await until(lambda: agent._syncer is not None and key in agent._syncer.cache)
        await asyncio.sleep(0.05)
        assert applier.kinds == ["full"] and programs(agent) == 1
    finally:
        await stop(agent, task)


async def test_a_refused_incremental_change_falls_back_to_a_full_table() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    await put(store, "workloadendpoints", wep_doc("a", "ns1", NODE, "10.1.0.1", {"app": "a"}))
    await put(store, "globalnetworkpolicies", gnp_doc(
        "from-b", "app == 'a'", [{"action": "Allow", "source": {"selector": "app == 'b'"}}]))
    # the rule's source set is not empty (a rule needing a member of an empty set is left
    # out, and comes with the set's first member: a chain change, not a set change)
    await put(store, "workloadendpoints", wep_doc("b0", "ns1", "other", "10.1.0.9",
                                                  {"app": "b"}))
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        applier.refuse_incremental = 1
        await put(store, "workloadendpoints", wep_doc("b", "ns1", "other", "10.1.0.2",
                                                      {"app": "b"}))
        await until(lambda: value(agent.m_programs, kind="full") == 2)
        assert [kind for kind, _ in applier.refused] == ["incremental"]
        assert applier.kinds == ["full", "full"]
        assert "10.1.0.2" in (applier.last_full or "")
        assert value(agent.m_errors, kind="sets") == 1 and value(agent.m_errors, kind="full") == 0
        assert value(agent.m_programs, kind="sets") == 0
        # the next change is incremental again
        await put(store, "workloadendpoints", wep_doc("c", "ns1", "other", "10.1.0.3",
                                                      {"app": "b"}))
        await until(lambda: value(agent.m_programs, kind="sets") == 1)
    finally:
        await stop(agent, task)


async def test_a_refused_programming_fails_the_add_and_is_retried() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    applier.refuse_all = True
    agent = make_agent(store, applier)
    agent.retry_first = 0.01
    task = asyncio.create_task(agent.run())
    try:
        wep = WorkloadEndpoint.model_validate(wep_doc("a", "ns6", NODE, "10.6.0.1"))
        with pytest.raises(RuntimeError, match="policy programming failed"):
            await agent.endpoint_ready(wep)
        assert not agent.ready.is_set()
        assert value(agent.m_errors, kind="full") >= 1
        assert "nft" in agent.health()["last_error"]
        errors = value(agent.m_errors, kind="full")
        await until(lambda: value(agent.m_errors, kind="full") > errors)  # retried
        applier.refuse_all = False
        await asyncio.wait_for(agent.ready.wait(), 5)  # ... until nft takes it
        assert applier.kinds == ["full"] and len(applier.refused) >= 2
        assert agent.health()["last_error"] == ""
    finally:
        await stop(agent, task)


async def test_endpoint_ready_programs_before_returning_and_batches() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        base = programs(agent)
        weps = [WorkloadEndpoint.model_validate(
            wep_doc(f"p{i}", "ns2", NODE, f"10.2.0.{i + 1}", iface=f"calib{i:010d}"))
            for i in range(20)]
        # (not in the datastore: only endpoint_ready tells the agent about them)
        await agent.endpoint_ready(weps[0])
        assert "calib0000000000" in applier.applied[-1][1]
        await asyncio.gather(*(agent.endpoint_ready(w) for w in weps[1:]))
        scripts = "".join(s for _, s in applier.applied)
        assert all(f"calib{i:010d}" in scripts for i in range(20))
        done = programs(agent) - base
        assert 1 <= done < 19, done
        # the watch delivering the CNI's own write later changes nothing
        await put(store, "workloadendpoints", wep_doc("p0", "ns2", NODE, "10.2.0.1",
                                                      iface="calib0000000000"))
        await asyncio.sleep(0.05)
        assert programs(agent) - base == done
    finally:
        await stop(agent, task)


async def test_run_again_after_a_failure_catches_up_with_deletes() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    key = await put(store, "workloadendpoints", wep_doc("a", "ns4", NODE, "10.4.0.1",
                                                        iface="calidddddddddd"))
    agent = make_agent(store, applier)
    task = await start(agent)
    task.cancel()  # as if run() had failed: tortie-node calls run() again
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.delete(key)  # missed while not running
    await put(store, "workloadendpoints", wep_doc("b", "ns4", NODE, "10.4.0.2",
                                                  iface="calieeeeeeeeee"))
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: value(agent.m_programs, kind="full") == 2)
        table = applier.last_full or ""
        assert "calieeeeeeeeee" in table and "calidddddddddd" not in table
    finally:
        await stop(agent, task)


async def test_felix_endpoint_to_host_action_reprograms_the_table() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        assert 'iifname "cali*" accept' in (applier.last_full or "")
        await put(store, "felixconfigurations", {
            "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"defaultEndpointToHostAction": "Drop"}})
        await until(lambda: value(agent.m_programs, kind="full") == 2)
        assert "workload to host" in (applier.last_full or "")
    finally:
        await stop(agent, task)


async def test_a_reused_address_leaves_the_old_endpoints_labels_behind() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    await put(store, "workloadendpoints", wep_doc("srv", "ns5", NODE, "10.5.0.1",
                                                  {"app": "srv"}, "califfffffffff"))
    await put(store, "globalnetworkpolicies", gnp_doc(
        "admins", "app == 'srv'", [{"action": "Allow", "source": {"selector": "role == 'admin'"}}]))
    # an admin pod that is gone, but whose delete the agent has not seen yet
    await put(store, "workloadendpoints", wep_doc("gone", "ns5", NODE, "10.5.0.2",
                                                  {"role": "admin"}, "caligggggggggg"))
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        assert any("elements" in line and "10.5.0.2" in line
                   for line in (applier.last_full or "").splitlines())  # in the admins' set
        new = WorkloadEndpoint.model_validate(
            wep_doc("next", "ns5", NODE, "10.5.0.2", {}, "calihhhhhhhhhh"))
        await agent.endpoint_ready(new)
        assert agent._applied is not None
        table = render(agent._applied, "tortie")  # what the kernel has now
        assert "calihhhhhhhhhh" in table and "caligggggggggg" not in table
        lines = [line for line in table.splitlines() if "10.5.0.2" in line]
        # only in the new pod's anti-spoofing rule: in no selector's set any more
        assert lines and all("saddr" in line for line in lines), lines
    finally:
        await stop(agent, task)


async def test_rule_counters_are_read_through_the_applier() -> None:
    store, applier = MemoryStore(), RecordingApplier()
    applier.counters = {"gnp:from-b/ingress/0": (3, 180)}
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        agent.counters_interval = 0.01
        render_metrics(agent.ctx.metrics)  # starts a read; the next scrape shows it
        rule = 'tortie_policy_rule_packets_total{rule_id="gnp:from-b/ingress/0"} 3.0'
        await until(lambda: rule in render_metrics(agent.ctx.metrics).splitlines())
        assert 'tortie_policy_rule_bytes_total{rule_id="gnp:from-b/ingress/0"} 180.0' in \
            render_metrics(agent.ctx.metrics).splitlines()
    finally:
        await stop(agent, task)


def test_no_policy_flag_turns_the_agent_off() -> None:
    from node.main import parse_args
    from policyagent.agent import make_agent

    def ctx(argv: list[str]) -> NodeContext:
        return NodeContext(node="n", store=None, resources=None,
                           metrics=new_registry(), args=parse_args(["--node-name", "n", *argv]))

    assert make_agent(ctx(["--no-policy"])) is None
    agent = make_agent(ctx([]))
    assert isinstance(agent, PolicyAgent) and agent.table == "tortie"
    assert agent.health()["synced"] is False


async def test_the_idle_program_loop_beats_its_heartbeat(monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    monkeypatch.setattr(agent_module, "HEARTBEAT_INTERVAL", 0.02)
    store, applier = MemoryStore(), RecordingApplier()
    agent = make_agent(store, applier)
    task = await start(agent)
    try:
        agent.heartbeat.last -= 100  # as if the loop had been stuck
        await until(lambda: agent.heartbeat.age() < 1, 5, "a beat while idle")
        before = programs(agent)
        await asyncio.sleep(0.1)
        assert programs(agent) == before  # the beats program nothing
    finally:
        await stop(agent, task)
