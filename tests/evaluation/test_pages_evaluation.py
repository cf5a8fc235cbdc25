"""Page retrieval on the synthetic MMDocIR stand-in: BM25 first stage, reranking through the one loop, and
page-recall rows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bm25s")

from mmrerank.datasets.mmdocir import load_mmdocir  # noqa: E402
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages  # noqa: E402
from mmrerank.evaluation import Report, evaluate_rows  # noqa: E402
from mmrerank.evaluation.suites import PageTask  # noqa: E402
from mmrerank.rerankers.base import Reranker  # noqa: E402
from mmrerank.rerankers.fusion import Fused  # noqa: E402
from mmrerank.retrieval.bm25 import bm25_scores  # noqa: E402
from mmrerank.retrieval.pages import bm25_page_scores, clip_page_scores  # noqa: E402


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
    evaluate_rows(report, PageTask(pages), pages.per_document_run(scores), first_stage="BM25")
    assert report.rows["BM25"]["pages/micro/R@1"] == pytest.approx(sum(hits) / len(hits))


def test_oracle_scores_reach_full_recall(pages):
    oracle = []
    for q, question in enumerate(pages.annotations.questions):
        row = torch.zeros(len(pages.candidates(q)))
        row[question.gold_pages] = 1.0
        oracle.append(row)
    report = Report("pages")
    evaluate_rows(report, PageTask(pages), pages.per_document_run(oracle), first_stage="oracle")
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


class TextLength(Reranker):
    """Scores a page by its OCR text's length / 100."""

    def score(self, queries, candidates):
        return torch.tensor([float(len(page.text)) / 100 for page in candidates])


def test_reranking_pages_reorders_only_the_head(pages):
    first, task, depth = bm25_page_scores(pages), PageTask(pages), 2
    reranked = task.page_scores(TextLength().rerank(pages.per_document_run(first), task, depth, progress=False))
    for q, (before, after) in enumerate(zip(first, reranked)):
        texts = [pages.ocr_text[p] for p in pages.candidates(q)]
        order = torch.sort(before, descending=True, stable=True).indices.tolist()
        head = sorted(order[:depth], key=lambda p: -len(texts[p]))  # stable: ties keep BM25 order
        expected = head + order[depth:]
        assert torch.sort(after, descending=True, stable=True).indices.tolist() == expected


def test_fused_pages_add_min_max_bm25_over_each_head(pages):
    first, task, depth, alpha = bm25_page_scores(pages), PageTask(pages), 3, 2.0
    run = pages.per_document_run(first)
    fused = task.page_scores(Fused(TextLength(), alpha, "minmax").rerank(run, task, depth, progress=False))
    changed = False
    for q, (bm25, after) in enumerate(zip(first, fused)):
        texts = [pages.ocr_text[p] for p in pages.candidates(q)]
        order = torch.sort(bm25, descending=True, stable=True).indices.tolist()
        head = bm25[order[:depth]]
        span = float(head.max() - head.min())
        norm = [(float(bm25[p]) - float(head.min())) / span if span > 0 else 0.0 for p in order[:depth]]
        expected = [len(texts[p]) / 100 + alpha * n for p, n in zip(order[:depth], norm)]  # by hand, per page
        torch.testing.assert_close(after[order[:depth]], torch.tensor(expected))
        alone = sorted(order[:depth], key=lambda p: -len(texts[p]))
        changed |= torch.sort(after, descending=True, stable=True).indices.tolist()[:depth] != alone
    assert changed  # the fusion changes some order


def test_clip_page_scores_match_a_per_question_loop(tmp_path):
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
