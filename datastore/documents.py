"""Reading resource documents: files, directories, stdin; YAML streams, JSON, lists.

Every document keeps where it came from (source and line) so that errors can point at it.
Text pasted from web pages often indents with non-breaking spaces (U+00A0), which YAML
does not accept as indentation; those are turned into plain spaces (one for one, so the
columns the author meant are kept) and the reader reports how many it replaced.

What one command may read is bounded (:data:`LIMITS`): input size, documents, and nodes,
text and nesting *after YAML alias expansion*, measured on the composed node graph before
anything is constructed, so an alias bomb fails in microseconds instead of expanding.
Values JSON cannot hold (NaN, infinities, integers too long to convert, YAML's !!binary,
!!set, ...) never reach a model: numbers become :class:`Unrepresentable` markers that
:func:`data_problems` reports by field path, the other tags are YAML errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

NBSP = "\u00a0"
EXTENSIONS = (".yaml", ".yml", ".json")
LIST_KINDS_SUFFIX = "List"
_MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one command (``tortie apply -f ...``, all its files together) may read."""

    input_bytes: int = 8 * _MiB        # text read from all files and stdin
    documents: int = 10_000            # resources, after lists and aliases are expanded
    nodes: int = 1_000_000             # mappings, lists and scalars, after alias expansion
    expanded_bytes: int = 16 * _MiB    # characters of scalars, after alias expansion
    depth: int = 64                    # levels of nesting, after alias expansion
    int_digits: int = 100              # characters of one integer

    def describe(self) -> str:
        return (f"limits per command: {_size(self.input_bytes)} of input, {self.documents} "
                f"documents, {self.nodes} nodes and {_size(self.expanded_bytes)} of text "
                f"after YAML alias expansion, {self.depth} levels of nesting")


LIMITS = Limits()


def _size(n: int) -> str:
    return f"{n // _MiB} MiB" if n % _MiB == 0 else f"{n} bytes"


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass
class Document:
    source: str          # file path or "<stdin>"
    line: int            # 1-based line of the document's first key
    data: Any
    index: int = 0       # position in the source (0-based), for messages
    node: yaml.Node | None = field(default=None, repr=False)  # for line numbers of fields

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def line_of(self, path: str) -> int:
        """The line of the deepest part of ``spec.ingress[0].action`` found in the source."""
        node, line = self.node, self.line
        for name, index in _PATH_PART.findall(path):
            if node is None:
                break
            child: yaml.Node | None = None
            if name and isinstance(node, yaml.MappingNode):
                child = next((v for k, v in node.value if k.value == name), None)
                if child is not None:
                    key = next(k for k, v in node.value if v is child)
                    line = key.start_mark.line + 1
            elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
                child = node.value[int(index)]
                line = child.start_mark.line + 1
            node = child
        return line


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class DocumentError(ValueError):
    """A source that cannot be read or parsed; nothing from it is used."""


class LimitExceeded(DocumentError):
    """The input is larger (or deeper) than :data:`LIMITS` allow."""


class Unrepresentable:
    """A number JSON cannot hold (NaN, infinity, an over-long integer), as written.

    The reader keeps it in place of the value so that validation can name the field.
    """

    __slots__ = ("problem", "text")

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        self.problem = problem

    def __repr__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        shown = self.text if len(self.text) <= 24 else \
            f"{self.text[:12]}... ({len(self.text)} characters)"
        return f"{shown} {self.problem}"


def _int_too_long(text: str, limits: Limits) -> Unrepresentable:
    return Unrepresentable(text, f"is too long for a number (at most {limits.int_digits} "
                                 "characters)")


_NOT_FINITE = "is not a finite number (JSON has no NaN or infinity)"

#: What a stored resource may hold: JSON's types (tuples never come out of the reader).
_JSON_SCALARS = (str, bool, int, float, type(None))
MAX_PROBLEMS = 10


