"""`Reranker.rerank` with NaN / infinite reranker scores: an error naming the pair by default, or demoted on request.

Before the fix, a NaN among the reranked scores made the tail's placeholders start at 0, so the un-reranked tail
jumped above reranked candidates (and NaN itself sorted first).
"""

from __future__ import annotations

import pytest
import torch

from mmrerank.core.items import RetrievalTask, Texts
from mmrerank.core.run import PAD, Qrels, Run
from mmrerank.rerankers.base import Reranker

NAN, INF = float("nan"), float("inf")


class TableReranker(Reranker):
    """Scores each (query, candidate) pair from a fixed table; the task's items are their ids."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table

    def score(self, queries, candidates):
        return torch.tensor([self.table[(q, c)] for q, c in zip(queries, candidates)])


def _task(query_ids: list[str], doc_ids: list[str]) -> RetrievalTask:
    qrels = Qrels.from_dict({query_ids[0]: {doc_ids[0]: 1}}, query_ids, doc_ids)
    return RetrievalTask("toy/t2i", Texts(query_ids, query_ids), Texts(doc_ids, doc_ids), qrels)


def _run(rows: dict[str, list[str]], doc_ids: list[str]) -> Run:
    """A first-stage run whose rows rank the given candidates in the given order (scores 10, 9, 8, ...)."""
    return Run.from_dict({q: {d: 10.0 - i for i, d in enumerate(cands)} for q, cands in rows.items()}, doc_ids)


def _ranked(run: Run, row: int = 0) -> list[str]:
    return [run.doc_ids[i] for i in run.indices[row].tolist() if i != PAD]


DOCS = ["a", "b", "c", "d"]


def test_the_issue_case_is_an_error_naming_query_and_candidate():
    """Depth 2 of a, b, c, d with reranked logits -3 (a) and NaN (b): the old code ranked b, c, d, a."""
    reranker = TableReranker({("q1", "a"): -3.0, ("q1", "b"): NAN})
    with pytest.raises(ValueError, match=r"query 'q1' candidate 'b': nan"):
        reranker.rerank(_run({"q1": DOCS}, DOCS), _task(["q1"], DOCS), rerank_depth=2, progress=False)


@pytest.mark.parametrize("bad", [NAN, -INF, INF])
def test_nonfinite_errors_by_default(bad):
    reranker = TableReranker({("q1", "a"): 1.0, ("q1", "b"): 2.0, ("q2", "a"): bad, ("q2", "c"): 0.5})
    run = _run({"q1": ["a", "b", "d"], "q2": ["c", "a", "d"]}, DOCS)
    with pytest.raises(ValueError, match=r"1 non-finite score\(s\): query 'q2' candidate 'a'"):
        reranker.rerank(run, _task(["q1", "q2"], DOCS), rerank_depth=2, progress=False)


def test_demote_puts_the_nan_below_finite_scores_above_the_tail():
    """By hand: a is reranked -3, b is NaN -> a first, then b (demoted), then the tail c, d in first-stage order."""
    reranker = TableReranker({("q1", "a"): -3.0, ("q1", "b"): NAN})
    out = reranker.rerank(_run({"q1": DOCS}, DOCS), _task(["q1"], DOCS), rerank_depth=2, progress=False,
                          nonfinite="demote")
    assert _ranked(out) == ["a", "b", "c", "d"]
    assert out.scores[0].tolist() == [-3.0, -4.0, -5.0, -6.0]  # finite score kept, then placeholders a step apart
    assert out.to_dict() == {"q1": {"a": -3.0, "b": -4.0, "c": -5.0, "d": -6.0}}  # no NaN leaks out


def test_demote_orders_the_head_and_keeps_demoted_in_first_stage_order():
    # first stage: e, a, b, c, d, f; depth 5 with scores a 1, b -inf, c 7, d NaN, e +inf
    docs = ["a", "b", "c", "d", "e", "f"]
    table = {("q", "a"): 1.0, ("q", "b"): -INF, ("q", "c"): 7.0, ("q", "d"): NAN, ("q", "e"): INF}
    out = TableReranker(table).rerank(_run({"q": ["e", "a", "b", "c", "d", "f"]}, docs), _task(["q"], docs),
                                      rerank_depth=5, progress=False, nonfinite="demote")
    # finite by score (c 7, a 1), then the non-finite in first-stage order (e, b, d), then the tail (f)
    assert _ranked(out) == ["c", "a", "e", "b", "d", "f"]
    assert out.scores[0].tolist() == [7.0, 1.0, 0.0, -1.0, -2.0, -3.0]
    assert (out.scores[0, :-1] > out.scores[0, 1:]).all()


def test_demote_with_no_finite_score_and_empty_slots():
    table = {("q1", "a"): NAN, ("q1", "b"): NAN, ("q2", "c"): 2.0}
    run = _run({"q1": ["a", "b", "c", "d"], "q2": ["c"]}, DOCS)  # q2 has one candidate: three empty slots
    out = TableReranker(table).rerank(run, _task(["q1", "q2"], DOCS), rerank_depth=2, progress=False,
                                      nonfinite="demote")
    assert _ranked(out, 0) == ["a", "b", "c", "d"]
    assert out.scores[0].tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert _ranked(out, 1) == ["c"] and out.indices[1, 1:].tolist() == [PAD] * 3
    assert out.scores[1, 0].item() == 2.0 and torch.isneginf(out.scores[1, 1:]).all()


def test_tail_placeholders_stay_distinct_for_huge_scores():
    """`floor - 1` rounds back to the floor in float32 at 1e30; the placeholders must still be strictly below."""
    table = {("q1", "a"): -1e30, ("q1", "b"): 2.0}
    out = TableReranker(table).rerank(_run({"q1": DOCS}, DOCS), _task(["q1"], DOCS), rerank_depth=2, progress=False)
    assert _ranked(out) == ["b", "a", "c", "d"]
    assert (out.scores[0, :-1] > out.scores[0, 1:]).all()


def test_finite_scores_unchanged_and_unknown_mode_refused():
    table = {("q1", "a"): 0.5, ("q1", "b"): 3.0}
    run, task = _run({"q1": DOCS}, DOCS), _task(["q1"], DOCS)
    for mode in ("error", "demote"):
        out = TableReranker(table).rerank(run, task, rerank_depth=2, progress=False, nonfinite=mode)
        assert _ranked(out) == ["b", "a", "c", "d"] and out.scores[0].tolist() == [3.0, 0.5, -0.5, -1.5]
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        TableReranker(table).rerank(run, task, rerank_depth=2, progress=False, nonfinite="last")
