"""``tortie lab``: a multi-node cluster of network namespaces on this machine."""

from __future__ import annotations

import signal
import sys

import click

from ctl.common import CLIError
from lab.cluster import DEFAULT_POOL_CIDR, MAX_ETCD_MEMBERS, RUNTIMES, Lab, LabError
from lab.underlay import DEFAULT_POOL6_CIDR


def _lab(name: str) -> Lab:
    try:
        return Lab(name, progress=lambda msg: click.echo(f"  {msg}", err=True))
    except LabError as e:
        raise CLIError(str(e)) from None


_name_opt = click.option("--name", default="lab", show_default=True, help="which lab")


@click.group()
def lab() -> None:
    """A cluster on this machine: each node a network namespace with its own tortie-node."""


@lab.command()
@_name_opt
@click.option("--nodes", default=2, show_default=True, help="how many nodes")
@click.option("--pool", default=DEFAULT_POOL_CIDR, show_default=True, help="the IP pool")
@click.option("--subnets", default=1, show_default=True, type=click.IntRange(1, 3),
              help="underlay subnets (RFC 5737 TEST-NETs) the fabric routes between; nodes "
                   "are spread over them in order")
@click.option("--encap", type=click.Choice(["none", "vxlan", "ipip"]), default=None,
              help="the pool's encapsulation: vxlan/ipip are CrossSubnet with several "
                   "subnets, Always with one [default: none with one subnet, else vxlan]; "
                   "vxlan applies to the IPv6 pool too (--dual-stack)")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="cni", show_default=True,
              help="who makes pods: cni = the lab runs the CNI chain itself; containerd = "
                   "a private containerd per node, pods are CRI pod sandboxes")
@click.option("--kubernetes", is_flag=True,
              help="a real Kubernetes: kube-apiserver, controller-manager, scheduler, and a "
                   "kubelet + kube-proxy per node (implies --runtime containerd; builds the "
                   "pinned release with scripts/kubernetes.sh when it is not built yet)")
@click.option("--etcd-members", default=1, show_default=True,
              type=click.IntRange(1, MAX_ETCD_MEMBERS),
              help="members of the lab's etcd (3: a quorum survives one member's loss); "
                   "every client gets all their endpoints")
@click.option("--dual-stack", is_flag=True,
              help="IPv6 too: an IPv6 underlay (2001:db8::/32 documentation subnets), an "
                   "IPv6 pool next to the IPv4 one, pods with an address of each")
@click.option("--pool6", default=DEFAULT_POOL6_CIDR, show_default=True,
              help="the IPv6 pool (with --dual-stack)")
def up(name: str, nodes: int, pool: str, subnets: int, encap: str | None,
       runtime: str, kubernetes: bool, etcd_members: int, dual_stack: bool,
       pool6: str) -> None:
    """Bring a lab up: etcd, the underlay, N nodes each running tortie-node."""
    lab_ = _lab(name)
    click.echo(f"bringing up lab {name!r} with {nodes} node(s)", err=True)
    try:
        st = lab_.up(nodes, pool, subnets=subnets, encap=encap, runtime=runtime,
                     kubernetes=kubernetes, etcd_members=etcd_members,
                     dual_stack=dual_stack, pool6_cidr=pool6)
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"lab {name!r} is up: etcd {','.join(st.etcd_endpoints)}, nodes "
               f"{', '.join(st.nodes)}")
    if st.kubernetes:
        click.echo(f"kubeconfig {lab_.kube(st).admin_kubeconfig} (tortie lab kubectl "
                   f"--name {name} -- get nodes)")


@lab.command()
@_name_opt
def down(name: str) -> None:
    """Remove everything the lab made (processes, namespaces, state)."""
    _lab(name).down()
    click.echo(f"lab {name!r} is down")


@lab.command()
@_name_opt
def status(name: str) -> None:
    """Nodes and pods of a lab."""
    try:
        st = _lab(name).load()
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"etcd  {','.join(st.etcd_endpoints)}  (pods made by: {st.runtime})")
    click.echo(f"fabric {st.fabric}")
    if st.kubernetes:
        k8s = _lab(name).kube(st)
        click.echo(f"kubernetes  {k8s.server}  kubeconfig {k8s.admin_kubeconfig}")
        for key, pid in sorted(st.k8s_pids.items()):
            click.echo(f"      {key:28} pid {pid}")
    for n in st.nodes.values():
        v6 = f" {n.address6}" if n.address6 else ""  # a dual-stack lab: its IPv6 address
        click.echo(f"node  {n.name:10} {n.address:15}{v6} netns {n.netns} tortie-node pid "
                   f"{n.pid}")
    for ref, p in st.pods.items():
        click.echo(f"pod   {ref:24} on {p.node:8} {','.join(p.ips)}")


