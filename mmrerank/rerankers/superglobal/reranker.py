"""SuperGlobal's reranking as a `Reranker`: the refinement reorders each query's shortlist of a first-stage run.

It refines descriptors of whole shortlists at once (query expansion and database-side aggregation over the
top-M), so it is a `ListwiseReranker`: it implements `rerank` rather than scoring pairs one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmrerank.core.deprecation import renamed_arguments
from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import PAD, Run
from mmrerank.rerankers.base import ListwiseReranker, Reranker
from mmrerank.rerankers.rows import RerankContext, RerankerRows
from mmrerank.rerankers.superglobal.rerank import rerank_candidates


class SuperGlobalReranker(ListwiseReranker):
    """Reorders the top `rerank_depth` of a run over `database` descriptors (the run's corpus rows index them).

    Args:
        queries: `[Q, d]`, database: `[N, d]` unit-norm descriptors (the run's query and corpus rows).
        k, beta: SuperGlobal's neighbourhood size and weight.
    """

    def __init__(self, queries: Tensor, database: Tensor, k: int = 9, beta: float = 0.15) -> None:
        self.queries, self.database, self.k, self.beta = queries, database, k, beta

    @renamed_arguments(depth="rerank_depth")
    def rerank(self, run: Run, task: RetrievalTask, rerank_depth: int, batch_size: int = 256, progress: bool = True,
               nonfinite: str = "error") -> Run:
        """The run with each query's top `rerank_depth` reordered; the rest keep their first-stage order below."""
        run = run.sorted()
        head, tail = run.indices[:, :rerank_depth], run.indices[:, rerank_depth:]
        if bool((head == PAD).any()):
            raise ValueError("SuperGlobal needs full shortlists: every query's run must hold `rerank_depth` "
                             "candidates")
        new_head = rerank_candidates(self.queries, self.database, head.to(self.database.device), self.k,
                                     self.beta).to(run.indices.device)
        indices = torch.cat([new_head, tail], dim=1)
        # Scores only carry the new order (SuperGlobal ranks; it does not score pairs): K, K - 1, ..., 1.
        scores = torch.arange(indices.shape[1], 0, -1, dtype=torch.float, device=indices.device)
        return Run(indices, scores.expand(len(indices), -1).contiguous(), run.query_ids, run.doc_ids)


@dataclass
class SuperGlobalRows(RerankerRows):
    """The `+ rerank` row of an image-to-image benchmark (descriptors come from the task's features).

    Attributes:
        name: the row's name.
        k, beta: as for `SuperGlobalReranker`.
    """

    name: str = "SuperGlobal pooling + rerank"
    k: int = 9
    beta: float = 0.15

    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        if context.kind != "image-to-image":
            return {}
        return {self.name: SuperGlobalReranker(context.features["queries"], context.features["database"], self.k,
                                               self.beta)}
