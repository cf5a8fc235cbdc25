"""MMDocIR's measures as its official evaluation code computes them, and layout texts read as its encoder reads them.

The reference is `metric_eval.py` / `encode.py` of github.com/MMDocRAG/MMDocIR (commit 394d84d): precision divides
by the pages ranked, min(k, pages); the macro mean of the official script is over its 10 domains; layout recall
sums the overlaps; table / image layouts take `ocr_text` or `vlm_text`, all others `text`.
"""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrerank.datasets.mmdocir import (
    MMDOCIR_DOMAINS,
    load_mmdocir_annotations,
    load_mmdocir_layouts,
    mmdocir_layout_recall,
    mmdocir_page_metrics,
)

L3 = 1 / math.log2(3)  # the discount of rank 2


def test_a_two_page_document_at_k_5_by_hand():
    # pages ranked 0, 1 (scores 0.9, 0.1); the top 5 of a 2-page document is those 2 pages
    one_gold = {"domain": "Laws", "page_id": [1], "scores_page": [0.9, 0.1]}
    out = mmdocir_page_metrics([one_gold], 5)
    # one hit at rank 2: precision 1 / 2 pages ranked (dividing by k would give 1/5), recall 1, nDCG L3 / 1 (the ideal
    # holds min(2 ranked, 1 gold) = 1 page), MAP (1/2) / 1 hit, MRR 1/2
    want = {"precision": 1 / 2, "recall": 1.0, "ndcg": L3, "map": 1 / 2, "mrr": 1 / 2}
    assert {name: out[name]["micro"] for name in want} == pytest.approx(want)
    both_gold = {"domain": "Laws", "page_id": [1, 0], "scores_page": [0.9, 0.1]}
    out = mmdocir_page_metrics([both_gold], 5)
    # both pages are gold: a perfect ranking scores 1 everywhere, precision 2/2 (not 2/5)
    assert {name: out[name]["micro"] for name in want} == pytest.approx(dict.fromkeys(want, 1.0))
    # k = 1 is unchanged: 1 page ranked either way
    assert mmdocir_page_metrics([one_gold], 1)["precision"]["micro"] == 0.0


