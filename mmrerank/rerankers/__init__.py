"""Rerankers: the shared interface, the one fusion rule, and the families built on them.

Each family's benchmark rows (`EDJERows`, `MLLMRows`, `SuperGlobalRows`) is exported by its short `class_path`
name from `mmrerank.rerankers.family_rows` (importing it loads every family).
"""

from mmrerank.rerankers.base import RankedResults, Reranker
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.rows import RerankContext, RerankerRows

__all__ = ["Fused", "Memoized", "RankedResults", "RerankContext", "Reranker", "RerankerRows"]
