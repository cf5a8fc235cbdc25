"""A saved model's config file written before a field was renamed still loads: the field moves to its new name with a
FutureWarning naming the file (`core.deprecation.SAVED_RENAMES`), and every save records `model_type` and the
package version, which is what lets a loader know such a file for an older one."""

from __future__ import annotations

import json

import pytest
import torch

from mmrerank.core import deprecation
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.rerankers.folders import package_version
from mmrerank.retrieval.clip import CLIPEncoder

JOINT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def saved_edje(folder):
    torch.manual_seed(0)
    config = EDJEConfig(vision="first_stage:mmrerank-tiny-resnet", patch_dim=16, num_patches=4, num_image_tokens=2,
                        adapter_heads=2, adapter_mlp_ratio=1, joint=JOINT, max_text_len=12)
    EDJE(config, build_wordpiece_tokenizer(["a red cat", "a blue dog"] * 3, vocab_size=60)).save_pretrained(folder)
    return folder


def rename_in_file(path, old, new):
    """Hand-edit a saved config as an older release would have written it: field `new` under its old name `old`."""
    config = json.loads(path.read_text())
    config[old] = config.pop(new)
    path.write_text(json.dumps(config))
    return config


def test_edje_config_records_type_and_version(tmp_path):
    config = json.loads((saved_edje(tmp_path / "edje") / "config.json").read_text())
    assert config["model_type"] == "mmrerank-edje" and config["mmrerank_version"] == package_version()


def test_an_old_edje_field_name_migrates_with_a_warning(tmp_path, monkeypatch):
    folder = saved_edje(tmp_path / "edje")
    rename_in_file(folder / "config.json", "text_length", "max_text_len")
    with pytest.raises(ValueError, match=r"keys \['text_length'\]"):  # no rename known: refused, naming the key
        EDJE.from_pretrained(folder)
    monkeypatch.setitem(deprecation.SAVED_RENAMES, "mmrerank-edje", {"text_length": "max_text_len"})
    with pytest.warns(FutureWarning, match=r"'text_length' in .*config.json .*use 'max_text_len'"):
        model = EDJE.from_pretrained(folder)
    assert model.config.max_text_len == 12


def test_an_old_clip_field_name_migrates_with_a_warning(tmp_path, monkeypatch):
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "clip")
    config = rename_in_file(tmp_path / "clip" / "config.json", "model", "model_name")
    assert config["model_type"] == "mmrerank-clip"
    monkeypatch.setitem(deprecation.SAVED_RENAMES, "mmrerank-clip", {"model": "model_name"})
    with pytest.warns(FutureWarning, match="use 'model_name'"):
        assert CLIPEncoder.from_pretrained(tmp_path / "clip").model_name == "mmrerank-tiny-resnet"


def test_an_old_mllm_field_name_migrates_with_a_warning(tmp_path, monkeypatch):
    from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm

    MLLMReranker(build_tiny_vlm(tmp_path / "tiny"), score="logit", device="cpu").save_pretrained(tmp_path / "saved")
    rename_in_file(tmp_path / "saved" / "reranker.json", "score_rule", "score")
    monkeypatch.setitem(deprecation.SAVED_RENAMES, "mmrerank-mllm", {"score_rule": "score"})
    with pytest.warns(FutureWarning, match=r"'score_rule' in .*reranker.json"):
        loaded = MLLMReranker.from_pretrained(tmp_path / "saved", device="cpu")
    assert loaded.score_mode == "logit"


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(ValueError, match="both 'a' .* and 'b'"):
        deprecation.rename_keys({"a": 1, "b": 2}, {"a": "b"})
