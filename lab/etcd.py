"""Start, stop and restart real etcd processes: for the lab, the demo and the tests.

Every etcd gets a unique name, free 127.0.0.1 ports and its own data directory, so any
number of test runs can run side by side.  Processes are always stopped by PID; anything
still running when the interpreter exits is killed by an ``atexit`` hook.

Typical use::

    with run_etcd() as etcd:                 # own temp dir, removed afterwards
        store = Store(etcd.config())
        ...
        etcd.restart()                       # same data dir and ports

    with run_etcd(tls=True) as etcd:         # https, client certificates required
        etcd.config()                        # includes CA, client cert and key
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore.etcd_config import EtcdConfig
from lab.pki import Pki

ETCD_BIN = os.environ.get("TORTIE_ETCD_BIN", "/usr/bin/etcd")
START_TIMEOUT = 15.0

_running: dict[int, subprocess.Popen[bytes]] = {}


def etcd_available() -> bool:
    """Whether the etcd binary is installed."""
    return os.access(ETCD_BIN, os.X_OK)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A CA plus a server and a client certificate signed by it."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def tls_files(pki: Pki, *, server_ips: tuple[str, ...] = ("127.0.0.1",),
              client_name: str = "client", client_cn: str = "tortie-client") -> TlsFiles:
    """etcd's server certificate (``server``: SANs ``server_ips`` and localhost; client use
    too, for etcd's own gateway connections) and one client certificate, issued by ``pki``'s
    CA (made if needed)."""
    ca = pki.ensure_ca()
    server = pki.issue("server", "etcd", ips=(*server_ips, "127.0.0.1"), dns=("localhost",),
                       server=True, client=True)
    client = pki.issue(client_name, client_cn)
    return TlsFiles(ca_cert=ca.cert, ca_key=ca.key, server_cert=server.cert,
                    server_key=server.key, client_cert=client.cert, client_key=client.key)


def make_tls_files(directory: Path, *, client_cn: str = "tortie-client") -> TlsFiles:
    """A new CA in ``directory``, a server cert (SAN IP:127.0.0.1) and a client cert."""
    return tls_files(Pki(directory, ca_name="tortie-test-ca"), client_cn=client_cn)


def etcdctl_flags(config: EtcdConfig) -> list[str]:
    """``etcdctl`` flags for the endpoints and TLS files of ``config``."""
    flags = [f"--endpoints={','.join(config.endpoints)}"]
    for flag, path in (("--cacert", config.ca_cert_file), ("--cert", config.cert_file),
                       ("--key", config.key_file)):
        if path:
            flags.append(f"{flag}={path}")
    return flags


class EtcdProcess:
    """One etcd member, data in ``base_dir/data``: by default a single-member cluster on
    127.0.0.1; with ``cluster`` one member of several (the lab's three-member etcd)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        tls: TlsFiles | None = None,
        name: str | None = None,
        extra_args: tuple[str, ...] = (),
        netns: str | None = None,
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        cluster: tuple[tuple[str, str], ...] = (),
        cluster_token: str | None = None,
        peer_tls: bool = False,
    ) -> None:
        """``cluster``: every member's ``(name, peer URL)`` (this one's included), all
        members sharing ``cluster_token``; empty: a cluster of this member alone.
        ``peer_tls`` (with ``tls``): members talk https to each other and present the server
        certificate, which must come from the CA."""
        self.base_dir = base_dir
        self.netns = netns  # run inside this network namespace (the lab's fabric)
        self.host = host
        self.name = name or f"tortie-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.data_dir = base_dir / "data"
        self.log_file = base_dir / "etcd.log"
        self.tls = tls
        self.extra_args = extra_args
        self.client_port = client_port
        self.peer_port = peer_port or (client_port + 1 if client_port else 0)
        self.cluster = cluster
        self.cluster_token = cluster_token or self.name
        self.peer_tls = peer_tls and tls is not None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses and settings --------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:40123``."""
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"etcd {self.name} is not running")
        return self._proc.pid

    @property
    def config(self) -> EtcdConfig:
        """An EtcdConfig for this etcd (with the client certificate if TLS)."""
        return self.make_config()

    def make_config(self, *, timeout: float = 5.0, client_cert: bool = True) -> EtcdConfig:
        if self.tls is None:
            return EtcdConfig(endpoints=(self.endpoint,), timeout=timeout)
        return EtcdConfig(
            endpoints=(self.endpoint,),
            ca_cert_file=str(self.tls.ca_cert),
            cert_file=str(self.tls.client_cert) if client_cert else None,
            key_file=str(self.tls.client_key) if client_cert else None,
            timeout=timeout,
        )

    @property
    def peer_url(self) -> str:
        """This member's peer URL (loopback of its namespace)."""
        scheme = "https" if self.peer_tls else "http"
        return f"{scheme}://127.0.0.1:{self.peer_port}"

    def _args(self) -> list[str]:
        client = self.endpoint
        if self.host != "127.0.0.1":
            client += f",{self.scheme}://127.0.0.1:{self.client_port}"
        peer = self.peer_url
        members = self.cluster or ((self.name, peer),)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        args = [
            *prefix,
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", ",".join(f"{n}={u}" for n, u in members),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        if self.tls is not None:
            args += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca_cert),
                "--client-cert-auth",
            ]
            if self.peer_tls:  # members prove themselves to each other too
                args += [
                    "--peer-cert-file", str(self.tls.server_cert),
                    "--peer-key-file", str(self.tls.server_key),
                    "--peer-trusted-ca-file", str(self.tls.ca_cert),
                    "--peer-client-cert-auth",
                ]
        return args + list(self.extra_args)

    # -- lifecycle ---------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd (on fresh free ports the first time) and wait until it is healthy."""
        if self.is_running():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        fresh_ports = self.client_port == 0
        for attempt in range(3):
            if fresh_ports:
                self.client_port, self.peer_port = free_port(), free_port()
            self._spawn()
            try:
                self.wait_healthy(timeout)
                return
            except RuntimeError:
                in_use = "address already in use" in self.log_tail(40)
                self.stop()
                if not (fresh_ports and in_use and attempt < 2):
                    raise
                # Someone grabbed a port between free_port() and etcd's bind: new ports.
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def launch(self) -> None:
        """Start the process without waiting for health: a member of a new cluster is healthy
        only once a quorum of its peers runs, so a caller launches every member first and
        then waits for each (:meth:`wait_healthy`).  The ports must be fixed."""
        if self.is_running():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        if not self.client_port:
            raise RuntimeError(f"etcd {self.name}: launch() needs fixed ports")
        self._spawn()

    def _spawn(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_file, "ab") as log:
            log.write(f"--- starting etcd {self.name} at {time.ctime()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._args(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # a Ctrl-C meant for the caller must not kill it
            )
        _running[self._proc.pid] = self._proc

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``/health`` says true; RuntimeError with etcd's log tail if not."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise RuntimeError(
                    f"etcd {self.name} exited with code {code} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                if self.netns:  # not reachable from here: ask from inside
                    self.etcdctl("endpoint", "health", "--command-timeout=1s")
                    return
                health = json.loads(self.http_get("/health", timeout=1.0))
                if health.get("health") == "true":
                    return
                last = f"health: {health}"
            except (OSError, ValueError, RuntimeError) as e:
                last = str(e)
            time.sleep(0.05)
        raise RuntimeError(
            f"etcd {self.name} (pid {self.pid}, {self.endpoint}) not healthy within "
            f"{timeout}s (last: {last}); log tail:\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Stop etcd by PID (SIGKILL by default: a crash; SIGTERM: a clean shutdown)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        _running.pop(proc.pid, None)
        self._proc = None

    def detach(self) -> int:
        """Let this etcd outlive this process (the lab's, stopped by ``tortie lab down``)."""
        pid = self.pid
        _running.pop(pid, None)
        return pid

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Stop and start again with the same data directory and ports."""
        self.stop(sig)
        self.start()

    # -- inspection --------------------------------------------------------------------

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def http_get(self, path: str, timeout: float = 5.0) -> str:
        """GET a path of etcd's client URL (``/health``, ``/metrics``, ...)."""
        with urllib.request.urlopen(
            self.endpoint + path, timeout=timeout, context=self._ssl_context()
        ) as resp:
            body: bytes = resp.read()
        return body.decode()

    def metric(self, name: str) -> float:
        """The value of an unlabelled Prometheus metric (``etcd_debugging_mvcc_watcher_total``)."""
        for line in self.http_get("/metrics").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
        raise KeyError(name)

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """etcd's Status of this member (``etcdctl endpoint status -w json``): its
        ``member_id``, the ``leader``'s member id, ``raft_term``, ``db_size``..."""
        out = self.etcdctl("endpoint", "status", "-w", "json", f"--command-timeout={timeout}s")
        status: dict[str, Any] = json.loads(out)[0]["Status"]
        return {"member_id": status["header"]["member_id"], **status}

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` against this etcd; returns stdout, raises on failure."""
        cmd = [*(["ip", "netns", "exec", self.netns] if self.netns else []),
               "etcdctl", *etcdctl_flags(self.config)]
        env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env["ETCDCTL_API"] = "3"
        p = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=30,
                           check=False)
        if p.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout


@contextlib.contextmanager
def run_etcd(
    base_dir: Path | None = None,
    *,
    tls: bool | TlsFiles = False,
    name: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[EtcdProcess]:
    """Run a separately owned etcd for the duration of the ``with`` block.

    Its files live in a new directory (inside ``base_dir`` if given, else in the system temp
    dir) that is removed afterwards, like the process (killed by PID), also on errors.
    ``tls=True`` makes a fresh CA and certificates and requires client certificates;
    ``extra_args`` are passed to etcd as they are.
    """
    if base_dir is None:
        work = Path(tempfile.mkdtemp(prefix="tortie-etcd-"))
    else:
        work = base_dir / f"etcd-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
    etcd: EtcdProcess | None = None
    try:
        tls_files = make_tls_files(work / "tls") if tls is True else (tls or None)
        etcd = EtcdProcess(work, tls=tls_files, name=name, extra_args=extra_args)
        etcd.start()
        yield etcd
    finally:
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(work, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    for pid, proc in list(_running.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        _running.pop(pid, None)
