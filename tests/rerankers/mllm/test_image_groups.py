"""Hard-negative groups from the synthetic image-text benchmark: negatives are the best-ranked images that do not
satisfy the caption, relevance agrees with the benchmark's own qrels, and mined groups are cached."""

from __future__ import annotations

import json

import pytest
import torch

from mmrerank.datasets.synthetic import load_synthetic
from mmrerank.rerankers.mllm.data import ImageGroupsDataModule, image_groups
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.negatives import caption_hard_negatives


@pytest.fixture(scope="module")
def val_split(tiny_config):
    return load_synthetic("val", tiny_config, relevance=True, progress=False)


def test_pair_relevance_matches_the_benchmark_qrels(val_split):
    """The scene-graph check negatives are filtered by agrees with the full caption x image satisfaction matrix."""
    c, n = len(val_split.captions), len(val_split.images)
    captions, images = torch.arange(c).repeat_interleave(n), torch.arange(n).repeat(c)
    relevant = val_split.is_relevant(captions, images).view(c, n)
    qrels = val_split.qrels()
    expected = torch.zeros(c, n, dtype=torch.bool)
    expected[qrels.query_index, qrels.doc_index] = True
    assert torch.equal(relevant, expected)
    assert int(relevant.sum()) > c  # some captions fit more than their own image: the exclusion matters


@pytest.mark.parametrize("negatives", [1, 3])
def test_negatives_are_the_best_ranked_non_relevant_images(val_split, negatives):
    g = torch.Generator().manual_seed(1)
    image_emb = torch.nn.functional.normalize(torch.randn(len(val_split.images), 8, generator=g), dim=1)
    captions = torch.arange(0, len(val_split.captions), 2)
    text_emb = torch.nn.functional.normalize(torch.randn(len(captions), 8, generator=g), dim=1)
    found = caption_hard_negatives(val_split, image_emb, text_emb, captions, negatives, depth=8)
    groups = image_groups(val_split, captions, found)
    qrels = val_split.qrels()
    satisfied = set(zip(qrels.query_index.tolist(), qrels.doc_index.tolist()))
    by_caption = {g[0]: g for g in groups}
    for row, c in enumerate(captions.tolist()):
        ranked = torch.argsort(image_emb @ text_emb[row], descending=True, stable=True)[:8].tolist()
        own = int(val_split.caption_image[c])
        naive = [i for i in ranked if (c, i) not in satisfied and i != own][:negatives]  # a plain loop over qrels
        if len(naive) < negatives:
            assert c not in by_caption
        else:
            assert by_caption[c] == [c, own, *naive]
    assert len(groups) > 0


def test_bad_settings_raise(tiny_config):
    with pytest.raises(ValueError, match="negatives < depth"):
        ImageGroupsDataModule(tiny_config, negatives=4, depth=4)


def test_groups_are_mined_once_then_cached(tiny_config, tmp_path, monkeypatch):
    first_stage = FirstStage(save_to=str(tmp_path / "fs"), train_steps=2, batch_size=8)
    module = ImageGroupsDataModule(tiny_config, first_stage, negatives=2, depth=6,
                                   captions={"train": 12, "val": 6}, image_size=56, cache_dir=str(tmp_path / "cache"))
    groups = module.groups("val")
    assert len(groups) > 0 and all(len(g) == 4 for g in groups.groups)
    caption, images = groups[0]
    assert caption == groups.data.captions[groups.groups[0][0]] and [im.size for im in images] == [(56, 56)] * 3
    (cached,) = (tmp_path / "cache").glob("val-*.json")
    assert json.loads(cached.read_text()) == groups.groups

    def no_mining(*args):
        raise AssertionError("mined again despite the cache")

    monkeypatch.setattr(ImageGroupsDataModule, "_mine", no_mining)
    assert module.groups("val").groups == groups.groups
