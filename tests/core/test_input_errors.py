"""Malformed inputs at the edges give errors that name the file, the record or line, and what was expected;
integrity gaps (duplicate or null ids, empty captions, repeated judgements) are refused or warned about."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run
from mmrerank.datasets.loaders import load_captions_table, load_hub_coco, load_karpathy_json
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.retrieval.index import RetrievalIndex
from mmrerank.scaling.grid import SweepConfig, load_sweep_config


def png(color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, "PNG")
    return buf.getvalue()


# ---- Karpathy split files ----------------------------------------------------------------------------------------


def coco_record(cocoid: int, sentid: int) -> dict[str, Any]:
    name = f"COCO_val2014_{cocoid:012d}.jpg"
    return {"filepath": "val2014", "filename": name, "split": "test", "cocoid": cocoid, "sentids": [sentid],
            "sentences": [{"raw": f"A photo number {cocoid}.", "sentid": sentid, "tokens": ["a"]}]}


def karpathy_file(tmp_path: Path, edit=None) -> tuple[Path, Path]:
    """A two-image COCO Karpathy file with its images on disk; `edit(records)` damages it first."""
    root = tmp_path / "coco"
    records = [coco_record(391895, 1), coco_record(522418, 2)]
    for rec in records:
        (root / rec["filepath"]).mkdir(parents=True, exist_ok=True)
        (root / rec["filepath"] / rec["filename"]).write_bytes(png())
    if edit is not None:
        edit(records)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": records, "dataset": "coco"}))
    return path, root


def test_karpathy_sentence_without_raw_names_the_image_and_sentence(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[1]["sentences"][0].pop("raw"))
    with pytest.raises(ValueError, match=r"dataset_coco\.json: image 1 .*sentence 0 has no \['raw'\]"):
        load_karpathy_json(path, root)


def test_karpathy_sentence_without_sentid(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[0]["sentences"][0].pop("sentid"))
    with pytest.raises(ValueError, match=r"dataset_coco\.json: image 0 .*sentence 0 has no \['sentid'\]"):
        load_karpathy_json(path, root)


def test_karpathy_image_without_cocoid_when_the_others_have_one(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[1].pop("cocoid"))
    with pytest.raises(ValueError, match=r"dataset_coco\.json: image 1 .*has no 'cocoid'"):
        load_karpathy_json(path, root)


def test_karpathy_null_cocoid_is_refused_not_turned_into_none(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[0].update(cocoid=None))
    with pytest.raises(ValueError, match=r"image 0 .*'cocoid' is None"):
        load_karpathy_json(path, root)


def test_karpathy_sentences_as_strings(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[0].update(sentences=["A man riding a bike."]))
    with pytest.raises(ValueError, match=r"image 0 .*sentence 0 is a str .*expected an object with 'raw'"):
        load_karpathy_json(path, root)


def test_karpathy_null_filename(tmp_path):
    path, root = karpathy_file(tmp_path, lambda r: r[1].update(filename=None))
    with pytest.raises(ValueError, match=r"dataset_coco\.json: image 1: 'filename' is None"):
        load_karpathy_json(path, root)


def test_karpathy_truncated_json_names_the_file(tmp_path):
    path, root = karpathy_file(tmp_path)
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ValueError, match=r"dataset_coco\.json is not valid JSON .*line 1, column"):
        load_karpathy_json(path, root)


def test_hub_coco_row_with_null_cocoid_names_the_row(monkeypatch, tmp_path):
    _, root = karpathy_file(tmp_path)
    rows = [coco_record(391895, 1), coco_record(522418, 2)]
    for row in rows:
        row["sentences"] = [s["raw"] for s in row["sentences"]]
    rows[1]["cocoid"] = None
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(ValueError, match=r"yerevann/coco-karpathy row 1: the image id is None"):
        load_hub_coco(root)


# ---- captions tables: ids and empty captions ---------------------------------------------------------------------


def test_table_null_image_id_is_refused_naming_the_row():
    table = datasets.Dataset.from_dict({"image": [png(), png()], "captions": [["a"], ["b"]], "id": ["x", None]})
    with pytest.raises(ValueError, match=r"custom row 1: the image id is None"):
        load_captions_table(table, id_column="id")


def test_table_null_caption_id_is_refused_naming_the_row():
    table = datasets.Dataset.from_dict({"image": [png()], "captions": [["a", "b"]], "cid": [["c0", None]]})
    with pytest.raises(ValueError, match=r"custom row 0: the caption id 1 in 'cid' is None"):
        load_captions_table(table, caption_ids_column="cid")


def test_empty_captions_are_dropped_with_a_warning_naming_them():
    table = datasets.Dataset.from_dict({"image": [png(), png()], "captions": [["a dog", "  "], ["", "a cat"]],
                                        "id": ["i0", "i1"]})
    with pytest.warns(UserWarning, match=r"dropped 2 empty caption\(s\) in custom, caption ids: i0#1, i1#0"):
        ds = load_captions_table(table, id_column="id")
    assert ds.captions.texts == ["a dog", "a cat"]
    assert ds.captions.ids == ["i0#0", "i1#1"]  # ids keep their positions in the stored list
    assert ds.caption_image.tolist() == [0, 1]


# ---- TREC runs and qrels -----------------------------------------------------------------------------------------


def test_run_line_with_a_non_numeric_score_names_file_and_line(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 high tag\n")
    with pytest.raises(ValueError, match=r"run\.trec:2: the score .* must be a number, got 'high'"):
        Run.read_trec(path)


def test_run_line_with_a_nan_score_is_refused(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 nan tag\n")
    with pytest.raises(ValueError, match=r"run\.trec:1: .*NaN"):
        Run.read_trec(path)


def test_qrels_line_with_a_decimal_grade_names_file_and_line(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\n\nq1 0 d2 0.5\n")
    with pytest.raises(ValueError, match=r"qrels\.txt:3: the grade .* must be an integer, got '0\.5'"):
        Qrels.read_trec(path)


def test_repeated_qrels_lines_keep_the_highest_grade_and_warn(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d2 2\nq1 0 d1 2\nq1 0 d1 0\n")
    with pytest.warns(UserWarning, match=r"2 repeated .*qrels\.txt:3, .*qrels\.txt:4"):
        qrels = Qrels.read_trec(path)
    assert qrels.to_dict() == {"q1": {"d1": 2, "d2": 2}}


def test_duplicate_judgement_pairs_are_merged_so_ndcg_is_not_lowered():
    # q0 judges d0 twice (grades 1 and 2) and d1 once (grade 1); the run ranks d0 then d1 then d2
    with pytest.warns(UserWarning, match=r"1 duplicate judgement.*\('q0', 'd0'\).*highest grade"):
        qrels = Qrels.from_pairs(["q0"], ["d0", "d1", "d2"], torch.tensor([0, 0, 0]), torch.tensor([0, 1, 0]),
                                 torch.tensor([1, 1, 2]))
    assert len(qrels) == 2 and qrels.to_dict() == {"q0": {"d0": 2, "d1": 1}}
    run = Run(torch.tensor([[0, 1, 2]]), torch.tensor([[3.0, 2.0, 1.0]]), ["q0"], ["d0", "d1", "d2"])
    # by hand: the ranking is the ideal one, d0 (grade 2) then d1 (grade 1), so nDCG@3 and R@3 are exactly 1;
    # with d0 counted twice the ideal DCG had a third relevant document (gains 3, 1, 1 at ranks 1-3),
    # nDCG@3 = (3 + 1 / log2(3)) / (3 + 1 / log2(3) + 1 / log2(4)) = 0.88 and R@3 = 2 / 3
    got = evaluate(run, qrels, ["nDCG@3", "R@3"])
    assert got["nDCG@3"] == pytest.approx(1.0)
    assert got["R@3"] == pytest.approx(1.0)


# ---- sweep configs -----------------------------------------------------------------------------------------------

SWEEP = """\
sizes:
  - {name: s1, params: 1000, dims: {hidden: 16, layers: 1, heads: 2}}
