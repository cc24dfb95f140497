"""The package's imports point forward only: no module of `attngen/` takes part in an import cycle.

The pipeline is spec → ir → analysis → codegen → runtime → cli/api; a later stage may import an
earlier one, never the reverse, so the module graph has no cycle. The check reads the source with
`ast` and imports nothing: a cycle hidden behind a function-level import ("look it up at call
time") is still a cycle in the design, and it is found here too.

Edges, from each module to the modules of the package it imports:
- `import a.b.c` → `a.b.c`; `from a.b import c` → `a.b.c` when that is a module, else `a.b` (its
  `__init__`). Relative imports are resolved against the importing module's package. The parent
  packages that Python runs on the way (`a`, `a.b`) are not edges: every submodule would otherwise
  "import" the package that re-exports it.
- Imports anywhere in a module count: at module level, inside functions and methods, in `try`.
  The bodies of `if TYPE_CHECKING:` are left out: they never run, they serve type checkers only.
- A lazy table: a module-level dict literal `_LAZY = {name: ".relative.module"}` that
  `__getattr__` feeds to `importlib.import_module` (attngen/__init__.py). Those imports run on
  first attribute access, exactly like a function-level import, so each value is an edge; this
  keeps `import attngen` light without hiding where the facade reaches. Any other
  `importlib.import_module`/`__import__` call fails the check unless its argument is a literal
  string (then it is an edge): a dynamic import the checker cannot read must not pass unseen.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "attngen"
LAZY_TABLE = "_LAZY"


@dataclass(frozen=True)
class Edge:
    source: str             # the importing module
    target: str             # the imported module of the package
    where: str              # "path:line" of the import statement


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    parts = _package_of(module, path).split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{path}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module of the package (None: not ours)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


class _Collector(ast.NodeVisitor):
    """Every import statement of one module (at any depth), as (absolute target, line)."""

    def __init__(self, module: str, path: Path, modules: dict[str, Path]):
        self.module, self.path, self.modules = module, path, modules
        self.found: list[tuple[str, int]] = []
        self.problems: list[str] = []
        self.lazy_table_seen = False

    def _add(self, name: str, line: int) -> None:
        target = _known(name, self.modules)
        if target is not None and (target, line) not in self.found:    # one per statement
            self.found.append((target, line))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:       # an `else:` of `if TYPE_CHECKING` does run
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, self.path, node.level, node.module)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else base, node.lineno)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id == LAZY_TABLE for t in node.targets):
            table = ast.literal_eval(node.value)
            self.lazy_table_seen = True
            for relative in table.values():
                self._add(_absolute(self.module, self.path, 1, relative), node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                level = len(arg.value) - len(arg.value.lstrip("."))
                self._add(_absolute(self.module, self.path, level, arg.value[level:] or None), node.lineno)
            else:
                self.problems.append(f"{self.path}:{node.lineno}")
        self.generic_visit(node)


def import_edges(root: Path) -> tuple[list[Edge], list[str]]:
    """The package's import edges, and the dynamic imports the checker could not read."""
    modules = module_names(root)
    edges, unreadable = [], []
    for module, path in modules.items():
        collector = _Collector(module, path, modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        where = path.relative_to(root.parent)
        edges += [Edge(module, target, f"{where}:{line}") for target, line in collector.found]
        # A dynamic import is accepted only where a lazy table names what it loads.
        if not collector.lazy_table_seen:
            unreadable += collector.problems
    return edges, unreadable


def import_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """The edges inside each strongly connected component of more than one module."""
    graph = nx.DiGraph()
    graph.add_edges_from((e.source, e.target) for e in edges if e.source != e.target)
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycles.append(sorted((e for e in edges if e.source in component and e.target in component
                                  and e.source != e.target), key=lambda e: (e.source, e.where)))
    return sorted(cycles, key=lambda c: c[0].source)


def describe(cycles: list[list[Edge]]) -> str:
    lines = []
    for cycle in cycles:
        modules = sorted({e.source for e in cycle})
        lines.append(f"cycle through {len(modules)} modules: {', '.join(modules)}")
        lines += [f"    {e.where}: {e.source} imports {e.target}" for e in cycle]
    return "\n".join(lines)


def test_attngen_has_no_import_cycle():
    edges, unreadable = import_edges(PACKAGE_ROOT)
    assert not unreadable, f"dynamic imports the cycle check cannot read: {unreadable}"
    cycles = import_cycles(edges)
    if cycles:
        pytest.fail("import cycles in attngen/ (imports must point forward only):\n" + describe(cycles),
                    pytrace=False)


def test_the_checker_reads_the_package():
    """The walk finds what we know is there, so an empty graph cannot pass the check above."""
    edges, _ = import_edges(PACKAGE_ROOT)
    pairs = {(e.source, e.target) for e in edges}
    assert ("attngen.api", "attngen.codegen.emit") in pairs          # from .codegen.emit import generate
    assert ("attngen", "attngen.api") in pairs                       # the lazy table
    assert ("attngen.cli.main", "attngen") in pairs                  # function-level: from .. import __version__
    assert ("attngen.spec.parse", "attngen.spec.predicates") in pairs  # from . import predicates


# --- the checker on a synthetic package -------------------------------------------------------------

def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "toy"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "early.py": """\
            def late_value():
                from .late import VALUE      # at call time: still a cycle
                return VALUE
            """,
        "late.py": "from toy import early\nVALUE = 1\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from .. import early\n",
    })
    edges, unreadable = import_edges(package)
    assert unreadable == []
    cycles = import_cycles(edges)
    assert [[(e.source, e.target, e.where) for e in c] for c in cycles] == [[
        ("toy.early", "toy.late", "toy/early.py:2"),
        ("toy.late", "toy.early", "toy/late.py:1"),
    ]]
    assert "toy/early.py:2: toy.early imports toy.late" in describe(cycles)


def test_checker_ignores_type_checking_imports_and_self_loops(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "from . import helper\nNAME = 1\nfrom . import NAME\n",   # a self-loop
        "helper.py": """\
            from typing import TYPE_CHECKING
            import typing
            if TYPE_CHECKING:
                from .user import User
            if typing.TYPE_CHECKING:
                from . import user
            """,
        "user.py": "from .helper import TYPE_CHECKING\n",
    })
    edges, _ = import_edges(package)
    assert {(e.source, e.target) for e in edges} == {
        ("toy", "toy.helper"), ("toy", "toy"), ("toy.user", "toy.helper")}
    assert import_cycles(edges) == []


def test_checker_follows_lazy_tables_and_refuses_unreadable_dynamic_imports(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": """\
            import importlib
            _LAZY = {"run": "engine"}
            def __getattr__(name):
                return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
            """,
        "engine.py": "import toy\nimport importlib\nplugin = importlib.import_module(NAME)\n",
    })
    edges, unreadable = import_edges(package)
    assert {(e.source, e.target) for e in edges} == {("toy", "toy.engine"), ("toy.engine", "toy")}
    assert unreadable == [f"{package / 'engine.py'}:3"]
    assert [sorted({e.source for e in c}) for c in import_cycles(edges)] == [["toy", "toy.engine"]]
