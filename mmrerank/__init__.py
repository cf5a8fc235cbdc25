"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation).

The names a script usually needs: `Run` / `Qrels` (ranking data), `RetrievalIndex` (the faiss first stage),
`evaluate` (metrics) and `load_reranker` (published rerankers by hub id).

`RetrievalIndex` and `load_reranker` are imported on first use (module `__getattr__`), so `import mmrerank` does not
load faiss or transformers' model code for a script that only reads runs and computes metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run

if TYPE_CHECKING:
    from mmrerank.rerankers.presets import load_reranker
    from mmrerank.retrieval.index import RetrievalIndex

# name -> the module that defines it, imported when the name is first read
_LAZY = {"RetrievalIndex": "mmrerank.retrieval.index", "load_reranker": "mmrerank.rerankers.presets"}

__all__ = ["Qrels", "RetrievalIndex", "Run", "evaluate", "load_reranker"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmrerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
