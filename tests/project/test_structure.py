"""Structure checks over quark_lightning/ and callbacks/ (static, `ast` only, nothing imported).

- No import cycles, neither at module level nor through imports inside functions.
- Layer rules: `infra` imports nothing of ours outside `infra` (and `infra.errors` nothing at all);
  `data` never imports `scorers`; only the application layer (`cli`, `stages`, `evaluation`) imports
  `cli`; the library never imports `callbacks` (callbacks drive the library, not the reverse).
- No twin module names: two modules of the library or the callbacks never share a file name.
- Size: no function over MAX_FUNCTION_LINES lines, no module over MAX_MODULE_LINES lines (the modules in
  MODULES_LEFT_TO_SPLIT are the known exceptions: each is listed with its size, may only shrink, and
  leaves the list once under the limit), `GRPOModule` at most 300 lines and 15 methods and its
  `training_step` at most 40 lines.
- Module-level cycles in detail: Only top-level imports count (those
  run when the module is imported: the module body, its `if`/`try`/`with` blocks and class bodies, but
  not `if TYPE_CHECKING:` blocks nor imports inside functions and methods, which run later and are the
  usual way to defer a dependency).
  `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`; importing
  `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so at module level those packages count as
  imported too (`with_parent_packages`).
- No function over MAX_FUNCTION_LINES lines (decorators excluded, docstring included); there are no
  exceptions, a long function fails by name.
- Our own imports sit at module level, where a reader sees them, except DEFERRED_IMPORTS (each with why).
- The tests mirror the package: every test file sits in `tests/<area>/`, where <area> is a subpackage of
  the library, `callbacks` or `benchmarks`, or one of CROSS_CUTTING (checks that span every area).

`python tests/project/test_structure.py` prints the cycles (also those through function-level imports)
and every long function.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "quark_lightning"
PACKAGES = (PACKAGE, "callbacks")  # the library and its Lightning callbacks (a top-level package)
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# Known modules over MAX_MODULE_LINES (issue 25, still to split): path -> lines when listed. A module may
# only shrink; under the limit it must leave the list; a module not listed over the limit fails.
MODULES_LEFT_TO_SPLIT: dict[str, int] = {}  # empty: every module is under the limit
APPLICATION = ("cli", "stages", "evaluation")  # the layer that wires everything; nothing below imports cli
# test folders that are no package area: bad and damaged input for every reader; the repository as a whole
CROSS_CUTTING = ("robustness", "project")
TEST_SUPPORT = ("fixtures", "scripts", "__pycache__")  # data files and subprocess scripts, not tests


# ---------------------------------------------------------------------------------------------- modules


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the packages (packages by __init__)."""
    out = {}
    for path in sorted(p for package in packages for p in (root / package).rglob("*.py")):
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
    return with_parent_packages(graph) if top_level_only else graph


def with_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing `a.b.c` first runs `a/__init__.py` and `a/b/__init__.py`: at import time a module also
    depends on the packages above each module it imports (not on its own packages, which are running)."""
    out = {}
    for module, targets in graph.items():
        edges = set(targets)
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in graph and not (module == parent or module.startswith(parent + ".")):
                    edges.add(parent)
        out[module] = edges
    return out


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


def layer(module: str) -> str:
    """quark_lightning.shaping.rfn -> shaping; callbacks.weighting -> callbacks."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import (module or function level) that breaks a layer rule, as 'a -> b (rule)'."""
    out = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            la, lb = layer(a), layer(b)
            if a == f"{PACKAGE}.infra.errors":
                out.append(f"{a} -> {b} (errors imports nothing of ours)")
            elif la == "infra" and lb != "infra":
                out.append(f"{a} -> {b} (infra imports only infra)")
            elif la == "data" and lb == "scorers":
                out.append(f"{a} -> {b} (data never imports scorers)")
            elif lb == "cli" and la not in APPLICATION:
                out.append(f"{a} -> {b} (only {'/'.join(APPLICATION)} import cli)")
            elif lb == "callbacks" and la != "callbacks":
                out.append(f"{a} -> {b} (the library never imports callbacks)")
    return out


def test_no_module_level_import_cycles():
    graph = import_graph(top_level_only=True)
    cycles = [" -> ".join(cycle_path(graph, c)) for c in import_cycles(graph)]
    assert not cycles, "module-level import cycles:\n  " + "\n  ".join(cycles)


