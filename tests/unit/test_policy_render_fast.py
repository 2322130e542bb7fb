"""The fast paths added for policy at scale: subsumed-CIDR removal, model diffs on FrozenMap
views, the calculator's selector index, and what ``render_incremental`` emits (the kernel
check is in tests/integration/test_nft_incremental.py)."""

from __future__ import annotations

import ipaddress
import random
import re
from typing import Any

import pytest

from policyagent import nft_render
from policyagent.model import FrozenMap, KeyDiff
from policyagent.nft_render import _drop_subsumed, render, render_incremental
from tests.support.policy import Cluster, gnp, hep, kind_of, random_resources, wep


def _naive(members: list[str]) -> list[str]:
    nets = {ipaddress.ip_network(m, strict=False) for m in members}
    kept = [n for n in nets if not any(o != n and o.version == n.version
                                       and n.subnet_of(o) for o in nets)]
    return sorted(str(n) for n in kept)


def test_drop_subsumed_matches_the_quadratic_definition() -> None:
    assert _drop_subsumed(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "11.0.0.1/32",
                           "10.1.2.3", "fd00::/64", "fd00::1/128", "fd01::1/128"]) == [
        "10.0.0.0/8", "11.0.0.1/32", "fd00::/64", "fd01::1/128"]
    rng = random.Random(5)
    for _ in range(200):
        members = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.7:
                plen = rng.choice([8, 16, 24, 28, 32])
                members.append(f"10.{rng.randint(0, 3)}.{rng.randint(0, 3)}.{rng.randint(0, 255)}"
                               f"/{plen}")
            else:
                members.append(f"fd00::{rng.randint(0, 3):x}:{rng.randint(0, 9)}"
                               f"/{rng.choice([64, 112, 128])}")
        assert _drop_subsumed(members) == _naive(members), members


def test_frozen_map_views_and_key_diffs() -> None:
    a = FrozenMap({"x": 1, "y": 2})
    b = FrozenMap({"y": 3, "z": 4})
    assert a.keys() & b.keys() == {"y"} and list(a.items()) == [("x", 1), ("y", 2)]
    assert sorted(b.values()) == [3, 4] and dict(a) == {"x": 1, "y": 2}
    assert KeyDiff.of(a, b) == KeyDiff(frozenset({"z"}), frozenset({"x"}), frozenset({"y"}))
    assert KeyDiff.of({"x": 1}, a) == KeyDiff(added=frozenset({"y"}))
    assert not KeyDiff.of(a, FrozenMap({"x": 1, "y": 2}))


