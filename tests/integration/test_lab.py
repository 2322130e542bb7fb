"""The lab end to end through the ``tortie lab`` commands a user types."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator

import pytest

from lab import netns
from lab.cluster import Lab
from tests.support.lab_cli import run_tortie

pytestmark = pytest.mark.integration


@pytest.fixture
def lab_name() -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        Lab(name).down()  # by name: processes by PID, namespaces by prefix, state dir
        assert netns.list_netns(f"tl-{name}-") == []


def test_lab_pods_on_a_node_reach_each_other(lab_name: str) -> None:
    r = run_tortie("lab", "up", "--name", lab_name, "--nodes", "2")
    assert r.returncode == 0, r.stderr
    assert "tortie-node ready" in r.stderr  # progress is shown
    a = run_tortie("lab", "pod", "add", "--name", lab_name, "node1", "shop/a")
    b = run_tortie("lab", "pod", "add", "--name", lab_name, "node1", "shop/b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    st = Lab(lab_name).load()
    ip_a, ip_b = st.pods["shop/a"].ips[0], st.pods["shop/b"].ips[0]
    assert ip_a != ip_b
    node1 = st.nodes["node1"]
    r = run_tortie("lab", "exec", "--name", lab_name, "shop/a", "--", "ping", "-c", "2", "-W", "2",
               ip_b)
    assert r.returncode == 0, r.stdout + r.stderr
    # pod -> its node, and the node -> the pod
    r = run_tortie("lab", "exec", "--name", lab_name, "shop/b", "--", "ping", "-c", "1", "-W", "2",
               node1.address)
    assert r.returncode == 0, r.stdout + r.stderr
    # the lab's etcd is in the environment of lab exec: the CLI works inside
    r = run_tortie("lab", "exec", "--name", lab_name, "--node", "node1", "--", sys.executable,
               "-m", "ctl.main", "get", "workloadendpoints", "-n", "shop", "-o", "json")
    assert r.returncode == 0, r.stderr
    weps = json.loads(r.stdout)["items"]
    assert sorted(w["spec"]["pod"] for w in weps) == ["a", "b"]
    assert run_tortie("lab", "pod", "del", "--name", lab_name, "shop/a").returncode == 0
    assert not netns.netns_exists(st.pods["shop/a"].netns)
    r = run_tortie("lab", "down", "--name", lab_name)
    assert r.returncode == 0
    assert not os.path.exists(f"/run/tortie-lab/{lab_name}")


def test_two_labs_coexist_and_bad_input_is_refused(lab_name: str) -> None:
    r = run_tortie("lab", "up", "--name", lab_name, "--nodes", "1")
    assert r.returncode == 0, r.stderr
    r = run_tortie("lab", "up", "--name", lab_name, "--nodes", "1")
    assert r.returncode != 0 and "already up" in r.stderr
    r = run_tortie("lab", "pod", "add", "--name", lab_name, "node9", "x/y")
    assert r.returncode != 0 and "no node 'node9'" in r.stderr
    r = run_tortie("lab", "pod", "add", "--name", lab_name, "node1", "noslash")
    assert r.returncode != 0 and "NAMESPACE/NAME" in r.stderr
