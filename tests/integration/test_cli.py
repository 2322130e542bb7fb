"""The ``tortie`` command line end to end: a new process per command, a real etcd."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from lab.etcd import free_port, run_etcd
from tests.support.cli import tortie

pytestmark = pytest.mark.integration

POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
"""
NP = """apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector: app == "web"
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: [80]
"""


def test_unknown_kind_and_missing_resource(etcd_endpoint: str) -> None:
    r = tortie(etcd_endpoint, "get", "deployments")
    assert r.code == 1
    assert "resource type 'deployments' is not supported" in r.err and "ippools" in r.err
    r = tortie(etcd_endpoint, "get", "ippool", "nope")
    assert r.code == 1 and "IPPool(nope) does not exist" in r.err
    r = tortie(etcd_endpoint, "delete", "gnp", "nope")
    assert r.code == 1 and "GlobalNetworkPolicy(nope) does not exist" in r.err
    r = tortie(etcd_endpoint, "delete", "gnp", "nope", "--skip-not-exists")
    assert r.code == 0


def test_directory_json_and_lists(etcd_endpoint: str, scratch_dir: Path) -> None:
    (scratch_dir / "a.yaml").write_text(POOL.format(name="a", cidr="10.1.0.0/16"))
    (scratch_dir / "b.json").write_text(json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "items": [
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "b"}, "spec": {"cidr": "10.2.0.0/16"}},
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "c"}, "spec": {"cidr": "10.3.0.0/16", "blockSize": 28}}]}))
    (scratch_dir / "notes.txt").write_text("not a resource")
    r = tortie(etcd_endpoint, "apply", "-f", str(scratch_dir))
    assert r.code == 0, r.text
    assert "Successfully applied 3 'IPPool' resource(s)" in r.out
    r = tortie(etcd_endpoint, "get", "ippools", "-o", "name")
    assert r.out.split() == ["ippool/a", "ippool/b", "ippool/c"]
    r = tortie(etcd_endpoint, "get", "pools", "-o", "wide")
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED",
                                "DISABLEBGPEXPORT", "SELECTOR"]
    assert lines[3].split() == ["c", "10.3.0.0/16", "false", "Never", "Never", "false",
                                "false", "all()"]
    listing = json.loads(tortie(etcd_endpoint, "get", "ipp", "-o", "json").out)
    assert listing["kind"] == "IPPoolList"
    assert [i["spec"]["blockSize"] for i in listing["items"]] == [26, 26, 28]
    # the output of get applies again as it is
    r = tortie(etcd_endpoint, "apply", "-f", "-",
               stdin=tortie(etcd_endpoint, "get", "ippools", "-o", "yaml").out)
    assert r.code == 0, r.text


def test_one_bad_document_writes_nothing(etcd_endpoint: str) -> None:
    text = POOL.format(name="good", cidr="10.1.0.0/16") + "---\n" + \
        POOL.format(name="bad", cidr="10.1.0.0/33")
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=text)
    assert r.code == 1
    assert "<stdin>:13: IPPool(bad) is invalid: spec.cidr: '10.1.0.0/33' is not a valid CIDR" \
        in r.err
    assert tortie(etcd_endpoint, "get", "ippools", "-o", "name").out == ""


FELIX = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: {name}
spec:
  {field}: {value}
