"""The package's layers import only downward, and no module imports itself back (no import cycle).

Every `import` is read from the source (module level and inside functions alike: a deferred import is still a
dependency), so the check needs no import of the package and fails on the first upward edge or cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmrerank"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ("core", ["mmrerank.core", "mmrerank.metrics", "mmrerank.losses", "mmrerank.optim", "mmrerank.scaling"]),
    ("datasets", ["mmrerank.datasets"]),
    ("retrieval", ["mmrerank.retrieval"]),
    ("rerankers", ["mmrerank.rerankers"]),
    ("evaluation", ["mmrerank.evaluation"]),
    ("application", ["mmrerank.benchmark", "mmrerank.cli", "mmrerank.commands", "mmrerank.fitting",
                     "mmrerank.scaling.cli"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The layer of a module: its longest matching prefix (`mmrerank.scaling.cli` beats `mmrerank.scaling`)."""
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    return level


def imports(path: Path, modules: set[str]) -> set[str]:
    """The mmrerank modules `path` imports (`from a import b` counts `a.b` when that is a module)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: up `level - 1` packages from this one
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # `mmrerank/__init__.py` is the public face (re-exports from every layer); nothing inside imports it.
    return {m: imports(p, modules) - {"mmrerank"} for m, p in paths.items() if m != "mmrerank"}


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) is None] == []


def test_layers_import_only_downward():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(edges.get(module, ())):
            if dep.startswith(module + ".") and _is_package(module):
                continue  # a package's __init__ re-exporting its own submodules is no cycle
            if state.get(dep) == 1:
                return path + [module, dep]
            if state.get(dep) is None and (cycle := visit(dep, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(edges):
        if state.get(module) is None and (cycle := visit(module, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):]))


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a fake package whose core imports the benchmark is flagged."""
    fake = tmp_path / "mmrerank"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "core" / "run.py").write_text("def f():\n    from mmrerank.benchmark import benchmark\n")
    (fake / "benchmark.py").write_text("from mmrerank.core.run import f\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    edges = graph()
    assert edges["mmrerank.core.run"] == {"mmrerank.benchmark"}
    with pytest.raises(AssertionError):
        test_layers_import_only_downward()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
