"""The layout rules of docs/architecture.md, checked on the source of ``ovrange/`` with ``ast`` (nothing is imported).

The import graph has one arrow per ``import``/``from ... import`` of an ``ovrange`` module, wherever the statement
sits: module level and inside functions both count (a function-level import is a run-time dependency too; only
blocks under ``if TYPE_CHECKING:`` are left out, they never run). ``from ovrange.pkg import name`` points at the
submodule ``ovrange.pkg.name`` when there is one, else at the package. Importing a submodule also runs its
package's ``__init__``; that implicit arrow is not drawn, so a package that re-exports its submodules is not a
cycle by itself. Modules found by name at run time (``importlib.import_module`` in the algorithm registry) are
lookups, not arrows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ovrange"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of ovrange."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            resolved = _resolve(target) if target.startswith("ovrange") else None
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _sources() -> dict[str, str]:
    return {module: path.read_text(encoding="utf-8") for module, path in MODULES.items()}


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_import_graph_sees_function_level_imports():
    # protect.run_chain imports ovrange.quantize inside the function
    assert "ovrange.quantize" in GRAPH["ovrange.protect"]
    assert "ovrange.errors" in GRAPH["ovrange.runtime"]


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_core_is_made_only_by_the_runtime():
    makers = [m for m, text in _sources().items() if re.search(r"\bCore\(\)", text)]
    assert makers == ["ovrange.runtime"]


def test_one_target_class():
    owners = [m for m, text in _sources().items() if re.search(r"^class Target\b", text, re.MULTILINE)]
    assert len(owners) == 1, owners


def test_one_runner_class():
    runners = [(m, name) for m, text in _sources().items()
               for name in re.findall(r"^\s*class (\w*Runner)\b", text, re.MULTILINE)]
    assert runners == [("ovrange.runtime", "Runner")]


def test_passes_and_faults_do_not_import_protect():
    inside = [m for m in GRAPH if m in ("ovrange.passes", "ovrange.faults")
              or m.startswith(("ovrange.passes.", "ovrange.faults."))]
    offenders = sorted(m for m in inside if "ovrange.protect" in GRAPH[m])
    assert not offenders


def test_no_pass_imports_another_pass():
    # a pass module is a protection registered in the algorithm registry; shared helpers (guards, roles...) are not
    from ovrange.algorithms import PROTECTIONS

    passes = set(PROTECTIONS.values())
    arrows = sorted((m, d) for m in passes for d in GRAPH[m] if d in passes)
    assert not arrows


def test_no_module_over_the_limit():
    long = {m: n for m, text in _sources().items() if (n := len(text.splitlines())) > MAX_LINES}
    assert not long