def data_problems(data: Any) -> list[str]:
    """``field: problem`` for each value in ``data`` that JSON cannot hold (first few)."""
    problems: list[str] = []
    more = 0
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        problem = None
        if isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                sub = f"{path}.{k}" if path else str(k)
                bad_key = _value_problem(k)
                if bad_key is not None:
                    stack.append((sub, Unrepresentable(_short(k), f"cannot be a key: {bad_key}")))
                else:
                    stack.append((sub, v))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        else:
            problem = _value_problem(value)
        if problem is not None:
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"{path}: {problem}" if path else problem)
            else:
                more += 1
    if more:
        problems.append(f"... and {more} more value(s) like these")
    return problems


def _value_problem(value: Any) -> str | None:
    """Why a scalar cannot be stored as JSON, or None."""
    if isinstance(value, Unrepresentable):
        return value.describe()
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} {_NOT_FINITE}"
    if not isinstance(value, _JSON_SCALARS):
        return f"a {type(value).__name__} is not a JSON value"
    return None


class Budget:
    """What a command has read so far, against :data:`LIMITS`."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.input_bytes = 0
        self.documents = 0
        self.nodes = 0
        self.expanded_bytes = 0

    def _exceeded(self, where: str, what: str) -> LimitExceeded:
        return LimitExceeded(f"{where}: too large: {what} ({self.limits.describe()})")

    def add_input(self, n: int, source: str) -> None:
        self.input_bytes += n
        if self.input_bytes > self.limits.input_bytes:
            raise self._exceeded(source, f"more than {_size(self.limits.input_bytes)} of "
                                         "input")

    def add_tree(self, nodes: int, text: int, where: str) -> None:
        self.nodes += nodes
        self.expanded_bytes += text
        if self.nodes > self.limits.nodes:
            raise self._exceeded(where, f"more than {self.limits.nodes} nodes once YAML "
                                        "aliases are expanded")
        if self.expanded_bytes > self.limits.expanded_bytes:
            raise self._exceeded(where, f"more than {_size(self.limits.expanded_bytes)} of "
                                        "text once YAML aliases are expanded")

    def add_document(self, where: str) -> None:
        self.documents += 1
        if self.documents > self.limits.documents:
            raise self._exceeded(where, f"more than {self.limits.documents} documents "
                                        "(counting lists' items and YAML aliases)")

    def too_deep(self, where: str) -> LimitExceeded:
        return LimitExceeded(f"{where}: nested more than {self.limits.depth} levels deep "
                             f"({self.limits.describe()})")


def _measure_node(root: yaml.Node, budget: Budget, source: str) -> None:
    """Count ``root``'s nodes, text and depth as if its aliases were expanded.

    Aliases make the composed document a graph that shares nodes; each node is measured
    once (memoised), so this is linear in what was written, not in what it expands to.
    """
    limit = budget.limits.depth
    sizes: dict[int, tuple[int, int, int]] = {}  # id -> (nodes, text, height)
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int, int]:
        key = id(node)
        known = sizes.get(key)
        if known is None:
            if key in active:
                raise DocumentError(f"{source}:{node.start_mark.line + 1}: YAML error: an "
                                    "alias refers to a node that contains it (a recursive "
                                    "structure cannot be a resource)")
            if depth > limit:
                raise budget.too_deep(f"{source}:{node.start_mark.line + 1}")
            active.add(key)
            nodes, text, height = 1, 0, 0
            if isinstance(node, yaml.ScalarNode):
                text = len(node.value)
            else:
                children: Iterator[yaml.Node] = (
                    iter(node.value) if isinstance(node, yaml.SequenceNode)
                    else (n for pair in node.value for n in pair))
                for child in children:
                    n, t, h = measure(child, depth + 1)
                    nodes, text, height = nodes + n, text + t, max(height, h + 1)
            active.discard(key)
            known = sizes[key] = (nodes, text, height)
        if depth + known[2] > limit:
            raise budget.too_deep(f"{source}:{node.start_mark.line + 1}")
        return known

    nodes, text, _ = measure(root, 1)
    budget.add_tree(nodes, text, f"{source}:{root.start_mark.line + 1}")


def _measure_data(data: Any, budget: Budget, where: str) -> None:
    """Count the nodes, text and depth of parsed JSON (a tree: nothing is shared)."""
    nodes = text = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > budget.limits.depth:
            raise budget.too_deep(where)
        nodes += 1
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            text += len(value)
    budget.add_tree(nodes, text, where)


def load_json(text: str, where: str, budget: Budget | None = None) -> Any:
    """``json.loads`` within :data:`LIMITS`; numbers JSON cannot hold become
    :class:`Unrepresentable`.  Raises ``json.JSONDecodeError`` or :class:`DocumentError`."""
    budget = budget or Budget()
    limits = budget.limits

    def parse_int(s: str) -> Any:
        return int(s) if len(s) <= limits.int_digits else _int_too_long(s, limits)

    def parse_float(s: str) -> Any:
        value = float(s)
        return value if math.isfinite(value) else Unrepresentable(s, _NOT_FINITE)

    try:
        data = json.loads(text, parse_int=parse_int, parse_float=parse_float,
                          parse_constant=lambda s: Unrepresentable(s, _NOT_FINITE))
    except RecursionError:
        raise budget.too_deep(where) from None
    _measure_data(data, budget, where)
    return data


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting is limited while composing (PyYAML's
    composer recurses), numbers JSON cannot hold are kept as :class:`Unrepresentable`,
    timestamps stay strings (as Kubernetes' YAML-to-JSON conversion keeps them), and
    types JSON has no form for are refused."""

    def __init__(self, text: str, limits: Limits) -> None:
        super().__init__(text)
        self.limits = limits
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.depth >= self.limits.depth:
            raise ComposerError(None, None, f"nested more than {self.limits.depth} levels "
                                f"deep ({self.limits.describe()})", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_int(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode) and len(node.value) > self.limits.int_digits:
            return _int_too_long(node.value, self.limits)
        try:
            return self.construct_yaml_int(node)
        except (ValueError, IndexError):
            raise ConstructorError(None, None, f"{_short(node.value)} is not an integer",
                                   node.start_mark) from None

    def construct_float(self, node: yaml.Node) -> Any:
        try:
            value = self.construct_yaml_float(node)
        except (ValueError, IndexError):
            raise ConstructorError(None, None, f"{_short(node.value)} is not a number",
                                   node.start_mark) from None
        return value if math.isfinite(value) else Unrepresentable(node.value, _NOT_FINITE)

    def construct_unsupported(self, node: yaml.Node) -> Any:
        raise ConstructorError(None, None, f"{node.tag.rpartition(':')[2]!r} values are not "
                               "supported: a resource holds only mappings, lists, strings, "
                               "numbers, booleans and null", node.start_mark)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_scalar)
