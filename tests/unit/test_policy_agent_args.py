"""Whether tortie-node runs the policy agent, from its command line (no datastore needed)."""

from __future__ import annotations

from node.agents import NodeContext
from node.main import parse_args
from node.metrics import Registry
from policyagent.agent import PolicyAgent, make_agent


def test_no_policy_flag_turns_the_agent_off() -> None:
    def ctx(argv: list[str]) -> NodeContext:
        return NodeContext(node="n", store=None, resources=None,  # type: ignore[arg-type]
                           metrics=Registry(), args=parse_args(["--node-name", "n", *argv]))

    assert make_agent(ctx(["--no-policy"])) is None
    agent = make_agent(ctx([]))
    assert isinstance(agent, PolicyAgent) and agent.table == "tortie"
    assert agent.health()["synced"] is False
