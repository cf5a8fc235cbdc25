"""Scoring under the revisited protocol (Radenović et al., CVPR 2018): which images count for each query, and the
benchmark's mAP / mP@k.

Protocols (`protocol_relevance`): each query's positives and the images ignored when scoring it.

=========  =====================  =====================
protocol   positives              ignored
=========  =====================  =====================
easy       easy                   junk + hard
medium     easy + hard            junk
hard       hard                   junk + easy
=========  =====================  =====================

Scores (`revisited_map`), in percent, as follows:

* Ignored images are removed from each query's ranking first; every position below is counted after that removal.
* AP uses the benchmark's trapezoidal rule: for the j-th positive found (j = 0, 1, ...) at 0-based position r,
  precision_0 = j / r (1 when r = 0) and precision_1 = (j + 1) / (r + 1); AP = sum over the positives found of
  (precision_0 + precision_1) / 2 / n_pos, with n_pos the query's positives under the protocol. Positives that
  the ranking does not contain (a truncated run) add nothing, as if ranked beyond the end.
* P@k = (positives among the first k positions) / k, also when fewer than k images are left. This is the plain
  definition. The revisitop evaluation code differs here: it divides by min(k, 1-based position of the query's
  last positive) and counts positives up to that position, so its mP@k is >= this one whenever a query's
  positives all lie above position k.
* mAP and mP@k are means over the queries that have at least one positive under the protocol; the others are
  left out (NaN per query). In ROxford5k and RParis6k every query has positives under medium and hard, but under
  easy some may have none, so the easy means can be over fewer than 70 queries (`num_queries` says how many).

`revisited_qrels` gives the positives as `Qrels` for the generic metrics of `mmrerank.core.metrics`, which have no
notion of an ignored image: there junk counts as non-relevant, so those numbers are not the benchmark's. Report
`revisited_map`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mmrerank.core.items import LazyImages, RetrievalTask
from mmrerank.core.run import PAD, Qrels, Run
from mmrerank.datasets.revisited.dataset import PROTOCOLS, RevisitedDataset

_OUTSIDE = -2  # ranking entry for an image outside the database (a distractor): a negative, never ignored


# --- protocols --------------------------------------------------------------------------------------------------------

def protocol_relevance(dataset: RevisitedDataset, protocol: str) -> tuple[list[Tensor], list[Tensor]]:
    """Each query's positives and ignored images under `protocol` (see the module table).

    Args:
        dataset: the benchmark.
        protocol: "easy", "medium" or "hard".

    Returns:
        `(positives, ignored)`: Q sorted, duplicate-free `[n]` long tensors each, indices into `dataset.db_names`.
        Should a file list one image under two labels of a query, so that it is both a positive and ignored, it
        counts as a positive: the two sets are always disjoint.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    positives, ignored = [], []
    for easy, hard, junk in zip(dataset.easy, dataset.hard, dataset.junk):
        if protocol == "easy":
            pos, ign = easy, torch.cat([junk, hard])
        elif protocol == "medium":
            pos, ign = torch.cat([easy, hard]), junk
        else:
            pos, ign = hard, torch.cat([junk, easy])
        pos, ign = torch.unique(pos), torch.unique(ign)
        positives.append(pos)
        ignored.append(ign[~torch.isin(ign, pos)])
    return positives, ignored


def revisited_qrels(dataset: RevisitedDataset, protocol: str) -> Qrels:
    """The positives of `protocol` as `Qrels` (grade 1), query ids = query names, doc ids = database names.

    Ignored images cannot be expressed in `Qrels`: generic metrics count them as non-relevant instead of removing
    them, so their numbers are not the benchmark's. Use `revisited_map` for reported results.
    """
    positives, _ = protocol_relevance(dataset, protocol)
    counts = torch.tensor([p.numel() for p in positives], dtype=torch.long)
    query_index = torch.repeat_interleave(torch.arange(dataset.num_queries), counts)
    doc_index = torch.cat(positives) if positives else torch.empty(0, dtype=torch.long)
    return Qrels.from_pairs(dataset.query_names, dataset.db_names, query_index, doc_index)


# --- scoring ----------------------------------------------------------------------------------------------------------

