"""Running the real ``tortie`` command line against a test etcd."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def tortie(endpoint: str, *args: str, stdin: str | None = None, timeout: float = 60) -> Result:
    """``tortie ARGS`` as a user runs it (a new process, endpoint from the environment)."""
    env = dict(os.environ, TORTIE_ETCD_ENDPOINTS=endpoint)
    env.pop("TORTIE_ETCD_CA_CERT_FILE", None)
    p = subprocess.run([sys.executable, "-m", "ctl.main", *args], input=stdin, text=True,
                       capture_output=True, env=env, timeout=timeout, check=False)
    return Result(p.returncode, p.stdout, p.stderr)
