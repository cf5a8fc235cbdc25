"""The evaluation loop: retrieval equals brute force, reranking keeps lists whole, an oracle reranker lifts
Success@1 to the first stage's Success@depth, and the report is written."""

from __future__ import annotations

import json

import pytest
import torch

from mmrerank.core.items import RetrievalTask, Texts
from mmrerank.core.metrics import evaluate as measure
from mmrerank.core.run import PAD
from mmrerank.evaluation import FIRST_STAGE, Report, evaluate_rows
from mmrerank.rerankers.base import Reranker
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.index import retrieve


class OracleReranker(Reranker):
    """Scores 1 for relevant pairs, 0 otherwise; its task's items are the ids themselves (see `id_task`)."""

    def __init__(self, task) -> None:
        q = task.qrels
        self.relevant = {(task.queries.ids[a], task.corpus.ids[b]) for a, b, g in
                         zip(q.query_index.tolist(), q.doc_index.tolist(), q.grade.tolist()) if g > 0}

    def score(self, queries, candidates):
        return torch.tensor([float((q, c) in self.relevant) for q, c in zip(queries, candidates)])


def id_task(task):
    """The same task with each item replaced by its id, so a reranker sees ids instead of pixels and texts."""
    return RetrievalTask(task.name, Texts(task.queries.ids, task.queries.ids), Texts(task.corpus.ids, task.corpus.ids),
                         task.qrels)


class ReverseReranker(Reranker):
    """Scores pairs by a counter that decreases: reverses each query's head, leaves its tail alone."""

    def __init__(self) -> None:
        self.calls = []

    def score(self, queries, candidates):
        self.calls.append(len(queries))
        return torch.arange(len(queries), dtype=torch.float)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return CLIPEncoder("mmrerank-tiny-vit")


@pytest.fixture(scope="module")
def embeddings(encoder, tiny_test_split):
    return encoder.encode(tiny_test_split.images, 16, False), encoder.encode(tiny_test_split.captions, 64, False)


def test_retrieve_equals_brute_force(tiny_test_split, embeddings):
    image_emb, text_emb = embeddings
    run = retrieve(text_emb, image_emb, tiny_test_split.captions.ids, tiny_test_split.images.ids, depth=7)
    expected = torch.topk(text_emb @ image_emb.T, 7, dim=1)
    assert torch.equal(run.indices, expected.indices)
    assert torch.allclose(run.scores, expected.values, atol=1e-5)


def test_rerank_reverses_head_keeps_tail_and_whole_queries(tiny_test_split, embeddings):
    image_emb, text_emb = embeddings
    task = tiny_test_split.task("t2i")
    run = retrieve(text_emb, image_emb, task.queries.ids, task.corpus.ids, depth=10)
    reranker = ReverseReranker()
    out = reranker.rerank(run, task, rerank_depth=4, batch_size=9, progress=False)
    assert all(n % 4 == 0 for n in reranker.calls)  # 9 pairs a batch -> two whole queries of 4
    # within each query's 4-candidate head the counter rises, so the head comes back reversed
    assert torch.equal(out.indices[:, :4], run.indices[:, :4].flip(1))
    assert torch.equal(out.indices[:, 4:], run.indices[:, 4:])
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()


def test_oracle_reranker_reaches_first_stage_success_at_depth(tiny_test_split, embeddings, tmp_path):
    image_emb, text_emb = embeddings
    report = Report("oracle")
    for direction in ("t2i", "i2t"):
        task = id_task(tiny_test_split.task(direction))
        queries, corpus = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
        run = retrieve(queries, corpus, task.queries.ids, task.corpus.ids, 20)
        evaluate_rows(report, task, run, {"oracle": OracleReranker(task)}, rerank_depth=8,
                 measures=["Success@1", "Success@8", "nDCG@10"], progress=False)
        first, oracle = report.rows[FIRST_STAGE], report.rows["oracle"]
        assert oracle[f"{direction}/Success@1"] == pytest.approx(first[f"{direction}/Success@8"])
        assert oracle[f"{direction}/Success@1"] >= first[f"{direction}/Success@1"]
        assert report.curves[FIRST_STAGE][direction][4] == pytest.approx(measure(run, task.qrels, ["Success@5"])[
            "Success@5"])
    paths = report.save(tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.md", "success_at_k.png", "summary.png"]
    assert json.loads(paths[0].read_text())["rows"] == report.rows
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| oracle |" in paths[1].read_text()
    assert Report.load(paths[0]).rows == report.rows


def test_rank_single_query():
    class Length(Reranker):
        def score(self, queries, candidates):
            return torch.tensor([float(len(c)) for c in candidates])

    ranked = Length().rank("q", ["aa", "a", "aaa", "bb"])
    assert ranked.order == [2, 0, 3, 1]  # the tie "aa" / "bb" keeps input order
    assert ranked.top_k(2).scores == [3.0, 2.0]


def test_pad_rows_survive_reranking(tiny_test_split, embeddings):
    image_emb, text_emb = embeddings
    task = tiny_test_split.task("t2i")
    run = retrieve(text_emb, image_emb, task.queries.ids, task.corpus.ids, depth=5)
    run.indices[0, 2:] = PAD
    run.scores[0, 2:] = float("-inf")
    out = ReverseReranker().rerank(run, task, rerank_depth=4, progress=False)
    assert out.indices[0, :2].tolist() == run.indices[0, :2].flip(0).tolist()
    assert (out.indices[0, 2:] == PAD).all()
