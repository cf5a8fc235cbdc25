"""Page first stages over a whole page corpus (ViDoRe's setting), each returning a `Run`.

- `BM25PageSearch`: BM25 over the pages' text (OCR / markdown).
- `DensePageSearch`: any single-vector encoder with `encode(items, batch_size, progress) -> [N, d]` (the tiny CLIP,
  a VLM embedder), through `RetrievalIndex`.
- `EmbedderPageSearch`: any embedder with `encode_queries(texts)` and `encode_documents(images, texts)` (the VLM
  embedders of `retrieval.vlm`, the tiny ColBERT), through `RetrievalIndex` (single-vector) or
  `LateInteractionIndex` (multi-vector).

`pages` is the benchmark's `PageItems` (`ids`, lazily decoded `images`, `texts` or None), `queries` a `Texts`. The
searches read the columns they need, so a text search decodes no image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrerank.core.items import Texts
from mmrerank.core.run import Run


def _page_texts(pages) -> list[str]:
    texts = list(pages.texts or [])
    if not any(texts):
        raise ValueError("BM25 over pages needs their text (OCR / markdown); these pages have none")
    return texts


@dataclass
class BM25PageSearch:
    """BM25 (bm25s, Lucene's variant, English stop words) of each query against every page's text."""

    k1: float = 1.5
    b: float = 0.75

    def run(self, queries: Texts, pages, depth: int) -> Run:
        from mmrerank.retrieval.bm25 import bm25_scores

        scores = bm25_scores(queries.texts, _page_texts(pages), self.k1, self.b)  # [Q, N]
        top = torch.sort(scores, dim=1, descending=True, stable=True)
        depth = min(depth, scores.shape[1])
        return Run(top.indices[:, :depth], top.values[:, :depth], queries.ids, list(pages.ids))


class DensePageSearch:
    """A single-vector encoder over page images; cosine similarity through a flat `RetrievalIndex`.

    Args:
        encoder: has `encode(items, batch_size, progress) -> [N, d]` L2-normalised (a `CLIPEncoder`).
    """

    def __init__(self, encoder, batch_size: int = 64, progress: bool = True) -> None:
        self.encoder, self.batch_size, self.progress = encoder, batch_size, progress

    def run(self, queries: Texts, pages, depth: int) -> Run:
        from mmrerank.retrieval.index import retrieve

        page_emb = self.encoder.encode(pages.images, self.batch_size, self.progress).cpu()
        query_emb = self.encoder.encode(queries, self.batch_size, self.progress).cpu()
        return retrieve(query_emb, page_emb, queries.ids, list(pages.ids), depth)


class EmbedderPageSearch:
    """An embedder over the whole page corpus (`embedder_run`): single-vector through a flat `RetrievalIndex`,
    multi-vector through a `LateInteractionIndex` (exact or candidate-generation MaxSim).

    Args:
        embedder: has `multi_vector`, `encode_queries(texts)` and `encode_documents(images, texts)`.
        page_text: give it the pages' text too (the tiny ColBERT reads only text; VLM embedders read images and
            use text only where their authors do).
        pool_factor, mode, token_k, device: the late-interaction index's.
    """

    def __init__(self, embedder, page_text: bool = False, pool_factor: int = 1, mode: str = "exact",
                 token_k: int = 64, device: str = "auto") -> None:
        self.embedder, self.page_text = embedder, page_text
        self.index_options = {"pool_factor": pool_factor, "mode": mode, "token_k": token_k, "device": device}

    def run(self, queries: Texts, pages, depth: int) -> Run:
        from mmrerank.retrieval.vlm.first_stage import embedder_run

        texts = None if not self.page_text else pages.texts if pages.texts is not None else [""] * len(pages)
        return embedder_run(self.embedder, queries.texts, queries.ids, pages.images, list(pages.ids), depth, texts,
                            **self.index_options)
