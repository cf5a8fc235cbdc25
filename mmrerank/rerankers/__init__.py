"""Rerankers: the shared interface, the one fusion rule, and the families built on them.

Each family's benchmark spec (`EDJERows`, `MLLMRows`, `SuperGlobalRows`) is exported by its short `class_path`
name from `mmrerank.rerankers.specs` (importing it loads every family).
"""

from mmrerank.rerankers.base import RankedResults, Reranker
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.spec import RerankContext, RerankerSpec

__all__ = ["Fused", "Memoized", "RankedResults", "RerankContext", "Reranker", "RerankerSpec"]
