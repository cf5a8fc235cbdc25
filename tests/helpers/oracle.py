"""Rerankers for the command tests, given to `mmrerank rerank --reranker` by import path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import Qrels
from mmrerank.rerankers.base import Reranker


class QrelsOracle(Reranker):
    """Knows the answers: a pair scores its grade in `qrels` (by the task's ids), 0 when unjudged.

    It reads ids, never items, so it ranks right only when the command pairs the run's rows and candidates with the
    right queries and documents.

    Args:
        qrels: a TREC qrels file.
        calls: a file that gets one line per scored query (to count work across runs), or None.
        fail_after: raise after scoring this many batches (an interruption), or None.
    """

    def __init__(self, qrels: str, calls: str | None = None, fail_after: int | None = None) -> None:
        self.judged = Qrels.read_trec(qrels).to_dict()
        self.calls, self.fail_after, self.batches = calls, fail_after, 0

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        raise TypeError("QrelsOracle scores by id: rerank a run")

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.batches += 1
        qids = [task.queries.ids[int(q)] for q in query_rows]
        if self.calls:
            with open(self.calls, "a") as f:
                f.writelines(f"{q}\n" for q in dict.fromkeys(qids))
        return torch.tensor([float(self.judged.get(q, {}).get(task.corpus.ids[int(d)], 0))
                             for q, d in zip(qids, candidate_rows)])


class Exploding(Reranker):
    """Fails when built: a command that builds it has not stopped before loading the model."""

    def __init__(self, note: str = "") -> None:
        raise RuntimeError("the reranker was built")

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        raise NotImplementedError


class Brightness(Reranker):
    """Scores a candidate image by its mean pixel value (0..255): which page or image a command handed over is
    visible in the ranking."""

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        return torch.tensor([float(torch.tensor(list(c.convert("L").getdata()), dtype=torch.float).mean())
                             for c in candidates])
