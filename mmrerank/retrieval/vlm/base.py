"""What every VLM first-stage embedder shares: the protocol, length-bucketed batching under a token budget, collation.

An embedder turns query texts and document pages (PIL images, optionally with their text) into vectors:
single-vector embedders return one `[N, d]` tensor, late-interaction (multi-vector) embedders a list of `[n_i, d]`
tensors, one per input, holding only the input's real (unpadded) tokens.

Each input is run through the model's own processor alone (so its tokens are exactly what the authors' batch code
gives it), then inputs are grouped by token count -- sorted by length, cut into batches of at most `batch_size`
rows and at most `max_tokens_per_batch` padded tokens (rows x longest row) -- so peak memory is bounded whatever the
pages' sizes, and short queries are not padded to a long page's length. Outputs come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@runtime_checkable
class Embedder(Protocol):
    """A first-stage encoder of queries and page images.

    Attributes:
        multi_vector: True when outputs are lists of `[n_i, d]` token vectors (scored by MaxSim), False for `[N, d]`.
    """

    multi_vector: bool

    def encode_queries(self, texts: Sequence[str]) -> Tensor | list[Tensor]:
        """`[Q, d]` (single-vector) or Q tensors `[n_i, d]` (multi-vector), L2-normalised rows."""

    def encode_documents(self, images: Sequence[Image.Image],
                         texts: Sequence[str | None] | None = None) -> Tensor | list[Tensor]:
        """`[N, d]` or N tensors `[n_i, d]`; `texts[i]` (optional) is page i's text, for models that read it."""


def check_attention(attn_implementation: str) -> str:
    """`attn_implementation` as given, or a `ValueError` naming the accepted values (raised before any loading)."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
    return attn_implementation


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, longest first, each of at most `batch_size` rows and at most
    `max_tokens_per_batch` padded tokens (rows x the batch's longest row); an item longer than the budget runs alone.

    Args:
        lengths: each input's token count.

    Returns:
        Batches of input indices; every index appears once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be positive or None, got {max_tokens_per_batch}")
    budget = max_tokens_per_batch or float("inf")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # longest first: a batch's first row is its widest
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def collate(items: Sequence[dict[str, Tensor]], pad_id: int, left: bool) -> dict[str, Tensor]:
    """One batch from inputs processed one at a time (each value `[1, L_i]` for token-aligned keys, else `[n_i, ...]`).

    Token-aligned values (`input_ids`, `attention_mask`, `token_type_ids`, `mm_token_type_ids`) are padded to the
    longest row on the tokenizer's padding side (`input_ids` with `pad_id`, the rest with 0); every other value
    (`pixel_values` `[patches, ...]` or `[1, 3, H, W]`, `image_grid_thw` `[1, 3]`) is concatenated along dim 0, as
    the processors do for a batch.
    """
    width = max(item["input_ids"].shape[1] for item in items)
    batch: dict[str, Tensor] = {}
    for key in items[0]:
        values = [torch.as_tensor(item[key]) for item in items]
        if values[0].dim() == 2 and values[0].shape[1] == items[0]["input_ids"].shape[1] and key != "image_grid_thw":
            fill = pad_id if key == "input_ids" else 0
            padded = []
            for v in values:
                pad = torch.full((1, width - v.shape[1]), fill, dtype=v.dtype)
                padded.append(torch.cat([pad, v] if left else [v, pad], dim=1))
            batch[key] = torch.cat(padded)
        else:
            batch[key] = torch.cat(values)
    return batch


def last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """`[B, d]`: each row's hidden state at its last attended position (`hidden` `[B, L, d]`, `mask` `[B, L]`), for
    left or right padding alike."""
    last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class BatchedEncoder:
    """Runs processed inputs through a model in length-bucketed batches and puts the outputs back in input order.

    Subclasses give `_query_inputs(text)` / `_document_inputs(image, text)` (one input, processed alone: a dict of
    `[1, L]` token tensors and image tensors) and `_embed(batch)` (a collated batch to `[B, d]` or B `[n_i, d]`).
    """

    multi_vector = False
    chunk = 256  # documents processed (and bucketed by length) together; bounds the held pixel tensors

    def __init__(self, model: torch.nn.Module, processor: Any, batch_size: int = 8,
                 max_tokens_per_batch: int | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        length_batches([], batch_size, max_tokens_per_batch)  # argument checks, before any encoding

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_queries(self, texts: Sequence[str]) -> Tensor | list[Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode_queries takes a list of query texts, not one string")
        return self._run([self._query_inputs(t) for t in texts])

    def encode_documents(self, images: Sequence[Image.Image],
                         texts: Sequence[str | None] | None = None) -> Tensor | list[Tensor]:
        if texts is not None and len(texts) != len(images):
            raise ValueError(f"encode_documents: {len(images)} images but {len(texts)} texts")
        texts = texts if texts is not None else [None] * len(images)
        parts = []
        for start in range(0, len(images), self.chunk):  # a chunk's processed pixels at a time, not the corpus'
            stop = min(start + self.chunk, len(images))
            parts.append(self._run([self._document(images, texts, i) for i in range(start, stop)]))
        if self.multi_vector:
            return [vec for part in parts for vec in part]
        return torch.cat(parts) if parts else torch.empty(0, getattr(self, "dim", 0))

    def _document(self, images: Sequence[Image.Image], texts: Sequence[str | None], i: int) -> dict[str, Tensor]:
        image = images[i]  # read here: a lazily decoded corpus is decoded one chunk at a time
        if not isinstance(image, Image.Image):
            raise TypeError(f"encode_documents: images[{i}] is a {type(image).__name__}, expected a PIL image")
        return self._document_inputs(image, texts[i])

    @torch.inference_mode()
    def _run(self, items: list[dict[str, Tensor]]) -> Tensor | list[Tensor]:
        out: list[Any] = [None] * len(items)
        lengths = [int(item["input_ids"].shape[1]) for item in items]
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for batch in length_batches(lengths, self.batch_size, self.max_tokens_per_batch):
            inputs = collate([items[i] for i in batch], self.tokenizer.pad_token_id, left)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            for i, vec in zip(batch, self._embed(inputs)):
                out[i] = vec.float().cpu()
        if self.multi_vector:
            return out
        dim = self.dim if hasattr(self, "dim") else 0
        return torch.stack(out) if out else torch.empty(0, dim)

    def _query_inputs(self, text: str) -> dict[str, Tensor]:
        raise NotImplementedError

    def _document_inputs(self, image: Image.Image, text: str | None) -> dict[str, Tensor]:
        raise NotImplementedError

    def _embed(self, inputs: dict[str, Tensor]) -> Tensor | list[Tensor]:
        raise NotImplementedError
