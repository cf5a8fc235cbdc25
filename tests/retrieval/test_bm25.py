"""BM25 first stage against a naive implementation of the Lucene BM25 formula."""

from __future__ import annotations

import math
import re

import pytest
import torch

pytest.importorskip("bm25s")

from mmrerank.retrieval.bm25 import bm25_scores  # noqa: E402


def naive_bm25(query: str, pages: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    def terms(text: str) -> list[str]:
        return re.findall(r"\b\w\w+\b", text.lower())

    docs = [terms(p) for p in pages]
    avg = sum(map(len, docs)) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in set(terms(query)):
            df = sum(term in d for d in docs)
            if df == 0:
                continue
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))  # Lucene's IDF
            tf = doc.count(term)
            score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avg))  # Lucene: no (k1 + 1) factor
        scores.append(score)
    return scores


def test_bm25_matches_the_formula():
    # no English stop words in these texts, so the library's stop-word removal does not enter
    pages = ["red apples grow north orchards", "green apples apples market", "stock market prices fell sharply",
             "orchards north valley"]
    queries = ["apples market", "north valley orchards", "bananas"]
    got = bm25_scores(queries, pages)
    expected = torch.tensor([naive_bm25(q, pages) for q in queries])
    assert got.shape == (3, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got[2] == 0).all()


def test_bm25_needs_pages():
    with pytest.raises(ValueError, match="at least one page"):
        bm25_scores(["q"], [])
