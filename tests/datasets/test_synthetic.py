"""The synthetic benchmark: determinism, scene-graph relevance against a naive checker, near-duplicates."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from mmrerank.datasets.synthetic import SyntheticConfig, ensure_split, load_scenes, load_synthetic
from mmrerank.datasets.synthetic.scenes import (
    COLOUR_NAMES,
    RELATION_WORDS,
    RELATIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    UNUSED,
    relation_holds,
)


def naive_satisfies(spec: list[int], scene) -> bool:
    """Try every one-to-one assignment of the spec's used descriptors to the scene's objects."""
    slots = [s for s in range(3) if spec[3 * s] != UNUSED]
    for objs in itertools.permutations(range(len(scene)), len(slots)):
        fits = all(all(want in (-1, have) for want, have in zip(spec[3 * s:3 * s + 3],
                                                                   (scene[o].colour, scene[o].shape, scene[o].size)))
                   for s, o in zip(slots, objs))
        if fits and (spec[9] < 0 or relation_holds(scene[objs[0]], scene[objs[1]], spec[9])):
            return True
    return False


def test_same_seed_same_bytes(tmp_path):
    config = SyntheticConfig(seed=7, train_images=8, val_images=8, test_images=12)
    a = ensure_split(SyntheticConfig(**{**config.__dict__, "root": str(tmp_path / "a")}), "test", progress=False)
    b = ensure_split(SyntheticConfig(**{**config.__dict__, "root": str(tmp_path / "b")}), "test", progress=False)
    for name in ("images.npy", "captions.json", "specs.npy", "scenes.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = ensure_split(SyntheticConfig(**{**config.__dict__, "seed": 8, "root": str(tmp_path / "c")}), "test",
                         progress=False)
    assert (other / "images.npy").read_bytes() != (a / "images.npy").read_bytes()


def test_shape_and_cache(tiny_config, tiny_test_split):
    ds = tiny_test_split
    assert len(ds.images) == 40 and len(ds.captions) == 200
    assert ds.images.pixels.shape == (40, 64, 64, 3)
    assert torch.equal(torch.bincount(ds.caption_image), torch.full((40,), 5))
    folder = tiny_config.split_dir("test")
    mtime = (folder / "images.npy").stat().st_mtime_ns
    load_synthetic("test", tiny_config, progress=False)  # second load reuses the cache
    assert (folder / "images.npy").stat().st_mtime_ns == mtime
    # no temp folders left behind (`.locks` holds the empty lock files of `core/io.folder_lock`: no data)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".") and p.name != ".locks"]


def test_relevance_matches_naive_checker(tiny_config, tiny_test_split):
    folder = tiny_config.split_dir("test")
    scenes = load_scenes(folder)
    specs = np.load(folder / "specs.npy").tolist()
    expected = {(c, n) for c, spec in enumerate(specs) for n, scene in enumerate(scenes)
                if naive_satisfies(spec, scene)}
    qrels = tiny_test_split.qrels()
    got = set(zip(qrels.query_index.tolist(), qrels.doc_index.tolist()))
    assert got == expected
    # every caption is relevant to the image it was written for
    assert {(c, int(i)) for c, i in enumerate(tiny_test_split.caption_image)} <= got


def test_captions_describe_their_scene(tiny_config):
    """Parse each caption back with the vocabulary and check every named word belongs to its own scene."""
    folder = tiny_config.split_dir("test")
    scenes = load_scenes(folder)
    meta = json.loads((folder / "captions.json").read_text())
    for text, i in zip(meta["texts"], meta["caption_image"]):
        colours = {COLOUR_NAMES[o.colour] for o in scenes[i]}
        shapes = {w for o in scenes[i] for w in SHAPE_WORDS[SHAPES[o.shape]]}
        sizes = {w for o in scenes[i] for w in SIZE_WORDS[SIZES[o.size]]}
        words = text.replace(",", "").split()
        assert {w for w in words if w in COLOUR_NAMES} <= colours, text
        assert {w for w in words if w in {x for ws in SIZE_WORDS.values() for x in ws}} <= sizes, text
        named_shapes = {w for w in words if w in {x for ws in SHAPE_WORDS.values() for x in ws}}
        named_shapes |= {"plus sign"} if "plus sign" in text else set()
        assert named_shapes - {"plus", "sign"} <= shapes, text


def test_near_duplicate_pairs_share_their_objects(tiny_config):
    """Images 2k and 2k+1 differ only in binding, relation, or (one object) one attribute."""
    scenes = load_scenes(tiny_config.split_dir("test"))
    for a, b in zip(scenes[0::2], scenes[1::2]):
        assert len(a) == len(b)
        if len(a) > 1:
            assert sorted(o.colour for o in a) == sorted(o.colour for o in b)
            assert sorted(o.shape for o in a) == sorted(o.shape for o in b)
        changed = sum((x.colour, x.shape, x.size, x.x, x.y) != (y.colour, y.shape, y.size, y.x, y.y)
                      for x, y in zip(a, b))
        assert changed >= 1


def test_relation_words_cover_relations():
    assert set(RELATION_WORDS) == set(RELATIONS)


def test_bad_split_is_an_error(tiny_config):
    with pytest.raises(ValueError, match="split"):
        load_synthetic("dev", tiny_config)
