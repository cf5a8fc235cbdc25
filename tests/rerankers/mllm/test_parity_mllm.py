"""MonoQwen2-VL, Qwen3-VL-Reranker and lychee-rerank-mm score as their authors' code does, on recorded outputs.

Each folder of tests/fixtures/parity/ holds a tiny model in the real format, the inputs (texts, and images generated
from the seeds written there) and the scores the authors' code gave them (its `SOURCE.md` says which code, at which
commit, run how, with which shims). Here the same inputs go through `load_reranker(folder, preset=...)`, the path a
user's download takes, and must give the same scores to the tolerance recorded with them (1e-5).

The cases cover text queries against text, image and image+text documents, image (and image+text) queries, and a
text beyond 2,000 characters: an image+text document is scored with its whole text by Qwen3-VL-Reranker and lychee
(their code appends it after the image), and with its image alone by MonoQwen2-VL (`rerankers`' MonoVLMRanker).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.rerankers.mllm import MLLMReranker
from mmrerank.rerankers.mllm.presets import LYCHEE, MONOQWEN, QWEN3_VL_2B
from mmrerank.rerankers.presets import load_reranker

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def _fixture(slug: str) -> tuple[Path, dict]:
    folder = PARITY / slug
    fixture = json.loads((folder / "cases.json").read_text())
    for name, digest in fixture["model_sha256"].items():  # the model the authors' code ran is the one scored here
        path = folder / fixture["model"] / name if "/" not in name else folder / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} is not the file the scores are of"
    return folder, fixture


def _image(seed: int, width: int, height: int) -> Image.Image:
    """The fixture's image: uniform random bytes from `seed` (as the generating script made them)."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


def _side(side: dict, images: dict[str, Image.Image]):
    """A case's query or document as a user passes it: a string, a PIL image, or a dict with both."""
    if "image" in side and "text" in side:
        return {"image": images[side["image"]], "text": side["text"]}
    return images[side["image"]] if "image" in side else side["text"]


def _inputs(fixture: dict, cases: list[dict]) -> tuple[list, list]:
    images = {name: _image(**spec) for name, spec in fixture["images"].items()}
    return [_side(c["query"], images) for c in cases], [_side(c["document"], images) for c in cases]


def _assert_scores(reranker, fixture: dict, cases: list[dict], key: str = "score") -> None:
    queries, documents = _inputs(fixture, cases)
    got = reranker.score(queries, documents).double()
    expected = torch.tensor([c[key] for c in cases], dtype=torch.float64)
    diff = (got - expected).abs()
    worst = int(diff.argmax())
    assert diff.max() <= fixture["tolerance"], (f"{cases[worst]['name']!r}: mmrerank {got[worst]:.8f}, the authors' "
                                                f"code {expected[worst]:.8f} (max |diff| {diff.max():.2e})")


@pytest.mark.parametrize("slug, preset", [("qwen3-vl-reranker", QWEN3_VL_2B), ("lychee-rerank-mm-image-text", LYCHEE)])
def test_yes_no_presets_score_as_their_authors_code(slug, preset):
    folder, fixture = _fixture(slug)
    kinds = {(tuple(sorted(c["query"])), tuple(sorted(c["document"]))) for c in fixture["cases"]}
    assert len(kinds) >= 5  # text / image / image+text on each side, not one kind repeated
    for instruction in {c["instruction"] for c in fixture["cases"]}:  # None: the preset's own; else a caller's
        options = {} if instruction is None else {"instruction": instruction}
        reranker = load_reranker(folder / fixture["model"], preset=preset, device="cpu", batch_size=4, **options)
        _assert_scores(reranker, fixture, [c for c in fixture["cases"] if c["instruction"] == instruction])


def test_yes_no_image_and_text_document_is_neither_alone():
    """The fixture itself says the document's text and image both count (so the test above can catch a drop)."""
    _, fixture = _fixture("qwen3-vl-reranker")
    scores = {c["name"]: c["score"] for c in fixture["cases"]}
    both = scores["text query, image+text document"]
    assert min(abs(both - scores["text query, image document"]), abs(both - scores["text query, text document"])) > 1e-3


@pytest.mark.parametrize("layout", ["old", "new"])
def test_monoqwen_scores_as_rerankers_monovlm_ranker(layout, tmp_path):
    folder, fixture = _fixture("monoqwen2-vl-v0.1")
    # the adapter's config names the hub's base model, as the real one does: point it at the tiny base instead
    adapter = shutil.copytree(folder / fixture["adapters"][layout], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(folder / fixture["model"])
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    reranker = load_reranker(adapter, preset=MONOQWEN, device="cpu", batch_size=3)
    _assert_scores(reranker, fixture, fixture["cases"], key=f"score_{layout}_layout")
    # the adapter counts in the recorded scores (neither side could have dropped it and still agree)
    base = MLLMReranker(folder / fixture["model"], score="probability", device="cpu")
    queries, documents = _inputs(fixture, fixture["cases"][:2])
    recorded = torch.tensor([c[f"score_{layout}_layout"] for c in fixture["cases"][:2]])
    assert (base.score(queries, documents) - recorded).abs().min() > 1e-3


def test_yes_no_text_is_kept_whole_and_cannot_be_dropped_or_cut():
    """`use_ocr=True` (the old way to keep a page's text) no longer cuts it at 2,000 characters; settings that would
    drop or cut it, which the authors' code does not offer, are refused with the way out."""
    folder, fixture = _fixture("qwen3-vl-reranker")
    cases = [c for c in fixture["cases"] if c["name"] == "text query, image+text document, text of 2,600 characters"]
    assert len(cases[0]["document"]["text"]) > 2000
    _assert_scores(load_reranker(folder / fixture["model"], preset=QWEN3_VL_2B, device="cpu", use_ocr=True),
                   fixture, cases)
    for option in ({"use_ocr": False}, {"max_ocr_chars": 2000}):
        with pytest.raises(ValueError, match="'yes_no' template scores a document's whole text.*pass the image alone"):
            load_reranker(folder / fixture["model"], preset=QWEN3_VL_2B, device="cpu", **option)
