"""Shared fixtures: a session etcd, a Store on it, and running ``async def`` tests.

``async def`` tests run on an event loop of their own; when they use the ``store`` fixture
they run on the loop that fixture's Store was created on (``aio_loop``).  The ``tools`` mark
(tests/support/tools.py) is checked before each test; the run ends with a count per layer
(each directory under tests/).
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from datastore import etcd_config
from datastore.store import Store
from lab.etcd import EtcdProcess, run_etcd
from tests.support.tools import require_tools

#: Upper bound for one async test body (pytest-timeout's limit is the backstop).
ASYNC_TEST_TIMEOUT = 60.0
WIPE_PREFIX = "/tortie/"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One etcd for the whole session (``.endpoint``, ``.config``, ``.pid``)."""
    require_tools("etcd")
    with run_etcd() as etcd:
        yield etcd


@pytest.fixture
def no_default_config_file(monkeypatch: pytest.MonkeyPatch, scratch_dir: Path) -> None:
    """The test never reads the machine's /etc/tortie/tortie.yaml."""
    monkeypatch.setattr(etcd_config, "DEFAULT_CONFIG_FILE", str(scratch_dir / "absent.yaml"))


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A temp directory removed after the test (pytest's tmp_path keeps old ones)."""
    path = Path(tempfile.mkdtemp(prefix="tortie-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


@pytest.fixture
def aio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop async tests and the ``store`` fixture share."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        _finish_loop(loop)


async def _wipe(store: Store) -> None:
    await store.delete_prefix(WIPE_PREFIX)


@pytest.fixture
def store(etcd_server: EtcdProcess, aio_loop: asyncio.AbstractEventLoop) -> Iterator[Store]:
    """A connected Store on the session etcd; ``/tortie/`` is wiped before and after."""
    s = Store(etcd_server.config)
    aio_loop.run_until_complete(s.__aenter__())
    try:
        aio_loop.run_until_complete(_wipe(s))
        yield s
    finally:
        try:
            cleaner = Store(etcd_server.config)
            aio_loop.run_until_complete(_wipe(cleaner))
            aio_loop.run_until_complete(cleaner.close())
        finally:
            aio_loop.run_until_complete(s.close())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests (bounded by ASYNC_TEST_TIMEOUT)."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    params = inspect.signature(func).parameters
    kwargs = {name: pyfuncitem.funcargs[name] for name in params if name in pyfuncitem.funcargs}
    coro: Coroutine[Any, Any, Any] = asyncio.wait_for(func(**kwargs), ASYNC_TEST_TIMEOUT)
    loop = pyfuncitem.funcargs.get("aio_loop")
    if isinstance(loop, asyncio.AbstractEventLoop):
        loop.run_until_complete(coro)
    else:
        own = asyncio.new_event_loop()
        try:
            own.run_until_complete(coro)
        finally:
            _finish_loop(own)
    return True


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdProcess) -> Iterator[str]:
    """The session etcd's URL for tests that drive the CLI; ``/tortie/`` wiped around them."""

    async def wipe() -> None:
        async with Store(etcd_server.config) as s:
            await _wipe(s)

    asyncio.run(wipe())
    try:
        yield etcd_server.endpoint
    finally:
        asyncio.run(wipe())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tools(*names): tools the test needs (tests/support/tools.py); missing "
        "ones skip it, or fail it under CI=true")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("tools"):
        require_tools(*mark.args)


#: The outcomes counted per layer, in the order printed.
OUTCOMES = ("passed", "skipped", "failed", "error", "xfailed", "xpassed")


def _layer(nodeid: str) -> str:
    parts = nodeid.split("::")[0].split("/")
    if parts[0] == "tests" and len(parts) > 2:
        return parts[1]
    return parts[0] if len(parts) > 1 else "."


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """``layer unit: N passed, M skipped, K failed (T s)``: one line per directory of tests/."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
    seconds: dict[str, float] = defaultdict(float)
    for outcome, reports in terminalreporter.stats.items():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                seconds[_layer(report.nodeid)] += report.duration
            elif not (isinstance(report, pytest.CollectReport) and report.nodeid):
                continue  # warnings and the like
            if outcome in OUTCOMES:
                counts[_layer(report.nodeid)][outcome] += 1
    if not counts:
        return
    terminalreporter.write_line("")
    for layer in sorted(counts):
        c = counts[layer]
        shown = [f"{c[o]} {o}" for o in OUTCOMES[:3]] + \
            [f"{c[o]} {o}" for o in OUTCOMES[3:] if c[o]]
        terminalreporter.write_line(
            f"layer {layer}: {', '.join(shown)} ({seconds[layer]:.1f} s)")
