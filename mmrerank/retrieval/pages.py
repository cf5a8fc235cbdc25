"""First stages over document pages (MMDocIR form): each question against its own document's pages."""

from __future__ import annotations

from torch import Tensor

from mmrerank.datasets.mmdocir import MMDocIRDataset


def bm25_page_scores(dataset: MMDocIRDataset) -> list[Tensor]:
    """BM25 over OCR text: per question, `[pages of its document]` scores in page order."""
    from mmrerank.retrieval.bm25 import bm25_scores

    if dataset.ocr_text is None:
        raise ValueError("BM25 over pages needs their OCR text: load the dataset with its pages parquet")
    by_doc: dict[int, list[int]] = {}
    for q, question in enumerate(dataset.annotations.questions):
        by_doc.setdefault(question.doc_index, []).append(q)
    scores: list[Tensor | None] = [None] * len(dataset.questions)
    for questions in by_doc.values():  # one BM25 index per document, its questions scored together
        pages = dataset.candidates(questions[0])
        doc_scores = bm25_scores([dataset.questions[q] for q in questions], [dataset.ocr_text[p] for p in pages])
        for q, row in zip(questions, doc_scores):
            scores[q] = row
    return scores  # type: ignore[return-value]


def clip_page_scores(dataset: MMDocIRDataset, encoder, batch_size: int = 64, progress: bool = True) -> list[Tensor]:
    """A dual encoder over page images: per question, cosine similarity with its own document's pages.

    Args:
        encoder: a `CLIPEncoder` (pages are encoded once, questions once).

    Returns:
        Per question, `[pages of its document]` scores in page order (as `bm25_page_scores`).
    """
    if dataset.images is None:
        raise ValueError("a dual encoder over pages needs their images: load the dataset with its pages parquet")
    page_emb = encoder.encode(dataset.images, batch_size, progress).cpu()  # [P, e]
    question_emb = encoder.encode(dataset.questions, batch_size, progress).cpu()  # [Q, e]
    return [page_emb[dataset.candidates(q).start:dataset.candidates(q).stop] @ question_emb[q]
            for q in range(len(dataset.questions))]


def page_training_data(seed: int, documents: int) -> tuple[MMDocIRDataset, list[int], list[list[int]]]:
    """The synthetic pages of `seed` (rendered once, cached) for training a page first stage: the dataset, each
    question's (first) gold page row and its document's page rows (the hard negatives a batch brings with it)."""
    from mmrerank.datasets.page_sources import SyntheticPages

    data = SyntheticPages(seed=seed, documents=documents).load()
    gold, doc_pages = [], []
    for q, question in enumerate(data.annotations.questions):
        rows = data.candidates(q)
        gold.append(rows.start + question.gold_pages[0])
        doc_pages.append(list(rows))
    return data, gold, doc_pages
