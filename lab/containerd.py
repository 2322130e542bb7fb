"""A private containerd for the lab's runtime mode: Debian's containerd 1.6 with its CRI
plugin, runc, and a pause image built here from busybox-static (never a registry).

Everything lives under one directory (``base``)::

    base/config.toml        the config (CRI on, unneeded plugins off)
    base/containerd.sock    the gRPC socket (CRI and containerd's own API)
    base/root, base/state   containerd's root and state (runc's root in state/runc)
    base/cni/bin            symlinks: tortie, tortie-ipam and the reference plugins
    base/cni/net.d          the conflist (the node's tortie-node socket written in)
    base/pause.tar          the pause image (OCI layout), imported into ``k8s.io``
    base/containerd.log     its log

:class:`Containerd` starts it (optionally inside a network namespace, entered with
``nsenter --net`` only, so the netns mounts containerd makes for sandboxes are visible to
everyone) and stops it by PID; ``stop`` also kills what a crash may leave (shims and
sandbox processes, by PID: the tasks' init.pid files and the shims started with this
containerd's socket) and unmounts what is still mounted under ``base``.  See docs/runtime.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lab import images
from lab.cri import DEFAULT_TIMEOUT, CRIError, RuntimeClient
from lab.mounts import unmount_under
from lab.procs import alive as _alive
from lab.procs import stop_pid as _kill

CONTAINERD = "containerd"
CTR = "ctr"
RUNC = "runc"
BUSYBOX = "/bin/busybox"
PAUSE_IMAGE = "tortie.local/pause:busybox"
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in
SNAPSHOTTER = "overlayfs"
#: The newest CNI spec version containerd 1.6's libcni speaks (1.1.0 results are refused).
CNI_VERSION_MAX = "1.0.0"
#: Where containerd's libcni caches ADD results (not configurable in containerd 1.6).
CNI_CACHE = Path("/var/lib/cni")
#: runc puts a sandbox in the cgroup ``<controller>/k8s.io/<id>`` (cgroupfs driver).
CGROUP_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
#: Plugins the CRI plugin can do without: they cost start-up time or need absent tools.
#: (containerd 1.6's tasks service needs the v1 runtime plugin loaded, so it stays.)
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)
#: The pause process: PID 1 of the sandbox, exits on TERM/INT, otherwise sleeps forever.
PAUSE_ENTRYPOINT = ["/bin/busybox", "sh", "-c",
                    "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 86400 & wait; done"]


class ContainerdError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    """What the runtime mode needs and this machine lacks (empty: all there)."""
    missing = [b for b in (CONTAINERD, CTR, RUNC, "nsenter") if shutil.which(b) is None]
    if not os.access(BUSYBOX, os.X_OK):
        missing.append(f"{BUSYBOX} (busybox-static)")
    return missing


# --- the pause image ---------------------------------------------------------------------------


def pause_image(names: list[str], busybox: str = BUSYBOX) -> images.Image:
    """The pause image: busybox-static running :data:`PAUSE_ENTRYPOINT`."""
    img = images.Image(names, entrypoint=PAUSE_ENTRYPOINT, env=["PATH=/bin"],
                       comment="tortie lab: busybox-static as the pause image")
    return img.add_busybox(["sh", "sleep"], busybox=busybox)


def build_pause_image(path: Path, name: str = PAUSE_IMAGE, busybox: str = BUSYBOX,
                      extra_names: tuple[str, ...] = ()) -> Path:
    """Write an OCI image layout tarball holding a pause image made of ``busybox``."""
    return images.write_layout(path, [pause_image([name, *extra_names], busybox)])


def socket_of(base: Path | str) -> str:
    """The gRPC (and CRI) socket of the containerd whose directory is ``base``."""
    return str(Path(base) / "containerd.sock")


# --- config ------------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render_config(base: Path, *, cni_bin: Path, cni_conf: Path, sandbox_image: str = PAUSE_IMAGE,
                  snapshotter: str = SNAPSHOTTER) -> str:
    root, state, sock = base / "root", base / "state", socket_of(base)
    runc = shutil.which(RUNC) or RUNC
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    disabled = ", ".join(_toml_str(p) for p in DISABLED_PLUGINS)
    return f"""# written by tortie lab (lab/containerd.py): a private containerd, never the system's
