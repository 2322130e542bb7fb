"""Offline checks of integration/kind: every Kubernetes manifest validates against the
Kubernetes OpenAPI schemas of the kind node's version (kubernetes-validate, strict), the
Calico resources validate with Tortie's own models, the pieces agree with each other, and
run.sh / install-cni.sh are shellcheck-clean.  The kind run itself is the real check."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore.resources import to_resource
from tests.support.tools import require_tools

KIND = Path(__file__).resolve().parents[2] / "integration" / "kind"
REPO = KIND.parents[1]
K8S_VERSION = "1.31.0"  # kind-config.yaml's kindest/node image
K8S_FILES = sorted([*(KIND / "manifests").glob("*.yaml"), *(KIND / "e2e").glob("*.yaml")])
CALICO_FILES = sorted((KIND / "resources").glob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_k8s_docs() -> list[dict[str, Any]]:
    return [d for p in K8S_FILES for d in docs(p)]


def test_there_are_manifests() -> None:
    names = {p.name for p in K8S_FILES}
    assert {"10-etcd.yaml", "20-tortie-node.yaml", "30-kube-controllers.yaml"} <= names
    kinds = {d["kind"] for d in all_k8s_docs()}
    assert {"Deployment", "DaemonSet", "Service", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "NetworkPolicy", "Namespace"} <= kinds


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    require_tools("kubernetes-validate")
    import kubernetes_validate
    for doc in docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    require_tools("kubernetes-validate")
    import kubernetes_validate
    doc = next(d for d in docs(KIND / "manifests" / "20-tortie-node.yaml")
               if d["kind"] == "DaemonSet")
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    doc = next(d for d in docs(KIND / "manifests" / "20-tortie-node.yaml")
               if d["kind"] == "DaemonSet")
    doc["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", CALICO_FILES, ids=lambda p: p.name)
def test_calico_resources_validate_with_tortie(path: Path) -> None:
    for doc in docs(path):
        info, obj = to_resource(doc)
        assert info.kind == "IPPool"
        assert obj.spec.cidr


def test_kind_config_matches_the_default_pool() -> None:
    conf = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert conf["apiVersion"] == "kind.x-k8s.io/v1alpha4" and conf["kind"] == "Cluster"
    assert conf["networking"]["disableDefaultCNI"] is True
    assert {n["image"] for n in conf["nodes"]} == {f"kindest/node:v{K8S_VERSION}"}
    assert sum(1 for n in conf["nodes"] if n["role"] == "worker") >= 2  # cross-node traffic
    pool = docs(KIND / "resources" / "default-ippool.yaml")[0]
    assert pool["spec"]["cidr"] == conf["networking"]["podSubnet"]
    e2e = docs(KIND / "resources" / "e2e-ippool.yaml")[0]
    assert not ipaddress.ip_network(e2e["spec"]["cidr"]).overlaps(
        ipaddress.ip_network(pool["spec"]["cidr"]))
    assert e2e["spec"]["assignmentMode"] == "Manual"
    service = ipaddress.ip_network(conf["networking"]["serviceSubnet"])
    etcd_svc = next(d for d in docs(KIND / "manifests" / "10-etcd.yaml") if d["kind"] == "Service")
    assert ipaddress.ip_address(etcd_svc["spec"]["clusterIP"]) in service


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    return next(c for c in spec.get("containers", []) + spec.get("initContainers", [])
                if c["name"] == name)


def test_tortie_node_daemonset_installs_the_cni_on_the_host() -> None:
    ds = next(d for d in docs(KIND / "manifests" / "20-tortie-node.yaml")
              if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    node = _container(ds, "tortie-node")
    init = _container(ds, "install-cni")
    assert node["securityContext"]["privileged"] is True
    assert init["command"] == ["/opt/tortie/install-cni.sh"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths["host-root"] == "/"
    # the daemon's socket directory is the conflist's
    conflist = json.loads((REPO / "conf" / "net.d" / "10-tortie.conflist").read_text())
    sock = Path(conflist["plugins"][0]["socket"])
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert host_paths[mounts[str(sock.parent)]] == str(sock.parent)
    # the Dockerfile puts the installer and the conflist where the init container looks
    dockerfile = (KIND / "Dockerfile").read_text()
    assert "COPY integration/kind/install-cni.sh /opt/tortie/install-cni.sh" in dockerfile
    assert "COPY conf/net.d/10-tortie.conflist /opt/tortie/conf/10-tortie.conflist" in dockerfile
    assert "/opt/tortie/conf/10-tortie.conflist" in (KIND / "install-cni.sh").read_text()


def _secret_mounts(doc: dict[str, Any], container: str) -> dict[str, str]:
    """mount path -> Secret name, for the container's Secret volumes."""
    volumes = {v["name"]: v["secret"]["secretName"]
               for v in doc["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    return {m["mountPath"]: volumes[m["name"]]
            for m in _container(doc, container).get("volumeMounts", []) if m["name"] in volumes}


def _run_sh_secrets() -> dict[str, set[str]]:
    """The Secrets run.sh makes for etcd and the file names (keys) in each."""
    text = (KIND / "run.sh").read_text()
    assert 'create secret generic "tortie-etcd-$who"' in text and "for who in server client" in text
    return {f"tortie-etcd-{who}": {"ca.crt", f"{who}.crt", f"{who}.key"}
            for who in ("server", "client")}


def test_every_component_uses_the_same_etcd_with_a_client_certificate() -> None:
    svc = next(d for d in docs(KIND / "manifests" / "10-etcd.yaml") if d["kind"] == "Service")
    url = f"https://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    secrets = _run_sh_secrets()
    for f, kind, name in (("20-tortie-node.yaml", "DaemonSet", "tortie-node"),
                          ("30-kube-controllers.yaml", "Deployment", "tortie-kube-controllers")):
        doc = next(d for d in docs(KIND / "manifests" / f) if d["kind"] == kind)
        env = {e["name"]: e.get("value") for e in _container(doc, name)["env"]}
        assert env["TORTIE_ETCD_ENDPOINTS"] == url
        mounts = _secret_mounts(doc, name)
        for var, file in (("TORTIE_ETCD_CA_CERT_FILE", "ca.crt"),
                          ("TORTIE_ETCD_CERT_FILE", "client.crt"),
                          ("TORTIE_ETCD_KEY_FILE", "client.key")):
            path = Path(env[var])
            assert path.name == file and mounts[str(path.parent)] == "tortie-etcd-client"
            assert file in secrets["tortie-etcd-client"]


def test_etcd_requires_tls_and_client_certificates() -> None:
    manifest = docs(KIND / "manifests" / "10-etcd.yaml")
    svc = next(d for d in manifest if d["kind"] == "Service")
    deploy = next(d for d in manifest if d["kind"] == "Deployment")
    etcd = _container(deploy, "etcd")
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in etcd["command"][1:])
    ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
    assert flags["listen-client-urls"] == f"https://0.0.0.0:{port}"
    assert flags["advertise-client-urls"] == f"https://{ip}:{port}"
    assert "client-cert-auth" in flags and flags["client-cert-auth"] == ""
    mounts = _secret_mounts(deploy, "etcd")
    for flag, file in (("cert-file", "server.crt"), ("key-file", "server.key"),
                       ("trusted-ca-file", "ca.crt")):
        path = Path(flags[flag])
        assert path.name == file and mounts[str(path.parent)] == "tortie-etcd-server"
        assert file in _run_sh_secrets()["tortie-etcd-server"]
    # health over the metrics listener (plain http, loopback only): the client port needs a
    # certificate
    metrics = flags["listen-metrics-urls"]
    probe = etcd["livenessProbe"]["httpGet"]
    assert metrics == f"http://127.0.0.1:{probe['port']}" and probe["host"] == "127.0.0.1"
    assert f"ETCD_IP={ip} " in (KIND / "run.sh").read_text()


