"""The Calico selector language: parsing, canonical form and fast evaluation.

Grammar (as libcalico-go's selector parser accepts it)::

    selector  := <empty> | or
    or        := and ('||' and)*
    and       := unary ('&&' unary)*
    unary     := '!' unary | primary
    primary   := '(' or ')' | 'all()' | 'global()' | 'has(' key ')' | key operation
    operation := '==' str | '!=' str | 'in' set | 'not in' set
               | 'contains' str | 'starts with' str | 'ends with' str
    set       := '{' [str (',' str)*] '}'
    str       := '"' <no double quote>* '"' | "'" <no single quote>* "'"
    key       := [a-zA-Z0-9_./-]+

Spaces and tabs (only those, as in Calico) may separate any two tokens. Operator words are
matched as prefixes after a key, as Calico's tokenizer does (``k notin {}`` and
``k startswith "x"`` are accepted), and a set may end with a comma. ``!`` binds tightest, then
``&&``, then ``||``, and a run of ``!`` collapses; the words ``and``/``or`` are not operators.
A label that is absent makes ``==``, ``in``, ``contains``, ``starts with`` and ``ends with``
false, and ``!=`` and ``not in`` true.

A parsed :class:`Selector` is compiled once into nested closures, so ``evaluate`` walks no
tree and runs no regular expression. :func:`parse` caches selectors by their text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from datastore.labels import validate_label_key, validate_label_value, validate_labels

__all__ = [
    "Selector",
    "SelectorError",
    "from_k8s_label_selector",
    "parse",
]

Matcher = Callable[[Mapping[str, str]], bool]

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_QUOTES = "\"'"
_WHITESPACE = " \t"  # as Calico's tokenizer: no newlines or other space characters
_EXPECTED_OPERAND = "a label key, '!', '(', 'has(', 'all()' or 'global()'"
_EXPECTED_OPERATOR = (
    "an operator ('==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with')"
)
_WORD_HINTS = {"and": "use '&&' for and", "or": "use '||' for or"}


class SelectorError(ValueError):
    """A selector that does not parse.

    ``position`` is the 0-based character offset in ``selector`` (the original text) where
    parsing failed; ``reason`` says what was expected there and what was found.
    """

    def __init__(self, selector: str, position: int, reason: str) -> None:
        self.selector = selector
        self.position = position
        self.reason = reason
        super().__init__(
            f"selector {json.dumps(selector, ensure_ascii=False)} invalid at position "
            f"{position}: {reason}"
        )

    def __reduce__(self) -> tuple[type[SelectorError], tuple[str, int, str]]:
        return (type(self), (self.selector, self.position, self.reason))


# --- syntax tree --------------------------------------------------------------------------------
# Nodes exist only while a selector is built: each renders its canonical text, lists the label
# keys it reads and compiles itself into a closure. Precedence: 0 for '||', 1 for '&&', 2 for
# everything that needs no parentheses.


def _quote(value: str) -> str:
    """Quote a value for selector text: double quotes unless the value holds one."""
    return f"'{value}'" if '"' in value else f'"{value}"'


class _Node:
    __slots__ = ()
    precedence = 2

    def text(self) -> str:
        raise NotImplementedError

    def keys(self, into: set[str]) -> None:
        """Add the label keys this node reads to ``into``."""

    def compile(self) -> Matcher:
        raise NotImplementedError

    def text_at(self, precedence: int) -> str:
        """The text, parenthesised if it binds more loosely than ``precedence``."""
        text = self.text()
        return f"({text})" if self.precedence < precedence else text


def _true(labels: Mapping[str, str]) -> bool:
    return True


class _All(_Node):
    __slots__ = ()

    def text(self) -> str:
        return "all()"

    def compile(self) -> Matcher:
        return _true


class _Global(_Node):
    """Calico's ``global()``: for plain label evaluation it matches everything."""

    __slots__ = ()

    def text(self) -> str:
        return "global()"

    def compile(self) -> Matcher:
        return _true


