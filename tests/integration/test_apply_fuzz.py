"""``tortie apply`` against a real etcd: a rejected input writes nothing, an accepted batch
is written all at once (one transaction when it fits in one), and a batch that needs
several transactions says exactly what was written when it fails half-way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ctl.main import cli, validate_documents
from datastore.documents import parse_text
from datastore.kinds import by_cli_name
from datastore.resources import PartialWrite, Resources, to_resource
from datastore.store import TXN_MAX_OPS, DatastoreError, Store, Unavailable, Write
from lab.etcd import EtcdProcess
from tests.support.cli import tortie
from tests.support.fuzz_corpus import CORPUS_DATA, FUZZ, mutated_data, render

pytestmark = pytest.mark.integration

GNP = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n"
       "spec:\n  order: {}\n")
BOMB = ("- &a {apiVersion: projectcalico.org/v3, kind: GlobalNetworkSet, metadata: {name: x}, "
        "spec: {nets: [10.0.0.0/8]}}\n"
        + "".join(f"- &{b} [" + ", ".join([f"*{a}"] * 10) + "]\n"
                  for a, b in zip("abcde", "bcdef", strict=True)))


def netset(name: str, net: str = "10.0.0.0/8") -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n"
            f"  name: {name}\nspec:\n  nets: [{net}]\n")


def pool(name: str, cidr: str) -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\n"
            f"spec:\n  cidr: {cidr}\n")


def on_store(etcd: EtcdProcess, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with Store(etcd.config) as s:
            return await fn(s)

    return asyncio.run(main())


def revision(etcd: EtcdProcess) -> int:
    return on_store(etcd, lambda s: s.revision())


def stored_keys(etcd: EtcdProcess) -> list[str]:
    async def keys(s: Store) -> list[str]:
        kvs, _ = await s.list("/tortie/")
        return [kv.key for kv in kvs]

    return on_store(etcd, keys)


def wipe(etcd: EtcdProcess) -> None:
    on_store(etcd, lambda s: s.delete_prefix("/tortie/"))


@pytest.mark.parametrize("text, message", [
    (BOMB, "<stdin>:1: too large: more than 1000000 nodes once YAML aliases are expanded"),
    (GNP.format("[" * 1000 + "]" * 1000), "<stdin>:6:72: YAML error: nested more than 64"),
    (GNP.replace("GlobalNetworkPolicy", "[IPPool]").format(1),
     "<stdin>:2: document 'p' is invalid: kind: must be a string, not a list"),
    (GNP.format("9" * 5000), "<stdin>:6: GlobalNetworkPolicy(p) is invalid: spec.order: "
                             "999999999999... (5000 characters) is too long for a number"),
    (GNP.format(".nan"), "<stdin>:6: GlobalNetworkPolicy(p) is invalid: spec.order: .nan is "
                         "not a finite number"),
    (GNP.format(".inf"), "<stdin>:6: GlobalNetworkPolicy(p) is invalid: spec.order: .inf is "
                         "not a finite number"),
    (netset("a") + "---\n" + GNP.format(".nan"), "nothing was written; fix these documents"),
    (netset("a") + "---\n" + netset("a"), "<stdin>:8: GlobalNetworkSet(a) is given twice"),
    (pool("a", "10.1.0.0/16") + "---\n" + pool("b", "10.1.2.0/24"),
     "<stdin>:13: IPPool(b) is invalid: spec.cidr: 10.1.2.0/24 overlaps with IPPool(a)"),
])
def test_rejected_input_writes_nothing(etcd_server: EtcdProcess, etcd_endpoint: str,
                                       text: str, message: str) -> None:
    before = revision(etcd_server)
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=text)
    assert r.code == 1, r.text
    assert message in r.err and "nothing was written" in r.err, r.err
    assert "Traceback" not in r.text
    assert revision(etcd_server) == before
    assert stored_keys(etcd_server) == []


def test_one_transaction_per_batch_that_fits(etcd_server: EtcdProcess,
                                             etcd_endpoint: str) -> None:
    text = "---\n".join(netset(f"s{i}") for i in range(TXN_MAX_OPS))
    before = revision(etcd_server)
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=text)
    assert r.code == 0, r.text
    assert f"Successfully applied {TXN_MAX_OPS} 'GlobalNetworkSet' resource(s)" in r.out
    assert revision(etcd_server) == before + 1
    # replacing them all, and one more: two transactions
    text += "---\n" + netset("extra")
    r = tortie(etcd_endpoint, "apply", "-f", "-", stdin=text)
    assert r.code == 0, r.text
    assert revision(etcd_server) == before + 3
    assert len(stored_keys(etcd_server)) == TXN_MAX_OPS + 1
    # create of what exists: nothing; --skip-exists: only the new one
    r = tortie(etcd_endpoint, "create", "-f", "-", stdin=text + "---\n" + netset("new"))
    assert r.code == 1 and "GlobalNetworkSet(s0) already exists" in r.err
    assert revision(etcd_server) == before + 3
    r = tortie(etcd_endpoint, "create", "--skip-exists", "-f", "-",
               stdin=text + "---\n" + netset("new"))
    assert r.code == 0, r.text
    assert revision(etcd_server) == before + 4
    # delete of one that does not exist: nothing deleted
    r = tortie(etcd_endpoint, "delete", "-f", "-", stdin=netset("s1") + "---\n" + netset("nope"))
    assert r.code == 1 and "GlobalNetworkSet(nope) does not exist" in r.err, r.err
    assert "nothing was written" in r.err
    assert revision(etcd_server) == before + 4
    r = tortie(etcd_endpoint, "delete", "--skip-not-exists", "-f", "-",
               stdin=netset("s1") + "---\n" + netset("nope"))
    assert r.code == 0, r.text
    assert revision(etcd_server) == before + 5


def _items(text: str) -> list[tuple[Any, Any]]:
    return [to_resource(d.data) for d in parse_text(text, "t").documents]


@pytest.mark.parametrize("error", [DatastoreError, Unavailable])
def test_partial_write_says_exactly_what_was_written(etcd_server: EtcdProcess,
                                                     etcd_endpoint: str,
                                                     error: type[DatastoreError]) -> None:
    n = TXN_MAX_OPS + 5
    items = _items("---\n".join(netset(f"s{i:03}") for i in range(n)))

    async def go(store: Store) -> PartialWrite:
        commits, fail_on = 0, 1
        real = store.commit

        async def failing(writes: Any) -> int | None:
            nonlocal commits
            commits += 1
            if commits == fail_on:
                raise error("simulated failure")
            return await real(writes)

        store.commit = failing
        # the only transaction fails: the error as it is, or that its outcome is unknown
        with pytest.raises(DatastoreError) as first:
            await Resources(store).write_all("apply", items[:2])
        if error is Unavailable:
            assert isinstance(first.value, PartialWrite) and not first.value.written
            assert first.value.unknown == ["GlobalNetworkSet(s000)", "GlobalNetworkSet(s001)"]
        else:
            assert not isinstance(first.value, PartialWrite)
        commits, fail_on = 0, 2
        with pytest.raises(PartialWrite) as e:
            await Resources(store).write_all("apply", items)
        return e.value

    e = on_store(etcd_server, go)
    first = [f"GlobalNetworkSet(s{i:03})" for i in range(TXN_MAX_OPS)]
    rest = [f"GlobalNetworkSet(s{i:03})" for i in range(TXN_MAX_OPS, n)]
    assert e.written == first
    assert str(e).startswith("simulated failure\n  applied 128: GlobalNetworkSet(s000), ")
    if error is Unavailable:
        assert e.unknown == rest
        assert f"maybe applied (etcd did not answer) 5: {', '.join(rest)}" in str(e)
    else:
        assert e.unknown == []
        assert f"not applied 5: {', '.join(rest)}" in str(e)
    assert [k.rpartition("/")[2] for k in stored_keys(etcd_server)] == \
        [w[len("GlobalNetworkSet("):-1] for w in first]


def test_concurrent_change_is_planned_again(etcd_server: EtcdProcess,
                                            etcd_endpoint: str) -> None:
    items = _items(netset("a") + "---\n" + netset("b"))

    async def go(store: Store) -> tuple[int, str, int]:
        reads = 0
        real = store.get_many

        async def racing(keys: Any) -> Any:
            nonlocal reads
            reads += 1
            found = await real(keys)
            if reads == 1:  # another writer gets in between the read and the write
                other = Store(store.config)
                async with other:
                    await Resources(other).apply(*_items(netset("b", "192.168.0.0/16"))[0])
            return found

        store.get_many = racing
        result = await Resources(store).write_all("apply", items)
        b = await Resources(store).get(by_cli_name("gns"), "b")
        return reads, b.spec.nets[0], len(result.written)

    reads, net, written = on_store(etcd_server, go)
    assert reads == 2 and net == "10.0.0.0/8" and written == 2


def test_mutated_batches_write_all_or_nothing(etcd_server: EtcdProcess) -> None:
    """Corpus documents, maybe with a mutated one, through the command in-process."""
    runner = CliRunner()
    endpoint = ["--etcd-endpoints", etcd_server.endpoint]

    @settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 10))
    @given(st.lists(st.sampled_from(CORPUS_DATA), min_size=1, max_size=5),
           st.one_of(st.none(), mutated_data()), st.sampled_from(["apply", "create"]))
    def check(docs: list[Any], bad: Any, verb: str) -> None:
        wipe(etcd_server)
        texts = [render(d, "block") for d in docs]
        if bad is not None:
            texts.append(render(bad, "block"))
        text = "---\n".join(texts)
        before = revision(etcd_server)
        result = runner.invoke(cli, [*endpoint, verb, "-f", "-"], input=text)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(result.output) from result.exception
        after = revision(etcd_server)
        if result.exit_code != 0:
            assert result.output.startswith("error: "), result.output
            assert "nothing was written" in result.output or \
                "no resources found" in result.output, result.output
            assert after == before, result.output
            return
        loaded, errors = validate_documents(parse_text(text, "t").documents, None)
        assert not errors and after == before + 1, result.output
        keys = {Resources.key(info, obj.name, obj.namespace) for info, obj, _ in loaded}
        assert set(stored_keys(etcd_server)) == keys

    try:
        check()
    finally:
        wipe(etcd_server)


def test_stored_value_is_strict_json(etcd_server: EtcdProcess, etcd_endpoint: str) -> None:
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format("'nan'")).code == 1
    assert tortie(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format("1.5e3")).code == 0
    r = tortie(etcd_endpoint, "patch", "gnp", "p", "-p", '{"spec": {"order": NaN}}')
    assert r.code == 1 and "spec.order: NaN is not a finite number" in r.err, r.err
    r = tortie(etcd_endpoint, "patch", "gnp", "p", "-p", '{"spec": {"order": "Infinity"}}')
    assert r.code == 1 and "spec.order: Input should be a finite number" in r.err, r.err
    r = tortie(etcd_endpoint, "get", "gnp", "p", "-o", "json")
    assert '"order": 1500' in r.out


async def test_store_commit_is_one_conditional_transaction(store: Store) -> None:
    p = "/tortie/test/commit/"
    rev = await store.commit([Write(p + "a", {"v": 1}, 0), Write(p + "b", {"v": 1}, 0)])
    assert rev is not None
    found = await store.get_many([p + "a", p + "b", p + "missing"])
    assert sorted(found) == [p + "a", p + "b"]
    assert {kv.mod_revision for kv in found.values()} == {rev}
    # one stale expectation: nothing of the transaction is written
    assert await store.commit([Write(p + "c", {"v": 1}, 0),
                               Write(p + "a", {"v": 2}, rev - 1)]) is None
    assert await store.get_many([p + "c"]) == {}
    assert (await store.get(p + "a")).value == {"v": 1}
    # "must not exist" on an existing key fails too; a delete needs the current revision
    assert await store.commit([Write(p + "a", {"v": 3}, 0)]) is None
    rev2 = await store.commit([Write(p + "a", {"v": 2}, rev), Write(p + "b", None, rev)])
    assert rev2 == rev + 1
    assert sorted(await store.get_many([p + "a", p + "b"])) == [p + "a"]
    with pytest.raises(ValueError, match="twice"):
        await store.commit([Write(p + "x", {}, 0), Write(p + "x", {}, 0)])
    with pytest.raises(ValueError, match="at most 128"):
        await store.commit([Write(f"{p}{i}", {}, 0) for i in range(TXN_MAX_OPS + 1)])
    # reads of more keys than one transaction holds
    keys = [f"{p}many/{i:04}" for i in range(3 * TXN_MAX_OPS + 7)]
    for start in range(0, len(keys), TXN_MAX_OPS):
        await store.commit([Write(k, {"k": k}, 0) for k in keys[start:start + TXN_MAX_OPS]])
    found = await store.get_many([*keys, p + "nope"])
    assert sorted(found) == keys and all(found[k].value == {"k": k} for k in keys)
