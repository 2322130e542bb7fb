"""Apply rendered nftables scripts with the ``nft`` binary, optionally inside a netns.

Thin and synchronous: one ``nft -f -`` process per transaction (the script on stdin), so a
transaction is atomic exactly as ``nft -f`` makes it. Errors carry nft's message and the
offending script lines.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from policyagent.nft_render import render_table_delete

__all__ = ["NftError", "apply", "check", "delete_table", "list_table", "read_counters", "run"]

NFT = "nft"
_LOCATION = re.compile(r"^(?:[^:\n]*):(\d+):(\d+)(?:-(\d+))?: Error", re.MULTILINE)


class NftError(RuntimeError):
    """``nft`` refused a script: ``message`` (nft's stderr) and ``lines`` (offending lines)."""

    def __init__(self, message: str, lines: list[tuple[int, str]] | None = None) -> None:
        self.message = message.strip()
        self.lines = lines or []
        shown = "".join(f"\n  line {n}: {text}" for n, text in self.lines)
        super().__init__(f"nft failed: {self.message}{shown}")


def _cmd(args: list[str], netns: str | None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, NFT, *args]


def run(args: list[str], netns: str | None = None, stdin: str | None = None,
        timeout: float = 30.0) -> str:
    """Run ``nft <args>`` and return its stdout; :class:`NftError` on failure."""
    proc = subprocess.run(_cmd(args, netns), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        lines: list[tuple[int, str]] = []
        if stdin is not None:
            script = stdin.splitlines()
            for m in _LOCATION.finditer(proc.stderr):
                n = int(m.group(1))
                if 1 <= n <= len(script) and (n, script[n - 1]) not in lines:
                    lines.append((n, script[n - 1].strip()))
        raise NftError(proc.stderr or f"exit status {proc.returncode}", lines)
    return proc.stdout


def apply(script: str, netns: str | None = None) -> None:
    """Apply ``script`` as one atomic transaction (``nft -f -``)."""
    run(["-f", "-"], netns, stdin=script)


def check(script: str, netns: str | None = None) -> None:
    """Only check ``script`` (``nft -c -f -``): parse and validate against the kernel."""
    run(["-c", "-f", "-"], netns, stdin=script)


def delete_table(table: str = "tortie", netns: str | None = None) -> None:
    """Delete ``table inet <table>`` (no error when it does not exist)."""
    apply(render_table_delete(table), netns)


def list_table(table: str = "tortie", netns: str | None = None) -> dict[str, Any]:
    """``nft -j list table inet <table>`` parsed."""
    result: dict[str, Any] = json.loads(run(["-j", "list", "table", "inet", table], netns))
    return result


def read_counters(table: str = "tortie", netns: str | None = None
                  ) -> dict[str, tuple[int, int]]:
    """``{comment: (packets, bytes)}`` over every rule with a counter and a comment.

    Policy rules are commented with their rule id, so this is per rule id (summed over the nft
    rules one rule id renders to, e.g. one per address family)."""
    out: dict[str, tuple[int, int]] = {}
    for item in list_table(table, netns).get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                pk, by = out.get(rule["comment"], (0, 0))
                out[rule["comment"]] = (pk + int(counter["packets"]),
                                        by + int(counter["bytes"]))
    return out
