"""The main job: a 2-node lab, pods on a node reaching each other, what the datastore holds.

Run as ``python -m lab.demo`` (README). It uses the ``tortie`` commands a user would type,
shows each one and its output, and removes the lab at the end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

from lab.cluster import Lab
from lab.etcd import etcd_available
from lab.seeds import APPLIES, EXAMPLES, SEEDS_DIR

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")
TORTIE = [sys.executable, "-m", "ctl.main"]


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}\n", flush=True)


def tortie(*args: str, stdin: str | None = None, quiet: bool = False,
           shown: tuple[str, ...] | None = None) -> int:
    """Run the real CLI, showing the command (as typed: ``shown``) and what it printed."""
    if not quiet:
        text = " ".join(a if " " not in a else f"'{a}'" for a in (shown or args))
        print(f"{BOLD}$ tortie {text}{RESET}", flush=True)
    p = subprocess.run([*TORTIE, *args], input=stdin, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, check=False)
    if not quiet or p.returncode != 0:
        sys.stdout.write(p.stdout)
    return p.returncode


def in_lab(name: str, *args: str, stdin: str | None = None, quiet: bool = False) -> int:
    """A ``tortie`` command run next to the lab's etcd (``tortie lab exec -- tortie ...``)."""
    return tortie("lab", "exec", "--name", name, "--", *TORTIE, *args, stdin=stdin,
                  quiet=quiet, shown=("lab", "exec", "--name", name, "--", "tortie", *args))


def main() -> int:
    if not etcd_available():
        print("error: etcd is not installed: run 'sudo bash scripts/install.sh' first",
              file=sys.stderr)
        return 1
    name = f"demo{uuid.uuid4().hex[:4]}"
    failures = 0
    try:
        step("a lab: etcd and two nodes, each a network namespace running tortie-node")
        if tortie("lab", "up", "--name", name, "--nodes", "2") != 0:
            return 1
        step("pods are created as a runtime does it: a netns, then the CNI chain")
        for node, pod in (("node1", "shop/web"), ("node1", "shop/client"),
                          ("node2", "shop/db")):
            failures += tortie("lab", "pod", "add", "--name", name, node, pod) != 0
        web = Lab(name).load().pods["shop/web"]
        step(f"shop/client reaches shop/web ({web.ips[0]}) on the same node")
        failures += tortie("lab", "exec", "--name", name, "shop/client", "--",
                           "ping", "-c", "3", "-W", "2", web.ips[0]) != 0
        step("what IPAM and the datastore hold")
        in_lab(name, "ipam", "show", "--show-blocks")
        in_lab(name, "get", "workloadendpoints", "-A", "-o", "wide")
        in_lab(name, "get", "nodes", "-o", "wide")
        failures += in_lab(name, "ipam", "check") != 0
        if SEEDS_DIR.is_dir():
            applied = [e for e in EXAMPLES if e.outcome == APPLIES]
            step(f"the seed articles' {len(applied)} well-formed examples apply unchanged")
            for ex in applied:
                failures += in_lab(name, ex.verb, "-f", "-", stdin=ex.text(), quiet=True) != 0
            in_lab(name, "get", "globalnetworkpolicies", "-o", "wide")
    finally:
        step("removing the lab")
        tortie("lab", "down", "--name", name)
    if failures:
        print(f"error: {failures} step(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
