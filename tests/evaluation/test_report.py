"""`Report`: tables per benchmark, rerankers that do not beat their first stage called out, timings, plots."""

from __future__ import annotations

from PIL import Image

from mmrerank.evaluation.report import Report


def report() -> Report:
    r = Report("demo")
    r.add("first stage", "t2i", {"Success@1": 0.5, "Success@5": 0.9})
    r.add("edje", "t2i", {"Success@1": 0.7, "Success@5": 0.85}, [0.7, 0.85])
    r.add("BM25", "pages", {"micro/R@1": 0.25, "micro/R@3": 0.6})
    r.add("BM25 + MLLM", "pages", {"micro/R@1": 0.2, "micro/R@3": 0.7})
    r.baselines.update({"edje": "first stage", "BM25 + MLLM": "BM25"})
    r.timings.update({"first stage ready": 12.0, "t2i edje": 3.25})
    return r


def test_headline_columns_are_rank_one_and_rank_free():
    assert Report.headline(["t2i/Success@1", "t2i/Success@5", "t2i/nDCG@10", "i2i/medium/mAP", "pages/micro/R@1",
                            "pages/micro/R@3"]) == ["t2i/Success@1", "i2i/medium/mAP", "pages/micro/R@1"]


def test_a_reranker_below_its_first_stage_is_called_out_in_the_markdown():
    r = report()
    # edje beats the first stage at rank 1 (a worse Success@5 is not a headline column); the MLLM does not
    assert r.shortfalls() == ["BM25 + MLLM: pages/micro/R@1 0.2000, not above BM25's 0.2500"]
    markdown = r.to_markdown()
    assert "**Rerankers that do not beat their first stage:** BM25 + MLLM" in markdown
    assert "| t2i edje | 3.2 |" in markdown or "| t2i edje | 3.3 |" in markdown
    assert markdown.count("| system |") == 2  # one table per benchmark
    r.rows["BM25 + MLLM"]["pages/micro/R@1"] = 0.3
    assert r.shortfalls() == [] and "Every reranker row beats" in r.to_markdown()


def test_save_writes_both_figures_and_round_trips(tmp_path):
    r = report()
    r.save(tmp_path)
    for name in ("success_at_k.png", "summary.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    again = Report.load(tmp_path / "report.json")
    assert again.rows == r.rows and again.baselines == r.baselines and again.timings == r.timings