ETCD_DATA_HOST_PATH = "/var/lib/tortie-etcd"


def _etcd_data_problems(deploy: dict[str, Any]) -> list[str]:
    """Why etcd's data would not survive a restart of its pod (empty: it would): the volume
    under ``--data-dir`` must be a hostPath on the node the Deployment is pinned to."""
    etcd = _container(deploy, "etcd")
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in etcd["command"][1:])
    data_dir = flags.get("data-dir", "")
    if not data_dir:
        return ["etcd has no --data-dir"]
    pod = deploy["spec"]["template"]["spec"]
    mount = next((m for m in etcd.get("volumeMounts", [])
                  if Path(data_dir).is_relative_to(m["mountPath"])), None)
    if mount is None:
        return [f"no volume is mounted at {data_dir} (the container's own layer)"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    problems = []
    if "emptyDir" in volume:
        problems.append(f"volume {volume['name']} is an emptyDir: a restart loses the data")
    host = volume.get("hostPath")
    if host is None:
        problems.append(f"volume {volume['name']} is not a hostPath")
    elif host != {"path": ETCD_DATA_HOST_PATH, "type": "DirectoryOrCreate"}:
        problems.append(f"volume {volume['name']}: hostPath {host}, want "
                        f"{ETCD_DATA_HOST_PATH} (DirectoryOrCreate)")
    if "node-role.kubernetes.io/control-plane" not in pod.get("nodeSelector", {}):
        problems.append("not pinned to the control-plane node: a hostPath moves with no pod")
    if deploy["spec"].get("replicas") != 1 or deploy["spec"]["strategy"]["type"] != "Recreate":
        problems.append("two pods could share the data directory (replicas 1, Recreate)")
    return problems


def test_etcd_keeps_its_data_on_the_control_plane_node() -> None:
    deploy = next(d for d in docs(KIND / "manifests" / "10-etcd.yaml")
                  if d["kind"] == "Deployment")
    assert _etcd_data_problems(deploy) == []
    header = (KIND / "manifests" / "10-etcd.yaml").read_text().split("apiVersion:")[0]
    assert ETCD_DATA_HOST_PATH in header and "emptyDir" in header  # says why not emptyDir


def test_the_etcd_data_check_rejects_an_empty_dir_or_a_missing_host_path() -> None:
    def deploy() -> dict[str, Any]:
        return next(d for d in docs(KIND / "manifests" / "10-etcd.yaml")
                    if d["kind"] == "Deployment")

    def data_volume(d: dict[str, Any]) -> dict[str, Any]:
        return next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")

    d = deploy()
    data_volume(d).pop("hostPath")
    data_volume(d)["emptyDir"] = {}
    assert any("emptyDir" in p for p in _etcd_data_problems(d))
    d = deploy()
    data_volume(d).pop("hostPath")
    data_volume(d)["persistentVolumeClaim"] = {"claimName": "x"}
    assert any("not a hostPath" in p for p in _etcd_data_problems(d))
    d = deploy()
    data_volume(d)["hostPath"]["path"] = "/tmp/etcd"
    assert any("/var/lib/tortie-etcd" in p for p in _etcd_data_problems(d))
    d = deploy()
    _container(d, "etcd")["volumeMounts"] = [
        m for m in _container(d, "etcd")["volumeMounts"] if m["name"] != "data"]
    assert any("no volume is mounted" in p for p in _etcd_data_problems(d))
    d = deploy()
    d["spec"]["template"]["spec"]["nodeSelector"] = {}
    assert any("pinned" in p for p in _etcd_data_problems(d))


def test_run_sh_issues_an_etcd_server_certificate_for_the_service_address(
        tmp_path: Path) -> None:
    require_tools("openssl")
    openssl = shutil.which("openssl") or "openssl"
    text = (KIND / "run.sh").read_text()
    snippet = text.split('"$ETCD_IP" <<\'EOF\'\n', 1)[1].split("\nEOF\n", 1)[0]
    ip = text.split("ETCD_IP=", 1)[1].split()[0]
    subprocess.run([sys.executable, "-c", snippet, str(tmp_path), ip], check=True, cwd=REPO,
                   timeout=60)
    for who in ("server", "client"):
        assert {p.name for p in tmp_path.glob(f"{who}.*")} == {f"{who}.crt", f"{who}.key"}
        ok = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / "ca.crt"),
                             str(tmp_path / f"{who}.crt")], capture_output=True, text=True,
                            timeout=30)
        assert ok.returncode == 0, ok.stderr
    server = subprocess.run([openssl, "x509", "-in", str(tmp_path / "server.crt"), "-noout",
                             "-text"], capture_output=True, text=True, timeout=30).stdout
    assert f"IP Address:{ip}" in server and "TLS Web Server Authentication" in server


