"""`mmrerank.fitting`: packaged configs found from anywhere; a trained folder is keyed by what it was trained from."""

from __future__ import annotations

from pathlib import Path

from mmrerank.fitting import CONFIG_DIR, packaged_config, trained_folder
from mmrerank.rerankers.edje.benchmark import EDJERows
from mmrerank.rerankers.rows import FitRecipe
from mmrerank.retrieval.first_stage import FirstStage


def test_packaged_configs_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = str(CONFIG_DIR / "edje" / "synthetic.yaml")
    assert packaged_config("configs/edje/synthetic.yaml") == packaged_config("edje/synthetic.yaml") == expected
    (tmp_path / "mine.yaml").write_text("a: 1\n")
    assert packaged_config("mine.yaml") == "mine.yaml"  # a file here wins
    assert packaged_config("nope/nothing.yaml") == "nope/nothing.yaml"  # left for the parser to refuse


def test_trained_folder_changes_with_config_text_arguments_and_first_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "edje.yaml"
    config.write_text("trainer: {max_steps: 5}\n")

    def folder(args=(), stage: FirstStage | None = None) -> Path:
        return trained_folder(EDJERows(fit=FitRecipe(str(config), list(args))), stage or FirstStage())

    base = folder()
    assert base.parent == tmp_path / "cache" / "trained" and base == folder()
    assert folder(["--trainer.max_steps=6"]) != base
    assert folder(stage=FirstStage(train_steps=7)) != base
    config.write_text("trainer: {max_steps: 6}\n")
    assert folder() != base


def test_a_recipe_that_reads_no_first_stage_is_not_keyed_by_it(tmp_path, monkeypatch):
    from mmrerank.rerankers.mllm.benchmark import MLLMRows

    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "mllm.yaml"
    config.write_text("trainer: {max_steps: 5}\n")
    spec = MLLMRows(fit=FitRecipe(str(config)))
    assert trained_folder(spec, FirstStage()) == trained_folder(spec, FirstStage(train_steps=7))
