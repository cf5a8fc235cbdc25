"""The shared scoring path (`scoring="shared"`, `shared.py`) against the plain one, per published preset.

The plain path (each pair through the processor and the whole model) is the reference: it is what the parity
fixtures check against the authors' code. The shared path must give the same scores to 1e-5 in fp32, batched or one
pair at a time, under any token budget; and it must do less work: each distinct image through the vision tower
once, and the shared prefix through the language model once per group.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmrerank.rerankers.mllm import build_tiny_vlm
from mmrerank.rerankers.mllm.presets import JINA, LYCHEE, MONOQWEN, QWEN3_VL_2B
from mmrerank.rerankers.mllm.shared import ImageIndex, SharedScorer
from mmrerank.rerankers.mllm.tiny_presets import (
    build_tiny_jina,
    build_tiny_lora,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
)
from mmrerank.rerankers.presets import load_reranker

QUERIES = ["red circle", "a page that lists the revenue of the museum", "tree"]
TEXTS = ["the museum report lists revenue per year", "a green tree by the river"]


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


# three sizes (two images share one, so their placeholders are the same tokens), each reranked by every query
IMAGES = [_image(i, size) for i, size in enumerate([(64, 72), (96, 80), (96, 80), (120, 56)])]


def _copy(image: Image.Image) -> Image.Image:
    """An equal image that is another object (as a benchmark that resizes a corpus image for every pair gives)."""
    return image.copy()


def _image_pairs() -> tuple[list, list]:
    """Every query with every image, query after query; the repeated images are fresh copies."""
    return [q for q in QUERIES for _ in IMAGES], [_copy(im) for _ in QUERIES for im in IMAGES]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    base = build_tiny_vlm(root / "qwen2_vl", seed=1)
    return {MONOQWEN: build_tiny_lora(base, root / "MonoQwen2-VL-v0.1", seed=5),
            JINA: build_tiny_jina(root / "jina-reranker-m0", seed=2),
            QWEN3_VL_2B: build_tiny_qwen3_vl(root / "Qwen3-VL-Reranker-2B", seed=3),
            LYCHEE: build_tiny_qwen2_5_vl(root / "lychee-rerank-mm", seed=4)}


def _pairs(preset: str) -> tuple[list, list]:
    """The preset's image documents, plus what else its card takes: text documents and image queries (jina);
    image+text documents, text documents and image queries (yes / no presets)."""
    queries, documents = _image_pairs()
    if preset == JINA:
        queries += [q for q in QUERIES for _ in TEXTS] + [IMAGES[0]] * len(TEXTS)
        documents += [t for _ in QUERIES for t in TEXTS] + TEXTS
    if preset in (QWEN3_VL_2B, LYCHEE):
        pages = [{"image": IMAGES[1], "text": TEXTS[0]}, {"image": _copy(IMAGES[1]), "text": TEXTS[1]}]
        queries += [q for q in QUERIES for _ in pages] + [QUERIES[0]] * 2 + [IMAGES[3], IMAGES[3]]
        documents += [p for _ in QUERIES for p in pages] + TEXTS + [IMAGES[0], TEXTS[1]]
    return queries, documents


def _scores(reranker, scoring: str, queries, documents, **options) -> torch.Tensor:
    reranker.scoring = scoring
    for name, value in options.items():
        setattr(reranker, name, value)
    return reranker.score(queries, documents)


@pytest.mark.parametrize("preset", [MONOQWEN, JINA, QWEN3_VL_2B, LYCHEE])
def test_shared_scores_equal_plain_scores(folders, preset):
    reranker = load_reranker(folders[preset], preset=preset, device="cpu", batch_size=4)
    queries, documents = _pairs(preset)
    plain = _scores(reranker, "plain", queries, documents)
    assert plain.std() > 1e-4  # the pairs differ, so equal scores mean something
    shared = _scores(reranker, "shared", queries, documents)
    assert (shared - plain).abs().max() <= 1e-5
    one_by_one = torch.cat([_scores(reranker, "shared", [q], [d]) for q, d in zip(queries, documents)])
    assert (one_by_one - plain).abs().max() <= 1e-5
    # a budget below one sequence: every pass one row (prefixes, suffixes and images alone)
    tight = _scores(reranker, "shared", queries, documents, batch_size=16, max_tokens_per_batch=1)
    assert (tight - plain).abs().max() <= 1e-5


@pytest.mark.parametrize("preset", [MONOQWEN, JINA, QWEN3_VL_2B, LYCHEE])
def test_token_ids_and_positions_are_the_processors(folders, preset):
    """What the model reads: the shared path's ids and rope positions equal the processor's (unpadded)."""
    reranker = load_reranker(folders[preset], preset=preset, device="cpu")
    queries, documents = _pairs(preset)
    scorer = SharedScorer(reranker, batch_size=4, max_tokens_per_batch=None)
    backbone, _ = reranker._language_model_parts()
    for query, document in zip(queries, documents):
        pair = scorer._pair(query, document)
        inputs = reranker.encode([query], [document])
        assert pair.ids == inputs["input_ids"][0].tolist()
        grids = inputs.get("image_grid_thw")
        positions, _ = backbone.get_rope_index(input_ids=inputs["input_ids"], image_grid_thw=grids,
                                               mm_token_type_ids=inputs["mm_token_type_ids"])
        assert torch.equal(pair.positions, positions[:, 0])


class _Counter:
    """Counts what goes through a module: rows x new tokens, and cached tokens (forward pre-hook)."""

    def __init__(self, module) -> None:
        self.calls, self.tokens, self.largest = 0, 0, 0
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds", args[0] if args else None)
        cache = kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        self.calls += 1
        self.tokens += embeds.shape[0] * embeds.shape[1]
        self.largest = max(self.largest, embeds.shape[0] * (embeds.shape[1] + cached))


def test_each_image_is_encoded_once_and_each_prefix_run_once(folders):
    """MonoQwen2-VL, 3 queries x 4 images (two of them equal in size, all passed as fresh copies): the vision tower
    sees each image once, and the language model runs the page prefix once per image, not once per pair."""
    reranker = load_reranker(folders[MONOQWEN], preset=MONOQWEN, device="cpu", batch_size=4)
    backbone, _ = reranker._language_model_parts()
    queries, documents = _image_pairs()
    seen = []
    handle = backbone.visual.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["grid_thw"]),
                                                   with_kwargs=True)
    counters = {}
    try:
        for scoring in ("plain", "shared"):
            seen.clear()
            counters[scoring] = _Counter(backbone.language_model)
            _scores(reranker, scoring, queries, documents)
            counters[scoring].handle.remove()
            images = torch.cat(seen).tolist()
            assert len(images) == (len(IMAGES) if scoring == "shared" else len(documents))
    finally:
        handle.remove()
    plain, shared = counters["plain"].tokens, counters["shared"].tokens
    prefix = len(reranker.encode([QUERIES[0]], [IMAGES[0]])["input_ids"][0]) - 20  # well inside the shared prefix
    assert shared < plain - (len(QUERIES) - 1) * len(IMAGES) * prefix


def test_passes_stay_within_the_token_budget(folders):
    reranker = load_reranker(folders[MONOQWEN], preset=MONOQWEN, device="cpu", batch_size=16)
    backbone, _ = reranker._language_model_parts()
    queries, documents = _image_pairs()
    longest = max(len(reranker.encode([q], [d])["input_ids"][0]) for q, d in zip(queries, documents))
    budget = 2 * longest
    counter = _Counter(backbone.language_model)
    try:
        _scores(reranker, "shared", queries, documents, max_tokens_per_batch=budget)
    finally:
        counter.handle.remove()
    assert 0 < counter.largest <= budget
    assert counter.calls < len(queries)  # passes do hold several rows


def test_bad_options_are_refused(folders):
    with pytest.raises(ValueError, match="scoring must be one of"):
        load_reranker(folders[JINA], preset=JINA, device="cpu", scoring="fast")
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        load_reranker(folders[JINA], preset=JINA, device="cpu", max_tokens_per_batch=0)


def test_image_index_tells_equal_images_from_lookalikes():
    """Equal images share a key whatever the object; an image that differs in one pixel the glance does not sample
    gets its own."""
    index = ImageIndex()
    image = _image(7, (64, 64))
    other = image.copy()
    for x, y in ((x, y) for x in range(64) for y in range(64)):
        other.putpixel((x, y), (0, 0, 0) if image.getpixel((x, y)) != (0, 0, 0) else (1, 1, 1))
        if other.resize((16, 16), Image.NEAREST).tobytes() == image.resize((16, 16), Image.NEAREST).tobytes():
            break  # a pixel the glance does not see
        other = image.copy()
    assert other.tobytes() != image.tobytes()
    first, new = index.key(image)
    assert new and index.key(image) == (first, False)
    assert index.key(image.copy()) == (first, False)
    lookalike, new = index.key(other)
    assert new and lookalike != first
    assert index.key(other.copy()) == (lookalike, False)
    assert index.key(_image(8, (64, 64)))[1]


def _vision_calls(reranker):
    """A list that gets the `grid_thw` of each vision-tower pass (and the hook's handle)."""
    seen = []
    backbone, _ = reranker._language_model_parts()
    handle = backbone.visual.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["grid_thw"]),
                                                   with_kwargs=True)
    return seen, handle


