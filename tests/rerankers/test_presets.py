"""Published rerankers by name: every family's presets are gathered, an unknown name lists them, a missing extra is
named before anything is built, and benchmark configs name a preset through `PresetRows`."""

from __future__ import annotations

import importlib.util

import pytest

from mmrerank.rerankers import presets as registry
from mmrerank.rerankers.presets import PresetRows, load_reranker, presets
from mmrerank.rerankers.rows import RerankContext

EXPECTED = {"shahafw/edje-vl-image-retrieval-reranker", "Salesforce/blip-itm-base-coco",
            "Salesforce/blip-itm-large-coco", "Salesforce/blip-itm-base-flickr", "Salesforce/blip-itm-large-flickr",
            "Salesforce/blip2-itm-vit-g", "lightonai/MonoQwen2-VL-v0.1", "jinaai/jina-reranker-m0",
            "Qwen/Qwen3-VL-Reranker-2B", "Qwen/Qwen3-VL-Reranker-8B", "vec-ai/lychee-rerank-mm"}


def test_every_family_contributes_its_presets():
    known = presets()
    assert EXPECTED <= set(known)
    for name, preset in known.items():
        assert preset.name == name and preset.family and preset.licence and preset.reranks and preset.score
        assert set(preset.tasks) <= {"t2i", "i2t", "pages"} and preset.tasks


def test_unknown_name_lists_the_presets():
    with pytest.raises(ValueError, match="unknown reranker 'no/such-model'") as err:
        load_reranker("no/such-model")
    assert all(name in str(err.value) for name in EXPECTED)
    with pytest.raises(ValueError, match="unknown reranker"):
        PresetRows("no/such-model")


def test_a_missing_extra_is_named_before_building(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'mmrerank\[lora\]'"):
        load_reranker("lightonai/MonoQwen2-VL-v0.1")


def test_preset_rows_only_on_the_tasks_the_preset_supports():
    rows = PresetRows("shahafw/edje-vl-image-retrieval-reranker")  # t2i and i2t: no page rows, nothing built
    assert rows.rows(RerankContext("pages", "pages", data=None)) == {}
    assert rows._reranker is None