for _tag in ("binary", "omap", "pairs", "set"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader.construct_unsupported)


def _short(value: Any) -> str:
    text = str(value)
    return repr(text) if len(text) <= 40 else repr(text[:30]) + f"... ({len(text)} characters)"


def normalise_nbsp(text: str) -> tuple[str, int]:
    """Replace non-breaking spaces in indentation and blank runs with spaces."""
    if NBSP not in text:
        return text, 0
    count = 0
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        stripped = body.lstrip(" \t" + NBSP)
        lead = body[: len(body) - len(stripped)]
        trail_stripped = stripped.rstrip(" \t" + NBSP)
        trail = stripped[len(trail_stripped):]
        n = lead.count(NBSP) + trail.count(NBSP)
        if n:
            count += n
            body = lead.replace(NBSP, " ") + trail_stripped + trail.replace(NBSP, " ")
        out.append(body + end)
    return "".join(out), count


def parse_text(text: str, source: str, budget: Budget | None = None) -> ReadResult:
    """Parse one YAML or JSON stream into documents, flattening lists.

    ``budget`` is shared by all the sources of one command (a new one by default).
    """
    budget = budget or Budget()
    result = ReadResult()
    if text.lstrip().startswith(("{", "[")):
        try:
            data = load_json(text, f"{source}:1", budget)
        except json.JSONDecodeError as e:
            if source.endswith(".json"):
                raise DocumentError(f"{source}:{e.lineno}:{e.colno}: JSON error: {e.msg}") \
                    from None
        else:
            _add(result.documents, source, None, data, budget)
            _number(result)
            return result
    text, replaced = normalise_nbsp(text)
    if replaced:
        result.notes.append(
            f"{source}: replaced {replaced} non-breaking space(s) used as indentation with "
            "plain spaces (text copied from a web page)"
        )
    try:
        loader = _Loader(text, budget.limits)
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise DocumentError(f"{source}:{line}:{column}: YAML error: character "
                            f"U+{e.character:04X} is not allowed in YAML") from None
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _measure_node(node, budget, source)
            data = loader.construct_document(node)
            _add(result.documents, source, node, data, budget)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = e.problem or e.context or "invalid YAML"
        raise DocumentError(f"{where}: YAML error: {problem}") from None
    except yaml.YAMLError as e:
        raise DocumentError(f"{source}: YAML error: {e}") from None
    finally:
        loader.dispose()
    _number(result)
    return result


