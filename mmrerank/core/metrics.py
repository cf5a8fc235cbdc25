"""Ranking metrics over whole runs at once, in pure torch and agreeing with ir-measures / trec_eval.

Every measure is computed for all queries together from `[Q, K]` tensors, on the run's device: the grade of every
candidate is found with a vectorised key lookup (sorted `query * N + doc` keys and `searchsorted`), each row is
ranked once as `Run.sorted()` ranks it (score descending, ties keep column order so the lower column wins), and
each measure is a few reductions over `[Q, K]`. Nested-dict input skips building tensors of doc ids; see
`_table_from_dicts`.

Supported names (`parse_measure`), with an optional direction label before a slash, such as `t2i/Success@1`:

- `nDCG@k`, `nDCG`: gain = grade (negative grades count 0), discount `log2(rank + 1)`; the ideal ranking orders
  all of the query's judged grades, retrieved or not, and is cut at k too. 0 when the ideal gain is 0.
- `R@k`: relevant in the top k / all relevant judged for the query (0 when none is).
- `Success@k`: 1 when any relevant candidate is in the top k.
- `RR@k`, `RR`: 1 / rank of the first relevant candidate (in the top k), 0 when there is none.
- `AP@k`, `AP`: sum of precision at the ranks of relevant candidates (in the top k) / all relevant judged for the
  query, as trec_eval's `map_cut` (not the number that could fit in k).
- `P@k`: relevant in the top k / k, even when fewer than k candidates were retrieved.
- `CE@k`: contrastive entropy over the top k: for each relevant candidate p there, `-log softmax` of p's score
  against p and the non-relevant candidates of the top k; the query's value is the mean over those p. A model with
  uninformative scores gives about `ln k`. Not part of ir-measures.

A candidate is relevant when its grade is >= 1; empty (PAD) slots and unjudged candidates are never relevant.
Rows are ranked as `Run.sorted()` ranks them: equal scores keep their column order. trec_eval breaks such ties by
doc id instead, so the two agree on runs without tied scores.

Which queries count. Found by experiment against ir-measures 0.4.3 (pytrec_eval and its msmarco RR@k):

- a query of the run with no judgement in the qrels is left out (NaN in `per_query`);
- a query with judgements but none relevant (all grades <= 0) counts, with value 0;
- a query with judgements but no row in the run (or an empty row) counts, with value 0. `per_query` has one value
  per run row and cannot show these; `evaluate` adds them as zeros.

`CE@k` differs: a query counts only when a relevant candidate is in its top k, so `evaluate` averages it over
those queries alone. "Has a judgement" means the query owns at least one (query, doc, grade) entry; ir-measures'
pytrec_eval also counts a query given an empty judgement dict (`{"q": {}}`), which here counts as unjudged.
A (query, doc) pair should be judged once; duplicates would be counted twice in the ideal ranking.

Values are float64 (float32 on MPS, which has no float64), as trec_eval computes in double precision.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np
import torch
from torch import Tensor

from mmrerank.core.run import PAD, Qrels, Run

__all__ = ["SUPPORTED", "evaluate", "parse_measure", "per_query"]

SUPPORTED = ("nDCG@k", "nDCG", "R@k", "Success@k", "RR@k", "RR", "AP@k", "AP", "P@k", "CE@k")
_FAMILIES = ("nDCG", "R", "Success", "RR", "AP", "P", "CE")
_NEEDS_CUTOFF = ("R", "Success", "P", "CE")  # these have no meaning without a k

RunLike = Run | Mapping[str, Mapping[str, float]]
QrelsLike = Qrels | Mapping[str, Mapping[str, int]]


def parse_measure(name: str) -> tuple[str, int | None]:
    """Split a measure name into its family and cutoff.

    Args:
        name: e.g. `nDCG@10`, `RR`, `t2i/Success@1` (the part before the last `/` is only a label).

    Returns:
        `(family, k)`, family one of `nDCG R Success RR AP P CE`, k a positive int or None.

    Raises:
        ValueError: the name is not one of the supported forms.
    """
    base = name.rpartition("/")[2]
    family, at, cutoff = base.partition("@")
    k: int | None = None
    if at:
        k = int(cutoff) if cutoff.isdecimal() and cutoff.isascii() else 0
    ok = family in _FAMILIES and (k is None or k > 0) and (k is not None or family not in _NEEDS_CUTOFF)
    if not ok:
        raise ValueError(f"unknown measure {name!r}; supported: {', '.join(SUPPORTED)} (k a positive integer), "
                         f"optionally after a label such as 't2i/'")
    return family, k


def per_query(run: RunLike, qrels: QrelsLike, measures: Sequence[str] | str) -> dict[str, Tensor]:
    """Each measure for each query of the run.

    Args:
        run: a `Run` or `{query_id: {doc_id: score}}`.
        qrels: a `Qrels` or `{query_id: {doc_id: grade}}`.
        measures: measure names (see `parse_measure`), or one name.

    Returns:
        `{name: [Q] float tensor}` in the run's row order and on its device; NaN where a query does not count
        (see the module docstring), so shards can be gathered and nan-averaged.
    """
    values, _ = _evaluate_rows(run, qrels, measures)
    return values


def evaluate(run: RunLike, qrels: QrelsLike, measures: Sequence[str] | str, *,
             count_missing: bool = True) -> dict[str, float]:
    """Each measure averaged over the queries that count, as ir-measures' `calc_aggregate`.

    Args:
        run: a `Run` or `{query_id: {doc_id: score}}`.
        qrels: a `Qrels` or `{query_id: {doc_id: grade}}`.
        measures: measure names (see `parse_measure`), or one name.
        count_missing: count judged queries that have no row in the run as 0 (except for `CE@k`), as
            ir-measures does. Turn it off when `run` is one shard of the queries and `qrels` covers them all.

    Returns:
        `{name: mean}`; NaN for a measure no query counts for.

    Examples:
        >>> from mmrerank import evaluate
        >>> run = {"q1": {"d1": 0.9, "d2": 0.5}, "q2": {"d3": 0.8, "d4": 0.7}}
        >>> qrels = {"q1": {"d2": 1}, "q2": {"d3": 1}}
        >>> evaluate(run, qrels, ["Success@1", "R@2", "RR@10"])  # q1: relevant at rank 2, q2: at rank 1
        {'Success@1': 0.5, 'R@2': 1.0, 'RR@10': 0.75}
    """
    values, n_missing = _evaluate_rows(run, qrels, measures)
    _warn_on_overlap(run, qrels, count_missing)
    out = {}
    for name, value in values.items():
        counted = ~torch.isnan(value)
        # queries judged but absent from the run score 0: they add to the count and nothing to the sum
        extra = n_missing if count_missing and parse_measure(name)[0] != "CE" else 0
        n = int(counted.sum()) + extra
        out[name] = float(value[counted].sum()) / n if n else math.nan
    return out


def _id_sets(run: RunLike, qrels: QrelsLike) -> tuple[list[str], set[str], set[str], set[str]]:
    """(the run's query ids, its candidate ids, the judged query ids, the judged doc ids)."""
    if isinstance(run, Run):
        used = torch.unique(run.indices[run.indices != PAD]).tolist()
        run_queries, run_docs = run.query_ids, {run.doc_ids[d] for d in used}
    else:
        run_queries, run_docs = list(run), {d for cands in run.values() for d in cands}
    if isinstance(qrels, Qrels):
        judged = {qrels.query_ids[q] for q in torch.unique(qrels.query_index).tolist()}
        judged_docs = {qrels.doc_ids[d] for d in torch.unique(qrels.doc_index).tolist()}
    else:
        judged = {q for q, docs in qrels.items() if docs}
        judged_docs = {d for docs in qrels.values() for d in docs}
    return run_queries, run_docs, judged, judged_docs


def _warn_on_overlap(run: RunLike, qrels: QrelsLike, count_missing: bool) -> None:
    """Warn when a run and its judgements barely share ids: the measures are then near 0 (or meaningless) because
    the two name queries or documents differently, not because the ranking is bad."""
    run_queries, run_docs, judged, judged_docs = _id_sets(run, qrels)
    if not run_queries or not judged:
        return
    shared = sum(q in judged for q in run_queries)
    example = f"run {sorted(run_queries)[:3]} vs qrels {sorted(judged)[:3]}"
    fix = "check that the run and the qrels use the same ids (e.g. image file names without extension)"
    if shared == 0:
        warnings.warn(f"the run and the qrels share no query id ({example}): every judged query counts as 0; {fix}",
                      stacklevel=3)
    elif shared < len(run_queries) / 2 or (count_missing and shared < len(judged) / 2):
        warnings.warn(f"the run and the qrels share only {shared} query ids (the run has {len(run_queries)}, the "
                      f"qrels judge {len(judged)}; judged queries without a row count as 0, run rows without "
                      f"judgements are left out); {fix}", stacklevel=3)
    elif run_docs and not run_docs & judged_docs:
        warnings.warn(f"none of the run's {len(run_docs)} candidate ids is judged in the qrels (run e.g. "
                      f"{sorted(run_docs)[:3]}, qrels e.g. {sorted(judged_docs)[:3]}); {fix}", stacklevel=3)


# --- joining a run with its judgements --------------------------------------------------------------------------


@dataclass
class _Table:
    """A run and its judgements as tensors, candidates still in column order; all on one device.

    Attributes:
        scores: `[Q, K]` float32, -inf in empty slots.
        grades: `[Q, K]` long, the grade of each candidate (0 when unjudged or an empty slot).
        pair_row, pair_grade: `[P]` long each, one per judgement of a run query, retrieved or not.
        n_missing: queries that have judgements but no row in the run.
    """

    scores: Tensor
    grades: Tensor
    pair_row: Tensor
    pair_grade: Tensor
    n_missing: int


@dataclass
class _Joined:
    """A run ranked and joined with its judgements.

    Attributes:
        grades: `[Q, K]` long, grade of each ranked candidate (0 when unjudged or an empty slot).
        scores: `[Q, K]` float32, the ranked scores (-inf in empty slots, which come last).
        judged: `[Q]` bool, the query has at least one judgement.
        n_rel: `[Q]` float, the number of relevant documents judged for the query, retrieved or not.
        ideal_row, ideal_rank, ideal_gain: `[P]` each, one per judgement of a run query: its row, its 0-based rank
            in the query's ideal ranking (grades descending) and its gain.
        n_missing: queries that have judgements but no row in the run.
    """

    grades: Tensor
    scores: Tensor
    judged: Tensor
    n_rel: Tensor
    ideal_row: Tensor
    ideal_rank: Tensor
    ideal_gain: Tensor
    n_missing: int


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _rows_in(ids: Sequence[str], space: Sequence[str]) -> Tensor:
    """`[len(ids)]` long: the position of each id in `space`, or -1."""
    if ids is space or list(ids) == list(space):  # the common case: both sides already share one id space
        return torch.arange(len(ids))
    position = {x: i for i, x in enumerate(space)}
    return torch.tensor([position.get(x, -1) for x in ids], dtype=torch.long)


def _table(run: Run, qrels: Qrels) -> _Table:
    """Look up the grade of each candidate among the sorted judgement keys; on the run's device."""
    device = run.indices.device
    n_queries = len(run)

    # Per-query statistics use every judgement of the query, including docs outside the run's doc id space, as
    # trec_eval does: so only the query side is mapped here.
    row_of = _rows_in(qrels.query_ids, run.query_ids).to(device)
    query_index, grade = qrels.query_index.to(device), qrels.grade.to(device)
    has_judgement = torch.zeros(len(qrels.query_ids), dtype=torch.bool, device=device)
    has_judgement[query_index] = True
    n_missing = int((has_judgement & (row_of < 0)).sum())
    pair_row = row_of[query_index]
    keep = pair_row >= 0

    # The judged candidates: key row * N + doc of every slot, searched among the sorted judgement keys.
    aligned = qrels.reindex(run.query_ids, run.doc_ids)
    n_docs = max(len(run.doc_ids), 1)
    judged_keys = aligned.query_index.to(device) * n_docs + aligned.doc_index.to(device)
    judged_keys, order = torch.sort(judged_keys, stable=True)
    judged_grades = aligned.grade.to(device)[order]
    if judged_keys.numel():
        keys = torch.arange(n_queries, device=device)[:, None] * n_docs + run.indices.clamp(min=0)  # [Q, K]
        pos = torch.searchsorted(judged_keys, keys).clamp(max=judged_keys.numel() - 1)
        found = (judged_keys[pos] == keys) & (run.indices != PAD)  # [Q, K]
        grades = torch.where(found, judged_grades[pos], 0)
    else:
        grades = torch.zeros_like(run.indices)
    return _Table(run.scores, grades, pair_row[keep], grade[keep], n_missing)


def _join(table: _Table) -> _Joined:
    """Rank each row and gather the grades along; count and order each query's judgements for the ideal DCG."""
    scores = table.scores
    device = scores.device
    fdt = _float_dtype(device)
    n_queries = scores.shape[0]
    # Run.sorted()'s order: score descending, ties keep their column order, empty slots (-inf) last
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    grades, scores = table.grades.gather(1, order), scores.gather(1, order)

    row, grade = table.pair_row, table.pair_grade
    judged = torch.zeros(n_queries, dtype=torch.bool, device=device)
    judged[row] = True
    n_rel = torch.zeros(n_queries, dtype=fdt, device=device).index_add_(0, row, (grade >= 1).to(fdt))
    # Ideal ranking: order the judgements by row, then grade descending (two stable sorts), and rank each within
    # its row by subtracting the position where the row starts.
    order = torch.argsort(grade, descending=True, stable=True)
    row, grade = row[order], grade[order]
    order = torch.argsort(row, stable=True)
    row, grade = row[order], grade[order]
    per_row = torch.bincount(row, minlength=n_queries)
    starts = per_row.cumsum(0) - per_row
    ideal_rank = torch.arange(row.numel(), device=device) - starts[row]
    return _Joined(grades=grades, scores=scores, judged=judged, n_rel=n_rel, ideal_row=row, ideal_rank=ideal_rank,
                   ideal_gain=grade.clamp(min=0).to(fdt), n_missing=table.n_missing)


# --- the measures -----------------------------------------------------------------------------------------------


def _ideal_dcg(joined: _Joined, k: int | None) -> Tensor:
    """`[Q]`: DCG of each query's ideal ranking, cut at k."""
    fdt = joined.n_rel.dtype
    contribution = joined.ideal_gain / torch.log2(joined.ideal_rank.to(fdt) + 2)
    if k is not None:
        contribution = torch.where(joined.ideal_rank < k, contribution, 0)
    return torch.zeros_like(joined.n_rel).index_add_(0, joined.ideal_row, contribution)


def _contrastive_entropy(joined: _Joined, depth: int) -> Tensor:
    """`[Q]`: CE over the first `depth` ranked candidates; NaN where none of them is relevant."""
    fdt = joined.n_rel.dtype
    scores = joined.scores[:, :depth].to(fdt)
    relevant = joined.grades[:, :depth] >= 1  # never an empty slot: those have grade 0
    # log of the summed exp-scores of the negatives, [Q, 1]; -inf when a query has none (loss then 0). Empty
    # slots count among the negatives, harmlessly: their score is -inf, so they add exp(-inf) = 0.
    negatives = torch.logsumexp(scores.masked_fill(relevant, -math.inf), dim=1, keepdim=True)
    loss = torch.logaddexp(scores, negatives) - scores  # -log(e^s_p / (e^s_p + sum_n e^s_n)), [Q, depth]
    n_relevant = relevant.sum(1)
    total = torch.where(relevant, loss, 0).sum(1)  # where, not a product: PAD slots hold inf or NaN here
    return torch.where(n_relevant > 0, total / n_relevant.clamp(min=1), math.nan)


def _measure(joined: _Joined, family: str, k: int | None) -> Tensor:
    """`[Q]` values of one measure; NaN for unjudged queries."""
    n_queries, width = joined.grades.shape
    depth = width if k is None else min(k, width)
    if family == "CE":
        return _contrastive_entropy(joined, depth)
    fdt = joined.n_rel.dtype
    device = joined.grades.device
    grades = joined.grades[:, :depth]
    relevant = (grades >= 1).to(fdt)  # [Q, depth]
    rank = torch.arange(1, depth + 1, device=device, dtype=fdt)  # [depth], 1-based
    n_rel = joined.n_rel
    hits = relevant.sum(1)
    if family == "P":
        value = hits / k
    elif family == "R":
        value = torch.where(n_rel > 0, hits / n_rel.clamp(min=1), 0)
    elif family == "Success":
        value = (hits > 0).to(fdt)
    elif family == "RR":
        # the largest 1/rank among relevant ranks is that of the first one; 0 when there is none
        value = (relevant / rank).amax(1) if depth else torch.zeros(n_queries, dtype=fdt, device=device)
    elif family == "AP":
        precision = relevant.cumsum(1) / rank
        value = torch.where(n_rel > 0, (precision * relevant).sum(1) / n_rel.clamp(min=1), 0)
    elif family == "nDCG":
        dcg = (grades.clamp(min=0).to(fdt) / torch.log2(rank + 1)).sum(1)
        ideal = _ideal_dcg(joined, k)
        value = torch.where(ideal > 0, dcg / ideal.clamp(min=torch.finfo(fdt).tiny), 0)
    else:  # parse_measure admits no other family
        raise AssertionError(family)
    return torch.where(joined.judged, value, math.nan)


def _evaluate_rows(run: RunLike, qrels: QrelsLike, measures: Sequence[str] | str) -> tuple[dict[str, Tensor], int]:
    """`per_query`'s values, and the number of judged queries that have no row in the run."""
    names = [measures] if isinstance(measures, str) else list(measures)
    parsed = {name: parse_measure(name) for name in names}  # reject bad names before any work
    joined = _join(_as_table(run, qrels))
    return {name: _measure(joined, *parsed[name]) for name in names}, joined.n_missing


# --- nested dicts ---------------------------------------------------------------------------------------------


def _as_table(run: RunLike, qrels: QrelsLike) -> _Table:
    """Any accepted input pair as a `_Table`; two nested dicts take the fast path that builds no `Run`."""
    if not isinstance(run, Run) and not isinstance(qrels, Qrels):
        return _table_from_dicts(run, qrels)
    run = run if isinstance(run, Run) else Run.from_dict(run)
    return _table(run, qrels if isinstance(qrels, Qrels) else Qrels.from_dict(qrels))


def _table_from_dicts(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> _Table:
    """The table straight from nested dicts, on the CPU, without indexing the run's doc ids.

    Giving every retrieved doc an integer id would cost a Python-level hash lookup per candidate, most of the
    time of a dict-to-tensor conversion. Instead each judged doc is looked up in its query's run dict (one lookup
    per judgement, usually far fewer than candidates) and its column is the slot of its row holding the same
    score. Only when that is ambiguous (tied scores, or NaN) is the column found in Python. Scores are rounded to
    float32 first, as `Run.from_dict` does, so both inputs rank alike.
    """
    query_ids, candidates = list(run), list(run.values())
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    n_queries, depth = len(candidates), int(lengths.max()) if candidates else 0
    flat = torch.from_numpy(np.fromiter(chain.from_iterable(c.values() for c in candidates), dtype=np.float32,
                                        count=int(lengths.sum())))
    if bool((lengths == depth).all()):  # every row full: no empty slots to leave
        scores = flat.view(n_queries, depth)
    else:
        row = torch.repeat_interleave(torch.arange(n_queries), lengths)
        col = torch.arange(row.numel()) - (lengths.cumsum(0) - lengths)[row]
        scores = torch.full((n_queries, depth), -math.inf)
        scores[row, col] = flat

    row_of = dict(zip(query_ids, range(n_queries), strict=True))
    rows = [row_of.get(q, -1) for q in qrels]
    n_missing = sum(1 for r, judged in zip(rows, qrels.values(), strict=True) if r < 0 and judged)
    kept = [(r, judged) for r, judged in zip(rows, qrels.values(), strict=True) if r >= 0 and judged]
    n_pairs = sum(len(judged) for _, judged in kept)
    pair_row = torch.repeat_interleave(torch.tensor([r for r, _ in kept], dtype=torch.long),
                                       torch.tensor([len(judged) for _, judged in kept], dtype=torch.long))
    pair_grade = torch.from_numpy(np.fromiter(chain.from_iterable(j.values() for _, j in kept), dtype=np.int64,
                                              count=n_pairs))
    # the judged doc's score in its query's run dict; NaN when it was not retrieved
    pair_score = torch.from_numpy(np.fromiter(
        chain.from_iterable(map(candidates[r].get, judged, repeat(math.nan)) for r, judged in kept),
        dtype=np.float32, count=n_pairs))
    if torch.isnan(flat).any():  # NaN is then no proof of absence: ask the dicts
        retrieved = torch.from_numpy(np.fromiter(
            chain.from_iterable(map(candidates[r].__contains__, judged) for r, judged in kept), dtype=bool,
            count=n_pairs))
    else:
        retrieved = ~torch.isnan(pair_score)

    # Column of each retrieved judged doc: the one slot of its row holding its score. Chunks of ~256k slots keep
    # the [chunk, K] comparison in cache. An empty slot (-inf) can only equal a -inf score, which is then tied.
    hits = retrieved.nonzero().squeeze(1)
    hit_col = torch.empty_like(hits)
    ambiguous = torch.zeros_like(hits, dtype=torch.bool)
    step = max(1, 2**18 // max(depth, 1))
    for start in range(0, hits.numel(), step):
        chunk = hits[start:start + step]
        same = (scores[pair_row[chunk]] == pair_score[chunk, None]).view(torch.uint8)  # [chunk, K]
        hit_col[start:start + step] = same.argmax(1)
        ambiguous[start:start + step] = same.sum(1, dtype=torch.int32) != 1
    if ambiguous.any():
        docs = list(chain.from_iterable(judged for _, judged in kept))
        columns: dict[int, dict[str, int]] = {}  # doc -> column, built once per row that needs it
        for i in ambiguous.nonzero().squeeze(1).tolist():
            r = int(pair_row[hits[i]])
            if r not in columns:
                columns[r] = {d: c for c, d in enumerate(candidates[r])}
            hit_col[i] = columns[r][docs[int(hits[i])]]
    grades = torch.zeros((n_queries, depth), dtype=torch.long)
    grades[pair_row[hits], hit_col] = pair_grade[hits]
    return _Table(scores, grades, pair_row, pair_grade, n_missing)
