"""The BLIP paper-reproduction configs (configs/repro/blip_itm_lavis_*.yaml): LAVIS's numbers and depths, rows the
paper block can find, and a tiny end-to-end run that prints the paper beside the measured numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmrerank.benchmark import benchmark, check_paper
from mmrerank.datasets import Synthetic
from mmrerank.evaluation.report import Paper
from mmrerank.evaluation.suites import ImageText
from mmrerank.rerankers.presets import PresetRows
from mmrerank.retrieval.first_stage import FirstStage
from tests.helpers.parsers import benchmark_parser

REPRO = Path(__file__).resolve().parents[3] / "configs" / "repro"
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "blip_itm_hf" / "model"
# salesforce/LAVIS 506965b9 docs/benchmark.rst, BLIP retrieval: TR (i2t) and IR (t2i) R@1 / R@5 / R@10, in %;
# k_test from lavis/projects/blip/eval/ret_{coco,flickr}_eval.yaml
LAVIS = {
    "blip_itm_lavis_coco.yaml": ("Salesforce/blip-itm-base-coco", 256, (82.0, 95.8, 98.1), (64.5, 86.0, 91.7)),
    "blip_itm_lavis_flickr30k.yaml": ("Salesforce/blip-itm-base-flickr", 128, (96.9, 99.9, 100.0),
                                      (87.5, 97.6, 98.9)),
}


def parse(path: Path):
    parser = benchmark_parser()
    return parser.instantiate_classes(parser.parse_args(["--config", str(path)]))


@pytest.mark.parametrize("name", sorted(LAVIS))
def test_repro_config_holds_lavis_numbers_model_and_depth(name):
    preset, k_test, tr, ir = LAVIS[name]
    config = parse(REPRO / name)
    (spec,) = config.image_text.rerankers
    assert isinstance(spec, PresetRows) and spec.name == preset and spec.options["protocol"] == "lavis"
    assert config.image_text.depth == config.image_text.rerank_depth == k_test
    expected = {**{f"i2t/Success@{k}": v / 100 for k, v in zip((1, 5, 10), tr)},
                **{f"t2i/Success@{k}": v / 100 for k, v in zip((1, 5, 10), ir)}}
    assert config.paper.rows == {spec.row: pytest.approx(expected)}
    check_paper(config.paper, config.image_text, config.pages, config.instances)  # every row and column is produced


@pytest.mark.slow  # trains a tiny first stage for two steps
def test_tiny_run_of_the_coco_repro_config(tiny_config, tmp_path):
    """The COCO config with the data, first stage, depth and model shrunk: the tiny BLIP of the parity fixture."""
    raw = yaml.safe_load((REPRO / "blip_itm_lavis_coco.yaml").read_text())
    spec = raw["image_text"]["rerankers"][0]["init_args"]
    rows = PresetRows(spec["name"], path=str(FIXTURE), options={**spec["options"], "batch_size": 16}, row=spec["row"])
    image_text = ImageText(Synthetic(synthetic=tiny_config), ["t2i", "i2t"], depth=4, rerank_depth=4,
                           measures=raw["image_text"]["measures"], rerankers=[rows])
    paper = Paper(**raw["paper"])
    report = benchmark(FirstStage(save_to=str(tmp_path / "fs"), train_steps=2, batch_size=8), image_text,
                       output_dir=str(tmp_path / "out"), progress=False, paper=paper)
    measured = report.rows[spec["row"]]
    compared = report.against_paper()
    assert len(compared) == 6 and all(got == measured[column] for _, column, _, got in compared)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"**Against the paper ({paper.source})**" in markdown
    assert f"| {spec['row']} | i2t/Success@1 | 0.8200 | {measured['i2t/Success@1']:.4f} |" in markdown