"""


@pytest.mark.parametrize(("field", "value", "why"), [
    ("vxlanPort", 65536, "less than or equal to 65535"),
    ("vxlanPort", 0, "greater than or equal to 1"),
    ("vxlanVNI", 0, "greater than or equal to 1"),
    ("vxlanVNI", 16777216, "less than or equal to 16777215"),
])
def test_vxlan_port_and_vni_out_of_range_name_the_field(etcd_endpoint: str, field: str,
                                                        value: int, why: str) -> None:
    r = tortie(etcd_endpoint, "apply", "-f", "-",
               stdin=FELIX.format(name="node.n1", field=field, value=value))
    assert r.code == 1
    assert f"FelixConfiguration(node.n1) is invalid: spec.{field}: " in r.err, r.err
    assert why in r.err, r.err
    assert tortie(etcd_endpoint, "get", "felixconfigurations", "-o", "name").out == ""
    r = tortie(etcd_endpoint, "apply", "-f", "-",
               stdin=FELIX.format(name="node.n1", field=field, value=4790))
    assert r.code == 0, r.text


def test_overlapping_pools_are_refused(etcd_endpoint: str) -> None:
    assert tortie(etcd_endpoint, "create", "-f", "-",
                  stdin=POOL.format(name="a", cidr="10.1.0.0/16")).code == 0
    r = tortie(etcd_endpoint, "create", "-f", "-",
               stdin=POOL.format(name="b", cidr="10.1.128.0/24"))
    assert r.code == 1 and "overlaps with IPPool(a) 10.1.0.0/16" in r.err
    # the pool itself may change its own CIDR
    assert tortie(etcd_endpoint, "apply", "-f", "-",
                  stdin=POOL.format(name="a", cidr="10.1.0.0/20")).code == 0


def test_create_existing_is_all_or_nothing(etcd_endpoint: str) -> None:
    a = POOL.format(name="a", cidr="10.1.0.0/16")
    b = POOL.format(name="b", cidr="10.2.0.0/16")
    assert tortie(etcd_endpoint, "create", "-f", "-", stdin=b).code == 0
    r = tortie(etcd_endpoint, "create", "-f", "-", stdin=a + "---\n" + b)
    assert r.code == 1
    assert "<stdin>:8: IPPool(b) already exists\nnothing was written" in r.err
    assert tortie(etcd_endpoint, "get", "ippools", "-o", "name").out.split() == ["ippool/b"]
    r = tortie(etcd_endpoint, "create", "--skip-exists", "-f", "-", stdin=a + "---\n" + b)
    assert r.code == 0, r.text
    assert "Successfully created 2 'IPPool' resource(s)" in r.out
    assert tortie(etcd_endpoint, "get", "ippools", "-o", "name").out.split() == \
        ["ippool/a", "ippool/b"]


def test_namespaces(etcd_endpoint: str) -> None:
    for name, ns in (("web", "shop"), ("web", "default"), ("api", "shop")):
        assert tortie(etcd_endpoint, "apply", "-f", "-",
                      stdin=NP.format(name=name, ns=ns)).code == 0
    assert tortie(etcd_endpoint, "get", "np").out.split() == ["NAME", "web"]
    assert tortie(etcd_endpoint, "get", "np", "-n", "shop").out.split() == \
        ["NAME", "api", "web"]
    assert tortie(etcd_endpoint, "get", "networkpolicies", "-A").out.split() == \
        ["NAMESPACE", "NAME", "default", "web", "shop", "api", "shop", "web"]
    r = tortie(etcd_endpoint, "apply", "-n", "dev", "-f", "-",
               stdin=NP.format(name="x", ns="shop"))
    assert r.code == 1 and "does not match --namespace 'dev'" in r.err
    r = tortie(etcd_endpoint, "delete", "policy", "web", "-n", "shop")
    assert r.code == 0
    assert tortie(etcd_endpoint, "get", "np", "-n", "shop").out.split() == ["NAME", "api"]


def test_label_and_patch(etcd_endpoint: str) -> None:
    hep = ("apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: n1-eth0\n"
           "  labels: {role: web}\nspec:\n  node: n1\n  interfaceName: eth0\n")
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=hep).code == 0
    assert tortie(etcd_endpoint, "label", "hep", "n1-eth0", "env=prod").code == 0
    r = tortie(etcd_endpoint, "label", "hep", "n1-eth0", "role=db")
    assert r.code == 1 and "'role' already has the value 'web'; use --overwrite" in r.err
    assert tortie(etcd_endpoint, "label", "hep", "n1-eth0", "role=db", "--overwrite").code == 0
    assert tortie(etcd_endpoint, "label", "hep", "n1-eth0", "env-").code == 0
    r = tortie(etcd_endpoint, "label", "hep", "n1-eth0", "Bad Key=x")
    assert r.code == 1 and "metadata.labels" in r.err
    got = yaml.safe_load(tortie(etcd_endpoint, "get", "hep", "n1-eth0", "-o", "yaml").out)
    assert got["metadata"]["labels"] == {"role": "db"}

    r = tortie(etcd_endpoint, "patch", "hep", "n1-eth0", "-p", '{"spec": {"expectedIPs": '
               '["10.0.0.300"]}}')
    assert r.code == 1 and "spec.expectedIPs[0]: '10.0.0.300' is not a valid IP" in r.err
    r = tortie(etcd_endpoint, "patch", "hep", "n1-eth0", "-p", "{nope")
    assert r.code == 1 and "--patch: not valid JSON" in r.err
    r = tortie(etcd_endpoint, "patch", "hep", "n1-eth0", "-p", '{"metadata": {"name": "x"}}')
    assert r.code == 1 and "cannot rename" in r.err
    r = tortie(etcd_endpoint, "patch", "hep", "n1-eth0", "-p",
               '{"spec": {"interfaceName": null, "expectedIPs": ["10.0.0.1"]}}')
    assert r.code == 0, r.text
    got = yaml.safe_load(tortie(etcd_endpoint, "get", "hep", "n1-eth0", "-o", "yaml").out)
    assert got["spec"] == {"node": "n1", "expectedIPs": ["10.0.0.1"]}


def test_replace_is_conditional_on_resource_version(etcd_endpoint: str) -> None:
    assert tortie(etcd_endpoint, "create", "-f", "-",
                  stdin=POOL.format(name="a", cidr="10.1.0.0/16")).code == 0
    stale = tortie(etcd_endpoint, "get", "ippool", "a", "-o", "yaml").out
    assert tortie(etcd_endpoint, "replace", "-f", "-", stdin=stale).code == 0  # current: ok
    r = tortie(etcd_endpoint, "replace", "-f", "-", stdin=stale)  # now stale
    assert r.code == 1 and "has been modified" in r.err
    r = tortie(etcd_endpoint, "replace", "-f", "-",
               stdin=POOL.format(name="zz", cidr="10.9.0.0/16"))
    assert r.code == 1 and "IPPool(zz) does not exist" in r.err


def test_unreachable_etcd_is_a_bounded_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = tortie(dead, "--etcd-timeout", "1", "get", "ippools")
    assert r.code == 1
    assert dead in r.err and "unreachable" in r.err
    assert time.monotonic() - start < 10


def test_namespace_flag_leaves_global_kinds_alone(etcd_endpoint: str) -> None:
    gnp = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\n"
    r = tortie(etcd_endpoint, "apply", "-n", "shop", "-f", "-",
               stdin=gnp + "---\n" + NP.format(name="web", ns="shop").replace(
                   "  namespace: shop\n", ""))
    assert r.code == 0, r.text
    assert tortie(etcd_endpoint, "get", "np", "-n", "shop").out.split() == ["NAME", "web"]


def test_tls_flags(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir, tls=True) as etcd:
        tls = etcd.tls
        assert tls is not None
        flags = ["--etcd-ca-cert-file", str(tls.ca_cert), "--etcd-cert-file",
                 str(tls.client_cert), "--etcd-key-file", str(tls.client_key)]
        r = tortie(etcd.endpoint, *flags, "apply", "-f", "-",
                   stdin=POOL.format(name="a", cidr="10.1.0.0/16"))
        assert r.code == 0, r.text
        assert tortie(etcd.endpoint, *flags, "get", "ippools", "-o", "name").out == \
            "ippool/a\n"
        r = tortie(etcd.endpoint, "--etcd-ca-cert-file", str(tls.ca_cert), "--etcd-timeout",
                   "3", "get", "ippools")
        assert r.code == 1 and "certificate" in r.err
