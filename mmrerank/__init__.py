"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation).

The names a script usually needs: `Run` / `Qrels` (ranking data), `RetrievalIndex` (the faiss first stage),
`LateInteractionIndex` (multi-vector MaxSim), `evaluate` (metrics), `load_reranker` (published rerankers by hub id)
and `list_presets` (their names, by family).

Everything but `Run`, `Qrels` and `evaluate` is imported on first use (module `__getattr__`), so `import mmrerank`
does not load faiss or transformers' model code for a script that only reads runs and computes metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run

if TYPE_CHECKING:
    from mmrerank.rerankers.presets import list_presets, load_reranker
    from mmrerank.retrieval.index import RetrievalIndex
    from mmrerank.retrieval.late import LateInteractionIndex

# name -> the module that defines it, imported when the name is first read
_LAZY = {"RetrievalIndex": "mmrerank.retrieval.index", "LateInteractionIndex": "mmrerank.retrieval.late",
         "load_reranker": "mmrerank.rerankers.presets", "list_presets": "mmrerank.rerankers.presets"}

__all__ = ["LateInteractionIndex", "Qrels", "RetrievalIndex", "Run", "evaluate", "list_presets", "load_reranker"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmrerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