version = 2
root = {_toml_str(str(root))}
state = {_toml_str(str(state))}
disabled_plugins = [{disabled}]
# exit at once instead of serving without CRI
required_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {_toml_str(str(sock))}

[ttrpc]
  address = {_toml_str(str(sock) + ".ttrpc")}

[debug]
  level = "info"

[metrics]
  address = ""

[{cri}]
  sandbox_image = {_toml_str(sandbox_image)}
  # runc would otherwise refuse the sandbox's oom_score_adj (-998) here
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = {_toml_str(snapshotter)}
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = {_toml_str(runc)}
  Root = {_toml_str(str(state / "runc"))}
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = {_toml_str(str(cni_bin))}
  conf_dir = {_toml_str(str(cni_conf))}
  max_conf_num = 1
"""


def link_plugins(target: Path, dirs: Iterable[Path]) -> None:
    """Fill ``target`` with symlinks to the CNI executables in ``dirs`` (first one wins):
    containerd 1.6 looks for plugins in one directory only."""
    target.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        if not d.is_dir():
            continue
        for exe in sorted(d.iterdir()):
            link = target / exe.name
            if exe.name.startswith(".") or link.exists() or link.is_symlink():
                continue
            link.symlink_to(exe.resolve())


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def node_conflist(conflist: Mapping[str, Any], *, socket: str, version: str,
                  ipam: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The conflist for one node's containerd: its tortie-node's socket, and a cniVersion
    every plugin in the chain and containerd itself speak; ``ipam``: settings over the
    tortie plugin's ipam section (a dual-stack lab: both families)."""
    out: dict[str, Any] = json.loads(json.dumps(conflist))
    out["cniVersion"] = min(version, CNI_VERSION_MAX, key=_version_key)
    for plugin in out["plugins"]:
        if plugin.get("type") == "tortie":
            plugin["socket"] = socket
            if ipam:
                plugin["ipam"] = {**plugin.get("ipam", {}), **ipam}
    return out


# --- the process -------------------------------------------------------------------------------


