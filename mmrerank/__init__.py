"""mmrerank: multimodal reranking research codebase (first stage, rerankers, metrics, evaluation)."""

from mmrerank.data.run import Qrels, Run
from mmrerank.index import RetrievalIndex
from mmrerank.metrics import evaluate

__all__ = ["Qrels", "RetrievalIndex", "Run", "evaluate"]
