"""The routing agent (issue 4): placeholder until it lands; tortie-node runs no routing."""

from __future__ import annotations

import argparse

from node.agents import Agent, NodeContext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def make_agent(ctx: NodeContext) -> Agent | None:
    del ctx
    return None
