"""The agents a daemon runs, what they are given, and the loop that keeps each one running.

Each agent module (``policyagent.agent``, ``routing.agent``) provides

* ``add_arguments(parser)`` -- its daemon flags;
* ``make_agent(ctx) -> Agent | None`` -- the agent, or ``None`` when its flags turn it off.

An :class:`Agent` runs until cancelled (``run``), resyncs from the datastore after any
error by itself, sets ``ready`` once its first full sync is programmed, beats its
``heartbeat`` (:class:`agentkit.health.Heartbeat`) in its loops (at least every
``HEARTBEAT_INTERVAL`` while idle: ``/liveness`` fails when it stops), reports
``health()`` for ``/healthz`` and registers its metrics in ``ctx.metrics`` (a
``prometheus_client.CollectorRegistry``).  ``close()`` is called on shutdown after ``run``
was cancelled (e.g. to stop a child process); it must leave the dataplane as it is, so that
a restart opens no window without policy or routes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from agentkit.backoff import Backoff
from agentkit.health import AgentRecord, Heartbeat

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
    heartbeat: Heartbeat

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


async def supervise(agent: Agent, backoff: Backoff | None = None,
                    record: AgentRecord | None = None) -> None:
    """Run ``agent``; if it ever ends with an error, log it and start it again after a
    growing delay.  Returns when ``run`` returns; cancelling cancels the agent.  ``record``
    (for ``/liveness``) counts the failures and says why the task ended, if it does."""
    backoff = backoff or Backoff()
    record = record if record is not None else AgentRecord()
    while True:
        started = time.monotonic()
        try:
            await agent.run()
            record.ended = "run returned"
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            record.failed(f"{type(e).__name__}: {e}"[:500], time.monotonic() - started)
            log.exception("agent failed; restarting it", extra={"fields": {
                "agent": agent.name, "retry_s": f"{backoff.delay:g}",
                "failures_in_a_row": record.failures_in_a_row}})
        except BaseException as e:
            record.ended = f"{type(e).__name__}: {e}"[:500]
            raise
        await asyncio.sleep(backoff.next())
