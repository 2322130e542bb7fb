"""agentkit/rtnl.py against the real kernel, in scratch namespaces: a link delete that
returns once the kernel has unlisted the link."""

from __future__ import annotations

import errno
import json
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from agentkit import rtnl
from agentkit.netns import run_in_netns
from lab import netns

T = TypeVar("T")

@pytest.fixture
def pod_pair() -> Iterator[tuple[str, str]]:
    """A node namespace and a pod namespace, for veths between them."""
    tag = uuid.uuid4().hex[:6]
    node, pod = f"trt-{tag}-n", f"trt-{tag}-p"
    try:
        for ns in (node, pod):
            netns.add_netns(ns)
        yield node, pod
    finally:
        for ns in (node, pod):
            netns.del_netns(ns)


def _veth(node: str, pod: str) -> int:
    """A pod-style veth (cali0 in ``node``, eth0 in ``pod``) with a route; cali0's index."""
    netns.ip("link", "add", "cali0", "type", "veth", "peer", "name", "eth0", "netns", pod,
             ns=node)
    netns.ip("link", "set", "cali0", "up", ns=node)
    netns.ip("route", "add", "10.244.0.5/32", "dev", "cali0", ns=node)
    (link,) = json.loads(netns.ip("-j", "link", "show", "cali0", ns=node))
    return int(link["ifindex"])


def _in(ns: str, fn: Callable[[], T]) -> T:
    return run_in_netns(netns.netns_path(ns), fn)


def _delete(ns: str, index: int, name: str) -> bool:
    return _in(ns, lambda: rtnl.delete_link_unlisted(index, name))


def test_a_deleted_veth_is_gone_from_both_namespaces_when_the_call_returns(
        pod_pair: tuple[str, str]) -> None:
    """On return the link, its peer and its route are gone and both names are free (a
    new pair of the same names is made at once), five times over; a second delete of the
    same index says False."""
    node, pod = pod_pair
    for _ in range(5):
        index = _veth(node, pod)
        assert _delete(node, index, "cali0") is True
        assert "cali0" not in netns.ip("link", "show", ns=node)
        assert "eth0" not in netns.ip("link", "show", ns=pod)
        assert "10.244.0.5" not in netns.ip("route", "show", ns=node)
        assert _delete(node, index, "cali0") is False
    index = _veth(node, pod)  # the names are free again
    assert "cali0" in netns.ip("link", "show", ns=node)


def test_a_refused_delete_raises_the_kernels_answer(pod_pair: tuple[str, str]) -> None:
    """The loopback cannot be deleted: the kernel's refusal comes back, not a notice."""
    node, _ = pod_pair
    with pytest.raises(rtnl.RtnlError) as e:
        _delete(node, 1, "lo")
    assert e.value.errno == errno.EOPNOTSUPP
    assert "lo" in netns.ip("link", "show", ns=node)
