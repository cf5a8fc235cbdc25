"""MMDocIR: the annotation reader on the real file, the parquet loader on tiny files, and the benchmark's metrics."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmrerank.core.items import ImageLoadError
from mmrerank.core.metrics import evaluate
from mmrerank.core.run import PAD
from mmrerank.datasets.mmdocir import load_mmdocir, load_mmdocir_annotations, load_mmdocir_layouts
from mmrerank.datasets.mmdocir.metrics import _union_area, mmdocir_layout_recall, mmdocir_page_metrics

REAL_ANNOTATIONS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mmdocir" / \
    "MMDocIR_annotations.jsonl"


# --- the real annotation file ---------------------------------------------------------------------------------


def test_real_annotation_counts():
    if not REAL_ANNOTATIONS.is_file():
        pytest.skip(f"{REAL_ANNOTATIONS} is absent")
    ann = load_mmdocir_annotations(REAL_ANNOTATIONS)
    assert len(ann.documents) == 313
    assert len(ann.questions) == 1658
    assert sum(len(q.gold_pages) for q in ann.questions) == 2107
    assert sum(len(q.gold_layouts) for q in ann.questions) == 2638
    assert len(ann.domains) == 10
    # inclusive ends: the page ranges tile the 20,395 rows of MMDocIR_pages.parquet exactly
    ranges = sorted(d.page_rows for d in ann.documents)
    assert ranges[0][0] == 0 and ranges[-1][1] == 20394
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    assert sum(d.num_pages for d in ann.documents) == 20395
    assert sum(d.num_layouts for d in ann.documents) == 170338
    first = ann.documents[0]
    assert first.doc_name == "PH_2016.06.08_Economy-Final.pdf" and first.num_pages == 23  # rows 18196..18218
    q = ann.questions[0]
    assert q.gold_pages == [4] and q.gold_layouts[0].bbox == (366, 229, 514, 383)
    assert q.gold_layouts[0].page_size == (612.0, 792.0)
    dataset = load_mmdocir(ann)
    assert len(dataset.page_ids) == 20395 and len(dataset.qrels) == 2107
    assert dataset.images is None and dataset.ocr_text is None


# --- tiny files in the real schema ------------------------------------------------------------------------------

COLOURS = {("docA.pdf", 0): (255, 0, 0), ("docA.pdf", 1): (0, 255, 0), ("docA.pdf", 2): (0, 0, 255),
           ("docB.pdf", 0): (255, 255, 0), ("docB.pdf", 1): None, ("other.pdf", 0): (0, 0, 0)}


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_files(root: Path) -> dict[str, Path]:
    """Rows of the pages parquet: docB (0-1), docA (2-4), an unannotated document (5); docB page 1 is corrupt."""
    order = [("docB.pdf", 0), ("docB.pdf", 1), ("docA.pdf", 0), ("docA.pdf", 1), ("docA.pdf", 2), ("other.pdf", 0)]
    pages = pa.table({
        "doc_name": [d for d, _ in order],
        "domain": ["News" if d == "docB.pdf" else "Laws" for d, _ in order],
        "passage_id": [str(p) for _, p in order],
        "image_path": [f"{d}/{p}.jpg" for d, p in order],
        "image_binary": [b"not a jpeg" if COLOURS[key] is None else _jpeg(COLOURS[key]) for key in order],
        "ocr_text": [f"ocr {d} {p}" for d, p in order],
        "vlm_text": [f"vlm {d} {p}" for d, p in order],
    })
    pq.write_table(pages, root / "pages.parquet")
    # layouts: docA rows 0-2, docB rows 3-4
    layouts = pa.table({
        "doc_name": ["docA.pdf"] * 3 + ["docB.pdf"] * 2,
        "page_id": [0, 0, 2, 0, 1],
        "bbox": [[0, 0, 10, 10], [0, 10, 10, 20], [1.5, 2, 3, 4], [0, 0, 5, 5], [1, 1, 2, 2]],
        "type": ["text", "table", "image", "text", "text"],
        "ocr_text": ["a0", "a1", "a2", "b0", "b1"],
    })
    pq.write_table(layouts, root / "layouts.parquet")
    lines = [
        {"doc_name": "docA.pdf", "domain": "Laws", "page_indices": [2, 4], "layout_indices": [0, 2], "questions": [
            {"Q": "where is red?", "A": "page 0", "type": "['Figure']", "page_id": [0, 2],
             "layout_mapping": [{"page": 0, "page_size": [10, 20], "bbox": [0, 0, 10, 10]},
                                {"page": 2, "page_size": [10, 20], "bbox": [1.5, 2, 3, 4]}]},
            {"Q": "what is green?", "A": 7, "type": "text-only", "page_id": [1], "layoutindex": [1],
             "evidence": "some text", "layout_mapping": [{"page": 1, "page_size": [10, 20], "bbox": [0, 0, 1, 1]}]},
        ]},
        {"doc_name": "docB.pdf", "domain": "News", "page_indices": [0, 1], "layout_indices": [3, 4], "questions": [
            {"Q": "yellow?", "A": "yes", "type": "meta-data", "page_id": [1],
             "layout_mapping": [{"page": 1, "page_size": [10, 20], "bbox": [1, 1, 2, 2]}]},
        ]},
    ]
    (root / "annotations.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    return {"annotations": root / "annotations.jsonl", "pages": root / "pages.parquet",
            "layouts": root / "layouts.parquet"}


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    return _write_files(tmp_path)


def test_loader_pages_candidates_and_qrels(files):
    ds = load_mmdocir(files["annotations"], files["pages"], files["layouts"])
    assert ds.questions.ids == ["docA.pdf#q0", "docA.pdf#q1", "docB.pdf#q0"]
    assert ds.questions.texts[1] == "what is green?"
    assert ds.annotations.questions[1].answer == "7" and ds.annotations.questions[1].gold_layout_rows == [1]
    assert ds.page_ids == ["docA.pdf#0", "docA.pdf#1", "docA.pdf#2", "docB.pdf#0", "docB.pdf#1"]
    assert ds.doc_offsets.tolist() == [0, 3, 5]
    assert ds.page_number.tolist() == [0, 1, 2, 0, 1] and ds.page_doc.tolist() == [0, 0, 0, 1, 1]
    assert list(ds.candidates(0)) == [0, 1, 2] and list(ds.candidates(1)) == [0, 1, 2]
    assert [ds.page_ids[i] for i in ds.candidates(2)] == ["docB.pdf#0", "docB.pdf#1"]
    assert ds.domain(2) == "News"
    assert ds.qrels.to_dict() == {"docA.pdf#q0": {"docA.pdf#0": 1, "docA.pdf#2": 1}, "docA.pdf#q1": {"docA.pdf#1": 1},
                                  "docB.pdf#q0": {"docB.pdf#1": 1}}
    # texts and images come from the document's own rows (docA is rows 2-4, after docB)
    assert ds.ocr_text.texts == ["ocr docA.pdf 0", "ocr docA.pdf 1", "ocr docA.pdf 2", "ocr docB.pdf 0",
                                 "ocr docB.pdf 1"]
    assert ds.vlm_text.texts[3] == "vlm docB.pdf 0"
    for row, key in enumerate([("docA.pdf", 0), ("docA.pdf", 1), ("docA.pdf", 2), ("docB.pdf", 0)]):
        pixel = ds.images[row].getpixel((4, 4))
        assert all(abs(a - b) < 20 for a, b in zip(pixel, COLOURS[key])), (key, pixel)
    with pytest.raises(ImageLoadError, match=r"docB\.pdf page 1"):
        ds.images[4]
    assert ds.images.unreadable() == [4]
    # layouts
    lay = ds.layouts
    assert lay.ids == ["docA.pdf#0#L0", "docA.pdf#0#L1", "docA.pdf#2#L2", "docB.pdf#0#L0", "docB.pdf#1#L1"]
    assert lay.doc_offsets[1:3].tolist() == [3, 5]  # docB's layouts are rows 3 and 4
    assert lay.bbox[2].tolist() == [1.5, 2.0, 3.0, 4.0] and lay.types[1] == "table" and lay.texts[4] == "b1"
    assert lay.box(4).page == 1 and lay.box(4).area == 1.0


def test_per_document_run_pads_and_feeds_generic_metrics(files):
    ds = load_mmdocir(files["annotations"], files["pages"], load_images=False)
    assert ds.images is None
    scores = [[0.1, 0.2, 0.9], [0.5, 0.4, 0.3], [0.2, 0.8]]
    run = ds.per_document_run(scores)
    assert run.indices.tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, PAD]]
    assert run.scores[2, 2] == -math.inf and run.doc_ids == ds.page_ids
    # q0 ranks pages 2, 1, 0: gold {0, 2} at ranks 1 and 3 -> R@1 = 1/2; q1: page 1 at rank 2 -> R@1 = 0;
    # q2 (docB only): page 1 at rank 1 -> R@1 = 1. Mean (1/2 + 0 + 1) / 3 = 1/2.
    assert evaluate(run, ds.qrels, "R@1")["R@1"] == pytest.approx(0.5)
    sub = ds.per_document_run([[0.2, 0.8]], question_indices=[2])
    assert sub.query_ids == ["docB.pdf#q0"] and sub.indices.tolist() == [[3, 4]]
    with pytest.raises(ValueError, match="2 scores, but its document has 3 pages"):
        ds.per_document_run([[0.1, 0.2], [0.5, 0.4, 0.3], [0.2, 0.8]])
    records = ds.page_records(scores)
    assert records[2] == {"question_id": "docB.pdf#q0", "doc_name": "docB.pdf", "domain": "News", "page_id": [1],
                          "scores_page": [0.2, 0.8]}


def test_layout_columns_are_arguments(files, tmp_path):
    table = pq.read_table(files["layouts"]).rename_columns(["doc", "page", "box", "kind", "text"])
    pq.write_table(table, tmp_path / "renamed.parquet")
    ann = load_mmdocir_annotations(files["annotations"])
    lay = load_mmdocir_layouts(tmp_path / "renamed.parquet", ann, doc_column="doc", page_column="page",
                               bbox_column="box", type_column=None, text_column="text")
    assert lay.page.tolist() == [0, 0, 2, 0, 1] and lay.types == [""] * 5 and lay.texts[0] == "a0"
    with pytest.raises(ValueError, match="no column 'bbox'"):
        load_mmdocir_layouts(tmp_path / "renamed.parquet", ann, doc_column="doc", page_column="page")


def test_hub_path_downloads_the_files(files, monkeypatch):
    import huggingface_hub

    calls = []
    local = {"MMDocIR_annotations.jsonl": files["annotations"], "MMDocIR_pages.parquet": files["pages"],
             "MMDocIR_layouts.parquet": files["layouts"]}

    def fake_download(repo_id, filename, repo_type=None, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, filename, repo_type, revision))
        return str(local[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ds = load_mmdocir(from_hub=True, revision="main")
    assert [c[1] for c in calls] == ["MMDocIR_annotations.jsonl", "MMDocIR_pages.parquet"]
    assert all(c[0] == "MMDocIR/MMDocIR_Evaluation_Dataset" and c[2] == "dataset" and c[3] == "main" for c in calls)
    assert ds.ocr_text.texts[0] == "ocr docA.pdf 0" and ds.layouts is None
    calls.clear()
    ds = load_mmdocir(files["annotations"], from_hub=True, load_layouts=True)
    assert [c[1] for c in calls] == ["MMDocIR_pages.parquet", "MMDocIR_layouts.parquet"]
    assert len(ds.layouts) == 5


def test_missing_files_are_named(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_mmdocir_annotations(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_mmdocir(files["annotations"], tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="gone.parquet"):
        load_mmdocir(files["annotations"], layouts_parquet=tmp_path / "gone.parquet")
    with pytest.raises(ValueError, match="from_hub"):
        load_mmdocir()


def _rewrite(path: Path, line: int, edit) -> None:
    lines = path.read_text().splitlines()
    obj = json.loads(lines[line - 1])
    edit(obj)
    lines[line - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["questions"][0].pop("page_id"), r":2: missing field questions\[0\]\.'page_id'"),
    (lambda d: d.pop("domain"), r":2: missing field 'domain'"),
    (lambda d: d.update(page_indices=[1]), r":2: field page_indices must be \[start, end\]"),
    (lambda d: d["questions"][0].update(page_id=[2]), r":2: field questions\[0\]\.page_id\[0\] = 2 is outside"),
    (lambda d: d["questions"][0]["layout_mapping"][0].update(bbox=[1, 2, 3]),
     r":2: field questions\[0\]\.layout_mapping\[0\]\.bbox must be a list of 4"),
    (lambda d: d["questions"][0].update(page_id=["1"]), r":2: field questions\[0\]\.page_id\[0\] must be an integer"),
    (lambda d: d.update(doc_name="docA.pdf"), r":2: field doc_name 'docA.pdf' repeats the document of line 1"),
])
def test_malformed_lines_name_line_and_field(files, edit, message):
    _rewrite(files["annotations"], 2, edit)
    with pytest.raises(ValueError, match=message):
        load_mmdocir_annotations(files["annotations"])


def test_bad_json_and_mismatched_rows(files):
    path = files["annotations"]
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r":4: not valid JSON"):  # line 3 is blank
        load_mmdocir_annotations(path)
    # reading page_indices as end-exclusive would give docA rows 2..3 plus docB a row of docA: the check catches it
    path.write_text("")
    _write_files(path.parent)
    _rewrite(path, 2, lambda d: d.update(page_indices=[0, 2]))
    with pytest.raises(ValueError, match=r"row 2 belongs to 'docA\.pdf'.*rows 0\.\.2 \(inclusive\) to 'docB\.pdf'"):
        load_mmdocir(path, files["pages"])
    _rewrite(path, 2, lambda d: d.update(page_indices=[5, 6]))
    with pytest.raises(ValueError, match="has 6 rows, but document 'docB.pdf' needs page rows 5..6"):
        load_mmdocir(path, files["pages"])


# --- page metrics --------------------------------------------------------------------------------------------------

L3 = 1 / math.log2(3)  # discount of rank 2; rank 1 has 1, rank 3 has 1/log2(4) = 1/2

RECORDS = [
    # q1, domain A, 5 pages. Pages 1 and 3 tie at 0.9: the lower page ranks first, so the ranking is
    # 1, 3, 2, 4, 0 and the top 3 is [1, 3, 2]. Gold {3, 4}: one hit, page 3 at rank 2.
    #   recall 1/2; precision 1/3; DCG = L3, ideal = 1 + L3 (min(3, 2) = 2 gold); MAP = (1/2) / 1 hit = 1/2
    #   (trec_eval's AP would divide by 2 gold: 1/4); MRR 1/2.
    {"domain": "A", "page_id": [3, 4], "scores_page": [0.1, 0.9, 0.5, 0.9, 0.2]},
    # q2, domain A, 2 pages (< k = 3). Ranking 1, 0; gold {0} at rank 2.
    #   recall 1; precision 1/2 (over the 2 pages ranked, as the official code); nDCG = L3 / 1; MAP = (1/2) / 1 = 1/2;
    #   MRR 1/2.
    {"domain": "A", "page_id": [0], "scores_page": [0.3, 0.7]},
    # q3, domain B, 4 pages. Ranking 0, 1, 2, 3; top 3 [0, 1, 2]; gold {0, 2, 3}: hits at ranks 1 and 3.
    #   recall 2/3; precision 2/3; DCG = 1 + 1/2, ideal = 1 + L3 + 1/2; MAP = (1/1 + 2/3) / 2 = 5/6; MRR 1.
    {"domain": "B", "page_id": [0, 2, 3], "scores_page": [0.4, 0.3, 0.2, 0.1]},
]


def test_page_metrics_hand_computed():
    out = mmdocir_page_metrics(RECORDS, 3)
    ndcg = [L3 / (1 + L3), L3, 1.5 / (1.5 + L3)]
    expected = {  # per question, in RECORDS order
        "recall": [1 / 2, 1, 2 / 3],
        "precision": [1 / 3, 1 / 2, 2 / 3],
        "ndcg": ndcg,
        "map": [1 / 2, 1 / 2, 5 / 6],
        "mrr": [1 / 2, 1 / 2, 1],
    }
    for name, (q1, q2, q3) in expected.items():
        domain_a, domain_b = (q1 + q2) / 2, q3
        assert out[name]["domains"] == pytest.approx({"A": domain_a, "B": domain_b}), name
        assert out[name]["macro"] == pytest.approx((domain_a + domain_b) / 2), name
        assert out[name]["micro"] == pytest.approx((q1 + q2 + q3) / 3), name
    # the numbers written out: recall macro (3/4 + 2/3) / 2 = 17/24, micro (1/2 + 1 + 2/3) / 3 = 13/18
    assert out["recall"]["macro"] == pytest.approx(17 / 24) and out["recall"]["micro"] == pytest.approx(13 / 18)
    assert out["recall"]["macro"] != pytest.approx(out["recall"]["micro"])
    # MAP micro (1/2 + 1/2 + 5/6) / 3 = 11/18, not trec's (1/4 + 1/2 + 5/9) / 3
    assert out["map"]["micro"] == pytest.approx(11 / 18)
    assert list(out) == ["recall", "precision", "ndcg", "map", "mrr"]


def test_page_metrics_edge_cases():
    # no gold page in the top 1 -> every measure 0, MAP included (no retrieved relevant to divide by)
    out = mmdocir_page_metrics([{"domain": "A", "page_id": [1], "scores_page": [0.9, 0.1]}], 1)
    assert all(out[m]["micro"] == 0 for m in out)
    # all scores tied: page order decides, so page 0 is rank 1
    out = mmdocir_page_metrics([{"domain": "A", "page_id": [0], "scores_page": [0.5, 0.5, 0.5]}], 1)
    assert out["mrr"]["micro"] == 1 and out["precision"]["micro"] == 1
    # k = 10 > 3 pages: all gold found, precision 2/3 (3 pages ranked); nDCG ideal over min(3, 2) = 2 gold -> ranks
    # 2, 3 vs 1, 2
    out = mmdocir_page_metrics([{"domain": "A", "page_id": [0, 2], "scores_page": [0.5, 0.9, 0.1]}], 10)
    assert out["recall"]["micro"] == 1 and out["precision"]["micro"] == pytest.approx(2 / 3)
    assert out["ndcg"]["micro"] == pytest.approx((L3 + 0.5) / (1 + L3))
    assert out["map"]["micro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # more gold pages (3) than k (2): the ideal DCG stops at k
    out = mmdocir_page_metrics([{"domain": "A", "page_id": [0, 1, 2], "scores_page": [0.9, 0.8, 0.7, 0.95]}], 2)
    # ranking 3, 0, 1, 2: top 2 [3, 0], one hit at rank 2: DCG L3, ideal 1 + L3 (two of the three gold)
    assert out["ndcg"]["micro"] == pytest.approx(L3 / (1 + L3))
    # a perfect top 2 (pages 0, 1) has nDCG 1 although the third gold page is missed; recall 2/3
    out = mmdocir_page_metrics([{"domain": "A", "page_id": [0, 1, 2], "scores_page": [0.9, 0.8, 0.7, 0.1]}], 2)
    assert out["ndcg"]["micro"] == pytest.approx(1.0) and out["recall"]["micro"] == pytest.approx(2 / 3)
    assert math.isnan(mmdocir_page_metrics([], 5)["recall"]["macro"])
    with pytest.raises(ValueError, match="NaN"):
        mmdocir_page_metrics([{"domain": "A", "page_id": [0], "scores_page": [float("nan")]}], 1)
    with pytest.raises(ValueError, match="no 'scores_page'"):
        mmdocir_page_metrics([{"domain": "A", "page_id": [0]}], 1)
    with pytest.raises(ValueError, match="positive integer"):
        mmdocir_page_metrics(RECORDS, 0)


def test_page_metrics_agree_with_generic_metrics_where_definitions_match(files):
    # recall, precision, nDCG and RR share their definitions with R@k, P@k, nDCG@k and RR@k (no ties here); precision
    # only while k <= the pages of every document (3 and 2 here): beyond, the official code divides by the pages
    ds = load_mmdocir(files["annotations"], load_images=False)
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(len(ds.candidates(q)), generator=gen) for q in range(len(ds))]
    for k in (1, 2, 4):
        ours = mmdocir_page_metrics(ds.page_records(scores), k)
        generic = evaluate(ds.per_document_run(scores), ds.qrels, [f"R@{k}", f"P@{k}", f"nDCG@{k}", f"RR@{k}"])
        assert ours["recall"]["micro"] == pytest.approx(generic[f"R@{k}"])
        if k <= 2:
            assert ours["precision"]["micro"] == pytest.approx(generic[f"P@{k}"])
        assert ours["ndcg"]["micro"] == pytest.approx(generic[f"nDCG@{k}"])
        assert ours["mrr"]["micro"] == pytest.approx(generic[f"RR@{k}"])


# --- layout recall ---------------------------------------------------------------------------------------------


def test_layout_recall_hand_made_boxes():
    gold = [{"page": 1, "page_size": [20, 20], "bbox": [0, 0, 10, 10]}]  # area 100
    retrieved = [
        {"page": 2, "bbox": [0, 0, 10, 10], "score": 0.95},  # same place, wrong page: covers nothing
        {"page": 1, "bbox": [5, 0, 15, 10], "score": 0.9},  # covers the right half: 50
        {"page": 1, "bbox": [0, 5, 10, 15], "score": 0.8},  # the bottom half: 50, of which 25 overlaps the above
        {"page": 1, "bbox": [0, 0, 5, 5], "score": 0.1},  # the remaining top-left quarter: 25
    ]
    record = {"domain": "A", "layout_mapping": gold, "retrieved_layouts": retrieved}
    # k=2: page-2 box + right half = 50/100; k=3: union 50 + 50 - 25 = 75 (summing would say 100);
    # k=4: the whole box, 100/100
    for k, want in [(1, 0.0), (2, 0.5), (3, 0.75), (4, 1.0), (9, 1.0)]:
        assert mmdocir_layout_recall([record], k)["micro"] == pytest.approx(want), k

    # two gold boxes that overlap each other, areas 16 + 16 = 32; one retrieved box [0, 0, 3, 4] covers 12 of the
    # first and 4 of the second (x 2..3): (12 + 4) / 32 = 1/2
    overlap = {"domain": "B", "layout_mapping": [{"page": 0, "bbox": [0, 0, 4, 4]}, {"page": 0, "bbox": [2, 0, 6, 4]}],
               "retrieved_layouts": [{"page": 0, "bbox": [0, 0, 3, 4], "score": 1.0}]}
    # ties keep list order: with k=1 only the first of two equal scores counts (the useless one here)
    tie = {"domain": "B", "layout_mapping": [{"page": 0, "bbox": [0, 0, 2, 2]}],
           "retrieved_layouts": [{"page": 0, "bbox": [5, 5, 6, 6], "score": 0.5},
                                 {"page": 0, "bbox": [0, 0, 2, 2], "score": 0.5}]}
    out = mmdocir_layout_recall([record, overlap, tie], 3)
    # A: 0.75; B: (1/2 + 1) / 2 = 3/4 at k=3; macro (0.75 + 0.75) / 2, micro (0.75 + 0.5 + 1) / 3 = 0.75
    assert out["domains"] == pytest.approx({"A": 0.75, "B": 0.75})
    out = mmdocir_layout_recall([record, overlap, tie], 1)
    # A: the page-2 box only, 0; B: (1/2 + 0) / 2 = 1/4; macro 1/8, micro (0 + 1/2 + 0) / 3 = 1/6
    assert out["domains"] == pytest.approx({"A": 0.0, "B": 0.25})
    assert out["macro"] == pytest.approx(1 / 8) and out["micro"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="score"):
        mmdocir_layout_recall([{"domain": "A", "layout_mapping": gold,
                                "retrieved_layouts": [{"page": 1, "bbox": [0, 0, 1, 1]}]}], 1)


def test_union_area_matches_unit_cell_count():
    rng = random.Random(0)
    for _ in range(30):
        boxes = []
        for _ in range(rng.randint(0, 6)):
            x1, y1 = rng.randint(0, 9), rng.randint(0, 9)
            boxes.append((x1, y1, rng.randint(x1, 12), rng.randint(y1, 12)))
        # naive: count the unit cells whose centre lies inside some box
        cells = sum(1 for x in range(13) for y in range(13)
                    if any(b[0] <= x + 0.5 <= b[2] and b[1] <= y + 0.5 <= b[3] for b in boxes))
        assert _union_area(boxes) == pytest.approx(cells), boxes
