"""Rerankers: the shared interface and the families built on it."""

from mmrerank.rerankers.base import RankedResults, Reranker

__all__ = ["RankedResults", "Reranker"]