class _Has(_Node):
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def text(self) -> str:
        return f"has({self.key})"

    def keys(self, into: set[str]) -> None:
        into.add(self.key)

    def compile(self) -> Matcher:
        key = self.key

        def has(labels: Mapping[str, str]) -> bool:
            return key in labels

        return has


class _Compare(_Node):
    """``key <op> "value"`` for ==, !=, contains, starts with and ends with."""

    __slots__ = ("key", "op", "value")

    def __init__(self, key: str, op: str, value: str) -> None:
        self.key = key
        self.op = op
        self.value = value

    def text(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"

    def keys(self, into: set[str]) -> None:
        into.add(self.key)

    def compile(self) -> Matcher:
        key, value = self.key, self.value
        if self.op == "==":

            def eq(labels: Mapping[str, str]) -> bool:
                return labels.get(key) == value

            return eq
        if self.op == "!=":

            def ne(labels: Mapping[str, str]) -> bool:
                return labels.get(key) != value  # an absent label is "not equal"

            return ne
        if self.op == "contains":

            def contains(labels: Mapping[str, str]) -> bool:
                got = labels.get(key)
                return got is not None and value in got

            return contains
        if self.op == "starts with":

            def starts_with(labels: Mapping[str, str]) -> bool:
                got = labels.get(key)
                return got is not None and got.startswith(value)

            return starts_with
        if self.op == "ends with":

            def ends_with(labels: Mapping[str, str]) -> bool:
                got = labels.get(key)
                return got is not None and got.endswith(value)

            return ends_with
        raise AssertionError(f"unknown operator {self.op!r}")


class _InSet(_Node):
    """``key in {...}`` or ``key not in {...}``; the set is kept sorted and unique."""

    __slots__ = ("key", "negated", "values")

    def __init__(self, key: str, values: Sequence[str], negated: bool) -> None:
        self.key = key
        self.values = tuple(sorted(set(values)))
        self.negated = negated

    def text(self) -> str:
        op = "not in" if self.negated else "in"
        return f"{self.key} {op} {{{', '.join(_quote(v) for v in self.values)}}}"

    def keys(self, into: set[str]) -> None:
        into.add(self.key)

    def compile(self) -> Matcher:
        key, values = self.key, frozenset(self.values)
        if self.negated:

            def not_in(labels: Mapping[str, str]) -> bool:
                return labels.get(key) not in values  # None (absent) is in no set

            return not_in

        def in_(labels: Mapping[str, str]) -> bool:
            return labels.get(key) in values

        return in_


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node) -> None:
        self.operand = operand

    def text(self) -> str:
        operand = self.operand
        if isinstance(operand, (_Has, _All, _Global, _Not)):
            return "!" + operand.text()
        return f"!({operand.text()})"  # '!(a == "b")' reads better than '!a == "b"'

    def keys(self, into: set[str]) -> None:
        self.operand.keys(into)

    def compile(self) -> Matcher:
        inner = self.operand.compile()

        def not_(labels: Mapping[str, str]) -> bool:
            return not inner(labels)

        return not_


class _And(_Node):
    __slots__ = ("operands",)
    precedence = 1
    separator = " && "

    def __init__(self, operands: Sequence[_Node]) -> None:
        flat: list[_Node] = []
        for op in operands:  # '&&' and '||' are associative: one canonical shape
            flat.extend(op.operands if type(op) is type(self) else (op,))
        self.operands = tuple(flat)

    @classmethod
    def of(cls, operands: list[_Node]) -> _Node:
        return operands[0] if len(operands) == 1 else cls(operands)

    def text(self) -> str:
        return self.separator.join(op.text_at(self.precedence + 1) for op in self.operands)

    def keys(self, into: set[str]) -> None:
        for op in self.operands:
            op.keys(into)

    def compile(self) -> Matcher:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            a, b = fns

            def and2(labels: Mapping[str, str]) -> bool:
                return a(labels) and b(labels)

            return and2
        if len(fns) == 3:
            a, b, c = fns

            def and3(labels: Mapping[str, str]) -> bool:
                return a(labels) and b(labels) and c(labels)

            return and3

        def and_n(labels: Mapping[str, str]) -> bool:
            for fn in fns:  # noqa: SIM110 - a plain loop beats all() over a generator
                if not fn(labels):
                    return False
            return True

        return and_n


