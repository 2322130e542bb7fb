"""Reading resource documents: files, directories, stdin; YAML streams, JSON, lists.

Every document keeps where it came from (source and line) so that errors can point at it.
Text pasted from web pages often indents with non-breaking spaces (U+00A0), which YAML
does not accept as indentation; those are turned into plain spaces (one for one, so the
columns the author meant are kept) and the reader reports how many it replaced.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

NBSP = "\u00a0"
EXTENSIONS = (".yaml", ".yml", ".json")
LIST_KINDS_SUFFIX = "List"


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


def parse_text(text: str, source: str) -> ReadResult:
    """Parse one YAML or JSON stream into documents, flattening lists."""
    result = ReadResult()
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if source.endswith(".json"):
                raise DocumentError(f"{source}:{e.lineno}:{e.colno}: JSON error: {e.msg}") \
                    from None
        else:
            _add(result.documents, source, None, data)
            return result
    text, replaced = normalise_nbsp(text)
    if replaced:
        result.notes.append(
            f"{source}: replaced {replaced} non-breaking space(s) used as indentation with "
            "plain spaces (text copied from a web page)"
        )
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            _add(result.documents, source, node, data)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = e.problem or e.context or "invalid YAML"
        raise DocumentError(f"{where}: YAML error: {problem}") from None
    except yaml.YAMLError as e:
        raise DocumentError(f"{source}: YAML error: {e}") from None
    finally:
        loader.dispose()
    for i, d in enumerate(result.documents):
        d.index = i
    return result


def _add(out: list[Document], source: str, node: yaml.Node | None, data: Any) -> None:
    """Append ``data`` (parsed from ``node``, None for JSON), flattening lists."""
    line = node.start_mark.line + 1 if node is not None else 1
    if data is None:
        return
    if isinstance(data, list):  # a bare list of resources (calicoctl v1 style)
        nodes = node.value if isinstance(node, yaml.SequenceNode) else []
        for i, item in enumerate(data):
            _add(out, source, nodes[i] if i < len(nodes) else node, item)
        return
    if (isinstance(data, dict) and isinstance(data.get("kind"), str)
            and data["kind"].endswith(LIST_KINDS_SUFFIX) and "items" in data):
        items = data.get("items") or []
        item_nodes: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == "items" and isinstance(v, yaml.SequenceNode):
                    item_nodes = v.value
        for i, item in enumerate(items):
            item_node = item_nodes[i] if i < len(item_nodes) else node
            _add(out, source, item_node, item)
        return
    out.append(Document(source, line, data, node=node))


def read_source(path: str) -> ReadResult:
    """Read ``path``: ``-`` for stdin, a file, or a directory of .yaml/.yml/.json files."""
    if path == "-":
        return parse_text(sys.stdin.read(), "<stdin>")
    if os.path.isdir(path):
        result = ReadResult()
        names = sorted(n for n in os.listdir(path) if n.endswith(EXTENSIONS))
        if not names:
            raise DocumentError(f"{path}: directory holds no .yaml, .yml or .json files")
        for name in names:
            sub = read_source(os.path.join(path, name))
            result.documents.extend(sub.documents)
            result.notes.extend(sub.notes)
        return result
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DocumentError(f"{path}: cannot read: {e}") from None
    return parse_text(text, path)


def read_sources(paths: list[str]) -> ReadResult:
    result = ReadResult()
    for p in paths:
        sub = read_source(p)
        result.documents.extend(sub.documents)
        result.notes.extend(sub.notes)
    return result
