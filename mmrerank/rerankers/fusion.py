"""The one fusion rule: a reranker's score plus `alpha` times the first stage's score of the same pair.

`normalize="none"` adds the raw first-stage score (a dual encoder's cosine, on one scale for every query);
`"minmax"` first maps each query's reranked first-stage scores to [0, 1] (BM25, whose scale varies by query).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mmrerank.core.items import RetrievalTask
from mmrerank.rerankers.base import Reranker

NORMALIZATIONS = ("none", "minmax")


class Fused(Reranker):
    """`reranker score + alpha * first-stage score` (per pair), then sorted as any reranker's run.

    Args:
        reranker: the reranker whose scores are fused.
        alpha: weight of the first-stage score (0: the reranker alone).
        normalize: `none` or `minmax` (per query, over its reranked candidates; 0 when they all tie).
    """

    def __init__(self, reranker: Reranker, alpha: float, normalize: str = "none") -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.reranker, self.alpha, self.normalize = reranker, alpha, normalize

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        raise TypeError("a fused score needs the first stage's scores: rerank a Run (`rerank`) instead")

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        scores = self.reranker.score_rows(task, query_rows, candidate_rows, first_stage).float().cpu()
        return scores + self.alpha * normalized(first_stage.float().cpu(), query_rows.cpu(), self.normalize)


def normalized(scores: Tensor, query_rows: Tensor, normalize: str) -> Tensor:
    """`[P]` first-stage scores of pairs, min-max scaled within each query's pairs when `normalize="minmax"`."""
    if normalize == "none":
        return scores
    _, group = torch.unique(query_rows, return_inverse=True)
    n = int(group.max()) + 1 if len(group) else 0
    low = torch.full((n,), float("inf")).scatter_reduce(0, group, scores, "amin")
    high = torch.full((n,), float("-inf")).scatter_reduce(0, group, scores, "amax")
    span = (high - low)[group]
    return torch.where(span > 0, (scores - low[group]) / span.clamp_min(1e-30), torch.zeros_like(scores))


class Memoized(Reranker):
    """Scores each (query, candidate) pair of a task once: a reranker's plain row and its fused rows share one
    `Memoized`, so fusing costs no second pass of the model."""

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker
        self._task: RetrievalTask | None = None
        self._scores: dict[tuple[int, int], float] = {}

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        return self.reranker.score(queries, candidates)

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        if task is not self._task:  # a new task: forget the last one's scores
            self._task, self._scores = task, {}
        keys = list(zip(query_rows.tolist(), candidate_rows.tolist()))
        missing = torch.tensor([i for i, key in enumerate(keys) if key not in self._scores], dtype=torch.long)
        if len(missing):
            new = self.reranker.score_rows(task, query_rows[missing], candidate_rows[missing], first_stage[missing])
            self._scores.update(zip((keys[i] for i in missing.tolist()), new.float().cpu().tolist()))
        return torch.tensor([self._scores[key] for key in keys], dtype=torch.float)
