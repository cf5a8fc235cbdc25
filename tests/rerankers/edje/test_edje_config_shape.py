"""`EDJEModule(config, loss_functions, training)`: the packaged configs in that shape, 0.1's flat arguments still
read (config file, command-line flag, Python call) with a FutureWarning naming the new key, a nested `=null` flag
giving None, and the frozen sides' weights resolved once."""

from __future__ import annotations

import warnings
from dataclasses import asdict

import pytest
import yaml

from mmrerank.fitting import CONFIG_DIR, migrate_args
from mmrerank.rerankers.edje import module as edje_module
from mmrerank.rerankers.edje.model import EDJEConfig
from mmrerank.rerankers.edje.module import EDJEModule, EDJETraining
from tests.helpers.parsers import ParseOnly

CONFIG = CONFIG_DIR / "edje" / "synthetic.yaml"


def parsed(*args: str):
    return ParseOnly(args=list(args), run=False).config.model.init_args


def flat_copy(tmp_path):
    """The packaged config written in 0.1's flat shape (every config and training key at the top, `loss:`)."""
    raw = yaml.safe_load(CONFIG.read_text())
    init = raw["model"]["init_args"]
    (itm, _), = init.pop("loss_functions")
    raw["model"]["init_args"] = {**init.pop("config"), **init.pop("training"), "loss": itm}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_packaged_edje_configs_are_in_the_new_shape():
    for path in (CONFIG_DIR / "edje").glob("*.yaml"):
        init = yaml.safe_load(path.read_text())["model"]["init_args"]
        assert set(init) <= {"config", "training", "loss_functions"}, path.name


def test_an_old_flat_config_parses_to_the_same_settings_with_warnings(tmp_path):
    new = parsed("--config", str(CONFIG))
    with pytest.warns(FutureWarning) as caught:
        old = parsed("--config", str(flat_copy(tmp_path)))
    messages = " ".join(str(w.message) for w in caught)
    assert "'num_image_tokens'" in messages and "use 'config.num_image_tokens'" in messages
    assert "use 'training.lr'" in messages and "loss_functions" in messages
    assert old.config == new.config and old.training == new.training
    assert [list(x) for x in old.loss_functions] == [list(x) for x in new.loss_functions] == [["listwise", 1.0]]


@pytest.mark.parametrize("shape", ["new", "old"])
def test_a_nested_null_flag_gives_none(shape, tmp_path):
    """The flag of configs/benchmark/synthetic.yaml's fit args: null must stay None (not the string "None"), for an
    int field and for a str field (where "None" would pass the type check silently)."""
    config = str(CONFIG if shape == "new" else flat_copy(tmp_path))
    flags = (["--model.init_args.config.num_image_tokens=null", "--model.init_args.training.export_dir", "null"]
             if shape == "new" else ["--model.init_args.num_image_tokens=null", "--model.init_args.export_dir=null"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        init = parsed("--config", config, "--model.init_args.config.feature_index=3", *flags)
    assert init.config.num_image_tokens is None and init.training.export_dir is None
    assert init.config.feature_index == 3 and init.config.adapter_heads == 4  # the rest of the config kept


def test_old_loss_flags_edit_the_loss_list():
    with pytest.warns(FutureWarning, match="loss_functions"):
        init = parsed("--config", str(CONFIG), "--model.init_args.loss=pairwise", "--model.init_args.mlm_weight=0.5",
                      "--model.init_args.config.text=words")
    assert [list(x) for x in init.loss_functions] == [["pairwise", 1.0], ["mlm", 0.5]]


def test_other_flags_pass_unchanged():
    args = ["fit", "--config", str(CONFIG), "--trainer.max_steps=3", "--model.init_args.training.lr=0.5",
            "--data.init_args.batch_size", "4"]
    assert migrate_args(args) == ["fit", f"--config={CONFIG}", "--trainer.max_steps=3",
                                  "--model.init_args.training.lr=0.5", "--data.init_args.batch_size=4"]


def test_python_call_with_flat_arguments_warns_and_matches():
    new = EDJEModule(EDJEConfig(num_image_tokens=None, feature_index=2), [("pairwise", 1.0), ("mlm", 0.25)],
                     EDJETraining(lr=0.5, export_dir="out"))
    with pytest.warns(FutureWarning, match="use 'training.lr'"):
        old = EDJEModule(num_image_tokens=None, feature_index=2, loss="pairwise", mlm_weight=0.25, lr=0.5,
                         export_dir="out")
    assert dict(old.hparams) == dict(new.hparams)
    assert new.hparams["config"] == asdict(new.config) and new.export_dir == "out"
    with pytest.raises(TypeError, match="unexpected arguments"):
        EDJEModule(no_such_argument=1)


@pytest.mark.parametrize("losses, match", [([("pairwise", 1.0), ("listwise", 1.0)], "exactly one ranking loss"),
                                           ([("mlm", 1.0)], "exactly one ranking loss"),
                                           ([("listwise", 1.0), ("typo", 1.0)], "unknown loss 'typo'"),
                                           ([("listwise", 1.0), ("distill", 1.0)], "needs `training.teacher`")])
def test_bad_loss_functions_are_refused_before_building(losses, match):
    with pytest.raises(ValueError, match=match):
        EDJEModule(loss_functions=losses)


def test_a_loss_object_is_used_as_the_ranking_loss():
    def my_loss(scores, labels):
        return scores.sum()

    module = EDJEModule(loss_functions=[(my_loss, 2.0)])
    assert module.itm_loss is my_loss and module.hparams["loss_functions"] == [["function", 2.0]]


def test_the_default_first_stage_is_resolved_once(monkeypatch):
    calls = []

    def resolve(spec, checkpoint, pretrained):
        calls.append(spec)
        return f"/weights/{spec}"

    monkeypatch.setattr(edje_module, "default_first_stage", resolve)
    module = EDJEModule(EDJEConfig(text="first_stage:mmrerank-tiny-resnet"))
    assert calls == []  # nothing trained or read at construction
    for _ in range(3):
        module.resolve_weights()
    assert calls == ["first_stage:mmrerank-tiny-resnet"] * 2  # vision and text, once each
    assert module.vision_weights == module.text_weights == "/weights/first_stage:mmrerank-tiny-resnet"
    assert module.config.vision_checkpoint is None  # the setting itself is left as given
