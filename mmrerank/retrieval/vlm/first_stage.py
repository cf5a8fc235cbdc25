"""A VLM embedder as a first stage: queries against a page / image corpus, as a `Run`.

Single-vector embedders search through the project's `RetrievalIndex` (faiss, inner product on L2-normalised
vectors); multi-vector (late-interaction) embedders are scored by exact MaxSim in `late_interaction_run`, the one
place to switch to a late-interaction index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from mmrerank.core.run import PAD, Run
from mmrerank.retrieval.index import retrieve


def maxsim_scores(queries: Sequence[Tensor], documents: Sequence[Tensor], chunk: int = 64) -> Tensor:
    """`[Q, N]` exact late-interaction scores: per query token its best document token's dot product, summed.

    Queries are padded with zero rows (which add 0 to the sum); documents are taken `chunk` at a time, padded with
    `-inf` rows (never a maximum), so memory stays at `Q x chunk x n_q x n_d`.

    Args:
        queries: Q tensors `[n_i, d]`; documents: N tensors `[m_j, d]`.
    """
    if not queries or not documents:
        return torch.zeros(len(queries), len(documents))
    q = torch.nn.utils.rnn.pad_sequence([x.float() for x in queries], batch_first=True)  # [Q, n, d]
    out = torch.empty(len(queries), len(documents))
    for start in range(0, len(documents), chunk):
        part = documents[start:start + chunk]
        width = max(x.shape[0] for x in part)
        d = torch.full((len(part), width, q.shape[2]), -math.inf)
        for j, x in enumerate(part):
            d[j, :x.shape[0]] = x.float()
        sims = torch.einsum("qnd,bmd->qbnm", q, d.nan_to_num(neginf=0.0))
        sims = sims.masked_fill(torch.isinf(d[:, :, 0])[None, :, None, :], -math.inf)  # padded document tokens
        out[:, start:start + len(part)] = sims.max(dim=3).values.sum(dim=2)
    return out


def late_interaction_run(query_vecs: Sequence[Tensor], doc_vecs: Sequence[Tensor], query_ids: Sequence[str],
                         doc_ids: Sequence[str], depth: int) -> Run:
    """The top `depth` documents per query by exact MaxSim (ties: lower document index first)."""
    scores = maxsim_scores(query_vecs, doc_vecs)
    k = min(depth, len(doc_ids))
    top = torch.sort(scores, dim=1, descending=True, stable=True)
    indices, values = top.indices[:, :k], top.values[:, :k]
    if k < depth:  # fewer documents than asked: empty slots
        indices = torch.cat([indices, torch.full((len(query_ids), depth - k), PAD, dtype=torch.long)], dim=1)
        values = torch.cat([values, torch.full((len(query_ids), depth - k), -math.inf)], dim=1)
    return Run(indices, values, list(query_ids), list(doc_ids))


def embedder_run(embedder, queries: Sequence[str], query_ids: Sequence[str], images: Sequence[Image.Image],
                 doc_ids: Sequence[str], depth: int, doc_texts: Sequence[str | None] | None = None) -> Run:
    """Encode the corpus once and the queries once, then search: `RetrievalIndex` for single-vector embedders,
    exact MaxSim for late interaction.

    Args:
        embedder: an `Embedder` (`load_embedder`).
        queries, query_ids: the query texts and their ids; images, doc_ids: the corpus pages and their ids.
        depth: candidates per query.
        doc_texts: the pages' texts, for embedders that read them (Qwen3-VL-Embedding).
    """
    if len(queries) != len(query_ids) or len(images) != len(doc_ids):
        raise ValueError(f"embedder_run: {len(queries)} queries / {len(query_ids)} query ids, "
                         f"{len(images)} images / {len(doc_ids)} document ids")
    if depth < 1:
        raise ValueError(f"embedder_run: depth must be >= 1, got {depth}")
    docs = embedder.encode_documents(images, doc_texts)
    qs = embedder.encode_queries(queries)
    if embedder.multi_vector:
        return late_interaction_run(qs, docs, query_ids, doc_ids, depth)
    return retrieve(qs, docs, list(query_ids), list(doc_ids), depth)


def page_scores(dataset, embedder, page_text: bool = False) -> list[Tensor]:
    """An embedder over MMDocIR-form pages: per question, its own document's pages' scores in page order (as
    `bm25_page_scores`); pages and questions are each encoded once.

    Args:
        dataset: an `MMDocIRDataset` loaded with its page images.
        page_text: give the embedder each page's OCR text too (only embedders that read text use it).
    """
    if dataset.images is None:
        raise ValueError("a VLM first stage over pages needs their images: load the dataset with its pages parquet")
    texts = list(dataset.ocr_text) if page_text and dataset.ocr_text is not None else None
    pages = embedder.encode_documents(dataset.images, texts)
    questions = embedder.encode_queries(list(dataset.questions))
    out = []
    for q in range(len(dataset.questions)):
        span = dataset.candidates(q)
        if embedder.multi_vector:
            out.append(maxsim_scores([questions[q]], pages[span.start:span.stop])[0])
        else:
            out.append(pages[span.start:span.stop] @ questions[q])
    return out
