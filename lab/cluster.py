"""A Tortie cluster on one machine: every node a network namespace.

Layout of a lab named L (everything it makes is named after L, so labs can coexist and
``down`` removes exactly what ``up`` made)::

    netns tl-L-fabric   the underlay: bridge br0 (192.0.2.1/24) + etcd on 192.0.2.1:2379
                        (https, client certificates required: the lab's CA in <dir>/pki);
                        with ``etcd_members=3`` three members, clients on 192.0.2.1 ports
                        2379, 12379, 22379, peers (https) on 127.0.0.1 one port above each
    netns tl-L-nodeN    node N: eth0 192.0.2.(10+N)/24 on the bridge, forwarding on,
                        its own tortie-node (CNI socket in the lab's state directory)
    netns tl-L-p-...    one per pod, created the way a runtime does it

The underlay uses TEST-NET-1 (192.0.2.0/24, RFC 5737): it exists only inside the lab's
namespaces; the fabric has no route anywhere else, so nothing can leave the machine.
``dual_stack``: the underlay also has IPv6 (2001:db8:0:1::/64, documentation prefix; node N
at ``2001:db8:0:1::<10+N>``, autodetected by tortie-node with ``--ip6 autodetect``), an IPv6
pool (:data:`lab.underlay.DEFAULT_POOL6_CIDR`) sits next to the IPv4 one and pods get an
address of each; etcd and the node mesh stay on IPv4 (IPv6 routes ride them, MP-BGP);
``--encap vxlan`` makes the IPv6 pool use VXLAN too (``vxlan-v6.tortie``).
State (PIDs, namespaces, pods) lives in ``/run/tortie-lab/L/state.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cni.launcher import install as install_cni
from datastore.etcd_config import EtcdConfig
from lab import containerd, cri, netns, underlay
from lab.bird_state import stop_bird
from lab.etcd import EtcdProcess, TlsFiles, tls_files
from lab.kubernetes import KubeError, Kubernetes, NodeInfo, check_pools, service_cidrs
from lab.pki import Pki
from lab.procs import alive as _alive
from lab.procs import signal_and_wait
from lab.procs import state as process_state
from lab.procs import stop_pid as _kill

LAB_ROOT = Path(os.environ.get("TORTIE_LAB_DIR", "/run/tortie-lab"))
REPO = Path(__file__).resolve().parents[1]
CONFLIST = REPO / "conf" / "net.d" / "10-tortie.conflist"
UNDERLAY = ipaddress.ip_network("192.0.2.0/24")
FABRIC_IP = "192.0.2.1"
ETCD_PORT = 2379
#: etcd member N (1-based) takes client port ETCD_PORT + (N-1) * this, its peer port one above
ETCD_MEMBER_PORT_STEP = 10000
MAX_ETCD_MEMBERS = 5
DEFAULT_POOL_CIDR = "10.244.0.0/16"
DEFAULT_POOL = "default-ipv4-ippool"
DEFAULT_POOL6 = "default-ipv6-ippool"
POD_IFNAME = "eth0"
CNI_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
NODE_START_TIMEOUT = 30.0
#: How pods are made: the lab runs the CNI chain itself, or a containerd per node does (CRI)
RUNTIMES = ("cni", "containerd")
#: BGP hold time of the lab's nodes (seconds), also the graceful-restart time they advertise:
#: a node that dies leaves the others' routes within this long after its sessions drop, and
#: a tortie-node restart (about 3.5 s here) still loses no packet.
LAB_BGP_HOLD_TIME = 9

Progress = Callable[[str], None]


class LabError(RuntimeError):
    pass


@dataclass
class NodeState:
    name: str
    netns: str
    address: str
    socket: str
    log: str
    pid: int = 0
    containerd_pid: int = 0  # runtime mode: this node's private containerd
    address6: str = ""       # dual stack: its IPv6 underlay address


@dataclass
class PodState:
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str  # runtime mode: the pod sandbox's id
    ips: list[str] = field(default_factory=list)
    uid: str = ""


@dataclass
class LabState:
    name: str
    fabric: str
    #: the PID of each etcd member, member 1 first (0: never started)
    etcd_pids: list[int] = field(default_factory=lambda: [0])
    subnets: int = 1
    encap: str = "none"
    runtime: str = "cni"  # "cni": the lab runs the CNI chain; "containerd": CRI sandboxes
    nodes: dict[str, NodeState] = field(default_factory=dict)
    pods: dict[str, PodState] = field(default_factory=dict)
    pool_cidr: str = DEFAULT_POOL_CIDR
    #: IPv6 too: a v6 underlay, a v6 pool (this CIDR), pods with both families ("": v4 only)
    pool6_cidr: str = ""
    #: a real Kubernetes on the lab (lab/kubernetes.py): its processes by name
    kubernetes: bool = False
    k8s_pids: dict[str, int] = field(default_factory=dict)
    # the CA and the client certificate tortie-node and the CLI use (empty: a plain-http etcd)
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""

    @property
    def etcd_members(self) -> int:
        return len(self.etcd_pids)

    @property
    def etcd_pid(self) -> int:
        """Member 1's PID (the only member of a one-member etcd)."""
        return self.etcd_pids[0]

    def etcd_member_endpoint(self, member: int) -> str:
        return (f"{'https' if self.etcd_ca else 'http'}://{FABRIC_IP}:"
                f"{etcd_client_port(member)}")

    @property
    def etcd_endpoint(self) -> str:
        """Member 1's client URL."""
        return self.etcd_member_endpoint(1)

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        """Every member's client URL, member 1 first."""
        return tuple(self.etcd_member_endpoint(m) for m in range(1, self.etcd_members + 1))

    def etcd_config(self) -> EtcdConfig:
        """How the lab's control plane reaches etcd: every member (a client fails over
        between them), with the client certificate."""
        return EtcdConfig(endpoints=self.etcd_endpoints, ca_cert_file=self.etcd_ca or None,
                          cert_file=self.etcd_cert or None, key_file=self.etcd_key or None)

    def etcd_env(self) -> dict[str, str]:
        """``TORTIE_ETCD_*`` for a process of the lab's control plane (daemon, CLI)."""
        return self.etcd_config().to_env()


