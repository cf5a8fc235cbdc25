"""MMDocIR's own measures, as the benchmark's evaluation code computes them.

Read from `metric_eval.py` of github.com/MMDocRAG/MMDocIR (commit 394d84d; `search.py` there calls it): its
`evaluate_page` (with `top_k_indices`, `precision`, `recall`, `ndcg`, `average_precision`,
`mean_reciprocal_rank`) and `evaluate_layout` (with `recall_layout`, `calculate_overlap_score`). Each question
ranks only its own document's pages (or layouts), and the numbers are reported per domain, `macro` (the mean of
the domain means) and `micro` (the mean over questions).

These functions take per-question records (plain dicts, lists of floats) rather than a `Run`, because the
benchmark's definitions differ from the trec_eval ones of `mmrerank.core.metrics` in three places:

- precision@k divides by the number of pages ranked, min(k, pages of the document), not by k;
- MAP@k divides by the gold pages retrieved in the top k, not by all gold pages;
- the ideal DCG has min(pages ranked, |gold|) gold pages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["MMDOCIR_DOMAINS", "MMDOCIR_PAGE_METRICS", "mmdocir_layout_recall", "mmdocir_page_metrics"]

MMDOCIR_PAGE_METRICS = ("recall", "precision", "ndcg", "map", "mrr")

# `domain_list` of `evaluate_page` / `evaluate_layout`, in the order the paper's tables use; the annotation file's
# 313 documents use exactly these 10 names
MMDOCIR_DOMAINS = ("Research report / Introduction", "Administration/Industry file", "Tutorial/Workshop",
                   "Academic paper", "Brochure", "Financial report", "Guidebook", "Government", "Laws", "News")

_Box = tuple[float, float, float, float]


def _top_k(scores: Sequence[float], k: int, where: str) -> list[int]:
    """Indices by score, descending, the first min(k, n): `top_k_indices`, whose stable sort ranks ties by index."""
    values = [float(s) for s in scores]
    if any(math.isnan(s) for s in values):
        raise ValueError(f"{where}: the scores hold NaN, which has no rank")
    return sorted(range(len(values)), key=lambda i: -values[i])[:k]


def _page_values(gold: Sequence[int], top: Sequence[int]) -> dict[str, float]:
    """The five measures of one question, from its gold page list and its ranked top pages (distinct)."""
    gold_set = set(gold)
    hit_ranks = [rank for rank, page in enumerate(top, 1) if page in gold_set]  # 1-based
    hits = len(hit_ranks)
    # as the official code: |gold| is the length of the list given (the annotation file repeats no page), and the
    # ideal DCG has as many gold pages as both the list and the ranking can hold
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(top), len(gold)) + 1))
    dcg = sum(1.0 / math.log2(rank + 1) for rank in hit_ranks)
    return {
        "recall": hits / len(gold) if gold else 0.0,
        "precision": hits / len(top) if top else 0.0,
        "ndcg": dcg / ideal if ideal > 0 else 0.0,
        # precision at the i-th hit is i / its rank; averaged over the hits, not over |gold|
        "map": sum(i / rank for i, rank in enumerate(hit_ranks, 1)) / hits if hits else 0.0,
        "mrr": 1.0 / hit_ranks[0] if hits else 0.0,
    }


def _average(values: Sequence[float], domains: Sequence[str], listed: Sequence[str] | None) -> dict[str, object]:
    """`{"domains": {domain: mean}, "macro": mean of the domain means, "micro": mean over questions}`.

    With `listed`, the domains are exactly those, in that order, and one without questions counts 0 in the macro
    mean, as `evaluate_page` does (its ZeroDivisionError branch); otherwise the domains are those present.
    """
    by_domain: dict[str, list[float]] = {name: [] for name in listed or ()}
    for value, domain in zip(values, domains):
        by_domain.setdefault(domain, []).append(value)
    means = {domain: sum(v) / len(v) if v else 0.0 for domain, v in by_domain.items()}
    return {"domains": means,
            "macro": sum(means.values()) / len(means) if means else math.nan,
            "micro": sum(values) / len(values) if values else math.nan}


def _check(records: Sequence[Mapping[str, object]], k: int, keys: Sequence[str],
           domains: Sequence[str] | None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    for i, record in enumerate(records):
        missing = [key for key in keys if key not in record]
        if missing:
            raise ValueError(f"record {i} has no {', '.join(map(repr, missing))}; its keys are {sorted(record)}")
        if domains is not None and str(record["domain"]) not in domains:
            raise ValueError(f"record {i}: domain {record['domain']!r} is not among domains={list(domains)}")


def mmdocir_page_metrics(records: Sequence[Mapping[str, object]], k: int, *,
                         domains: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
    """MMDocIR page retrieval: recall, precision, nDCG, MAP and MRR at k, per domain and averaged.

    Each question ranks its own document's pages by `scores_page`, descending; equal scores rank the lower page
    number first (a model that scores every page alike returns the document in page order). With `top` the first
    min(k, pages) pages of that ranking and `gold` the gold page list (`page_id`):

    - recall@k = |top ∩ gold| / |gold|;
    - precision@k = |top ∩ gold| / |top|: a document of 2 pages divides by 2 at k = 5;
    - nDCG@k: binary gains, discount log2(rank + 1), the ideal DCG over min(|top|, |gold|) gold pages at ranks 1..;
    - MAP@k: the precision at the rank of each gold page in the top k, summed and divided by the number of gold
      pages in the top k (not by |gold|), 0 when there is none;
    - MRR@k: 1 / rank of the first gold page in the top k, 0 when there is none.

    A question without gold pages scores 0 on every measure.

    Args:
        records: one dict per question with `domain` (str), `page_id` (gold 0-based page numbers) and
            `scores_page` (one float per page of the question's document, in page order).
        k: the cutoff, a positive integer.
        domains: the domains to report, in order; `MMDOCIR_DOMAINS` reproduces the official script, whose macro
            mean is over its 10 domains, a domain without questions counting 0 (so on a subset of the questions it
            differs from the mean over the domains present). By default, the domains present, in order of first
            appearance: the same numbers on the whole benchmark, where every domain has questions.

    Returns:
        `{measure: {"domains": {domain: mean over its questions}, "macro": mean of the domain means, "micro": mean
        over all questions}}` for each measure in `MMDOCIR_PAGE_METRICS`, as fractions in [0, 1]; `macro` and
        `micro` are NaN when there are no records (and no `domains`).

    Raises:
        ValueError: k is not a positive integer, a record lacks a key, holds NaN scores or (with `domains`) a
            domain outside them; the message gives the record's position.
    """
    _check(records, k, ("domain", "page_id", "scores_page"), domains)
    per_question: dict[str, list[float]] = {name: [] for name in MMDOCIR_PAGE_METRICS}
    for i, record in enumerate(records):
        top = _top_k(record["scores_page"], k, f"record {i}: scores_page")
        values = _page_values([int(p) for p in record["page_id"]], top)
        for name in MMDOCIR_PAGE_METRICS:
            per_question[name].append(values[name])
    names = [str(record["domain"]) for record in records]
    return {name: _average(per_question[name], names, domains) for name in MMDOCIR_PAGE_METRICS}


def _union_area(boxes: Sequence[_Box]) -> float:
    """Exact area covered by the union of axis-aligned boxes `(x1, y1, x2, y2)`.

    The x edges cut the plane into vertical slabs; within a slab every box either spans it or misses it, so the
    covered height is the length of the union of the spanning boxes' y intervals (sorted and merged).
    """
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    edges = sorted({x for b in boxes for x in (b[0], b[2])})
    area = 0.0
    for left, right in zip(edges, edges[1:]):
        spans = sorted((b[1], b[3]) for b in boxes if b[0] <= left and b[2] >= right)
        covered, top, bottom = 0.0, -math.inf, -math.inf
        for y1, y2 in spans:
            if y1 > bottom:  # a new run of overlapping intervals starts
                covered += bottom - top if bottom > top else 0.0
                top, bottom = y1, y2
            else:
                bottom = max(bottom, y2)
        covered += bottom - top if bottom > top else 0.0
        area += (right - left) * covered
    return area


def _as_box(raw: Mapping[str, object], where: str) -> tuple[int, _Box]:
    try:
        page = int(raw["page"])
        x1, y1, x2, y2 = (float(v) for v in raw["bbox"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where} must be a dict with 'page' and 'bbox' [x1, y1, x2, y2], got {raw!r:.120}") from err
    return page, (x1, y1, x2, y2)


def _overlap(a: _Box, b: _Box) -> float:
    """The intersection area of two boxes, 0 when they only touch or miss (`calculate_overlap_score`)."""
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _layout_value(gold: list[tuple[int, _Box]], kept: dict[int, list[_Box]], overlap: str) -> float:
    """One question's layout recall from its gold boxes and its kept boxes by page."""
    if overlap == "sum":
        # recall_layout: every kept box's overlap with every gold box on its page, summed; the gold areas unclipped
        covered = sum(_overlap(box, g) for page, g in gold for box in kept.get(page, []))
        total = sum((g[2] - g[0]) * (g[3] - g[1]) for _, g in gold)
        return covered / total if total != 0 else 0.0
    covered = total = 0.0
    for page, (x1, y1, x2, y2) in gold:
        total += max(0.0, x2 - x1) * max(0.0, y2 - y1)
        clipped = [(max(x1, b[0]), max(y1, b[1]), min(x2, b[2]), min(y2, b[3])) for b in kept.get(page, [])]
        covered += _union_area(clipped)
    return min(1.0, covered / total) if total > 0 else 0.0


def _kept_boxes(retrieved: Sequence[object], k: int, where: str) -> dict[int, list[_Box]]:
    """The top k retrieved boxes by `score` (ties keep list order), grouped by page."""
    scores = []
    for j, box in enumerate(retrieved):
        score = float(box.get("score", math.nan)) if isinstance(box, Mapping) else math.nan
        if math.isnan(score):
            raise ValueError(f"{where}[{j}] has no numeric 'score'")
        scores.append(score)
    kept: dict[int, list[_Box]] = {}
    for j in _top_k(scores, k, where):
        page, box = _as_box(retrieved[j], f"{where}[{j}]")
        kept.setdefault(page, []).append(box)
    return kept


def mmdocir_layout_recall(records: Sequence[Mapping[str, object]], k: int, *, gold_key: str = "layout_mapping",
                          retrieved_key: str = "retrieved_layouts", overlap: str = "union",
                          domains: Sequence[str] | None = None) -> dict[str, object]:
    """MMDocIR layout retrieval: the share of the gold area that the top-k retrieved boxes cover.

    The retrieved boxes are ranked by `score`, descending (equal scores keep their list order), and the first k
    kept. Areas are computed exactly (no rasterising) in the boxes' own page coordinates; only boxes on the same
    page overlap. A question whose gold boxes have no area scores 0. Two ways to count the covered area:

    - `overlap="union"` (the default): for each gold box g, the area of the UNION of g's intersections with the kept
      boxes, so a region that several retrieved boxes overlap counts once and nothing outside g counts; divided by
      the sum of the gold areas. Never above 1.
    - `overlap="sum"`: the official `recall_layout`: the intersection areas of every kept box with every gold box,
      summed (overlapping retrieved boxes count their shared region twice), divided by the sum of the gold areas;
      it can exceed 1. Use it to compare with the paper's layout numbers.

    Args:
        records: one dict per question with `domain`, the gold boxes under `gold_key` (the annotation file's
            `layout_mapping`: dicts with `page` and `bbox` `[x1, y1, x2, y2]`) and the retrieved boxes under
            `retrieved_key` (dicts with `page`, `bbox` and `score`).
        k: how many retrieved boxes count, a positive integer.
        gold_key, retrieved_key: the record keys of the two box lists.
        overlap: `"union"` or `"sum"`, see above.
        domains: the domains to report, as in `mmdocir_page_metrics`.

    Returns:
        `{"domains": {domain: mean recall}, "macro": mean of the domain means, "micro": mean over questions}`, as
        fractions; `macro` and `micro` are NaN when there are no records (and no `domains`).
    """
    if overlap not in ("union", "sum"):
        raise ValueError(f"overlap must be 'union' or 'sum' (the official recall_layout), got {overlap!r}")
    _check(records, k, ("domain", gold_key, retrieved_key), domains)
    values = []
    for i, record in enumerate(records):
        kept = _kept_boxes(list(record[retrieved_key]), k, f"record {i}: {retrieved_key}")
        gold = [_as_box(raw, f"record {i}: {gold_key}[{j}]") for j, raw in enumerate(record[gold_key])]
        values.append(_layout_value(gold, kept, overlap))
    return _average(values, [str(record["domain"]) for record in records], domains)
