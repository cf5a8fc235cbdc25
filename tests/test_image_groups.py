"""Hard-negative groups from the synthetic image-text benchmark: negatives are the best-ranked images that do not
satisfy the caption, relevance agrees with the benchmark's own qrels, and mined groups are cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrerank.datasets.synthetic import ensure_split, load_synthetic
from mmrerank.rerankers.mllm.data import ImageGroupsDataModule, _relevant, mine_image_groups
from mmrerank.retrieval.first_stage import FirstStage


@pytest.fixture(scope="module")
def val_split(tiny_config):
    return load_synthetic("val", tiny_config, relevance=True, progress=False)


def _random_ranking(n_captions: int, n_images: int, depth: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_images, generator=g)[:depth] for _ in range(n_captions)])


def test_relevance_of_candidates_matches_the_benchmark_qrels(tiny_config, val_split):
    captions = np.arange(len(val_split.captions))
    ranked = _random_ranking(len(captions), len(val_split.images), len(val_split.images), seed=0)
    relevant = _relevant(ensure_split(tiny_config, "val", progress=False), captions, ranked.numpy())
    qrels = val_split.qrels()  # the full caption x image satisfaction matrix, computed by load_synthetic
    expected = torch.zeros(len(captions), len(val_split.images), dtype=torch.bool)
    expected[qrels.query_index, qrels.doc_index] = True
    assert torch.equal(torch.from_numpy(relevant), expected.gather(1, ranked))
    assert relevant.sum() > len(captions)  # some captions fit more than their own image: the exclusion matters


@pytest.mark.parametrize("negatives", [1, 3])
def test_negatives_are_the_best_ranked_non_relevant_images(tiny_config, val_split, negatives):
    captions = np.arange(0, len(val_split.captions), 2)
    ranked = _random_ranking(len(captions), len(val_split.images), 8, seed=1)
    relevant = _relevant(ensure_split(tiny_config, "val", progress=False), captions, ranked.numpy())
    groups = mine_image_groups(val_split, ranked, captions, relevant, negatives)
    qrels = val_split.qrels()
    satisfied = set(zip(qrels.query_index.tolist(), qrels.doc_index.tolist()))
    by_caption = {g[0]: g for g in groups}
    for c, row in zip(captions.tolist(), ranked.tolist()):
        own = int(val_split.caption_image[c])
        naive = [i for i in row if (c, i) not in satisfied and i != own][:negatives]  # a plain loop over the qrels
        if len(naive) < negatives:
            assert c not in by_caption
        else:
            assert by_caption[c] == [c, own, *naive]
    assert len(groups) > 0


def test_bad_settings_raise(tiny_config):
    with pytest.raises(ValueError, match="negatives < depth"):
        ImageGroupsDataModule(tiny_config, negatives=4, depth=4)


def test_groups_are_mined_once_then_cached(tiny_config, tmp_path, monkeypatch):
    first_stage = FirstStage(checkpoint=str(tmp_path / "fs"), train_steps=2, batch_size=8)
    module = ImageGroupsDataModule(tiny_config, first_stage, negatives=2, depth=6, train_captions=12,
                                   val_captions=6, image_size=56, cache_dir=str(tmp_path / "cache"))
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
