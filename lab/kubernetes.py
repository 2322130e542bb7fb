"""Real Kubernetes on the lab: Kubernetes' own binaries (scripts/kubernetes.sh builds them)
run next to Tortie in the lab's namespaces.

* the fabric namespace: kube-apiserver on the lab's etcd (key prefix ``/registry``),
  kube-controller-manager, kube-scheduler and tortie-kube-controllers; ``kubectl`` and
  ``e2e.test`` run there too (the API server is ``https://192.0.2.1:6443``, reachable only
  inside the lab);
* every node: its containerd (the lab's CRI mode), a kubelet and a kube-proxy (nftables),
  all entered with ``nsenter --net`` only, so they share the machine's mounts as a real
  node's daemons share the node's (kubelet's volume mounts must be visible to containerd);
  every kubelet has its own cgroup root ``/tortie-<lab>-<node>`` (cgroupfs driver);
* images: the pause, agnhost and busybox images the e2e suites use, built here
  (lab/images.py) and imported into every node's containerd under their upstream names, so
  kubelet never pulls.
* a dual-stack lab (``--dual-stack``): an IPv6 Service range next to the IPv4 one
  (:data:`SERVICE_CIDR6`), kubelets with both node addresses, kube-proxy for both families.

Files live under ``<lab dir>/k8s`` (certificates in ``<lab dir>/pki``, kubeconfigs, logs,
each kubelet's root directory); ``down`` stops every process by PID, kills what is left in
the nodes' cgroups, unmounts what kubelet mounted and removes the cgroups.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import images, netns
from lab.mounts import unmount_under
from lab.pki import Pki
from lab.procs import alive, stop_pid

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "kubernetes.sh"
API_PORT = 6443
SERVICE_CIDR = "10.96.0.0/16"
#: A dual-stack lab's IPv6 Service range (unique-local, a /112 as kind's), after the IPv4 one:
#: Services are IPv4 first, ``ipFamilyPolicy: PreferDualStack`` / ``RequireDualStack`` get both.
SERVICE_CIDR6 = "fd00:10:96::/112"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
ETCD_PREFIX = "/registry"
#: The images the e2e suites of the pinned release ask for (test/utils/image/manifest.go).
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.56"
BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
#: Applets of busybox-static the agnhost image carries (the e2e helpers exec grep, cat, ...).
#: /bin/sh, curl and netcat come from Debian with their libraries (dash: busybox-static's sh
#: runs its own applets first, and its nc has no -u), as upstream's image has curl and
#: netcat-openbsd.
AGNHOST_APPLETS = ("cat", "echo", "grep", "sleep", "ls", "ip", "hostname",
                   "nslookup", "wget", "ps", "test", "timeout", "env", "mkdir", "rm", "tr",
                   "head", "tail", "sed", "awk", "ping", "true", "false", "kill", "wc")
READY_TIMEOUT = 180.0
#: Host sysctls kubelet sets on start (pkg/kubelet/cm: setupKernelTunables); the lab puts
#: back what was there when its last kubelet is gone.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")
CGROUP_FS = Path("/sys/fs/cgroup")
#: A path every kubelet uses whatever its --root-dir (the device-plugin socket directory).
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")

Progress = Callable[[str], None]


class KubeError(RuntimeError):
    pass


def bin_dir(build: bool = True, progress: Progress | None = None) -> Path:
    """Where the built binaries are; builds them first when ``build`` (a no-op when warm)."""
    p = subprocess.run(["bash", str(BUILD_SCRIPT), "--print"], capture_output=True, text=True,
                       check=False)
    if p.returncode == 0:
        return Path(p.stdout.strip())
    if not build:
        raise KubeError(p.stderr.strip())
    if progress:
        progress("kubernetes: building the pinned release (scripts/kubernetes.sh)")
    b = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=sys.stderr, check=False)
    if b.returncode != 0:
        raise KubeError("scripts/kubernetes.sh failed")
    return bin_dir(build=False)


@dataclass(frozen=True)
class NodeInfo:
    """What this module needs to know of a lab node."""

    name: str
    netns: str
    address: str
    containerd_socket: str
    address6: str = ""  # a dual-stack lab: its IPv6 underlay address

    @property
    def addresses(self) -> tuple[str, ...]:
        """Its IPv4 address, then (dual stack) its IPv6 one: kubelet's ``--node-ip``."""
        return (self.address, self.address6) if self.address6 else (self.address,)


