"""The first stage's home (the cache, keyed by its training), the image-text sources named by `class_path`, and
arguments refused before any work."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from mmrerank.datasets import COCO, CaptionTable, Flickr30k, ImageTextSource, Karpathy, Synthetic
from mmrerank.datasets.synthetic import SyntheticConfig
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage
from tests.helpers.sources import other_split


def test_default_folder_is_under_the_cache_and_keyed_by_the_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    default = FirstStage().folder()
    assert default.parent == tmp_path / "cache" / "first_stage"
    assert default.name.startswith("mmrerank-tiny-resnet-")
    # a 3-step training never answers for the 600-step default, nor another seed or dataset
    assert FirstStage(train_steps=3).folder() != default
    assert FirstStage(seed=1).folder() != default
    assert FirstStage(synthetic=SyntheticConfig(seed=7)).folder() != default
    # where the synthetic data lives does not change the weights, so it does not change the key
    assert FirstStage(synthetic=SyntheticConfig(root=str(tmp_path / "elsewhere"))).folder() == default
    assert FirstStage(save_to=str(tmp_path / "mine")).folder() == tmp_path / "mine"


def test_trained_on_fills_in_the_data_only_when_unset():
    data = SyntheticConfig(seed=3, train_images=64)
    assert FirstStage().trained_on(data).synthetic == data
    own = FirstStage(synthetic=SyntheticConfig(seed=9))
    assert own.trained_on(data) is own
    assert FirstStage().trained_on(None).synthetic is None


def test_build_loads_a_saved_folder_without_training(tmp_path):
    torch.manual_seed(0)
    saved = CLIPEncoder("mmrerank-tiny-vit")
    saved.save_pretrained(tmp_path / "fs")
    stage = FirstStage("mmrerank-tiny-vit", checkpoint=str(tmp_path / "fs"), train_steps=1)
    loaded = stage.build(progress=False)
    texts = ["a red star"]
    assert torch.allclose(loaded.encode_texts(texts), saved.encode_texts(texts), atol=1e-6)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not an encoder")
    with pytest.raises(ValueError, match="neither a save_pretrained folder"):
        FirstStage(checkpoint=str(tmp_path / "junk")).build(progress=False)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="train_steps"):
        FirstStage(train_steps=0)
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        Synthetic("tset")


def test_sources_resolve_by_short_class_path_and_describe_themselves():
    parser = ArgumentParser()
    parser.add_argument("--dataset", type=ImageTextSource)
    for name, cls, extra in (("Synthetic", Synthetic, []), ("Flickr30k", Flickr30k, []),
                             ("COCO", COCO, ["--dataset.image_root=/data/coco"]),
                             ("Karpathy", Karpathy, ["--dataset.karpathy_json=k.json", "--dataset.image_root=i"]),
                             ("CaptionTable", CaptionTable, ["--dataset.path=t.parquet"])):
        config = parser.parse_args([f"--dataset={name}", "--dataset.split=val", *extra])
        source = parser.instantiate_classes(config).dataset
        assert type(source) is cls and source.split == "val"
        described = source.describe()
        assert described["class"] == name and described["split"] == "val" and described["name"] == source.name
    other = other_split(Synthetic("test", SyntheticConfig(seed=1)), "train")
    assert other.split == "train" and other.synthetic.seed == 1
    assert Flickr30k().revision == "refs/convert/parquet"


def test_identity_keys_caches_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    default = FirstStage()
    assert default.identity() == {"trained": default.training_key()}
    assert not (tmp_path / "cache").exists()  # nothing was trained to compute it
    assert FirstStage(pretrained="laion2b").identity()["pretrained"] == "laion2b"
    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "a")
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "b")  # other weights, same size
    a, b = FirstStage(checkpoint=str(tmp_path / "a")), FirstStage(checkpoint=str(tmp_path / "b"))
    assert a.identity() != b.identity() and a.identity() == FirstStage(checkpoint=str(tmp_path / "a")).identity()
