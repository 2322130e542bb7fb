"""Container images for the lab, built here as OCI image layouts (never pulled).

An :class:`Image` is one uncompressed layer made of files from this machine (copied at the
same or another path), symlinks and directories, plus an entrypoint. :func:`write_layout`
writes one or more images into an OCI layout tarball, each under any number of names (the
``io.containerd.image.name`` annotation), which ``ctr images import`` takes as it is.

Builds are reproducible: fixed owners, modes and times, files sorted.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: Directories every image has (the runtime mounts /proc, /sys, /dev and /etc files there).
BASE_DIRS = ("bin", "dev", "etc", "proc", "sys", "tmp", "usr", "usr/bin", "var")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Image:
    names: list[str]
    #: path in the image -> path on this machine (or the bytes themselves)
    files: dict[str, Path | bytes] = field(default_factory=dict)
    #: path in the image -> link target
    symlinks: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    comment: str = "built by tortie lab"

    def add_busybox(self, applets: Iterable[str] | None = None,
                    busybox: str = BUSYBOX) -> Image:
        """``/bin/busybox`` and a ``/bin/<applet>`` link for each applet (all it has when
        ``applets`` is None)."""
        self.files["bin/busybox"] = Path(busybox)
        if applets is None:
            out = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                 check=True).stdout
            applets = [a for a in out.split() if a != "busybox"]
        for a in applets:
            self.symlinks.setdefault(f"bin/{a}", "busybox")
        return self

    def add_executable(self, exe: str, at: str | None = None) -> Image:
        """A dynamically linked executable of this machine with the libraries ``ldd``
        names, at the same paths (``at``: another path in the image for the executable)."""
        path = Path(shutil.which(exe) or exe).resolve()
        self.files[(at or str(path)).lstrip("/")] = path
        for lib in _shared_libraries(path):
            self.files.setdefault(str(lib).lstrip("/"), lib.resolve())
        return self


def _shared_libraries(exe: Path) -> list[Path]:
    p = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=False)
    libs: list[Path] = []
    for line in p.stdout.splitlines():
        parts = line.split()
        for token in parts:
            if token.startswith("/"):
                libs.append(Path(token))
                break
    return libs


def goarch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine)


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
    return info


def _write_layer(image: Image, out: io.BufferedWriter) -> None:
    dirs = set(BASE_DIRS)
    for path in (*image.files, *image.symlinks):
        parent = Path(path).parent
        while str(parent) not in (".", ""):
            dirs.add(str(parent))
            parent = parent.parent
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            tar.addfile(_dir_info(d))
        for path, src in sorted(image.files.items()):
            data = src if isinstance(src, bytes) else None
            info = tarfile.TarInfo(path)
            if data is not None:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
                continue
            assert isinstance(src, Path)
            info.size, info.mode = src.stat().st_size, 0o755
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for path, target in sorted(image.symlinks.items()):
            if path in image.files:
                continue
            link = tarfile.TarInfo(path)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def write_layout(path: Path, images: Iterable[Image]) -> Path:
    """Write ``images`` as one OCI image layout tarball at ``path``."""
    arch = goarch()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        blobs: dict[str, Path | bytes] = {}
        manifests = []
        for n, image in enumerate(images):
            layer_file = Path(tmp) / f"layer{n}.tar"
            with open(layer_file, "wb") as f:
                _write_layer(image, f)
            layer_digest = _digest_file(layer_file)
            blobs[layer_digest] = layer_file
            config = {
                "architecture": arch, "os": "linux",
                "config": {"Entrypoint": image.entrypoint, "Cmd": image.cmd or None,
                           "WorkingDir": "/", "Env": image.env},
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                "history": [{"created_by": image.comment}],
            }
            if not image.cmd:
                del config["config"]["Cmd"]
            config_digest, config_raw = _blob(json.dumps(config, sort_keys=True).encode())
            blobs[config_digest] = config_raw
            manifest = {
                "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": len(config_raw)},
                "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest,
                            "size": layer_file.stat().st_size}],
            }
            manifest_digest, manifest_raw = _blob(json.dumps(manifest, sort_keys=True).encode())
            blobs[manifest_digest] = manifest_raw
            for name in image.names:
                manifests.append({
                    "mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest,
                    "size": len(manifest_raw), "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name":
                                        name.rpartition(":")[2]},
                })
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": manifests}
        part = path.with_suffix(".part")
        with tarfile.open(part, "w") as tar:
            for d in ("blobs", "blobs/sha256"):
                tar.addfile(_dir_info(d))
            files: list[tuple[str, Path | bytes]] = [
                ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                ("index.json", json.dumps(index).encode())]
            files += [(f"blobs/sha256/{d.removeprefix('sha256:')}", b)
                      for d, b in blobs.items()]
            for fname, src in files:
                info = tarfile.TarInfo(fname)
                info.mode = 0o644
                if isinstance(src, bytes):
                    info.size = len(src)
                    tar.addfile(info, io.BytesIO(src))
                else:
                    info.size = src.stat().st_size
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
        part.replace(path)
    return path
