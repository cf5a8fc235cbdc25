"""Tests for the real-dataset loaders, on tiny local files in the real formats (nothing is downloaded)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrerank.core.items import ImageFiles, ImageLoadError
from mmrerank.datasets.loaders import load_captions_table, load_hub_coco, load_hub_flickr30k, load_karpathy_json

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def encoded(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def write_image(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded(color, "JPEG" if path.suffix == ".jpg" else "PNG"))
    return path


# ---- Karpathy JSON ----------------------------------------------------------------------------------------------

# (cocoid, folder, split, captions); sentids count up across the file as in the real one
COCO_IMAGES = [
    (391895, "val2014", "test", ["A man riding a bike. ", "A cyclist on a dirt road.\n", "Someone on a bicycle."]),
    (522418, "val2014", "test", ["A woman cutting a cake.", "A person with a knife."]),
    (184613, "val2014", "val", ["A boy with cattle."]),
    (318219, "val2014", "restval", ["A computer on a desk.", "A monitor and keyboard."]),
    (554625, "train2014", "train", ["A kid brushing teeth."]),
]


def coco_name(cocoid: int, folder: str) -> str:
    return f"COCO_{folder}_{cocoid:012d}.jpg"


def karpathy_coco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    images, sentid = [], 100
    for imgid, (cocoid, folder, split, caps) in enumerate(COCO_IMAGES):
        write_image(root / folder / coco_name(cocoid, folder), COLORS[imgid])
        sentences = []
        for raw in caps:
            sentences.append({"tokens": raw.lower().strip(" .\n").split(), "raw": raw, "imgid": imgid,
                              "sentid": sentid})
            sentid += 1
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename":
                       coco_name(cocoid, folder), "imgid": imgid, "split": split, "sentences": sentences,
                       "cocoid": cocoid})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path, root


FLICKR_IMAGES = [
    ("1000092795.jpg", "test", ["Two young guys outside.", "Two men in a yard.", "Friends hanging out."]),
    ("10002456.jpg", "train", ["Workers on a roof."]),
    ("1000268201.jpg", "test", ["A child climbing stairs.", "A girl in a pink dress."]),
    ("1000344755.jpg", "val", ["A man on a ladder."]),
]


def karpathy_flickr(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "flickr30k-images"
    images, sentid = [], 0
    for imgid, (filename, split, caps) in enumerate(FLICKR_IMAGES):
        write_image(root / filename, COLORS[imgid])
        sentences = [{"tokens": c.split(), "raw": c, "imgid": imgid, "sentid": sentid + j} for j, c in enumerate(caps)]
        sentid += len(caps)
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                       "split": split, "filename": filename})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path, root


def test_karpathy_coco_test_split(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    ds = load_karpathy_json(json_path, root)
    assert ds.name == "coco"
    assert ds.images.ids == ["391895", "522418"]
    assert ds.captions.ids == ["100", "101", "102", "103", "104"]
    # every caption kept, in order, whitespace-stripped
    assert ds.captions.texts == ["A man riding a bike.", "A cyclist on a dirt road.", "Someone on a bicycle.",
                                 "A woman cutting a cake.", "A person with a knife."]
    assert ds.caption_image.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.sources[0] == root / "val2014" / coco_name(391895, "val2014")
    img = ds.images[1]
    assert img.mode == "RGB" and img.size == (8, 6)
    r, g, b = img.getpixel((3, 3))
    assert g > 200 and r < 60 and b < 60  # the second image is the green one


def test_karpathy_coco_splits(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    train = load_karpathy_json(json_path, root, split="train")
    assert train.images.ids == ["318219", "554625"]  # restval counts as train
    assert train.images.sources[1] == root / "train2014" / coco_name(554625, "train2014")
    assert load_karpathy_json(json_path, root, split="restval").images.ids == ["318219"]
    assert load_karpathy_json(json_path, root, split="val").images.ids == ["184613"]
    assert load_karpathy_json(json_path, root, split="validation").captions.texts == ["A boy with cattle."]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_karpathy_json(json_path, root, split="dev")


def test_karpathy_flickr(tmp_path):
    json_path, root = karpathy_flickr(tmp_path)
    ds = load_karpathy_json(json_path, root, name="f30k")
    assert ds.name == "f30k"
    assert ds.images.ids == ["1000092795", "1000268201"]
    assert ds.images.sources == [root / "1000092795.jpg", root / "1000268201.jpg"]
    assert ds.captions.ids == ["0", "1", "2", "4", "5"]
    assert ds.captions.texts[3:] == ["A child climbing stairs.", "A girl in a pink dress."]
    assert ds.caption_image.tolist() == [0, 0, 0, 1, 1]
    assert load_karpathy_json(json_path, root).name == "flickr30k"
    assert load_karpathy_json(json_path, root, split="train").images.ids == ["10002456"]


def test_karpathy_tasks_qrels(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    ds = load_karpathy_json(json_path, root)
    t2i = ds.task("t2i")
    assert t2i.name == "coco/t2i"
    assert t2i.qrels.to_dict() == {"100": {"391895": 1}, "101": {"391895": 1}, "102": {"391895": 1},
                                   "103": {"522418": 1}, "104": {"522418": 1}}
    i2t = ds.task("i2t")
    assert i2t.queries.ids == ["391895", "522418"]
    assert i2t.qrels.to_dict() == {"391895": {"100": 1, "101": 1, "102": 1}, "522418": {"103": 1, "104": 1}}


def test_karpathy_missing_paths(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_karpathy_json(tmp_path / "nope.json", root)
    with pytest.raises(FileNotFoundError, match="no_images"):
        load_karpathy_json(json_path, tmp_path / "no_images")


def test_karpathy_corrupt_image_raises_or_is_skipped(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    bad = root / "val2014" / coco_name(391895, "val2014")
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageLoadError, match=bad.name):
        load_karpathy_json(json_path, root)
    with pytest.warns(UserWarning, match=bad.name):
        ds = load_karpathy_json(json_path, root, skip_corrupt=True)
    assert ds.images.ids == ["522418"]
    assert ds.captions.ids == ["103", "104"]  # the bad image's captions go with it
    assert ds.caption_image.tolist() == [0, 0]
    assert ds.task("t2i").qrels.to_dict() == {"103": {"522418": 1}, "104": {"522418": 1}}


def test_karpathy_missing_image_and_verify_off(tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    gone = root / "val2014" / coco_name(522418, "val2014")
    gone.unlink()
    with pytest.raises(ImageLoadError, match=gone.name):
        load_karpathy_json(json_path, root)
    ds = load_karpathy_json(json_path, root, verify=False)  # no reading at load: the error comes on use
    assert len(ds.images) == 2
    with pytest.raises(ImageLoadError, match=gone.name):
        ds.images[1]
    with pytest.raises(ValueError, match="verify"):
        load_karpathy_json(json_path, root, skip_corrupt=True, verify=False)


# ---- hub loaders, with `datasets.load_dataset` answering from a local Dataset in the hub's schema ---------------

def hub_flickr_table() -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "caption": [datasets.Value("string")],
                                  "sentids": [datasets.Value("string")], "split": datasets.Value("string"),
                                  "img_id": datasets.Value("string"), "filename": datasets.Value("string")})
    rows, sentid = [], 0
    for imgid, (filename, split, caps) in enumerate(FLICKR_IMAGES):
        rows.append({"image": {"bytes": encoded(COLORS[imgid], "JPEG"), "path": filename}, "caption": caps,
                     "sentids": [str(sentid + j) for j in range(len(caps))], "split": split,
                     "img_id": str(imgid), "filename": filename})
        sentid += len(caps)
    return datasets.Dataset.from_list(rows, features=features)


def fake_load_dataset(monkeypatch, tables: dict[str, datasets.Dataset]) -> list[tuple]:
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, split, kwargs))
        return tables[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_flickr30k(monkeypatch, tmp_path):
    calls = fake_load_dataset(monkeypatch, {"test": hub_flickr_table()})
    ds = load_hub_flickr30k(cache_dir=str(tmp_path))
    assert calls == [("nlphuji/flickr30k", "test", {"revision": "refs/convert/parquet", "cache_dir": str(tmp_path)})]
    assert ds.name == "flickr30k"
    assert ds.images.ids == ["1000092795", "1000268201"]
    assert ds.captions.ids == ["0", "1", "2", "4", "5"]
    assert ds.captions.texts == FLICKR_IMAGES[0][2] + FLICKR_IMAGES[2][2]
    assert ds.caption_image.tolist() == [0, 0, 0, 1, 1]
    # kept encoded: the bytes are held and decoded only on access
    assert isinstance(ds.images, ImageFiles)
    assert all(isinstance(s, tuple) and isinstance(s[1], bytes) for s in ds.images.sources)
    assert ds.images[1].size == (8, 6)
    assert load_hub_flickr30k(split="val").images.ids == ["1000344755"]
    assert load_hub_flickr30k(split="train").captions.texts == ["Workers on a roof."]
    with pytest.raises(ValueError, match="unknown split 'restval'"):
        load_hub_flickr30k(split="restval")


def test_hub_flickr30k_agrees_with_karpathy_json(monkeypatch, tmp_path):
    json_path, root = karpathy_flickr(tmp_path)
    from_json = load_karpathy_json(json_path, root)
    fake_load_dataset(monkeypatch, {"test": hub_flickr_table()})
    from_hub = load_hub_flickr30k()
    assert from_hub.images.ids == from_json.images.ids
    assert from_hub.captions.ids == from_json.captions.ids
    assert from_hub.captions.texts == from_json.captions.texts
    assert from_hub.task("i2t").qrels.to_dict() == from_json.task("i2t").qrels.to_dict()


def test_hub_flickr30k_corrupt_and_missing_column(monkeypatch):
    table = hub_flickr_table()
    rows = table.cast_column("image", datasets.Image(decode=False)).to_list()
    rows[2]["image"] = {"bytes": b"garbage", "path": "1000268201.jpg"}
    bad = datasets.Dataset.from_list(rows, features=table.features)
    fake_load_dataset(monkeypatch, {"test": bad})
    with pytest.raises(ImageLoadError, match="1000268201.jpg"):
        load_hub_flickr30k()
    with pytest.warns(UserWarning, match="1000268201.jpg"):
        ds = load_hub_flickr30k(skip_corrupt=True)
    assert ds.images.ids == ["1000092795"] and ds.captions.ids == ["0", "1", "2"]

    fake_load_dataset(monkeypatch, {"test": table.remove_columns("split")})
    with pytest.raises(ValueError, match=r"no column 'split'.*'image', 'caption'"):
        load_hub_flickr30k()


def hub_coco_tables() -> dict[str, datasets.Dataset]:
    by_split: dict[str, list[dict]] = {}
    sentid = 100
    for imgid, (cocoid, folder, split, caps) in enumerate(COCO_IMAGES):
        hub_split = "validation" if split == "val" else split
        by_split.setdefault(hub_split, []).append({
            "filepath": folder, "filename": coco_name(cocoid, folder), "sentences": caps,
            "sentids": list(range(sentid, sentid + len(caps))), "imgid": imgid, "split": split, "cocoid": cocoid,
            "url": f"http://images.cocodataset.org/{folder}/{coco_name(cocoid, folder)}"})
        sentid += len(caps)
    tables = {k: datasets.Dataset.from_list(v) for k, v in by_split.items()}
    tables["train+restval"] = datasets.concatenate_datasets([tables["train"], tables["restval"]])
    return tables


def test_hub_coco(monkeypatch, tmp_path):
    json_path, root = karpathy_coco(tmp_path)
    calls = fake_load_dataset(monkeypatch, hub_coco_tables())
    ds = load_hub_coco(root)
    assert calls[-1][:2] == ("yerevann/coco-karpathy", "test")
    from_json = load_karpathy_json(json_path, root)
    assert ds.name == "coco"
    assert ds.images.ids == from_json.images.ids == ["391895", "522418"]
    assert ds.images.sources == from_json.images.sources
    assert ds.captions.ids == from_json.captions.ids
    assert ds.captions.texts == from_json.captions.texts
    assert ds.caption_image.tolist() == [0, 0, 0, 1, 1]

    train = load_hub_coco(root, split="train")
    assert calls[-1][1] == "train+restval"
    assert sorted(train.images.ids) == ["318219", "554625"]
    load_hub_coco(root, split="val")
    assert calls[-1][1] == "validation"
    with pytest.raises(ValueError, match="unknown split"):
        load_hub_coco(root, split="dev")
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_hub_coco(tmp_path / "elsewhere")


def test_hub_coco_missing_image(monkeypatch, tmp_path):
    _, root = karpathy_coco(tmp_path)
    gone = root / "val2014" / coco_name(391895, "val2014")
    gone.unlink()
    fake_load_dataset(monkeypatch, hub_coco_tables())
    with pytest.raises(ImageLoadError, match=gone.name):
        load_hub_coco(root)
    with pytest.warns(UserWarning, match=gone.name):
        ds = load_hub_coco(root, skip_corrupt=True)
    assert ds.images.ids == ["522418"] and ds.captions.ids == ["103", "104"]


# ---- captions tables ----------------------------------------------------------------------------------------------

def image_feature_parquet(tmp_path: Path, corrupt_row: int | None = None) -> Path:
    features = datasets.Features({"image": datasets.Image(), "captions": [datasets.Value("string")],
                                  "key": datasets.Value("string")})
    rows = [{"image": {"bytes": encoded(COLORS[i]), "path": f"img{i}.png"}, "captions": caps, "key": f"k{i}"}
            for i, caps in enumerate([["red square", "a red thing"], ["green"], ["blue one", "blue two", "3"]])]
    if corrupt_row is not None:
        rows[corrupt_row]["image"] = {"bytes": b"\x89PNG broken", "path": f"img{corrupt_row}.png"}
    path = tmp_path / "table.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def test_parquet_image_feature(tmp_path):
    path = image_feature_parquet(tmp_path)
    ds = load_captions_table(path)
    assert ds.name == "custom"
    assert ds.images.ids == ["img0", "img1", "img2"]  # the file names without extension, as a run file names them
    assert ds.captions.ids == ["img0#0", "img0#1", "img1#0", "img2#0", "img2#1", "img2#2"]
    assert ds.captions.texts == ["red square", "a red thing", "green", "blue one", "blue two", "3"]
    assert ds.caption_image.tolist() == [0, 0, 1, 2, 2, 2]
    assert all(isinstance(s, tuple) for s in ds.images.sources)
    assert ds.images[2].getpixel((0, 0)) == (0, 0, 255)

    keyed = load_captions_table(path, id_column="key", name="mine")
    assert keyed.images.ids == ["k0", "k1", "k2"] and keyed.captions.ids[:2] == ["k0#0", "k0#1"]
    assert keyed.task("t2i").name == "mine/t2i"
    assert keyed.task("i2t").qrels.to_dict()["k2"] == {"k2#0": 1, "k2#1": 1, "k2#2": 1}


def test_parquet_corrupt_image(tmp_path):
    path = image_feature_parquet(tmp_path, corrupt_row=1)
    with pytest.raises(ImageLoadError, match="img1.png"):
        load_captions_table(path)
    with pytest.warns(UserWarning, match="img1.png"):
        ds = load_captions_table(path, skip_corrupt=True)
    assert ds.images.ids == ["img0", "img2"]
    assert ds.captions.texts == ["red square", "a red thing", "blue one", "blue two", "3"]
    assert ds.caption_image.tolist() == [0, 0, 1, 1, 1]


def test_parquet_raw_bytes_and_paths(tmp_path):
    # raw encoded bytes, a single-string caption, and caption ids from a column
    raw = pa.table({"img": pa.array([encoded(COLORS[0], "JPEG"), encoded(COLORS[1])], pa.binary()),
                    "text": ["only caption", "another"], "cid": [["c0"], ["c1"]]})
    pq.write_table(raw, tmp_path / "raw.parquet")
    ds = load_captions_table(tmp_path / "raw.parquet", image_column="img", captions_column="text",
                             caption_ids_column="cid")
    assert ds.captions.ids == ["c0", "c1"] and ds.captions.texts == ["only caption", "another"]
    assert ds.images[1].getpixel((0, 0)) == COLORS[1]

    # file paths, relative to the parquet file's directory unless image_root says otherwise
    write_image(tmp_path / "imgs" / "a.png", COLORS[2])
    write_image(tmp_path / "imgs" / "b.jpg", COLORS[3])
    paths = pa.table({"image": ["imgs/a.png", "imgs/b.jpg"], "captions": [["a1", "a2"], ["b1"]]})
    pq.write_table(paths, tmp_path / "paths.parquet")
    ds = load_captions_table(tmp_path / "paths.parquet")
    assert ds.images.sources == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.jpg"]
    assert ds.caption_image.tolist() == [0, 0, 1]
    with pytest.raises(ImageLoadError, match="a.png"):
        load_captions_table(tmp_path / "paths.parquet", image_root=tmp_path / "other")


def test_parquet_row_without_image(tmp_path):
    table = pa.table({"image": pa.array([encoded(COLORS[0]), None], pa.binary()), "captions": [["x"], ["y", "z"]]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(ImageLoadError, match="row 1"):
        load_captions_table(tmp_path / "t.parquet")
    with pytest.warns(UserWarning, match="row 1"):
        ds = load_captions_table(tmp_path / "t.parquet", skip_corrupt=True)
    assert ds.images.ids == ["0"] and ds.captions.texts == ["x"]


def test_captions_table_errors(tmp_path):
    path = image_feature_parquet(tmp_path)
    with pytest.raises(ValueError, match=r"no column 'caption'.*\['image', 'captions', 'key'\]"):
        load_captions_table(path, captions_column="caption")
    with pytest.raises(ValueError, match="no column 'id'"):
        load_captions_table(path, id_column="id")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_captions_table(tmp_path / "missing.parquet")
    (tmp_path / "notes.txt").write_text("not parquet")
    with pytest.raises(ValueError, match="notes.txt"):
        load_captions_table(tmp_path / "notes.txt")
    dup = pa.table({"image": pa.array([encoded(COLORS[0])] * 2, pa.binary()), "captions": [["a"], ["b"]],
                    "id": ["same", "same"]})
    pq.write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="duplicate image id 'same'"):
        load_captions_table(tmp_path / "dup.parquet", id_column="id")


def test_captions_table_from_dataset_objects():
    features = datasets.Features({"image": datasets.Image(), "captions": [datasets.Value("string")]})
    table = datasets.Dataset.from_list([{"image": {"bytes": encoded(c), "path": None}, "captions": [f"c{i}"]}
                                        for i, c in enumerate(COLORS[:3])], features=features)
    ds = load_captions_table(table, name="mem")
    assert ds.name == "mem" and ds.captions.texts == ["c0", "c1", "c2"]
    assert ds.images[0].getpixel((0, 0)) == COLORS[0]
    both = datasets.DatasetDict({"train": table, "test": table.select([2])})
    assert load_captions_table(both, split="test").captions.texts == ["c2"]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_captions_table(both, split="dev")


def test_imagefolder_with_metadata(tmp_path):
    folder = tmp_path / "folder"
    lines = []
    for i, name in enumerate(["cat.png", "dog.jpg", "fox.png"]):
        write_image(folder / name, COLORS[i])
        lines.append(json.dumps({"file_name": name, "id": name.split(".")[0],
                                 "captions": [f"a {name[:3]}", f"the {name[:3]} again"][: i + 1]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_captions_table(folder, id_column="id", name="pets", cache_dir=str(tmp_path / "hf_cache"))
    assert sorted(ds.images.ids) == ["cat", "dog", "fox"]
    captions_of = {img: [ds.captions.texts[c] for c in range(len(ds.captions)) if ds.caption_image[c] == row]
                   for row, img in enumerate(ds.images.ids)}
    assert captions_of == {"cat": ["a cat"], "dog": ["a dog", "the dog again"], "fox": ["a fox", "the fox again"]}
    assert all(Path(s).parent == folder for s in ds.images.sources)
    assert ds.task("t2i").qrels.to_dict()["dog#1"] == {"dog": 1}
    row = ds.images.ids.index("dog")
    assert ds.images[row].size == (8, 6)
