"""Network namespaces and sysctls.

Work inside another network namespace runs on a fresh thread that enters it (``setns``) and
then exits, so no thread is ever left in the wrong namespace (``pyroute2``'s own ``netns=``
forks, which a process using gRPC must not do).  ``/proc/sys/net`` is per network namespace
of the calling thread, so sysctls of a namespace are read and written from such a thread.

The one exception is :func:`socket_in`: a socket belongs to the namespace it was created in
for its whole life, so creating one needs the namespace for a moment only.  The calling
thread enters, creates it and goes back (two ``setns``, ~30 us here, against ~230 us for a
thread of its own); a thread that cannot go back ends the process rather than go on in the
wrong namespace.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2.netns import setns as _pyroute2_setns

__all__ = ["CLONE_NEWNET", "NetnsError", "NetnsGone", "NotANetns", "netns_identity",
           "open_netns", "read_sysctl", "run_in_netns", "setns", "socket_in", "write_sysctl"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type


class NetnsError(Exception):
    """A namespace could not be entered, or a sysctl not written."""


class NetnsGone(NetnsError):
    """The namespace does not exist (any more)."""


class NotANetns(NetnsError):
    """The path is something other than a network namespace."""


def open_netns(path: str) -> int:
    """An fd of the network namespace at ``path``: :class:`NetnsGone` if there is none (also
    for the empty file an unmounted namespace leaves), :class:`NotANetns` if the path is
    something else."""
    try:
        # only regular files are opened (a namespace file is one): opening a FIFO would
        # block, opening a device may do something
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotANetns(f"{path} is not a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise NetnsGone(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NetnsError(f"cannot open network namespace {path}: {e.strerror}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind == CLONE_NEWNET:
        return fd
    size = os.fstat(fd).st_size
    os.close(fd)
    if kind is None and size == 0:
        # the mount point of a namespace that was unmounted (ip netns del, a runtime's
        # teardown): the namespace is gone
        raise NetnsGone(f"network namespace {path} does not exist (an empty file, not "
                        "mounted)")
    raise NotANetns(f"{path} is not a network namespace")


def netns_identity(path: str) -> tuple[int, int]:
    """(device, inode) of the network namespace at ``path``: what tells two paths to one
    namespace apart from two namespaces.  :class:`NetnsGone` / :class:`NotANetns`."""
    fd = open_netns(path)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def setns(target: int | str) -> None:
    """Move the calling thread into a network namespace: an fd of it, or its path (checked
    as :func:`open_netns` does; never created).  ``OSError`` / :class:`NetnsError`."""
    if isinstance(target, int):
        _pyroute2_setns(target)
        return
    fd = open_netns(target)
    try:
        _pyroute2_setns(fd)
    finally:
        os.close(fd)


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread that has joined the network namespace at ``path``."""
    fd = open_netns(path)
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            try:
                setns(fd)
            except OSError as e:
                raise NetnsError(f"cannot enter network namespace {path}: "
                                 f"{os.strerror(e.errno or 0)}") from None
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    try:
        thread = threading.Thread(target=body, name=f"netns:{os.path.basename(path)}")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


#: the exit status of a process whose thread could not return to its own namespace
LOST_NAMESPACE_EXIT = 70


def socket_in(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket of the network namespace at ``path``, created by the calling thread, which
    enters the namespace and returns to its own (see the module docstring).
    :class:`NetnsGone` / :class:`NotANetns` / :class:`NetnsError` as :func:`open_netns`."""
    target = open_netns(path)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _pyroute2_setns(target)
            except OSError as e:
                raise NetnsError(f"cannot enter network namespace {path}: "
                                 f"{os.strerror(e.errno or 0)}") from None
            try:
                return socket.socket(family, kind, proto)
            finally:
                _return_home(home, path)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _return_home(home: int, path: str) -> None:
    try:
        _pyroute2_setns(home)
    except BaseException as e:  # the thread would go on acting in the pod's namespace
        os.write(2, f"fatal: a thread cannot return from network namespace {path} to its "
                    f"own ({e}); exiting\n".encode(errors="replace"))
        os._exit(LOST_NAMESPACE_EXIT)


def write_sysctl(path: str, value: str) -> None:
    """Write ``/proc/sys/<path>`` (slash-separated, interface names may contain dots)."""
    full = "/proc/sys/" + path
    try:
        with open(full, "w") as f:
            f.write(value)
    except OSError as e:
        raise NetnsError(f"cannot set {full} to {value}: {e.strerror}") from None


def read_sysctl(path: str) -> str | None:
    """``/proc/sys/<path>`` stripped, ``None`` when it cannot be read."""
    try:
        with open("/proc/sys/" + path) as f:
            return f.read().strip()
    except OSError:
        return None