def _number(result: ReadResult) -> None:
    for i, d in enumerate(result.documents):
        d.index = i


def _add(out: list[Document], source: str, node: yaml.Node | None, data: Any,
         budget: Budget) -> None:
    """Append ``data`` (parsed from ``node``, None for JSON), flattening lists."""
    line = node.start_mark.line + 1 if node is not None else 1
    if data is None:
        return
    if isinstance(data, list):  # a bare list of resources (calicoctl v1 style)
        nodes = node.value if isinstance(node, yaml.SequenceNode) else []
        for i, item in enumerate(data):
            _add(out, source, nodes[i] if i < len(nodes) else node, item, budget)
        return
    if (isinstance(data, dict) and isinstance(data.get("kind"), str)
            and data["kind"].endswith(LIST_KINDS_SUFFIX) and "items" in data):
        items = data.get("items") or []
        if not isinstance(items, list):
            items = [items]
        item_nodes: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == "items" and isinstance(v, yaml.SequenceNode):
                    item_nodes = v.value
        for i, item in enumerate(items):
            item_node = item_nodes[i] if i < len(item_nodes) else node
            _add(out, source, item_node, item, budget)
        return
    budget.add_document(f"{source}:{line}")
    out.append(Document(source, line, data, node=node))


def read_source(path: str, budget: Budget | None = None) -> ReadResult:
    """Read ``path``: ``-`` for stdin, a file, or a directory of .yaml/.yml/.json files."""
    budget = budget or Budget()
    if path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        text = _read_bounded(stdin, "<stdin>", budget) if stdin is not None \
            else _read_text_bounded(sys.stdin, "<stdin>", budget)
        return parse_text(text, "<stdin>", budget)
    if os.path.isdir(path):
        result = ReadResult()
        names = sorted(n for n in os.listdir(path) if n.endswith(EXTENSIONS))
        if not names:
            raise DocumentError(f"{path}: directory holds no .yaml, .yml or .json files")
        for name in names:
            sub = read_source(os.path.join(path, name), budget)
            result.documents.extend(sub.documents)
            result.notes.extend(sub.notes)
        return result
    try:
        with open(path, "rb") as f:
            text = _read_bounded(f, path, budget)
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise DocumentError(f"{path}: cannot read: {e}") from None
    return parse_text(text, path, budget)


def _read_bounded(stream: IO[bytes], source: str, budget: Budget) -> str:
    """Read at most what the budget has left (one byte more tells it was too much)."""
    room = budget.limits.input_bytes - budget.input_bytes
    raw = stream.read(room + 1)
    budget.add_input(len(raw), source)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(f"{source}: cannot read: not UTF-8 text ({e.reason} at byte "
                            f"{e.start})") from None


def _read_text_bounded(stream: IO[str], source: str, budget: Budget) -> str:
    room = budget.limits.input_bytes - budget.input_bytes
    text = stream.read(room + 1)
    budget.add_input(len(text.encode("utf-8", "surrogatepass")), source)
    return text


def read_sources(paths: list[str], budget: Budget | None = None) -> ReadResult:
    """Read every path within one budget (:data:`LIMITS` by default)."""
    budget = budget or Budget()
    result = ReadResult()
    for p in paths:
        sub = read_source(p, budget)
        result.documents.extend(sub.documents)
        result.notes.extend(sub.notes)
    return result