def official_page_values(gold: list[int], scores: list[float], k: int) -> dict[str, float]:
    """A plain loop over the official definitions (metric_eval.py), written out one measure at a time."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)  # stable: ties by index
    top = order[:k] if k <= len(scores) else order
    hits = len(set(top) & set(gold))
    values = {"precision": hits / len(top) if top else 0, "recall": hits / len(gold) if gold else 0}
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(top), len(gold))))
    dcg = sum(1 / math.log2(i + 2) for i in range(len(top)) if top[i] in gold)
    values["ndcg"] = dcg / ideal if ideal > 0 else 0
    found, total = 0, 0.0
    for i, page in enumerate(top):
        if page in gold:
            found += 1
            total += found / (i + 1)
    values["map"] = total / found if found else 0
    values["mrr"] = next((1 / (i + 1) for i, page in enumerate(top) if page in gold), 0)
    return values


def test_page_metrics_match_the_official_loop_macro_and_micro():
    rng = random.Random(0)
    records = []
    for _ in range(60):
        pages = rng.randint(1, 8)  # many documents shorter than k
        scores = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(pages)]  # ties too
        gold = rng.sample(range(pages), rng.randint(0, min(3, pages)))
        records.append({"domain": rng.choice(MMDOCIR_DOMAINS[:4]), "page_id": gold, "scores_page": scores})
    for k in (1, 3, 5):
        ours = mmdocir_page_metrics(records, k, domains=MMDOCIR_DOMAINS)
        per_question = [official_page_values(r["page_id"], r["scores_page"], k) for r in records]
        for name in ("recall", "precision", "ndcg", "map", "mrr"):
            # evaluate_page: per-domain sums over counts, 0 for a domain without questions, the macro mean over all
            # 10 domains of its list, the micro mean over questions
            means = []
            for domain in MMDOCIR_DOMAINS:
                values = [v[name] for v, r in zip(per_question, records) if r["domain"] == domain]
                means.append(sum(values) / len(values) if values else 0)
            assert list(ours[name]["domains"]) == list(MMDOCIR_DOMAINS)
            assert list(ours[name]["domains"].values()) == pytest.approx(means), (k, name)
            assert ours[name]["macro"] == pytest.approx(sum(means) / 10), (k, name)
            assert ours[name]["micro"] == pytest.approx(sum(v[name] for v in per_question) / len(records)), (k, name)


def test_official_domain_list_counts_absent_domains_as_zero():
    records = [{"domain": "Laws", "page_id": [0], "scores_page": [0.9, 0.1]},  # recall@1 = 1
               {"domain": "News", "page_id": [0, 1], "scores_page": [0.9, 0.1]}]  # recall@1 = 1/2
    assert mmdocir_page_metrics(records, 1)["recall"]["macro"] == pytest.approx(0.75)  # the 2 domains present
    official = mmdocir_page_metrics(records, 1, domains=MMDOCIR_DOMAINS)["recall"]
    assert official["macro"] == pytest.approx(1.5 / 10) and official["micro"] == pytest.approx(0.75)
    assert official["domains"]["Guidebook"] == 0.0
    with pytest.raises(ValueError, match=r"record 0: domain 'Poetry' is not among"):
        mmdocir_page_metrics([{"domain": "Poetry", "page_id": [0], "scores_page": [1.0]}], 1, domains=MMDOCIR_DOMAINS)


def test_layout_recall_sum_is_the_official_recall_layout():
    gold = [{"page": 1, "page_size": [20, 20], "bbox": [0, 0, 10, 10]}]  # area 100
    retrieved = [
        {"page": 2, "bbox": [0, 0, 10, 10], "score": 0.95},  # another page: nothing
        {"page": 1, "bbox": [5, 0, 15, 10], "score": 0.9},  # 50 of the gold box
        {"page": 1, "bbox": [0, 5, 10, 15], "score": 0.8},  # 50, of which 25 overlap the box above
        {"page": 1, "bbox": [0, 0, 5, 5], "score": 0.1},  # 25
        {"page": 1, "bbox": [10, 0, 12, 10], "score": 0.05},  # touches the gold box's edge: 0
    ]
    record = {"domain": "Laws", "layout_mapping": gold, "retrieved_layouts": retrieved}
    # summed overlaps over the gold area: k=3 50 + 50 = 1.0 (the union says 0.75), k=4 125 / 100 = 1.25 (above 1)
    for k, union, summed in [(1, 0.0, 0.0), (2, 0.5, 0.5), (3, 0.75, 1.0), (4, 1.0, 1.25), (5, 1.0, 1.25)]:
        assert mmdocir_layout_recall([record], k)["micro"] == pytest.approx(union), k
        assert mmdocir_layout_recall([record], k, overlap="sum")["micro"] == pytest.approx(summed), k
    # two gold boxes: every kept box counts against each of them, divided by the sum of their areas (16 + 16)
    two = {"domain": "News", "layout_mapping": [{"page": 0, "bbox": [0, 0, 4, 4]}, {"page": 0, "bbox": [2, 0, 6, 4]}],
           "retrieved_layouts": [{"page": 0, "bbox": [0, 0, 3, 4], "score": 1.0}]}
    out = mmdocir_layout_recall([record, two], 3, overlap="sum", domains=MMDOCIR_DOMAINS)
    assert out["domains"]["News"] == pytest.approx((12 + 4) / 32) and out["micro"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["macro"] == pytest.approx((1.0 + 0.5) / 10)
    with pytest.raises(ValueError, match="overlap"):
        mmdocir_layout_recall([record], 1, overlap="max")


# --- layout texts -----------------------------------------------------------------------------------------------


def _real_schema_files(root):
    """A layouts parquet with the benchmark's columns: text in `text` for text layouts, in ocr / vlm for the others."""
    kinds = ["title", "text", "table", "image", "equation", "text"]
    layouts = pa.table({
        "doc_name": ["docA.pdf"] * 6, "domain": ["Laws"] * 6, "type": kinds, "layout_id": list(range(6)),
        "page_id": [0, 0, 0, 1, 1, 1], "image_path": [f"docA/{i}.jpg" for i in range(6)],
        "image_binary": [b"\xff\xd8"] * 6,
        "text": ["Heading", "A paragraph.", None, None, "E = mc^2", ""],
        "ocr_text": [None, None, "ocr of the table", "ocr of the image", None, None],
        "vlm_text": [None, None, "vlm of the table", "vlm of the image", None, None],
        "bbox": [[0, 0, 10, 2], [0, 2, 10, 8], [0, 8, 10, 12], [0, 0, 5, 5], [0, 5, 5, 6], [0, 6, 5, 7]],
        "page_size": [[612, 792]] * 6,
    })
    pq.write_table(layouts, root / "MMDocIR_layouts.parquet")
    line = {"doc_name": "docA.pdf", "domain": "Laws", "page_indices": [0, 1], "layout_indices": [0, 5],
            "questions": [{"Q": "q?", "A": "a", "type": "text", "page_id": [0],
                           "layout_mapping": [{"page": 0, "page_size": [612, 792], "bbox": [0, 2, 10, 8]}]}]}
    (root / "MMDocIR_annotations.jsonl").write_text(json.dumps(line) + "\n")
    return load_mmdocir_annotations(root / "MMDocIR_annotations.jsonl"), root / "MMDocIR_layouts.parquet"


def test_text_layouts_keep_their_text(tmp_path):
    annotations, path = _real_schema_files(tmp_path)
    layouts = load_mmdocir_layouts(path, annotations)
    assert layouts.types == ["title", "text", "table", "image", "equation", "text"]
    assert layouts.texts.texts == ["Heading", "A paragraph.", "ocr of the table", "ocr of the image", "E = mc^2", ""]
    # the official encoder's default mode reads the VLM text of tables and images; text layouts are unchanged
    vlm = load_mmdocir_layouts(path, annotations, visual_text_column="vlm_text")
    assert vlm.texts.texts == ["Heading", "A paragraph.", "vlm of the table", "vlm of the image", "E = mc^2", ""]
    with pytest.raises(ValueError, match=r"none of the text columns 'body', 'words'"):
        load_mmdocir_layouts(path, annotations, text_column="body", visual_text_column="words")
