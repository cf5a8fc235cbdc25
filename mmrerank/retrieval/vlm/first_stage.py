"""A VLM embedder as a first stage: queries against a page / image corpus, as a `Run`.

Single-vector embedders search through the project's `RetrievalIndex` (faiss, inner product on L2-normalised
vectors); multi-vector (late-interaction) embedders through `LateInteractionIndex` (exact MaxSim, or candidate
generation for large corpora; optional token pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from mmrerank.core.run import Run
from mmrerank.retrieval.index import retrieve
from mmrerank.retrieval.late import LateInteractionIndex, maxsim_scores


def embedder_run(embedder, queries: Sequence[str], query_ids: Sequence[str], images: Sequence[Image.Image],
                 doc_ids: Sequence[str], depth: int, doc_texts: Sequence[str | None] | None = None, *,
                 pool_factor: int = 1, mode: str = "exact", token_k: int = 64, device: str = "auto") -> Run:
    """Encode the corpus once and the queries once, then search: `RetrievalIndex` for single-vector embedders,
    `LateInteractionIndex` for late interaction.

    Args:
        embedder: an `Embedder` (`load_embedder`).
        queries, query_ids: the query texts and their ids; images, doc_ids: the corpus pages and their ids.
        depth: candidates per query.
        doc_texts: the pages' texts, for embedders that read them (Qwen3-VL-Embedding, the tiny ColBERT).
        pool_factor, mode, token_k, device: the late-interaction index's (ignored for single-vector embedders).
    """
    if len(queries) != len(query_ids) or len(images) != len(doc_ids):
        raise ValueError(f"embedder_run: {len(queries)} queries / {len(query_ids)} query ids, "
                         f"{len(images)} images / {len(doc_ids)} document ids")
    if depth < 1:
        raise ValueError(f"embedder_run: depth must be >= 1, got {depth}")
    docs = embedder.encode_documents(images, doc_texts)
    qs = embedder.encode_queries(queries)
    if embedder.multi_vector:
        index = LateInteractionIndex(docs[0].shape[-1], pool_factor, device=device)
        index.add(docs, list(doc_ids))
        return index.search(qs, depth, list(query_ids), mode, token_k)
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
