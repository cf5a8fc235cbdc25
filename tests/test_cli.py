"""The console script: every YAML under configs/ parses, `fit` trains (also under DDP on two CPU processes),
and `benchmark` writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrerank.benchmark import check_paper
from mmrerank.cli import MMRerankCLI, main
from mmrerank.datasets import ImageTextSource, InstanceSource
from mmrerank.rerankers import RerankerRows
from tests.helpers.parsers import ParseOnly, benchmark_parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING = sorted(p for p in CONFIGS.rglob("*.yaml")
                  if p.parent.name not in ("benchmark", "superglobal", "scaling", "repro"))
BENCHMARKS = sorted([*(CONFIGS / "benchmark").glob("*.yaml"), *(CONFIGS / "superglobal").glob("*.yaml"),
                     *(CONFIGS / "repro").glob("*.yaml")])


def test_configs_exist():
    assert TRAINING and BENCHMARKS


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_training_config_parses(path, tmp_path, monkeypatch):
    cli = ParseOnly(args=["--config", str(path), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.config.model.class_path.startswith("mmrerank.")
    if "synthetic" in path.stem:  # offline configs also build (relative paths land in tmp_path)
        monkeypatch.chdir(tmp_path)
        built = MMRerankCLI(args=["--config", str(path), f"--trainer.default_root_dir={tmp_path}"], run=False)
        assert built.model is not None and built.datamodule is not None


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_config_parses(path):
    parser = benchmark_parser()
    config = parser.instantiate_classes(parser.parse_args(["--config", str(path)]))
    image_text = config.image_text
    assert image_text.dataset is None or isinstance(image_text.dataset, ImageTextSource)
    assert image_text.depth >= image_text.rerank_depth
    assert all(isinstance(spec, RerankerRows) for suite in (image_text, config.pages, config.instances, config.vidore)
               if suite is not None for spec in suite.rerankers or [])
    if config.paper is not None:  # its rows and columns are ones the config produces
        check_paper(config.paper, image_text, config.pages, config.instances, config.vidore)
    if path.parent.name == "superglobal":
        assert image_text.directions == [] and isinstance(config.instances.dataset, InstanceSource)


def fit_args(tiny_config, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / "clip" / "synthetic.yaml"), f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=8", f"--data.init_args.config.root={tiny_config.root}",
            f"--data.init_args.config.seed={tiny_config.seed}",
            f"--data.init_args.config.train_images={tiny_config.train_images}",
            f"--data.init_args.config.val_images={tiny_config.val_images}",
            f"--data.init_args.config.test_images={tiny_config.test_images}", *extra]


def final_checkpoint(root: Path) -> dict:
    (ckpt,) = root.rglob("*.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def run_cli(args: list[str], cwd: Path | None = None) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if cwd is not None:  # relative paths in a config (checkpoint folders) then land under cwd; keep mmrerank importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CONFIGS.parent), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "mmrerank.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_fit_single_and_ddp_take_the_same_steps(tiny_config, tmp_path):
    run_cli(fit_args(tiny_config, tmp_path / "one", "--trainer.devices=1", "--trainer.accelerator=cpu"))
    run_cli(fit_args(tiny_config, tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2",
                     "--trainer.accelerator=cpu"))
    one, ddp = final_checkpoint(tmp_path / "one"), final_checkpoint(tmp_path / "ddp")
    assert one["global_step"] == ddp["global_step"] == 3
    assert one["state_dict"].keys() == ddp["state_dict"].keys()
    # both runs trained: the weights moved away from the shared seeded initialisation differently
    key = next(k for k in one["state_dict"] if k.startswith("encoder.model.visual.") and k.endswith("weight"))
    assert not torch.equal(one["state_dict"][key], ddp["state_dict"][key])


@pytest.mark.slow
def test_benchmark_command_writes_report(tiny_config, tmp_path):
    out = tmp_path / "report"
    synthetic = "--image_text.dataset.init_args.synthetic"
    run_cli(["benchmark", "--config", "benchmark/first_stage.yaml", "--image_text.dataset=Synthetic",
             f"{synthetic}.root={tiny_config.root}",
             f"{synthetic}.seed={tiny_config.seed}", f"{synthetic}.train_images={tiny_config.train_images}",
             f"{synthetic}.val_images={tiny_config.val_images}", f"{synthetic}.test_images={tiny_config.test_images}",
             f"--first_stage.save_to={tmp_path / 'fs'}", "--first_stage.train_steps=2",
             "--first_stage.batch_size=8", "--image_text.depth=20", f"--output_dir={out}", "--progress=false"])
    report = json.loads((out / "report.json").read_text())
    row = report["rows"]["first stage"]
    assert set(row) == {f"{d}/{m}" for d in ("t2i", "i2t") for m in ("Success@1", "Success@5", "Success@10", "nDCG@10")}
    assert all(0.0 <= v <= 1.0 for v in row.values())
    assert (out / "success_at_k.png").stat().st_size > 0 and (tmp_path / "fs" / "config.json").is_file()


def last_checkpoint(root: Path, name: str) -> dict:
    """The checkpoint a `configs/mllm/` file's callback writes (relative to the working folder `root`)."""
    return torch.load(root / "checkpoints" / "mllm" / name / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_fit_mllm_on_synthetic_pages(tmp_path):
    run_cli(["fit", "--config", str(CONFIGS / "mllm" / "synthetic_pages.yaml"),
             f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
             "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
             f"--model.init_args.model_name_or_path={tmp_path / 'tiny'}", "--data.init_args.batch_size=2",
             f"--data.init_args.train.root={tmp_path}", "--data.init_args.train.documents=4",
             f"--data.init_args.val.root={tmp_path}", "--data.init_args.val.documents=2"], cwd=tmp_path)
    from mmrerank.rerankers.mllm import MLLMReranker

    exported = tmp_path / "checkpoints" / "mllm" / "synthetic-pages"  # the config's export_dir, under the cwd
    trained = MLLMReranker.from_pretrained(exported)
    untrained = MLLMReranker(str(tmp_path / "tiny"), device="cpu")  # the tiny base the config built
    changed = [k for k, v in trained.model.state_dict().items()
               if not torch.equal(v, untrained.model.state_dict()[k])]
    assert changed and not any("visual" in k for k in changed)  # 3 steps moved the LLM; the vision tower is frozen


@pytest.mark.slow
def test_fit_mllm_on_synthetic_images(tiny_config, tmp_path):
    """A few `fit` steps of the image-text config on a tiny split: mines groups with a 2-step first stage, trains,
    and leaves the final weights where the config's checkpoint callback puts them (under the working folder)."""
    data = "--data.init_args."
    run_cli(["fit", "--config", str(CONFIGS / "mllm" / "synthetic_images.yaml"),
             f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
             "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
             f"--model.init_args.model_name_or_path={tmp_path / 'tiny'}", "--model.init_args.training.warmup_steps=1",
             f"{data}batch_size=2", f"{data}captions={{train: 12, val: 4}}", f"{data}depth=6",
             f"{data}image_size=56", f"{data}cache_dir={tmp_path / 'groups'}",
             f"{data}synthetic.root={tiny_config.root}", f"{data}synthetic.seed={tiny_config.seed}",
             f"{data}synthetic.train_images={tiny_config.train_images}",
             f"{data}synthetic.val_images={tiny_config.val_images}",
             f"{data}synthetic.test_images={tiny_config.test_images}",
             f"{data}first_stage.save_to={tmp_path / 'fs'}", f"{data}first_stage.train_steps=2",
             f"{data}first_stage.batch_size=8", "--trainer.callbacks.every_n_train_steps=1"], cwd=tmp_path)
    checkpoint = last_checkpoint(tmp_path, "synthetic-images")
    assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["training"]["schedule"] == "cosine"
    assert {p.name.split("-")[0] for p in (tmp_path / "groups").glob("*.json")} == {"train", "val"}


@pytest.mark.parametrize("bad, says", [
    (["--image_text.dataset=Synthetic", "--image_text.dataset.split=tset"], "unknown split 'tset'"),
    (["--image_text.measures=[nDCG@x]"], "unknown measure"),
    (["--image_text.depth=-5"], "need depth >= 1"),
    (["--device=tpu"], "--device 'tpu'"),
    (["--first_stage.train_steps=0"], "train_steps must be >= 1"),
])
def test_bad_benchmark_arguments_stop_before_any_work(bad, says, tmp_path, monkeypatch, capsys):
    """Refused at parse time: nothing is rendered, trained or written (the cache stays empty)."""
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", *bad, f"--output_dir={tmp_path / 'out'}"])
    assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
