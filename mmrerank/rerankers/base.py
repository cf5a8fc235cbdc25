"""The reranker interface every family implements: score pairs; reranking a run is provided once, here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrerank.core.deprecation import renamed_arguments
from mmrerank.core.items import ImageFiles, RetrievalTask
from mmrerank.core.run import PAD, Run, id_rows

# What `Reranker.rerank` does with a NaN or infinite score: raise, or rank it below the finite reranked scores.
NONFINITE_MODES = ("error", "demote")
# What `rank` reads as an image when given the path of an existing file (Pillow decodes all of these).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class RankedResults:
    """One query's candidates, best first.

    Attributes:
        order: `order[i]` is the position in the input list of the i-th best candidate.
        scores: its score.
        ids: its id (the `ids` given to `rank`; by default its position, as a string).
    """

    order: list[int]
    scores: list[float]
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [str(i) for i in self.order]

    def top_k(self, k: int) -> RankedResults:
        return RankedResults(self.order[:k], self.scores[:k], self.ids[:k])


def open_image_paths(items: Sequence[Any]) -> list[Any]:
    """`items` with each image path opened as an RGB PIL image (what `rank` does in every family).

    An image path is a `Path`, or a string without line breaks ending in an image suffix (`IMAGE_SUFFIXES`) that
    names an existing file. Other strings are texts; other items pass unchanged.

    Raises:
        FileNotFoundError: a `Path`, or a string with an image suffix and no whitespace, that names no file.
        ImageLoadError: a file that does not decode as an image (naming it).
    """
    return [_open_if_image_path(x) for x in items]


def _open_if_image_path(item: Any) -> Any:
    if isinstance(item, str) and not ("\n" in item or len(item) > 4096) \
            and Path(item).suffix.lower() in IMAGE_SUFFIXES:
        if not _is_file(item):
            if any(c.isspace() for c in item):
                return item  # a text that happens to end like a file name
            raise FileNotFoundError(f"no image file at {item!r} (a string ending in an image suffix is read as a path)")
        return ImageFiles([item], [item])[0]
    if isinstance(item, Path):
        if not item.is_file():
            raise FileNotFoundError(f"no image file at {item}")
        return ImageFiles([str(item)], [item])[0]
    return item


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL byte: a text, not a path
        return False


class Reranker(ABC):
    """Scores (query, candidate) pairs; `rerank` reorders a first-stage `Run` with those scores."""

    @abstractmethod
    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """Relevance of each pair: `queries[i]` with `candidates[i]` (texts, PIL images, ...) -> `[B]` float."""

    def rank(self, query: Any, candidates: Sequence[Any], ids: Sequence[str] | None = None) -> RankedResults:
        """Rank `candidates` for a single `query`; ties keep input order.

        Args:
            query, candidates: what `score` takes (texts, PIL images, ...); a path (`str` or `Path`) of an existing
                image file (`.jpg`, `.png`, ...) is read as that image, in every family.
            ids: one id per candidate, returned in `RankedResults.ids` (default: positions `"0"`, `"1"`, ...).

        Examples:
            >>> import torch
            >>> class WordOverlap(Reranker):  # a family only writes `score`
            ...     def score(self, queries, candidates):
            ...         return torch.tensor([float(len(set(q.split()) & set(c.split())))
            ...                              for q, c in zip(queries, candidates)])
            >>> ranked = WordOverlap().rank("a red circle", ["a blue square", "a red circle", "a red square"],
            ...                             ids=["blue", "circle", "square"])
            >>> ranked.ids, ranked.scores
            (['circle', 'square', 'blue'], [3.0, 2.0, 1.0])
            >>> ranked.top_k(1).ids
            ['circle']
        """
        if ids is not None and len(ids) != len(candidates):
            raise ValueError(f"{len(ids)} ids for {len(candidates)} candidates")
        query, = open_image_paths([query])
        candidates = open_image_paths(candidates)
        scores = self.score([query] * len(candidates), candidates).float().cpu()
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        names = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(candidates))]
        return RankedResults(order, scores[order].tolist(), [names[i] for i in order])

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        """Scores of the pairs `(task.queries[query_rows[i]], task.corpus[candidate_rows[i]])`, `[B]`.

        `rerank` calls this; the default fetches the items and calls `score`. A family that keeps precomputed
        candidate data by id (EDJE's token store) or fuses in the first stage's scores (`first_stage`, `[B]`)
        overrides it.
        """
        return self.score([task.queries[int(i)] for i in query_rows], [task.corpus[int(d)] for d in candidate_rows])

    @renamed_arguments(depth="rerank_depth")
    def rerank(self, run: Run, task: RetrievalTask, rerank_depth: int, batch_size: int = 256, progress: bool = True,
               nonfinite: str = "error") -> Run:
        """Rescore each query's top `rerank_depth` candidates and sort them by the new scores.

        Each batch holds whole candidate lists (at least one query), so a query is never split. Candidates
        below `rerank_depth` keep their first-stage order after the reranked ones; their scores are placeholders
        strictly below the reranked scores (like LAVIS's sentinel), so the run stays sorted by score.

        The run is matched to the task by id: each row's query id is looked up among `task.queries.ids` and each
        candidate id among `task.corpus.ids` (a run read from a file in any order, or indexing another corpus list,
        is paired right); an id the task does not have is an error naming it, raised before any scoring.

        Args:
            run: first-stage run `[Q, K]` whose query and doc ids the task has.
            task: gives the query and candidate items.
            rerank_depth: how many top candidates to rescore (`depth=` is its deprecated name).
            batch_size: pairs per `score` call (rounded to whole queries).
            progress: show a progress bar.
            nonfinite: what a NaN or infinite reranker score does. `"error"` (the default): raise. `"demote"`:
                the candidate goes below every finite reranked score of its query but stays above the un-reranked
                tail (the first stage did put it in the top `rerank_depth`), candidates demoted together keeping their
                first-stage order; their scores become placeholders between the two.

        Returns:
            A run `[Q, K]` over the same candidates, rows in the input run's order, `doc_ids` the task's corpus ids.

        Raises:
            ValueError: a query or candidate id of the run that the task lacks (naming the first ones and the side);
                a non-finite score with `nonfinite="error"` (the message names the query and candidate ids), or an
                unknown `nonfinite`.

        Examples:
            >>> import torch
            >>> from mmrerank import Qrels, Run
            >>> from mmrerank.core.items import RetrievalTask, Texts
            >>> class WordOverlap(Reranker):
            ...     def score(self, queries, candidates):
            ...         return torch.tensor([float(len(set(q.split()) & set(c.split())))
            ...                              for q, c in zip(queries, candidates)])
            >>> corpus = Texts(["d1", "d2", "d3"], ["a blue square", "a red circle", "a red square"])
            >>> task = RetrievalTask("toy/t2t", Texts(["q"], ["a red circle"]), corpus,
            ...                      Qrels.from_dict({"q": {"d2": 1}}))
            >>> first_stage = Run.from_dict({"q": {"d1": 0.9, "d3": 0.8, "d2": 0.7}})
            >>> reranked = WordOverlap().rerank(first_stage, task, rerank_depth=2, progress=False)
            >>> [reranked.doc_ids[i] for i in reranked.indices[0].tolist()]  # d1, d3 rescored; d2 stays below them
            ['d3', 'd1', 'd2']
        """
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        query_rows = None if run.query_ids == task.queries.ids else id_rows(
            run.query_ids, task.queries.ids, "the run's query ids", f"the queries of task {task.name!r}")
        run = run.align(doc_ids=task.corpus.ids, name="the run").sorted()
        head, tail = run.indices[:, :rerank_depth].cpu(), run.indices[:, rerank_depth:].cpu()
        new_scores = self.head_scores(run, task, head, batch_size, progress, query_rows)
        bad = ~torch.isfinite(new_scores) & (head != PAD)
        if nonfinite == "error" and bad.any():
            raise ValueError(_nonfinite_message(run, head, new_scores, bad))
        indices, scores = _merge_reranked(head, tail, new_scores, bad)
        # rows are already in order; sorting (stable) only moves empty slots that sat among the tail to the end
        return Run(indices.to(run.indices.device), scores.to(run.scores.device), run.query_ids, run.doc_ids).sorted()

    def head_scores(self, run: Run, task: RetrievalTask, head: Tensor, batch_size: int, progress: bool,
                    query_rows: Tensor | None = None) -> Tensor:
        """The reranker's scores of the `[Q, depth]` candidates `head` (CPU, rows of `task.corpus`), `[Q, depth]`
        float; empty slots 0. Run row `i` is task query `query_rows[i]` (`[Q]` long; None: row `i`)."""
        new_scores = torch.zeros(head.shape)
        depth = head.shape[1]
        per_batch = max(1, batch_size // max(depth, 1))
        for start in tqdm(range(0, len(run), per_batch), desc=f"reranking {task.name}", disable=not progress,
                          leave=False):
            rows = head[start:start + per_batch]
            q, c = (rows != PAD).nonzero(as_tuple=True)
            if len(q) == 0:
                continue
            first = run.scores[start:start + per_batch].cpu()[q, c]
            task_rows = start + q if query_rows is None else query_rows[start + q]
            scores = self.score_rows(task, task_rows, rows[q, c], first)
            new_scores[start + q, c] = scores.float().cpu()
        return new_scores



class ListwiseReranker(Reranker):
    """A reranker that reorders whole shortlists at once (SuperGlobal) instead of scoring pairs one by one.

    It implements `rerank` itself from its own per-row data; there is no pair score, so `score` (and with it
    `rank`) raises. The evaluation loop runs such a reranker whole on every distributed rank rather than splitting
    its queries (`evaluation.loop.rerank_sharded`), as one query's new order may depend on the other rows it holds.
    """

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        raise TypeError(f"{type(self).__name__} reorders whole shortlists; it scores no pairs: call `rerank` "
                        "with a Run")

    @abstractmethod
    def rerank(self, run: Run, task: RetrievalTask, rerank_depth: int, batch_size: int = 256, progress: bool = True,
               nonfinite: str = "error") -> Run:
        """The run with each query's top `rerank_depth` reordered, the rest in first-stage order below (`[Q, K]`).

        `batch_size` and `nonfinite` are accepted for `Reranker.rerank`'s signature; a listwise reranker gives
        ranks, not pair scores, so it has no non-finite score to handle.
        """


def _nonfinite_message(run: Run, head: Tensor, scores: Tensor, bad: Tensor) -> str:
    """Names the first few (query id, candidate id, score) with a non-finite reranker score."""
    rows, cols = bad.nonzero(as_tuple=True)
    pairs = [f"query {run.query_ids[r]!r} candidate {run.doc_ids[int(head[r, c])]!r}: {float(scores[r, c])}"
             for r, c in zip(rows.tolist()[:5], cols.tolist()[:5])]
    more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
    return (f"the reranker gave {len(rows)} non-finite score(s): {'; '.join(pairs)}{more}. Fix the reranker, or "
            "pass nonfinite='demote' to rank such candidates below the finite reranked ones")


def _placeholders(floor: Tensor, count: int) -> Tensor:
    """`[Q, count]` scores strictly decreasing from just below `floor` `[Q, 1]`.

    The step is at least 1 and at least 2^-16 of the floor's magnitude, so it stays well above float32's rounding
    (2^-23 of the magnitude) even for huge floors, where `floor - 1` would round back to `floor`.
    """
    step = torch.clamp(floor.abs() * 2.0 ** -16, min=1.0)
    return floor - step * torch.arange(1, count + 1, dtype=torch.float)


def _merge_reranked(head: Tensor, tail: Tensor, scores: Tensor, bad: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's final order and scores: the finite reranked candidates by score (ties in first-stage order),
    then the `bad` (non-finite) ones in first-stage order, then the tail; empty slots last.

    Args:
        head: `[Q, depth]` reranked candidates, first-stage order; `tail`: `[Q, K - depth]` the others.
        scores: `[Q, depth]` reranker scores; `bad`: `[Q, depth]` which of them are non-finite (to demote).

    Returns:
        indices `[Q, K]` and scores `[Q, K]`, rows non-increasing, demoted and tail candidates on placeholders.
    """
    good = (head != PAD) & ~bad
    # sort key of a head slot: finite scores first (by score), then demoted ones, then empty slots
    group = torch.where(good, 0, torch.where(bad, 1, 2))
    by_score = torch.sort(scores.masked_fill(~good, 0.0), dim=1, descending=True, stable=True).indices
    order = by_score.gather(1, torch.sort(group.gather(1, by_score), dim=1, stable=True).indices)
    # the lowest finite reranked score (an extra +inf column keeps depth 0 from reducing over nothing)
    masked = torch.cat([scores.masked_fill(~good, float("inf")), torch.full((len(scores), 1), float("inf"))], dim=1)
    floor = masked.min(dim=1, keepdim=True).values
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))  # no finite score: start below 0
    n_bad = int(bad.sum(dim=1).max()) if bad.numel() else 0
    below = _placeholders(floor, n_bad + tail.shape[1])
    # a row's j-th demoted slot (in first-stage order) takes placeholder j; its tail continues after the last one
    head_scores = scores
    if n_bad:
        head_scores = torch.where(bad, below.gather(1, (bad.cumsum(dim=1) - 1).clamp(min=0)), scores)
    tail_scores = below.gather(1, bad.sum(dim=1, keepdim=True) + torch.arange(tail.shape[1]).expand(tail.shape))
    indices = torch.cat([head.gather(1, order), tail], dim=1)
    merged = torch.cat([head_scores.gather(1, order), tail_scores], dim=1)
    return indices, merged.masked_fill(indices == PAD, float("-inf"))