def test_graph_sees_known_edges():
    """The analysis itself: a few edges that exist, and function-level ones that must not count."""
    top, everything = import_graph(True), import_graph(False)
    assert "quark_lightning.data.knowledge_base" in top["quark_lightning.scorers.retrieval"]
    assert "quark_lightning.stages.context" in top["quark_lightning.stages.kinds"]
    assert "quark_lightning.judges.local" in everything["quark_lightning.judges"]
    assert "quark_lightning.judges.local" not in top["quark_lightning.judges"]  # inside build_judge
    assert "quark_lightning.stages" in top["quark_lightning.cli.run"]  # runs stages/__init__.py
    assert "quark_lightning.data.calculators.definitions" in top["quark_lightning.data.calculators"]


def test_a_cycle_through_a_package_init_is_found():
    """cli.run -> stages.sft runs stages/__init__.py, which imports the runner; a runner that imported
    cli.run at module level would close a cycle that no explicit edge shows."""
    graph = {"p.cli.run": {"p.stages.sft"}, "p.stages": {"p.stages.runner"}, "p.stages.sft": set(),
             "p.stages.runner": {"p.cli.run"}, "p": set(), "p.cli": set()}  # fmt: skip
    assert import_cycles(graph) == []
    assert import_cycles(with_parent_packages(graph)) == [["p.cli.run", "p.stages", "p.stages.runner"]]


def test_pipeline_export_is_in_no_import_cycle_even_through_function_imports():
    """export -> runner -> stages -> export was a cycle (stages imports export inside a function): the
    shared types live in stages/context.py, so export imports neither the runner nor the stages."""
    graph = import_graph(top_level_only=False)
    cyclic = {m for component in import_cycles(graph) for m in component}
    assert "quark_lightning.stages.export" not in cyclic
    assert "quark_lightning.stages.kinds" not in cyclic
    assert graph["quark_lightning.stages.context"] == set()


# Imports of our own modules inside functions, each deferred on purpose: module -> imported -> why
DEFERRED_IMPORTS = {
    ("quark_lightning.cli.train", "quark_lightning.cli.run"): "--help and a bad override answer before torch loads",
    ("quark_lightning.cli.evaluate", "quark_lightning.evaluation.evaluate_models"): "the same, for evaluate.py",
    ("quark_lightning.judges", "quark_lightning.judges.openai_compatible"): "imports judges.client: a package cycle",
    ("quark_lightning.judges", "quark_lightning.judges.local"): "imports judges.client: a package cycle",
}


def function_level_imports() -> set[tuple[str, str]]:
    """(module, our module it imports) for every import inside a function or method."""
    files = module_files()
    out = set()
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top = {id(node) for node in _top_level_imports(tree)}
        for node in _all_imports(tree):
            if id(node) not in top and not _inside_type_checking(tree, node):
                out |= {(name, t) for t in _targets(node, name, path.name == "__init__.py", set(files))}
    return out


def _inside_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    return any(
        isinstance(node, ast.If) and _is_type_checking(node) and any(n is target for n in ast.walk(node))
        for node in ast.walk(tree)
    )


def test_our_imports_sit_at_module_level_unless_deferred_on_purpose():
    found = function_level_imports()
    assert not found - set(DEFERRED_IMPORTS), (
        f"imports of our modules inside functions: {sorted(found - set(DEFERRED_IMPORTS))}. Fix: move them to "
        "the top of the module (the cycle tests say if that makes a cycle), or list them in DEFERRED_IMPORTS "
        "with the reason"
    )
    assert not set(DEFERRED_IMPORTS) - found, f"no longer deferred: {sorted(set(DEFERRED_IMPORTS) - found)}"


def test_no_import_cycles_even_through_function_level_imports():
    graph = import_graph(top_level_only=False)
    cycles = [" -> ".join(cycle_path(graph, c)) for c in import_cycles(graph)]
    assert not cycles, "import cycles (function-level imports included):\n  " + "\n  ".join(cycles)


def test_layer_rules_hold_for_every_import():
    broken = layer_violations(import_graph(top_level_only=False))
    assert not broken, "imports against the layer rules:\n  " + "\n  ".join(broken)


