"""shovel's import graph: no cycle among its own modules, no import of a higher layer, sources
and storage apart, and nothing in the service imports the demo. And no test module imports
another.

The graph is read from the source with `ast`: imports inside functions count, and those under
`if TYPE_CHECKING:` do not (they never run). `from P import N` is an edge to the module P.N when
N is a submodule, else to P itself. Importing P.N also runs P's `__init__`, but that is no edge
here: a package that imports its submodules, which import each other, is the ordinary shape of a
package. A submodule that takes a name from its package's `__init__` is an edge to it, and a
cycle when that `__init__` imports the submodule.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The CLI is the entry point above both the service and the demo: `python -m shovel demo`.
DEMO_IMPORTERS_ALLOWED = frozenset({"shovel.cli"})
# shovel's layers, top first, each by the prefixes of its modules' names: a module imports
# modules of its own layer or of lower ones, never of a higher one. Settings sits above the
# sources and storage, whose configuration it builds; the bottom is what all of them share.
LAYERS = (
    ("shovel.__main__", "shovel.cli"),
    ("shovel.demo",),
    ("shovel.service",),
    ("shovel.settings",),
    ("shovel.sources", "shovel.storage"),
    (
        "shovel.batches",
        "shovel._threads",
        "shovel.safefiles",
        "shovel.redact",
        "shovel.logs",
        "shovel.cliparser",
        "shovel.sizes",
        "shovel.prescan",
        "shovel.oserrors",
        "shovel.natsurl",
    ),
    ("shovel.exitcodes",),
    ("shovel._early", "shovel"),
)

Graph = dict[str, set[str]]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a folder under `root`) by its dotted name."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules in `known` that the module `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: `from . import x`, `from ..a import y`
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.add(submodule if submodule in known else base)
    return found & known


def import_graph(root: Path, package: str) -> Graph:
    """Each module of `package` and the modules of `package` it imports."""
    found = modules(root, package)
    known = set(found)
    return {name: _imported(name, path, known) - {name} for name, path in found.items()}


def _cycle_through(graph: Graph, start: str, knot: set[str]) -> list[str]:
    """A shortest cycle from `start` back to it, within `knot`."""
    came_from: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for nxt in sorted(graph[node] & knot):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    raise AssertionError(f"{start} is on no cycle")


def _knots(graph: Graph) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    knots = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            knot = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                knot.add(member)
                if member == node:
                    break
            if len(knot) > 1:
                knots.append(knot)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return knots


def cycles(graph: Graph) -> list[str]:
    """The import cycles of `graph`, each as `a -> b -> a`: a shortest one through each module
    that is on any, each cycle once."""
    found = set()
    for knot in _knots(graph):
        for member in knot:
            cycle = _cycle_through(graph, member, knot)[:-1]
            first = cycle.index(min(cycle))
            cycle = cycle[first:] + cycle[:first]
            found.add(" -> ".join([*cycle, cycle[0]]))
    return sorted(found)


def demo_importers(graph: Graph, demo: str) -> set[str]:
    """The modules outside the package `demo` that import it or one of its modules."""

    def in_demo(name: str) -> bool:
        return name == demo or name.startswith(demo + ".")

    return {
        name
        for name, imported in graph.items()
        if not in_demo(name) and any(map(in_demo, imported))
    }


# --- shovel ------------------------------------------------------------------------------------


def test_shovel_has_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT, "shovel"))
    assert found == [], "import cycles in shovel:\n" + "\n".join(found)


def test_nothing_in_the_service_imports_the_demo() -> None:
    importers = demo_importers(import_graph(ROOT, "shovel"), "shovel.demo")
    assert importers <= DEMO_IMPORTERS_ALLOWED, f"shovel.demo imported by {sorted(importers)}"


def layer_of(name: str) -> int:
    """The index in LAYERS of the module `name` (the longest prefix that names it wins; the
    package `shovel` itself names only its `__init__`)."""
    best = max(
        (
            (len(prefix), i)
            for i, layer in enumerate(LAYERS)
            for prefix in layer
            if name == prefix or (prefix != "shovel" and name.startswith(prefix + "."))
        ),
        default=None,
    )
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def upward_imports(graph: Graph) -> list[str]:
    """Each import of a module in a higher layer than its importer's, as `a -> b`."""
    return sorted(
        f"{name} -> {imported}"
        for name, imports in graph.items()
        for imported in imports
        if layer_of(imported) < layer_of(name)
    )