def revisited_per_query(ranks: Tensor | Run, dataset: RevisitedDataset, protocol: str,
                        kappas: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Per-query AP and P@k (fractions in [0, 1]) under one protocol, as the module docstring defines them.

    Args:
        ranks: `[Q, K]` long, each query's ranking of the database, best first, as indices into `dataset.db_names`
            (K = N for a full ranking; `PAD` = -1 marks empty slots; an index may appear once per row). Rows are
            queries in `dataset.query_names` order. Note that revisitop's own `ranks` are `[N, Q]`: pass them
            transposed. Or a `Run`: rows are matched to queries by id, its candidates ranked by score
            (`Run.sorted()`), and candidates whose id is not a database name (distractors) count as negatives.
        dataset: the benchmark.
        protocol: "easy", "medium" or "hard".
        kappas: the cut-offs k of P@k.

    Returns:
        `{"AP": [Q], "P@k": [Q] for each k}`, float64 on the ranking's device; NaN for a query without positives.
    """
    return _per_query(_ranking(ranks, dataset), dataset, protocol, kappas)


def _per_query(ranking: Tensor, dataset: RevisitedDataset, protocol: str, kappas: Sequence[int]) -> dict[str, Tensor]:
    """`revisited_per_query` of a ranking `_ranking` has already checked."""
    if any(k < 1 for k in kappas):
        raise ValueError(f"P@k needs every k >= 1, got {list(kappas)}")
    positives, ignored = protocol_relevance(dataset, protocol)
    q, n = dataset.num_queries, dataset.num_db
    device = ranking.device

    # membership tables [Q, N + 2]: column N is where PAD slots look (ignored), column N + 1 where images outside
    # the database look (neither positive nor ignored)
    is_pos = _membership(positives, q, n + 2, device)
    is_ign = _membership(ignored, q, n + 2, device)
    is_ign[:, n] = True
    column = torch.where(ranking == PAD, n, torch.where(ranking == _OUTSIDE, n + 1, ranking))
    kept = ~is_ign.gather(1, column)  # [Q, K]
    hit = is_pos.gather(1, column) & kept
    # 0-based position among the kept images, and the number of positives found before; read only where hit
    position = (kept.cumsum(1) - 1).to(torch.float64)
    found = (hit.cumsum(1) - 1).to(torch.float64)
    precision_0 = torch.where(position > 0, found / position.clamp(min=1), torch.ones_like(position))
    precision_1 = (found + 1) / (position + 1)
    n_pos = torch.tensor([p.numel() for p in positives], dtype=torch.float64, device=device)
    has_pos = n_pos > 0
    nan = torch.tensor(math.nan, dtype=torch.float64, device=device)

    # where(), not a product with `hit`: off the hits, precision_1 can be 0 / 0 (an ignored first slot)
    gain = torch.where(hit, (precision_0 + precision_1) / 2, torch.zeros_like(position)).sum(1)
    out = {"AP": torch.where(has_pos, gain / n_pos.clamp(min=1), nan)}
    for k in kappas:
        in_top = (hit & (position < k)).sum(1).to(torch.float64)
        out[f"P@{k}"] = torch.where(has_pos, in_top / k, nan)
    return out


def revisited_map(ranks: Tensor | Run, dataset: RevisitedDataset, protocols: Sequence[str] = PROTOCOLS,
                  kappas: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """The benchmark's scores: mAP and mP@k in percent per protocol (definitions in the module docstring).

    Args:
        ranks: `[Q, K]` long rankings of the database or a `Run` (see `revisited_per_query`).
        dataset: the benchmark.
        protocols: any of "easy", "medium", "hard".
        kappas: the cut-offs k of mP@k.

    Returns:
        `{protocol: {"mAP": float, "mP@k": float for each k, "num_queries": int}}`; `num_queries` counts the
        queries with positives under the protocol, the ones averaged over (all NaN when there are none).
    """
    ranking = _ranking(ranks, dataset)  # once, not per protocol
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        per_query = _per_query(ranking, dataset, protocol, kappas)
        counted = ~torch.isnan(per_query["AP"])
        scores: dict[str, float] = {}
        for key, values in per_query.items():
            mean = values[counted].mean().item() if bool(counted.any()) else math.nan
            scores[f"m{key}"] = 100.0 * mean
        scores["num_queries"] = int(counted.sum())
        results[protocol] = scores
    return results


def _membership(lists: list[Tensor], rows: int, columns: int, device: torch.device) -> Tensor:
    """`[rows, columns]` bool with True at (i, j) for every j in `lists[i]`."""
    table = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    counts = torch.tensor([x.numel() for x in lists], dtype=torch.long)
    if int(counts.sum()):
        row = torch.repeat_interleave(torch.arange(rows), counts).to(device)
        table[row, torch.cat(lists).to(device)] = True
    return table


def _ranking(ranks: Tensor | Run, dataset: RevisitedDataset) -> Tensor:
    """Validate a ranking and bring it to `[Q, K]` long into `db_names` (PAD empty, `_OUTSIDE` for distractors)."""
    if isinstance(ranks, Run):
        return _ranking_from_run(ranks, dataset)
    ranks = torch.as_tensor(ranks)
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise TypeError(f"ranks must be an integer tensor of database indices, got {ranks.dtype}")
    q, n = dataset.num_queries, dataset.num_db
    if ranks.dim() != 2 or ranks.shape[0] != q:
        raise ValueError(f"ranks must be [Q={q}, K] (one row per query, best first); got {tuple(ranks.shape)}. "
                         "revisitop's ranks are [N, Q]: pass them transposed")
    ranks = ranks.long()
    if ranks.numel() and (int(ranks.min()) < PAD or int(ranks.max()) >= n):
        raise ValueError(f"ranks hold indices outside [0, {n}) (and -1 for empty slots)")
    _check_unique(ranks)
    return ranks


def _ranking_from_run(run: Run, dataset: RevisitedDataset) -> Tensor:
    row_of = {qid: row for row, qid in enumerate(run.query_ids)}
    if len(row_of) != len(run.query_ids):
        raise ValueError("the run's query ids are not unique")
    missing = [name for name in dataset.query_names if name not in row_of]
    if missing:
        raise ValueError(f"the run has no row for {len(missing)} of the {dataset.num_queries} queries, "
                         f"e.g. {missing[:3]}")
    run = run.sorted()
    rows = torch.tensor([row_of[name] for name in dataset.query_names], dtype=torch.long)
    indices = run.indices[rows.to(run.indices.device)]
    _check_unique(indices)
    if run.doc_ids == dataset.db_names:
        return indices
    db_index = {name: j for j, name in enumerate(dataset.db_names)}
    # the trailing PAD entry is where index -1 (PAD) lands
    remap = torch.tensor([db_index.get(d, _OUTSIDE) for d in run.doc_ids] + [PAD], dtype=torch.long,
                         device=indices.device)
    return remap[indices]


def _check_unique(ranks: Tensor) -> None:
    """Refuse rows that rank an image twice: a repeated positive would be counted twice."""
    if ranks.shape[1] < 2:
        return
    ordered = ranks.sort(dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)
    if bool(repeated.any()):
        row = int(repeated.any(1).nonzero()[0])
        raise ValueError(f"row {row} of the ranking lists an image more than once")


class RevisitedTask(RetrievalTask):
    """Queries (their regions) against the database, scored as the benchmark reports: mAP per protocol (junk and,
    under Hard, easy images ignored), in percent. Its `qrels` are the Medium positives (for generic use)."""

    def __init__(self, dataset: RevisitedDataset, protocols: Sequence[str] = ("medium", "hard")) -> None:
        super().__init__(f"{dataset.name}/i2i", LazyImages(dataset.query_names, dataset.query_image),
                         LazyImages(dataset.db_names, dataset.db_image), revisited_qrels(dataset, "medium"))
        self.dataset, self.protocols = dataset, tuple(protocols)

    def measure(self, run: Run, measures: Sequence[str] = ()) -> dict[str, float]:
        scores = revisited_map(run, self.dataset, self.protocols)
        return {f"{p}/mAP": scores[p]["mAP"] for p in self.protocols}

    def curve(self, run: Run) -> list[float]:
        return []
