"""Protected host ports: workloads reach the datastore and BGP ports of a host only
through an allow rule that names the port. The knob, the calculation and the nft rules (pure;
``nft -c`` checks the syntax when it can run in a private namespace)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from datastore.etcd_config import EtcdConfig
from datastore.model_config import (
    DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS,
    ProtoPort,
)
from datastore.resources import ResourceInvalid
from policyagent.calc import PolicyCalculator
from policyagent.model import FailsafeSpec, ProtectedPorts
from policyagent.nft_render import (
    MARK_EXPLICIT_PORT,
    policy_chain,
    render,
    render_incremental,
)
from tests.support.nft import chain_body
from tests.support.policy import NODE, V3, Cluster, gnp, res, wep
from tests.support.tools import require_tools, skip_kernel

TCP = 6
DEFAULT = (FailsafeSpec(TCP, 179), FailsafeSpec(TCP, 2379), FailsafeSpec(TCP, 2380))


def felix(name: str = "default", **spec: Any) -> Any:
    return res({"apiVersion": V3, "kind": "FelixConfiguration", "metadata": {"name": name},
                "spec": spec})


def pool(name: str, cidr: str) -> Any:
    return res({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": name},
                "spec": {"cidr": cidr}})


def node(name: str, address: str, vxlan: str | None = None, **spec: Any) -> Any:
    s: dict[str, Any] = {"bgp": {"ipv4Address": f"{address}/24"}, **spec}
    if vxlan:
        s["ipv4VXLANTunnelAddr"] = vxlan
    return res({"apiVersion": V3, "kind": "Node", "metadata": {"name": name}, "spec": s})


def cluster(*extra: Any, datastore_ports: tuple[int, ...] = (),
            node_ports: tuple[int, ...] = ()) -> Cluster:
    """Pod a on this node, two nodes (node2 with a VXLAN address from the pool), one pool."""
    c = Cluster()
    c.calc = PolicyCalculator(NODE, datastore_ports=datastore_ports, node_ports=node_ports)
    return c.add(wep("a", "10.65.0.1", {"app": "a"}), pool("p", "10.65.0.0/16"),
                 node(NODE, "192.0.2.11"), node("node2", "192.0.2.12", vxlan="10.65.9.0"),
                 *extra)


# --- the knob -----------------------------------------------------------------------------------

def test_knob_default_empty_and_none() -> None:
    assert [str(p) for p in DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS] == [
        "tcp:179", "tcp:2379", "tcp:2380"]
    assert felix().effective_workload_protected_host_ports() == list(
        DEFAULT_WORKLOAD_PROTECTED_HOST_PORTS)
    for off in ([], "none"):
        fc = felix(workloadProtectedHostPorts=off)
        assert fc.effective_workload_protected_host_ports() == []
        assert fc.dump()["spec"]["workloadProtectedHostPorts"] == []
    fc = felix(workloadProtectedHostPorts=[{"port": 179}, {"protocol": "udp", "port": 53,
                                                           "net": "192.0.2.1/32"}])
    assert fc.effective_workload_protected_host_ports() == [
        ProtoPort(protocol="TCP", port=179),
        ProtoPort(protocol="UDP", port=53, net="192.0.2.1/32")]
    with pytest.raises(ResourceInvalid, match="workloadProtectedHostPorts"):
        felix(workloadProtectedHostPorts=[{"port": 70000}])


def test_calculation_defaults_pools_nodes_and_datastore_ports() -> None:
    m = cluster(datastore_ports=(6666, 2379)).model()
    assert m.protected == ProtectedPorts(
        ports=(*DEFAULT, FailsafeSpec(TCP, 6666)),  # the node's own etcd, whatever its port
        workload_nets=("10.65.0.0/16",),
        host_addresses=("10.65.9.0/32", "192.0.2.11/32", "192.0.2.12/32"))


def test_calculation_follows_the_knob_node_over_default_and_empty_disables() -> None:
    c = cluster(felix(workloadProtectedHostPorts=[{"port": 179}]), datastore_ports=(6666,))
    assert c.model().protected.ports == (FailsafeSpec(TCP, 179),)  # as set: no etcd port added
    c.add(felix(f"node.{NODE}", workloadProtectedHostPorts=[]))
    assert c.model().protected.ports == ()
    c.add(felix("node.other", workloadProtectedHostPorts=[{"port": 22}]))
    assert c.model().protected.ports == ()
    c.delete("FelixConfiguration", f"node.{NODE}")
    c.delete("FelixConfiguration", "default")
    assert c.model().protected.ports == (*DEFAULT, FailsafeSpec(TCP, 6666))


def test_calculation_protects_tortie_nodes_own_port_unless_the_knob_is_set() -> None:
    m = cluster(datastore_ports=(6666,), node_ports=(9091, 0)).model()
    assert m.protected.ports == (*DEFAULT, FailsafeSpec(TCP, 6666), FailsafeSpec(TCP, 9091))
    c = cluster(felix(workloadProtectedHostPorts=[{"port": 179}]), node_ports=(9091,))
    assert c.model().protected.ports == (FailsafeSpec(TCP, 179),)  # as set


@pytest.mark.parametrize(("flags", "port"), [
    (["--metrics-address", "0.0.0.0:9091"], 9091),   # the kind DaemonSet's address
    ([], 9099),                                       # tortie-node's default
    (["--metrics-port", "9123"], 9123),
    (["--metrics-port", "0"], None),                  # a free port, unknown ahead: none
])
def test_the_policy_agent_protects_the_port_of_tortie_nodes_metrics_address(
        flags: list[str], port: int | None) -> None:
    """The port follows ``--metrics-address`` as tortie-node parses it, into the rendered
    drop rules of the local host and of the other hosts."""
    from agentkit.agent import NodeContext
    from agentkit.metrics import new_registry
    from datastore.memory import MemoryStore
    from datastore.resources import Resources
    from node.main import parse_args
    from policyagent.agent import PolicyAgent, node_ports

    args = parse_args(["--node-name", NODE, *flags])
    assert node_ports(args) == (() if port is None else (port,))
    store = MemoryStore()
    agent = PolicyAgent(NodeContext(node=NODE, store=store, resources=Resources(store),
                                    metrics=new_registry(), args=args))
    c = cluster()
    c.calc = agent.calc
    c.add(wep("a", "10.65.0.1", {"app": "a"}), pool("p", "10.65.0.0/16"),
          node(NODE, "192.0.2.11"))
    script = render(c.model())
    listed = "179, 2379, 2380" + ("" if port is None else f", {port}")
    label = "tcp:179,2379,2380" + ("" if port is None else f",{port}")
    assert chain_body(script, "protect_host")[-1] == (
        f"meta l4proto tcp th dport {{ {listed} }} counter drop comment "
        f'"protected host port {label} on this host"')
    assert (f"ip daddr != 10.65.0.0/16 meta l4proto tcp th dport {{ {listed} }} counter drop "
            f'comment "protected host port {label} outside the pools v4"'
            ) in chain_body(script, "protect_fwd")


def test_nodes_and_pools_come_and_go_and_labels_change_nothing() -> None:
    c = cluster()
    before = c.model()
    labelled = node("node2", "192.0.2.12", vxlan="10.65.9.0")
    labelled.metadata.labels = {"rack": "b"}
    c.add(labelled)
    assert c.model() is before  # not even a new model to diff
    c.delete("Node", "node2")
    c.delete("IPPool", "p")
    after = c.model()
    assert after.protected.host_addresses == ("192.0.2.11/32",)
    assert after.protected.workload_nets == ()
    assert before.diff(after).protected_changed
    assert render_incremental(before, after) is None  # only a full render changes base chains


# --- the rules ----------------------------------------------------------------------------------

def test_chains_drop_protected_ports_outside_the_pools_and_on_node_addresses() -> None:
    script = render(cluster().model())
    skip = f"meta mark & {MARK_EXPLICIT_PORT:#x} != 0 return"
    ports = "meta l4proto tcp th dport { 179, 2379, 2380 }"
    assert chain_body(script, "protect_host")[1:] == [
        skip, f'{ports} counter drop comment "protected host port tcp:179,2379,2380 on this host"']
    fwd = chain_body(script, "protect_fwd")[1:]
    assert fwd[0] == skip
    assert (f"ip daddr != 10.65.0.0/16 {ports} counter drop comment "
            f'"protected host port tcp:179,2379,2380 outside the pools v4"') in fwd
    # a node address taken from the pool (its VXLAN address) is protected too; the others are
    # outside the pools anyway
    assert (f"ip daddr 10.65.9.0/32 {ports} counter drop comment "
            f'"protected host port tcp:179,2379,2380 on the nodes v4"') in fwd
    # no IPv6 pool: every IPv6 destination is a host
    assert any(r.startswith(f"meta nfproto ipv6 {ports} counter drop") for r in fwd)
    fwd_hook = chain_body(script, "forward")
    assert fwd_hook.index('iifname "cali*" jump protect_fwd') == \
        fwd_hook.index('iifname "cali*" jump from_wl') + 1
    assert 'iifname "cali*" jump protect_host' in chain_body(script, "input")


def test_disabled_leaves_the_chains_empty_and_a_net_limits_an_entry() -> None:
    script = render(cluster(felix(workloadProtectedHostPorts=[])).model())
    assert chain_body(script, "protect_host") == [
        'comment "protected host ports: workloads to this host"']
    assert len(chain_body(script, "protect_fwd")) == 1
    script = render(cluster(felix(workloadProtectedHostPorts=[
        {"protocol": "UDP", "port": 53, "net": "192.0.2.1/32"}])).model())
    assert chain_body(script, "protect_fwd")[2:] == [
        'ip daddr 192.0.2.1/32 meta l4proto udp th dport 53 counter drop '
        'comment "protected host port udp:53 to 192.0.2.1/32"']


EXPLICIT = f"meta mark set meta mark | {0x10000 | MARK_EXPLICIT_PORT:#x} return"
PLAIN = "meta mark set meta mark | 0x10000 return"


def test_only_an_egress_allow_naming_the_port_sets_the_explicit_bit() -> None:
    c = cluster(gnp("etcd", selector="app == 'a'", types=["Ingress", "Egress"],
                    egress=[{"action": "Allow", "protocol": "TCP",
                             "destination": {"ports": [2379, "179:180"]}},
                            {"action": "Allow", "protocol": "TCP",
                             "destination": {"nets": ["192.0.2.1/32"]}}],
                    ingress=[{"action": "Allow", "protocol": "TCP",
                              "destination": {"ports": [8080]}}]))
    script = render(c.model())
    body = chain_body(script, policy_chain("gnp:etcd", "egress"))
    assert EXPLICIT in body[2] and "th dport { 179-180, 2379 }" in body[2]
    assert PLAIN in body[3]  # to etcd's address but any port: not explicit
    assert PLAIN in chain_body(script, policy_chain("gnp:etcd", "ingress"))[2]
    # a namespace's allow-all profile never opens a protected port
    c = cluster()
    kns = chain_body(render(c.model()), policy_chain("pro:kns.default", "egress", profile=True))
    assert any(PLAIN in line for line in kns)
    assert not any(EXPLICIT in line for line in kns)


def test_the_script_is_valid_nft() -> None:
    require_tools("nft", "unshare")
    nft, unshare = shutil.which("nft") or "nft", shutil.which("unshare") or "unshare"
    c = cluster(felix(workloadProtectedHostPorts=[
        {"port": 179}, {"port": 6666}, {"protocol": "UDP", "port": 53, "net": "fd00::1/128"}]),
        pool("p6", "fd00:10::/64"))
    p = subprocess.run([unshare, "-n", nft, "-c", "-f", "-"], input=render(c.model()),
                       capture_output=True, text=True, timeout=60, check=False)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        skip_kernel("no private network namespace here")
    assert p.returncode == 0, p.stderr


# --- the etcd client settings the agent and the lab pass on ------------------------------------

def test_etcd_config_ports_and_environment_round_trip(tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("x")
    cfg = EtcdConfig(endpoints=("https://192.0.2.1:2379", "https://10.96.232.136:6666",
                                "https://192.0.2.2:2379"),
                     ca_cert_file=str(tmp_path / "ca"), cert_file=str(tmp_path / "cert"),
                     key_file=str(tmp_path / "key"), timeout=2.5)
    assert cfg.ports == (2379, 6666)
    env = cfg.to_env()
    assert env["TORTIE_ETCD_CA_CERT_FILE"] == str(tmp_path / "ca")
    assert "TORTIE_ETCD_USERNAME" not in env
    assert EtcdConfig.load(env=env) == cfg
    assert EtcdConfig().to_env() == {"TORTIE_ETCD_ENDPOINTS": "http://127.0.0.1:2379"}
