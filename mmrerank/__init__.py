"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation).

The names a script usually needs: `Run` / `Qrels` (ranking data), `RetrievalIndex` (the faiss first stage),
`LateInteractionIndex` (multi-vector MaxSim), `evaluate` (metrics), `load_reranker` (published rerankers by hub id)
and `list_presets` (their names, by family).
"""

from mmrerank.core.run import Qrels, Run
from mmrerank.metrics import evaluate
from mmrerank.rerankers.presets import list_presets, load_reranker
from mmrerank.retrieval.index import RetrievalIndex
from mmrerank.retrieval.late import LateInteractionIndex

__all__ = ["LateInteractionIndex", "Qrels", "RetrievalIndex", "Run", "evaluate", "list_presets", "load_reranker"]