def test_images_are_kept_across_calls_until_the_weights_change(folders):
    """Two calls over the same images (as a rerank's batches): the second encodes none; after an in-place update of
    the vision weights (a training step) they are encoded again and the scores follow the new weights."""
    reranker = load_reranker(folders[MONOQWEN], preset=MONOQWEN, device="cpu", batch_size=4)
    queries, documents = _image_pairs()
    half = len(queries) // 2
    seen, handle = _vision_calls(reranker)
    try:
        first = _scores(reranker, "shared", queries[:half], documents[:half])
        assert len(torch.cat(seen)) == len(IMAGES)
        seen.clear()
        second = _scores(reranker, "shared", queries[half:], [_copy(d) for d in documents[half:]])
        assert not seen
        plain = _scores(reranker, "plain", queries, documents)
        assert (torch.cat([first, second]) - plain).abs().max() <= 1e-5
        backbone, _ = reranker._language_model_parts()
        with torch.no_grad():
            next(backbone.visual.parameters()).mul_(1.5)
        seen.clear()
        updated = _scores(reranker, "shared", queries, documents)
        assert len(torch.cat(seen)) == len(IMAGES)
        assert (updated - _scores(reranker, "plain", queries, documents)).abs().max() <= 1e-5
        assert (updated - plain).abs().max() > 1e-4
        reranker.image_cache.capacity = 0  # nothing kept between calls
        _scores(reranker, "shared", queries, documents)
        seen.clear()
        _scores(reranker, "shared", queries, documents)
        assert len(torch.cat(seen)) == len(IMAGES)
    finally:
        handle.remove()