class _Or(_And):
    __slots__ = ()
    precedence = 0
    separator = " || "

    def compile(self) -> Matcher:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            a, b = fns

            def or2(labels: Mapping[str, str]) -> bool:
                return a(labels) or b(labels)

            return or2
        if len(fns) == 3:
            a, b, c = fns

            def or3(labels: Mapping[str, str]) -> bool:
                return a(labels) or b(labels) or c(labels)

            return or3

        def or_n(labels: Mapping[str, str]) -> bool:
            for fn in fns:  # noqa: SIM110 - a plain loop beats any() over a generator
                if fn(labels):
                    return True
            return False

        return or_n


def _negate(node: _Node) -> _Node:
    """``!node``, with double negation removed (Calico collapses runs of '!')."""
    return node.operand if isinstance(node, _Not) else _Not(node)


_ALL = _All()
_GLOBAL = _Global()


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the text itself; operator words are only looked for after a
    label key, so keys such as ``in``, ``has`` or ``contains`` stay usable as labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.end = len(text)

    # low level

    def fail(self, expected: str, pos: int | None = None) -> NoReturn:
        at = self.pos if pos is None else pos
        raise SelectorError(self.text, at, f"expected {expected}, found {self.found(at)}")

    def found(self, pos: int) -> str:
        text = self.text
        if pos >= self.end:
            return "end of selector"
        char = text[pos]
        if char in _KEY_CHARS:
            word = text[pos : self.word_end(pos)]
            hint = _WORD_HINTS.get(word)
            shown = repr(word if len(word) <= 40 else word[:40] + "...")
            return f"{shown} ({hint})" if hint else shown
        if char in _QUOTES:
            return "a quoted value"
        if char.isspace():
            return f"{char!r} (only spaces and tabs may separate tokens)"
        pair = text[pos : pos + 2]
        if pair in ("==", "!=", "&&", "||"):
            return repr(pair)
        return repr(char)

    def skip_ws(self) -> None:
        text, pos, end = self.text, self.pos, self.end
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def word_end(self, pos: int) -> int:
        text, end = self.text, self.end
        while pos < end and text[pos] in _KEY_CHARS:
            pos += 1
        return pos

    def take(self, token: str) -> bool:
        """Skip whitespace, then consume ``token`` if it comes next."""
        self.skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str, expected: str | None = None) -> None:
        if not self.take(token):
            self.fail(expected or repr(token))

    def key(self, expected: str) -> str:
        self.skip_ws()
        stop = self.word_end(self.pos)
        if stop == self.pos:
            self.fail(expected)
        key = self.text[self.pos : stop]
        self.pos = stop
        return key

    def quoted(self) -> str:
        self.skip_ws()
        start = self.pos
        if start >= self.end or self.text[start] not in _QUOTES:
            self.fail("a quoted value")
        quote = self.text[start]
        close = self.text.find(quote, start + 1)
        if close < 0:
            raise SelectorError(
                self.text, start, f"unterminated quoted value: expected a closing {quote}"
            )
        self.pos = close + 1
        return self.text[start + 1 : close]

    # grammar

    def selector(self) -> _Node:
        if not self.text.strip(_WHITESPACE):
            return _ALL
        node = self.or_()
        self.skip_ws()
        if self.pos < self.end:
            self.fail("'&&', '||' or end of selector")
        return node

    def or_(self) -> _Node:
        operands = [self.and_()]
        while self.take("||"):
            operands.append(self.and_())
        return _Or.of(operands)

    def and_(self) -> _Node:
        operands = [self.unary()]
        while self.take("&&"):
            operands.append(self.unary())
        return _And.of(operands)

    def unary(self) -> _Node:
        negated = False
        self.skip_ws()
        while self.text.startswith("!", self.pos) and not self.text.startswith("!=", self.pos):
            negated = not negated  # as Calico, a run of '!'s collapses
            self.pos += 1
            self.skip_ws()
        node = self.primary()
        return _negate(node) if negated else node

    def primary(self) -> _Node:
        if self.take("("):
            node = self.or_()
            self.expect(")", "'&&', '||' or ')'")
            return node
        if self.take("all("):
            self.expect(")")
            return _ALL
        if self.take("global("):
            self.expect(")")
            return _GLOBAL
        if self.take("has("):
            key = self.key("a label key")
            self.expect(")")
            return _Has(key)
        key = self.key(_EXPECTED_OPERAND)
        return self.operation(key)

    def operation(self, key: str) -> _Node:
        if self.take("=="):
            return _Compare(key, "==", self.quoted())
        if self.take("!="):
            return _Compare(key, "!=", self.quoted())
        # Operator words are matched as prefixes, as Calico's tokenizer does: "k notin {}"
        # and "k startswith 'x'" are accepted there, so they are here.
        start = self.pos  # take() skipped the whitespace
        text = self.text
        if text.startswith("contains", start):
            self.pos = start + len("contains")
            return _Compare(key, "contains", self.quoted())
        for first, second in (("starts", "with"), ("ends", "with"), ("not", "in")):
            if text.startswith(first, start):
                self.pos = start + len(first)
                self.expect(second, f"'{second}' after '{first}'")
                if first == "not":
                    return _InSet(key, self.set_(), negated=True)
                return _Compare(key, f"{first} {second}", self.quoted())
        if text.startswith("in", start):
            self.pos = start + len("in")
            return _InSet(key, self.set_(), negated=False)
        self.fail(_EXPECTED_OPERATOR, start)

    def set_(self) -> list[str]:
        """``{"a", "b"}``; as Calico, a trailing comma is accepted: ``{"a",}``."""
        self.expect("{", "'{'")
        values: list[str] = []
        expected = "a quoted value or '}'"
        while True:
            self.skip_ws()
            if self.pos >= self.end or self.text[self.pos] not in _QUOTES:
                break
            values.append(self.quoted())
            if not self.take(","):
                expected = "',' or '}'"
                break
        self.expect("}", expected)
        return values


