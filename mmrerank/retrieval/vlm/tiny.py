"""Tiny, randomly initialised VLM embedders in their hub formats, for offline tests and parity fixtures.

Each builder saves a folder that `load_embedder(folder, preset=<hub id>)` loads through the same code as a download:
the real transformers config class (Qwen2VLConfig, Qwen3VLConfig, PaliGemmaConfig), the real processor class with a
chat template, a byte-level BPE tokenizer trained here on a few sentences (nothing from the hub), and for the
late-interaction models the projection saved as `custom_text_proj.*` beside the backbone's keys, as colpali-engine's
`ColQwen2` / `ColPali` save them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SiglipImageProcessor,
)

from mmrerank.core.io import atomic_folder

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
_SENTENCES = ["Describe the image.", "What is shown in this image?", "Query: which page shows the revenue table",
              "Represent the user's input.", "Retrieve images or text relevant to the user's query.",
              "system user assistant", "the chart of quarterly revenue by region", "a red bridge over the river",
              "the museum opening hours and ticket prices", "invoice total due in thirty days"]

# Qwen2-VL-Instruct's chat template as its hub repository holds it (a default system turn when none is given).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's template, reduced: no default system turn; system and user content as strings or lists of parts.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _bpe(specials: list[str], vocab_size: int, corpus: Sequence[str] = ()) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_SENTENCES * 5 + list(corpus), trainer=trainer)
    return tok


def qwen_tokenizer(vocab_size: int = 400, corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Qwen's special tokens (pad `<|endoftext|>`, eos `<|im_end|>`), left padding; trained on
    a few fixed sentences plus `corpus` (a model trained here gets whole-word tokens for its pages' words)."""
    return PreTrainedTokenizerFast(tokenizer_object=_bpe(QWEN_SPECIALS, vocab_size, corpus), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")


def gemma_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Gemma's special tokens, adding `<bos>` in front as Gemma's tokenizer does."""
    tok = _bpe(GEMMA_SPECIALS, vocab_size)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


def _qwen_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _text(tokenizer, hidden: int, layers: int, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.1,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **extra)


def _mrope(head_dim: int, **extra) -> dict:
    third = head_dim // 2 // 3
    return {"rope_type": "default", "mrope_section": [head_dim // 2 - 2 * third, third, third], **extra}


def _qwen2_vl(seed: int, hidden: int, layers: int, min_pixels: int, max_pixels: int):
    tokenizer = qwen_tokenizer()
    head_dim = hidden // 4
    config = Qwen2VLConfig(
        text_config=_text(tokenizer, hidden, layers, rope_parameters=_mrope(head_dim, rope_theta=10000.0)),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=False, **_qwen_ids(tokenizer))
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config).eval(), processor


def _save(folder: str | Path, model, processor, projection: torch.nn.Linear | None = None,
          rename: tuple[str, str] | None = None) -> Path:
    """Save `model` and `processor` into `folder` (atomically); with `projection`, add `custom_text_proj.*` to the
    weights, keys first renamed by `rename` (old prefix, new prefix) to the layout the authors' class saves."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if projection is not None:
            path = tmp / "model.safetensors"
            state = load_file(str(path))
            if rename is not None:
                old, new = rename
                state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
            state.update({f"custom_text_proj.{k}": v.detach().clone() for k, v in projection.state_dict().items()})
            save_file(state, str(path), metadata={"format": "pt"})
    return folder


def _projection(hidden: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed + 1)
    return torch.nn.Linear(hidden, 128)


def _hub_config(folder: Path) -> None:
    """Rewrite `config.json` in the 2024 hub layout of Qwen2-VL (MrLight/dse-qwen2-2b-mrl-v1's, saved by
    transformers 4.45): the text model's settings at the top level (no `text_config`), the rotary settings as
    `rope_scaling` {type mrope, mrope_section} and `rope_theta`. transformers 4 reads only that layout; 5 reads it
    too."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    for key, value in text.items():
        config.setdefault(key, value)
    config.update(rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]}, rope_theta=rope["rope_theta"],
                  model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"])
    path.write_text(json.dumps(config, indent=2))


def _hub_processor(folder: Path) -> None:
    """Rewrite the saved processor as the 2024 Qwen2-VL repositories (DSE's included) hold it, readable by
    transformers 4 and 5: `preprocessor_config.json` with top-level `min_pixels` / `max_pixels` (Qwen2-VL-2B's
    3136 / 12845056; DSE's users pass the card's limits when loading), `chat_template.json`, a tokenizer config
    naming `Qwen2Tokenizer`, and no transformers 5 `processor_config.json`."""
    for name in ("processor_config.json", "chat_template.jinja", "video_preprocessor_config.json"):
        (folder / name).unlink(missing_ok=True)
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    preprocessor = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": clip_mean, "image_std": clip_std,
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2))
    path = folder / "tokenizer_config.json"
    tokenizer = json.loads(path.read_text())
    tokenizer.pop("backend", None)
    tokenizer.update(tokenizer_class="Qwen2Tokenizer", processor_class="Qwen2VLProcessor", model_max_length=32768,
                     chat_template=QWEN2_VL_CHAT_TEMPLATE, bos_token=None, eos_token="<|im_end|>",
                     pad_token="<|endoftext|>", padding_side="left", errors="replace", split_special_tokens=False)
    path.write_text(json.dumps(tokenizer, indent=2))


def build_tiny_dse(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny DSE-Qwen2 (a `Qwen2VLForConditionalGeneration`, processor limits 28*28 to 2560*28*28 pixels as the
    card sets them, rotary settings also in the 2024 hub layout) saved as `folder`. Pages become 756x756:
    729 visual tokens after merging."""
    model, processor = _qwen2_vl(seed, hidden, layers, 28 * 28, 2560 * 28 * 28)
    folder = _save(folder, model, processor)
    _hub_config(folder)
    _hub_processor(folder)
    return folder


def build_tiny_colqwen2(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny ColQwen2 (merged checkpoint): the Qwen2-VL backbone under `Qwen2VLModel`'s keys (`language_model.*`,
    `visual.*`, no `lm_head`) and `custom_text_proj.*`; images kept to 56x56-112x112 pixels (4-16 tokens)."""
    model, processor = _qwen2_vl(seed, hidden, layers, 56 * 56, 112 * 112)
    model.config.architectures = ["ColQwen2"]
    backbone = model.model
    backbone.config.architectures = ["ColQwen2"]
    return _save(folder, backbone, processor, _projection(hidden, seed))


def build_tiny_qwen3_vl_embedding(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                                  corpus: Sequence[str] = (), vocab_size: int = 400) -> Path:
    """A tiny Qwen3-VL-Embedding: a `Qwen3VLConfig` model whose weights hold `model.*` (the authors'
    `Qwen3VLForEmbedding` wraps a `Qwen3VLModel` as `self.model`) and tied embeddings (no `lm_head` saved).
    `corpus` and `vocab_size`: the tokenizer's training text beyond its fixed sentences, and its size."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = qwen_tokenizer(vocab_size, corpus)
    tokenizer.padding_side = "right"  # the authors load the processor with padding_side='right'
    head_dim = hidden // 4
    rope = _mrope(head_dim, rope_theta=5_000_000.0, mrope_interleaved=True)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=_text(tokenizer, hidden, layers, head_dim=head_dim, rope_parameters=rope),
                           vision_config=vision, tie_word_embeddings=True, **_qwen_ids(tokenizer))
    config.architectures = ["Qwen3VLForEmbedding"]
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                            image_std=[0.5] * 3, min_pixels=64 * 64, max_pixels=128 * 128)
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 chat_template=QWEN3_VL_CHAT_TEMPLATE, video_processor=video_processor)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.config.architectures = ["Qwen3VLForEmbedding"]
    return _save(folder, model, processor)


def build_tiny_colpali(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny ColPali: a `PaliGemmaConfig` (Gemma text model, SigLIP vision tower at 56x56 pixels, 14-pixel patches:
    16 image tokens) with `PaliGemmaProcessor`, weights under ColPali's keys (`model.model.*`, `model.lm_head.*`)
    plus `custom_text_proj.*`."""
    tokenizer = gemma_tokenizer()
    image_processor = SiglipImageProcessor(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(processor.tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=1, head_dim=hidden // 4,
                initializer_range=0.1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, model_type="gemma")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                  patch_size=14, projection_dim=hidden)
    config = PaliGemmaConfig(text_config=text, vision_config=vision, projection_dim=hidden,
                             image_token_index=processor.image_token_id, pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["ColPali"]
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    return _save(folder, model, processor, _projection(hidden, seed), rename=("", "model."))
