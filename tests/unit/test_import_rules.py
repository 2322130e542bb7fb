"""Which package may import which: read from the source (an AST walk of every import, those
inside functions too), so a new cycle or a forbidden import fails here, not in review.

* product code (the daemons, the agents and what they share) never imports ``lab``,
  ``bench`` or ``tests``; ``ctl`` (the CLI, whose ``tortie lab`` verbs drive the lab) and
  ``lab`` never import ``bench`` or ``tests``;
* ``agentkit`` imports no other Tortie package; ``datastore`` only ``agentkit`` (its
  back-off); imports under ``if TYPE_CHECKING:`` are types only and do not count;
* the agents (``policyagent``, ``routing``, ``cni``, ``ipam``) never import a daemon
  (``node``, ``kubecontrollers``);
* tortie-kube-controllers (``kubecontrollers`` and all it imports, followed through Tortie's
  modules) imports none of ``cni``, ``routing``, ``node``, ``pyroute2``, ``nftables``;
* the CNI executable ``cni/plugin.py`` imports only the standard library;
* no cycle between top-level packages.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("agentkit", "cni", "datastore", "ipam", "kubecontrollers", "node", "policyagent",
           "routing")
TOOLS = ("ctl", "lab")
SCANNED = (*PRODUCT, *TOOLS, "bench")
AGENTS = ("policyagent", "routing", "cni", "ipam")
DAEMONS = ("node", "kubecontrollers")
BASE = {"agentkit": {"agentkit"}, "datastore": {"datastore", "agentkit"}}
NOT_IN_KUBE_CONTROLLERS = ("cni", "routing", "node", "pyroute2", "nftables")
TORTIE = (*SCANNED, "tests")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file; ``from P import name`` yields ``P.name``
    when that is a module of ours, else ``P``."""
    modules = _modules()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = _module_name(path).split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in modules else target


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for types)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@cache
def _edges() -> dict[str, tuple[tuple[int, str], ...]]:
    return {name: tuple(_imports(path)) for name, path in _modules().items()}


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _violations(sources: tuple[str, ...], forbidden: set[str]) -> list[str]:
    out = []
    for name, edges in _edges().items():
        if _top(name) in sources:
            out += [f"{_modules()[name].relative_to(ROOT)}:{line} imports {target}"
                    for line, target in edges if _top(target) in forbidden]
    return out


def test_the_scan_sees_the_packages() -> None:
    tops = {_top(m) for m in _modules()}
    assert set(SCANNED) <= tops
    assert {"node.main", "agentkit.agent", "cni.plugin", "kubecontrollers.main"} <= set(_modules())


def test_product_code_never_imports_the_lab_bench_or_tests() -> None:
    assert _violations(PRODUCT, {"lab", "bench", "tests"}) == []
    assert _violations(TOOLS, {"bench", "tests"}) == []


@pytest.mark.parametrize("package", sorted(BASE))
def test_the_base_packages_import_only_what_they_may(package: str) -> None:
    others = set(TORTIE) - BASE[package]
    assert _violations((package,), others) == []


def test_agents_never_import_a_daemon() -> None:
    assert _violations(AGENTS, set(DAEMONS)) == []


def test_kube_controllers_import_no_dataplane() -> None:
    """Followed through every Tortie module kubecontrollers reaches."""
    edges = _edges()
    seen: set[str] = set()
    todo = [m for m in edges if _top(m) == "kubecontrollers"]
    bad: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line, target in edges.get(name, ()):
            if _top(target) in NOT_IN_KUBE_CONTROLLERS:
                bad.append(f"{_modules()[name].relative_to(ROOT)}:{line} imports {target}")
            elif target in edges:  # with its packages' __init__ modules, which run first
                parts = target.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    assert bad == []


def test_the_cni_executable_imports_only_the_standard_library() -> None:
    path = ROOT / "cni" / "plugin.py"
    outside = [f"line {line}: {target}" for line, target in _imports(path)
               if _top(target) not in sys.stdlib_module_names and target != "__future__"]
    assert outside == []


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {top: set() for top in SCANNED}
    for name, edges in _edges().items():
        for _, target in edges:
            if _top(target) in SCANNED and _top(target) != _top(name):
                graph[_top(name)].add(_top(target))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_packages() -> None:
    graph = _package_graph()
    cycles = _cycles(graph)
    detail = {p: sorted(graph[p]) for cycle in cycles for p in cycle}
    assert cycles == [], f"package import cycles: {cycles}; edges: {detail}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_are_not_runtime_edges() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nimport a\n"
                     "if TYPE_CHECKING:\n    import b\nelse:\n    import c\n")
    names = {alias.name for node in _runtime_nodes(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    assert names == {"a", "c"}
