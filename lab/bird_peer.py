"""``tortie lab peer bird``: a BIRD router on the lab's underlay that peers with every node.

    netns tl-L-bird   eth0 192.0.2.2/24 on the fabric bridge; bird (Debian bird2) with its
                      files in /run/tortie-lab/L/bird/ and its PID in bird/state.json

Outside router (default, AS 65001): imports every node's blocks into its kernel table
(so the namespace routes to pods through the right node), exports nothing.  With
``route_reflector`` it uses the cluster's AS (64512 unless given), reflects between the
nodes, and the node-to-node mesh is turned off (BGPConfiguration ``default``).  Either way
a global BGPPeer ``lab-bird`` tells every node to peer with it.  Running it again
reconfigures BIRD for the nodes the lab has now.  In a dual-stack lab BIRD also has
``2001:db8:0:1::2/64`` and learns (and installs) the nodes' IPv6 blocks over the same
sessions.  With ``over_ipv6`` (a dual-stack lab, outside router only) the sessions run over
IPv6 instead: the BGPPeer's ``peerIP`` is BIRD's IPv6 address, BIRD peers with the nodes'
IPv6 addresses, and those sessions carry the IPv6 blocks only (as Calico's IPv6 sessions).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from datastore.model_bgp import DEFAULT_AS_NUMBER
from lab import netns
from lab.bird_state import BirdInfo, load, save, stop_bird
from lab.cluster import FABRIC_IP, Lab, LabState
from routing.bgp.bird import BirdPeer

BIRD_IP = "192.0.2.2"
BIRD_IP6 = "2001:db8:0:1::2"
OUTSIDE_ASN = 65001
PEER_NAME = "lab-bird"


class BirdLabError(RuntimeError):
    pass


def _dir(lab: Lab) -> Path:
    return lab.dir / "bird"


def _netns_name(lab: Lab) -> str:
    return f"tl-{lab.name}-bird"


def _apply(lab: Lab, st: LabState, doc: str) -> None:
    p = lab.tortie(st, ["apply", "-f", "-"], input=doc)
    if p.returncode != 0:
        raise BirdLabError(f"tortie apply failed: {p.stderr.strip()}")


def _mesh_off(lab: Lab, st: LabState) -> None:
    patch = '{"spec": {"nodeToNodeMeshEnabled": false}}'
    p = lab.tortie(st, ["patch", "bgpconfiguration", "default", "-p", patch])
    if p.returncode != 0:
        _apply(lab, st, "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\n"
               "metadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n")


def add_bird(lab: Lab, *, route_reflector: bool = False, asn: int | None = None,
             node_asn: int = DEFAULT_AS_NUMBER, over_ipv6: bool = False) -> BirdInfo:
    """Start (or reconfigure) the lab's BIRD and point the nodes at it."""
    st = lab.load()
    ns = _netns_name(lab)
    run_dir = _dir(lab)
    asn = asn or (node_asn if route_reflector else OUTSIDE_ASN)
    ipv6 = bool(st.pool6_cidr)
    if over_ipv6 and (not ipv6 or route_reflector):
        raise BirdLabError("BGP over IPv6 needs a dual-stack lab (tortie lab up --dual-stack) "
                           "and BIRD as an outside router (not --route-reflector)")
    node_addrs = sorted((n.address6 if over_ipv6 else n.address for n in st.nodes.values()),
                        key=lambda a: ipaddress.ip_address(a))
    bird = BirdPeer(run_dir, netns=ns, router_id=BIRD_IP, asn=asn,
                    peers=[(a, node_asn) for a in node_addrs], route_reflector=route_reflector,
                    ipv6=ipv6, local6=f"{BIRD_IP6}/64" if ipv6 else None)
    old = load(lab.dir)
    if old is not None and old.pid and Path(f"/proc/{old.pid}").exists():
        if (old.route_reflector, old.asn, old.over_ipv6) != (route_reflector, asn, over_ipv6):
            raise BirdLabError("BIRD already runs in another role: remove it first "
                               f"(tortie lab peer bird --remove --name {lab.name})")
        bird.pid = old.pid
        bird.reconfigure(bird.neighbours)
        pid = old.pid
    else:
        if not netns.netns_exists(ns):
            netns.add_netns(ns, forwarding=True)
            netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                     "bird", "netns", st.fabric)
            netns.ip("link", "set", "bird", "master", "br0", "up", ns=st.fabric)
            netns.ip("addr", "add", f"{BIRD_IP}/24", "dev", "eth0", ns=ns)
            netns.ip("link", "set", "eth0", "up", ns=ns)
            # nodes on the lab's other subnets are reached through the fabric
            netns.ip("route", "add", "default", "via", FABRIC_IP, ns=ns)
            if ipv6:
                netns.ip("-6", "addr", "add", f"{BIRD_IP6}/64", "dev", "eth0", "nodad", ns=ns)
        pid = bird.start()
    info = BirdInfo(ns, BIRD_IP, asn, route_reflector, pid, node_addrs, ipv6, over_ipv6)
    save(lab.dir, info)
    peer_ip = BIRD_IP6 if over_ipv6 else BIRD_IP
    _apply(lab, st, f"apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n"
                    f"  name: {PEER_NAME}\nspec:\n  peerIP: {peer_ip}\n  asNumber: {asn}\n")
    if route_reflector:
        _mesh_off(lab, st)
    return info


def bird_of(lab: Lab) -> BirdPeer:
    info = load(lab.dir)
    if info is None:
        raise BirdLabError(f"lab {lab.name!r} has no BIRD (tortie lab peer bird)")
    bird = BirdPeer(_dir(lab), netns=info.netns, router_id=info.address, asn=info.asn,
                    peers=[(a, DEFAULT_AS_NUMBER) for a in info.peers],
                    route_reflector=info.route_reflector, ipv6=info.ipv6,
                    local6=f"{BIRD_IP6}/64" if info.ipv6 else None)
    bird.pid = info.pid
    return bird


def remove_bird(lab: Lab) -> None:
    """Stop BIRD, delete its namespace and the BGPPeer (the mesh setting is left as is)."""
    stop_bird(lab.dir)
    netns.del_netns(_netns_name(lab))
    st = lab.load()
    lab.tortie(st, ["delete", "bgppeer", PEER_NAME])
