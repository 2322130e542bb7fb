"""The Calico selector language (datastore.selector): parsing, evaluation, canonical form and
the conversion of Kubernetes label selectors."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from datastore.selector import Selector, SelectorError, from_k8s_label_selector, parse

Labels = dict[str, str]

# --- evaluation ---------------------------------------------------------------------------------

# (selector, labels, expected): every operator, absent labels, key shapes, quoting, precedence,
# grouping, negation and whitespace. Absent-label results follow libcalico-go exactly.
EVAL_CASES: list[tuple[str, Labels, bool]] = [
    # all(), empty, global()
    ("all()", {}, True),
    ("all()", {"a": "b"}, True),
    ("all( )", {}, True),
    ("", {}, True),
    ("   ", {"a": "b"}, True),
    ("\t ", {}, True),
    ("global()", {"a": "b"}, True),
    ("global( )", {}, True),
    ("!all()", {}, False),
    ("!global()", {"a": "b"}, False),
    ("global() && has(a)", {}, False),
    # has()
    ("has(a)", {"a": "x"}, True),
    ("has(a)", {"a": ""}, True),
    ("has(a)", {"b": "x"}, False),
    ("!has(a)", {"b": "x"}, True),
    ("!has(a)", {"a": "x"}, False),
    ("has( a )", {"a": "1"}, True),
    ("has(node-role.kubernetes.io/master)", {"node-role.kubernetes.io/master": ""}, True),
    ("has(node-role.kubernetes.io/master)", {"node-role.kubernetes.io/worker": ""}, False),
    # ==
    ('a == "b"', {"a": "b"}, True),
    ('a == "b"', {"a": "c"}, False),
    ('a == "b"', {}, False),
    ("a == 'b'", {"a": "b"}, True),
    ('a==""', {"a": ""}, True),
    ('a == ""', {}, False),
    ('a == "B"', {"a": "b"}, False),
    ('projectcalico.org/namespace == "default"', {"projectcalico.org/namespace": "default"}, True),
    ('app.kubernetes.io/name == "web"', {"app.kubernetes.io/name": "api"}, False),
    # !=  (an absent label is "not equal")
    ('a != "b"', {"a": "c"}, True),
    ('a != "b"', {"a": "b"}, False),
    ('a != "b"', {}, True),
    ("a!='b'", {"a": "b"}, False),
    # in
    ('k in {"a", "b"}', {"k": "b"}, True),
    ('k in {"a", "b"}', {"k": "c"}, False),
    ('k in {"a", "b"}', {}, False),
    ("k in {}", {"k": "a"}, False),
    ("k in {}", {}, False),
    ("k in {''}", {"k": ""}, True),
    ('k in {"a",}', {"k": "a"}, True),
    ("k in{'a','b'}", {"k": "a"}, True),
    # not in  (an absent label is "not in" any set)
    ('k not in {"a", "b"}', {"k": "c"}, True),
    ('k not in {"a","b"}', {"k": "a"}, False),
    ('k not in {"a"}', {}, True),
    ("k not in {}", {}, True),
    ("k not in {}", {"k": "x"}, True),
    ('k notin {"a"}', {"k": "b"}, True),
    # contains / starts with / ends with  (false when absent)
    ('k contains "ell"', {"k": "hello"}, True),
    ('k contains "xyz"', {"k": "hello"}, False),
    ('k contains ""', {"k": "x"}, True),
    ('k contains ""', {}, False),
    ('k starts with "he"', {"k": "hello"}, True),
    ("k starts with 'lo'", {"k": "hello"}, False),
    ('k starts with "he"', {}, False),
    ('k starts\twith "he"', {"k": "hex"}, True),
    ('k ends with "lo"', {"k": "hello"}, True),
    ('k ends with "he"', {"k": "hello"}, False),
    ('k ends with "lo"', {}, False),
    # && and ||
    ("has(a) && has(b)", {"a": "1", "b": "2"}, True),
    ("has(a) && has(b)", {"a": "1"}, False),
    ("has(a) || has(b)", {"b": "1"}, True),
    ("has(a) || has(b)", {}, False),
    ('a == "1" && b == "2" && c == "3"', {"a": "1", "b": "2", "c": "3"}, True),
    ('a == "1" && b == "2" && c == "3" && d == "4"', {"a": "1", "b": "2", "c": "3"}, False),
    ('a == "1" && b == "2" && c == "3" && d == "4"', dict.fromkeys("abcd", "1"), False),
    ('a == "1" && b == "1" && c == "1" && d == "1"', dict.fromkeys("abcd", "1"), True),
    ('a == "1" || b == "2" || c == "3" || d == "4"', {"d": "4"}, True),
    ('a == "1" || b == "2" || c == "3"', {}, False),
    # precedence: ! over && over ||
    ("has(a) || has(b) && has(c)", {"a": "1"}, True),
    ("has(a) || has(b) && has(c)", {"b": "1"}, False),
    ("(has(a) || has(b)) && has(c)", {"a": "1"}, False),
    ("has(c) && has(b) || has(a)", {"a": "1"}, True),
    ("!has(a) && has(b)", {}, False),
    ("!has(a) || has(b)", {"a": "1", "b": "1"}, True),
    ('!a == "x"', {"a": "x"}, False),
    ('!a == "x"', {}, True),
    # parentheses and negated groups
    ("!(has(a) && has(b))", {"a": "1"}, True),
    ("!(has(a) || has(b))", {"b": "1"}, False),
    ('!(a == "x")', {}, True),
    ("!!has(a)", {"a": "1"}, True),
    ("!(!has(a))", {}, False),
    ("((has(a)))", {"a": "1"}, True),
    ('((has(a) || (has(b) && !has(c))) && d != "x")', {"b": "1", "d": "y"}, True),
    ('((has(a) || (has(b) && !has(c))) && d != "x")', {"b": "1", "c": "1"}, False),
    ('!(k in {"a"} || k starts with "b")', {"k": "c"}, True),
    # whitespace
    ('  a=="b"&&has(c)  ', {"a": "b", "c": ""}, True),
    ('\ta\t==\t"b"', {"a": "b"}, True),
    ("(  has(a)||has(b) )", {"b": "1"}, True),
    ('! has(a)&&!  ( b  ==  "c" )', {"b": "d"}, True),
    # keys that look like keywords, and key characters
    ('in in {"a"}', {"in": "a"}, True),
    ('not in {"a"}', {"not": "a"}, True),
    ("has(has)", {"has": "x"}, True),
    ('all == "x"', {"all": "x"}, True),
    ('contains contains "x"', {"contains": "xyz"}, True),
    ('my_key-1.x/y == "v"', {"my_key-1.x/y": "v"}, True),
    ('1abc == "2"', {"1abc": "2"}, True),
    # values holding quotes and operator characters
    ("a == 'say \"hi\"'", {"a": 'say "hi"'}, True),
    ('a == "it\'s"', {"a": "it's"}, True),
    ('a == "x && y || (z)"', {"a": "x && y || (z)"}, True),
    ('a == "é"', {"a": "é"}, True),
]

VALID_SELECTORS = sorted({sel for sel, _, _ in EVAL_CASES})


@pytest.mark.parametrize(("selector", "labels", "expected"), EVAL_CASES)
def test_evaluate(selector: str, labels: Labels, expected: bool) -> None:
    sel = parse(selector)
    assert sel.evaluate(labels) is expected
    assert sel.matcher(labels) is expected
    # and the canonical form means the same thing
    assert parse(str(sel)).evaluate(labels) is expected


def test_evaluate_accepts_any_mapping() -> None:
    class Frozen(Mapping[str, str]):
        def __init__(self, data: Labels) -> None:
            self._data = data

        def __getitem__(self, key: str) -> str:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    sel = parse('a == "b" && has(c) && d not in {"x"}')
    assert sel.evaluate(Frozen({"a": "b", "c": ""}))
    assert not sel.evaluate(Frozen({"a": "b", "c": "", "d": "x"}))


# --- parse errors -------------------------------------------------------------------------------

# (selector, position): the 0-based offset where parsing must fail.
ERROR_CASES: list[tuple[str, int]] = [
    ("a == ", 5),  # missing value
    ("a ==", 4),
    ('a == "b', 5),  # unterminated quote: reported at the opening quote
    ("a == 'b", 5),
    ("a == \"b'", 5),  # quotes do not mix
    ('== "a"', 0),  # '==' without a key
    ('!= "a"', 0),  # '!=' where an operand belongs
    ('(a == "b"', 9),  # unbalanced parentheses
    ('((a == "b")', 11),
    ('a == "b")', 8),
    ("()", 1),
    ('a == "b" && (c == "d" || )', 25),
    ('a == "b" junk', 9),  # trailing garbage
    ('a == "b"c == "d"', 8),
    ("k in {a}", 6),  # unquoted set member
    ('k in "a"', 5),
    ('k in {"a"', 9),
    ('k in {"a" "b"}', 10),
    ('k in {"a",,}', 10),
    ("k in {,}", 6),
    ("has()", 4),  # empty has()
    ("has(a", 5),
    ("has(a b)", 6),
    ("all(x)", 4),
    ("global(", 7),
    ("has(a) &&", 9),  # '&&' at the end
    ('a == "b" || !', 13),
    ('a == "b" && && c == "d"', 12),
    ('a == "b" and c == "d"', 9),  # 'and' / 'or' are not operators
    ("has(a) or has(b)", 7),
    ("has(a) and has(b)", 7),
    ('a and b == "c"', 2),
    ('a = "b"', 2),  # bad characters and single-character operators
    ('a == "b" & c == "d"', 9),
    ('a == "b" | c == "d"', 9),
    ('$a == "b"', 0),
    ('é == "a"', 0),
    ('a == "b" # comment', 9),
    ("a == b", 5),  # unquoted value
    ("k contains 1", 11),
    ("a", 1),  # a key alone
    ('ab c == "d"', 3),
    ("!", 1),
    ("k not {'a'}", 6),
    ('k starts "x"', 9),
    ('a ends "x"', 7),
    ("a starts with", 13),
    ('a == "b"\n', 8),  # only spaces and tabs separate tokens, as in Calico
    ('\na == "b"', 0),
    ("has (a)", 4),
]


@pytest.mark.parametrize(("selector", "position"), ERROR_CASES)
def test_parse_error_position(selector: str, position: int) -> None:
    with pytest.raises(SelectorError) as info:
        parse(selector)
    err = info.value
    assert err.position == position, str(err)
    assert err.selector == selector
    assert f"invalid at position {position}: " in str(err)
    assert err.reason in str(err)
    assert err.reason.startswith(("expected ", "unterminated "))


def test_error_message_format() -> None:
    with pytest.raises(SelectorError) as info:
        parse("a == ")
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err) == (
        'selector "a == " invalid at position 5: expected a quoted value, found end of selector'
    )
    assert err.reason == "expected a quoted value, found end of selector"


@pytest.mark.parametrize(
    ("selector", "fragments"),
    [
        ('a == "b', ["unterminated", 'closing "']),
        ('a == "b" and c == "d"', ["expected '&&', '||' or end of selector", "'and'", "'&&'"]),
        ("has(a) or has(b)", ["'or'", "'||'"]),
        ("k in {a}", ["expected a quoted value", "found 'a'"]),
        ('== "a"', ["expected a label key", "found '=='"]),
        ('a = "b"', ["expected an operator", "found '='"]),
        ('(a == "b"', ["')'", "found end of selector"]),
        ('a == "b"\n', ["'\\n'", "spaces and tabs"]),
    ],
)
def test_error_reason_says_what_was_expected_and_found(selector: str, fragments: list[str]) -> None:
    with pytest.raises(SelectorError) as info:
        parse(selector)
    for fragment in fragments:
        assert fragment in info.value.reason


def test_selector_error_pickles() -> None:
    with pytest.raises(SelectorError) as info:
        parse("has(")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.selector, copy.position, copy.reason, str(copy)) == (
        info.value.selector,
        info.value.position,
        info.value.reason,
        str(info.value),
    )


# --- canonical form, equality, immutability -----------------------------------------------------


@pytest.mark.parametrize("selector", VALID_SELECTORS)
def test_round_trip(selector: str) -> None:
    sel = parse(selector)
    again = parse(str(sel))
    assert again == sel
    assert str(again) == str(sel)
    assert hash(again) == hash(sel)
    assert again.labels_used() == sel.labels_used()


@pytest.mark.parametrize(
    ("selector", "canonical"),
    [
        ('has(a)&&b=="c"', 'has(a) && b == "c"'),
        ("a == 'b'", 'a == "b"'),
        ("a == 'x\"y'", "a == 'x\"y'"),
        ('k in {"b","a","b"}', 'k in {"a", "b"}'),
        ("k not in {}", "k not in {}"),
        ('k notin {"a",}', 'k not in {"a"}'),
        ('k startswith "x"', 'k starts with "x"'),
        ("k ends   with 'x'", 'k ends with "x"'),
        ("", "all()"),
        ("  ", "all()"),
        ("all( )", "all()"),
        ("global( )", "global()"),
        ("has( a )", "has(a)"),
        ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
        ("has(a) || (has(b) || has(c))", "has(a) || has(b) || has(c)"),
        ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
        ("has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"),
        ("(has(a) && has(b)) || has(c)", "has(a) && has(b) || has(c)"),
        ("!(has(a))", "!has(a)"),
        ("!!has(a)", "has(a)"),
        ("!(!has(a))", "has(a)"),
        ('!a=="b"', '!(a == "b")'),
        ("!(has(a) && has(b))", "!(has(a) && has(b))"),
        ("!(has(a)||has(b))&&has(c)", "!(has(a) || has(b)) && has(c)"),
    ],
)
def test_canonical_form(selector: str, canonical: str) -> None:
    sel = parse(selector)
    assert str(sel) == canonical
    assert sel.source == selector


def test_equality_and_hash() -> None:
    assert parse('a=="b"') == parse("a == 'b'")
    assert hash(parse('a=="b"')) == hash(parse("a == 'b'"))
    assert parse("") == parse("all()")
    assert parse('k in {"a", "b"}') == parse("k in {'b','a'}")
    assert parse("has(a)") != parse("has(b)")
    assert parse("all()") != parse("global()")
    assert parse("has(a)") != "has(a)"
    assert len({parse("has(a)"), parse("has( a )"), parse("has(b)")}) == 2
    assert repr(parse("has( a )")) == "Selector('has(a)')"


def test_parse_is_cached_and_selector_is_immutable() -> None:
    sel = parse('a == "cached"')
    assert parse('a == "cached"') is sel
    assert Selector('a == "cached"') == sel
    with pytest.raises(AttributeError):
        sel.source = "x"
    with pytest.raises(AttributeError):
        del sel.source
    with pytest.raises(AttributeError):
        sel.extra = 1
    assert pickle.loads(pickle.dumps(sel)) == sel


def test_non_string_is_rejected() -> None:
    with pytest.raises(TypeError):
        Selector(None)


@pytest.mark.parametrize(
    ("selector", "keys"),
    [
        ("all()", set()),
        ("", set()),
        ("global()", set()),
        ("has(a)", {"a"}),
        ('!has(a) && b == "c" || d in {"e"}', {"a", "b", "d"}),
        ('x != "1" && (y contains "2" || z starts with "3") && !(w ends with "4")', set("xyzw")),
        ('k not in {} && k == "v"', {"k"}),
        ("has(projectcalico.org/namespace)", {"projectcalico.org/namespace"}),
    ],
)
def test_labels_used(selector: str, keys: set[str]) -> None:
    used = parse(selector).labels_used()
    assert isinstance(used, frozenset)
    assert used == keys


# --- Kubernetes label selectors -----------------------------------------------------------------

K8S_CONVERSIONS: list[tuple[dict[str, Any] | None, str]] = [
    (None, "all()"),
    ({}, "all()"),
    ({"matchLabels": {}}, "all()"),
    ({"matchExpressions": []}, "all()"),
    ({"matchLabels": None, "matchExpressions": None}, "all()"),
    ({"matchLabels": {"b": "2", "a": "1"}}, 'a == "1" && b == "2"'),
    ({"matchLabels": {"app.kubernetes.io/name": "web"}}, 'app.kubernetes.io/name == "web"'),
    ({"matchLabels": {"role": ""}}, 'role == ""'),
    (
        {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
        'env in {"dev", "prod"}',
    ),
    (
        {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
        'env not in {"prod"}',
    ),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "has(app)"),
    ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": []}]}, "has(app)"),
    ({"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}, "!has(legacy)"),
    (
        {
            "matchLabels": {"tier": "api", "app": "web"},
            "matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["b", "a"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "In", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
            ],
        },
        'app == "web" && tier == "api" && zone not in {"a", "b"} && !has(canary)'
        ' && env in {"prod"} && has(team)',
    ),
]


@pytest.mark.parametrize(("k8s", "expected"), K8S_CONVERSIONS)
def test_from_k8s_label_selector(k8s: dict[str, Any] | None, expected: str) -> None:
    out = from_k8s_label_selector(k8s)
    assert out == expected
    assert str(parse(out)) == out  # already canonical


K8S_ERRORS: list[tuple[Any, str]] = [
    ({"matchLabel": {"a": "b"}}, 'unknown field "matchLabel"'),
    (
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        "matchExpressions[0].values: must be specified when operator is In",
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
        "matchExpressions[0].values: must be specified when operator is NotIn",
    ),
    (
        {
            "matchExpressions": [
                {"key": "a", "operator": "Exists"},
                {"key": "b", "operator": "Exists", "values": ["x"]},
            ]
        },
        "matchExpressions[1].values: may not be specified when operator is Exists",
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
        "matchExpressions[0].values: may not be specified when operator is DoesNotExist",
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "Foo", "values": ["x"]}]},
        'matchExpressions[0].operator: unsupported value "Foo": supported values are '
        "In, NotIn, Exists, DoesNotExist",
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
        'matchExpressions[0].operator: unsupported value "in"',
    ),
    (
        {"matchExpressions": [{"key": "a"}]},
        "matchExpressions[0].operator: required field is missing",
    ),
    (
        {"matchExpressions": [{"operator": "Exists"}]},
        "matchExpressions[0].key: required field is missing",
    ),
    (
        {"matchExpressions": [{"key": "-bad", "operator": "Exists"}]},
        'matchExpressions[0].key: invalid key "-bad": name part must consist of',
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "bad value"]}]},
        'matchExpressions[0].values: invalid value "bad value": a valid label must be',
    ),
    (
        {"matchExpressions": [{"key": "a", "operator": "Exists", "value": ["x"]}]},
        'matchExpressions[0]: unknown field "value"',
    ),
    ({"matchExpressions": {"key": "a"}}, "matchExpressions: must be a list"),
    ({"matchExpressions": ["a"]}, "matchExpressions[0]: must be a mapping"),
    ({"matchLabels": {"a b": "c"}}, 'matchLabels: invalid key "a b"'),
    ({"matchLabels": {"a": "-c"}}, 'matchLabels: invalid value "-c" for key "a"'),
    ({"matchLabels": ["a"]}, "matchLabels: must be a mapping"),
    ("app=web", "must be a mapping"),
]


@pytest.mark.parametrize(("k8s", "message"), K8S_ERRORS)
def test_from_k8s_label_selector_errors(k8s: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        from_k8s_label_selector(k8s)
    assert message in str(info.value)
    assert not isinstance(info.value, SelectorError)


def k8s_matches(selector: Mapping[str, Any], labels: Labels) -> bool:
    """Reference Kubernetes LabelSelector semantics, written independently of the converter."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if key not in labels or labels[key] != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        present = key in labels
        if op == "In":
            ok = present and labels[key] in values
        elif op == "NotIn":
            ok = not present or labels[key] not in values
        elif op == "Exists":
            ok = present
        elif op == "DoesNotExist":
            ok = not present
        else:
            raise AssertionError(op)
        if not ok:
            return False
    return True


