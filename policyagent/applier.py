"""Where the policy agent's rendered nftables go, behind one interface.

:class:`Applier` is the protocol: apply a full table, apply an incremental change, read the
per-rule counters.  :class:`NftApplier` (the default) hands the scripts to nft
(:mod:`policyagent.nft_apply`) in one network namespace; :class:`RecordingApplier` keeps them
in a list and can refuse some, so the agent's choice of programming (full, sets, chain,
endpoints; the fall-back to a full programming; retries) is tested without root.  The
methods are synchronous (the agent runs them with ``asyncio.to_thread``); a refused script
raises :class:`~policyagent.nft_apply.NftError`.
"""

from __future__ import annotations

import threading
from typing import Protocol

from policyagent import nft_apply
from policyagent.nft_apply import NftError

__all__ = ["Applier", "NftApplier", "RecordingApplier"]


class Applier(Protocol):
    """The nftables the policy agent programs (one table, in one namespace)."""

    def apply_full(self, script: str) -> None:
        """Replace the whole table with ``script`` (a full render) in one transaction."""
        ...

    def apply_incremental(self, script: str) -> None:
        """Apply ``script``, a change to the table in the kernel, in one transaction."""
        ...

    def read_counters(self) -> dict[str, tuple[int, int]]:
        """``{rule comment: (packets, bytes)}`` of the table's rules as they are now."""
        ...


class NftApplier:
    """nft, in the network namespace ``netns`` (None: the calling thread's)."""

    def __init__(self, table: str, netns: str | None = None) -> None:
        self.table = table
        self.netns = netns

    def apply_full(self, script: str) -> None:
        nft_apply.apply(script, self.netns)

    def apply_incremental(self, script: str) -> None:
        nft_apply.apply(script, self.netns)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        return nft_apply.read_counters(self.table, self.netns)


class RecordingApplier:
    """Records every script in :attr:`applied` as ``(kind, script)``, ``kind`` ``"full"`` or
    ``"incremental"``; refuses (:class:`NftError`) the next :attr:`refuse_full` full and
    :attr:`refuse_incremental` incremental scripts, and every script while
    :attr:`refuse_all` is set.  :meth:`read_counters` returns :attr:`counters`."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.refuse_full = 0
        self.refuse_incremental = 0
        self.refuse_all = False
        self.counters: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    @property
    def kinds(self) -> list[str]:
        """The kinds of the scripts applied, in order."""
        with self._lock:
            return [kind for kind, _ in self.applied]

    @property
    def last_full(self) -> str | None:
        """The last full table applied (what the kernel was last given whole)."""
        with self._lock:
            return next((s for kind, s in reversed(self.applied) if kind == "full"), None)

    def _apply(self, kind: str, script: str) -> None:
        with self._lock:
            budget = "refuse_full" if kind == "full" else "refuse_incremental"
            if self.refuse_all or getattr(self, budget) > 0:
                if not self.refuse_all:
                    setattr(self, budget, getattr(self, budget) - 1)
                self.refused.append((kind, script))
                raise NftError(f"Error: {kind} script refused (test)")
            self.applied.append((kind, script))

    def apply_full(self, script: str) -> None:
        self._apply("full", script)

    def apply_incremental(self, script: str) -> None:
        self._apply("incremental", script)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self.counters)
