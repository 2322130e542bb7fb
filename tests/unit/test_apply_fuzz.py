"""What ``tortie apply`` does before it writes, under hostile and random input.

Reading (YAML and JSON, aliases, the limits of one command) and validating documents must,
whatever the input, end either in resources that can be stored as strict JSON or in the
project's own errors naming ``file:line`` — never a traceback.  Most properties drive
``parse_text`` and ``validate_documents`` directly (thousands of inputs a second); a few
drive the ``tortie`` command itself in-process, without a datastore.  Writing nothing on a
rejected input is checked against a real etcd in tests/integration/test_apply_fuzz.py.

The examples are derandomised (the same every run); a longer, random campaign:
``TORTIE_FUZZ_EXAMPLES=5000 TORTIE_FUZZ_RANDOM=1 pytest --timeout 0 tests/unit/test_apply_fuzz.py``
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ctl.main import MAX_ERROR_LINE, cli, validate_documents
from datastore.documents import (
    LIMITS,
    Budget,
    DocumentError,
    LimitExceeded,
    Limits,
    load_json,
    parse_text,
    read_sources,
)
from datastore.kinds import KindInfo
from datastore.model_base import ResourceInvalid
from datastore.resources import Resources, to_resource
from datastore.store import decode_value, encode_value
from tests.support.fuzz_corpus import (
    BIG_INT_TEXT,
    CORPUS,
    FUZZ,
    VALUES,
    alias_bombs,
    mutated_data,
    mutated_text,
    render,
)

SOURCE = "<fuzz>"
_WHERE = re.compile(rf"^{re.escape(SOURCE)}:\d+(:\d+)?: ")
GNP = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n"
       "spec:\n  selector: all()\n  order: {}\n")


def _strict_loads(raw: bytes) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"stored value holds {name}: not JSON")

    return json.loads(raw, parse_constant=refuse)


def apply_input(text: str, budget: Budget | None = None,
                ) -> tuple[list[tuple[KindInfo, Any, str]], list[str]]:
    """What ``tortie apply -f -`` makes of ``text`` before writing: (resources, errors).

    Fails the test on anything but the project's errors, on an error that does not say
    where, and on a resource whose stored form is not strict JSON or does not validate
    again (``get -o yaml`` output must apply again).
    """
    try:
        result = parse_text(text, SOURCE, budget)
    except DocumentError as e:
        assert _WHERE.match(str(e)) or str(e).startswith(f"{SOURCE}: "), str(e)
        return [], [str(e)]
    loaded, errors = validate_documents(result.documents, None)
    for err in errors:
        first = err.splitlines()[0]
        assert _WHERE.match(first), err
        assert all(len(line) <= MAX_ERROR_LINE + 40 for line in err.splitlines()), err
    for info, obj, _ in loaded:
        raw = encode_value(Resources._to_value(obj))
        value = _strict_loads(raw)
        assert value == decode_value(raw, "k")
        assert info.model.from_dict(value).dump() == value, value
    return loaded, errors


def cli_apply(text: str, *args: str) -> tuple[int, str]:
    """``tortie apply -f - ARGS`` in-process, with a datastore nobody listens on."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--etcd-endpoints", "http://127.0.0.1:9", "--etcd-timeout",
                                 "0.5", "apply", "-f", "-", *args], input=text)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"tortie apply raised {result.exception!r}:\n{result.output}") \
            from result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# --- the corpus itself ---------------------------------------------------------------------


def test_corpus_applies() -> None:
    for text in CORPUS:
        loaded, errors = apply_input(text)
        assert not errors and loaded, text


# --- the reproductions -------------------------------------------------------------


def test_alias_bomb_of_111111_documents_fails_before_expanding() -> None:
    bomb = ("- &a {apiVersion: projectcalico.org/v3, kind: GlobalNetworkSet, metadata: "
            "{name: x}, spec: {nets: [10.0.0.0/8]}}\n"
            + "".join(f"- &{b} [" + ", ".join([f"*{a}"] * 10) + "]\n"
                      for a, b in zip("abcde", "bcdef", strict=True)))
    assert len(bomb.splitlines()) == 6
    start = time.monotonic()
    with pytest.raises(LimitExceeded) as e:
        parse_text(bomb, SOURCE)
    assert time.monotonic() - start < 1
    assert "once YAML aliases are expanded" in str(e.value)
    assert "limits per command: 8 MiB of input, 10000 documents, 1000000 nodes" in str(e.value)
    assert LIMITS.describe() in str(e.value)


