"""Synthetic document pages: MMDocIR file formats, determinism, and gold pages that really hold the answer."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
from PIL import Image

from mmrerank.datasets.synthetic.pages import DOMAINS, FACTS, PagesConfig, ensure_pages


def test_pages_formats_gold_pages_and_determinism(tmp_path):
    config = PagesConfig(seed=2, documents=12, pages=(4, 6), questions=3, root=str(tmp_path / "a"))
    folder = ensure_pages(config)
    pages = pq.read_table(folder / "MMDocIR_pages.parquet").to_pylist()
    assert set(pages[0]) == {"doc_name", "domain", "passage_id", "image_path", "image_binary", "ocr_text", "vlm_text"}
    docs = [json.loads(line) for line in (folder / "MMDocIR_annotations.jsonl").read_text().splitlines()]
    assert len(docs) == 12 and {d["domain"] for d in docs} == set(DOMAINS[:10])
    for doc in docs:
        start, end = doc["page_indices"]  # inclusive, as in the real file
        rows = pages[start:end + 1]
        assert {r["doc_name"] for r in rows} == {doc["doc_name"]}
        assert [r["passage_id"] for r in rows] == list(range(len(rows)))
        assert 4 <= len(rows) <= 6
        for q in doc["questions"]:
            (gold,) = q["page_id"]
            text = rows[gold]["ocr_text"]
            year = q["Q"].rstrip("?").split()[-1].rstrip(",")
            assert q["A"] in text and year in q["Q"]
        Image.open(io.BytesIO(rows[0]["image_binary"])).verify()
    again = ensure_pages(PagesConfig(seed=2, documents=12, pages=(4, 6), questions=3, root=str(tmp_path / "b")))
    for name in ("MMDocIR_annotations.jsonl", "MMDocIR_pages.parquet", "MMDocIR_layouts.parquet"):
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name


def test_questions_paraphrase_their_statements():
    """Apart from the entity, the year and function words, a question shares at most one word with its fact."""
    function_words = {"{e}", "{y}", "{y},", "{y}?", "{e}?", "in", "of", "the", "at", "was", "did", "to", "from", "a"}
    for _, statement, question, _ in FACTS:
        shared = set(statement.lower().rstrip(".").split()) & set(question.lower().split()) - function_words
        assert len(shared) <= 1, (statement, question, shared)
