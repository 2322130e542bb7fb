"""The hand-written CRI v1 messages, the pause image and the private containerd's config."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from lab import containerd, cri


def test_field_numbers_are_the_cri_apis_on_the_wire() -> None:
    meta = cri.msg["PodSandboxMetadata"](name="a", uid="u", namespace="n", attempt=1)
    # field 1 name, 2 uid, 3 namespace (length-delimited), 4 attempt (varint)
    assert meta.SerializeToString() == b"\x0a\x01a\x12\x01u\x1a\x01n\x20\x01"
    conf = cri.msg["PodSandboxConfig"](annotations={"k": "v"})
    # annotations is field 7: a map entry message with key 1, value 2
    assert conf.SerializeToString() == b"\x3a\x06\x0a\x01k\x12\x01v"
    req = cri.msg["StopPodSandboxRequest"](pod_sandbox_id="x")
    assert req.SerializeToString() == b"\x0a\x01x"


def test_sandbox_config_carries_the_pods_identity() -> None:
    conf = cri.sandbox_config("web", "shop", "1234", labels={"app": "web"})
    raw = cri.msg["RunPodSandboxRequest"](config=conf).SerializeToString()
    back = cri.msg["RunPodSandboxRequest"].FromString(raw).config
    assert (back.metadata.name, back.metadata.namespace, back.metadata.uid) == (
        "web", "shop", "1234")
    assert back.labels["io.kubernetes.pod.namespace"] == "shop"
    assert back.labels["app"] == "web"
    assert back.linux.security_context.namespace_options.network == cri.NAMESPACE_POD


def test_status_response_decodes_ip_state_and_netns() -> None:
    spec = {"runtimeSpec": {"linux": {"namespaces": [
        {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}}
    resp = cri.msg["PodSandboxStatusResponse"](
        status=cri.msg["PodSandboxStatus"](
            id="s", state=cri.SANDBOX_NOTREADY,
            network=cri.msg["PodSandboxNetworkStatus"](ip="10.0.1.5")),
        info={"info": json.dumps(spec)})
    back = cri.msg["PodSandboxStatusResponse"].FromString(resp.SerializeToString())
    assert back.status.network.ip == "10.0.1.5"
    assert back.status.state == cri.SANDBOX_NOTREADY
    assert cri.netns_from_info(back.info) == "/var/run/netns/cni-1"
    with pytest.raises(ValueError):
        cri.netns_from_info({})


def test_pause_image_is_a_consistent_oci_layout(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF pretend")
    path = containerd.build_pause_image(tmp_path / "pause.tar", "x.local/pause:1", str(busybox))
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "x.local/pause:1"

    def blob(digest: str) -> bytes:
        data = files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    manifest = json.loads(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = blob(manifest["layers"][0]["digest"])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["config"]["Entrypoint"][0] == "/bin/busybox"
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.getmember("bin/busybox")
        assert member.mode & 0o111 and tar.extractfile(member).read() == busybox.read_bytes()
    # reproducible: the same input gives the same image
    again = containerd.build_pause_image(tmp_path / "again.tar", "x.local/pause:1", str(busybox))
    assert again.read_bytes() == path.read_bytes()


def test_config_is_private_and_uses_runc(tmp_path: Path) -> None:
    text = containerd.render_config(tmp_path, cni_bin=tmp_path / "bin",
                                    cni_conf=tmp_path / "net.d")
    conf = tomllib.loads(text)
    assert conf["root"] == str(tmp_path / "root")
    assert conf["grpc"]["address"] == containerd.socket_of(tmp_path)
    cri_conf = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri_conf["restrict_oom_score_adj"] is True
    assert cri_conf["sandbox_image"] == containerd.PAUSE_IMAGE
    runc = cri_conf["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["Root"].startswith(str(tmp_path))
    assert cri_conf["cni"]["bin_dir"] == str(tmp_path / "bin")


def test_node_conflist_points_at_the_node_and_caps_the_version() -> None:
    base = {"cniVersion": "1.1.0", "name": "k8s-pod-network",
            "plugins": [{"type": "tortie", "socket": "/var/run/tortie/cni.sock"},
                        {"type": "portmap"}]}
    out = containerd.node_conflist(base, socket="/run/x/cni.sock", version="1.1.0")
    assert out["cniVersion"] == containerd.CNI_VERSION_MAX
    assert out["plugins"][0]["socket"] == "/run/x/cni.sock"
    assert base["plugins"][0]["socket"] == "/var/run/tortie/cni.sock"  # not changed
    assert containerd.node_conflist(base, socket="s", version="0.4.0")["cniVersion"] == "0.4.0"
