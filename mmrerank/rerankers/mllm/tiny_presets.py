"""Tiny, randomly initialised copies of the published VLM rerankers, in their hub formats, for offline tests.

Each builder writes a folder laid out like the model's hub repository -- the real transformers config class,
processor and tokenizer files, and the weights under the key names the hub file uses -- so that
`load_reranker(folder, preset=<hub id>)` goes through the same code a user's download does:

- `build_tiny_jina`: jina-reranker-m0. A Qwen2-VL whose `config.json` names `JinaVLForRanking`, whose weights
  keep the 2024 Qwen2-VL key layout (`model.layers.*`, `visual.*`: the hub file is read with
  `key_mapping={"visual.": "model.visual.", "model.": "model.language_model."}` in vLLM's
  tests/models/multimodal/pooling/test_jinavl_reranker.py) and carry the ranking head as `score.0.*` /
  `score.2.*` (`nn.Sequential(Linear, ReLU, Linear)` in the hub's modeling.py; vLLM's jina_vl.py maps those
  names to `score.dense` / `score.out_proj`), with no `lm_head` (modeling.py replaces it by `nn.Identity`).
- `build_tiny_qwen3_vl`: Qwen3-VL-Reranker, a `Qwen3VLForConditionalGeneration` with its processor (16-pixel
  patches) and a Qwen3-VL-style chat template.
- `build_tiny_qwen2_5_vl`: lychee-rerank-mm, a `Qwen2_5_VLForConditionalGeneration` with its processor.
- `build_tiny_lora`: a MonoQwen2-VL-style LoRA adapter on a tiny Qwen2-VL, optionally under the key names peft
  wrote before transformers moved the text model under `model.language_model` (the layout of adapters uploaded
  in 2024, such as lightonai/MonoQwen2-VL-v0.1).

The tokenizer is `tiny.build_tokenizer`'s byte-level BPE (Qwen's special tokens; True/False/yes/no single tokens).

jina-reranker-m0 and lychee-rerank-mm get their processor files as the 2024-25 Qwen2-VL / Qwen2.5-VL repositories
ship them (`hub_processor_files`): `preprocessor_config.json` with top-level `min_pixels` / `max_pixels`
(3136 / 12845056, Qwen2-VL-2B-Instruct's and Qwen2.5-VL-7B-Instruct's values), `chat_template.json` holding
Qwen2-VL-Instruct's chat template, `tokenizer_config.json` naming `Qwen2Tokenizer`, and no `processor_config.json`.
The hub files of jinaai/jina-reranker-m0 and vec-ai/lychee-rerank-mm themselves could not be read here (no hub
access, no mirror found): these are their base models' files, which the fine-tunes are assumed to have kept (the
issue that found the 12,845,056-pixel limit saw exactly these keys). Assumed, not read: `padding_side: "left"` in
`tokenizer_config.json`, and the absence of a `video_preprocessor_config.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from mmrerank.core.io import atomic_folder
from mmrerank.rerankers.mllm.tiny import SPECIAL_TOKENS, build_tokenizer, tiny_config

# Qwen3-VL's chat template reduced to what a reranker sends: a system turn whose content is a string or a list of
# text parts (no default system turn, unlike Qwen2-VL), user turns mixing images and text, the generation prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Qwen2-VL-2B-Instruct's / Qwen2.5-VL-7B-Instruct's chat template (their chat_template.json and tokenizer_config.json)
QWEN2_VL_HUB_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
# The image limits in those repositories' preprocessor_config.json: 4 to 16384 merged 28-pixel tokens.
HUB_MIN_PIXELS, HUB_MAX_PIXELS = 3136, 12845056
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# jina-reranker-m0's hub weights: the language model under `model.`, the vision tower under `visual.`.
_JINA_LAYOUT = (("model.language_model.", "model."), ("model.visual.", "visual."))


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text_config(tokenizer, hidden: int, layers: int, head_dim: int, rope: dict) -> dict:
    """A small decoder (4 heads, 2 key/value heads) with the token ids taken from `tokenizer`."""
    ids = _token_ids(tokenizer)
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=2048,
                initializer_range=0.1, rope_parameters=rope, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _mrope(head_dim: int, **extra) -> dict:
    """M-RoPE parameters: each head's rotary frequencies split between (temporal, height, width), summing to
    head_dim / 2."""
    third = head_dim // 2 // 3
    return {"rope_type": "default", "mrope_section": [head_dim // 2 - 2 * third, third, third], **extra}


def _vision_token_ids(tokenizer) -> dict[str, int]:
    ids = _token_ids(tokenizer)
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_tiny_qwen3_vl(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny random Qwen3-VL (the Qwen3-VL-Reranker architecture) with its processor, saved as `folder`.

    Images are resized to between 64x64 and 128x128 pixels: 16-pixel patches merged 2x2, 4 to 16 visual tokens.
    """
    tokenizer = build_tokenizer(seed)
    head_dim = hidden // 4
    rope = _mrope(head_dim, rope_theta=5_000_000.0, mrope_interleaved=True)  # interleaved, as Qwen3-VL's config
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=_text_config(tokenizer, hidden, layers, head_dim, rope), vision_config=vision,
                           tie_word_embeddings=True, **_vision_token_ids(tokenizer))
    pixels = dict(min_pixels=64 * 64, max_pixels=128 * 128)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3, **pixels),
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    return _save(folder, Qwen3VLForConditionalGeneration(config), processor)


