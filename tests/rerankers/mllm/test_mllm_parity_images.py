"""jina-reranker-m0 and lychee-rerank-mm against their authors' code, on images (tests/fixtures/parity/<slug>/).

Each fixture holds the scores the authors' code gave on a tiny random model in the hub's layout (its
`preprocessor_config.json` with the hub's 12,845,056-pixel limit, so a preset that did not pass its card's limit
the winning way would see other grids), and the image grids it used. SOURCE.md beside each says what was run. The
tiny model is rebuilt here from its builder and seed and must match the recorded checksum; the images are rebuilt
from their seeds. Every pair goes through `load_reranker(folder, preset=...)`, batched, and must agree to 1e-5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmrerank.rerankers.mllm import tiny_presets
from mmrerank.rerankers.presets import load_reranker

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def seeded_image(seed: int, width: int, height: int) -> Image.Image:
    """The fixtures' images: uint8 noise (the harshest case for a resize that differs)."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


def folder_checksum(folder: Path) -> str:
    """sha256 of the weights (sorted names, float32 bytes) and the tokenizer's vocabulary, as the fixture records."""
    h = hashlib.sha256()
    state = load_file(str(folder / "model.safetensors"))
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].float().contiguous().numpy().tobytes())
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    h.update(json.dumps(sorted(vocab.items())).encode())
    return h.hexdigest()


def _load(slug: str, tmp_path_factory):
    cases = json.loads((FIXTURES / slug / "cases.json").read_text())
    spec = cases["tiny_model"]
    folder = getattr(tiny_presets, spec["builder"])(tmp_path_factory.mktemp(slug) / slug, seed=spec["seed"])
    assert folder_checksum(folder) == spec["checksum"], "the tiny model no longer builds as it did for the fixture"
    images = {name: seeded_image(*args) for name, args in cases["images"].items()}
    reranker = load_reranker(folder, preset=cases["preset"], device="cpu")
    return cases, images, reranker


@pytest.fixture(scope="module")
def jina(tmp_path_factory):
    return _load("jina-reranker-m0", tmp_path_factory)


@pytest.fixture(scope="module")
def lychee(tmp_path_factory):
    return _load("lychee-rerank-mm", tmp_path_factory)


def _check(loaded, kind: str) -> None:
    cases, images, reranker = loaded
    rows = [case for case in cases["cases"] if case["kind"] == kind]
    side = [[images.get(case[key], case[key]) for case in rows] for key in ("query", "document")]
    # the same patch grids as the authors' processor gave, image by image in the order of the pairs
    grids = reranker.encode(*side).get("image_grid_thw", torch.zeros(0, 3)).tolist()
    assert grids == [grid for case in rows for grid in case["grids"]]
    theirs = torch.tensor([case["score"] for case in rows])
    assert theirs.std() > 1e-3  # the pairs score differently, so agreement means something
    torch.testing.assert_close(reranker.score(*side), theirs, atol=cases["tolerance"], rtol=0)


@pytest.mark.parametrize("kind", ["t2i", "i2t", "t2t", "i2i"])
def test_jina_matches_its_modeling_py(jina, kind):
    # t2i includes a 1000 x 1400 page (64 x 46 patches, height x width, under the card's 602,112 pixels) and
    # a 90 x 70 image
    _check(jina, kind)


@pytest.mark.parametrize("kind", ["t2i", "i2t", "t2t"])
def test_lychee_matches_its_card_path(lychee, kind):
    # t2i includes 2000 x 1500 (62 x 82 patches, height x width, after qwen-vl-utils' resize and the
    # processor's) and 90 x 70
    _check(lychee, kind)
