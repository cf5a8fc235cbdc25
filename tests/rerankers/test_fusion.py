"""The one fusion rule (`Fused`), scoring each pair once for several rows (`Memoized`), and SuperGlobal through the
`Reranker` interface: hand-computed cases and the functions they replace."""

from __future__ import annotations

import pytest
import torch

from mmrerank.core.items import RetrievalTask, Texts
from mmrerank.core.run import Qrels, Run
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.fusion import Fused, Memoized, normalized
from mmrerank.rerankers.superglobal import rerank_candidates
from mmrerank.rerankers.superglobal.reranker import SuperGlobalReranker


class Table(Reranker):
    """Scores a candidate by a fixed table (candidate id -> score) and counts the pairs it scored."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table, self.pairs = table, 0

    def score(self, queries, candidates):
        self.pairs += len(candidates)
        return torch.tensor([self.table[c] for c in candidates])


def one_query_task(docs: list[str]) -> RetrievalTask:
    """One query "q" over `docs`; every item is its id, so a reranker reads ids."""
    return RetrievalTask("toy/t2i", Texts(["q"], ["q"]), Texts(docs, docs),
                         Qrels.from_pairs(["q"], docs, torch.tensor([0]), torch.tensor([0])))


def test_fused_minmax_by_hand():
    docs = ["a", "b", "c", "d", "e"]
    task = one_query_task(docs)
    first = torch.tensor([[5.0, 3.0, 3.0, 1.0, 0.0]])
    run = Run(torch.tensor([[1, 2, 3, 0, 4]]), first, ["q"], docs)  # first stage: b 5, c 3, d 3, a 1, e 0
    reranker = Table({"a": -9.0, "b": -2.0, "c": -1.0, "d": -3.0, "e": 99.0})
    out = Fused(reranker, 4.0, "minmax").rerank(run, task, rerank_depth=3, progress=False)
    # head b, c, d: min-max over (5, 3, 3) -> 1, 0, 0; fused = -2 + 4, -1 + 0, -3 + 0 = 2, -1, -3
    assert out.indices[0].tolist() == [1, 2, 3, 0, 4]
    assert out.scores[0, :3].tolist() == [2.0, -1.0, -3.0]
    assert (out.scores[0, 3:] < -3.0).all() and out.scores[0, 3] > out.scores[0, 4]  # tail below, in order
    alone = Fused(reranker, 0.0, "minmax").rerank(run, task, rerank_depth=3, progress=False)
    assert alone.indices[0, :3].tolist() == [2, 1, 3]  # c -1, b -2, d -3
    raw = Fused(reranker, 0.5).rerank(run, task, rerank_depth=3, progress=False)  # none: + 0.5 x the raw score
    assert raw.indices[0, :3].tolist() == [1, 2, 3] and raw.scores[0, :3].tolist() == [0.5, 0.5, -1.5]  # b, c tie


def test_normalized_per_query_and_ties():
    scores, queries = torch.tensor([3.0, 1.0, 2.0, 7.0, 7.0]), torch.tensor([0, 0, 0, 5, 5])
    assert normalized(scores, queries, "minmax").tolist() == [1.0, 0.0, 0.5, 0.0, 0.0]  # a tied query adds 0
    assert torch.equal(normalized(scores, queries, "none"), scores)
    with pytest.raises(ValueError, match="normalize"):
        Fused(Table({}), 1.0, "zscore")


def test_memoized_scores_each_pair_once_for_every_row():
    docs = [f"d{i}" for i in range(6)]
    task = one_query_task(docs)
    run = Run(torch.arange(6)[None], torch.linspace(1, 0, 6)[None], ["q"], docs)
    table = Table({d: float(i % 3) for i, d in enumerate(docs)})
    memo = Memoized(table)
    plain = memo.rerank(run, task, rerank_depth=4, progress=False)
    fused = Fused(memo, 2.0).rerank(run, task, rerank_depth=4, progress=False)
    assert table.pairs == 4  # the fused row reused the plain row's scores
    assert torch.equal(plain.indices, Table(table.table).rerank(run, task, rerank_depth=4, progress=False).indices)
    alone = Fused(Table(table.table), 2.0).rerank(run, task, rerank_depth=4, progress=False)
    assert torch.equal(fused.indices, alone.indices)
    memo.rerank(run, one_query_task(docs), rerank_depth=4, progress=False)  # another task: scored afresh
    assert table.pairs == 8


def test_superglobal_reranker_reorders_the_head_as_rerank_candidates():
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    database = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    order = torch.argsort(queries @ database.T, dim=1, descending=True)
    ids = [f"x{i}" for i in range(20)]
    run = Run(order, torch.sort(queries @ database.T, dim=1, descending=True).values, ["a", "b", "c"], ids)
    task = RetrievalTask("toy/i2i", Texts(["a", "b", "c"], ["a", "b", "c"]), Texts(ids, ids),
                         Qrels.from_pairs(["a"], ids, torch.tensor([0]), torch.tensor([0])))
    out = SuperGlobalReranker(queries, database, k=3, beta=0.15).rerank(run, task, rerank_depth=8)
    expected = torch.cat([rerank_candidates(queries, database, order[:, :8], 3, 0.15), order[:, 8:]], dim=1)
    assert torch.equal(out.indices, expected)
    assert (out.scores[:, :-1] > out.scores[:, 1:]).all()  # the run stays sorted by score
    with pytest.raises(TypeError, match="whole shortlists"):
        SuperGlobalReranker(queries, database).score(["a"], ["x0"])
