"""Structure checks over quark_lightning/ (static, `ast` only, nothing imported).

- No module-level import cycles among quark_lightning modules. Only top-level imports count (those
  run when the module is imported: the module body, its `if`/`try`/`with` blocks and class bodies, but
  not `if TYPE_CHECKING:` blocks nor imports inside functions and methods, which run later and are the
  usual way to defer a dependency).
  `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`; a package's
  parent packages are not counted (importing `a.b.c` also runs `a/__init__.py`, which is harmless
  here as long as the explicit edges have no cycle).
- No function over MAX_FUNCTION_LINES lines (decorators excluded, docstring included); there are no
  exceptions, a long function fails by name.

`python tests/test_import_graph.py` prints the cycles (also those through function-level imports)
and every long function.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "quark_lightning"
MAX_FUNCTION_LINES = 60


# ---------------------------------------------------------------------------------------------- modules


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the package (packages by __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run at import time: the module body, descending into if/try/with blocks and
    class bodies (which run on import), never into functions (methods included)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.ClassDef):
            stack.extend(node.body)
        elif isinstance(node, (ast.If, ast.Try, ast.With)) or type(node).__name__ == "TryStar":
            for block in ("body", "orelse", "finalbody"):
                stack.extend(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)


def _all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The quark_lightning modules one import statement loads (explicit targets only)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    out = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            out.add(f"{base}.{alias.name}")
        elif base in modules:
            out.add(base)
    return out


def import_graph(top_level_only: bool = True) -> dict[str, set[str]]:
    """module -> the quark_lightning modules it imports (at import time, or anywhere)."""
    files = module_files()
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if top_level_only:
            # `if TYPE_CHECKING:` blocks never run
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and _is_type_checking(node):
                    node.body = []
            nodes = _top_level_imports(tree)
        else:
            nodes = _all_imports(tree)
        is_package = path.name == "__init__.py"
        edges = set().union(*(_targets(n, name, is_package, modules) for n in nodes))
        graph[name] = edges - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle start -> ... -> start through the component's first module (for messages)."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return component  # not reached: every module of a component lies on a cycle


# ---------------------------------------------------------------------------------------------- functions


def long_functions(limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """'path:Qualified.name' -> lines, for every function (or method) longer than `limit` lines."""
    out = {}
    for path in module_files().values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(ROOT).as_posix()
        for qualname, node in _functions(tree.body, ""):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out[f"{rel}:{qualname}"] = lines
    return dict(sorted(out.items()))


def _functions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


# ---------------------------------------------------------------------------------------------- tests


def test_no_module_level_import_cycles():
    graph = import_graph(top_level_only=True)
    cycles = [" -> ".join(cycle_path(graph, c)) for c in import_cycles(graph)]
    assert not cycles, "module-level import cycles:\n  " + "\n  ".join(cycles)


def test_graph_sees_known_edges():
    """The analysis itself: a few edges that exist, and function-level ones that must not count."""
    top, everything = import_graph(True), import_graph(False)
    assert "quark_lightning.data.knowledge_base" in top["quark_lightning.scorers.retrieval"]
    assert "quark_lightning.stages.context" in top["quark_lightning.stages.kinds"]
    assert "quark_lightning.stages.kinds" in everything["quark_lightning.stages.runner"]
    assert "quark_lightning.stages.kinds" not in top["quark_lightning.stages.runner"]
    assert "quark_lightning.data.calculators.definitions" in top["quark_lightning.data.calculators"]


def test_pipeline_export_is_in_no_import_cycle_even_through_function_imports():
    """export -> runner -> stages -> export was a cycle (stages imports export inside a function): the
    shared types live in stages/context.py, so export imports neither the runner nor the stages."""
    graph = import_graph(top_level_only=False)
    cyclic = {m for component in import_cycles(graph) for m in component}
    assert "quark_lightning.stages.export" not in cyclic
    assert "quark_lightning.stages.kinds" not in cyclic
    assert graph["quark_lightning.stages.context"] == set()


def test_cycle_finder():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert cycle_path(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_long_functions():
    long = long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): " + ", ".join(
        f"{k} ({n})" for k, n in long.items()
    )


if __name__ == "__main__":
    for label, top_level in (("module-level", True), ("including function-level imports", False)):
        graph = import_graph(top_level)
        cycles = import_cycles(graph)
        print(f"import cycles, {label}: {len(cycles)}")
        for component in cycles:
            print(f"  {' -> '.join(cycle_path(graph, component))}   (component of {len(component)})")
    print(f"functions over {MAX_FUNCTION_LINES} lines:")
    for key, n in long_functions().items():
        print(f"  {n:4d}  {key}")
    sys.exit(0)
