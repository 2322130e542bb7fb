"""The agents tortie-node runs beside the CNI handler, and what they are given.

Each agent module (``policyagent.agent``, ``routing.agent``) provides

* ``add_arguments(parser)`` -- its tortie-node flags;
* ``make_agent(ctx) -> Agent | None`` -- the agent, or ``None`` when its flags turn it off.

An :class:`Agent` runs until cancelled (``run``), resyncs from the datastore after any
error by itself, sets ``ready`` once its first full sync is programmed, reports
``health()`` for ``/healthz`` and registers its metrics in ``ctx.metrics``.  ``close()`` is
called on shutdown after ``run`` was cancelled (e.g. to stop a child process); it must leave
the dataplane as it is, so that a restart opens no window without policy or routes.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from datastore.backend import KVStore
from datastore.resources import Resources
from node.metrics import Registry


@dataclass
class NodeContext:
    node: str
    store: KVStore
    resources: Resources
    metrics: Registry
    args: argparse.Namespace


class Agent(Protocol):
    name: str
    ready: asyncio.Event

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> dict[str, Any]: ...