def test_kube_controllers_rbac_covers_what_it_watches() -> None:
    manifest = docs(KIND / "manifests" / "30-kube-controllers.yaml")
    role = next(d for d in manifest if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    for group, resource in (("", "namespaces"), ("", "pods"), ("", "nodes"), ("", "services"),
                            ("networking.k8s.io", "networkpolicies"),
                            ("discovery.k8s.io", "endpointslices")):
        for verb in ("list", "watch"):
            assert (group, resource, verb) in granted
    assert not any(v in ("create", "update", "patch", "delete") for _, _, v in granted)
    binding = next(d for d in manifest if d["kind"] == "ClusterRoleBinding")
    deploy = next(d for d in manifest if d["kind"] == "Deployment")
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"][0]["name"] == sa and binding["roleRef"]["name"] == role["metadata"][
        "name"]
    # Secrets (BGP passwords): read-only, through a Role in the Deployment's namespace only
    assert not any(r == "secrets" for _, r, _ in granted)
    ns = deploy["metadata"]["namespace"]
    secret_role = next(d for d in manifest if d["kind"] == "Role"
                       and d["metadata"]["name"].endswith("-bgp-passwords"))
    assert secret_role["metadata"]["namespace"] == ns
    # ... and the Events about a missing one, in that namespace too
    assert secret_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                     "verbs": ["get", "list", "watch"]},
                                    {"apiGroups": [""], "resources": ["events"],
                                     "verbs": ["create", "patch"]}]
    rb = next(d for d in manifest if d["kind"] == "RoleBinding"
              and d["roleRef"]["name"] == secret_role["metadata"]["name"])
    assert rb["metadata"]["namespace"] == ns
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": secret_role["metadata"]["name"]}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TORTIE_BGP_SECRETS_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace")


