"""The policy agent (issue 5): placeholder until it lands; tortie-node enforces no policy."""

from __future__ import annotations

import argparse

from node.agents import Agent, NodeContext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def make_agent(ctx: NodeContext) -> Agent | None:
    del ctx
    return None