def test_no_module_imports_a_higher_layer() -> None:
    found = upward_imports(import_graph(ROOT, "shovel"))
    assert found == [], "upward imports in shovel:\n" + "\n".join(found)


def test_sources_and_storage_do_not_import_each_other() -> None:
    graph = import_graph(ROOT, "shovel")
    crossing = sorted(
        f"{name} -> {imported}"
        for name, imports in graph.items()
        for imported in imports
        for a, b in (("shovel.sources", "shovel.storage"), ("shovel.storage", "shovel.sources"))
        if name.startswith(a) and imported.startswith(b)
    )
    assert crossing == []


def test_a_module_in_no_layer_is_named() -> None:
    with pytest.raises(AssertionError, match=r"shovel\.sinks\.nats is in no layer"):
        layer_of("shovel.sinks.nats")


def test_an_upward_import_is_found() -> None:
    graph = {"shovel.sources.file": {"shovel.settings"}, "shovel.settings": {"shovel.sources"}}
    assert upward_imports(graph) == ["shovel.sources.file -> shovel.settings"]


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers."""
    graph = import_graph(ROOT, "tests")
    found = {
        name: sorted(m for m in imported if m.rpartition(".")[2].startswith("test_"))
        for name, imported in graph.items()
    }
    assert {name: tests for name, tests in found.items() if tests} == {}


# --- the walker, on a package made for it ------------------------------------------------------


PACKAGE = {
    # Imports its submodules, which import each other: no cycle through the package.
    "__init__.py": "from pkg.a import A\nfrom pkg.c import C\n\nNAME = 1\n",
    # `b` is a submodule: an edge to pkg.b.
    "a.py": "from pkg import b\n\nA = 1\n",
    # Inside a function: still an edge, and a cycle with a.
    "b.py": "def f():\n    from pkg.a import A\n    return A\n",
    # NAME is the package's own: an edge to pkg, a cycle since pkg imports c.
    "c.py": "from pkg import NAME\n\nC = NAME\n",
    # Under TYPE_CHECKING: no edge, so no cycle with e.
    "d.py": (
        "from typing import TYPE_CHECKING\n\nfrom pkg.a import A\n\n"
        "if TYPE_CHECKING:\n    from pkg.e import E\n\nD = A\n"
    ),
    "e.py": "import pkg.d\n\nE = pkg.d.D\n",
    # Relative imports, from a subpackage.
    "sub/__init__.py": "from . import x\n",
    "sub/x.py": "from .. import a\nfrom ..d import D\nimport json\n",
    "demo/__init__.py": "",
    "demo/cli.py": "from pkg.sub import x\n",
    "cli.py": "def demo():\n    from pkg.demo.cli import main\n",
    "runner.py": "import pkg.demo\n",
}


@pytest.fixture
def made(tmp_path: Path) -> Graph:
    for name, text in PACKAGE.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "pkg")


def test_the_walker_reads_each_kind_of_import(made: Graph) -> None:
    assert made == {
        "pkg": {"pkg.a", "pkg.c"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.a"},
        "pkg.c": {"pkg"},
        "pkg.d": {"pkg.a"},
        "pkg.e": {"pkg.d"},
        "pkg.sub": {"pkg.sub.x"},
        "pkg.sub.x": {"pkg.a", "pkg.d"},
        "pkg.demo": set(),
        "pkg.demo.cli": {"pkg.sub.x"},
        "pkg.cli": {"pkg.demo.cli"},
        "pkg.runner": {"pkg.demo"},
    }


def test_the_walker_names_each_cycle(made: Graph) -> None:
    assert cycles(made) == ["pkg -> pkg.c -> pkg", "pkg.a -> pkg.b -> pkg.a"]
    # One knot of three modules: a shortest cycle through each of them.
    assert cycles({"x": {"y"}, "y": {"z", "x"}, "z": {"x"}}) == ["x -> y -> x", "x -> y -> z -> x"]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_walker_finds_who_imports_the_demo(made: Graph) -> None:
    assert demo_importers(made, "pkg.demo") == {"pkg.cli", "pkg.runner"}