# --- the public selector ------------------------------------------------------------------------


class Selector:
    """A parsed, compiled, immutable Calico selector.

    Equality and hashing go by the canonical text (``str(selector)``), so selectors that
    differ only in spacing, quoting, grouping of ``&&``/``||`` or set order are equal.
    """

    __slots__ = ("_canonical", "_keys", "_match", "_required", "source")

    source: str
    _canonical: str
    _keys: frozenset[str]
    _match: Matcher
    _required: tuple[tuple[str, str], ...]

    def __init__(self, text: str) -> None:
        """Parse ``text`` (raising :class:`SelectorError`); prefer the cached :func:`parse`."""
        if not isinstance(text, str):
            raise TypeError(f"a selector must be a string, not {type(text).__name__}")
        root = _Parser(text).selector()
        keys: set[str] = set()
        root.keys(keys)
        set_ = object.__setattr__
        set_(self, "source", text)
        set_(self, "_canonical", root.text())
        set_(self, "_keys", frozenset(keys))
        set_(self, "_match", root.compile())
        terms = root.operands if type(root) is _And else (root,)
        set_(self, "_required", tuple((t.key, t.value) for t in terms
                                      if type(t) is _Compare and t.op == "=="))

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels matches the selector."""
        return self._match(labels)

    @property
    def matcher(self) -> Matcher:
        """The compiled predicate itself, for hot loops that want to skip a method call."""
        return self._match

    def labels_used(self) -> frozenset[str]:
        """Every label key the selector reads."""
        return self._keys

    def required_labels(self) -> tuple[tuple[str, str], ...]:
        """``(key, value)`` pairs every matching label set has: the selector's top-level
        ``key == "value"`` terms (for indexing selectors by label)."""
        return self._required

    def __str__(self) -> str:
        return self._canonical

    def __repr__(self) -> str:
        return f"Selector({self._canonical!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Selector):
            return self._canonical == other._canonical
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Selector is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Selector is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Callable[[str], Selector], tuple[str]]:
        return (parse, (self.source,))


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Selector:
    """Parse (once; results are cached by text) a Calico selector.

    Raises :class:`SelectorError` with the position of the problem.
    """
    return Selector(text)


# --- Kubernetes label selectors -----------------------------------------------------------------

_K8S_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_K8S_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_K8S_REQUIREMENT_FIELDS = ("key", "operator", "values")


def _json_str(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _check_fields(obj: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for name in obj:
        if name not in allowed:
            msg = f"unknown field {_json_str(name)}"
            raise ValueError(f"{path}: {msg}" if path else msg)


def _requirement(item: object, path: str) -> _Node:
    if not isinstance(item, Mapping):
        raise ValueError(f"{path}: must be a mapping with key, operator and values")
    _check_fields(item, _K8S_REQUIREMENT_FIELDS, path)
    key = item.get("key")
    operator = item.get("operator")
    values = item.get("values")
    if key is None:
        raise ValueError(f"{path}.key: required field is missing")
    err = validate_label_key(key)
    if err:
        raise ValueError(f"{path}.key: invalid key {_json_str(key)}: {err}")
    if operator is None:
        raise ValueError(f"{path}.operator: required field is missing")
    if operator not in _K8S_OPERATORS:
        raise ValueError(
            f"{path}.operator: unsupported value {_json_str(operator)}: supported values are "
            + ", ".join(_K8S_OPERATORS)
        )
    if values is not None and (isinstance(values, str) or not isinstance(values, Sequence)):
        raise ValueError(f"{path}.values: must be a list of strings")
    if operator in ("In", "NotIn"):
        if not values:
            raise ValueError(f"{path}.values: must be specified when operator is {operator}")
        for value in values:
            err = validate_label_value(value)
            if err:
                raise ValueError(f"{path}.values: invalid value {_json_str(value)}: {err}")
        return _InSet(key, values, negated=operator == "NotIn")
    if values:
        raise ValueError(f"{path}.values: may not be specified when operator is {operator}")
    return _Has(key) if operator == "Exists" else _negate(_Has(key))


def from_k8s_label_selector(sel: Mapping[str, Any] | None) -> str:
    """The Calico selector equivalent to a Kubernetes ``LabelSelector``.

    ``None`` and ``{}`` select everything (``all()``). The terms are ``matchLabels`` sorted
    by key, then ``matchExpressions`` in order, joined with ``&&``; the result is already in
    canonical form. Invalid selectors raise ``ValueError`` naming the field path relative to
    the selector, e.g. ``matchExpressions[0].values: must be specified when operator is In``.
    """
    if sel is None:
        return _ALL.text()
    if not isinstance(sel, Mapping):
        raise ValueError("a label selector must be a mapping with matchLabels/matchExpressions")
    _check_fields(sel, _K8S_SELECTOR_FIELDS, "")
    terms: list[_Node] = []
    match_labels = sel.get("matchLabels")
    if match_labels is not None:
        errors = validate_labels(match_labels, field="matchLabels")
        if errors:
            raise ValueError(errors[0])
        terms.extend(_Compare(k, "==", match_labels[k]) for k in sorted(match_labels))
    expressions = sel.get("matchExpressions")
    if expressions is not None:
        if isinstance(expressions, str) or not isinstance(expressions, Sequence):
            raise ValueError("matchExpressions: must be a list of requirements")
        terms.extend(
            _requirement(item, f"matchExpressions[{i}]") for i, item in enumerate(expressions)
        )
    if not terms:
        return _ALL.text()
    return _And.of(terms).text()
