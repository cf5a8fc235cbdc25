"""`MLLMReranker`: a vision-language model asked "is this image relevant to the query? True/False" (MonoQwen2-VL).

Each (query, candidate) pair becomes the model's input text and images through a template (`templates.py`): by
default one chat turn -- the candidate image, then the prompt with the query -- as MonoQwen2-VL's card builds it;
jina-reranker-m0's and Qwen3-VL-Reranker's formats are the other templates. The model's last position is read:
the next-token logits of two label tokens, or an MLP head on its hidden state. There is no generation: one forward
pass per batch, left-padded so every sequence ends at the last position.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrerank.core.deprecation import migrate_saved_config
from mmrerank.core.device import resolve_device
from mmrerank.core.io import atomic_folder, atomic_write, atomic_write_json
from mmrerank.core.resize import VisionResize
from mmrerank.rerankers import folders
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.mllm.shared import ImageCache, SharedScorer
from mmrerank.rerankers.mllm.templates import (
    MONOQWEN_OCR_PREFIX,
    MONOQWEN_PROMPT,
    Content,
    MonoQwenTemplate,
    as_content,
    make_template,
)
from mmrerank.rerankers.mllm.weights import import_peft, load_checkpoint_head, load_lora  # noqa: F401 (re-export)

# MonoQwen2-VL-v0.1's prompt (lightonai); `{query}` is filled in per pair.
DEFAULT_PROMPT = MONOQWEN_PROMPT
# With `use_ocr=True` this goes before the prompt, so the model reads the page text right after the page image.
DEFAULT_OCR_PREFIX = MONOQWEN_OCR_PREFIX
# With `use_ocr=True` (templates that use a document's text only on request), the text is cut to this many characters.
DEFAULT_MAX_OCR_CHARS = 2000
# "probability": the number the cards print (the label softmax, or sigmoid(head - head_offset) with a head).
SCORE_MODES = ("logprob", "logit_diff", "logit", "probability")
# "shared": each distinct image encoded once per `score` call, shared prefixes run once (`shared.py`); "plain":
# every pair through the processor and the whole model (the reference the shared path is tested against).
SCORING_PATHS = ("shared", "plain")
# The shared path's default bound on rows x tokens of one language-model pass (and visual tokens of a vision pass).
DEFAULT_MAX_TOKENS_PER_BATCH = 16384
# The shared path keeps the vision features of this many visual tokens across `score` calls (64 pages of 1,024).
DEFAULT_IMAGE_CACHE_TOKENS = 65536


SETTINGS_FILE, HEAD_FILE = "reranker.json", "head.safetensors"


def load_head(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """A head's state dict: safetensors (what `save_head` writes), or a torch state dict read with `weights_only=True`
    (a file from outside: plain tensors only, whatever torch's default or `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` says)."""
    with open(path, "rb") as f:
        safetensors = f.read(9)[8:] == b"{"  # safetensors: an 8-byte header length, then the JSON header
    if safetensors:
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device))
    return torch.load(path, map_location=device, weights_only=True)


@dataclass
class Page:
    """A document page: its image and, optionally, its OCR text.

    The `yes_no` template (Qwen3-VL-Reranker, lychee-rerank-mm) always scores the text after the image, as their
    authors' code does; the other templates use it only when the reranker has `use_ocr=True`.
    """

    image: Image.Image
    text: str = ""


def as_page(candidate: Any) -> Page:
    """Normalise a candidate to a `Page`.

    Accepted forms: a `Page`; a PIL image; an `(image, ocr_text)` pair; a mapping with `"image"` and optionally
    `"text"` or `"ocr"`.
    """
    if isinstance(candidate, Page):
        page = candidate
    elif isinstance(candidate, Image.Image):
        page = Page(candidate)
    elif isinstance(candidate, Mapping):
        page = Page(candidate["image"], candidate.get("text") or candidate.get("ocr") or "")
    elif isinstance(candidate, (tuple, list)) and len(candidate) == 2:
        page = Page(candidate[0], candidate[1] or "")
    else:
        raise TypeError("a candidate must be a PIL image, a Page, an (image, text) pair or a dict; "
                        f"got {type(candidate)}")
    if not isinstance(page.image, Image.Image):
        raise TypeError(f"a candidate's image must be a PIL image, got {type(page.image)}")
    return page