def test_incremental_scripts_use_blocks_not_element_commands(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cluster().add(wep("a", "10.65.0.1", {"app": "a"}), wep("b", "10.65.0.2", {"app": "b"}),
                      gnp("g", selector="app == 'b'", ingress=[
                          {"action": "Allow", "source": {"selector": "app == 'a'"}}]))
    m1 = c.model()
    assert render_incremental(m1, m1) == ""
    m2 = c.add(wep("c", "10.65.0.3", {"app": "a"})).model()
    script = render_incremental(m1, m2)
    assert script is not None
    assert "add element" not in script and "flush" not in script
    assert '"calic" : goto wi_' in script and "{ 10.65.0.3 }" in script
    # a member leaves: with no interval set for nft to fetch first, by delete element
    m3 = c.add(wep("c", "10.65.0.3", {"app": "x"})).model()
    script = render_incremental(m2, m3)
    assert script is not None and script.startswith("delete element inet tortie s4_")
    assert "{ 10.65.0.3 }" in script and "flush" not in script
    # forced to refill: the set is flushed and refilled in the same transaction
    monkeypatch.setattr(nft_render, "FORCE_DELETES", False)
    script = render_incremental(m2, m3)
    assert script is not None and "flush set inet tortie s4_" in script
    assert "{ 10.65.0.1 }" in script and "10.65.0.3" not in script.split("flush set")[1]
    # host endpoint changes need the full render
    assert render_incremental(m3, c.add(hep("h", iface="eth0")).model()) is None


def test_selector_required_labels() -> None:
    from datastore.selector import parse

    assert parse("a == '1' && b == '2' && has(c)").required_labels() == (("a", "1"), ("b", "2"))
    assert parse("a == 'x'").required_labels() == (("a", "x"),)
    for text in ("a == '1' || b == '2'", "all()", "!(a == '1')", "a in {'1'}", "a != '1'"):
        assert parse(text).required_labels() == (), text


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_selector_index_finds_exactly_what_a_full_scan_finds(seed: int) -> None:
    """The calculator tries a new item only on the selectors its labels can match: the result
    must be what trying every selector gives, whatever the order resources arrive in."""
    rng = random.Random(seed)
    resources = [r for _ in range(3) for r in random_resources(rng)]
    rng.shuffle(resources)
    c = Cluster()
    live: set[tuple[str, str]] = set()
    for r in resources:  # later variants replace earlier ones (relabels); some deletes
        key = (kind_of(r), Cluster.key(r))
        if key in live and rng.random() < 0.2:
            c.delete(*key)
            live.discard(key)
        else:
            c.calc.update(*key, r)
            live.add(key)
    index = c.calc.index
    assert index.selectors_by_label and index.items
    for item in index.items.values():
        expected = {canon for canon, sel in index.selectors.items() if sel.match(item.labels)}
        assert item.matched == expected, item.id
    by_label: dict[tuple[str, str], set[str]] = {}
    for item in index.items.values():
        for kv in item.labels.items():
            by_label.setdefault(kv, set()).add(item.id)
    assert index.items_by_label == by_label


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_incremental_model_is_the_model_a_fresh_calculator_makes(seed: int) -> None:
    """``model()`` keeps its contents by reference counts from the programs that changed:
    after every step it must equal the model of a calculator fed only the live resources."""
    rng = random.Random(seed)
    pool = [r for _ in range(3) for r in random_resources(rng)]
    c = Cluster()
    live: dict[tuple[str, str], Any] = {}
    tiers: dict[str, dict[str, Any]] = {}
    previous = c.model()
    for step in range(60):
        for _ in range(rng.choice([1, 1, 2, 6])):
            if rng.random() < 0.05:  # the default tier's order or end-of-tier action
                tier = {"spec": {"order": rng.choice([None, 5.0]),
                                 "defaultAction": rng.choice(["Deny", "Pass"])}}
                c.calc.update("Tier", "default", tier)
                tiers["default"] = tier
                continue
            r = rng.choice(pool)
            key = (kind_of(r), Cluster.key(r))
            if key in live and rng.random() < 0.3:
                c.delete(*key)
                del live[key]
            else:
                c.calc.update(*key, r)
                live[key] = r
        fresh = Cluster()
        for name, tier in tiers.items():
            fresh.calc.update("Tier", name, tier)
        for key, r in live.items():
            fresh.calc.update(*key, r)
        got, want = c.model(), fresh.model()
        for part in ("endpoints", "host_endpoints", "policies", "profiles", "ipsets"):
            assert dict(getattr(got, part)) == dict(getattr(want, part)), (step, part)
            assert list(getattr(got, part)) == sorted(getattr(got, part)), (step, part)
        assert got == want, step
        # an unchanged part is the same object: diffs of big models skip it
        diff = previous.diff(got)
        for part in ("endpoints", "policies", "ipsets"):
            if not getattr(diff, part):
                assert getattr(previous, part) is getattr(got, part), (step, part)
        previous = got


def _chains(script: str) -> dict[str, str]:
    return dict(re.findall(r"^\tchain (\S+) \{\n(.*?)\n\t\}$", script, re.M | re.S))


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_incremental_redefines_every_chain_a_full_render_changes(seed: int) -> None:
    """Chains whose text a full render changes (rules left out while a set is empty, and
    back when it gets a member) are refilled by the incremental transaction, new ones made,
    gone ones deleted (the kernel-level check: tests/integration/test_nft_incremental.py)."""
    rng = random.Random(seed)
    pool = [r for _ in range(3) for r in random_resources(rng) if r.kind != "HostEndpoint"]
    for r in pool:  # one interface per endpoint, as on a real node
        if r.kind == "WorkloadEndpoint":
            r.spec.interfaceName = f"cali{r.namespace}{r.name}"
    c = Cluster()
    live: set[tuple[str, str]] = set()
    old = c.model()
    checked = 0
    for _ in range(60):
        for _ in range(rng.choice([1, 1, 2, 5])):
            r = rng.choice(pool)
            key = (kind_of(r), Cluster.key(r))
            if key in live and rng.random() < 0.3:
                c.delete(*key)
                live.discard(key)
            else:
                c.add(r)
                live.add(key)
        new = c.model()
        script = render_incremental(old, new)
        if script is not None:
            before, after = _chains(render(old)), _chains(render(new))
            defined = _chains(script)
            flushed = set(re.findall(r"^flush chain inet tortie (\S+)$", script, re.M))
            deleted = set(re.findall(r"^delete chain inet tortie (\S+)$", script, re.M))
            for name, text in after.items():
                if before.get(name) != text:
                    assert defined.get(name) == text, name
                    assert name not in before or name in flushed, name
            assert deleted == before.keys() - after.keys()
            checked += 1
        old = new
    assert checked >= 40


def test_render_pauses_the_garbage_collector_and_restores_it() -> None:
    import gc

    model = Cluster().add(wep("a", "10.65.0.1", {"app": "a"})).model()
    assert gc.isenabled()
    script = render(model)
    assert gc.isenabled() and "caliA" not in script and "calia" in script
    gc.disable()
    try:
        render(model)
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
