"""Pod MTU on a real lab: 2 nodes in 2 subnets, the pool's vxlanMode CrossSubnet, so pods on
different nodes talk through ``vxlan.tortie`` (underlay 1500, VXLAN 50).

* pods get eth0 MTU 1450 (the underlay less VXLAN's overhead), as ``vxlan.tortie`` has;
* with every ICMP dropped on the underlay (the fabric) and in the nodes (where the "needs
  fragmentation" answer to a too-big pod packet is made), PMTU discovery cannot help: 10 MB of
  TCP between pods in the two subnets still arrive, and between two pods whose CNI config
  forces MTU 1500 they black-hole (which shows the drop is real);
* the CNI config's ``mtu`` wins; a FelixConfiguration ``vxlanMTU`` changes the device and the
  next pods' MTU, and removing it restores the computed one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab.cluster import Lab, LabState
from routing.desired import VXLAN_DEVICE
from tests.support.wait import until_sync

pytestmark = pytest.mark.integration

PORT = 5001
SIZE = 10 * 1024 * 1024
NFT_TABLE = "tortie_test_no_icmp"

#: receives until EOF, prints the byte count
SERVER = f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], {PORT}))
s.listen(1)
s.settimeout(float(sys.argv[2]))
c, _ = s.accept()
c.settimeout(float(sys.argv[2]))
n = 0
try:
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        n += len(b)
except OSError as e:
    print("error", e, file=sys.stderr)
print(n, flush=True)
"""