def _is_pod_ref(text: str) -> bool:
    namespace, sep, name = text.partition("/")
    return bool(sep and namespace and name) and "/" not in name


@lab.group()
def pod() -> None:
    """Add and remove pods (a fresh netns plus the CNI chain, as a runtime does it)."""


@pod.command("add")
@_name_opt
@click.argument("node")
@click.argument("ref", metavar="NAMESPACE/NAME")
def pod_add(name: str, node: str, ref: str) -> None:
    try:
        p = _lab(name).pod_add(node, ref)
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"pod {ref} on {node}: {', '.join(p.ips)}")


@pod.command("del")
@_name_opt
@click.argument("ref", metavar="NAMESPACE/NAME")
def pod_del(name: str, ref: str) -> None:
    try:
        _lab(name).pod_del(ref)
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"pod {ref} deleted")


@lab.group()
def peer() -> None:
    """Routers outside the cluster that peer with the nodes."""


@peer.command("bird")
@_name_opt
@click.option("--route-reflector", is_flag=True,
              help="reflect routes between the nodes (same AS; node-to-node mesh off)")
@click.option("--asn", type=int, default=None,
              help="BIRD's AS [default: 65001, or the nodes' AS as route reflector]")
@click.option("--remove", is_flag=True, help="stop BIRD and delete its BGPPeer")
@click.option("--show", is_flag=True, help="print BIRD's sessions and routes")
@click.option("--over-ipv6", is_flag=True,
              help="sessions over IPv6 with the nodes' IPv6 addresses, carrying the IPv6 "
                   "routes only (a dual-stack lab; outside router)")
def peer_bird(name: str, route_reflector: bool, asn: int | None, remove: bool,
              show: bool, over_ipv6: bool) -> None:
    """A BIRD router (Debian bird2) on the underlay, peering with every node."""
    from lab import bird_peer
    from routing.bgp.bird import BirdError

    lab_ = _lab(name)
    try:
        if remove:
            bird_peer.remove_bird(lab_)
            click.echo(f"BIRD removed from lab {name!r}")
            return
        if show:
            bird = bird_peer.bird_of(lab_)
            click.echo(bird.cli("show", "protocols").rstrip())
            click.echo(bird.cli("show", "route").rstrip())
            return
        info = bird_peer.add_bird(lab_, route_reflector=route_reflector, asn=asn,
                                  over_ipv6=over_ipv6)
    except (LabError, BirdError, bird_peer.BirdLabError) as e:
        raise CLIError(str(e)) from None
    role = "route reflector" if info.route_reflector else "outside router"
    click.echo(f"BIRD ({role}, AS {info.asn}) at {info.address} in netns {info.netns}, "
               f"pid {info.pid}, peering with {', '.join(info.peers)}")


@lab.command(context_settings={"ignore_unknown_options": True})
@_name_opt
@click.option("--node", help="run inside this node's namespace")
@click.argument("target", required=False, metavar="[NAMESPACE/NAME]")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(name: str, node: str | None, target: str | None, argv: tuple[str, ...]) -> None:
    """Run a command in a pod's or a node's namespace (the lab's etcd in its environment).

    \b
    tortie lab exec shop/web -- ping -c1 10.244.0.2
    tortie lab exec --node node1 -- ip route
    tortie lab exec -- tortie get nodes        (in the fabric, next to etcd)
    """
    if target is not None and (node or not _is_pod_ref(target)):
        argv, target = (target, *argv), None  # it was the command's first word
    try:
        code = _lab(name).exec(list(argv), node=node, pod=target)
    except LabError as e:
        raise CLIError(str(e)) from None
    sys.exit(code)


@lab.command(context_settings={"ignore_unknown_options": True})
@_name_opt
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def kubectl(name: str, argv: tuple[str, ...]) -> None:
    """Run the lab's kubectl against its API server (a lab up with --kubernetes).

    \b
    tortie lab kubectl -- get nodes -o wide
    tortie lab kubectl --name k8s -- apply -f deployment.yaml
    """
    lab_ = _lab(name)
    try:
        st = lab_.load()
        if not st.kubernetes:
            raise LabError(f"lab {name!r} runs no Kubernetes (tortie lab up --kubernetes)")
        k8s = lab_.kube(st)
        code = lab_.exec([str(k8s.bin / "kubectl"), "--kubeconfig",
                          str(k8s.admin_kubeconfig), *argv])
    except LabError as e:
        raise CLIError(str(e)) from None
    sys.exit(code)


_SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
_signal_opt = click.option("--signal", "sig", type=click.Choice(sorted(_SIGNALS)),
                           default="TERM", show_default=True,
                           help="how the running process is stopped (KILL: a crash)")


@lab.group("node")
def node_cmd() -> None:
    """Crash, stop and restart a node's tortie-node (pods keep their network)."""


@node_cmd.command("restart")
@_name_opt
@_signal_opt
@click.argument("node")
def node_restart(name: str, sig: str, node: str) -> None:
    """Stop NODE's tortie-node if it runs, start it again, wait until it serves CNI."""
    try:
        n = _lab(name).restart_node(node, _SIGNALS[sig])
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"node {node}: tortie-node running (pid {n.pid})")


@node_cmd.command("kill")
@_name_opt
@click.argument("node")
def node_kill(name: str, node: str) -> None:
    """SIGKILL NODE's tortie-node (a crash); it stays down until `node restart`."""
    try:
        n = _lab(name).kill_node(node)
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"node {node}: tortie-node killed (pid {n.pid}); "
               f"tortie lab node restart --name {name} {node} brings it back")


@lab.group("etcd")
def etcd_cmd() -> None:
    """Faults of the lab's datastore: kill, pause, resume, restart a member (by PID); which
    member leads."""


_member_opt = click.option("--member", default=1, show_default=True,
                           type=click.IntRange(1, MAX_ETCD_MEMBERS),
                           help="which etcd member (tortie lab etcd status lists them)")


def _etcd_verb(name: str, verb: str, member: int, sig: str = "TERM") -> None:
    lab_ = _lab(name)
    try:
        if verb == "kill":
            pid = lab_.etcd_kill(member)
        elif verb == "pause":
            pid = lab_.etcd_pause(member)
        elif verb == "resume":
            pid = lab_.etcd_resume(member)
        else:
            pid = lab_.etcd_restart(_SIGNALS[sig], member)
        st = lab_.load()
        state = lab_.etcd_state(st, member)
    except LabError as e:
        raise CLIError(str(e)) from None
    which = f" member {member}" if st.etcd_members > 1 else ""
    click.echo(f"etcd{which} of lab {name!r}: {state} (pid {pid})")


@etcd_cmd.command("restart")
@_name_opt
@_signal_opt
@_member_opt
def etcd_restart(name: str, sig: str, member: int) -> None:
    """Stop an etcd member if it runs (or is paused) and start it again on the same data."""
    _etcd_verb(name, "restart", member, sig)


@etcd_cmd.command("kill")
@_name_opt
@_member_opt
def etcd_kill(name: str, member: int) -> None:
    """SIGKILL an etcd member (a crash); it stays down until `etcd restart`."""
    _etcd_verb(name, "kill", member)


@etcd_cmd.command("pause")
@_name_opt
@_member_opt
def etcd_pause(name: str, member: int) -> None:
    """SIGSTOP an etcd member: connections stay open, nothing is answered (frozen)."""
    _etcd_verb(name, "pause", member)


@etcd_cmd.command("resume")
@_name_opt
@_member_opt
def etcd_resume(name: str, member: int) -> None:
    """SIGCONT a paused etcd member."""
    _etcd_verb(name, "resume", member)


@etcd_cmd.command("status")
@_name_opt
def etcd_status(name: str) -> None:
    """Every member: endpoint, PID, state, member id, and which one leads (etcd's Status)."""
    try:
        rows = _lab(name).etcd_status()
    except LabError as e:
        raise CLIError(str(e)) from None
    click.echo(f"{'MEMBER':7} {'ENDPOINT':27} {'PID':>8} {'STATE':8} {'ID':17} LEADER")
    for r in rows:
        click.echo(f"{r['member']:<7} {r['endpoint']:27} {r['pid']:>8} {r['state']:8} "
                   f"{r['id'] or '-':17} {'yes' if r['leader'] else ''}")


@etcd_cmd.command("leader")
@_name_opt
@click.option("--timeout", default=10.0, show_default=True,
              help="seconds to wait while an election is under way")
def etcd_leader(name: str, timeout: float) -> None:
    """Print the number of the member that leads (waits out an election)."""
    try:
        click.echo(_lab(name).etcd_leader(timeout))
    except LabError as e:
        raise CLIError(str(e)) from None
