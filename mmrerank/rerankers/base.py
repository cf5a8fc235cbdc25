"""The reranker interface every family implements: score pairs; reranking a run is provided once, here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import PAD, Run


@dataclass
class RankedResults:
    """One query's candidates, best first: `order[i]` is a position in the input list, `scores[i]` its score."""

    order: list[int]
    scores: list[float]

    def top_k(self, k: int) -> RankedResults:
        return RankedResults(self.order[:k], self.scores[:k])


class Reranker(ABC):
    """Scores (query, candidate) pairs; `rerank` reorders a first-stage `Run` with those scores."""

    @abstractmethod
    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """Relevance of each pair: `queries[i]` with `candidates[i]` (texts, PIL images, ...) -> `[B]` float."""

    def rank(self, query: Any, candidates: Sequence[Any]) -> RankedResults:
        """Rank `candidates` for a single `query`; ties keep input order."""
        scores = self.score([query] * len(candidates), candidates).float().cpu()
        order = torch.sort(scores, descending=True, stable=True).indices
        return RankedResults(order.tolist(), scores[order].tolist())

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        """Scores of the pairs `(task.queries[query_rows[i]], task.corpus[candidate_rows[i]])`, `[B]`.

        `rerank` calls this; the default fetches the items and calls `score`. A family that keeps precomputed
        candidate data by id (EDJE's token store) or fuses in the first stage's scores (`first_stage`, `[B]`)
        overrides it.
        """
        return self.score([task.queries[int(i)] for i in query_rows], [task.corpus[int(d)] for d in candidate_rows])

    def rerank(self, run: Run, task: RetrievalTask, depth: int, batch_size: int = 256,
               progress: bool = True) -> Run:
        """Rescore each query's top `depth` candidates and sort them by the new scores.

        Each batch holds whole candidate lists (at least one query), so a query is never split. Candidates
        below `depth` keep their first-stage order after the reranked ones; their scores are placeholders
        strictly below the reranked scores (like LAVIS's sentinel), so the run stays sorted by score.

        Args:
            run: first-stage run `[Q, K]`, indexing `task.corpus`.
            task: gives the query and candidate items.
            depth: how many top candidates to rescore.
            batch_size: pairs per `score` call (rounded to whole queries).

        Returns:
            A run `[Q, K]` over the same candidates.
        """
        run = run.sorted()
        head, tail = run.indices[:, :depth], run.indices[:, depth:]
        new_scores = torch.full(head.shape, float("-inf"))
        per_batch = max(1, batch_size // max(depth, 1))
        for start in tqdm(range(0, len(run), per_batch), desc=f"reranking {task.name}", disable=not progress,
                          leave=False):
            rows = head[start:start + per_batch].cpu()
            q, c = (rows != PAD).nonzero(as_tuple=True)
            if len(q) == 0:
                continue
            first = run.scores[start:start + per_batch].cpu()[q, c]
            scores = self.score_rows(task, start + q, rows[q, c], first)
            new_scores[start + q, c] = scores.float().cpu()
        floor = new_scores.masked_fill(head.cpu() == PAD, float("inf")).min(dim=1, keepdim=True).values
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        tail_scores = floor - torch.arange(1, tail.shape[1] + 1, dtype=torch.float)
        scores = torch.cat([new_scores, tail_scores], dim=1).to(run.scores.device)
        return Run(torch.cat([head, tail], dim=1), scores, run.query_ids, run.doc_ids).sorted()
