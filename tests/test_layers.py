"""The package's layers import only downward, and no module imports itself back (no import cycle).

Every `import` is read from the source (module level and inside functions alike: a deferred import is still a
dependency), so the check needs no import of the package and fails on the first upward edge or cycle. A string that
names an mmrerank module (`"mmrerank.rerankers.presets"` given to `importlib`, a `class_path`, a
`"module:function"`) is an import too: in code it is an edge of the module it is written in; in a packaged YAML
config, of the module that reads that key (`YAML_READERS`; the application layer by default).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

PACKAGE = Path(__file__).resolve().parents[1] / "mmrerank"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ("core", ["mmrerank.core", "mmrerank.metrics", "mmrerank.losses", "mmrerank.optim", "mmrerank.scaling"]),
    ("datasets", ["mmrerank.datasets"]),
    ("retrieval", ["mmrerank.retrieval"]),
    ("rerankers", ["mmrerank.rerankers"]),
    ("evaluation", ["mmrerank.evaluation"]),
    ("application", ["mmrerank.benchmark", "mmrerank.cli", "mmrerank.commands", "mmrerank.fitting",
                     "mmrerank.scaling.cli", "mmrerank.scaling.runner"]),
]
# A string naming an mmrerank module, optionally with an attribute (`mmrerank.a.b`, `mmrerank.a.b:f`, `mmrerank.a.B`).
DOTTED = re.compile(r"^mmrerank(\.\w+)+(:\w+)?$")
# YAML keys whose string is imported by a module below the application layer (the sweep's trainer is imported by
# `scaling.grid` when it is a dotted path): such a string must name something that module may import.
YAML_READERS = {"trainer": "mmrerank.scaling.grid"}
DEFAULT_READER = "mmrerank.cli"


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


def named_module(text: str, modules: set[str]) -> str | None:
    """The module a dotted string names: `a.b:f` -> `a.b`; `a.b.C` -> the longest prefix that is a module."""
    if not DOTTED.match(text):
        return None
    parts = text.split(":")[0].split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports(path: Path, modules: set[str], strings: bool = True) -> set[str]:
    """The mmrerank modules `path` imports (`from a import b` counts `a.b` when that is a module; a string constant
    naming a module counts as importing it)."""
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
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(named_module(node.value, modules) or "")
    return {m for m in found if m in modules and m != module_name(path)}


def graph(strings: bool = True) -> dict[str, set[str]]:
    """Module -> the mmrerank modules it imports; with `strings`, also those its string constants name."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # `mmrerank/__init__.py` is the public face (re-exports from every layer); nothing inside imports it.
    return {m: imports(p, modules, strings) - {"mmrerank"} for m, p in paths.items() if m != "mmrerank"}


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) is None] == []


def test_layers_import_only_downward():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []


def test_no_import_cycle():
    # import statements only: a module named by a string is imported (or run, as `python -m`) when the code runs, not
    # when its namer is imported, so it closes no import cycle (`scaling.runner` starts `scaling.cli` workers)
    edges = graph(strings=False)
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


def yaml_strings(value, key: str = "") -> list[tuple[str, str]]:
    """Every (key, string) pair of a parsed YAML document, nested ones and list items (under their list's key)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in yaml_strings(v, str(k))]
    if isinstance(value, list):
        return [pair for v in value for pair in yaml_strings(v, key)]
    return [(key, value)] if isinstance(value, str) else []


def config_imports(root: Path | None = None) -> list[str]:
    """Problems with the dotted strings of the packaged YAML configs: naming no module, or one above its reader."""
    root = root or PACKAGE / "configs"
    modules = set(graph())
    problems = []
    for path in sorted(root.rglob("*.yaml")):
        for key, text in yaml_strings(yaml.safe_load(path.read_text())):
            if not DOTTED.match(text):
                continue
            target, reader = named_module(text, modules), YAML_READERS.get(key, DEFAULT_READER)
            if target is None:
                problems.append(f"{path.relative_to(root)}: {key}: {text} names no mmrerank module")
            elif layer_of(target) > layer_of(reader):
                problems.append(f"{path.relative_to(root)}: {key}: {text} ({LAYERS[layer_of(target)][0]}) is imported "
                                f"by {reader} ({LAYERS[layer_of(reader)][0]})")
    return problems


def test_config_string_imports_name_modules_their_reader_may_import():
    assert config_imports() == []


def test_the_config_check_catches_a_string_import_above_its_reader(tmp_path):
    (tmp_path / "sweep.yaml").write_text("trainer: mmrerank.rerankers.edje.sweep:train_point\n"
                                         "model: {class_path: mmrerank.rerankers.edje.module.EDJEModule}\n"
                                         "data: {class_path: mmrerank.no_such.Module}\n")
    problems = config_imports(tmp_path)
    assert len(problems) == 2
    assert "is imported by mmrerank.scaling.grid" in problems[0] and "names no mmrerank module" in problems[1]


def test_a_string_import_in_code_is_an_edge(tmp_path, monkeypatch):
    fake = tmp_path / "mmrerank"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "core" / "grid.py").write_text("DEFAULT = 'mmrerank.benchmark:run'\n")
    (fake / "benchmark.py").write_text("")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert graph()["mmrerank.core.grid"] == {"mmrerank.benchmark"}