#: sends SIZE bytes and closes
CLIENT = f"""
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        s = socket.create_connection((sys.argv[1], {PORT}), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.settimeout(float(sys.argv[2]))
s.sendall(b"x" * {SIZE})
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


def link(ns: str, name: str) -> dict[str, Any]:
    [out] = json.loads(netns.ip("-j", "link", "show", name, ns=ns))
    return dict(out)


def pod_mtu(st: LabState, ref: str) -> int:
    return int(link(st.pods[ref].netns, "eth0")["mtu"])


def device_mtu(st: LabState, node: str) -> int:
    return int(link(st.nodes[node].netns, VXLAN_DEVICE)["mtu"])


def transfer(st: LabState, src: str, dst: str, timeout: float) -> int | None:
    """Bytes of SIZE that arrived from pod ``src`` at pod ``dst`` within ``timeout`` (None:
    the transfer did not finish)."""
    ip = st.pods[dst].ips[0]
    server = subprocess.Popen(
        ["ip", "netns", "exec", st.pods[dst].netns, sys.executable, "-c", SERVER, ip,
         str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = netns.exec_in(st.pods[src].netns, [sys.executable, "-c", CLIENT, ip,
                                                    str(timeout)],
                               capture=True, timeout=timeout + 10)
        out, err = server.communicate(timeout=timeout + 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    print(f"transfer {src} -> {dst}: client rc {client.returncode} "
          f"{client.stderr.strip()[-300:]}; server {out.strip()} {err.strip()[-300:]}")
    if client.returncode != 0:
        return None
    return int(out.strip() or 0)


def drop_icmp(ns: str) -> None:
    """A table of our own in ``ns`` that drops every IPv4 ICMP packet it sees."""
    script = (f"table ip {NFT_TABLE} {{\n"
              + "".join(f"  chain {hook} {{ type filter hook {hook} priority -10; "
                        f"ip protocol icmp counter drop; }}\n"
                        for hook in ("input", "forward", "output"))
              + "}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True)


def icmp_dropped(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip",
                          NFT_TABLE], capture_output=True, text=True, check=True).stdout
    return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"]
               if "rule" in item for e in item["rule"]["expr"] if "counter" in e)


def apply(lab: Lab, st: LabState, doc: str) -> None:
    p = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[tuple[Lab, LabState]]:
    lab = Lab(f"m{uuid.uuid4().hex[:7]}")
    try:
        lab.up(2, subnets=2, encap="vxlan")
        lab.pod_add("node1", "default/a")
        lab.pod_add("node2", "default/b")
        st = lab.load()
        until_sync(lambda: all(netns.ip("link", "show", VXLAN_DEVICE, ns=n.netns, check=False)
                               for n in st.nodes.values()), 30, "vxlan.tortie on every node")
        yield lab, st
    finally:
        lab.down()
        assert netns.list_netns(f"tl-{lab.name}-") == []


def test_pods_and_the_vxlan_device_get_the_underlay_less_50(
        vxlan_lab: tuple[Lab, LabState]) -> None:
    _, st = vxlan_lab
    assert [n.address for n in st.nodes.values()] == ["192.0.2.11", "198.51.100.12"]
    assert int(link(st.nodes["node1"].netns, "eth0")["mtu"]) == 1500  # the underlay
    assert pod_mtu(st, "default/a") == pod_mtu(st, "default/b") == 1450
    assert device_mtu(st, "node1") == device_mtu(st, "node2") == 1450
    # the host end of the pod's veth too
    node = st.nodes["node1"].netns
    hosts = [ln for ln in json.loads(netns.ip("-j", "link", "show", ns=node))
             if ln["ifname"].startswith("cali")]
    assert [h["mtu"] for h in hosts] == [1450]


def test_10mb_across_subnets_without_icmp(vxlan_lab: tuple[Lab, LabState]) -> None:
    """ICMP dropped everywhere: 1450-MTU pods need no PMTU discovery; two pods forced to
    1500 by their CNI config black-hole (their 1500-byte packets do not fit the tunnel and
    the "fragmentation needed" answer is dropped)."""
    lab, st = vxlan_lab
    lab.pod_add("node1", "default/big-a", conf={"mtu": 1500})
    lab.pod_add("node2", "default/big-b", conf={"mtu": 1500})
    st = lab.load()
    assert pod_mtu(st, "default/big-a") == pod_mtu(st, "default/big-b") == 1500
    for ns in (st.fabric, *(n.netns for n in st.nodes.values())):
        drop_icmp(ns)
    assert transfer(st, "default/a", "default/b", timeout=30) == SIZE
    assert transfer(st, "default/b", "default/a", timeout=30) == SIZE
    assert transfer(st, "default/big-a", "default/big-b", timeout=6) is None
    dropped = sum(icmp_dropped(n.netns) for n in st.nodes.values())
    assert dropped > 0  # the "fragmentation needed" answers the 1500-byte packets caused


def test_the_cni_config_mtu_wins(vxlan_lab: tuple[Lab, LabState]) -> None:
    lab, _ = vxlan_lab
    lab.pod_add("node1", "default/small", conf={"mtu": 1300})
    st = lab.load()
    assert pod_mtu(st, "default/small") == 1300
    assert device_mtu(st, "node1") == 1450  # the device keeps its own


def test_felix_vxlan_mtu_changes_the_device_and_new_pods(
        vxlan_lab: tuple[Lab, LabState]) -> None:
    lab, st = vxlan_lab
    apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n"
                   "metadata:\n  name: default\nspec:\n  vxlanMTU: 1400\n")
    try:
        until_sync(lambda: device_mtu(st, "node1") == device_mtu(st, "node2") == 1400, 30,
                   "vxlan.tortie MTU 1400 on both nodes")
        lab.pod_add("node2", "default/after")
        st = lab.load()
        assert pod_mtu(st, "default/after") == 1400
        assert pod_mtu(st, "default/b") == 1450  # a running pod is left as it is
    finally:
        p = lab.tortie(st, ["delete", "felixconfiguration", "default"])
        assert p.returncode == 0, p.stderr
    until_sync(lambda: device_mtu(st, "node1") == device_mtu(st, "node2") == 1450, 30,
               "vxlan.tortie MTU back to 1450")
    lab.pod_add("node1", "default/later")
    assert pod_mtu(lab.load(), "default/later") == 1450


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
