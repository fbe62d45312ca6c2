"""The import layers, read from the source: `sae` <- the benchmark core <- the domains <- the commands. A lower
layer never imports a higher one, and the shapes world is reached only through the domain registry."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"benchmark.cli", "benchmark.__main__", "benchmark.paper", "benchmark.build_suites"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module the file imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            target = f"{base}.{module}".strip(".") if node.level else module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def layer(module: str) -> int:
    if module == "sae" or module.startswith("sae."):
        return 0
    if module in COMMANDS:
        return 3
    if module == "benchmark.natural" or module.startswith("benchmark.shapes"):
        return 2
    if module.startswith("benchmark"):
        return 1
    return -1  # not ours


def test_no_module_imports_a_higher_layer():
    files = sorted((ROOT / "sae").rglob("*.py")) + sorted((ROOT / "benchmark").rglob("*.py"))
    assert len(files) > 30
    upward = []
    for path in files:
        here = module_name(path)
        for target in imports(path):
            if layer(target) > layer(here):
                upward.append(f"{here} imports {target}")
    assert not upward, "\n".join(upward)


def test_the_shapes_world_is_reached_only_through_the_domain_registry():
    outside = [path for path in sorted((ROOT / "benchmark").rglob("*.py")) + sorted((ROOT / "sae").rglob("*.py"))
               if "shapes" not in path.relative_to(ROOT).parts]
    reaching = [f"{module_name(p)} imports {t}" for p in outside for t in imports(p)
                if t.startswith("benchmark.shapes")]
    assert not reaching, "\n".join(reaching)


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports (at its top or inside a function)."""
    files = sorted((ROOT / "sae").rglob("*.py")) + sorted((ROOT / "benchmark").rglob("*.py"))
    ours = {module_name(p) for p in files}
    return {module_name(p): {t for t in imports(p) if t in ours and t != module_name(p)} for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, as the modules along it, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node):
        state[node], path[len(path):] = "open", [node]
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        path.pop()
        return None

    return next(filter(None, (visit(n) for n in sorted(graph) if n not in state)), None)


def test_no_import_circle():
    """A module never imports, even inside a function, a module that imports it back: a metric adds its report
    section through `Metric.report_section`, not by the report importing the metric's code."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_reader_sees_relative_and_function_level_imports(tmp_path):
    """The checks above would pass vacuously if imports were missed: read a known file."""
    found = imports(ROOT / "benchmark" / "generate.py")
    assert {"benchmark.methods", "benchmark.domains", "sae.models", "benchmark.report"} <= found
    assert "benchmark.html_report" in found  # imported inside a function
