"""``render_incremental`` in a real kernel: a table kept up to date with incremental
transactions is, after every step, the table a full ``render`` of the new model makes."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from policyagent import nft_apply, nft_render
from policyagent.model import DataplaneModel
from policyagent.nft_render import render, render_incremental
from tests.support.nft import sh
from tests.support.policy import (
    Cluster,
    gnp,
    hep,
    kind_of,
    np_,
    random_resources,
    wep,
)
from tests.support.tools import tools

pytestmark = [
    pytest.mark.integration,
    tools("nft", "ip"),
]


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    names = (f"tinc-a-{uuid.uuid4().hex[:8]}", f"tinc-b-{uuid.uuid4().hex[:8]}")
    try:
        for n in names:
            sh("ip", "netns", "add", n)
        yield names
    finally:
        for n in names:
            sh("ip", "netns", "del", n, check=False)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def table_state(netns: str) -> dict[str, Any]:
    """The table as comparable data: chains with their rules in order, sets and maps with
    their elements (handles and listing order left out)."""
    state: dict[str, Any] = {"chains": {}, "rules": {}, "sets": {}, "maps": {}}
    for item in nft_apply.list_table("tortie", netns)["nftables"]:
        if "chain" in item:
            c = item["chain"]
            state["chains"][c["name"]] = _strip(c)
        elif "rule" in item:
            r = _strip(item["rule"])
            state["rules"].setdefault(r["chain"], []).append(json.dumps(r, sort_keys=True))
        elif "set" in item or "map" in item:
            kind = "set" if "set" in item else "map"
            s = _strip(item[kind])
            elems = s.pop("elem", [])
            s["elem"] = sorted(json.dumps(e, sort_keys=True) for e in elems)
            state["sets" if kind == "set" else "maps"][s["name"]] = s
    return state


class Follower:
    """One netns kept up to date incrementally, one given the full table each time."""

    def __init__(self, netns: tuple[str, str]) -> None:
        self.inc, self.full = netns
        self.model = DataplaneModel()
        nft_apply.apply(render(self.model), self.inc)
        self.incremental = self.fallbacks = self.deletes = 0

    def step(self, new: DataplaneModel) -> str | None:
        script = render_incremental(self.model, new)
        if script is None:
            self.fallbacks += 1
            nft_apply.apply(render(new), self.inc)
        else:
            self.incremental += 1
            # set and map blocks add elements (add element would make nft fetch sets first)
            assert "add element" not in script
            if nft_render.FORCE_DELETES is False:
                assert "delete element" not in script
            self.deletes += "delete element" in script
            if script:
                nft_apply.apply(script, self.inc)
        nft_apply.apply(render(new), self.full)
        assert table_state(self.inc) == table_state(self.full)
        self.model = new
        return script


def test_new_pod_label_change_policy_change_delete(two_netns: tuple[str, str]) -> None:
    f = Follower(two_netns)
    c = Cluster().add(
        wep("a", "10.65.0.1", {"app": "a"}), wep("b", "10.65.0.2", {"app": "b"}),
        np_("allow-a", selector="app == 'b'", ingress=[
            {"action": "Allow", "source": {"selector": "app == 'a'"}}]))
    f.step(c.model())
    # a new pod that the policy's source selector matches: two chains, map elements, members
    script = f.step(c.add(wep("c", "10.65.0.3", {"app": "a"})).model())
    assert script is not None and "map wl_to {" in script
    assert "10.65.0.3" in script and "delete" not in script
    # a remote endpoint's label change: set members only
    script = f.step(c.add(wep("r", "10.65.1.1", {"app": "a"}, node="node2")).model())
    assert script is not None and script.startswith("table inet tortie {\n\tset s4_")
    # a local label change that changes which policies apply (tier chain swapped)
    script = f.step(c.add(wep("c", "10.65.0.3", {"app": "b"})).model())
    assert script is not None and "flush chain" in script and "delete chain" not in script
    f.step(c.add(wep("a", "10.65.0.1", {"app": "b"})).model())
    # new policy with a new selector set; then its rules change; then it goes
    f.step(c.add(gnp("g", order=5, selector="app == 'b'", egress=[
        {"action": "Deny", "protocol": "TCP", "destination": {"selector": "app == 'zz'",
                                                              "ports": [25]}}])).model())
    f.step(c.add(gnp("g", order=5, selector="app == 'b'", egress=[
        {"action": "Log"}])).model())
    script = f.step(c.delete("GlobalNetworkPolicy", "g") or c.model())
    assert script is not None and "delete chain" in script
    # interface change, then the pod goes
    f.step(c.add(wep("c", "10.65.0.3", {"app": "b"}, interfaceName="calinew")).model())
    script = f.step(c.delete("WorkloadEndpoint", "default/c") or c.model())
    # no set with intervals in the table: the gone pod's map elements are deleted
    assert script is not None and 'delete element inet tortie wl_to { "calinew" }' in script
    assert "flush map" not in script
    # host endpoints: a full render
    assert f.step(c.add(hep("h", iface="eth0", labels={"app": "b"})).model()) is None
    assert f.step(c.model()) == ""


@pytest.mark.parametrize(("seed", "deletes"), [(3, None), (4, False), (5, True)])
def test_random_updates_match_a_full_render(two_netns: tuple[str, str], seed: int,
                                            deletes: bool | None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # None: by cost (nft_render._deletes_pay); False: always flush + refill; True: elements
    # leave sets and maps through delete element
    monkeypatch.setattr(nft_render, "FORCE_DELETES", deletes)
    rng = random.Random(seed)
    f = Follower(two_netns)
    c = Cluster()
    live: dict[tuple[str, str], Any] = {}
    pool = [r for _ in range(4) for r in random_resources(rng) if r.kind != "HostEndpoint"]
    for r in pool:  # one interface per endpoint, as on a real node
        if r.kind == "WorkloadEndpoint":
            r.spec.interfaceName = f"cali{r.namespace}{r.name}"
    for _ in range(40):
        for _ in range(rng.choice([1, 1, 2, 5])):
            r = rng.choice(pool)
            key = (kind_of(r), Cluster.key(r))
            if key in live and rng.random() < 0.3:
                c.delete(*key)
                del live[key]
            else:
                c.add(r)
                live[key] = r
        f.step(c.model())
    assert f.incremental >= 30 and f.model.endpoints and f.model.policies
    if deletes is not None:
        assert (f.deletes > 0) == deletes
