"""Page retrieval on the synthetic MMDocIR stand-in: BM25 first stage and page-recall rows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bm25s")

from mmrerank.datasets.mmdocir import load_mmdocir  # noqa: E402
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages  # noqa: E402
from mmrerank.evaluation import Report, bm25_page_scores, evaluate_pages  # noqa: E402
from mmrerank.retrieval.bm25 import bm25_scores  # noqa: E402


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = ensure_pages(PagesConfig(seed=4, documents=10, pages=(4, 6), questions=3,
                                      root=str(tmp_path_factory.mktemp("pages"))))
    return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")


def test_bm25_rows_match_a_per_question_loop(pages):
    scores = bm25_page_scores(pages)
    hits = []
    for q, question in enumerate(pages.annotations.questions):
        texts = [pages.ocr_text[p] for p in pages.candidates(q)]
        alone = bm25_scores([pages.questions[q]], texts)[0]
        assert torch.allclose(scores[q], alone, atol=1e-6)  # the same document index, question by question
        best = int(torch.sort(alone, descending=True, stable=True).indices[0])  # ties: lower page first
        hits.append(best in question.gold_pages)
    report = Report("pages")
    evaluate_pages(report, pages, scores, "BM25")
    assert report.rows["BM25"]["pages/micro/R@1"] == pytest.approx(sum(hits) / len(hits))


def test_oracle_scores_reach_full_recall(pages):
    oracle = []
    for q, question in enumerate(pages.annotations.questions):
        row = torch.zeros(len(pages.candidates(q)))
        row[question.gold_pages] = 1.0
        oracle.append(row)
    report = Report("pages")
    evaluate_pages(report, pages, oracle, "oracle")
    assert all(v == pytest.approx(1.0) for v in report.rows["oracle"].values())


def test_page_groups_hold_gold_then_bm25_hard_negatives(pages):
    from mmrerank.rerankers.mllm.data import PageGroups

    groups = PageGroups(pages, negatives=2)
    scores = bm25_page_scores(pages)
    assert len(groups) > 0
    for q, rows in groups.groups:
        question, doc_pages = pages.annotations.questions[q], list(pages.candidates(q))
        gold = [doc_pages[g] for g in question.gold_pages]
        assert rows[0] == gold[0] and not set(rows[1:]) & set(gold) and set(rows) <= set(doc_pages)
        negative_scores = [float(scores[q][doc_pages.index(r)]) for r in rows[1:]]
        others = [float(scores[q][i]) for i, r in enumerate(doc_pages) if r not in gold and r not in rows]
        assert negative_scores == sorted(negative_scores, reverse=True)
        assert all(negative_scores[-1] >= s for s in others)  # the hardest negatives were taken
    text, candidates = groups[0]
    assert text == pages.questions[groups.groups[0][0]] and len(candidates) == 3
    assert candidates[0].text == pages.ocr_text[groups.groups[0][1][0]]


def test_rerank_pages_reorders_only_the_head(pages):
    from mmrerank.evaluation import rerank_pages
    from mmrerank.rerankers.base import Reranker

    class TextLength(Reranker):
        def score(self, queries, candidates):
            return torch.tensor([float(len(page.text)) for page in candidates])

    first = bm25_page_scores(pages)
    depth = 2
    reranked = rerank_pages(TextLength(), pages, first, depth, progress=False)
    for q, (before, after) in enumerate(zip(first, reranked)):
        texts = [pages.ocr_text[p] for p in pages.candidates(q)]
        order = torch.sort(before, descending=True, stable=True).indices.tolist()
        head = sorted(order[:depth], key=lambda p: -len(texts[p]))  # stable: ties keep BM25 order
        expected = head + order[depth:]
        assert torch.sort(after, descending=True, stable=True).indices.tolist() == expected


def test_fusion_adds_normalised_first_stage_to_the_head_only():
    from mmrerank.evaluation import fuse_first_stage

    first = torch.tensor([1.0, 5.0, 3.0, 3.0, 0.0])  # first-stage order: 1, 2, 3, 0, 4
    reranked = torch.tensor([-9.0, -2.0, -1.0, -3.0, 99.0])  # only pages 1, 2, 3 (the top 3) are read
    fused = fuse_first_stage(reranked, first, depth=3, alpha=4.0)
    # head min-max over BM25 (3, 5): page 1 -> 1, pages 2, 3 -> 0; fused = reranked + 4 * that
    assert fused[[1, 2, 3]].tolist() == [2.0, -1.0, -3.0]
    assert fused[0] < fused[[1, 2, 3]].min() and fused[4] < fused[0]  # the tail: below the head, in BM25 order
    alone = fuse_first_stage(reranked, first, depth=3, alpha=0.0)
    assert alone[[1, 2, 3]].tolist() == [-2.0, -1.0, -3.0]
    tied = fuse_first_stage(reranked, torch.full((5,), 2.0), depth=2, alpha=4.0)  # all tie: nothing to add
    assert tied[[0, 1]].tolist() == [-9.0, -2.0] and tied[[2, 3, 4]].tolist() == [-10.0, -11.0, -12.0]
    with pytest.raises(ValueError, match="same 1-D shape"):
        fuse_first_stage(reranked, first[:4], depth=3, alpha=1.0)


def test_rerank_pages_with_alpha_fuses(pages):
    from mmrerank.evaluation import fuse_first_stage, rerank_pages
    from mmrerank.rerankers.base import Reranker

    class TextLength(Reranker):
        def score(self, queries, candidates):
            return torch.tensor([float(len(page.text)) / 100 for page in candidates])

    first = bm25_page_scores(pages)
    alone = rerank_pages(TextLength(), pages, first, 3, progress=False)
    fused = rerank_pages(TextLength(), pages, first, 3, progress=False, alpha=2.0)
    for a, f, b in zip(alone, fused, first):
        torch.testing.assert_close(f, fuse_first_stage(a, b, 3, 2.0))
    assert any(not torch.equal(torch.sort(a, descending=True, stable=True).indices,
                               torch.sort(f, descending=True, stable=True).indices) for a, f in zip(alone, fused))


def test_clip_page_scores_match_a_per_question_loop(tmp_path):
    from mmrerank.datasets.mmdocir import load_mmdocir
    from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
    from mmrerank.evaluation import clip_page_scores
    from mmrerank.retrieval.clip import CLIPEncoder

    folder = ensure_pages(PagesConfig(seed=5, documents=2, root=str(tmp_path)))
    data = load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")
    torch.manual_seed(0)
    encoder = CLIPEncoder("mmrerank-tiny-resnet").eval()
    scores = clip_page_scores(data, encoder, batch_size=3, progress=False)
    assert len(scores) == len(data.questions)
    with torch.no_grad():
        for q in (0, len(data.questions) - 1):
            pages = data.candidates(q)
            images = encoder.encode_images(encoder.image_tensor([data.images[p] for p in pages]))
            text = encoder.encode_texts([data.questions[q]])[0]
            torch.testing.assert_close(scores[q], images @ text, atol=1e-5, rtol=1e-4)
    run = data.per_document_run(scores)  # a Run over each document's pages, like BM25's
    assert run.indices.shape[0] == len(data.questions)
