"""The official EDJE preset scores raw inputs as its authors' code does, to 1e-5 with the same orders.

`tests/fixtures/parity/edje_official/cases.json` holds what github.com/shahafwa/EDJE (commit 56c0c23) gave under
transformers 4.57.6: their `evaluation_t2i` / `evaluation_i2t` (`evaluation/evaluate_retrieval.py`) on their
Flickr30k test dataset class, over six images (two page-sized, a small and a grey one) with five raw captions each
(punctuation, capitals, runs of spaces, HTML entities, unicode, `<image>` written in the text, `[SEP]`, a caption
longer than the 61 word pieces the pair keeps), on the tiny checkpoint of `edje_official_tiny.py`. 30 caption
queries x 5 images (150 pairs) and 6 image queries x 5 captions. How it was run: SOURCE.md there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from edje_official_tiny import (
    authors_state_dict,
    build_minilm,
    build_siglip,
    checksum,
    image_digest,
    make_image,
    save_release,
)

from mmrerank.rerankers.edje.official import OFFICIAL
from mmrerank.rerankers.presets import load_reranker

CASES = json.loads((Path(__file__).parents[2] / "fixtures" / "parity" / "edje_official" / "cases.json").read_text())
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The preset loaded from the tiny release (the authors' `checkpoint.pth` layout), and the cases' images."""
    root = tmp_path_factory.mktemp("edje_parity")
    minilm, siglip = build_minilm(root / "minilm"), build_siglip(root / "siglip")
    state = authors_state_dict(minilm, siglip)
    assert checksum(state, ("",)) == CASES["tiny"]["checksum"], "the tiny checkpoint is not the one the authors ran"
    folder = save_release(state, root / "release", "pth")
    reranker = load_reranker(folder, preset=OFFICIAL, language_model=str(minilm), vision=f"hf:{siglip}", device="cpu")
    images = [make_image(i["seed"], i["width"], i["height"], i["mode"]) for i in CASES["images"]]
    assert [image_digest(image) for image in images] == [i["sha256"] for i in CASES["images"]]
    return reranker, images


def compare(reranker, images, direction: str) -> tuple[float, int]:
    """Max |score - the authors'| over the direction's pairs, and how many queries keep the authors' order."""
    captions, worst, kept = CASES["captions"], 0.0, 0
    for case in CASES[direction]:
        if direction == "t2i":
            scores = reranker.score([captions[case["query"]]] * len(case["candidates"]),
                                    [images[j] for j in case["candidates"]])
        else:
            scores = reranker.score([images[case["query"]]] * len(case["candidates"]),
                                    [captions[j] for j in case["candidates"]])
        theirs = torch.tensor(case["scores"])
        worst = max(worst, (scores - theirs).abs().max().item())
        kept += scores.argsort(descending=True).tolist() == theirs.argsort(descending=True).tolist()
    return worst, kept


def test_the_cases_are_the_issues_check():
    assert len(CASES["t2i"]) == 30 and all(len(case["candidates"]) == 5 for case in CASES["t2i"])  # 150 pairs
    assert len(CASES["i2t"]) == 6 and CASES["images"][0]["width"] * CASES["images"][0]["height"] >= 1000 * 1400
    scores = torch.tensor([case["scores"] for case in CASES["t2i"]])
    assert scores.std() > 0.05 and (scores.max(1).values - scores.min(1).values).min() > 0.01  # orders can tell


def test_captions_are_cleaned_as_the_authors_clean_them():
    """`pre_caption` (their `data/utils.py`), as their dataset class applied it to every raw caption."""
    from mmrerank.rerankers.edje.model import clean_caption

    assert [clean_caption(raw, "open_clip") for raw in CASES["captions"]] == CASES["cleaned"]
    assert "the image of a red dog" in CASES["cleaned"]  # `<image>` in a caption is a word, not the image slot


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_scores_and_orders_equal_the_authors(release, direction):
    reranker, images = release
    worst, kept = compare(reranker, images, direction)
    assert worst < TOLERANCE and kept == len(CASES[direction]), (worst, kept)


def test_image_text_in_a_caption_never_reaches_the_image_slot(release):
    reranker, _ = release
    tokenizer = reranker.model.tokenizer
    ids, mask = reranker.model.tokenize(["the <image> of a red dog", "A woman &amp;lt;image&amp;gt; on a bench"])
    assert tokenizer.convert_tokens_to_ids("<image>") not in ids[mask.bool()].tolist()
