"""A tiny, randomly initialised Qwen2-VL with a locally trained tokenizer, for tests and CPU benchmarks.

Nothing here touches the Hugging Face hub: the tokenizer is a byte-level BPE trained on a few hundred
generated sentences, the chat template is written here in Qwen's style, and the model weights are random.
Everything is saved with `save_pretrained`, so the reranker loads it through exactly the code path it uses
for `Qwen/Qwen2-VL-2B-Instruct` (`AutoModelForImageTextToText` / `AutoProcessor.from_pretrained`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from mmrerank.core.io import atomic_folder, atomic_write_json, generate_folder_once

# Written last into a tiny model's folder (its build arguments): a folder without it was not built whole.
TINY_MARKER = "tiny_vlm.json"
# What a tiny model's folder may hold: the files its build writes (transformers 5's names, and the names of the
# older versions' processor files), the marker included. A build refuses to replace a folder holding anything else.
_TINY_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "processor_config.json",
               "preprocessor_config.json", "video_preprocessor_config.json", TINY_MARKER}
# Without the marker, a folder counts as a whole model when it has these, one of the processor files and weights.
_WHOLE_MODEL_FILES = ("config.json", "tokenizer_config.json")
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# Qwen's chat special tokens; `<|video_pad|>` is included because the processor looks up its id.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Words that must be single tokens: the yes/no answers the reranker reads off the last position.
ANSWER_WORDS = ["True", "False", "yes", "no"]

# Qwen2-VL-Instruct's template, reduced to what a reranker needs: an optional system turn (a default one is
# added, as Qwen's template does), user turns mixing images and text, and the assistant generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PROMPT_WORDS = ("Assert the relevance of the previous image document to the following query, answer True or "
                 "False. The query is: You are a helpful assistant. The document text is: system user assistant")
_NOUNS = ["cat", "dog", "tower", "bridge", "chart", "table", "page", "invoice", "figure", "river", "car", "tree",
          "report", "revenue", "museum", "church", "red", "blue", "green", "circle", "square", "triangle"]
_VERBS = ["shows", "contains", "describes", "depicts", "lists", "mentions"]


def _corpus(rng: random.Random, n: int = 400) -> list[str]:
    """Generated training sentences: the prompt, query-like phrases, and many answers, so every answer word
    and prompt word is frequent enough to become one BPE token."""
    lines = [_PROMPT_WORDS] * 20 + ["system", "user", "assistant"] * 20  # chat roles start a line
    for _ in range(n):
        words = [rng.choice(_NOUNS) for _ in range(rng.randint(2, 6))]
        lines.append(f"the {words[0]} {rng.choice(_VERBS)} a {' '.join(words[1:])}. {rng.choice(ANSWER_WORDS)}")
        lines.append(" ".join(rng.choice(ANSWER_WORDS) for _ in range(4)))
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 1000, corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (Qwen's family of tokenizer) on generated text, plus `corpus`.

    Byte-level means any string encodes (no unknown token), so a label that is not in the vocabulary splits
    into several tokens, as it would with the real Qwen tokenizer. Trained on the generated text alone, most
    other words split into single characters; a `corpus` of the task's training text gives its frequent words
    their own tokens, as a real model's large vocabulary does.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*_corpus(random.Random(seed)), *corpus], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")
    for word in ANSWER_WORDS:  # the reranker's labels must each be one token; fail here rather than in a test
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {fast.convert_ids_to_tokens(ids)}")
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2,
                vision_depth: int = 2) -> Qwen2VLConfig:
    """A Qwen2-VL config small enough for a ~10 ms CPU forward pass, with token ids taken from `tokenizer`."""
    heads = 4
    head_dim = hidden // heads
    # M-RoPE splits each head's rotary frequencies between (temporal, height, width): the sections sum to head_dim/2.
    third = head_dim // 2 // 3
    mrope_section = [head_dim // 2 - 2 * third, third, third]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=2048,
                # A wider init than the default 0.02, so random weights give visibly different scores per pair.
                initializer_range=0.1,
                rope_scaling={"type": "mrope", "mrope_section": mrope_section, "rope_theta": 10000.0},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=vision_depth, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def build_tiny_vlm(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, corpus: Sequence[str] = (),
                   vocab_size: int = 1000) -> Path:
    """Build a tiny random Qwen2-VL, its tokenizer, chat template and processor, and save them as `folder`.

    Images are resized to between 56x56 and 112x112 pixels, i.e. 4 to 16 visual tokens after 2x2 merging.
    The folder is written beside `folder` and swapped in whole (`atomic_folder`), with `TINY_MARKER` written last,
    so an interrupted build leaves what was there before; a folder already at `folder` is replaced.

    Args:
        folder: where to save; afterwards `AutoModelForImageTextToText.from_pretrained(folder)` and
            `AutoProcessor.from_pretrained(folder)` load the model and processor.
        seed: seeds both the tokenizer's training corpus and the model's random weights.
        hidden, layers: the language model's width (a multiple of 8: 4 heads of an even size) and depth.
        corpus, vocab_size: extra tokenizer training text (e.g. the training documents) and the vocabulary size.

    Returns:
        `folder` as a `Path`.

    Raises:
        FileExistsError: `folder` holds files a tiny model's folder does not have (it is never deleted then).
    """
    folder = Path(folder)
    _refuse_foreign(folder)
    with atomic_folder(folder) as tmp:
        _write_tiny(tmp, seed, hidden, layers, corpus, vocab_size)
    return folder


def ensure_tiny_vlm(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, corpus: Sequence[str] = (),
                    vocab_size: int = 1000) -> Path:
    """`folder` as it is when it holds a whole model, else first `build_tiny_vlm` there (same arguments).

    A whole model is a folder with `TINY_MARKER`, or (a tiny model built before the marker existed, or a model of
    one's own, e.g. from `MLLMRerankerModule.save_pretrained`) with its config, weights, tokenizer and processor
    files; such a folder is never rebuilt, whatever the arguments. A folder with only part of a tiny build (one
    interrupted before builds were atomic) is rebuilt. If another process finishes the same folder first, its copy
    is kept.

    Raises:
        FileExistsError: an incomplete `folder` holds files a tiny build does not write (it is never deleted).
    """
    folder = Path(folder)
    if (folder / TINY_MARKER).is_file() or _holds_whole_model(folder):
        return folder
    _refuse_foreign(folder)
    return generate_folder_once(folder, TINY_MARKER,
                                lambda tmp: _write_tiny(tmp, seed, hidden, layers, corpus, vocab_size))


def _holds_whole_model(folder: Path) -> bool:
    """Whether `folder` has what `from_pretrained` needs of a model and its processor: config, weights, tokenizer
    and processor (transformers 5 writes `processor_config.json` last)."""
    return folder.is_dir() and all((folder / name).is_file() for name in _WHOLE_MODEL_FILES) \
        and any((folder / name).is_file() for name in _PROCESSOR_FILES) and any(folder.glob("*.safetensors"))


def _refuse_foreign(folder: Path) -> None:
    """Raise `FileExistsError` if `folder` holds anything a tiny build does not write, so it is never deleted."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in _TINY_FILES) if folder.is_dir() else []
    if foreign:
        raise FileExistsError(f"{folder} holds {foreign}, which a tiny Qwen2-VL folder does not; refusing to build "
                              "the tiny model over it (pick a new or empty folder)")


def _write_tiny(folder: Path, seed: int, hidden: int, layers: int, corpus: Sequence[str], vocab_size: int) -> None:
    """Save the tiny model and its processor into the (new, empty) `folder`, `TINY_MARKER` last."""
    tokenizer = build_tokenizer(seed, vocab_size, corpus)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_config(tokenizer, hidden, layers)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    corpus_digest = hashlib.sha1("\n".join(corpus).encode()).hexdigest()
    atomic_write_json(folder / TINY_MARKER, {"seed": seed, "hidden": hidden, "layers": layers,
                                             "vocab_size": vocab_size, "corpus_sha1": corpus_digest})
