"""``tortie node status`` rendering (ctl/node.py)."""

from __future__ import annotations

from dataclasses import asdict

from ctl.node import render_status
from routing.bgp.api import PeerStatus

NOW = 1_800_000_000.0


def health(peers: list[PeerStatus] | None) -> dict:
    agents = {} if peers is None else {"routing": {"peers": [asdict(p) for p in peers]}}
    return {"status": "ok", "node": "node1", "agents": agents}


def test_table_like_calicoctl() -> None:
    text = render_status(health([
        PeerStatus("192.0.2.12", "mesh", "Established", NOW - 3725, received=3, sent=2),
        PeerStatus("192.0.2.2", "global", "Active", NOW - 5, info="connection refused"),
    ]), now=NOW)
    lines = text.splitlines()
    assert lines[0] == "tortie-node is running on node node1."
    assert "IPv4 BGP status" in lines
    header = next(line for line in lines if "PEER ADDRESS" in line)
    for col in ("PEER TYPE", "STATE", "SINCE", "UPTIME", "RECEIVED", "SENT", "INFO"):
        assert col in header
    mesh = next(line for line in lines if "192.0.2.12" in line)
    cells = [c.strip() for c in mesh.strip("|").split("|")]
    assert cells[1:3] == ["node-to-node mesh", "up"]
    assert cells[4:7] == ["01:02:05", "3", "2"] and cells[7] == "Established"
    other = [c.strip() for c in next(x for x in lines if "192.0.2.2 " in x).strip("|").split("|")]
    assert other[1:3] == ["global", "start"] and other[4] == "-"
    assert other[7] == "Active (connection refused)"
    assert "No IPv6 peers found." in text
    # every table line has the same width
    table = [line for line in lines if line.startswith(("+", "|"))]
    assert len({len(line) for line in table}) == 1


def test_no_peers_and_no_routing_agent() -> None:
    assert "No IPv4 peers found." in render_status(health([]), now=NOW)
    assert "routing agent is not running" in render_status(health(None), now=NOW)


# --- where it asks ------------------------------------------------------------------------------

def test_target_defaults_to_tortie_nodes_own_default() -> None:
    from ctl.node import target
    from node.main import parse_args

    args = parse_args(["--node-name", "n"])
    assert target(None, None, None) == (args.metrics_host, args.metrics_port)
    assert target("0.0.0.0:9091", None, None) == ("127.0.0.1", 9091)
    assert target("[::]:9091", None, None) == ("::1", 9091)
    assert target("192.0.2.5:9091", None, None) == ("192.0.2.5", 9091)
    assert target("0.0.0.0:9091", 9100, "10.0.0.1") == ("10.0.0.1", 9100)


def test_target_bad_address_names_the_option_and_the_variable() -> None:
    import pytest

    from ctl.common import CLIError
    from ctl.node import target

    with pytest.raises(CLIError, match=r"--metrics-address.*TORTIE_METRICS_ADDRESS"):
        target("9091", None, None)
    with pytest.raises(CLIError, match="--metrics-port"):
        target(None, 70000, None)


def test_status_reads_the_address_from_the_environment() -> None:
    """``TORTIE_METRICS_ADDRESS`` (what the kind DaemonSet sets) points the command at the
    node's port; a real HTTP server on the loopback answers."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from click.testing import CliRunner

    from ctl.node import node

    body = json.dumps(health([PeerStatus("192.0.2.12", "mesh", "Established", NOW)])).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(body if ok else b"")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        runner = CliRunner()
        r = runner.invoke(node, ["status"], env={"TORTIE_METRICS_ADDRESS": f"0.0.0.0:{port}"})
        assert r.exit_code == 0, r.output
        assert "192.0.2.12" in r.output and "node-to-node mesh" in r.output
        r = runner.invoke(node, ["status", "-o", "json"],
                          env={"TORTIE_METRICS_ADDRESS": f"127.0.0.1:{port}"})
        assert r.exit_code == 0 and json.loads(r.output)[0]["address"] == "192.0.2.12"
        # without it, the default port (nothing of ours there): a clear error naming the URL
        r = runner.invoke(node, ["status", "--metrics-port", str(port + 1 if port < 65535
                                                                  else port - 1)],
                          env={"TORTIE_METRICS_ADDRESS": f"127.0.0.1:{port}"})
        assert r.exit_code != 0 and "/healthz" in r.output
    finally:
        server.shutdown()
        server.server_close()


def test_ipv6_routes_over_the_ipv4_sessions() -> None:
    h = health([PeerStatus("192.0.2.12", "mesh", "Established", NOW - 60, received=4, sent=2)])
    h["agents"]["routing"]["families"] = {
        "ipv4": {"announced": 1, "learnt": 2, "routes": 3},
        "ipv6": {"announced": 1, "learnt": 2, "routes": 3}}
    text = render_status(h, now=NOW)
    v6 = text[text.index("IPv6 BGP status"):]
    assert "IPv6 routes ride the IPv4 sessions above" in v6
    assert "IPv6 routes: 1 announced, 2 learnt, 3 in the kernel" in v6
    assert "IPv4 routes: 1 announced, 2 learnt, 3 in the kernel" in text
    # a node without IPv6 routes says nothing of MP-BGP
    h["agents"]["routing"]["families"]["ipv6"] = {"announced": 0, "learnt": 0, "routes": 0}
    assert "ride the IPv4 sessions" not in render_status(h, now=NOW)