budgets: [64, 128]
losses: [listwise]
"""


def test_sweep_config_with_a_typo_names_the_key_the_file_and_the_valid_keys(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("budgets:", "budget:"))
    with pytest.raises(ValueError, match=r"sweep\.yaml: unknown key 'budget' \(did you mean 'budgets'\?\); "
                                         r"valid keys: sizes, budgets, losses"):
        load_sweep_config(path)
    path.write_text(SWEEP + "trainer_arg: {}\n")
    with pytest.raises(ValueError, match=r"sweep\.yaml: unknown key 'trainer_arg' \(did you mean 'trainer_args'"):
        load_sweep_config(path)
    assert load_sweep_config_text(tmp_path, SWEEP).budgets == [64, 128]  # the file itself is fine


def load_sweep_config_text(tmp_path: Path, text: str) -> SweepConfig:
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    return load_sweep_config(path)


def test_sweep_config_size_with_a_typo_or_a_missing_key(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("params:", "param:"))
    with pytest.raises(ValueError, match=r"sweep\.yaml: sizes\[0\]: unknown key 'param' \(did you mean 'params'"):
        load_sweep_config(path)
    path.write_text(SWEEP.replace("budgets: [64, 128]\n", ""))
    with pytest.raises(ValueError, match=r"sweep\.yaml: missing key\(s\) 'budgets'; valid keys: sizes, budgets"):
        load_sweep_config(path)
    path.write_text(SWEEP.replace("budgets: [64, 128]", "budgets: 64"))
    with pytest.raises(ValueError, match=r"sweep\.yaml: 'budgets' must be a list, got 64"):
        load_sweep_config(path)
    path.write_text(SWEEP.replace("budgets: [64, 128]", "budgets: [64, lots]"))
    with pytest.raises(ValueError, match=r"sweep\.yaml: .*"):
        load_sweep_config(path)


# ---- synthetic cache folders -------------------------------------------------------------------------------------


def test_leftover_synthetic_folder_without_its_marker_is_refused(tmp_path):
    config = SyntheticConfig(seed=1, train_images=8, val_images=4, test_images=4, root=str(tmp_path))
    folder = config.split_dir("val")
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", np.zeros((1, 2, 2, 3), np.uint8))  # an interrupted copy: no captions.json
    with pytest.raises(FileExistsError, match=rf"{folder.name} lacks specs\.npy, captions\.json, scenes\.json "
                                              r".*\['images\.npy'\].*delete it"):
        load_synthetic("val", config, progress=False)
    empty = config.split_dir("test")
    empty.mkdir(parents=True)  # an empty folder is simply filled
    assert len(load_synthetic("test", config, progress=False).images) == 4


# ---- saved retrieval indexes -------------------------------------------------------------------------------------


def saved_index(tmp_path: Path, kind: str = "flat") -> Path:
    index = RetrievalIndex(4, kind, device="cpu")
    vectors = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    index.add(vectors, [f"d{i}" for i in range(6)])
    index.save(tmp_path / kind)
    return tmp_path / kind


def edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_index_metadata_with_duplicate_ids_is_refused(tmp_path):
    folder = saved_index(tmp_path)
    edit_meta(folder, lambda m: m["ids"].__setitem__(4, "d1"))
    with pytest.raises(ValueError, match=r"meta\.json: id 'd1' appears twice \(rows 1 and 4\)"):
        RetrievalIndex.load(folder)


def test_index_metadata_with_a_null_id_is_refused(tmp_path):
    folder = saved_index(tmp_path)
    edit_meta(folder, lambda m: m["ids"].__setitem__(2, None))
    with pytest.raises(ValueError, match=r"meta\.json: id of row 2 is None"):
        RetrievalIndex.load(folder)


def test_index_metadata_of_another_kind_is_refused(tmp_path):
    flat, hnsw = saved_index(tmp_path, "flat"), saved_index(tmp_path, "hnsw")
    (flat / "meta.json").write_bytes((hnsw / "meta.json").read_bytes())  # hnsw metadata over a flat faiss file
    with pytest.raises(ValueError, match=r"index\.faiss does not match .*meta\.json \(kind 'hnsw'\): the faiss file "
                                         r"holds a IndexFlatIP, expected a IndexHNSWFlat"):
        RetrievalIndex.load(flat)


def test_adding_a_null_id_is_refused():
    index = RetrievalIndex(2, "flat", device="cpu")
    with pytest.raises(ValueError, match=r"id of vector 1 is None"):
        index.add(np.eye(2, dtype=np.float32), ["a", None])
