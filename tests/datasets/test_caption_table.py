"""`CaptionTable`: a user's own images and captions (issue 26): ids are file names, captions a string or a list in
a column the user names, and a split the data does not have is an error (before: every split was the same data)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrerank.datasets import CaptionTable
from tests.helpers.sources import other_split


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """imagefolder directories are read through `datasets`, whose cache must not be ~/.cache in a test."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def image(path: Path, red: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (red, 0, 0)).save(path)
    return path


def test_imagefolder_ids_are_file_names_and_a_caption_a_string(tmp_path):
    folder = tmp_path / "mine"
    rows = [("IMG_0001.jpg", "a cat on a mat"), ("IMG_0002.png", "a dog"), ("x.y.png", "two dots")]
    for i, (name, _) in enumerate(rows):
        image(folder / name, 40 * i)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "caption": c, "qid": f"query-{i}"})
                                                   + "\n" for i, (n, c) in enumerate(rows)))
    data = CaptionTable(str(folder), split="test").load()
    assert sorted(data.images.ids) == ["IMG_0001", "IMG_0002", "x.y"]
    by_id = {data.images.ids[int(data.caption_image[c])]: [] for c in range(len(data.captions))}
    for c in range(len(data.captions)):
        by_id[data.images.ids[int(data.caption_image[c])]].append((data.captions.ids[c], data.captions.texts[c]))
    assert by_id["IMG_0002"] == [("IMG_0002#0", "a dog")]
    assert by_id["IMG_0001"] == [("IMG_0001#0", "a cat on a mat")]
    named = CaptionTable(str(folder), split="test", caption_id_column="qid").load()  # the user's own query ids
    assert sorted(zip(named.captions.ids, named.captions.texts)) == [
        ("query-0", "a cat on a mat"), ("query-1", "a dog"), ("query-2", "two dots")]
    # one split, the one asked for at construction: another is refused, naming it and the fix
    with pytest.raises(ValueError, match=r"has one split, 'test'.*no split 'train'.*its own table"):
        other_split(CaptionTable(str(folder), split="test"), "train").load()


def test_parquet_columns_caption_lists_and_split_column(tmp_path):
    for i in range(4):
        image(tmp_path / "photos" / f"p{i}.png", 50 * i)
    table = pa.table({"file": [f"photos/p{i}.png" for i in range(4)], "key": [f"k{i}" for i in range(4)],
                      "alt": [["zero"], ["one", "uno"], ["two"], ["three"]],
                      "split": ["train", "train", "validation", "test"]})
    pq.write_table(table, tmp_path / "all.parquet")
    source = CaptionTable(str(tmp_path / "all.parquet"), split="train", image_column="file", caption_column="alt")
    train = source.load()
    assert train.images.ids == ["p0", "p1"] and train.captions.texts == ["zero", "one", "uno"]
    assert other_split(source, "val").load().images.ids == ["p2"]  # 'val' finds 'validation'
    keyed = CaptionTable(str(tmp_path / "all.parquet"), split="test", image_column="file", caption_column="alt",
                         id_column="key").load()
    assert keyed.images.ids == ["k3"] and keyed.captions.ids == ["k3#0"]
    pq.write_table(table.slice(0, 2), tmp_path / "train_only.parquet")
    with pytest.raises(ValueError, match=r"no rows of split 'test' in its column 'split' \(its splits: \['train'\]"):
        CaptionTable(str(tmp_path / "train_only.parquet"), split="test", image_column="file",
                     caption_column="alt").load()


def test_caption_table_errors_name_the_option(tmp_path):
    image(tmp_path / "a" / "same.png", 0)
    image(tmp_path / "b" / "same.png", 9)
    pq.write_table(pa.table({"image": ["a/same.png", "b/same.png"], "words": ["x", "y"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"none of the caption columns.*\['image', 'words'\].*caption_column="):
        CaptionTable(str(tmp_path / "t.parquet")).load()
    with pytest.raises(ValueError, match=r"duplicate image id 'same'.*file names without extension: pass id_column="):
        CaptionTable(str(tmp_path / "t.parquet"), caption_column="words").load()


def test_imagefolder_split_subfolders(tmp_path):
    folder = tmp_path / "splits"
    for split, names in (("train", ["t1", "t2"]), ("test", ["s1"])):
        for i, name in enumerate(names):
            image(folder / split / f"{name}.png", 30 * i)
        (folder / split / "metadata.jsonl").write_text(
            "".join(json.dumps({"file_name": f"{n}.png", "captions": [f"{n} caption"]}) + "\n" for n in names))
    assert sorted(CaptionTable(str(folder), split="train").load().images.ids) == ["t1", "t2"]
    assert CaptionTable(str(folder), split="test").load().captions.ids == ["s1#0"]
    with pytest.raises(ValueError, match=r"unknown split 'val'.*splits \['test', 'train'\]"):
        CaptionTable(str(folder), split="val").load()
