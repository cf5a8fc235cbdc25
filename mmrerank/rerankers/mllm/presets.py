"""The published VLM rerankers by hub id (`PRESETS`), each scored as its model card scores it.

Gathered by `mmrerank.rerankers.presets` (`load_reranker(name_or_path, preset=None, **options)`); every preset
builds an `MLLMReranker`, and its `options` are that class's arguments, which a caller may override. What each
option reproduces (checked against the authors' code, cited where it is set):

- `lightonai/MonoQwen2-VL-v0.1`: a LoRA adapter on `Qwen/Qwen2-VL-2B-Instruct` (the base its `adapter_config.json`
  names). One chat turn, image then prompt; score softmax over the (True, False) logits at the last position.
- `jinaai/jina-reranker-m0`: Qwen2-VL with an MLP head (`score.0` -> ReLU -> `score.2`) on the hidden state of an
  appended token (id 100); `**Document**` then `**Query**`, no chat template; score sigmoid(head - 2.65); images
  between 3136 and 602112 pixels (modeling.py `compute_score`).
- `Qwen/Qwen3-VL-Reranker-2B` / `-8B`: Qwen3-VL; the yes / no system turn and `<Instruct>` / `<Query>` /
  `<Document>` sections; score sigmoid(logit_yes - logit_no) at the last position (`Qwen3VLReranker
  .compute_scores`: a Linear of lm_head[yes] - lm_head[no]); images resized as its qwen-vl-utils call does (32-pixel
  grid, between 4 and 1800 tokens), which the processor then keeps as they are.
- `vec-ai/lychee-rerank-mm`: Qwen2.5-VL with the same prompt structure; score softmax over (no, yes)
  [1]; images first resized as qwen-vl-utils' `process_vision_info` does (28-pixel grid, its default limits of 4
  to 16384 tokens), then by the processor to between 4 and 1280 28-pixel tokens, as the card's example.

Pixel limits go to `AutoProcessor.from_pretrained` as `min_pixels=` / `max_pixels=`, as the cards pass them: those
win over a hub folder's `preprocessor_config.json` whether it holds `min_pixels` / `max_pixels` (the Qwen2-VL /
Qwen2.5-VL repositories' keys) or `size`; a `size=` argument lost to the first (12,845,056 pixels instead of the
card's limit).

MonoQwen2-VL's card and `rerankers`' MonoVLMRanker pass no limits: Qwen2-VL-2B-Instruct's own files decide
(3136 to 12,845,056 pixels), and so they do here.

Not reproduced: the cards' truncation of very long texts (10240 tokens). mmrerank batches pairs, left-padded;
Qwen3-VL-Reranker's own code scores one pair at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrerank.rerankers.mllm.reranker import MLLMReranker
from mmrerank.rerankers.preset import Preset

MONOQWEN, JINA, LYCHEE = "lightonai/MonoQwen2-VL-v0.1", "jinaai/jina-reranker-m0", "vec-ai/lychee-rerank-mm"
QWEN3_VL_2B, QWEN3_VL_8B = "Qwen/Qwen3-VL-Reranker-2B", "Qwen/Qwen3-VL-Reranker-8B"

# lychee-rerank-mm's instruction, from a third-party scoring script that follows the card
# (the card itself could not be read here: check it before relying on this text).
LYCHEE_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def adapter_base(adapter: str | Path) -> str:
    """The base model a peft adapter names in its `adapter_config.json` (a local folder or a hub id)."""
    from mmrerank.rerankers.mllm.weights import import_peft

    return import_peft().PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path


def build_lora(name_or_path: str, base: str | None = None, **options: Any) -> MLLMReranker:
    """An `MLLMReranker` of the LoRA adapter `name_or_path` on `base` (default: the base its config names); the
    processor comes from the base, as the card loads it."""
    base = base or adapter_base(name_or_path)
    return MLLMReranker(base, adapter=name_or_path, **options)


def pixel_limits(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """`AutoProcessor.from_pretrained` arguments bounding an image's pixels, passed as the cards pass them.

    `min_pixels=` / `max_pixels=` win over the folder's `preprocessor_config.json` in every layout (transformers 4
    and 5; 5 stores them as the image processor's `size`). A `size=` argument does not: a hub file's own
    `min_pixels` / `max_pixels` keys override it.
    """
    return {"min_pixels": min_pixels, "max_pixels": max_pixels}


def _preset(name: str, reranks: str, score: str, licence: str, tasks: tuple[str, ...], options: dict[str, Any],
            build=MLLMReranker, extras: tuple[str, ...] = ()) -> Preset:
    return Preset(name=name, family="mllm", reranks=reranks, score=score, licence=licence, build=build, tasks=tasks,
                  extras=extras, options=options)


# Qwen3-VL-Reranker: MIN_PIXELS = 4 * 32 * 32 and MAX_PIXELS = 1800 * 32 * 32 (src/models/qwen3_vl_reranker.py of
# QwenLM/Qwen3-VL-Embedding, commit 8ce3aab1fbcc7b7143b094f0b2005dd89e7246b9), given to qwen-vl-utils'
# `process_vision_info(..., image_patch_size=16)` in each image's entry; the processor then runs with
# `do_resize=False`. Here the same resize comes first and the processor's, under the same limits, leaves the image as
# it is (a resize to its own size). Labels "yes" / "no" (its `get_vocab()["yes"]`, `["no"]`).
def _qwen3_vl() -> dict[str, Any]:
    limits = dict(min_pixels=4 * 32 * 32, max_pixels=1800 * 32 * 32)
    return dict(template="yes_no", labels=("yes", "no"), score="probability",
                processor_kwargs=pixel_limits(**limits), vision_resize=dict(factor=32, **limits))



_ANY_SIDE = "images for a caption, captions for an image, document pages (image and / or text) for a question"

PRESETS: dict[str, Preset] = {
    MONOQWEN: _preset(
        MONOQWEN, "document page or image for a text query", "softmax over the (True, False) logits, P(True)",
        "apache-2.0", ("pages", "t2i"), dict(template="monoqwen", labels=("True", "False"), score="probability"),
        build=build_lora, extras=("lora",)),
    JINA: _preset(
        JINA, "images or texts for a text or image query (a document is an image or a text)",
        "MLP head on the appended score token, sigmoid(head - 2.65)", "cc-by-nc-4.0", ("pages", "t2i", "i2t"),
        # modeling.py: `score_token_id = 100`, `LOGIT_BIAS = 2.65`, AutoProcessor(max_pixels=602112, min_pixels=3136)
        dict(template="jina", head="mlp", head_prefix="score.", score_token_id=100, score="probability",
             head_offset=2.65, processor_kwargs=pixel_limits(3136, 602112))),
    **{name: _preset(name, _ANY_SIDE, "sigmoid(logit_yes - logit_no) at the last position", "apache-2.0",
                     ("pages", "t2i", "i2t"), _qwen3_vl()) for name in (QWEN3_VL_2B, QWEN3_VL_8B)},
    LYCHEE: _preset(
        LYCHEE, _ANY_SIDE, "softmax over the (no, yes) logits, P(yes)", "apache-2.0", ("pages", "t2i", "i2t"),
        # min_pixels = 4 * 28 * 28, max_pixels = 1280 * 28 * 28 for AutoProcessor, as the card's example; its images
        # come from qwen_vl_utils.process_vision_info, which first resizes with its own (default) limits
        dict(template="yes_no", labels=("yes", "no"), score="probability", instruction=LYCHEE_INSTRUCTION,
             processor_kwargs=pixel_limits(4 * 28 * 28, 1280 * 28 * 28), vision_resize={"factor": 28})),
}
