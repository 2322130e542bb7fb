"""Mounts a lab's processes leave under its directories (containerd's rootfs and netns
mounts, kubelet's volume tmpfs), found in /proc/self/mountinfo and unmounted deepest first."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path


def mounts_under(base: Path) -> list[str]:
    """Mount points below ``base`` (``base`` itself excluded), in mount order."""
    prefix = str(base.resolve()).rstrip("/") + "/"
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


def unmount_under(base: Path) -> None:
    """Lazily unmount everything below ``base``, the last mounted first."""
    for mountpoint in reversed(mounts_under(base)):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