EQUIVALENCE_SELECTORS: list[dict[str, Any]] = [
    {},
    {"matchLabels": {"app": "web"}},
    {"matchLabels": {"app": "web", "tier": ""}},
    {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
    {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
    {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
    {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
    {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "env", "operator": "NotIn", "values": ["dev", "test"]},
            {"key": "tier", "operator": "DoesNotExist"},
        ],
    },
    {
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
        ]
    },
    {
        "matchLabels": {"example.com/team": "net"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}],
    },
]

EQUIVALENCE_LABELS: list[Labels] = [
    {},
    {"app": "web"},
    {"app": "api"},
    {"app": "web", "tier": ""},
    {"app": "web", "tier": "db"},
    {"env": "prod"},
    {"env": "dev", "app": "web"},
    {"env": "test", "app": "web", "tier": "x"},
    {"env": "staging", "app": "web"},
    {"example.com/team": "net", "app": "api"},
    {"example.com/team": "ops", "app": "web"},
]


@pytest.mark.parametrize("k8s", EQUIVALENCE_SELECTORS)
def test_k8s_conversion_is_equivalent(k8s: dict[str, Any]) -> None:
    calico = parse(from_k8s_label_selector(k8s))
    for labels in EQUIVALENCE_LABELS:
        assert calico.evaluate(labels) == k8s_matches(k8s, labels), (k8s, labels, str(calico))


def test_equivalence_data_exercises_both_outcomes() -> None:
    results = {
        k8s_matches(sel, labels)
        for sel, labels in itertools.product(EQUIVALENCE_SELECTORS[1:], EQUIVALENCE_LABELS)
    }
    assert results == {True, False}


def test_table_sizes() -> None:
    assert len(EVAL_CASES) >= 55
    assert len(ERROR_CASES) >= 25
    assert len(EVAL_CASES) + len(ERROR_CASES) >= 80