def test_kube_controllers_are_leader_elected_over_their_lease() -> None:
    manifest = docs(KIND / "manifests" / "30-kube-controllers.yaml")
    deploy = next(d for d in manifest if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    ns = deploy["metadata"]["namespace"]
    container = _container(deploy, "tortie-kube-controllers")
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in container["command"][1:])
    assert "leader-elect" in flags and flags["leader-elect"] == ""
    lease = flags["lease-name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TORTIE_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # one port per node
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    # the Role lets the service account create the Lease and get / update that one only
    role = next(d for d in manifest if d["kind"] == "Role"
                and d["metadata"]["name"] == "tortie-kube-controllers")
    binding = next(d for d in manifest if d["kind"] == "RoleBinding"
                   and d["roleRef"]["name"] == role["metadata"]["name"])
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == ns
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": ns}]
    granted = {(v, tuple(rule.get("resourceNames", ()))) for rule in role["rules"]
               for v in rule["verbs"]
               if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]}
    assert granted == {("create", ()), ("get", (lease,)), ("update", (lease,))}


@pytest.mark.parametrize("script", ["run.sh", "install-cni.sh"])
def test_scripts_are_shellcheck_clean(script: str) -> None:
    require_tools("shellcheck")
    shellcheck = shutil.which("shellcheck") or "shellcheck"
    proc = subprocess.run([shellcheck, "--severity=style", str(KIND / script)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (KIND / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_the_image_copies_every_package() -> None:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    dockerfile = (KIND / "Dockerfile").read_text()
    for pattern in include:
        pkg = pattern.rstrip("*")
        assert f"COPY {pkg} ./{pkg}\n" in dockerfile, f"the image lacks the {pkg} package"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for doc, name in ((docs(KIND / "manifests" / "20-tortie-node.yaml")[1], "tortie-node"),
                      (next(d for d in docs(KIND / "manifests" / "30-kube-controllers.yaml")
                            if d["kind"] == "Deployment"), "tortie-kube-controllers")):
        command = _container(doc, name)["command"][0]
        assert command in scripts, f"{command} is not an installed script"


def test_tortie_node_probes_liveness_and_readiness_on_its_metrics_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agentkit.http import parse_address
    from agentkit.node_metrics import METRICS_ADDRESS_ENV
    from ctl.node import target
    from node.main import parse_args

    ds = next(d for d in docs(KIND / "manifests" / "20-tortie-node.yaml")
              if d["kind"] == "DaemonSet")
    node = _container(ds, "tortie-node")
    # the address is in the environment (where `tortie node status` reads it too), not a flag
    assert not [a for a in node["command"] if a.startswith("--metrics-")]
    env = {e["name"]: e.get("value") for e in node["env"]}
    assert env[METRICS_ADDRESS_ENV] == "0.0.0.0:9091"
    host, port = parse_address(env[METRICS_ADDRESS_ENV])
    # the daemon accepts the manifest's flags and environment as they are
    monkeypatch.setenv(METRICS_ADDRESS_ENV, env[METRICS_ADDRESS_ENV])
    args = parse_args([a.replace("$(NODE_NAME)", "n") for a in node["command"][1:]])
    assert (args.metrics_host, args.metrics_port) == (host, port)
    # `kubectl exec` into the container: the CLI asks the same port, on the loopback address
    assert target(env[METRICS_ADDRESS_ENV], None, None) == ("127.0.0.1", port)
    # the kubelet probes from the host's address (hostNetwork): no 127.0.0.1 host
    for probe, path in (("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        get = node[probe]["httpGet"]
        assert get["path"] == path and get["port"] == port, probe
        assert "host" not in get, probe
