"""Waiting for a condition: the one polling loop of the tests.

``await until(check)`` in ``async def`` tests (the event loop keeps running the code under
test between polls); ``until_sync(check)`` in plain tests.  Both return the first truthy
result of ``check()`` and raise AssertionError naming ``what`` and the last result when the
deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

#: Default deadline of one wait (seconds).
TIMEOUT = 10.0
#: Default pause between two polls (seconds).
INTERVAL = 0.05


class _Poll:
    """The deadline and the last result of one wait."""

    def __init__(self, timeout: float, what: str) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.what = what
        self.last: Any = None

    def done(self, value: Any) -> bool:
        self.last = value
        return bool(value)

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise AssertionError(f"not within {self.timeout}s: {self.what or 'the condition'}"
                                 f" (last: {self.last!r})")


async def until(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "", *,
                interval: float = INTERVAL, in_thread: bool = False,
                ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll ``check()`` until it is truthy and return that value.

    ``check`` may be a plain or an ``async`` callable; ``in_thread`` runs a plain one in a
    thread (for blocking checks such as ``ip`` commands); exceptions of the ``ignore`` types
    count as "not yet"."""
    poll = _Poll(timeout, what)
    while True:
        try:
            if in_thread and not inspect.iscoroutinefunction(check):
                value = await asyncio.to_thread(check)
            else:
                value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as e:
            poll.last = e
        else:
            if poll.done(value):
                return value
        poll.check_deadline()
        await asyncio.sleep(interval)


def until_sync(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "", *,
               interval: float = INTERVAL,
               ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """:func:`until` for plain (blocking) tests: ``check`` is a plain callable."""
    poll = _Poll(timeout, what)
    while True:
        try:
            value = check()
        except ignore as e:
            poll.last = e
        else:
            if poll.done(value):
                return value
        poll.check_deadline()
        time.sleep(interval)
