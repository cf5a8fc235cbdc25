"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation).

The names a script usually needs: `Run` / `Qrels` (ranking data), `RetrievalIndex` (the faiss first stage),
`evaluate` (metrics), `load_reranker` (published rerankers by hub id) and `list_presets` (their names, by family).
"""

from mmrerank.core.run import Qrels, Run
from mmrerank.metrics import evaluate
from mmrerank.rerankers.presets import list_presets, load_reranker
from mmrerank.retrieval.index import RetrievalIndex

__all__ = ["Qrels", "RetrievalIndex", "Run", "evaluate", "list_presets", "load_reranker"]
