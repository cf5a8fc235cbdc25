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


EDJE_RECIPE = EDJERows(fit=FitRecipe("edje/synthetic.yaml"))


def recipe_args(family: str, spec) -> list[str]:
    """The arguments `fitting.fit` gives `mmrerank fit` for the default benchmark's `family` recipe (no training)."""
    import yaml

    config = yaml.safe_load((CONFIG_DIR / "benchmark" / "synthetic.yaml").read_text())
    suite = config["image_text"] if family == "edje" else config["pages"]
    fit = suite["rerankers"][0]["init_args"]["fit"]
    return ["--config", packaged_config(fit["config"]), *fit["args"], *spec.fit_args("/tmp/out/model", "/tmp/fs")]


def parse_only(args: list[str]):
    from tests.helpers.parsers import ParseOnly

    return ParseOnly(args=args, run=False).config


def test_default_benchmark_edje_recipe_parses_with_nested_null():
    """configs/benchmark/synthetic.yaml's EDJE fit args, as `fit` passes them: the nested `=null` stays None."""
    init = parse_only(recipe_args("edje", EDJE_RECIPE)).model.init_args
    assert init.config.num_image_tokens is None and init.config.feature_index == 3
    assert init.config.vision_checkpoint == init.config.text_checkpoint == "/tmp/fs"
    assert init.training.lr == 0.002 and init.training.warmup_steps == 50
    assert init.training.export_dir == "/tmp/out/model"


def test_default_benchmark_mllm_recipe_parses():
    from mmrerank.rerankers.mllm.benchmark import MLLMRows

    config = parse_only(recipe_args("mllm", MLLMRows()))
    init = config.model.init_args
    assert init.tiny.build and init.tiny.vocab_pages.seed == 0 and init.tiny.vocab_pages.documents == 600
    assert init.training.lr == 0.002 and init.training.export_dir == "/tmp/out/model"


def test_old_flags_appended_to_a_recipe_still_parse():
    """What a user's (or an older test's) flat flags on top of the new-shape recipe give: the same settings."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        init = parse_only([*recipe_args("edje", EDJE_RECIPE), "--model.init_args.warmup_steps=1",
                           "--model.init_args.num_image_tokens=null"]).model.init_args
    assert init.training.warmup_steps == 1 and init.training.lr == 0.002 and init.config.num_image_tokens is None
    assert init.training.export_dir == "/tmp/out/model"


def test_every_packaged_recipe_is_on_the_current_shape():
    """No packaged benchmark config trains with a renamed key: its fit args migrate without a FutureWarning (a config
    the project ships must not teach the old shape; the old one still works for users, with the warning)."""
    import warnings

    import yaml

    from mmrerank.fitting import migrate_args

    recipes = []
    for path in sorted((CONFIG_DIR / "benchmark").glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for suite in config.values():
            for rows in (suite.get("rerankers") or []) if isinstance(suite, dict) else []:
                fit = (rows.get("init_args") or {}).get("fit")
                if fit:
                    recipes.append((path.name, ["--config", packaged_config(fit["config"]), *fit.get("args", [])]))
    assert {name for name, _ in recipes} >= {"synthetic.yaml", "vidore_synthetic.yaml"}
    for _, args in recipes:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            migrate_args(args)  # raises on an old key (name in the message)
