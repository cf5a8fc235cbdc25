"""The page-benchmark reproduction configs (configs/repro/*_mmdocir.yaml) run end to end on tiny models in the hub's
layout, and a paper block's pages columns are checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("bm25s")

from mmrerank.benchmark import benchmark  # noqa: E402
from mmrerank.datasets import SyntheticPages  # noqa: E402
from mmrerank.datasets.synthetic.pages import PagesConfig  # noqa: E402
from mmrerank.evaluation import Report, evaluate_rows  # noqa: E402
from mmrerank.evaluation.report import Paper  # noqa: E402
from mmrerank.evaluation.suites import ImageText, Pages, PageTask, page_columns  # noqa: E402
from mmrerank.rerankers.mllm import Page  # noqa: E402
from mmrerank.rerankers.mllm.presets import JINA, QWEN3_VL_2B  # noqa: E402
from mmrerank.rerankers.mllm.tiny_presets import build_tiny_jina, build_tiny_qwen3_vl  # noqa: E402
from mmrerank.rerankers.presets import load_reranker  # noqa: E402
from mmrerank.retrieval.first_stage import FirstStage  # noqa: E402
from mmrerank.retrieval.pages import bm25_page_scores  # noqa: E402
from tests.helpers.parsers import benchmark_parser  # noqa: E402

REPRO = Path(__file__).resolve().parents[2] / "configs" / "repro"
TINY = PagesConfig(seed=6, documents=3, pages=(4, 6), questions=2)


def tiny_pages(root: Path) -> Pages:
    return Pages(SyntheticPages(TINY.seed, TINY.documents, TINY.pages, TINY.questions, root=str(root)), rerank_depth=3)


def test_page_columns_name_what_a_pages_row_holds(tmp_path):
    data = tiny_pages(tmp_path).load()
    report = Report("pages")
    evaluate_rows(report, PageTask(data), data.per_document_run(bm25_page_scores(data)), first_stage="BM25")
    assert list(report.rows["BM25"]) == [f"pages/{c}" for c in page_columns()]


def test_page_text_false_gives_rerankers_the_page_image_alone(tmp_path):
    data = tiny_pages(tmp_path).load()
    with_text, image_only = PageTask(data).corpus, PageTask(data, page_text=False).corpus
    for i in range(len(data.page_ids)):
        assert with_text[i].image.tobytes() == image_only[i].image.tobytes() == data.images[i].tobytes()
        assert with_text[i].text == data.ocr_text[i] != "" and image_only[i].text == ""


def never_loaded(self):
    raise AssertionError("the pages were loaded before the paper was checked")


@pytest.mark.parametrize("column", ["pages/R@1", "pages/micro/R@10", "pages/micro/nDCG@5"])
def test_an_unknown_pages_column_is_refused_before_any_work(tmp_path, monkeypatch, column):
    monkeypatch.setattr(Pages, "load", never_loaded)
    known = r"\['pages/macro/R@1', 'pages/macro/R@3', 'pages/macro/R@5', 'pages/micro/R@1'"
    with pytest.raises(ValueError, match=rf"paper: row 'BM25': column '{column}' is not among {known}"):
        benchmark(FirstStage(save_to=str(tmp_path / "never")), ImageText(directions=[]),
                  pages=tiny_pages(tmp_path), output_dir=str(tmp_path / "out"), progress=False,
                  paper=Paper("test", {"BM25": {column: 0.5}}))
    assert not (tmp_path / "out").exists()


def naive_micro_recall(data, scores: list[torch.Tensor], k: int) -> float:
    """Mean over questions of |top-k pages of the document by score ∩ gold| / |gold| (a plain loop)."""
    total = 0.0
    for q, question in enumerate(data.annotations.questions):
        order = sorted(range(len(scores[q])), key=lambda p: -float(scores[q][p]))[:k]
        total += len(set(order) & set(question.gold_pages)) / len(question.gold_pages)
    return total / len(data.annotations.questions)


@pytest.mark.slow  # a whole benchmark per config: parse, BM25, tiny model loads and scoring
@pytest.mark.parametrize(("config", "preset", "build"), [
    ("qwen3_vl_reranker_mmdocir.yaml", QWEN3_VL_2B, build_tiny_qwen3_vl),
    ("jina_reranker_m0_mmdocir.yaml", JINA, build_tiny_jina),
])
def test_repro_page_config_reranks_every_page_of_a_document_by_its_image(tmp_path, config, preset, build):
    raw = yaml.safe_load((REPRO / config).read_text())
    assert raw["pages"]["rerank_depth"] >= 100 and raw["pages"]["page_text"] is False and "paper" not in raw
    assert raw["pages"]["dataset"]["class_path"] == "MMDocIR"
    folder = build(tmp_path / preset.split("/")[1], seed=7)
    # the real data and checkpoint swapped for the synthetic pages and a tiny model in the hub's layout
    pages = dict(raw["pages"])
    pages["dataset"] = {"class_path": "SyntheticPages", "init_args": {
        "seed": TINY.seed, "documents": TINY.documents, "pages": list(TINY.pages), "questions": TINY.questions,
        "root": str(tmp_path / "pages")}}
    pages["rerankers"][0]["init_args"].update(path=str(folder), options={"batch_size": 4, "device": "cpu"})
    path = tmp_path / config
    path.write_text(yaml.safe_dump({**raw, "pages": pages, "output_dir": str(tmp_path / "out")}))
    parser = benchmark_parser()
    args = parser.instantiate_classes(parser.parse_args(["--config", str(path)]))
    report = benchmark(image_text=args.image_text, pages=args.pages, output_dir=args.output_dir, device="cpu",
                       progress=False)

    assert set(report.rows) == {"BM25", preset}
    # depth 100 covers every page of each document: the row is the reranker's own ranking of all the pages of the
    # question's document, each page given as its image alone (page_text: false), whatever BM25 said
    data = args.pages.load()
    reranker = load_reranker(str(folder), preset=preset, device="cpu")
    scores = []
    for q, question in enumerate(data.questions):
        pages_of_doc = [Page(data.images[p]) for p in data.candidates(q)]
        scores.append(reranker.score([question] * len(pages_of_doc), pages_of_doc))
    for k in (1, 3, 5):
        assert report.rows[preset][f"pages/micro/R@{k}"] == pytest.approx(naive_micro_recall(data, scores, k))
