"""Install the CNI executables: tiny launchers that start the stdlib-only client.

``tortie`` is a Python script whose ``#!`` line runs the interpreter with ``-IS`` (isolated,
no ``site``: start-up near 10 ms instead of ~80 ms with site-packages); it imports
``cni/plugin.py`` as the module ``plugin`` (from the end of ``sys.path``, after the standard
library) and calls its ``run`` (``main``, then an immediate exit).  Imported, the client
runs from its cached bytecode (``__pycache__``); run as a script it would be compiled on
every start.  No shell runs in between.  ``tortie-ipam`` is the same with ``--ipam``.
When the interpreter's path cannot stand in a ``#!`` line (white space, too long) the
launcher is a shell script instead: ``exec <python3> -I -S <repo>/cni/plugin.py "$@"``.

The interpreter: the distribution's ``/usr/bin/python3`` when it is CPython 3.11 or newer,
else the one installing.  Debian's is built with profile-guided optimisation and has
``_socket`` linked in: it starts the client in 7.8-8.0 ms against 9.3-9.4 ms for a pyenv
build of 3.11.7 (medians of 60 starts, docs/benchmarks.md), and start-up is most of the
client's time.  Usage::

    python -m cni.launcher /opt/cni/bin [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().with_name("plugin.py")
#: executable name -> extra arguments before the runtime's
EXECUTABLES: dict[str, tuple[str, ...]] = {"tortie": (), "tortie-ipam": ("--ipam",)}


#: the distribution's interpreter, preferred when it is new enough (see the module docstring)
SYSTEM_PYTHON = "/usr/bin/python3"
MIN_VERSION = (3, 11)

#: what a ``#!`` line may hold here (the kernel reads at most 255 bytes of it)
SHEBANG_MAX = 200


def launcher_text(python: str, plugin: Path = PLUGIN, extra: tuple[str, ...] = ()) -> str:
    if len(python) > SHEBANG_MAX or any(c.isspace() for c in python) \
            or plugin.suffix != ".py":
        argv = [python, "-I", "-S", str(plugin), *extra]
        return "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n'
    return (f"#!{python} -IS\n"
            f"# the tortie CNI executable (cni/launcher.py): {plugin} imported, not compiled\n"
            "import sys\n"
            f"sys.path.append({str(plugin.parent)!r})\n"
            f"from {plugin.stem} import run\n"
            f"run([sys.argv[0], *{list(extra)!r}, *sys.argv[1:]])\n")


def default_interpreter(system: str = SYSTEM_PYTHON) -> str:
    """``system`` (resolved) when it runs and is CPython >= :data:`MIN_VERSION`, else the
    interpreter running this."""
    if os.access(system, os.X_OK):
        check = ("import sys, platform; sys.exit(0 if sys.version_info >= "
                 f"{MIN_VERSION!r} and platform.python_implementation() == 'CPython' else 1)")
        try:
            ok = subprocess.run([system, "-I", "-S", "-c", check], capture_output=True,
                                timeout=30, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return os.path.realpath(system)
    return os.path.realpath(sys.executable)


def install(bin_dir: str | Path, python: str | None = None,
            plugin: Path = PLUGIN) -> list[Path]:
    """Write ``tortie`` and ``tortie-ipam`` into ``bin_dir`` (atomically, mode 0755)."""
    interpreter = python or default_interpreter()
    target = Path(bin_dir)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, extra in EXECUTABLES.items():
        path = target / name
        tmp = target / f".{name}.tmp{os.getpid()}"
        tmp.write_text(launcher_text(interpreter, plugin, extra))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="install the tortie CNI executables")
    parser.add_argument("bin_dir", help="the CNI bin directory, e.g. /opt/cni/bin")
    parser.add_argument("--python", help="interpreter to run the plugin with "
                        f"(default: {SYSTEM_PYTHON} if it is CPython >= 3.11, else this one)")
    args = parser.parse_args(argv)
    for path in install(args.bin_dir, args.python):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