def service_cidrs(dual_stack: bool) -> tuple[str, ...]:
    """``--service-cluster-ip-range``: IPv4, and IPv6 too in a dual-stack lab."""
    return (SERVICE_CIDR, SERVICE_CIDR6) if dual_stack else (SERVICE_CIDR,)


def check_pools(pool_cidrs: Sequence[str], service_ranges: Sequence[str]) -> None:
    """KubeError when a pod pool overlaps a Service range (both hand out addresses)."""
    for pool in pool_cidrs:
        for svc in service_ranges:
            a, b = ipaddress.ip_network(pool, strict=False), ipaddress.ip_network(svc)
            if a.version == b.version and a.overlaps(b):
                raise KubeError(f"pool {pool} overlaps the Service range {svc} of the lab's "
                                f"Kubernetes: choose another --pool/--pool6")


class Kubernetes:
    """The Kubernetes part of one lab (``lab_dir``), its processes in ``pids``;
    ``dual_stack``: Services, nodes and kube-proxy of both families (IPv4 first)."""

    def __init__(self, lab_name: str, lab_dir: Path, fabric: str, fabric_ip: str,
                 pids: dict[str, int], progress: Progress | None = None,
                 dual_stack: bool = False) -> None:
        self.lab_name = lab_name
        self.dir = lab_dir / "k8s"
        self.pki = Pki(lab_dir / "pki")
        self.fabric = fabric
        self.fabric_ip = fabric_ip
        self.pids = pids
        self.progress = progress or (lambda msg: None)
        self.dual_stack = dual_stack
        self._bin: Path | None = None

    @property
    def service_cidrs(self) -> tuple[str, ...]:
        return service_cidrs(self.dual_stack)

    # --- paths --------------------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = bin_dir(progress=self.progress)
        return self._bin

    @property
    def server(self) -> str:
        return f"https://{self.fabric_ip}:{API_PORT}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def node_dir(self, node: str) -> Path:
        return self.dir / node

    def cgroup_root(self, node: str) -> str:
        return f"/tortie-{self.lab_name}-{node}"

    # --- kubeconfigs and certificates ---------------------------------------------------------

    def kubeconfig(self, name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for user CN (groups ``orgs``) with a client certificate of the lab's
        CA."""
        cert = self.pki.issue(f"k8s-{name}", cn, orgs=orgs)
        path = self.dir / f"{name}.kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki.ca.cert)}}],
            "users": [{"name": cn, "user": {"client-certificate": str(cert.cert),
                                            "client-key": str(cert.key)}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": cn}}],
            "current-context": "lab",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    # --- processes ----------------------------------------------------------------------------

    def _spawn(self, key: str, argv: Sequence[str], *, ns: str, enter_mounts: bool = False,
               env: dict[str, str] | None = None) -> int:
        """Start ``argv`` in network namespace ``ns``: with ``ip netns exec`` (a private mount
        namespace) or, ``enter_mounts``, with ``nsenter --net`` only (the machine's mounts)."""
        prefix = (["nsenter", f"--net={netns.netns_path(ns)}"] if enter_mounts
                  else ["ip", "netns", "exec", ns])
        log = self.dir / "logs" / f"{key.replace('/', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, start_new_session=True, cwd=self.dir,
                                    env=dict(os.environ, **(env or {})))
        self.pids[key] = proc.pid
        return proc.pid

    def log_tail(self, key: str, lines: int = 30) -> str:
        path = self.dir / "logs" / f"{key.replace('/', '-')}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait(self, what: str, key: str, ok: Callable[[], bool],
              timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            if not alive(self.pids.get(key, 0)):
                raise KubeError(f"{what} exited; its log:\n{self.log_tail(key)}")
            time.sleep(0.5)
        raise KubeError(f"{what} not ready within {timeout:.0f}s; its log:\n"
                        f"{self.log_tail(key)}")

    def kubectl(self, args: Sequence[str], *, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The built kubectl against this cluster (run in the fabric namespace)."""
        return netns.exec_in(self.fabric, [str(self.bin / "kubectl"), "--kubeconfig",
                                           str(self.admin_kubeconfig), *args],
                             capture=True, input=input, timeout=timeout)

    # --- control plane ------------------------------------------------------------------------

    def up_control_plane(self, etcd_servers: str, etcd_tls: dict[str, str] | None, *,
                         controllers: bool = True) -> None:
        """kube-apiserver, kube-controller-manager and kube-scheduler in the fabric
        (``controllers=False``: the API server alone); ``etcd_servers``: the lab's etcd
        client URLs, comma separated."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _ = self.bin  # build first when needed (says so)
        ca = self.pki.ensure_ca()
        serving = self.pki.issue(
            "k8s-apiserver", "kube-apiserver", server=True, client=False,
            ips=(self.fabric_ip, KUBERNETES_SERVICE_IP, "127.0.0.1"),
            dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost"))
        kubelet_client = self.pki.issue("k8s-apiserver-kubelet-client",
                                        "kube-apiserver-kubelet-client",
                                        orgs=("system:masters",))
        sa = self.pki.key_pair("k8s-service-accounts")
        self.kubeconfig("admin", "kubernetes-admin", ("system:masters",))
        argv = [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers={etcd_servers}", f"--etcd-prefix={ETCD_PREFIX}",
            f"--bind-address={self.fabric_ip}", f"--advertise-address={self.fabric_ip}",
            f"--secure-port={API_PORT}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-cluster-ip-range={','.join(self.service_cidrs)}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ]
        if etcd_tls:
            argv += [f"--etcd-cafile={etcd_tls['ca']}", f"--etcd-certfile={etcd_tls['cert']}",
                     f"--etcd-keyfile={etcd_tls['key']}"]
        start = time.monotonic()
        self._spawn("kube-apiserver", argv, ns=self.fabric)
        self._wait("kube-apiserver", "kube-apiserver", self._api_ready)
        self.progress(f"kubernetes: kube-apiserver {self.server} ready in "
                      f"{time.monotonic() - start:.1f}s (pid {self.pids['kube-apiserver']})")
        if not controllers:
            return
        cm = self.kubeconfig("controller-manager", "system:kube-controller-manager")
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), f"--kubeconfig={cm}",
            f"--authentication-kubeconfig={cm}", f"--authorization-kubeconfig={cm}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            f"--service-account-private-key-file={sa.key}", f"--root-ca-file={ca.cert}",
            "--use-service-account-credentials=true", "--allocate-node-cidrs=false",
            f"--service-cluster-ip-range={','.join(self.service_cidrs)}",
            f"--cluster-signing-cert-file={ca.cert}", f"--cluster-signing-key-file={ca.key}",
            "--profiling=false", "--v=1"], ns=self.fabric)
        sched = self.kubeconfig("scheduler", "system:kube-scheduler")
        self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"), f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1"],
            ns=self.fabric)
        self.progress(f"kubernetes: controller-manager (pid "
                      f"{self.pids['kube-controller-manager']}), scheduler (pid "
                      f"{self.pids['kube-scheduler']}); kubeconfig {self.admin_kubeconfig}")

    def _api_ready(self) -> bool:
        try:
            p = self.kubectl(["get", "--raw", "/readyz"], timeout=10)
        except subprocess.TimeoutExpired:  # a slow answer (a loaded machine): not yet
            return False
        return p.returncode == 0 and p.stdout.strip() == "ok"

    def up_kube_controllers(self, etcd_env: dict[str, str]) -> None:
        """tortie-kube-controllers against this API server, with a client certificate of its
        own (in system:masters: the ClusterRole of the kind manifests is checked separately,
        by tests/integration/test_kubernetes_controllers.py)."""
        kc = self.kubeconfig("tortie-kube-controllers", "tortie-kube-controllers",
                             ("system:masters",))
        self._spawn("tortie-kube-controllers", [
            sys.executable, "-m", "kubecontrollers.main", "--kubeconfig", str(kc),
            "--metrics-address", "127.0.0.1"], ns=self.fabric,
            env={**etcd_env, "PYTHONPATH": str(REPO)})
        self.progress(f"kubernetes: tortie-kube-controllers (pid "
                      f"{self.pids['tortie-kube-controllers']})")

    # --- images -------------------------------------------------------------------------------

    def image_tarballs(self) -> list[Path]:
        """The lab's images as OCI layouts (built once per lab)."""
        out = self.dir / "images"
        pause = out / "pause.tar"
        test = out / "e2e-images.tar"
        if not pause.exists():
            from lab.containerd import PAUSE_IMAGE as LAB_PAUSE
            from lab.containerd import pause_image
            images.write_layout(pause, [pause_image([LAB_PAUSE, PAUSE_IMAGE])])
        if not test.exists():
            agnhost = images.Image([AGNHOST_IMAGE], entrypoint=["/agnhost"], cmd=["pause"],
                                   comment="tortie lab: agnhost built from k8s.io/kubernetes")
            agnhost.files["agnhost"] = self.bin / "agnhost"
            agnhost.add_busybox(AGNHOST_APPLETS).add_executable("curl", "usr/bin/curl")
            agnhost.add_executable("nc.openbsd", "usr/bin/nc").add_executable("dash", "bin/sh")
            busybox = images.Image([BUSYBOX_IMAGE], cmd=["sh"],
                                   comment="tortie lab: busybox-static").add_busybox()
            images.write_layout(test, [agnhost, busybox])
        return [pause, test]

    # --- nodes --------------------------------------------------------------------------------

    def up_node(self, node: NodeInfo, pool_cidrs: Sequence[str]) -> None:
        """kubelet and kube-proxy on ``node`` (its containerd is up already); ``pool_cidrs``:
        the lab's pod pools (kube-proxy's ``clusterCIDR``, one per family)."""
        d = self.node_dir(node.name)
        d.mkdir(parents=True, exist_ok=True)
        self._save_host_state()
        self._make_cgroup_root(node.name)
        ca = self.pki.ca
        serving = self.pki.issue(f"k8s-kubelet-serving-{node.name}", node.name, server=True,
                                 client=False, ips=node.addresses, dns=(node.name,))
        kubeconfig = self.kubeconfig(f"kubelet-{node.name}", f"system:node:{node.name}",
                                     ("system:nodes",))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": node.address, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False},
                               "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(ca.cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root(node.name),
            "cgroupsPerQOS": True, "failSwapOn": False, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
            "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(d / "pod-logs"), "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "maxPods": 110, "registerNode": True, "protectKernelDefaults": False,
            "localStorageCapacityIsolation": False,
            "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        }
        (d / "kubelet.yaml").write_text(json.dumps(config, indent=2) + "\n")
        self._spawn(f"{node.name}/kubelet", [
            str(self.bin / "kubelet"), f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={d / 'kubelet'}",
            f"--hostname-override={node.name}", f"--node-ip={','.join(node.addresses)}", "--v=1"],
            ns=node.netns, enter_mounts=True)
        proxy_kubeconfig = self.kubeconfig("kube-proxy", "system:kube-proxy")
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(proxy_kubeconfig)},
            "hostnameOverride": node.name, "mode": "nftables",
            "clusterCIDR": ",".join(pool_cidrs),
            # pods are behind cali* interfaces: traffic from them is local, not masqueraded
            "detectLocalMode": "InterfaceNamePrefix",
            "detectLocal": {"interfaceNamePrefix": "cali"},
            # leave the machine's conntrack sysctls alone (they are not per namespace)
            "conntrack": {"maxPerCore": 0, "min": 0},
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": ["primary"],
        }
        (d / "kube-proxy.yaml").write_text(json.dumps(proxy, indent=2) + "\n")
        self._spawn(f"{node.name}/kube-proxy", [
            str(self.bin / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"],
            ns=node.netns, enter_mounts=True)
        self.progress(f"node {node.name}: kubelet (pid {self.pids[f'{node.name}/kubelet']}), "
                      f"kube-proxy (pid {self.pids[f'{node.name}/kube-proxy']})")

    def wait_nodes_ready(self, names: Sequence[str], timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        ready: set[str] = set()
        while time.monotonic() < deadline:
            ready = self.ready_nodes()
            if set(names) <= ready:
                return
            for n in names:
                if not alive(self.pids.get(f"{n}/kubelet", 0)):
                    raise KubeError(f"kubelet on {n} exited; its log:\n"
                                    f"{self.log_tail(f'{n}/kubelet')}")
            time.sleep(1)
        missing = sorted(set(names) - ready)
        raise KubeError(f"nodes not Ready within {timeout:.0f}s: {', '.join(missing)}; "
                        f"kubelet log of {missing[0]}:\n{self.log_tail(f'{missing[0]}/kubelet')}")

    def ready_nodes(self) -> set[str]:
        try:
            p = self.kubectl(["get", "nodes", "-o", "json"], timeout=20)
        except subprocess.TimeoutExpired:
            return set()
        if p.returncode != 0:
            return set()
        ready = set()
        for item in json.loads(p.stdout).get("items", []):
            for cond in item.get("status", {}).get("conditions", []):
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready.add(item["metadata"]["name"])
        return ready

    # --- cgroups and sysctls ------------------------------------------------------------------

    def _cgroup_dirs(self, node: str) -> list[Path]:
        rel = self.cgroup_root(node).lstrip("/")
        return [c / rel for c in sorted(CGROUP_FS.iterdir())
                if c.is_dir() and not c.is_symlink() and (c / "cgroup.procs").exists()]

    def _make_cgroup_root(self, node: str) -> None:
        for d in self._cgroup_dirs(node):
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):  # cpuset children start empty
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())

    def _remove_cgroups(self, node: str) -> None:
        """Kill what is left in the node's cgroups (by PID), then remove them bottom-up."""
        dirs = self._cgroup_dirs(node)
        for d in dirs:
            for procs in d.rglob("cgroup.procs") if d.exists() else []:
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        stop_pid(int(pid), 2.0)
        for d in dirs:
            if not d.exists():
                continue
            subdirs = sorted((p for p in d.rglob("*") if p.is_dir()),
                             key=lambda p: len(p.parts), reverse=True)
            for sub in [*subdirs, d]:
                with contextlib.suppress(OSError):
                    sub.rmdir()

    def _save_host_state(self) -> None:
        """What kubelet changes outside the lab, as it was before the first kubelet."""
        saved = self.dir / "host-state.json"
        if saved.exists():
            return
        values = {}
        for key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                values[key] = (Path("/proc/sys") / key).read_text().strip()
        saved.write_text(json.dumps({"sysctls": values,
                                     "kubelet_dir_existed": KUBELET_FIXED_DIR.exists()}))

    def _restore_host_state(self) -> None:
        """Put back the sysctls, and remove /var/lib/kubelet if the lab made it; not while
        another lab still runs kubelets."""
        saved = self.dir / "host-state.json"
        others = [d for d in self.dir.parent.parent.glob("*/k8s/host-state.json")
                  if d != saved]
        if not saved.exists() or others:
            return
        with contextlib.suppress(ValueError):
            state = json.loads(saved.read_text())
            for key, value in state.get("sysctls", {}).items():
                with contextlib.suppress(OSError):
                    (Path("/proc/sys") / key).write_text(value)
            if not state.get("kubelet_dir_existed", True):
                shutil.rmtree(KUBELET_FIXED_DIR, ignore_errors=True)
        saved.unlink()

    # --- down ---------------------------------------------------------------------------------

    def stop_node_daemons(self) -> None:
        """Stop kubelets and kube-proxies: first, so that no kubelet starts a pod again while
        containerd removes the sandboxes."""
        for key in [k for k in self.pids if "/" in k]:
            stop_pid(self.pids.pop(key), 10.0)

    def down(self, nodes: Sequence[str]) -> None:
        """Everything else this module made (after the nodes' containerds are down):
        processes (by PID), mounts, cgroups, sysctls."""
        self.stop_node_daemons()
        for key in list(self.pids):
            stop_pid(self.pids.pop(key), 10.0)
        unmount_under(self.dir)
        for node in nodes:
            self._remove_cgroups(node)
        self._restore_host_state()
