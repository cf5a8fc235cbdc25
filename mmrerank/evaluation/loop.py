"""The evaluation loop, the one path every benchmark row takes: a first-stage run -> each reranker's `rerank` ->
the task scores each run (`RetrievalTask.measure`) -> rows of a `Report`.

Under `torch.distributed` each rank reranks a share of the queries and the runs are gathered, so every rank ends
with the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from mmrerank.core import distributed
from mmrerank.core.deprecation import renamed_arguments, renamed_function
from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import PAD, Run
from mmrerank.evaluation.report import Report
from mmrerank.rerankers.base import ListwiseReranker, Reranker

DEFAULT_MEASURES = ("Success@1", "Success@5", "Success@10", "nDCG@10")
FIRST_STAGE = "first stage"


def rerank_sharded(reranker: Reranker, run: Run, task: RetrievalTask, rerank_depth: int, batch_size: int,
                   progress: bool = True) -> Run:
    """`reranker.rerank` with the queries split over distributed ranks (a block of rows each), then gathered.

    A reranker reads query row `i` of the run as the task's query `i`, so each rank reranks the whole run with the
    other ranks' rows emptied (all `PAD`: nothing to score there) and keeps its own rows. A
    `ListwiseReranker` (whole shortlists from its own per-row data, as SuperGlobal) runs whole on every rank.
    """
    _, size = distributed.world()
    if size == 1 or isinstance(reranker, ListwiseReranker):
        return reranker.rerank(run, task, rerank_depth, batch_size, progress)
    mine = distributed.block(len(run))
    others = torch.ones(len(run), 1, dtype=torch.bool, device=run.indices.device)
    others[mine] = False
    part = reranker.rerank(Run(run.indices.masked_fill(others, PAD), run.scores, run.query_ids, run.doc_ids), task,
                           rerank_depth, batch_size, progress)
    indices = distributed.gather_blocks(part.indices[mine])
    scores = distributed.gather_blocks(part.scores[mine])
    return Run(indices, scores, run.query_ids, run.doc_ids)


@renamed_arguments(depth="rerank_depth")
def evaluate_rows(report: Report, task: RetrievalTask, run: Run, rerankers: Mapping[str, Reranker] | None = None,
                  rerank_depth: int = 16, measures: Sequence[str] = DEFAULT_MEASURES, batch_size: int = 256,
                  progress: bool = True, first_stage: str = FIRST_STAGE) -> dict[str, Run]:
    """Rerank `run`'s top `rerank_depth` with each reranker and add one report row per system (the first stage first).

    Args:
        task: the queries, corpus and judgements `run` indexes; it scores every run.
        run: the first stage's run `[Q, K]`.
        rerankers: row name -> reranker.
        first_stage: the first stage's row name.

    Returns:
        Row name -> run, the first stage's included.
    """
    systems = {first_stage: run}
    for name, reranker in (rerankers or {}).items():
        start = time.perf_counter()
        systems[name] = rerank_sharded(reranker, run, task, rerank_depth, batch_size, progress)
        report.timings[f"{task.direction} {name}"] = time.perf_counter() - start
        report.baselines[name] = first_stage
    for name, system_run in systems.items():
        report.add(name, task.direction, task.measure(system_run, measures), task.curve(system_run))
    return systems


# The loop's name before it was told apart from the metrics function `mmrerank.evaluate` (removed in 0.2).
evaluate = renamed_function(evaluate_rows, "mmrerank.evaluation.loop.evaluate")