def test_billion_laughs_is_measured_not_expanded() -> None:
    text = "a: &a [" + ",".join(["lol"] * 10) + "]\n" + "".join(
        f"{b}: &{b} [" + ",".join([f"*{a}"] * 10) + "]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    start = time.monotonic()
    with pytest.raises(LimitExceeded, match="more than 1000000 nodes"):
        parse_text(text, SOURCE)
    assert time.monotonic() - start < 1


def test_document_count_is_limited() -> None:
    one = "- {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n"
    with pytest.raises(LimitExceeded, match=r"^<fuzz>:11: too large: more than 10 documents"):
        parse_text(one * 11, SOURCE, Budget(Limits(documents=10)))
    assert len(parse_text(one * 10, SOURCE, Budget(Limits(documents=10))).documents) == 10


def test_expanded_text_is_limited() -> None:
    text = "a: &a " + "x" * 100 + "\nb: [*a, *a, *a]\n"
    with pytest.raises(LimitExceeded, match="more than 300 bytes of text once YAML aliases"):
        parse_text(text, SOURCE, Budget(Limits(expanded_bytes=300)))


def test_input_size_is_limited_across_files(scratch_dir: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (scratch_dir / name).write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n"
                                        "  name: n" + name[0] + "\n")
    size = len((scratch_dir / "a.yaml").read_bytes())
    assert len(read_sources([str(scratch_dir)], Budget(Limits(input_bytes=2 * size)))
               .documents) == 2
    with pytest.raises(LimitExceeded, match=rf"b.yaml: too large: more than {2 * size - 1} "
                                            "bytes of input"):
        read_sources([str(scratch_dir)], Budget(Limits(input_bytes=2 * size - 1)))


@pytest.mark.parametrize("text, where, message", [
    (GNP.format("[" * 1000 + "]" * 1000), "<fuzz>:7:", "nested more than 64 levels deep"),
    ('{"kind": ' + "[" * 1000 + "]" * 1000 + "}", "<fuzz>:1:", "nested more than 64"),
    ('{"kind": ' + "[" * 100000 + "]" * 100000 + "}", "<fuzz>:1:", "nested more than 64"),
    ("a: &a [*a]\n", "<fuzz>:1:", "an alias refers to a node that contains it"),
    ("a: !!binary aGVsbG8=\n", "<fuzz>:1:", "'binary' values are not supported"),
    ("a: !!set {x, y}\n", "<fuzz>:1:", "'set' values are not supported"),
    ("a: !!omap [x: 1]\n", "<fuzz>:1:", "'omap' values are not supported"),
    ("a: !!int abc\n", "<fuzz>:1:", "'abc' is not an integer"),
    ("a: !!int ''\n", "<fuzz>:1:", "'' is not an integer"),
    ("a: !!float x\n", "<fuzz>:1:", "'x' is not a number"),
    ("a: !!python/object:os.system x\n", "<fuzz>:1:", "could not determine a constructor"),
])
def test_hostile_yaml_is_a_document_error(text: str, where: str, message: str) -> None:
    with pytest.raises(DocumentError) as e:
        parse_text(text, SOURCE)
    assert str(e.value).startswith(where) and message in str(e.value)


@pytest.mark.parametrize("order, message", [
    (".nan", "spec.order: .nan is not a finite number"),
    (".inf", "spec.order: .inf is not a finite number"),
    ("-.Inf", "spec.order: -.Inf is not a finite number"),
    ("1.0e+999", "spec.order: 1.0e+999 is not a finite number"),
    ("1e999", "spec.order: Input should be a finite number"),
    ("'nan'", "spec.order: Input should be a finite number"),
    (BIG_INT_TEXT, "spec.order: 999999999999... (5000 characters) is too long for a number "
                   "(at most 100 characters)"),
    ("0x" + "f" * 5000, "is too long for a number"),
    ("1:" * 3000 + "1", "is too long for a number"),
    ("[IPPool]", "spec.order: Input should be a valid number"),
])
def test_unstorable_orders_name_field_and_line(order: str, message: str) -> None:
    loaded, errors = apply_input(GNP.format(order))
    assert not loaded
    assert errors == [f"<fuzz>:7: GlobalNetworkPolicy(p) is invalid: {message}"] or \
        (len(errors) == 1 and message in errors[0] and errors[0].startswith("<fuzz>:7: "))


@pytest.mark.parametrize("text, message", [
    ('{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": '
     '{"name": "p"}, "spec": {"order": NaN}}', "spec.order: NaN is not a finite number"),
    ('{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": '
     '{"name": "p"}, "spec": {"order": -Infinity}}', "spec.order: -Infinity is not a finite"),
    ('{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": '
     '{"name": "p"}, "spec": {"order": 1e400}}', "spec.order: 1e400 is not a finite number"),
    ('{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": '
     '{"name": "p"}, "spec": {"order": ' + BIG_INT_TEXT + "}}", "too long for a number"),
    ('{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, '
     '"status": {"x": [NaN]}}', "status.x[0]: NaN is not a finite number"),
])
def test_unstorable_json_numbers(text: str, message: str) -> None:
    loaded, errors = apply_input(text)
    assert not loaded and len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("kind, message", [
    ("[IPPool]", "kind: must be a string, not a list"),
    ("{a: b}", "kind: must be a string, not a mapping"),
    ("7", "kind: must be a string, not a number"),
    ("", "kind: required field is missing"),
])
def test_kind_of_the_wrong_type(kind: str, message: str) -> None:
    loaded, errors = apply_input(f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n"
                                 "  name: x\n")
    assert not loaded and len(errors) == 1 and message in errors[0], errors
    loaded, errors = apply_input(f"apiVersion: {kind or '[]'}\nkind: IPPool\nmetadata:\n"
                                 "  name: x\nspec: {cidr: 10.0.0.0/16}\n")
    assert not loaded and len(errors) == 1 and "apiVersion" in errors[0], errors


def test_v1_documents_of_the_wrong_shape() -> None:
    for text in ("apiVersion: v1\nkind: policy\nmetadata: [a]\n",
                 "apiVersion: v1\nkind: profile\nmetadata: {name: x, tags: 3}\n",
                 "apiVersion: v1\nkind: profile\nmetadata: {name: x, labels: [a]}\n",
                 "apiVersion: v1\nkind: policy\nmetadata: {name: x}\nspec: "
                 "{ingress: [{action: allow, source: {net: 10.0.0.0/8, nets: x}}]}\n",
                 "apiVersion: v1\nkind: hostEndpoint\nmetadata: {name: x}\nspec: 7\n",
                 "apiVersion: v1\nkind: ipPool\nmetadata: {}\n"):
        loaded, errors = apply_input(text)
        assert not loaded and len(errors) == 1, (text, errors)


def test_list_kind_with_items_of_the_wrong_type() -> None:
    for items in ("7", "abc", "{a: b}", "[7, null]"):
        loaded, errors = apply_input(f"apiVersion: projectcalico.org/v3\nkind: IPPoolList\n"
                                     f"items: {items}\n")
        assert not loaded and errors, items


def test_same_resource_twice_is_an_error() -> None:
    text = CORPUS[0] + "---\n" + CORPUS[1] + "---\n" + CORPUS[0]
    _, errors = apply_input(text)
    assert errors == ["<fuzz>:39: IPPool(pool-a) is given twice (first at <fuzz>:1); give "
                      "each resource once"]


def test_huge_field_is_quoted_shortly() -> None:
    loaded, errors = apply_input("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "
                                 + "X" * 1_000_000 + "\n")
    assert not loaded and len(errors) == 1
    assert len(errors[0]) < MAX_ERROR_LINE + 100 and "more characters" in errors[0]


def test_patch_json_is_bounded() -> None:
    with pytest.raises(DocumentError, match="nested more than 64 levels deep"):
        load_json("[" * 5000 + "]" * 5000, "--patch")
    data = load_json('{"spec": {"order": NaN, "x": ' + BIG_INT_TEXT + "}}", "--patch")
    with pytest.raises(ResourceInvalid) as e:
        to_resource({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                     "metadata": {"name": "p"}, **data})
    assert e.value.errors[0] == "spec.order: NaN is not a finite number (JSON has no NaN or " \
        "infinity)"
    assert "spec.x: 999999999999... (5000 characters) is too long" in e.value.errors[1]


def test_timestamps_stay_strings() -> None:
    loaded, errors = apply_input("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n"
                                 "  creationTimestamp: 2024-01-02T03:04:05Z\n"
                                 "  labels: {since: 2024-01-02}\n")
    assert not errors
    assert loaded[0][1].metadata.labels == {"since": "2024-01-02"}


@pytest.mark.parametrize("text, message", [
    (GNP.format(".nan"), "<stdin>:7: GlobalNetworkPolicy(p) is invalid: spec.order: .nan is "
                         "not a finite number"),
    (GNP.format(BIG_INT_TEXT), "<stdin>:7: GlobalNetworkPolicy(p) is invalid: spec.order: "
                               "999999999999... (5000 characters) is too long"),
    (GNP.format("[" * 1000 + "]" * 1000), "<stdin>:7:72: YAML error: nested more than 64"),
    ("apiVersion: projectcalico.org/v3\nkind: [IPPool]\nmetadata:\n  name: x\n",
     "<stdin>:2: document 'x' is invalid: kind: must be a string, not a list"),
    ("- &a [*a]\n", "<stdin>:1: YAML error: an alias refers to a node that contains it"),
])
def test_cli_apply_names_line_and_field(text: str, message: str) -> None:
    code, output = cli_apply(text)
    assert code == 1
    assert message in output and "nothing was written" in output, output


# --- properties ------------------------------------------------------------------------------


@FUZZ
@given(mutated_data(), st.sampled_from(["block", "flow", "json"]))
def test_mutated_documents_never_raise(data: Any, how: str) -> None:
    apply_input(render(data, how))


@FUZZ
@given(mutated_text())
def test_mutated_text_never_raises(text: str) -> None:
    apply_input(text)


@FUZZ
@given(VALUES, st.sampled_from(["block", "flow", "json"]))
def test_random_values_never_raise(data: Any, how: str) -> None:
    apply_input(render(data, how))


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(st.lists(mutated_data(), min_size=1, max_size=4),
       st.sampled_from(["stream", "list", "List"]))
def test_mutated_batches_never_raise(docs: list[Any], shape: str) -> None:
    if shape == "stream":
        text = "---\n".join(render(d, "block") for d in docs)
    elif shape == "list":
        text = render(docs, "block")
    else:
        text = render({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicyList",
                       "items": docs}, "block")
    apply_input(text)


#: Smaller limits than LIMITS keep each example quick (a bomb just under the real limits
#: is 10 000 documents to validate, seconds); the default limits are tested above.
BOMB_LIMITS = Limits(documents=300, nodes=20_000)


@FUZZ
@given(alias_bombs())
def test_alias_expansion_is_bounded(text: str) -> None:
    budget = Budget(BOMB_LIMITS)
    loaded, errors = apply_input(text, budget)
    expanded = _expanded_nodes(yaml.compose(text))
    if expanded > BOMB_LIMITS.nodes:
        assert errors and "once YAML aliases are expanded" in errors[0], errors
    if not errors or "too large" not in errors[0]:
        assert budget.nodes == expanded <= BOMB_LIMITS.nodes
        assert budget.documents <= BOMB_LIMITS.documents
    assert len(loaded) <= BOMB_LIMITS.documents


def _expanded_nodes(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    memo = {} if memo is None else memo
    if id(node) not in memo:
        if isinstance(node, yaml.ScalarNode):
            memo[id(node)] = 1
        elif isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded_nodes(n, memo) for n in node.value)
        else:
            memo[id(node)] = 1 + sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo)
                                     for k, v in node.value)
    return memo[id(node)]