def resolve_label_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """Token ids of the (positive, negative) answer labels, e.g. ("True", "False").

    Each label must encode, without special tokens, to exactly one token: the score is read from a single
    next-token distribution, so a label spread over several tokens cannot be scored this way.

    Raises:
        ValueError: not two labels, a label that is not a single token (the message names the label and
            shows its tokenization), or two labels with the same token.
    """
    if len(labels) != 2:
        raise ValueError(f"labels must be (positive, negative), got {labels!r}")
    ids = []
    for label in labels:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            pieces = tokenizer.convert_ids_to_tokens(encoded)
            raise ValueError(f"label {label!r} must be a single token, but the tokenizer splits it into "
                             f"{len(encoded)} tokens: {pieces} (ids {encoded})")
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise ValueError(f"labels {labels!r} map to the same token id {ids[0]}")
    return ids


class PairOutput(NamedTuple):
    """What one forward pass gives for `B` pairs.

    Attributes:
        label_logits: `[B, 2]` float32, the next-token logits of the (positive, negative) label tokens.
        head: `[B]` float32, the ranking head's score, or None without a head.
        hidden: `[B, d]` the last layer's hidden state at the last position.
    """

    label_logits: Tensor
    head: Tensor | None
    hidden: Tensor


def _append_token(inputs, token_id: int):
    """`inputs` with `token_id` appended to every (left-padded) row: attended to, and a text token.

    jina-reranker-m0's `compute_score` appends its score token this way after the processor (modeling.py; the later
    version also extends `mm_token_type_ids` with 0, a text token).
    """
    batch = inputs["input_ids"].shape[0]
    fill = {"input_ids": token_id, "attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}
    for key, value in fill.items():
        if key in inputs:
            column = torch.full((batch, 1), value, dtype=inputs[key].dtype, device=inputs[key].device)
            inputs[key] = torch.cat([inputs[key], column], dim=1)
    return inputs


def _document_text_rule(template, use_ocr: bool | None, max_ocr_chars: int | None) -> tuple[bool, int | None]:
    """(use_ocr, max_ocr_chars) for `template`: a template that keeps a document's text (`yes_no`) keeps all of it,
    as its authors' code does, and refuses a setting that would drop or cut it; the others take the settings, by
    default without the text (as their cards) and cutting it at `DEFAULT_MAX_OCR_CHARS` when used."""
    if not template.keeps_document_text:
        return bool(use_ocr), DEFAULT_MAX_OCR_CHARS if max_ocr_chars is None else max_ocr_chars
    if use_ocr is False or max_ocr_chars is not None:
        raise ValueError(
            f"the {template.name!r} template scores a document's whole text after its image, as Qwen3-VL-Reranker's "
            f"and lychee-rerank-mm's code does; use_ocr=False / max_ocr_chars={max_ocr_chars} would drop or cut it "
            "(to score a page's image alone, pass the image alone; a reranker.json saved before this rule may hold "
            '"use_ocr": false and "max_ocr_chars": 2000 -- set them to null)')
    return True, None


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 is what Qwen2-VL is trained in; on CPU fp32 is both faster and exact.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class MLLMRerankerConfig:
    """How an `MLLMReranker` is built and scores (every field is described in `MLLMReranker`'s Args); given as one
    object, or field by field as keyword arguments of `MLLMReranker`, as sentence-transformers takes
    `model_kwargs` / `processor_kwargs`."""

    adapter: str | Path | None = None
    prompt: str = DEFAULT_PROMPT
    labels: Sequence[str] = ("True", "False")
    score: str = "logprob"
    use_ocr: bool | None = None
    head: str | None = None
    head_path: str | Path | None = None
    batch_size: int = 8
    device: str | torch.device = "auto"
    dtype: str | torch.dtype = "auto"
    processor_name_or_path: str | Path | None = None
    processor_kwargs: dict | None = None
    merge_adapter: bool = True
    ocr_prefix: str = DEFAULT_OCR_PREFIX
    max_ocr_chars: int | None = None
    template: str = "monoqwen"
    instruction: str | None = None
    score_token_id: int | None = None
    head_offset: float = 0.0
    head_prefix: str | None = None
    vision_resize: dict[str, int | None] | None = None
    scoring: str = "shared"
    max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH
    image_cache_tokens: int | None = DEFAULT_IMAGE_CACHE_TOKENS
    image_cache_dir: str | Path | None = None
    attn_implementation: str = "sdpa"


class MLLMReranker(Reranker, nn.Module):
    """Pointwise reranker from a vision-language model's answer (MonoQwen2-VL, Qwen3-VL-Reranker) or an MLP head on
    its last hidden state (jina-reranker-m0).

    Each pair becomes the model's input through `template` (see `templates.py`): `"monoqwen"` (the default) is
    one user turn -- the candidate image, then `prompt` with the query (and, with `use_ocr`, the page's OCR text
    first, as `ocr_prefix`) -- followed by the assistant generation prompt; `"jina"` is jina-reranker-m0's
    document-then-query text; `"yes_no"` is Qwen3-VL-Reranker's system turn and `<Instruct>` / `<Query>` /
    `<Document>` sections. The relevance score is read at the last position:

    - `score="logprob"`: log P(positive label) after a softmax restricted to the two label logits;
    - `score="probability"`: that probability itself, the number the cards print (MonoQwen2-VL's
      `softmax(logits[[True, False]])[0]`, Qwen3-VL-Reranker's `sigmoid(logit_yes - logit_no)`);
    - `score="logit_diff"`: logit(positive) - logit(negative) (same ranking, unbounded);
    - `score="logit"`: the positive label's raw logit, the score that contrastive and pairwise training rank with
      (those losses leave the negative label's logit untrained, so a softmax over both would add noise);
    - with `head="mlp"`: the scalar of an MLP on the last hidden state (jina-reranker-m0 style), which replaces the
      label-based score; with `score="probability"` it becomes `sigmoid(head - head_offset)` (jina's
      `compute_score` normalisation, offset 2.65).

    Queries are texts, or (templates that take them) PIL images; candidates are PIL images, `Page`s,
    `(image, ocr_text)` pairs, dicts, or (templates that take them) texts -- see `templates.as_content`.

    Args:
        model_name_or_path: a Qwen-VL-family checkpoint (e.g. `Qwen/Qwen2-VL-2B-Instruct`) or a local folder.
        config: an `MLLMRerankerConfig` holding the settings below; keyword arguments (`**settings`, each one of
            its fields) override it field by field.
        adapter: a peft LoRA adapter (path or hub name, e.g. `lightonai/MonoQwen2-VL-v0.1`) applied to the model;
            keys saved in older transformers layouts are converted (`weights.load_lora`).
        prompt: the `monoqwen` template's user text after the image; must contain `{query}`.
        labels: the (positive, negative) answer words, each a single token.
        score: `"logprob"`, `"probability"`, `"logit_diff"` or `"logit"` (use `"logit"` after contrastive or
            pairwise training).
        use_ocr: use the text that comes with a candidate image (a page's OCR text). None: the template's rule --
            `yes_no` always uses it, as Qwen3-VL-Reranker's and lychee-rerank-mm's code does (False is refused there:
            their code has no such option; pass the image alone to score it alone); `monoqwen` and `jina` do not,
            as their cards (True is an mmrerank option for them).
        head: None or `"mlp"`.
        head_path: a state dict saved by `save_head`, loaded into the head.
        batch_size: pairs per forward pass in `score`.
        device: `"auto"` (CUDA if available), or a device.
        dtype: `"auto"` (bf16 on CUDA, fp32 on CPU), a name such as `"float16"`, or a `torch.dtype`.
        processor_name_or_path: where the processor comes from when it differs from the model's folder.
        processor_kwargs: extra `AutoProcessor.from_pretrained` arguments (e.g. `min_pixels`, `max_pixels`, which
            win over the folder's `preprocessor_config.json` whichever keys it holds; `size` does not).
        vision_resize: resize every image before the processor as qwen-vl-utils' `process_vision_info` does, with
            these `VisionResize` fields (`factor`, `min_pixels`, `max_pixels`), for cards that do (lychee-rerank-mm).
        merge_adapter: fold the LoRA weights into the model (faster inference; not for training).
        ocr_prefix: the OCR text template, containing `{ocr}`.
        max_ocr_chars: with `use_ocr` on a `monoqwen` or `jina` template, the text is cut to this many characters
            (None: 2000), to bound the sequence length. Refused for `yes_no`, whose authors' code does not cut it.
        template: `"monoqwen"`, `"jina"` or `"yes_no"`.
        instruction: the `yes_no` template's `<Instruct>` text (None: Qwen3-VL-Reranker's default).
        score_token_id: a token appended to every tokenised pair, whose position is read (jina-reranker-m0: 100).
        head_offset: subtracted from the head's output before the sigmoid of `score="probability"`.
        head_prefix: load the head from the tensors under this prefix in the model's own checkpoint (jina-reranker-m0:
            `"score."`, as `score.0` / `score.2` or `score.dense` / `score.out_proj`).
        scoring: how `score` runs: `"shared"` (each distinct image prepared and encoded once per call, the prefix
            that pairs share -- a page and the prompt before the query for `monoqwen` / `jina`, the query for
            `yes_no` -- run once with a key / value cache, passes bucketed by length; `shared.py`) or `"plain"`
            (each pair through the processor and the whole model). Both give the same scores (to float rounding).
        max_tokens_per_batch: the shared path's bound on rows x (cached + new) tokens of one language-model pass
            and on the visual tokens of one vision pass, which bounds peak memory whatever the page sizes (None: only
            `batch_size` bounds a pass).
        image_cache_tokens: the shared path keeps the vision features of the images it scored across `score` calls
            (a rerank scores its run in several calls), up to this many visual tokens, least recently used dropped
            first; emptied whenever the vision weights change (None: no bound; 0: within a call only).
        image_cache_dir: the shared path also writes each image's vision features here and reads them back in later
            calls and processes, named by the image's content under a digest of the vision weights and the image
            preparation settings (None: no on-disk cache).
        attn_implementation: the model's attention (`"sdpa"`, `"eager"`, or `"flash_attention_2"` on a GPU with
            the flash-attn package).
    """

    def __init__(self, model_name_or_path: str | Path, config: MLLMRerankerConfig | None = None,
                 **settings: Any) -> None:
        c = replace(config or MLLMRerankerConfig(), **settings)  # an unknown setting: TypeError naming it
        adapter, prompt, labels, score, use_ocr, head = c.adapter, c.prompt, c.labels, c.score, c.use_ocr, c.head
        head_path, batch_size, device, dtype = c.head_path, c.batch_size, c.device, c.dtype
        processor_name_or_path, processor_kwargs, merge_adapter = c.processor_name_or_path, c.processor_kwargs, \
            c.merge_adapter
        ocr_prefix, max_ocr_chars, template, instruction = c.ocr_prefix, c.max_ocr_chars, c.template, c.instruction
        score_token_id, head_offset, head_prefix = c.score_token_id, c.head_offset, c.head_prefix
        vision_resize, scoring, max_tokens_per_batch = c.vision_resize, c.scoring, c.max_tokens_per_batch
        image_cache_tokens, image_cache_dir, attn_implementation = c.image_cache_tokens, c.image_cache_dir, \
            c.attn_implementation
        super().__init__()
        if score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
        if scoring not in SCORING_PATHS:
            raise ValueError(f"scoring must be one of {SCORING_PATHS}, got {scoring!r}")
        if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be a positive number of tokens or None, got "
                             f"{max_tokens_per_batch}")
        if head not in (None, "mlp"):
            raise ValueError(f"head must be None or 'mlp', got {head!r}")
        if head is None and (head_path is not None or head_prefix is not None):
            raise ValueError("head_path / head_prefix given but head is None")
        if head_path is not None and head_prefix is not None:
            raise ValueError("give the head's weights once: head_path or head_prefix, not both")
        self.template = make_template(template, prompt, ocr_prefix, instruction)
        use_ocr, max_ocr_chars = _document_text_rule(self.template, use_ocr, max_ocr_chars)
        self.prompt, self.score_mode, self.use_ocr = prompt, score, use_ocr
        self.ocr_prefix, self.max_ocr_chars, self.batch_size = ocr_prefix, max_ocr_chars, batch_size
        self.labels, self.name_or_path, self.head_kind = tuple(labels), str(model_name_or_path), head
        self.instruction, self.score_token_id, self.head_offset = instruction, score_token_id, float(head_offset)
        self.vision_resize = VisionResize(**vision_resize) if vision_resize is not None else None
        self.scoring, self.max_tokens_per_batch = scoring, max_tokens_per_batch
        self.image_cache = ImageCache(image_cache_tokens, image_cache_dir)
        device = resolve_device(device)
        # a copy: transformers updates a `size` dict argument in place with the folder's own limits, which would
        # change a preset's options for every later load in the process
        self.processor = AutoProcessor.from_pretrained(processor_name_or_path or model_name_or_path,
                                                       **copy.deepcopy(processor_kwargs or {}))
        # Left padding puts every sequence's final token at position -1, so one index reads all the answers.
        self.processor.tokenizer.padding_side = "left"
        self.label_ids = resolve_label_ids(self.processor.tokenizer, self.labels)
        model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype=_resolve_dtype(dtype, device),
                                                            attn_implementation=attn_implementation)
        if adapter is not None:
            model = load_lora(model, adapter, merge=merge_adapter)
        self.model = model.to(device).eval()
        hidden = self.model.config.get_text_config().hidden_size
        # The head works in fp32 whatever the model's dtype: it is small, and its scores are compared across pairs.
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)).to(device) \
            if head == "mlp" else None
        if head_path is not None:
            self.head.load_state_dict(load_head(head_path, device))
        if head_prefix is not None:
            load_checkpoint_head(self.head, model_name_or_path, head_prefix)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save_head(self, path: str | Path) -> None:
        """Save the ranking head's weights as safetensors (load them back with `head_path`), atomically."""
        from safetensors.torch import save_file

        if self.head is None:
            raise ValueError("this reranker has no head")
        state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, str(tmp)))

    def settings(self) -> dict[str, Any]:
        """What scores like this reranker besides the weights: template, prompt, labels, score rule, OCR use, head.

        (A head read from the checkpoint, `head_prefix`, is saved with the other head weights, so it is not here.)
        """
        return {"prompt": self.prompt, "labels": list(self.labels), "score": self.score_mode, "use_ocr": self.use_ocr,
                "head": self.head_kind, "ocr_prefix": self.ocr_prefix, "max_ocr_chars": self.max_ocr_chars,
                "template": self.template.name, "instruction": self.instruction,
                "score_token_id": self.score_token_id, "head_offset": self.head_offset,
                "vision_resize": self.vision_resize.settings() if self.vision_resize else None}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the reranker as one folder: the model and processor (or, for a LoRA model, the adapter and the base
        model's name as `base`), `head.safetensors` if any, and `reranker.json` (its `settings`) last.

        The folder is written beside `folder` and swapped in whole (`atomic_folder`): an interrupted save leaves the
        previous save intact, and nothing of the previous save survives a finished one.
        """
        folder = Path(folder)
        lora = hasattr(self.model, "peft_config")
        with atomic_folder(folder) as tmp:
            self.model.save_pretrained(tmp)
            if not lora:
                self.processor.save_pretrained(tmp)
            if self.head is not None:
                self.save_head(tmp / HEAD_FILE)
            atomic_write_json(tmp / SETTINGS_FILE, {**folders.saved_marker(folders.MLLM), **self.settings(),
                                                    "base": self.name_or_path if lora else None})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides: Any) -> MLLMReranker:
        """Load a `save_pretrained` folder; `overrides` (device, batch_size, dtype, ...) go to the constructor."""
        import json

        folder = Path(folder)
        if not (folder / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"no saved reranker at {folder} ({SETTINGS_FILE} missing)")
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        for key in ("model_type", "mmrerank_version"):  # what the folder is (`folders.identify`), not a setting
            settings.pop(key, None)
        settings = migrate_saved_config(settings, folders.MLLM, str(folder / SETTINGS_FILE))
        base = settings.pop("base")
        head_path = folder / HEAD_FILE if settings["head"] else None
        model, adapter = (base, folder) if base else (folder, None)
        return cls(model, adapter=adapter, head_path=head_path, **{**settings, **overrides})

    def prompt_text(self, query: str, page: Page) -> str:
        """The `monoqwen` template's user text for one pair (after the image): the prompt with the query, OCR text
        first if used."""
        if not isinstance(self.template, MonoQwenTemplate):
            raise ValueError(f"prompt_text is the 'monoqwen' template's; this reranker uses {self.template.name!r}")
        return self.template.prompt_text(query, self._document(page))

    def chat_text(self, query: Any, candidate: Any) -> str:
        """The full input text for one pair (before the processor expands its images), ending where the score is
        read (the assistant generation prompt, or the document-then-query text for `jina`)."""
        return self.render(query, candidate)[0]

    def render(self, query: Any, candidate: Any) -> tuple[str, list[Image.Image]]:
        """One pair's input text and its images, in the order of their placeholders in the text.

        Raises:
            ValueError: a query or candidate of a kind the template does not take (e.g. a text document for
                `monoqwen`), naming what it takes.
        """
        return self.template.render(as_content(query), self._document(candidate), self.processor)

    def _document(self, candidate: Any) -> Content:
        """A candidate as the template sees it: the text that comes with an image kept when `use_ocr` (always for
        `yes_no`), and cut to `max_ocr_chars` (never for `yes_no`)."""
        return as_content(candidate, keep_text=self.use_ocr, max_chars=self.max_ocr_chars)

    def encode(self, queries: Sequence[Any], candidates: Sequence[Any]):
        """Processor inputs for `B` pairs: left-padded `input_ids`/`attention_mask`/`mm_token_type_ids` `[B, L]`
        (ending with `score_token_id` if set), `pixel_values` `[sum of patches, C*T*P*P]` and `image_grid_thw`
        `[number of images, 3]` when the pairs have images, on the model's device."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates")
        rendered = [self.render(q, c) for q, c in zip(queries, candidates)]
        # the processor gives the i-th placeholder of the batch (in text order) the i-th image: one flat list
        images = [self._prepare_image(image) for _, pair_images in rendered for image in pair_images]
        inputs = self.processor(text=[text for text, _ in rendered], images=images or None, padding=True,
                                return_tensors="pt")
        if self.score_token_id is not None:
            inputs = _append_token(inputs, self.score_token_id)
        return inputs.to(self.device)

    def _prepare_image(self, image: Image.Image) -> Image.Image:
        """An image as the processor gets it: RGB, and first resized as the card's qwen-vl-utils does if it does."""
        return self.vision_resize(image) if self.vision_resize is not None else image.convert("RGB")

    def _language_model_parts(self):
        """(backbone returning hidden states, lm_head) of the model, looking through a peft wrapper."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.model, model.get_output_embeddings()

    def forward(self, queries: Sequence[str], candidates: Sequence[Any]) -> PairOutput:
        """One forward pass over `B` pairs (with gradients unless the caller disables them).

        Only the last position goes through the LM head: it is the one the answer is read from, and the full
        `[B, L, V]` logits would dominate memory for a real vocabulary.

        Returns:
            `PairOutput` with `label_logits` `[B, 2]`, `head` `[B]` or None, `hidden` `[B, d]`.
        """
        inputs = self.encode(queries, candidates)
        backbone, _ = self._language_model_parts()
        return self.output_from(backbone(**inputs, use_cache=False).last_hidden_state[:, -1])

    def output_from(self, hidden: Tensor) -> PairOutput:
        """The `PairOutput` read from the last position's hidden states `[B, d]`."""
        _, lm_head = self._language_model_parts()
        label_logits = lm_head(hidden)[:, self.label_ids].float()  # [B, 2]
        head = self.head(hidden.float()).squeeze(-1) if self.head is not None else None
        return PairOutput(label_logits, head, hidden)

    def logits_for(self, queries: Sequence[str], candidates: Sequence[Any]) -> PairOutput:
        """Training entry point: `forward` under a name that says what it returns."""
        return self(queries, candidates)

    def scores_from(self, output: PairOutput) -> Tensor:
        """The relevance score `[B]` from a forward pass's output, as configured (`score`, `head`)."""
        if output.head is not None:
            return torch.sigmoid(output.head - self.head_offset) if self.score_mode == "probability" else output.head
        if self.score_mode == "probability":
            return F.softmax(output.label_logits, dim=-1)[:, 0]
        if self.score_mode == "logprob":
            return F.log_softmax(output.label_logits, dim=-1)[:, 0]
        if self.score_mode == "logit":
            return output.label_logits[:, 0]
        return output.label_logits[:, 0] - output.label_logits[:, 1]

    @torch.no_grad()
    def score(self, queries: Sequence[str], candidates: Sequence[Any]) -> Tensor:
        """Relevance of each pair `queries[i]`, `candidates[i]` -> `[B]` float32 on CPU, at most `batch_size` pairs a
        pass, by the `scoring` path."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates")
        if not len(queries):
            return torch.zeros(0)
        was_training = self.training
        self.eval()  # LoRA dropout must be off when scoring, even mid-training (e.g. validation)
        try:
            if self.scoring == "shared":
                scorer = SharedScorer(self, self.batch_size, self.max_tokens_per_batch, self.image_cache)
                hidden = scorer.hidden(queries, candidates)
                return self.scores_from(self.output_from(hidden)).cpu()
            out = [self.scores_from(self(queries[i:i + self.batch_size], candidates[i:i + self.batch_size])).cpu()
                   for i in range(0, len(queries), self.batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)
