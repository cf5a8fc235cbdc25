"""The embedded default, end to end: `mmrerank benchmark` with the packaged default config, shrunk (tiny splits, a few
steps), trains what is missing through `fit` into the cache and reports every family's rows, plots and timings; a
second run trains nothing and prints the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmrerank.cli import DEFAULT_BENCHMARK, main
from mmrerank.fitting import CONFIG_DIR, DONE

pytestmark = pytest.mark.slow  # trains a first stage, EDJE and the tiny MLLM for a few steps each


def synthetic_args(prefix: str, config) -> list[str]:
    return [f"--{prefix}.synthetic.{k}={getattr(config, k)}" for k in
            ("root", "seed", "train_images", "val_images", "test_images")]


def shrunk_default(tiny_config, tmp_path: Path) -> Path:
    """The packaged default config with every size and schedule cut down, the recipes' own arguments kept."""
    config = yaml.safe_load((CONFIG_DIR / DEFAULT_BENCHMARK).read_text())
    config["first_stage"].update(train_steps=3, batch_size=8)
    image_text = config["image_text"]
    image_text["dataset"]["init_args"]["synthetic"] = {k: getattr(tiny_config, k) for k in
                                                     ("root", "seed", "train_images", "val_images", "test_images")}
    image_text.update(depth=12, rerank_depth=4, batch_size=16)
    edje = image_text["rerankers"][0]["init_args"]["fit"]
    edje["args"] += ["--trainer.max_steps=2", "--data.init_args.batch_size=2", "--data.init_args.curriculum_steps=1",
                     "--data.init_args.pool=4", "--data.init_args.mined=8", "--model.init_args.warmup_steps=1",
                     *[arg for split in ("train", "val") for arg in
                       (f"--data.init_args.{split}=Synthetic", f"--data.init_args.{split}.init_args.split={split}",
                        *synthetic_args(f"data.init_args.{split}.init_args", tiny_config))]]
    pages = config["pages"]
    pages["dataset"]["init_args"].update(documents=4, root=str(tmp_path / "pages"))
    mllm = pages["rerankers"][0]["init_args"]["fit"]
    mllm["args"] += ["--trainer.max_steps=2", "--data.init_args.batch_size=2", "--model.init_args.warmup_steps=1",
                     f"--data.init_args.train.root={tmp_path / 'pages'}", "--data.init_args.train.documents=4"]
    config["instances"]["dataset"]["init_args"] = {"queries": 3, "easy": 2, "hard": 2, "junk": 1, "distractors": 12,
                                                   "image_size": 64, "root": str(tmp_path / "i2i")}
    config["instances"]["rerank_depth"] = 10
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


EXPECTED_ROWS = {"first stage", "edje", "edje + 20 x first stage", "CLIP", "BM25", "BM25 + MLLM (top 5)",
                 "BM25 + MLLM (top 5, alpha 1)", "GeM", "SuperGlobal pooling", "SuperGlobal pooling + rerank"}


def test_default_benchmark_reports_every_family_and_reuses_what_it_trained(tiny_config, tmp_path, monkeypatch,
                                                                          capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMRERANK_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder but the report
    config = shrunk_default(tiny_config, tmp_path)
    main(["benchmark", "--config", str(config), "--progress=false", "--output_dir=first"])
    report = json.loads((tmp_path / "first" / "report.json").read_text())

    assert set(report["rows"]) == EXPECTED_ROWS
    columns = {system: {c.split("/")[0] for c in row} for system, row in report["rows"].items()}
    assert columns["edje"] == columns["first stage"] == {"t2i", "i2t"}
    assert columns["BM25 + MLLM (top 5)"] == columns["CLIP"] == {"pages"}
    assert columns["SuperGlobal pooling + rerank"] == {"i2i"}
    assert report["baselines"] == {"edje": "first stage", "edje + 20 x first stage": "first stage",
                                   "BM25 + MLLM (top 5)": "BM25", "BM25 + MLLM (top 5, alpha 1)": "BM25",
                                   "SuperGlobal pooling + rerank": "SuperGlobal pooling"}
    assert report["curves"]["BM25"]["pages"] and len(report["curves"]["first stage"]["t2i"]) == 12
    for stage in ("first stage ready", "EDJERows training", "MLLMRows training", "t2i edje", "pages CLIP",
                  "pages BM25 + MLLM (top 5)", "i2i SuperGlobal pooling descriptors"):
        assert report["timings"][stage] >= 0, stage
    for plot in ("success_at_k.png", "summary.png"):
        with Image.open(tmp_path / "first" / plot) as image:
            assert image.format == "PNG" and image.width > 600
    markdown = (tmp_path / "first" / "report.md").read_text()
    assert "| step | seconds |" in markdown and "first stage" in markdown
    # 3 first-stage steps and 2 reranker steps beat nothing: the report must say so, not hide it
    assert "do not beat their first stage" in markdown or "Every reranker row beats" in markdown

    trained = sorted(p.name for p in (cache / "trained").iterdir() if not p.name.startswith("."))  # .locks aside
    assert [name.rsplit("-", 1)[0] for name in trained] == ["edje-synthetic", "mllm-synthetic_pages"]
    for folder in (cache / "trained" / name for name in trained):  # whole: the model, and the marker written last
        assert (folder / DONE).is_file() and (folder / "model" / "config.json").is_file()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lightning_logs").exists()

    capsys.readouterr()
    main(["benchmark", "--config", str(config), "--progress=false", "--output_dir=second"])
    again = json.loads((tmp_path / "second" / "report.json").read_text())
    assert "training" not in " ".join(again["timings"])  # nothing trained the second time
    assert again["rows"] == report["rows"]  # and the same numbers, from the same cached models
    assert sorted(p.name for p in (cache / "trained").iterdir() if not p.name.startswith(".")) == trained

    marks = {name: (cache / "trained" / name / DONE).stat().st_mtime_ns for name in trained}
    main(["benchmark", "--config", str(config), "--progress=false", "--output_dir=third", "--retrain=true"])
    retrained = json.loads((tmp_path / "third" / "report.json").read_text())
    assert {"EDJERows training", "MLLMRows training"} <= set(retrained["timings"])
    assert all((cache / "trained" / name / DONE).stat().st_mtime_ns > marks[name] for name in trained)
    # every model trains to the same weights again, EDJE too although its caches are warm now (SeedAfterCaches)
    for system in ("first stage", "BM25 + MLLM (top 5)", "SuperGlobal pooling + rerank", "edje",
                   "edje + 20 x first stage"):
        assert retrained["rows"][system] == report["rows"][system]
