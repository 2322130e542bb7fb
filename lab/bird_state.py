"""What the lab keeps of its BIRD peer (``bird/state.json`` in the lab's directory), and
stopping it: what ``lab down`` needs of :mod:`lab.bird_peer` without the rest of it."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from agentkit.procs import stop_pid

STATE_FILE = "state.json"


@dataclass
class BirdInfo:
    netns: str
    address: str
    asn: int
    route_reflector: bool
    pid: int
    peers: list[str]
    ipv6: bool = False       # an IPv6 channel on every session (a dual-stack lab)
    over_ipv6: bool = False  # the sessions run over IPv6 (the nodes' IPv6 addresses)


def load(lab_dir: Path) -> BirdInfo | None:
    try:
        return BirdInfo(**json.loads((lab_dir / "bird" / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def save(lab_dir: Path, info: BirdInfo) -> None:
    run_dir = lab_dir / "bird"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATE_FILE).write_text(json.dumps(info.__dict__, indent=2))


def stop_bird(lab_dir: Path) -> None:
    """Stop the lab's BIRD by its PID (``lab down`` calls this); the namespace goes with
    the lab's other namespaces."""
    info = load(lab_dir)
    if info is not None:
        stop_pid(info.pid)
        with contextlib.suppress(FileNotFoundError):
            (lab_dir / "bird" / STATE_FILE).unlink()
