"""The tools tests need: skipped locally when missing, a failure under ``CI=true``.

CI installs everything (``scripts/install.sh``), so a missing tool there is a broken machine,
not a reason to pass.  A test names what it needs with the ``tools`` mark
(``pytest.mark.tools("nft", "ip")``, checked before the test runs by tests/conftest.py) or
calls :func:`require_tool` / :func:`require_tools` itself.  Only a missing *kernel feature*
may skip under CI too: :func:`skip_kernel`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

#: Whether this run is CI (missing tools fail instead of skipping).
IN_CI = os.environ.get("CI") == "true"
#: How to get every tool the tests use.
INSTALL = "sudo bash scripts/install.sh"


def require_tool(name: str, available: bool, *, detail: str = "",
                 install: str = INSTALL) -> None:
    """Go on when ``available``; else skip the test, or fail it under ``CI=true``, with a
    message naming the tool (``detail`` says more) and how to install it."""
    if available:
        return
    msg = f"{name} is missing{f' ({detail})' if detail else ''}; install it: {install}"
    if IN_CI:
        pytest.fail(f"CI=true: {msg}", pytrace=False)
    pytest.skip(msg)


def skip_kernel(reason: str) -> NoReturn:
    """Skip for a kernel feature this machine lacks (allowed under CI too)."""
    pytest.skip(f"kernel feature missing: {reason}")


@dataclass(frozen=True)
class Tool:
    """How to tell a tool is missing: ``missing()`` is "" when present, else what lacks."""

    missing: Callable[[], str]
    install: str = INSTALL


def _which(*commands: str) -> Callable[[], str]:
    def missing() -> str:
        return ", ".join(c for c in commands if shutil.which(c) is None)
    return missing


def _etcd() -> str:
    from lab.etcd import etcd_available
    return "" if etcd_available() else "etcd"


def _exabgp() -> str:
    from routing.bgp.speaker import default_exabgp
    path = default_exabgp()
    return "" if Path(path).exists() else path


def _bird() -> str:
    return "" if shutil.which("bird") or Path("/usr/sbin/bird").exists() else "bird"


def _containerd() -> str:
    from lab import containerd
    return ", ".join(containerd.missing_binaries())


def _kubernetes() -> str:
    from lab.kubernetes import KubeError, bin_dir
    try:
        bin_dir(build=False)
    except KubeError as e:
        return str(e)
    return ""


def _libnftables() -> str:
    from policyagent import nft_apply
    return "" if nft_apply.backend() == "libnftables" else "libnftables cannot be loaded"


def _kube_controllers() -> str:
    import sys
    exe = Path(sys.executable).with_name("tortie-kube-controllers")
    return "" if exe.exists() else str(exe)


def _module(name: str) -> Callable[[], str]:
    def missing() -> str:
        return "" if importlib.util.find_spec(name) is not None else f"Python module {name}"
    return missing


CNI_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def cni_plugin(name: str) -> str | None:
    """The reference CNI plugin ``name`` (containernetworking-plugins), or None."""
    for d in CNI_PLUGIN_DIRS:
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def _cni_plugins() -> str:
    return ", ".join(p for p in ("portmap", "bandwidth") if cni_plugin(p) is None)


#: Tools with a check of their own; any other name is a command looked up on PATH.
TOOLS: dict[str, Tool] = {
    "root": Tool(lambda: "" if os.geteuid() == 0 else "not running as root",
                 install="run the tests as root (sudo)"),
    "etcd": Tool(_etcd),
    "exabgp": Tool(_exabgp),
    "bird": Tool(_bird),
    "containerd": Tool(_containerd),
    "kubernetes": Tool(_kubernetes, install="bash scripts/kubernetes.sh"),
    "libnftables": Tool(_libnftables),
    "cni-plugins": Tool(_cni_plugins),
    "tortie-kube-controllers": Tool(_kube_controllers),
    "kubernetes-validate": Tool(_module("kubernetes_validate")),
}


def missing(name: str) -> str:
    """What of tool ``name`` is missing ("" when it is all there)."""
    tool = TOOLS.get(name)
    return tool.missing() if tool is not None else _which(name)()


def require_tools(*names: str) -> None:
    """:func:`require_tool` for each named tool (see :data:`TOOLS`; else a command)."""
    for name in names:
        lacking = missing(name)
        tool = TOOLS.get(name)
        require_tool(name, not lacking, detail=lacking if lacking != name else "",
                     install=tool.install if tool is not None else INSTALL)


def tools(*names: str) -> pytest.MarkDecorator:
    """The mark of a test (or, in ``pytestmark``, a module) that needs these tools."""
    return pytest.mark.tools(*names)