class Containerd:
    """One private containerd (start/stop by PID; also a context manager)."""

    def __init__(self, base: Path | str, *, conflist: Mapping[str, Any] | None = None,
                 plugin_dirs: Iterable[Path | str] = (), netns: str | None = None,
                 pid: int = 0) -> None:
        """``conflist`` and ``plugin_dirs`` are needed to start it, not to stop it."""
        self.base = Path(base)
        self.conflist = dict(conflist or {})
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.netns = netns
        self.pid = pid

    @property
    def socket(self) -> str:
        return socket_of(self.base)

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    @property
    def cni_bin(self) -> Path:
        return self.base / "cni" / "bin"

    @property
    def cni_conf(self) -> Path:
        return self.base / "cni" / "net.d"

    def client(self) -> RuntimeClient:
        return RuntimeClient(self.socket)

    # --- start ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the config, the CNI bin and conf directories and the pause image."""
        missing = missing_binaries()
        if missing:
            raise ContainerdError(f"the runtime mode needs {', '.join(missing)}")
        if not self.conflist:
            raise ContainerdError("no CNI network configuration to start containerd with")
        self.base.mkdir(parents=True, exist_ok=True)
        link_plugins(self.cni_bin, self.plugin_dirs)
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        conf = self.cni_conf / "10-tortie.conflist"
        conf.write_text(json.dumps(self.conflist, indent=2) + "\n")
        (self.base / "config.toml").write_text(
            render_config(self.base, cni_bin=self.cni_bin, cni_conf=self.cni_conf))
        build_pause_image(self.base / "pause.tar")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start containerd, import the pause image and wait until CRI's network is ready."""
        self.prepare()
        argv = [CONTAINERD, "--config", str(self.base / "config.toml")]
        if self.netns is not None:
            argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, env=self._env())
        self.pid = proc.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as cri:
            while True:
                if not _alive(self.pid):
                    raise ContainerdError(f"containerd exited; its log ({self.log}):\n"
                                          f"{_tail(self.log)}")
                if os.path.exists(self.socket):
                    try:
                        cri.version(timeout=2)
                        break
                    except CRIError:
                        pass
                if time.monotonic() > deadline:
                    raise ContainerdError(f"containerd not serving CRI within {timeout}s; "
                                          f"log:\n{_tail(self.log)}")
                time.sleep(0.05)
            self._import_pause(deadline)
            while True:  # CRI learns of the import through an event: wait for it, or
                conditions = cri.status()  # RunPodSandbox would try to pull the image
                if (conditions and all(ok for ok, _ in conditions.values())
                        and cri.image_present(PAUSE_IMAGE)):
                    return
                if time.monotonic() > deadline:
                    raise ContainerdError(f"containerd not ready within {timeout}s: "
                                          f"{conditions}")
                time.sleep(0.05)

    def _import_pause(self, deadline: float) -> None:
        self.import_image(self.base / "pause.tar", max(1.0, deadline - time.monotonic()))

    def import_image(self, tarball: Path, timeout: float = 120.0) -> None:
        """Import an OCI layout tarball into the CRI's namespace (every name it carries)."""
        p = subprocess.run(
            [CTR, "-a", self.socket, "-n", CRI_NAMESPACE, "images", "import",
             "--snapshotter", SNAPSHOTTER, str(tarball)],
            capture_output=True, text=True, timeout=timeout, check=False, env=self._env())
        if p.returncode != 0:
            raise ContainerdError(f"importing {tarball.name} failed: "
                                  f"{p.stderr.strip() or p.stdout.strip()}")

    # --- stop -----------------------------------------------------------------------------

    def remove_all_sandboxes(self, timeout: float | None = None) -> None:
        """Stop and remove every pod sandbox (what a drained node does)."""
        if not (_alive(self.pid) and os.path.exists(self.socket)):
            return
        with RuntimeClient(self.socket, timeout or DEFAULT_TIMEOUT) as cri:
            for sb in cri.list_pod_sandbox():
                with contextlib.suppress(CRIError):
                    cri.stop_pod_sandbox(sb.id)
                with contextlib.suppress(CRIError):
                    cri.remove_pod_sandbox(sb.id)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop containerd (by PID), then whatever its tasks left: sandbox processes and
        shims (by PID), mounts under ``base``."""
        _kill(self.pid, timeout)
        self.pid = 0
        for pid in self._task_pids():
            _kill(pid, 2.0)
        unmount_under(self.base)
        for sandbox in self._task_ids():  # what runc and libcni keep for a live sandbox
            for cached in CNI_CACHE.glob(f"results/*-{sandbox}-*"):
                cached.unlink(missing_ok=True)
            for cgroup in CGROUP_ROOT.glob(f"*/{CRI_NAMESPACE}/{sandbox}"):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()  # (empty now: its processes are gone)

    def _task_ids(self) -> list[str]:
        tasks = self.base / "state" / "io.containerd.runtime.v2.task"
        return sorted(d.name for d in tasks.glob("*/*") if len(d.name) == 64)

    def _task_pids(self) -> list[int]:
        """The sandbox processes (each task bundle's init.pid), then this containerd's shims
        (the processes started with ``-address <our socket>``)."""
        pids: list[int] = []
        tasks = self.base / "state" / "io.containerd.runtime.v2.task"
        for f in sorted(tasks.glob("*/*/init.pid")):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(f.read_text().strip()))
        marker = f"\0-address\0{self.socket}\0".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline.split(b"\0", 1)[0] and marker in cmdline:
                    pids.append(int(proc.name))
        return pids

    def remove(self) -> None:
        """Stop and delete ``base`` entirely."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with contextlib.suppress(CRIError, ContainerdError):
                self.remove_all_sandboxes()
        finally:
            self.stop()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
