"""agentkit: back-off, metrics, the HTTP server of /metrics and health, the agent supervisor,
logging."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram

from agentkit import http
from agentkit.agent import supervise
from agentkit.backoff import Backoff
from agentkit.logs import KeyValueFormatter
from agentkit.metrics import CONTENT_TYPE, DEFAULT_BUCKETS, new_registry, render, value
from agentkit.netns import NetnsGone, NotANetns, netns_identity, read_sysctl


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.delay == 0.5 and b.next() == 0.5
    assert [Backoff(0.2, 30.0).nth(n) for n in (1, 2, 3, 9, 10_000)] == [0.2, 0.4, 0.8, 30.0,
                                                                         30.0]
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_registries_are_separate_and_render_the_text_format() -> None:
    one, two = new_registry(), new_registry()
    c1 = Counter("tortie_test_things_total", "Things", ("kind",), registry=one)
    Counter("tortie_test_things_total", "Things", ("kind",), registry=two)  # no clash
    g = Gauge("tortie_test_level", "Level", registry=one)
    h = Histogram("tortie_test_seconds", "Time", buckets=DEFAULT_BUCKETS, registry=one)
    c1.labels(kind="a").inc(2)
    g.set(7)
    h.observe(0.02)
    text = render(one)
    assert 'tortie_test_things_total{kind="a"} 2.0' in text.splitlines()
    assert "tortie_test_level 7.0" in text.splitlines()
    assert 'tortie_test_seconds_bucket{le="0.025"} 1.0' in text.splitlines()
    assert "_created" not in text  # only the series each metric names
    assert "tortie_test_things_total" not in render(two).split("# TYPE")[-1].split("\n", 1)[1]
    assert value(c1, kind="a") == 2.0 and value(c1, kind="b") == 0.0 and value(g) == 7.0
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_http_routes_methods_and_errors() -> None:
    async def main() -> None:
        routes: dict[str, http.Route] = {
            "/healthz": lambda: (503, "application/json", json.dumps({"ok": False})),
            "/metrics": lambda: (200, CONTENT_TYPE, "x 1\n")}
        server = await http.serve(routes, "127.0.0.1", 0)
        port = http.bound_port(server)
        try:
            status, headers, body = await _request(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
            assert (status, headers["Content-Type"], body) == (200, CONTENT_TYPE, "x 1\n")
            assert headers["Content-Length"] == "4" and headers["Connection"] == "close"
            status, headers, body = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert status == 200 and body == "" and headers["Content-Length"] == "4"
            assert (await _request(port, b"GET /healthz HTTP/1.0\r\n\r\n"))[0] == 503
            assert (await _request(port, b"GET /nope HTTP/1.1\r\n\r\n"))[:3:2] == (
                404, "not found\n")
            assert (await _request(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await _request(port, b"garbage\r\n\r\n"))[0] == 400
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


class _Flaky:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError("boom")

    async def close(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {}


def test_supervise_restarts_a_failing_agent_until_it_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    agent = _Flaky(failures=2)
    with caplog.at_level(logging.ERROR, logger="tortie.agent"):
        asyncio.run(asyncio.wait_for(supervise(agent, Backoff(0.001, 0.002)), 5))
    assert agent.runs == 3
    assert [r.getMessage() for r in caplog.records] == ["agent failed; restarting it"] * 2


def test_key_value_formatter() -> None:
    record = logging.LogRecord("tortie.x", logging.WARNING, __file__, 1, "a b", (), None)
    record.fields = {"k": "v", "q": 'x "y"', "e": ""}
    line = KeyValueFormatter().format(record)
    assert line.split(" ", 1)[1] == (
        'level=warning logger=tortie.x msg="a b" k=v q="x \\"y\\"" e=""')


def test_netns_helpers_name_what_is_wrong(tmp_path: Any) -> None:
    with pytest.raises(NetnsGone):
        netns_identity(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("not a namespace")
    with pytest.raises(NotANetns):
        netns_identity(str(tmp_path / "file"))
    with pytest.raises(NetnsGone):  # an unmounted namespace leaves an empty file
        (tmp_path / "empty").write_text("")
        netns_identity(str(tmp_path / "empty"))
    assert read_sysctl("no/such/sysctl") is None
