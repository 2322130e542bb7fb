"""The agents a daemon runs, what they are given, and the loop that keeps each one running.

Each agent module (``policyagent.agent``, ``routing.agent``) provides

* ``add_arguments(parser)`` -- its daemon flags;
* ``make_agent(ctx) -> Agent | None`` -- the agent, or ``None`` when its flags turn it off.

An :class:`Agent` runs until cancelled (``run``), resyncs from the datastore after any
error by itself, sets ``ready`` once its first full sync is programmed, reports
``health()`` for ``/healthz`` and registers its metrics in ``ctx.metrics`` (a
``prometheus_client.CollectorRegistry``).  ``close()`` is called on shutdown after ``run``
was cancelled (e.g. to stop a child process); it must leave the dataplane as it is, so that
a restart opens no window without policy or routes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from agentkit.backoff import Backoff

if TYPE_CHECKING:  # types only: agentkit imports no Tortie package (datastore uses it)
    from datastore.backend import KVStore
    from datastore.resources import Resources

log = logging.getLogger("tortie.agent")


@dataclass
class NodeContext:
    node: str
    store: KVStore
    resources: Resources
    metrics: CollectorRegistry
    args: argparse.Namespace


class Agent(Protocol):
    name: str
    ready: asyncio.Event

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


async def supervise(agent: Agent, backoff: Backoff | None = None) -> None:
    """Run ``agent``; if it ever ends with an error, log it and start it again after a
    growing delay.  Returns when ``run`` returns; cancelling cancels the agent."""
    backoff = backoff or Backoff()
    while True:
        try:
            await agent.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent failed; restarting it", extra={"fields": {
                "agent": agent.name, "retry_s": f"{backoff.delay:g}"}})
        await asyncio.sleep(backoff.next())
