"""VLM first-stage embedders named by hub id, like the reranker presets.

`load_embedder("vidore/colqwen2-v1.0-merged")` downloads (once, through the hub's cache) and loads; a local folder
loads the same way given the hub id it copies: `load_embedder(folder, preset="vidore/colqwen2-v1.0-merged")`.
The tiny builders in `mmrerank.retrieval.vlm.tiny` write such folders for offline tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mmrerank.retrieval.vlm.base import check_attention
from mmrerank.retrieval.vlm.models import (
    DSE_MAX_PIXELS,
    DSE_MIN_PIXELS,
    ColVisionEmbedder,
    DSEEmbedder,
    Qwen3VLEmbedder,
)

# colpali-engine's `_checkpoint_conversion_mapping`s, restated for the backbone classes loaded here: older
# checkpoints keep the text model at the top (`model.layers`) or PaliGemma's 2024 layout.
_COLQWEN_KEYS = {r"^model\.layers": "language_model.layers", r"^model\.embed_tokens": "language_model.embed_tokens",
                 r"^model\.norm": "language_model.norm"}
_COLPALI_KEYS = {r"^model\.model\.": "model.", r"^model\.lm_head": "lm_head",
                 r"^model\.language_model\.model\.": "model.language_model.",
                 r"^model\.language_model\.lm_head": "lm_head"}


@dataclass(frozen=True)
class EmbedderPreset:
    """How one published embedder is loaded: `family` picks the model class and input format."""

    family: str  # dse | qwen3_vl | colqwen2 | colqwen2_5 | colpali
    description: str


PRESETS: dict[str, EmbedderPreset] = {
    "MrLight/dse-qwen2-2b-mrl-v1": EmbedderPreset("dse", "DSE-Qwen2 2B, one 1536-d vector (Matryoshka cuts)"),
    "Qwen/Qwen3-VL-Embedding-2B": EmbedderPreset("qwen3_vl", "Qwen3-VL-Embedding 2B, one 2048-d vector"),
    "Qwen/Qwen3-VL-Embedding-8B": EmbedderPreset("qwen3_vl", "Qwen3-VL-Embedding 8B, one 4096-d vector"),
    "vidore/colqwen2-v1.0-merged": EmbedderPreset("colqwen2", "ColQwen2 v1.0 (adapter merged), 128-d per token"),
    "vidore/colqwen2.5-v0.2-merged": EmbedderPreset("colqwen2_5", "ColQwen2.5 v0.2 (merged), 128-d per token"),
    "vidore/colpali-v1.3-merged": EmbedderPreset("colpali", "ColPali v1.3 (merged), 128-d per token"),
}


def list_embedders() -> list[str]:
    return sorted(PRESETS)


def _folder(name_or_path: str | Path) -> Path:
    """A local folder as it is; a hub id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path)))


def _projection(folder: Path, hidden: int) -> torch.nn.Linear:
    """`custom_text_proj` read from the checkpoint's safetensors files (any key ending in it, e.g. the PEFT
    `base_model.model.custom_text_proj.*` colpali-engine also maps)."""
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if "custom_text_proj." in key:
                    weights[key.rsplit("custom_text_proj.", 1)[1]] = f.get_tensor(key)
    if "weight" not in weights:
        raise ValueError(f"{folder}: no custom_text_proj weights in its *.safetensors (a ColPali-family checkpoint "
                         "holds them; an unmerged PEFT adapter is not supported: use the '-merged' repository)")
    proj = torch.nn.Linear(hidden, weights["weight"].shape[0], bias="bias" in weights)
    proj.load_state_dict(weights)
    return proj


def load_embedder(name_or_path: str | Path, preset: str | None = None, device: str = "cpu",
                  dtype: torch.dtype | str = torch.float32, attn_implementation: str = "sdpa", batch_size: int = 8,
                  max_tokens_per_batch: int | None = None, **options):
    """An embedder for a preset hub id, or for a local copy of one (`preset` names the hub id it copies).

    Args:
        name_or_path: a hub id in `PRESETS`, or a folder.
        preset: the hub id whose format `name_or_path` has (default: `name_or_path` itself).
        device, dtype: where and in what precision the model runs.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2" (GPU, fp16/bf16).
        batch_size, max_tokens_per_batch: rows and padded tokens per forward pass (inputs bucketed by length).
        options: family options: `dim` (DSE, Qwen3-VL: Matryoshka cut), `query_instruction`, `min_pixels`,
            `max_pixels` (Qwen3-VL: the pages' resize limits),
            `query_attention` (ColPali: 'bidirectional' or 'causal', see `ColVisionEmbedder`).

    Raises:
        ValueError: an unknown preset or attention implementation (before any loading).
    """
    key = str(preset or name_or_path)
    if key not in PRESETS:
        raise ValueError(f"load_embedder: {key!r} is not a known embedder; known: {list_embedders()} (for a local "
                         "folder, pass preset=<the hub id it copies>)")
    check_attention(attn_implementation)
    family = PRESETS[key].family
    folder = _folder(name_or_path)
    common = dict(dtype=dtype, attn_implementation=attn_implementation)
    sizes = dict(batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch)
    from transformers import AutoProcessor

    if family == "dse":
        from transformers import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration.from_pretrained(folder, **common).to(device)
        processor = AutoProcessor.from_pretrained(folder, min_pixels=DSE_MIN_PIXELS, max_pixels=DSE_MAX_PIXELS)
        processor.tokenizer.padding_side = "left"  # the card's setting
        dse = {k: options[k] for k in ("dim", "document_size", "generation_prompt") if k in options}
        return DSEEmbedder(model, processor, **dse, **sizes)
    if family == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration

        model = Qwen3VLForConditionalGeneration.from_pretrained(folder, **common).to(device)
        processor = AutoProcessor.from_pretrained(folder, padding_side="right")
        qwen3 = {k: options[k] for k in ("query_instruction", "dim", "min_pixels", "max_pixels") if k in options}
        return Qwen3VLEmbedder(model, processor, **qwen3, **sizes)
    if family in ("colqwen2", "colqwen2_5"):
        from transformers import Qwen2_5_VLModel, Qwen2VLModel

        cls = Qwen2VLModel if family == "colqwen2" else Qwen2_5_VLModel
        model = cls.from_pretrained(folder, key_mapping=_COLQWEN_KEYS, **common).to(device)
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"  # ColQwen2Processor's setting
        proj = _projection(folder, model.config.text_config.hidden_size).to(device, model.dtype)
        return ColVisionEmbedder(model, processor, proj, "colqwen", **sizes)
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration.from_pretrained(folder, key_mapping=_COLPALI_KEYS, **common).to(device)
    processor = AutoProcessor.from_pretrained(folder)
    proj = _projection(folder, model.config.text_config.hidden_size).to(device, model.dtype)
    return ColVisionEmbedder(model, processor, proj, "colpali",
                             query_attention=options.get("query_attention", "bidirectional"), **sizes)
