"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation)."""

from mmrerank.core.run import Qrels, Run
from mmrerank.metrics import evaluate
from mmrerank.retrieval.index import RetrievalIndex

__all__ = ["Qrels", "RetrievalIndex", "Run", "evaluate"]
