"""BM25 first stage over page text (OCR), per document: each question is scored against its own pages only.

Backed by the `bm25s` library (Lucene's BM25 variant: IDF log(1 + (N - df + 0.5) / (df + 0.5)), term weight
tf / (tf + k1 (1 - b + b |d| / avgdl)) with k1 = 1.5, b = 0.75; English stop words removed). Each
document gets its own small index, so IDF is computed within the document, as for MMDocIR's per-document
candidate sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def bm25_scores(queries: Sequence[str], pages: Sequence[str], k1: float = 1.5, b: float = 0.75) -> Tensor:
    """BM25 score of every page for every query.

    Args:
        queries: `Q` query texts.
        pages: `P` page texts (one document's pages).

    Returns:
        `[Q, P]` float32 scores (0 where a page shares no term with the query).
    """
    try:
        import bm25s
    except ImportError as err:  # an optional dependency: say which extra brings it
        raise ImportError("BM25 needs the `bm25s` package: pip install 'mmrerank[pages]'") from err
    if not pages:
        raise ValueError("BM25 needs at least one page")
    index = bm25s.BM25(k1=k1, b=b)
    # allow_empty keeps a page with no indexable words as a row that scores 0, instead of shifting the rows
    index.index(bm25s.tokenize(list(pages), stopwords="en", show_progress=False, allow_empty=True),
                show_progress=False)
    tokenized = bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
    scores = np.stack([index.get_scores(tokens) for tokens in tokenized]) if tokenized else np.zeros((0, len(pages)))
    return torch.from_numpy(scores.astype(np.float32)).view(len(queries), len(pages))