def build_tiny_qwen2_5_vl(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny random Qwen2.5-VL (lychee-rerank-mm's architecture) with its processor files in the hub's layout
    (`hub_processor_files`), saved as `folder`. 14-pixel patches merged 2x2; the folder's own image limits are the
    hub's (3136 to 12845056 pixels), so a reranker gets the card's only by passing them.
    """
    tokenizer = build_tokenizer(seed)
    head_dim = hidden // 4
    rope = _mrope(head_dim, rope_theta=1_000_000.0)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden, window_size=112, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=_text_config(tokenizer, hidden, layers, head_dim, rope),
                              vision_config=vision, tie_word_embeddings=False, **_vision_token_ids(tokenizer))
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                    tokenizer=tokenizer)  # its files are rewritten in the hub's layout below
    torch.manual_seed(seed)
    folder = _save(folder, Qwen2_5_VLForConditionalGeneration(config), processor)
    hub_processor_files(folder, "Qwen2_5_VLProcessor")
    return folder


def build_tiny_jina(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny random jina-reranker-m0 in its hub layout (see the module docstring), saved as `folder`; the processor
    files are Qwen2-VL-2B-Instruct's (`hub_processor_files`), with the hub's image limits (3136 to 12845056 pixels).

    Returns:
        `folder`; its `model.safetensors` holds the backbone under the old key names and the head as
        `score.0.{weight,bias}` `[d, d]`, `[d]` and `score.2.{weight,bias}` `[1, d]`, `[1]`.
    """
    tokenizer = build_tokenizer(seed)
    config = tiny_config(tokenizer, hidden, layers)
    config.tie_word_embeddings = True  # as Qwen2-VL-2B's; the hub file has no lm_head (modeling.py drops it)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                 tokenizer=tokenizer)  # its files are rewritten in the hub's layout below
    head = {"score.0.weight": torch.randn(hidden, hidden) * 0.2, "score.0.bias": torch.randn(hidden) * 0.2,
            "score.2.weight": torch.randn(1, hidden) * 0.2, "score.2.bias": torch.randn(1) * 0.2}
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        state = {_old_key(k): v for k, v in load_file(str(tmp / "model.safetensors")).items() if k != "lm_head.weight"}
        save_file({**state, **head}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config_file = tmp / "config.json"
        saved = json.loads(config_file.read_text())
        saved.update(architectures=["JinaVLForRanking"], auto_map={"AutoModel": "modeling.JinaVLForRanking"})
        config_file.write_text(json.dumps(saved, indent=2))
        hub_processor_files(tmp, "Qwen2VLProcessor")
    return folder


def hub_processor_files(folder: str | Path, processor_class: str) -> None:
    """Rewrite a saved Qwen2-VL / Qwen2.5-VL processor in `folder` as the hub repositories lay it out.

    transformers 5 saves one `processor_config.json` (the image processor's limits as `size`) and
    `chat_template.jinja`; the repositories hold `preprocessor_config.json` with top-level `min_pixels` /
    `max_pixels` (3136 / 12845056), `chat_template.json`, and a `tokenizer_config.json` naming `Qwen2Tokenizer` with
    the chat template in it too. Loading such a folder, a `size=` argument loses to those keys; `min_pixels=` /
    `max_pixels=` win.
    """
    folder = Path(folder)
    for name in ("processor_config.json", "chat_template.jinja", "video_preprocessor_config.json"):
        (folder / name).unlink(missing_ok=True)
    preprocessor = {"min_pixels": HUB_MIN_PIXELS, "max_pixels": HUB_MAX_PIXELS, "patch_size": 14,
                    "temporal_patch_size": 2, "merge_size": 2, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_HUB_CHAT_TEMPLATE}, indent=2))
    tokenizer_file = folder / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    tokenizer.pop("backend", None)
    tokenizer.update(tokenizer_class="Qwen2Tokenizer", processor_class=processor_class, model_max_length=32768,
                     chat_template=QWEN2_VL_HUB_CHAT_TEMPLATE, bos_token=None, errors="replace",
                     clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer_file.write_text(json.dumps(tokenizer, indent=2))


# MonoQwen2-VL-v0.1's adapter_config.json (hub revision c8db55c): r 32, lora_alpha 32, these target modules (all in the
# language model: Qwen2-VL's vision blocks name theirs qkv / proj / fc1 / fc2).
MONOQWEN_TARGETS = ("o_proj", "down_proj", "gate_proj", "k_proj", "up_proj", "v_proj", "q_proj")


def build_tiny_lora(base: str | Path, folder: str | Path, seed: int = 0, old_layout: bool = True,
                    target_modules: Sequence[str] = MONOQWEN_TARGETS) -> Path:
    """A random LoRA adapter (rank 4, non-zero `lora_B`) for the tiny Qwen2-VL at `base`, saved by peft as `folder`.

    Args:
        base: a tiny Qwen2-VL folder (`build_tiny_vlm`); the adapter's config names it as its base model.
        old_layout: rename the saved keys to the layout of 2024 adapters: `base_model.model.model.layers.*`
            (today `base_model.model.model.language_model.layers.*`) and `base_model.model.visual.*`.
        target_modules: the language model's modules the adapter wraps.
    """
    import peft

    model = AutoModelForImageTextToText.from_pretrained(base)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LoRA's B starts at zero, which would make the adapter a no-op
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        wrapped.save_pretrained(tmp)
        if old_layout:
            weights = tmp / "adapter_model.safetensors"
            state = {_old_key(k): v for k, v in load_file(str(weights)).items()}
            save_file(state, str(weights), metadata={"format": "pt"})
    return folder


def _old_key(key: str) -> str:
    """A current Qwen2-VL key in the pre-2025 layout (the text model and the vision tower at the top level)."""
    for new, old in _JINA_LAYOUT:
        if new in key:
            return key.replace(new, old, 1)
    return key


def _save(folder: str | Path, model, processor) -> Path:
    folder = Path(folder)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    with atomic_folder(folder) as tmp:
        model.eval().save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return folder
