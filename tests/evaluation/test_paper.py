"""A config's `paper:` block: parsed and checked before any work, carried into the report and printed beside the
measured numbers ("Against the paper")."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import yaml

from mmrerank import benchmark as benchmark_module
from mmrerank.benchmark import benchmark
from mmrerank.datasets import SyntheticPages
from mmrerank.evaluation.report import Paper, Report
from mmrerank.evaluation.suites import ImageText, Pages
from mmrerank.rerankers.presets import PresetRows
from mmrerank.rerankers.rows import RerankerRows
from mmrerank.retrieval.first_stage import FirstStage
from tests.helpers.parsers import benchmark_parser

BLIP_ROW = "Salesforce/blip-itm-base-coco (LAVIS ITM + ITC)"


def parse(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    parser = benchmark_parser()
    return parser.instantiate_classes(parser.parse_args(["--config", str(path)]))


def test_the_paper_block_parses_into_a_paper(tmp_path):
    rows = {BLIP_ROW: {"i2t/Success@1": 0.82, "t2i/Success@1": 0.645}}
    config = parse(tmp_path, {"paper": {"source": "LAVIS docs/benchmark.rst", "rows": rows}})
    assert config.paper == Paper("LAVIS docs/benchmark.rst", rows)


@pytest.mark.parametrize(("paper", "message"), [
    ({"source": "x", "rows": {"first stage": {"t2i/Success@1": 82.0}}}, "0.82 for 82 %"),
    ({"source": "x", "rows": {"first stage": {"Success@1": 0.82}}}, "not <direction>/<measure>"),
    ({"source": "", "rows": {"first stage": {"t2i/Success@1": 0.82}}}, "source is empty"),
    ({"source": "x", "rows": {}}, "at least one row"),
])
def test_a_malformed_paper_block_is_refused_at_parse_time(tmp_path, capsys, paper, message):
    with pytest.raises((ValueError, SystemExit)) as err:
        parse(tmp_path, {"paper": paper})
    assert message in str(err.value) + capsys.readouterr().err


@dataclass
class NamelessRows(RerankerRows):
    """A spec that cannot name its rows before it builds them (and builds none)."""

    def rows(self, context):
        return {}


def never_built(*args, **kwargs):
    raise AssertionError("the first stage was built before the paper was checked")


@pytest.mark.parametrize(("rows", "message"), [
    ({"frist stage": {"t2i/Success@1": 0.5}}, "row 'frist stage' is not among the rows ['Salesforce/blip-itm-base"),
    ({BLIP_ROW: {"t2i/Success@3": 0.5}}, "'t2i/Success@3' is not among ['i2t/Success@1', 'i2t/Success@5'"),
    ({BLIP_ROW: {"pages/micro/R@1": 0.5}}, "this config runs the directions ['i2t', 't2i']"),
])
def test_unknown_rows_and_columns_are_refused_before_any_work(tmp_path, monkeypatch, rows, message):
    monkeypatch.setattr(benchmark_module, "build_first_stage", never_built)
    image_text = ImageText(measures=["Success@1", "Success@5"],
                           rerankers=[PresetRows("Salesforce/blip-itm-base-coco", row=BLIP_ROW)])
    with pytest.raises(ValueError, match="paper: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        benchmark(FirstStage(save_to=str(tmp_path / "never")), image_text, output_dir=str(tmp_path / "out"),
                  progress=False, paper=Paper("test", rows))
    assert not (tmp_path / "out").exists()


def pages_benchmark(tmp_path, paper: Paper, rerankers=()) -> Report:
    """BM25 over 4 synthetic documents: no model, no first stage (seconds)."""
    pages = Pages(SyntheticPages(seed=5, documents=4, root=str(tmp_path / "pages")), rerank_depth=3,
                  rerankers=list(rerankers))
    return benchmark(FirstStage(save_to=str(tmp_path / "never")), ImageText(directions=[]), pages=pages,
                     output_dir=str(tmp_path / "out"), progress=False, paper=paper)


def test_a_tiny_run_prints_the_paper_beside_the_measured_numbers(tmp_path):
    paper = Paper("Some et al. 2025, table 2", {"BM25": {"pages/micro/R@1": 0.25, "pages/macro/R@3": 0.5}})
    report = pages_benchmark(tmp_path, paper)
    measured = report.rows["BM25"]
    assert report.against_paper() == [("BM25", "pages/micro/R@1", 0.25, measured["pages/micro/R@1"]),
                                      ("BM25", "pages/macro/R@3", 0.5, measured["pages/macro/R@3"])]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**Against the paper (Some et al. 2025, table 2)**" in markdown
    assert "| row | measure | paper | measured | difference |" in markdown
    difference = measured["pages/micro/R@1"] - 0.25
    assert f"| BM25 | pages/micro/R@1 | 0.2500 | {measured['pages/micro/R@1']:.4f} | {difference:+.4f} |" in markdown
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["paper"] == {"source": paper.source, "rows": paper.rows}
    assert Report.load(tmp_path / "out" / "report.json").paper_table() == report.paper_table()


def test_a_row_only_the_run_could_check_fails_after_the_report_is_written(tmp_path):
    paper = Paper("test", {"BM25": {"pages/micro/R@1": 0.25}, "ghost": {"pages/micro/R@1": 0.5}})
    with pytest.raises(ValueError, match=r"row 'ghost' is not among the rows \['BM25'\]"):
        pages_benchmark(tmp_path, paper, rerankers=[NamelessRows()])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| ghost | pages/micro/R@1 | 0.5000 | not measured |  |" in markdown
