"""The main job: a 3-node lab, pods on different nodes reaching each other under policy.

Run as ``python -m lab.demo`` (README). It uses the ``tortie`` commands a user would type,
shows each one and its output, and removes the lab at the end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from lab.cluster import ETCD_PORT, FABRIC_IP, Lab
from lab.etcd import etcd_available
from lab.seeds import APPLIES, EXAMPLES, SEEDS_DIR
from routing.kernel import PROTO as RTPROT_TORTIE

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


SHOP = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: web, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node2, containers: [{name: client, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {nodeName: node3, containers: [{name: other, image: none}]}
"""

WEB_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
"""

WEB_ALLOW = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
"""


def on_node(name: str, node: str, *args: str) -> int:
    """A ``tortie`` command run inside a node's namespace."""
    return tortie("lab", "exec", "--name", name, "--node", node, "--", *TORTIE, *args,
                  shown=("lab", "exec", "--name", name, "--node", node, "--", "tortie", *args))


def attempt(name: str, where: list[str], argv: list[str], expect: bool) -> int:
    """Run ``argv`` with ``tortie lab exec`` (``where``: a pod, or nothing for the fabric);
    returns 1 if it did not succeed or fail as expected."""
    ok = tortie("lab", "exec", "--name", name, *where, "--", *argv) == 0
    print(f"{DIM}-> {'reached' if ok else 'blocked'} "
          f"({'as expected' if ok == expect else 'NOT AS EXPECTED'}){RESET}")
    return 0 if ok == expect else 1


def ping(name: str, pod: str, ip: str, expect: bool) -> int:
    """Ping ``ip`` from ``pod``; returns 1 if the outcome is not the expected one."""
    return attempt(name, [pod], ["ping", "-c", "2", "-W", "1", "-i", "0.3", ip], expect)


def tcp(name: str, pod: str, ip: str, port: int) -> int:
    """A TCP connection from ``pod`` that must be dropped."""
    return attempt(name, [pod], ["timeout", "2", "bash", "-c", f"</dev/tcp/{ip}/{port}"],
                   expect=False)


def wait_routes(name: str, pods: int, timeout: float = 60.0) -> None:
    """Wait until every node has a BGP-learnt route to each other node's block."""
    deadline = time.monotonic() + timeout
    lab = Lab(name)
    st = lab.load()
    while time.monotonic() < deadline:
        missing = 0
        for node in st.nodes.values():
            out = subprocess.run(["ip", "netns", "exec", node.netns, "ip", "-4", "route",
                                  "show", "proto", str(RTPROT_TORTIE)], text=True,
                                 capture_output=True, check=False).stdout
            learnt = [line for line in out.splitlines() if " via " in line]
            missing += max(0, len(st.nodes) - 1 - len(learnt))
        if missing == 0:
            return
        time.sleep(0.5)
    print(f"{DIM}(routes still converging after {timeout:.0f} s){RESET}")


def main() -> int:
    if not etcd_available():
        print("error: etcd is not installed: run 'sudo bash scripts/install.sh' first",
              file=sys.stderr)
        return 1
    name = f"demo{uuid.uuid4().hex[:4]}"
    failures = 0
    try:
        step("a lab: etcd and three nodes, each a network namespace running tortie-node "
             "(CNI, IPAM, BGP with ExaBGP, nftables policy)")
        if tortie("lab", "up", "--name", name, "--nodes", "3") != 0:
            return 1
        step("the pods' Namespace and Pods (as tortie-kube-controllers mirrors them)")
        failures += in_lab(name, "apply", "-f", "-", stdin=SHOP) != 0
        step("pods are created as a runtime does it: a netns, then the CNI chain")
        for node, pod in (("node1", "shop/web"), ("node2", "shop/client"),
                          ("node3", "shop/other")):
            failures += tortie("lab", "pod", "add", "--name", name, node, pod) != 0
        st = Lab(name).load()
        web = st.pods["shop/web"].ips[0]
        step("every node announces its block over BGP; routes to the others' blocks are "
             f"learnt (proto {RTPROT_TORTIE})")
        wait_routes(name, len(st.pods))
        on_node(name, "node1", "node", "status")
        tortie("lab", "exec", "--name", name, "--node", "node1", "--", "ip", "route")
        step(f"pods on other nodes reach shop/web ({web}) on node1: no policy yet")
        failures += ping(name, "shop/client", web, expect=True)
        failures += ping(name, "shop/other", web, expect=True)
        step("a Kubernetes NetworkPolicy selecting app=web with no ingress rule: "
             "nothing may reach it")
        failures += in_lab(name, "apply", "-f", "-", stdin=WEB_DENY) != 0
        time.sleep(1.0)
        failures += ping(name, "shop/client", web, expect=False)
        failures += ping(name, "shop/other", web, expect=False)
        step("a second NetworkPolicy lets app=client in (policies add up)")
        failures += in_lab(name, "apply", "-f", "-", stdin=WEB_ALLOW) != 0
        time.sleep(1.0)
        failures += ping(name, "shop/client", web, expect=True)
        failures += ping(name, "shop/other", web, expect=False)
        on_node(name, "node1", "policy", "counters", "--nonzero")
        step("the control plane is out of the pods' reach: etcd and BGP ports of every host "
             "are dropped unless a policy names them, etcd wants a client certificate")
        n1, n2 = st.nodes["node1"].address, st.nodes["node2"].address
        failures += tcp(name, "shop/client", FABRIC_IP, ETCD_PORT)   # etcd
        failures += tcp(name, "shop/client", n2, 179)                # BGP, its own node
        failures += tcp(name, "shop/client", n1, 179)                # BGP, another node
        failures += attempt(name, [], ["etcdctl", f"--endpoints={st.etcd_endpoint}",
                                       f"--cacert={st.etcd_ca}", "--command-timeout=3s",
                                       "get", "--prefix", "/", "--keys-only"], expect=False)
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
    print(f"\n{BOLD}all steps behaved as expected{RESET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
