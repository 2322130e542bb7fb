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