@FUZZ
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=8), st.integers(min_value=10, max_value=400),
       st.integers(min_value=3, max_value=12))
def test_limits_hold_for_any_input(texts: list[str], documents: int, nodes: int,
                                   depth: int) -> None:
    limits = Limits(documents=documents, nodes=nodes, depth=depth)
    budget = Budget(limits)
    text = "---\n".join(texts)
    _, errors = apply_input(text, budget)
    if not any("too large" in e or "nested more than" in e for e in errors):
        assert budget.documents <= documents and budget.nodes <= nodes


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 5))
@given(st.one_of(mutated_text(), mutated_data().map(lambda d: render(d, "block"))))
def test_cli_apply_never_raises(text: str) -> None:
    code, output = cli_apply(text)
    if code != 0:
        assert output.startswith(("error: ", "note: ")), output
    assert code == 1, output  # no datastore listens: nothing can succeed


def test_cli_shows_at_most_50_errors() -> None:
    text = ("- &a {apiVersion: v1, kind: Namespace, metadata: {name: Bad_Name}}\n"
            "- [" + ", ".join(["*a"] * 99) + "]\n")
    code, output = cli_apply(text)
    assert code == 1 and output.count("invalid name 'Bad_Name'") == 50
    assert output.rstrip().endswith("... and 50 more"), output[-300:]
