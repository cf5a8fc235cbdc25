"""`Preset`: what mmrerank knows about one published reranker, keyed by its hub id.

Each family declares its presets in its own module (a `PRESETS` dict of `Preset`s); `mmrerank.rerankers.presets`
gathers them and `load_reranker(name_or_path)` builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmrerank.rerankers.base import Reranker


@dataclass(frozen=True)
class Preset:
    """A published reranker.

    Attributes:
        name: its hub id (`shahafw/edje-vl-image-retrieval-reranker`, `Salesforce/blip-itm-base-coco`, ...).
        family: the mmrerank family that runs it (`edje`, `blip`, `mllm`).
        reranks: what it reranks, for people (`images for a caption`, `document pages for a question`, ...).
        score: how it scores, for people (`softmax(ITM)[1]`, `yes / no logits at the last position`, ...).
        licence: the model card's licence.
        build: `(name_or_path, **options) -> Reranker`; `name_or_path` is the hub id or a local copy of it.
        tasks: the benchmark directions it can rerank: `t2i` (images for a caption), `i2t` (captions for an
            image), `pages` (document pages for a question).
        extras: pip extras it needs beyond the base install (`lora` for peft), checked before building.
        options: defaults passed to `build` (label tokens, prompt, padding side, image-size limits, ...).
    """

    name: str
    family: str
    reranks: str
    score: str
    licence: str
    build: Callable[..., Reranker]
    tasks: tuple[str, ...] = ("t2i",)
    extras: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
