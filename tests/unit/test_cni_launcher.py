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
    python = os.path.realpath(sys.executable)
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
