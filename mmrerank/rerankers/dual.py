"""A saved CLIP dual encoder (a first stage mmrerank trained) as a reranker: the cosine of the two embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from mmrerank.core.device import resolve_device
from mmrerank.rerankers.base import Reranker
from mmrerank.retrieval.clip import CLIPEncoder


class DualEncoderReranker(Reranker):
    """Scores (text, image) pairs, in either order, by the cosine similarity of a `CLIPEncoder`'s embeddings.

    Args:
        encoder: a `CLIPEncoder.save_pretrained` folder, or an encoder.
        device: `auto` (GPU when present), `cpu` or `cuda`.
        batch_size: pairs per forward pass.
    """

    def __init__(self, encoder: str | Path | CLIPEncoder, device: str = "auto", batch_size: int = 64) -> None:
        encoder = encoder if isinstance(encoder, CLIPEncoder) else CLIPEncoder.from_pretrained(encoder)
        self.encoder, self.batch_size = encoder.to(resolve_device(device)).eval(), batch_size

    @torch.no_grad()
    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """`[B]` cosines on the CPU; each pair is one text and one PIL image."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates")
        out = [self._cosines(queries[i:i + self.batch_size], candidates[i:i + self.batch_size])
               for i in range(0, len(queries), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def _cosines(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        pairs = [(q, c) if isinstance(q, str) else (c, q) for q, c in zip(queries, candidates)]
        if not all(isinstance(t, str) and isinstance(i, Image.Image) for t, i in pairs):
            raise ValueError("a dual encoder scores (text, image) pairs; got "
                             f"{sorted({(type(t).__name__, type(i).__name__) for t, i in pairs})}")
        texts = self.encoder.encode_texts([t for t, _ in pairs])
        images = self.encoder.encode_images(self.encoder.image_tensor([i for _, i in pairs]))
        return (texts * images).sum(-1).float().cpu()
