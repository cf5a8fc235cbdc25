"""Runs and qrels: dict and TREC round trips, sorting with ties, PAD handling, re-indexing."""

from __future__ import annotations

import math

import pytest
import torch

from mmrerank.core.run import PAD, Qrels, Run


def small_run() -> Run:
    return Run(torch.tensor([[2, 0, 1], [1, PAD, PAD]]), torch.tensor([[0.5, 0.9, 0.5], [0.1, 7.0, 7.0]]),
               ["q1", "q2"], ["d0", "d1", "d2"])


def test_pad_scores_are_minus_inf_and_sorted_keeps_tie_order():
    run = small_run()
    assert math.isinf(run.scores[1, 1]) and run.scores[1, 1] < 0
    s = run.sorted()
    # q1: d0 (0.9) first, then the tie d2 / d1 in their column order
    assert s.indices[0].tolist() == [0, 2, 1]
    assert s.indices[1].tolist() == [1, PAD, PAD]
    assert s.top(2).indices.tolist() == [[0, 2], [1, PAD]]
    assert s.top(10).depth == 3


def test_dict_round_trip():
    run = small_run()
    d = run.to_dict()
    assert d == {"q1": {"d2": 0.5, "d0": pytest.approx(0.9), "d1": 0.5}, "q2": {"d1": pytest.approx(0.1)}}
    back = Run.from_dict(d, run.doc_ids)
    assert back.to_dict() == d
    with pytest.raises(KeyError, match="dx"):
        Run.from_dict({"q": {"dx": 1.0}}, ["d0"])


def test_trec_round_trip(tmp_path):
    run = small_run()
    run.write_trec(tmp_path / "run.trec", tag="t")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "d0", "1", "0.9", "t"]
    assert [line.split()[2] for line in lines] == ["d0", "d2", "d1", "d1"]
    back = Run.read_trec(tmp_path / "run.trec", run.doc_ids)
    assert back.sorted().indices.tolist() == [[0, 2, 1], [1, PAD, PAD]]
    (tmp_path / "bad.trec").write_text("q1 Q0 d0 1\n")
    with pytest.raises(ValueError, match="6 columns"):
        Run.read_trec(tmp_path / "bad.trec")


def test_qrels_dict_trec_reindex_transpose(tmp_path):
    qrels = Qrels.from_dict({"q1": {"d0": 2, "d2": 0}, "q2": {"d1": 1}})
    assert qrels.to_dict() == {"q1": {"d0": 2, "d2": 0}, "q2": {"d1": 1}}
    qrels.write_trec(tmp_path / "qrels")
    assert Qrels.read_trec(tmp_path / "qrels").to_dict() == qrels.to_dict()
    moved = qrels.reindex(["q2", "q3"], ["d1", "d0"])  # q1 is dropped, d1 moves to row 0
    assert moved.to_dict() == {"q2": {"d1": 1}}
    assert moved.doc_index.tolist() == [0]
    assert qrels.transpose().to_dict() == {"d0": {"q1": 2}, "d2": {"q1": 0}, "d1": {"q2": 1}}


def test_shape_errors():
    with pytest.raises(ValueError, match="Q, K"):
        Run(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2), ["a", "b"], ["d0"])
    with pytest.raises(ValueError, match="out of range"):
        Run(torch.tensor([[3]]), torch.tensor([[1.0]]), ["a"], ["d0"])
    with pytest.raises(ValueError, match="query ids"):
        Run(torch.tensor([[0]]), torch.tensor([[1.0]]), ["a", "b"], ["d0"])
