"""The main job, for now: a private etcd, the seed articles' YAML applied with ``tortie``,
and what ``tortie get`` shows of it.

Run as ``python -m lab.demo`` (README). Everything it starts is stopped and removed at the
end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys

from lab.etcd import etcd_available, run_etcd
from lab.seeds import APPLIES, EXAMPLES, REJECTED, SEEDS_DIR

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def tortie(endpoint: str, *args: str, stdin: str | None = None) -> int:
    """Run the real CLI as a user would, showing the command and what it printed."""
    shown = " ".join(a if " " not in a else f"'{a}'" for a in args)
    print(f"{BOLD}$ tortie {shown}{RESET}" + (f"  {DIM}< {stdin_label(stdin)}{RESET}"
                                              if stdin else ""))
    env = dict(os.environ, TORTIE_ETCD_ENDPOINTS=endpoint)
    p = subprocess.run([sys.executable, "-m", "ctl.main", *args], input=stdin, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, check=False)
    sys.stdout.write(p.stdout)
    print()
    return p.returncode


def stdin_label(text: str | None) -> str:
    first = next((line for line in (text or "").splitlines() if line.strip()), "")
    return first.strip()[:60]


def main() -> int:
    if not etcd_available():
        print("error: etcd is not installed: run 'sudo bash scripts/install.sh' first",
              file=sys.stderr)
        return 1
    if not SEEDS_DIR.is_dir():
        print(f"error: the seed articles are not at {SEEDS_DIR} (set TORTIE_SEEDS_DIR)",
              file=sys.stderr)
        return 1
    with run_etcd() as etcd:
        ep = etcd.endpoint
        print(f"{BOLD}etcd{RESET} running at {ep} (pid {etcd.pid})\n")
        failures = 0
        applied = [e for e in EXAMPLES if e.outcome == APPLIES]
        print(f"{BOLD}== applying the {len(applied)} well-formed examples of the seed "
              f"articles{RESET}\n")
        for ex in applied:
            print(f"{DIM}# {ex.id}{RESET}")
            failures += tortie(ep, ex.verb, "-f", "-", stdin=ex.text()) != 0
        print(f"{BOLD}== the malformed ones are rejected, naming the problem{RESET}\n")
        for ex in [e for e in EXAMPLES if e.outcome == REJECTED][:3]:
            print(f"{DIM}# {ex.id}{RESET}")
            failures += tortie(ep, ex.verb, "-f", "-", stdin=ex.text()) == 0
        print(f"{BOLD}== what the datastore holds{RESET}\n")
        tortie(ep, "get", "globalnetworkpolicies", "-o", "wide")
        tortie(ep, "get", "k8snetworkpolicies", "-A")
        tortie(ep, "get", "hostendpoints")
        tortie(ep, "patch", "kubecontrollersconfiguration", "default",
               '--patch={"spec": {"controllers": {"node": {"hostEndpoint": '
               '{"autoCreate": "Enabled"}}}}}')
        tortie(ep, "get", "gnp", "bar-external-consumer", "-o", "yaml")
        tortie(ep, "delete", "gnp", "global-access")
    print("etcd stopped and its data removed.")
    if failures:
        print(f"error: {failures} step(s) did not behave as the articles say", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