def test_resized_images_resizes_each_corpus_image_once():
    """The benchmark's t2i wrapper passes one resized object per corpus row, so the pairs that share an image share
    it by identity (and the resize is done once)."""
    from types import SimpleNamespace

    from mmrerank.rerankers.mllm.benchmark import ResizedImages

    got = {}

    class Recorder:
        def score(self, queries, candidates):
            got["candidates"] = candidates
            return torch.zeros(len(candidates))

    task = SimpleNamespace(queries=QUERIES, corpus=IMAGES)
    ResizedImages(Recorder(), 32).score_rows(task, torch.tensor([0, 0, 1, 1]), torch.tensor([2, 0, 2, 0]), None)
    first, second, third, fourth = got["candidates"]
    assert first is third and second is fourth and first is not second
    assert first.size == (32, 32) and first.tobytes() == IMAGES[2].resize((32, 32), Image.BICUBIC).tobytes()


def test_attention_implementation_is_an_option(folders):
    """`attn_implementation` reaches the model (eager here; flash_attention_2 needs a GPU) and scores as sdpa does."""
    queries, documents = _image_pairs()
    sdpa = load_reranker(folders[JINA], preset=JINA, device="cpu", batch_size=4)
    eager = load_reranker(folders[JINA], preset=JINA, device="cpu", batch_size=4, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager" and sdpa.model.config._attn_implementation == "sdpa"
    expected = _scores(sdpa, "plain", queries, documents)
    assert (_scores(eager, "shared", queries, documents) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("preset", [MONOQWEN, QWEN3_VL_2B])
def test_on_disk_cache_is_read_back_by_another_process_of_the_same_model_only(folders, preset, tmp_path):
    """A second reranker on the same folder reads every image's features (Qwen3-VL's deepstack layers too) from the
    on-disk cache and scores as the plain path; other pixel limits (another digest) encode them again."""
    queries, documents = _image_pairs()
    first = load_reranker(folders[preset], preset=preset, device="cpu", batch_size=4, image_cache_dir=tmp_path)
    plain = _scores(first, "plain", queries, documents)
    _scores(first, "shared", queries, documents)
    assert len(list(tmp_path.glob("*/*.safetensors"))) == len(IMAGES)
    second = load_reranker(folders[preset], preset=preset, device="cpu", batch_size=4, image_cache_dir=tmp_path)
    seen, handle = _vision_calls(second)
    try:
        assert (_scores(second, "shared", queries, documents) - plain).abs().max() <= 1e-5
        assert not seen
    finally:
        handle.remove()
    other = load_reranker(folders[preset], preset=preset, device="cpu", batch_size=4, image_cache_dir=tmp_path,
                          processor_kwargs={"min_pixels": 32 * 32, "max_pixels": 64 * 64})
    seen, handle = _vision_calls(other)
    try:
        _scores(other, "shared", queries, documents)
        assert len(torch.cat(seen)) == len(IMAGES)
    finally:
        handle.remove()
    assert len(list(tmp_path.iterdir())) == 2
