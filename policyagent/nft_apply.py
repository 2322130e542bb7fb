"""Apply rendered nftables scripts, optionally inside a netns.

In-process through libnftables (the library ``nft`` itself is built on) by way of the
nftables project's own Python binding (Debian ``python3-nftables``, module ``nftables``)
when it loads, else one ``nft -f -`` process per transaction. Either way a script is one
atomic transaction, exactly as ``nft -f`` makes it; errors carry nft's message and the
offending script lines.

The library saves the process start (~5-10 ms a transaction here) and, more, keeps its cache
of the table between transactions while the ruleset generation is unchanged (nft fetches the
table's chains and sets before evaluating a script: ~0.8 MB of netlink dump with 1000
endpoints). One context per network namespace: a context's netlink socket lives in the
namespace it was opened in, so the context for the calling thread's own namespace is kept
(what the agent uses), while one for a named namespace is opened on a thread that entered it
and freed after the call (a kept socket would keep a deleted namespace alive).
``TORTIE_NFT=cli`` in the environment forces the ``nft`` process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from typing import Any

from agentkit.netns import run_in_netns
from policyagent.nft_render import DEFAULT_TABLE, render_table_delete

__all__ = ["NftError", "apply", "backend", "check", "delete_table", "list_table",
           "read_counters", "release", "run"]

NFT = "nft"
LIBRARY = "libnftables.so.1"
_LOCATION = re.compile(r"^(?:[^:\n]*):(\d+):(\d+)(?:-(\d+))?: Error", re.MULTILINE)


class NftError(RuntimeError):
    """``nft`` refused a script: ``message`` (nft's stderr) and ``lines`` (offending lines)."""

    def __init__(self, message: str, lines: list[tuple[int, str]] | None = None) -> None:
        self.message = message.strip()
        self.lines = lines or []
        shown = "".join(f"\n  line {n}: {text}" for n, text in self.lines)
        super().__init__(f"nft failed: {self.message}{shown}")


def _error(stderr: str, script: str | None) -> NftError:
    lines: list[tuple[int, str]] = []
    if script is not None:
        text = script.splitlines()
        for m in _LOCATION.finditer(stderr):
            n = int(m.group(1))
            if 1 <= n <= len(text) and (n, text[n - 1]) not in lines:
                lines.append((n, text[n - 1].strip()))
    return NftError(stderr, lines)


# --- libnftables -----------------------------------------------------------------------------

def _binding() -> type[Any] | None:
    """The binding's ``Nftables`` class, ``None`` when it or libnftables is missing."""
    if os.environ.get("TORTIE_NFT") == "cli":
        return None
    try:
        from nftables import Nftables

        Nftables(LIBRARY)  # loads libnftables: fails here, not on first use
    except (ImportError, OSError, AttributeError):
        return None
    nftables_class: type[Any] = Nftables
    return nftables_class


_NFTABLES = _binding()


class _Released(Exception):
    """The context was freed (:func:`release`) while a caller held it."""


class _Context:
    """One libnftables context (not thread-safe itself: calls are serialised)."""

    def __init__(self, nftables_class: type[Any]) -> None:
        self.nft: Any = nftables_class(LIBRARY)
        self.lock = threading.Lock()

    def run(self, args: list[str], stdin: str | None) -> str:
        """What ``nft <args>`` does (``-j``, ``-c``, ``-f -`` with ``stdin``, a command)."""
        as_json = "-j" in args
        dry = "-c" in args
        rest = [a for a in args if a not in ("-j", "-c")]
        with self.lock:
            nft = self.nft
            if nft is None:
                raise _Released
            nft.set_json_output(as_json)
            nft.set_dry_run(dry)
            try:
                if rest == ["-f", "-"]:
                    # from a file, so that errors carry line numbers as nft -f reports them
                    fd = os.memfd_create("nft-script", os.MFD_CLOEXEC)
                    try:
                        data = memoryview((stdin or "").encode())
                        while data:
                            data = data[os.write(fd, data):]
                        rc, out, err = nft.cmd_from_file(f"/proc/self/fd/{fd}")
                    finally:
                        os.close(fd)
                else:
                    rc, out, err = nft.cmd(" ".join(rest))
            finally:
                nft.set_dry_run(False)
                nft.set_json_output(False)
        if rc != 0:
            raise _error(err or f"libnftables returned {rc}", stdin)
        return str(out)

    def free(self) -> None:
        """Drop the context: the binding frees it (and its netlink socket) when collected,
        which CPython does at once as nothing else refers to it."""
        self.nft = None


_KEPT: dict[tuple[int, int], _Context] = {}  # by the (dev, inode) of the thread's netns
_KEPT_LOCK = threading.Lock()


def _own_context() -> _Context | None:
    """The kept context of the calling thread's network namespace."""
    if _NFTABLES is None:
        return None
    try:
        st = os.stat("/proc/thread-self/ns/net")
        key = (st.st_dev, st.st_ino)
        with _KEPT_LOCK:
            ctx = _KEPT.get(key)
            if ctx is None:
                ctx = _KEPT[key] = _Context(_NFTABLES)
    except OSError:
        return None  # the nft process then
    return ctx


def release() -> None:
    """Free the kept contexts (each holds a netlink socket in its namespace)."""
    with _KEPT_LOCK:
        for ctx in _KEPT.values():
            with ctx.lock:
                ctx.free()
        _KEPT.clear()


def _netns_context(netns: str) -> _Context | None:
    """A fresh context opened in the named namespace (the caller frees it); ``None`` when
    that fails (the nft process then reports what is wrong)."""
    assert _NFTABLES is not None
    nftables_class = _NFTABLES
    try:
        return run_in_netns(f"/var/run/netns/{netns}", lambda: _Context(nftables_class))
    except Exception:
        return None


def backend() -> str:
    """``libnftables`` or ``nft`` (the process): what :func:`run` uses."""
    return "libnftables" if _NFTABLES is not None else "nft"


# --- the commands ----------------------------------------------------------------------------

def _cmd(args: list[str], netns: str | None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, NFT, *args]


def _run_cli(args: list[str], netns: str | None, stdin: str | None, timeout: float) -> str:
    proc = subprocess.run(_cmd(args, netns), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise _error(proc.stderr or f"exit status {proc.returncode}", stdin)
    return proc.stdout


def run(args: list[str], netns: str | None = None, stdin: str | None = None,
        timeout: float = 30.0) -> str:
    """Run ``nft <args>`` and return its stdout; :class:`NftError` on failure.

    In-process when libnftables loaded and ``args`` are what it is used for here (``-f -``
    with ``stdin``, or a command, with ``-j`` / ``-c``); ``timeout`` then does not apply."""
    rest = [a for a in args if a not in ("-j", "-c")]
    script = rest == ["-f", "-"] and stdin is not None
    command = stdin is None and not any(a.startswith("-") for a in rest)
    if _NFTABLES is not None and (script or command):
        if netns is None:
            ctx = _own_context()
            if ctx is not None:
                try:
                    return ctx.run(args, stdin)
                except _Released:
                    pass
        else:
            ctx = _netns_context(netns)
            if ctx is not None:
                try:
                    return ctx.run(args, stdin)
                finally:
                    ctx.free()
    return _run_cli(args, netns, stdin, timeout)


def apply(script: str, netns: str | None = None) -> None:
    """Apply ``script`` as one atomic transaction (``nft -f -``)."""
    run(["-f", "-"], netns, stdin=script)


def check(script: str, netns: str | None = None) -> None:
    """Only check ``script`` (``nft -c -f -``): parse and validate against the kernel."""
    run(["-c", "-f", "-"], netns, stdin=script)


def delete_table(table: str = DEFAULT_TABLE, netns: str | None = None) -> None:
    """Delete ``table inet <table>`` (no error when it does not exist)."""
    apply(render_table_delete(table), netns)


def list_table(table: str = DEFAULT_TABLE, netns: str | None = None) -> dict[str, Any]:
    """``nft -j list table inet <table>`` parsed."""
    result: dict[str, Any] = json.loads(run(["-j", "list", "table", "inet", table], netns))
    return result


def read_counters(table: str = DEFAULT_TABLE, netns: str | None = None
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
