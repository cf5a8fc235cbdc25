"""MLLM rows in `mmrerank benchmark`: page rows recomputed by a plain loop over the reranker's scores, the `t2i`
row reorders only the reranked head, and a pages-only benchmark builds no first stage."""

from __future__ import annotations

import pytest
import torch

from mmrerank.benchmark import benchmark
from mmrerank.datasets import Synthetic, SyntheticPages
from mmrerank.datasets.mmdocir import load_mmdocir
from mmrerank.datasets.synthetic.pages import ensure_pages
from mmrerank.evaluation.suites import ImageText, Pages
from mmrerank.rerankers.mllm import MLLMReranker, Page, build_tiny_vlm
from mmrerank.rerankers.mllm.benchmark import MLLMRows
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.pages import bm25_page_scores

pytestmark = pytest.mark.slow  # end to end: trains models


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_vlm(tmp_path_factory.mktemp("mllm") / "tiny"))


def _recall_at_1(data, scores) -> float:
    """Micro page Recall@1: the share of a question's gold pages that its top page is (ties: lower page)."""
    total = 0.0
    for q, question in enumerate(data.annotations.questions):
        top = int(torch.sort(scores[q], descending=True, stable=True).indices[0])
        total += (top in question.gold_pages) / len(question.gold_pages)
    return total / len(data.questions)


def test_pages_only_rows_match_a_plain_loop(tiny_model, tmp_path):
    pages = SyntheticPages(seed=5, documents=4, root=str(tmp_path / "pages"))
    mllm = MLLMRows(base_model=tiny_model, alpha=[2.0], batch_size=8)
    checkpoint = tmp_path / "never"
    report = benchmark(first_stage=FirstStage(save_to=str(checkpoint)), image_text=ImageText(directions=[]),
                       pages=Pages(pages, rerank_depth=3, batch_size=8, rerankers=[mllm]),
                       output_dir=str(tmp_path / "out"), progress=False)
    assert not checkpoint.exists()  # no image-text directions, no SuperGlobal: the first stage was never built
    folder = ensure_pages(pages.config)
    data = load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")
    bm25 = bm25_page_scores(data)
    reranker = MLLMReranker(tiny_model, use_ocr=True, device="cpu")
    expected, fused = [], []
    for q, first in enumerate(bm25):  # rerank BM25's top 3 by hand; the rest keep BM25 order below them
        rows = list(data.candidates(q))
        head = torch.sort(first, descending=True, stable=True).indices[:3].tolist()
        scores = reranker.score([data.questions[q]] * 3, [Page(data.images[rows[p]], data.ocr_text[rows[p]])
                                                          for p in head])
        mine = first - first.max() - 1e3  # below every reranker log-probability
        mine[head] = scores
        expected.append(mine)
        low, high = float(first[head].min()), float(first[head].max())
        bonus = [2.0 * (float(first[p]) - low) / (high - low) if high > low else 0.0 for p in head]
        fused.append(mine.clone())
        fused[-1][head] = scores + torch.tensor(bonus)
    rows = report.rows
    assert rows["BM25"]["pages/micro/R@1"] == pytest.approx(_recall_at_1(data, bm25))
    assert rows["BM25 + MLLM (top 3)"]["pages/micro/R@1"] == pytest.approx(_recall_at_1(data, expected))
    assert rows["BM25 + MLLM (top 3, alpha 2)"]["pages/micro/R@1"] == pytest.approx(_recall_at_1(data, fused))
    assert rows["BM25 + MLLM (top 3)"]["pages/micro/R@3"] == rows["BM25"]["pages/micro/R@3"]  # same top-3 set


def test_image_text_row_reorders_only_the_head(tiny_model, tiny_config, tmp_path):
    mllm = MLLMRows(base_model=tiny_model, directions=["t2i"], image_size=56, batch_size=16)
    first_stage = FirstStage(save_to=str(tmp_path / "fs"), train_steps=2, batch_size=8)
    image_text = ImageText(Synthetic(synthetic=tiny_config), ["t2i"], depth=10, rerank_depth=2,
                           measures=["Success@1", "Success@2", "Success@5"], rerankers=[mllm])
    report = benchmark(first_stage, image_text, output_dir=str(tmp_path / "out"), progress=False)
    first, reranked = report.rows["first stage"], report.rows["mllm"]
    assert set(reranked) == {"t2i/Success@1", "t2i/Success@2", "t2i/Success@5"}
    # reordering the top 2 keeps which images are in the top 2 and top 5
    assert reranked["t2i/Success@2"] == first["t2i/Success@2"]
    assert reranked["t2i/Success@5"] == first["t2i/Success@5"]
    assert not any(k.startswith("pages/") for row in report.rows.values() for k in row)
