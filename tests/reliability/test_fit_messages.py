"""`mmrerank fit` says what it trains and where the model went, and refuses a fit that would save nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrerank.cli import main
from mmrerank.retrieval.first_stage import FirstStage

CLIP = str(Path(__file__).resolve().parents[2] / "configs" / "clip" / "synthetic.yaml")


def clip_fit(root: Path, config, *extra: str) -> list[str]:
    data = "--data.init_args.config."
    return ["fit", "--config", CLIP, f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=8", f"{data}root={config.root}", f"{data}seed={config.seed}",
            f"{data}train_images={config.train_images}", f"{data}val_images={config.val_images}",
            f"{data}test_images={config.test_images}", *extra]


def test_a_fit_that_would_save_nothing_is_refused_before_training(tiny_config, tmp_path, monkeypatch):
    # the shipped config validates (and so checkpoints) every 200 steps: 150 steps would save nothing
    monkeypatch.setattr("lightning.Trainer.fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"150 steps and save nothing.*every 200 steps.*val_check_interval=150"):
        main(clip_fit(tmp_path, tiny_config, "--trainer.max_steps=150"))
    with pytest.raises(ValueError, match="checkpointing is off"):
        main(clip_fit(tmp_path, tiny_config, "--trainer.max_steps=2", "--trainer.enable_checkpointing=false"))


def test_fit_says_where_the_model_was_saved(tiny_config, tmp_path, capsys):
    main(clip_fit(tmp_path, tiny_config, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                  "--trainer.limit_val_batches=1"))
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    assert f"saved: {checkpoint.absolute()}" in capsys.readouterr().out


def test_a_hidden_first_stage_training_is_announced_first(tiny_config, tmp_path, capsys):
    stage = FirstStage(save_to=str(tmp_path / "fs"), train_steps=2, batch_size=8, synthetic=tiny_config)
    stage.build(progress=False)
    out = capsys.readouterr().out
    assert f"training the first stage (mmrerank-tiny-resnet, 2 steps, batch 8) into {tmp_path / 'fs'}" in out
    assert "first_stage.checkpoint" in out
    stage.build(progress=False)
    assert "training the first stage" not in capsys.readouterr().out  # loaded, not trained
