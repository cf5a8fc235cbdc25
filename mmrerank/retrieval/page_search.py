"""Page first stages over a whole page corpus (ViDoRe's setting), each returning a `Run`.

- `BM25PageSearch`: BM25 over the pages' text (OCR / markdown).
- `DensePageSearch`: any single-vector encoder with `encode(items, batch_size, progress) -> [N, d]` (the tiny CLIP,
  a VLM embedder), through `RetrievalIndex`.
- `LatePageSearch`: any multi-vector encoder with `encode_queries(texts) -> [m_i, d] list` and
  `encode_documents(pages) -> [n_i, d] list` (the tiny ColBERT, ColPali / ColQwen2), through `LateInteractionIndex`.

`pages` is an items sequence whose item i is page i (`ViDoRePages`: a `Page` with `.image` and `.text`), `queries` a
`Texts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrerank.core.items import Texts
from mmrerank.core.run import Run
from mmrerank.retrieval.late import LateInteractionIndex


def _page_texts(pages) -> list[str]:
    texts = [pages[i].text for i in range(len(pages))]
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


class _PageImages:
    """The pages' images as image items (what a dual encoder's `encode` takes)."""

    modality = "image"

    def __init__(self, pages) -> None:
        self.pages = pages

    def __len__(self) -> int:
        return len(self.pages)

    def __getitem__(self, i: int):
        return self.pages[i].image


class DensePageSearch:
    """A single-vector encoder over page images; cosine similarity through a flat `RetrievalIndex`.

    Args:
        encoder: has `encode(items, batch_size, progress) -> [N, d]` L2-normalised (a `CLIPEncoder`).
    """

    def __init__(self, encoder, batch_size: int = 64, progress: bool = True) -> None:
        self.encoder, self.batch_size, self.progress = encoder, batch_size, progress

    def run(self, queries: Texts, pages, depth: int) -> Run:
        from mmrerank.retrieval.index import retrieve

        page_emb = self.encoder.encode(_PageImages(pages), self.batch_size, self.progress).cpu()
        query_emb = self.encoder.encode(queries, self.batch_size, self.progress).cpu()
        return retrieve(query_emb, page_emb, queries.ids, list(pages.ids), depth)


class LatePageSearch:
    """A multi-vector encoder; exact (or candidate-generation) MaxSim through a `LateInteractionIndex`.

    Args:
        encoder: has `encode_queries(texts)` and `encode_documents(pages)`, each a list of `[n_i, d]` tensors.
        pool_factor: hierarchical token pooling of the pages' vectors (1: none).
        mode, token_k: `LateInteractionIndex.search`'s.
        device: where MaxSim runs.
    """

    def __init__(self, encoder, pool_factor: int = 1, mode: str = "exact", token_k: int = 64,
                 device: str = "auto") -> None:
        self.encoder, self.pool_factor, self.mode, self.token_k, self.device = encoder, pool_factor, mode, token_k, \
            device
        self.index: LateInteractionIndex | None = None

    def build(self, pages) -> LateInteractionIndex:
        docs = self.encoder.encode_documents(pages)
        index = LateInteractionIndex(docs[0].shape[1], self.pool_factor, device=self.device)
        index.add(docs, list(pages.ids))
        return index

    def run(self, queries: Texts, pages, depth: int) -> Run:
        self.index = self.build(pages)
        return self.index.search(self.encoder.encode_queries(queries.texts), depth, queries.ids, self.mode,
                                 self.token_k)
