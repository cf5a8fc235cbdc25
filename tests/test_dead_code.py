"""No dead code in `mmrerank/`: every top-level function and class, and every method, is referenced somewhere in the
package, a packaged config or `pyproject.toml` (entry points) -- not only from tests. A name the package keeps for
its users without calling it itself is listed in `ENTRY_POINTS`, with why.

The check is static (`ast`): a name counts as referenced when it appears as a name, an attribute, an imported name
outside a package's `__init__` re-export, or a word of a string (`getattr` / `class_path` by name) in another place
than its own definition. A method that a framework calls (Lightning's hooks, pickle's `find_class`) is named in
`FRAMEWORK_HOOKS`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmrerank"

# Methods called by the frameworks the classes plug into, never by name in this package.
FRAMEWORK_HOOKS = {
    "training_step", "validation_step", "test_step", "train_dataloader", "val_dataloader", "test_dataloader",
    "configure_optimizers", "setup", "on_save_checkpoint", "on_load_checkpoint",
    "on_train_start", "on_train_end", "on_train_batch_end", "before_fit", "after_fit",  # Lightning
    "find_class",  # pickle.Unpickler
    "extra_repr",  # torch.nn.Module's repr
}
# Public API kept for users (and scripts/) that the package itself does not call: name -> why.
ENTRY_POINTS = {
    "top_k": "RankedResults.top_k: the first k of a `rank` result, the public result type's own helper",
    "chat_text": "MLLMReranker.chat_text: the exact prompt a pair becomes, for users checking a template",
    "patch_tokens": "VisionTokenSource.patch_tokens: scripts/bench_edje_throughput.py reads a source's tokens",
    "pretrain_vlm": "rerankers.mllm.vision_pretrain.pretrain_vlm: scripts/pretrain_mllm_vision.py's entry point",
    # tiny VLM embedders in their real formats, public for offline use (as `build_tiny_vlm`); issue 29's parity
    # fixtures build them (retrieval/vlm/tiny.py)
    "build_tiny_dse": "a tiny DSE-Qwen2 embedder folder", "build_tiny_colqwen2": "a tiny ColQwen2 folder",
    "build_tiny_qwen3_vl_embedding": "a tiny Qwen3-VL-Embedding folder", "build_tiny_colpali": "a tiny ColPali folder",
}


def definitions(path: Path) -> list[tuple[str, str, int]]:
    """(name, owner class or "", line) of each top-level function / class and each method of a top-level class."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, "", node.lineno))
            if isinstance(node, ast.ClassDef):
                out += [(sub.name, node.name, sub.lineno) for sub in node.body
                        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def references(root: Path = PACKAGE, extra: list[Path] | None = None) -> dict[str, set[str]]:
    """Name -> the files (and `file:line` of the node) that use it, from code, configs and pyproject.toml."""
    used: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        used.setdefault(name, set()).add(where)

    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Name):
                add(node.id, where)
            elif isinstance(node, ast.Attribute):
                add(node.attr, where)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for word in re.findall(r"[A-Za-z_]\w*", node.value):
                    add(word, where)
            elif isinstance(node, ast.ImportFrom) and path.name != "__init__.py":
                for alias in node.names:
                    add(alias.name, where)
    for path in [*root.rglob("*.yaml"), *(extra if extra is not None else [ROOT / "pyproject.toml"])]:
        for word in re.findall(r"[A-Za-z_]\w*", path.read_text()):
            add(word, str(path))
    return used


def unreferenced(root: Path = PACKAGE, extra: list[Path] | None = None) -> list[str]:
    used = references(root, extra)
    dead = []
    for path in sorted(root.rglob("*.py")):
        for name, owner, line in definitions(path):
            if name.startswith("__") or name in FRAMEWORK_HOOKS or name in ENTRY_POINTS:
                continue
            # the definition's own line is not a use (a decorator or a recursive call on another line is)
            if not used.get(name, set()) - {f"{path}:{line}"}:
                dead.append(f"{path.relative_to(root.parent)}:{line} {owner + '.' if owner else ''}{name}")
    return dead


def test_every_definition_is_referenced_outside_tests():
    assert unreferenced() == []


def test_entry_points_are_still_defined():
    defined = {name for path in PACKAGE.rglob("*.py") for name, _, _ in definitions(path)}
    assert set(ENTRY_POINTS) <= defined


def test_the_check_finds_a_function_only_tests_call(tmp_path):
    package = tmp_path / "mmrerank"
    package.mkdir()
    (package / "__init__.py").write_text("from mmrerank.a import used, unused\n")
    (package / "a.py").write_text("def used():\n    return helper()\n\ndef helper():\n    return 1\n\n"
                                  "def unused():\n    return 2\n\nclass C:\n    def m(self):\n        return 3\n")
    (package / "b.py").write_text("from mmrerank.a import used\nused()\n")
    assert unreferenced(package, extra=[]) == ["mmrerank/a.py:7 unused", "mmrerank/a.py:10 C",
                                              "mmrerank/a.py:11 C.m"]
