"""The CNI launchers (cni/launcher.py): a ``#!<python> -IS`` script importing the client, a
shell script when the interpreter's path cannot stand in a ``#!`` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cni import launcher


def test_launcher_is_a_python_script_importing_the_client(tmp_path: Path) -> None:
    python = launcher.default_interpreter()
    [tortie, ipam] = launcher.install(tmp_path)
    text = tortie.read_text()
    assert text.startswith(f"#!{python} -IS\n")
    assert f"sys.path.append({str(launcher.PLUGIN.parent)!r})" in text
    assert "from plugin import run" in text and "--ipam" not in text
    assert "'--ipam'" in ipam.read_text()
    for exe in (tortie, ipam):
        p = subprocess.run([str(exe)], input='{"cniVersion": "1.0.0"}', text=True,
                           capture_output=True, env={"CNI_COMMAND": "VERSION"}, check=False)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["cniVersion"] == "1.0.0"
    p = subprocess.run([str(tortie)], input='{"cniVersion": "1.0.0", "socket": "/nonexistent"}',
                       text=True, capture_output=True, env={"CNI_COMMAND": "ADD"}, check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 11


def test_an_interpreter_path_with_white_space_gets_a_shell_launcher() -> None:
    text = launcher.launcher_text("/opt/my python/bin/python3", extra=("--ipam",))
    assert text.startswith("#!/bin/sh\nexec '/opt/my python/bin/python3' -I -S ")
    assert text.rstrip().endswith('--ipam "$@"')
    long = "/" + "p" * 300
    assert launcher.launcher_text(long).startswith("#!/bin/sh\n")


def test_the_distribution_interpreter_is_preferred_when_new_enough(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")  # runs, but is not a Python >= 3.11
    fake.chmod(0o755)
    assert launcher.default_interpreter(str(fake)) == os.path.realpath(sys.executable)
    assert launcher.default_interpreter(str(tmp_path / "missing")) == os.path.realpath(
        sys.executable)
    assert launcher.default_interpreter(sys.executable) == os.path.realpath(sys.executable)
    if Path(launcher.SYSTEM_PYTHON).exists() and subprocess.run(
            [launcher.SYSTEM_PYTHON, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            check=False).returncode == 0:
        assert launcher.default_interpreter() == os.path.realpath(launcher.SYSTEM_PYTHON)
