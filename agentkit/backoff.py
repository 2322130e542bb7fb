"""Exponential back-off between retries: ``first``, twice that, ... up to ``cap`` seconds.

Kept here rather than taken from a retry library (``tenacity``, ``backoff``): those wrap a
call in a decorator and retry it, while Tortie's loops (the agent supervisor, the syncer,
the registrar, the work queue) run forever, reset after a success, and log the next delay;
a 30-line class says that more plainly than an adapter around a decorator would.
"""

from __future__ import annotations

#: the daemons' and agents' default: 0.5 s, doubling, at most 10 s
RETRY_MIN, RETRY_MAX = 0.5, 10.0


class Backoff:
    """The delay before the next retry (:attr:`delay`); :meth:`next` takes it and doubles
    it (capped), :meth:`reset` starts again from ``first`` after a success."""

    def __init__(self, first: float = RETRY_MIN, cap: float = RETRY_MAX) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"back-off needs 0 < first <= cap, got {first}, {cap}")
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the following one is twice as long (at most ``cap``)."""
        delay = self.delay
        self.delay = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first

    def nth(self, n: int) -> float:
        """The delay before retry number ``n`` (1, 2, ...) of one failing item, without
        changing :attr:`delay`: ``first * 2**(n-1)``, at most ``cap``."""
        if n <= 1:
            return self.first
        return min(self.first * 2.0 ** min(n - 1, 64), self.cap)