def test_layer_rules_catch_a_wrong_way_import():
    graph = {
        f"{PACKAGE}.infra.errors": {f"{PACKAGE}.infra.text"},
        f"{PACKAGE}.data.schema": {f"{PACKAGE}.scorers.text"},
        f"{PACKAGE}.shaping.rfn": {f"{PACKAGE}.cli.run", "callbacks.weighting"},
        f"{PACKAGE}.stages.kinds": {f"{PACKAGE}.cli.run"},  # the application layer may
    }
    assert [v.split(" (")[1] for v in layer_violations(graph)] == [
        "data never imports scorers)",
        "errors imports nothing of ours)",
        "the library never imports callbacks)",
        "only cli/stages/evaluation import cli)",
    ]


def twin_names(files: dict[str, Path]) -> dict[str, list[str]]:
    """File name -> the modules that share it (package __init__ / __main__ files excluded)."""
    by_name: dict[str, list[str]] = {}
    for name, path in files.items():
        if path.name not in ("__init__.py", "__main__.py"):
            by_name.setdefault(path.stem, []).append(name)
    packages = {name.rsplit(".", 1)[-1] for name, path in files.items() if path.name == "__init__.py"}
    return {k: v for k, v in by_name.items() if len(v) > 1 or k in packages}


def test_no_twin_module_names():
    twins = twin_names(module_files())
    assert not twins, f"modules that share a name (rename one): {twins}"


def test_twin_finder():
    files = {"p.a.base": Path("p/a/base.py"), "p.b.base": Path("p/b/base.py"), "p.c": Path("p/c/__init__.py"),
             "p.d.c": Path("p/d/c.py"), "p.d.e": Path("p/d/e.py")}  # fmt: skip
    assert twin_names(files) == {"base": ["p.a.base", "p.b.base"], "c": ["p.d.c"]}


def module_lines() -> dict[str, int]:
    return {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in module_files().values()
    }


def test_no_long_modules():
    lines = module_lines()
    new = {m: n for m, n in lines.items() if n > MAX_MODULE_LINES and m not in MODULES_LEFT_TO_SPLIT}
    grew = {m: (n, lines.get(m)) for m, n in MODULES_LEFT_TO_SPLIT.items() if lines.get(m, 0) > n}
    done = [m for m in MODULES_LEFT_TO_SPLIT if lines.get(m, 0) <= MAX_MODULE_LINES]
    assert not new, f"modules over {MAX_MODULE_LINES} lines (split them): {new}"
    assert not grew, f"modules left to split grew (listed, now): {grew}"
    assert not done, f"under {MAX_MODULE_LINES} lines now, drop from MODULES_LEFT_TO_SPLIT: {done}"


def test_grpo_module_is_the_step():
    path = ROOT / PACKAGE / "grpo" / "grpo_module.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GRPOModule"]
    methods = {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    step = methods["training_step"]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 300
    assert len(methods) <= 15, sorted(methods)
    assert step.end_lineno - step.lineno + 1 <= 40


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


# ------------------------------------------------------------------------------------- tests mirror it
def layout_problems(root: Path = ROOT) -> list[str]:
    """Test files that are not in a folder named after what they test (see the module docstring)."""
    areas = {p.parent.name for p in (root / PACKAGE).glob("*/__init__.py")} | {"callbacks", "benchmarks"}
    tests = root / "tests"
    problems = [f"{p.relative_to(root)}: move it into tests/<area>/" for p in sorted(tests.glob("test_*.py"))]
    for folder in sorted(p for p in tests.iterdir() if p.is_dir() and p.name not in TEST_SUPPORT):
        if folder.name not in areas and folder.name not in CROSS_CUTTING:
            problems.append(f"{folder.relative_to(root)}/: no package area of that name; use one of {sorted(areas)}")
        problems += [f"{p.relative_to(root)}: tests live one folder deep" for p in sorted(folder.glob("*/test_*.py"))]
    return problems


def test_tests_mirror_the_package():
    problems = layout_problems()
    assert not problems, "\n".join(problems)
    assert len(list((ROOT / "tests").glob("*/test_*.py"))) > 50  # the glob sees the moved files


def test_layout_finder(tmp_path):
    (tmp_path / PACKAGE / "shaping").mkdir(parents=True)
    (tmp_path / PACKAGE / "shaping" / "__init__.py").write_text("")
    for path in ("tests/test_loose.py", "tests/shaping/test_ok.py", "tests/misc/test_x.py", "tests/project/test_y.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    problems = layout_problems(tmp_path)
    assert [p.split(":")[0] for p in problems] == ["tests/test_loose.py", "tests/misc/"]