def etcd_client_port(member: int) -> int:
    """The client port of etcd member ``member`` (1-based) on the fabric address."""
    return ETCD_PORT + (member - 1) * ETCD_MEMBER_PORT_STEP


def lab_dir(name: str) -> Path:
    return LAB_ROOT / name


def _bridge_mac(subnet: int) -> str:
    """A fixed MAC for fabric bridge ``subnet``.  Without one a Linux bridge takes the lowest
    MAC of its ports and changes it when that port leaves: every node's ARP entry for the
    fabric (etcd, the API server) then points at a MAC nobody answers to, and their TCP
    streams stall for seconds until the entry is probed again (seen when a node was removed:
    the others' etcd watches timed out and missed a Node deletion for 8 s)."""
    return f"02:00:5e:10:00:{subnet:02x}"


def _prefix(name: str) -> str:
    return f"tl-{name}-"


class Lab:
    def __init__(self, name: str = "lab", progress: Progress | None = None) -> None:
        if not name.replace("-", "").isalnum() or len(name) > 12:
            raise LabError(f"lab name {name!r}: use up to 12 letters, digits or '-'")
        self.name = name
        self.dir = lab_dir(name)
        self.progress = progress or (lambda msg: None)

    # --- state --------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {self.name!r} is up (tortie lab up "
                           f"--name {self.name})") from None
        st = LabState(raw["name"], raw["fabric"],
                      raw.get("etcd_pids") or [raw.get("etcd_pid", 0)],
                      raw.get("subnets", 1), raw.get("encap", "none"))
        st.runtime = raw.get("runtime", "cni")
        st.etcd_ca, st.etcd_cert, st.etcd_key = (raw.get(k, "") for k in (
            "etcd_ca", "etcd_cert", "etcd_key"))
        st.pool_cidr = raw.get("pool_cidr", DEFAULT_POOL_CIDR)
        st.pool6_cidr = raw.get("pool6_cidr", "")
        st.kubernetes = raw.get("kubernetes", False)
        st.k8s_pids = raw.get("k8s_pids", {})
        st.nodes = {k: NodeState(**v) for k, v in raw.get("nodes", {}).items()}
        st.pods = {k: PodState(**v) for k, v in raw.get("pods", {}).items()}
        return st

    def save(self, st: LabState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(st), indent=2))
        tmp.replace(self.state_file)

    # --- up / down ----------------------------------------------------------------------------

    def up(self, nodes: int, pool_cidr: str = DEFAULT_POOL_CIDR, subnets: int = 1,
           encap: str | None = None, runtime: str = "cni",
           kubernetes: bool = False, etcd_members: int = 1, dual_stack: bool = False,
           pool6_cidr: str = underlay.DEFAULT_POOL6_CIDR) -> LabState:
        """``subnets`` underlay subnets joined by the fabric, the default pool's
        encapsulation per ``encap`` (see lab/underlay.py); ``runtime="containerd"``: a
        private containerd per node makes the pods (docs/runtime.md); ``kubernetes``: a real
        Kubernetes runs the nodes (lab/kubernetes.py; implies containerd); ``etcd_members``:
        how many members the lab's etcd has (every client gets all their endpoints);
        ``dual_stack``: IPv6 as well (module docstring), whoever makes the pods; with
        ``kubernetes`` a dual-stack Kubernetes too (docs/kubernetes.md)."""
        if kubernetes:
            runtime = "containerd"
        if nodes < 1 or nodes > 200:
            raise LabError("--nodes must be 1-200")
        if not 1 <= etcd_members <= MAX_ETCD_MEMBERS:
            raise LabError(f"--etcd-members must be 1-{MAX_ETCD_MEMBERS}, got {etcd_members}")
        if runtime not in RUNTIMES:
            raise LabError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        _check_pools(pool_cidr, pool6_cidr if dual_stack else "", kubernetes=kubernetes)
        if runtime == "containerd" and containerd.missing_binaries():
            raise LabError(f"the containerd runtime needs "
                           f"{', '.join(containerd.missing_binaries())}")
        try:
            encap = underlay.check(subnets, encap)
        except underlay.UnderlayError as e:
            raise LabError(str(e)) from None
        if self.exists():
            raise LabError(f"lab {self.name!r} is already up (tortie lab down --name "
                           f"{self.name})")
        self.dir.mkdir(parents=True, exist_ok=True)
        st = LabState(self.name, _prefix(self.name) + "fabric", subnets=subnets, encap=encap,
                      runtime=runtime, pool_cidr=pool_cidr, kubernetes=kubernetes,
                      etcd_pids=[0] * etcd_members,
                      pool6_cidr=pool6_cidr if dual_stack else "")
        self.save(st)
        try:
            install_cni(self.bin_dir)
            self._up_fabric(st)
            self._up_etcd(st)
            self._apply_pool(st, pool_cidr)
            if st.pool6_cidr:
                self._apply_pool6(st, st.pool6_cidr)
            for i in range(1, nodes + 1):
                self._up_node(st, f"node{i}", i, underlay.subnet_of(i, nodes, subnets))
            for node in st.nodes.values():
                self._wait_node(node)
                self.progress(f"node {node.name}: tortie-node ready (pid {node.pid})")
            if runtime == "containerd":
                for node in st.nodes.values():
                    self._up_containerd(st, node)
            if kubernetes:
                self._up_kubernetes(st)
        except BaseException:
            self.progress("failed: removing what was made")
            self.down()
            raise
        return st

    def _up_fabric(self, st: LabState) -> None:
        self.progress(f"fabric: namespace {st.fabric}, bridge br0 {FABRIC_IP}/24")
        netns.add_netns(st.fabric, forwarding=True)
        netns.ip("link", "add", "br0", "address", _bridge_mac(0), "type", "bridge",
                 ns=st.fabric)
        netns.ip("addr", "add", f"{FABRIC_IP}/{UNDERLAY.prefixlen}", "dev", "br0",
                 ns=st.fabric)
        netns.ip("link", "set", "br0", "up", ns=st.fabric)
        for k in range(1, st.subnets):  # the fabric routes between the subnets
            br, net = underlay.bridge(k), underlay.subnet(k)
            self.progress(f"fabric: bridge {br} {underlay.gateway(k)}/{net.prefixlen}")
            netns.ip("link", "add", br, "address", _bridge_mac(k), "type", "bridge",
                     ns=st.fabric)
            netns.ip("addr", "add", f"{underlay.gateway(k)}/{net.prefixlen}", "dev", br,
                     ns=st.fabric)
            netns.ip("link", "set", br, "up", ns=st.fabric)
        if st.pool6_cidr:
            for k in range(st.subnets):
                net6 = underlay.subnet6(k)
                self.progress(f"fabric: {underlay.bridge(k)} {underlay.gateway6(k)}/"
                              f"{net6.prefixlen}")
                netns.ip("-6", "addr", "add", f"{underlay.gateway6(k)}/{net6.prefixlen}",
                         "dev", underlay.bridge(k), "nodad", ns=st.fabric)
        self.save(st)

    @property
    def pki(self) -> Pki:
        """The lab's one CA (``<dir>/pki``): etcd's certificates and Kubernetes' come from it."""
        return Pki(self.dir / "pki")

    def _up_etcd(self, st: LabState) -> None:
        """etcd on https, refusing clients without a certificate from the lab's CA: one
        member, or ``st.etcd_members`` members that authenticate each other (peer TLS)."""
        tls = self._etcd_tls()
        st.etcd_ca, st.etcd_cert, st.etcd_key = (
            str(tls.ca_cert), str(tls.client_cert), str(tls.client_key))
        members = [self._etcd_process(st, m) for m in range(1, st.etcd_members + 1)]
        for m, etcd in enumerate(members, 1):  # healthy once a quorum runs: start all first
            etcd.launch()
            st.etcd_pids[m - 1] = etcd.detach()
            self.save(st)
        for etcd in members:
            etcd.wait_healthy()
        self.progress(f"etcd: {', '.join(st.etcd_endpoints)}, client certificates required "
                      f"(pid {', '.join(map(str, st.etcd_pids))})")

    # --- faults of the datastore (tortie lab etcd ...; bench/chaos.py) -----------------------

    def _etcd_tls(self) -> TlsFiles:
        """etcd's server certificate and the control plane's client certificate (lab CA)."""
        return tls_files(self.pki, server_ips=(FABRIC_IP,), client_name="etcd-client-tortie",
                         client_cn="tortie")

    def _etcd_process(self, st: LabState, member: int = 1) -> EtcdProcess:
        """Member ``member`` of the lab's etcd: its data, ports, peers and (when the state
        has them) certificates.  A one-member etcd keeps the layout it always had."""
        tls = self._etcd_tls() if st.etcd_ca else None
        if st.etcd_members == 1:
            return EtcdProcess(self.dir / "etcd", name=f"lab-{self.name}", netns=st.fabric,
                               host=FABRIC_IP, client_port=ETCD_PORT, tls=tls)
        members = [EtcdProcess(self.dir / f"etcd-{m}", name=f"lab-{self.name}-{m}",
                               netns=st.fabric, host=FABRIC_IP, tls=tls,
                               client_port=etcd_client_port(m),
                               cluster_token=f"lab-{self.name}", peer_tls=True)
                   for m in range(1, st.etcd_members + 1)]
        cluster = tuple((e.name, e.peer_url) for e in members)
        for e in members:
            e.cluster = cluster
        return members[member - 1]

    def _member(self, st: LabState, member: int) -> int:
        """``member`` checked against the lab (1-based); LabError naming the choices."""
        if not 1 <= member <= st.etcd_members:
            raise LabError(f"etcd of lab {self.name!r} has member(s) 1-{st.etcd_members}, "
                           f"not {member}")
        return member

    def etcd_state(self, st: LabState | None = None, member: int = 1) -> str:
        """``running``, ``paused`` (SIGSTOP) or ``down``, of member ``member``."""
        st = st or self.load()
        pid = st.etcd_pids[self._member(st, member) - 1]
        if not _alive(pid):
            return "down"
        return "paused" if process_state(pid) in ("T", "t") else "running"

    def etcd_leader(self, timeout: float = 10.0) -> int:
        """The member (1-based) that leads the lab's etcd, as the running members' Status
        says; waits up to ``timeout`` while there is none (an election)."""
        st = self.load()
        deadline = time.monotonic() + timeout
        last = "no member answered"
        while True:
            ids: dict[int, int] = {}  # member id -> member number
            leader = 0
            for m in range(1, st.etcd_members + 1):
                if self.etcd_state(st, m) != "running":
                    continue
                try:
                    status = self._etcd_process(st, m).status()
                except (RuntimeError, ValueError, KeyError, IndexError) as e:
                    last = f"member {m}: {e}"
                    continue
                ids[int(status["member_id"])] = m
                leader = int(status.get("leader", 0)) or leader
            if leader in ids:
                return ids[leader]
            if leader:
                last = f"the leader {leader:x} is none of the running members"
            if time.monotonic() >= deadline:
                raise LabError(f"etcd of lab {self.name!r} has no leader: {last}")
            time.sleep(0.2)

    def etcd_status(self) -> list[dict[str, Any]]:
        """One line per member: ``member``, ``endpoint``, ``pid``, ``state``, ``id`` (hex)
        and ``leader`` (whether it leads; only from members that answer)."""
        st = self.load()
        rows = []
        for m in range(1, st.etcd_members + 1):
            row: dict[str, Any] = {"member": m, "endpoint": st.etcd_member_endpoint(m),
                                   "pid": st.etcd_pids[m - 1], "state": self.etcd_state(st, m),
                                   "id": "", "leader": False}
            if row["state"] == "running":
                with contextlib.suppress(RuntimeError, ValueError, KeyError, IndexError):
                    status = self._etcd_process(st, m).status()
                    row["id"] = f"{int(status['member_id']):x}"
                    row["leader"] = int(status["member_id"]) == int(status.get("leader", 0))
            rows.append(row)
        return rows

    def etcd_kill(self, member: int = 1) -> int:
        """SIGKILL member ``member`` of the lab's etcd (a crash); it stays down until
        ``etcd_restart``."""
        st = self.load()
        pid = st.etcd_pids[self._member(st, member) - 1]
        signal_and_wait(pid, signal.SIGKILL)
        self.progress(f"etcd{self._which(st, member)}: killed (pid {pid})")
        return pid

    def etcd_pause(self, member: int = 1) -> int:
        """SIGSTOP an etcd member: it holds its connections and answers nothing."""
        return self._signal_etcd(signal.SIGSTOP, "paused", member)

    def etcd_resume(self, member: int = 1) -> int:
        """SIGCONT an etcd member."""
        return self._signal_etcd(signal.SIGCONT, "resumed", member)

    @staticmethod
    def _which(st: LabState, member: int) -> str:
        return f" member {member}" if st.etcd_members > 1 else ""

    def _signal_etcd(self, sig: int, done: str, member: int) -> int:
        st = self.load()
        pid = st.etcd_pids[self._member(st, member) - 1]
        if not _alive(pid):
            raise LabError(f"etcd{self._which(st, member)} of lab {self.name!r} is not running")
        os.kill(pid, sig)
        self.progress(f"etcd{self._which(st, member)}: {done} (pid {pid})")
        return pid

    def etcd_restart(self, sig: int = signal.SIGTERM, member: int = 1) -> int:
        """Stop an etcd member (``sig``; SIGKILL: a crash), if it runs or is paused, and
        start it again on the same data; returns once it is healthy (with several members:
        once it is back in a cluster with a quorum)."""
        st = self.load()
        index = self._member(st, member) - 1
        signal_and_wait(st.etcd_pids[index], sig)
        etcd = self._etcd_process(st, member)
        try:
            etcd.start()
        except RuntimeError as e:
            raise LabError(f"etcd{self._which(st, member)} of lab {self.name!r} did not start "
                           f"again: {e}") from None
        st.etcd_pids[index] = etcd.detach()
        self.save(st)
        self.progress(f"etcd{self._which(st, member)}: restarted (pid {st.etcd_pids[index]})")
        return st.etcd_pids[index]

    def _apply_pool(self, st: LabState, cidr: str) -> None:
        doc = (f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: "
               f"{DEFAULT_POOL}\nspec:\n  cidr: {cidr}\n  natOutgoing: true\n")
        doc += "".join(f"  {k}: {v}\n"
                       for k, v in underlay.pool_modes(st.encap, st.subnets).items())
        p = self.tortie(st, ["apply", "-f", "-"], input=doc)
        if p.returncode != 0:
            raise LabError(f"creating the IP pool failed: {p.stderr.strip()}")
        self.progress(f"pool: {DEFAULT_POOL} {cidr} (encapsulation: {st.encap})")

    def _apply_pool6(self, st: LabState, cidr: str) -> None:
        doc = (f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: "
               f"{DEFAULT_POOL6}\nspec:\n  cidr: {cidr}\n  natOutgoing: true\n")
        modes = underlay.pool6_modes(st.encap, st.subnets)
        doc += "".join(f"  {k}: {v}\n" for k, v in modes.items())
        p = self.tortie(st, ["apply", "-f", "-"], input=doc)
        if p.returncode != 0:
            raise LabError(f"creating the IPv6 pool failed: {p.stderr.strip()}")
        self.progress(f"pool: {DEFAULT_POOL6} {cidr} (vxlanMode {modes['vxlanMode']})")

    def _up_node(self, st: LabState, name: str, index: int, subnet: int = 0) -> None:
        ns = _prefix(self.name) + name
        address = underlay.node_address(index, subnet)
        prefixlen = underlay.subnet(subnet).prefixlen
        netns.add_netns(ns, forwarding=True)
        port = f"{name}"  # fabric-side veth is named after the node
        netns.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                 "netns", st.fabric)
        netns.ip("link", "set", port, "master", underlay.bridge(subnet), "up", ns=st.fabric)
        netns.ip("addr", "add", f"{address}/{prefixlen}", "dev", "eth0", ns=ns)
        netns.ip("link", "set", "eth0", "up", ns=ns)
        netns.ip("route", "add", "default", "via", underlay.gateway(subnet), ns=ns)
        node = NodeState(name, ns, address, str(self.dir / name / "cni.sock"),
                         str(self.dir / f"{name}.log"))
        if st.pool6_cidr:
            node.address6 = underlay.node_address6(index, subnet)
            netns.ip("-6", "addr", "add",
                     f"{node.address6}/{underlay.subnet6(subnet).prefixlen}", "dev", "eth0",
                     "nodad", ns=ns)
            netns.ip("-6", "route", "add", "default", "via", underlay.gateway6(subnet), ns=ns)
        (self.dir / name).mkdir(exist_ok=True)
        st.nodes[name] = node
        self.save(st)
        self._start_daemon(st, node)
        self.progress(f"node {name}: namespace {ns}, eth0 {address}"
                      f"{' ' + node.address6 if node.address6 else ''}, tortie-node pid "
                      f"{node.pid}")

    def _start_daemon(self, st: LabState, node: NodeState) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORTIE_ETCD_")}
        env.update(st.etcd_env())
        with open(node.log, "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, sys.executable, "-m", "node.main",
                 "--node-name", node.name, "--socket", node.socket,
                 "--bgp-hold-time", str(LAB_BGP_HOLD_TIME),
                 "--bgp-graceful-restart", str(LAB_BGP_HOLD_TIME),
                 *(["--ip6", "autodetect"] if st.pool6_cidr else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, cwd=REPO)
        node.pid = proc.pid
        self.save(st)

    def restart_node(self, name: str, sig: int = signal.SIGTERM) -> NodeState:
        """Stop a node's tortie-node (SIGKILL: a crash) and start it again."""
        st = self.load()
        node = st.nodes.get(name)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        if _alive(node.pid):
            os.kill(node.pid, sig)
        _kill(node.pid)
        with contextlib.suppress(FileNotFoundError):
            Path(node.socket).unlink()
        self._start_daemon(st, node)
        self._wait_node(node)
        self.progress(f"node {name}: tortie-node restarted (pid {node.pid})")
        return node

    def kill_node(self, name: str) -> NodeState:
        """SIGKILL a node's tortie-node (a crash; its ExaBGP dies with it); it stays down
        until ``restart_node``.  Pods keep their interfaces and addresses."""
        st = self.load()
        node = st.nodes.get(name)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        signal_and_wait(node.pid, signal.SIGKILL)
        self.progress(f"node {name}: tortie-node killed (pid {node.pid})")
        return node

    def remove_node(self, name: str, *, delete_resource: bool = False) -> None:
        """Take a node out as a failure would: SIGKILL its tortie-node (ExaBGP dies with it),
        delete its namespace and its pods' namespaces.  ``delete_resource``: also delete its
        Node resource with ``tortie delete node`` (as ``calicoctl delete node`` after
        decommissioning), which releases what the node held: its pods' endpoints and
        addresses, its tunnel addresses, its blocks and block affinities."""
        st = self.load()
        node = st.nodes.pop(name, None)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        if _alive(node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
        _kill(node.pid)
        # runtime mode: its containerd dies with it (sandboxes' processes, shims, mounts)
        containerd.Containerd(self._containerd_dir(node), pid=node.containerd_pid).stop()
        for ref in [r for r, p in st.pods.items() if p.node == name]:
            netns.del_netns(st.pods.pop(ref).netns)
        netns.del_netns(node.netns)
        self.save(st)
        if delete_resource:
            p = self.tortie(st, ["delete", "node", name])
            if p.returncode != 0:
                raise LabError(f"deleting Node {name} failed: {p.stderr.strip()}")
        self.progress(f"node {name}: removed")

    def _wait_node(self, node: NodeState) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while time.monotonic() < deadline:
            if Path(node.socket).exists():
                return
            if not _alive(node.pid):
                raise LabError(f"tortie-node on {node.name} exited; its log "
                               f"({node.log}):\n{_tail(node.log)}")
            time.sleep(0.05)
        raise LabError(f"tortie-node on {node.name} not ready within {NODE_START_TIMEOUT}s; "
                       f"log:\n{_tail(node.log)}")

    def down(self) -> None:
        """Remove everything this lab made, whatever state it is in."""
        st: LabState | None = None
        with contextlib.suppress(LabError, json.JSONDecodeError, KeyError):
            st = self.load()
        if st is not None:
            if st.kubernetes:  # no kubelet may start pods again while they are removed
                self.kube(st).stop_node_daemons()
                self.save(st)
            self._down_containerd(st)  # first: its DELs need tortie-node and etcd
            if st.kubernetes or st.k8s_pids:
                self.kube(st).down(list(st.nodes))
            for node in st.nodes.values():
                _kill(node.pid)
            for pid in st.etcd_pids:
                _kill(pid)
        stop_bird(self.dir)
        for ns in netns.list_netns(_prefix(self.name)):
            netns.del_netns(ns)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- pods ---------------------------------------------------------------------------------

    def pod_add(self, node_name: str, ref: str,
                conf: Mapping[str, Any] | None = None) -> PodState:
        """Make pod ``ref`` on ``node_name``; ``conf``: settings over the conflist's ``tortie``
        plugin for this pod (e.g. ``{"mtu": 1400}``; the lab's own CNI runtime only)."""
        st = self.load()
        namespace, name = _split_ref(ref)
        node = st.nodes.get(node_name)
        if node is None:
            raise LabError(f"no node {node_name!r} in lab {self.name!r}: "
                           f"{', '.join(st.nodes)}")
        if ref in st.pods:
            raise LabError(f"pod {ref} exists already (on {st.pods[ref].node})")
        if st.runtime == "containerd":
            if conf:
                raise LabError("per-pod CNI settings need the lab's own CNI runtime")
            return self._pod_add_cri(st, node, ref)
        digest = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:10]
        pod_ns = f"{_prefix(self.name)}p-{digest}"
        netns.add_netns(pod_ns)
        pod = PodState(namespace, name, node_name, pod_ns, uuid.uuid4().hex)
        try:
            result = self._cni(st, node, pod, "ADD", conf)
        except BaseException:
            with contextlib.suppress(LabError):  # as a runtime does: DEL after a failed ADD
                self._cni(st, node, pod, "DEL")
            netns.del_netns(pod_ns)
            raise
        pod.ips = [i["address"].split("/")[0] for i in result.get("ips", [])]
        st.pods[ref] = pod
        self.save(st)
        return pod

    def pod_del(self, ref: str) -> None:
        st = self.load()
        pod = st.pods.get(ref)
        if pod is None:
            raise LabError(f"no pod {ref} in lab {self.name!r}")
        if st.runtime == "containerd":
            self._pod_del_cri(st.nodes[pod.node], pod)
        else:
            self._cni(st, st.nodes[pod.node], pod, "DEL")
        netns.del_netns(pod.netns)
        del st.pods[ref]
        self.save(st)

    def _cni(self, st: LabState, node: NodeState, pod: PodState, command: str,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the conflist's chain the way a runtime does (ADD in order, DEL reversed)."""
        conflist = json.loads(CONFLIST.read_text())
        plugins = [p for p in conflist["plugins"] if self._find_plugin(p["type"])]
        version = self._common_version(conflist["cniVersion"], [p["type"] for p in plugins])
        if command == "DEL":
            plugins = list(reversed(plugins))
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": netns.netns_path(pod.netns), "CNI_IFNAME": POD_IFNAME,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                        f"K8S_POD_NAME={pod.name};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}",
            "CNI_PATH": ":".join([str(self.bin_dir), *CNI_PLUGIN_DIRS]),
        }
        prev: dict[str, Any] | None = None
        for plugin in plugins:
            conf = {"cniVersion": version, "name": conflist["name"], **plugin}
            if plugin["type"] == "tortie":
                if st.pool6_cidr:
                    conf["ipam"] = {**conf.get("ipam", {}), **underlay.DUAL_STACK_IPAM}
                conf.update(overrides or {})
                conf["socket"] = node.socket
            if "capabilities" in conf:
                conf.pop("capabilities")
                conf["runtimeConfig"] = {"portMappings": []}
            if prev is not None and command != "DEL":
                conf["prevResult"] = prev
            exe = self._find_plugin(plugin["type"])
            assert exe is not None
            p = netns.exec_in(node.netns, [str(exe)], env=env, input=json.dumps(conf),
                              capture=True, timeout=120)
            if p.returncode != 0:
                raise LabError(f"CNI {command} ({plugin['type']}) for {pod.namespace}/"
                               f"{pod.name} failed: {p.stdout.strip() or p.stderr.strip()}")
            if command == "ADD" and p.stdout.strip():
                prev = json.loads(p.stdout)
        return prev or {}

    def _common_version(self, wanted: str, types: list[str]) -> str:
        """The conflist's cniVersion, or the newest one every plugin in the chain speaks.

        Debian's reference plugins (1.1.1) stop at CNI 1.0.0 while the conflist asks for
        1.1.0; a lab on such a machine runs the chain at 1.0.0 (and says so once)."""
        common: set[str] | None = None
        for t in types:
            exe = self._find_plugin(t)
            p = subprocess.run([str(exe)], env={"CNI_COMMAND": "VERSION"}, input="{}",
                               capture_output=True, text=True, timeout=30, check=False)
            try:
                supported = set(json.loads(p.stdout)["supportedVersions"])
            except (ValueError, KeyError, TypeError):
                continue
            common = supported if common is None else common & supported
        if common is None or wanted in common:
            return wanted
        if not common:
            raise LabError(f"the CNI plugins {', '.join(types)} share no CNI version")
        best = max(common, key=lambda v: tuple(int(x) for x in v.split(".")))
        if not getattr(self, "_version_noted", False):
            self.progress(f"CNI chain runs at {best}: not every plugin speaks {wanted}")
            self._version_noted = True
        return best

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    def _find_plugin(self, kind: str) -> Path | None:
        for d in (self.bin_dir, *map(Path, CNI_PLUGIN_DIRS)):
            if (d / kind).exists():
                return d / kind
        return None

    # --- runtime mode: a private containerd per node, pods through its CRI ---------------------

    def _containerd_dir(self, node: NodeState) -> Path:
        return self.dir / node.name / "containerd"

    def _up_containerd(self, st: LabState, node: NodeState) -> None:
        """The node's containerd: in the node's netns, CNI conf pointing at its tortie-node."""
        base = json.loads(CONFLIST.read_text())
        base["plugins"] = [p for p in base["plugins"] if self._find_plugin(p["type"])]
        version = self._common_version(base["cniVersion"], [p["type"] for p in base["plugins"]])
        conflist = containerd.node_conflist(
            base, socket=node.socket, version=version,
            ipam=underlay.DUAL_STACK_IPAM if st.pool6_cidr else None)
        ctd = containerd.Containerd(self._containerd_dir(node), conflist=conflist,
                                    plugin_dirs=[self.bin_dir, *map(Path, CNI_PLUGIN_DIRS)],
                                    netns=node.netns)
        start = time.monotonic()
        try:
            ctd.start()
        except containerd.ContainerdError as e:
            raise LabError(f"containerd on {node.name}: {e}") from None
        node.containerd_pid = ctd.pid
        self.save(st)
        self.progress(f"node {node.name}: containerd ready in {time.monotonic() - start:.1f}s "
                      f"(pid {ctd.pid}, CRI {ctd.socket})")

    def _down_containerd(self, st: LabState) -> None:
        """Remove every sandbox (containerd runs the DELs), stop each containerd by PID, and
        clear what a crashed one may have left (shims, mounts, sandbox namespaces)."""
        for node in st.nodes.values():
            ctd = containerd.Containerd(self._containerd_dir(node), pid=node.containerd_pid)
            if not ctd.base.exists():
                continue
            with contextlib.suppress(containerd.ContainerdError, cri.CRIError):
                ctd.remove_all_sandboxes(timeout=30)
            ctd.stop()
        if st.runtime == "containerd":
            for pod in st.pods.values():
                netns.del_netns(pod.netns)

    def _pod_add_cri(self, st: LabState, node: NodeState, ref: str) -> PodState:
        """RunPodSandbox with the pod's name, namespace and uid, as kubelet calls it."""
        namespace, name = _split_ref(ref)
        uid = str(uuid.uuid4())
        try:
            with cri.RuntimeClient(containerd.socket_of(self._containerd_dir(node))) as client:
                sandbox = client.run_pod_sandbox(name, namespace, uid)
                status = client.pod_sandbox_status(sandbox, verbose=True)
        except cri.CRIError as e:
            raise LabError(f"RunPodSandbox for {ref} on {node.name}: {e.details}") from None
        net = status.status.network
        ips = [ip for ip in (net.ip, *(a.ip for a in net.additional_ips)) if ip]
        pod_ns = Path(cri.netns_from_info(status.info)).name
        pod = PodState(namespace, name, node.name, pod_ns, sandbox, ips, uid)
        st.pods[ref] = pod
        self.save(st)
        return pod

    def _pod_del_cri(self, node: NodeState, pod: PodState) -> None:
        """StopPodSandbox (containerd runs DEL) then RemovePodSandbox (DEL again)."""
        try:
            with cri.RuntimeClient(containerd.socket_of(self._containerd_dir(node))) as client:
                client.stop_pod_sandbox(pod.container_id)
                client.remove_pod_sandbox(pod.container_id)
        except cri.CRIError as e:
            raise LabError(f"removing sandbox of {pod.namespace}/{pod.name}: "
                           f"{e.details}") from None

    # --- a real Kubernetes (lab/kubernetes.py) ------------------------------------------------

    def kube(self, st: LabState) -> Kubernetes:
        return Kubernetes(self.name, self.dir, st.fabric, FABRIC_IP, st.k8s_pids,
                          progress=self.progress, dual_stack=bool(st.pool6_cidr))

    def _up_kubernetes(self, st: LabState) -> None:
        """API server, controller-manager, scheduler, tortie-kube-controllers in the fabric;
        images into every containerd; kubelet + kube-proxy on every node; all nodes Ready."""
        k8s = self.kube(st)
        try:
            k8s.up_control_plane(",".join(st.etcd_endpoints), self.etcd_client_files(st))
            tarballs = k8s.image_tarballs()
            for node in st.nodes.values():
                ctd = containerd.Containerd(self._containerd_dir(node), pid=node.containerd_pid)
                for tar in tarballs:
                    ctd.import_image(tar)
            self.progress(f"kubernetes: images {', '.join(t.name for t in tarballs)} imported "
                          f"on every node")
            for node in st.nodes.values():
                k8s.up_node(NodeInfo(node.name, node.netns, node.address,
                                     containerd.socket_of(self._containerd_dir(node)),
                                     node.address6),
                            [st.pool_cidr, *([st.pool6_cidr] if st.pool6_cidr else [])])
            k8s.up_kube_controllers(self.etcd_env(st))
            k8s.wait_nodes_ready(list(st.nodes))
            self.progress(f"kubernetes: nodes {', '.join(st.nodes)} Ready")
        except KubeError as e:
            raise LabError(str(e)) from None
        finally:
            self.save(st)

    def up_kube_api(self) -> Kubernetes:
        """A Kubernetes API for a lab whose pods are the lab's own (no kubelets): kube-apiserver
        on the lab's etcd, a Kubernetes Node per lab node (tortie-kube-controllers removes
        the Calico Node of a Kubernetes Node that is gone), then tortie-kube-controllers.
        ``down`` stops them as it stops a full Kubernetes (by PID)."""
        st = self.load()
        k8s = self.kube(st)
        try:
            k8s.up_control_plane(",".join(st.etcd_endpoints), self.etcd_client_files(st),
                                 controllers=False)
            nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
                     for name in st.nodes]
            p = k8s.kubectl(["apply", "-f", "-"], input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": nodes}))
            if p.returncode != 0:
                raise KubeError(f"kubectl apply of the Nodes failed: {p.stderr.strip()}")
            k8s.up_kube_controllers(self.etcd_env(st))
        except KubeError as e:
            raise LabError(str(e)) from None
        finally:
            self.save(st)
        return k8s

    def etcd_client_files(self, st: LabState, client: str | None = None
                          ) -> dict[str, str] | None:
        """The CA, client certificate and key for the lab's etcd (``{"ca", "cert", "key"}``
        paths; None: plain HTTP): the control plane's, or with ``client`` a certificate of
        its own from the lab's CA (``<dir>/pki/etcd-client-CLIENT.crt``, CN=CLIENT)."""
        if not st.etcd_ca:
            return None
        if client is None:
            return {"ca": st.etcd_ca, "cert": st.etcd_cert, "key": st.etcd_key}
        cert = self.pki.issue(f"etcd-client-{client}", client)
        return {"ca": st.etcd_ca, "cert": str(cert.cert), "key": str(cert.key)}

    def etcd_env(self, st: LabState) -> dict[str, str]:
        """The environment a client of the lab's etcd needs (datastore/etcd_config.py):
        ``TORTIE_ETCD_ENDPOINTS`` and the CA, client certificate and key."""
        return st.etcd_env()

    # --- exec ---------------------------------------------------------------------------------

    def tortie(self, st: LabState, args: list[str], *,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``tortie`` CLI against the lab's etcd (from inside the fabric)."""
        return netns.exec_in(st.fabric, [sys.executable, "-m", "ctl.main", *args],
                             env=st.etcd_env(), capture=True, input=input, timeout=60)

    def exec(self, argv: list[str], *, node: str | None = None, pod: str | None = None) -> int:
        """Run ``argv`` in a pod, a node or (neither given) the fabric; on a node or the
        fabric with the etcd client settings in its environment, in a pod without them."""
        st = self.load()
        env = st.etcd_env()
        if pod is not None:
            if pod not in st.pods:
                raise LabError(f"no pod {pod} in lab {self.name!r}")
            target = st.pods[pod].netns
            env = {k: "" for k in env}  # a workload holds no datastore credentials
        elif node is not None:
            if node not in st.nodes:
                raise LabError(f"no node {node!r} in lab {self.name!r}")
            target = st.nodes[node].netns
        else:
            target = st.fabric
        return netns.exec_in(target, argv, env=env).returncode


def _check_pools(pool_cidr: str, pool6_cidr: str, *, kubernetes: bool) -> None:
    """``--pool`` an IPv4 CIDR, ``--pool6`` (a dual-stack lab; "": none) an IPv6 one; with
    Kubernetes neither overlapping a Service range (LabError naming the option)."""
    pools = [pool_cidr, *([pool6_cidr] if pool6_cidr else [])]
    for cidr, option, version in zip(pools, ("--pool", "--pool6"), (4, 6), strict=False):
        try:
            ok = ipaddress.ip_network(cidr, strict=False).version == version
        except ValueError:
            ok = False
        if not ok:
            raise LabError(f"{option} {cidr!r}: not an IPv{version} CIDR")
    if kubernetes:
        try:
            check_pools(pools, service_cidrs(bool(pool6_cidr)))
        except KubeError as e:
            raise LabError(str(e)) from None


def _split_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise LabError(f"pod {ref!r}: use NAMESPACE/NAME")
    return namespace, name




def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
