"""Flickr30k through the hub's parquet export of `nlphuji/flickr30k`, as the installed `datasets` reads it.

The hub is replaced by a local folder laid out like the branch `refs/convert/parquet` (`TEST/test/0000.parquet`,
the export's `{config}/{split}/` folders) and handed to the real `datasets.load_dataset`, so the data-file patterns,
the parquet reader and the Image feature are the ones a download goes through.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrerank.datasets.loaders import FLICKR30K_REPO, FLICKR30K_REVISION, load_hub_flickr30k

REAL_LOAD_DATASET = datasets.load_dataset

# (filename, Karpathy split, colour): 5 captions each, sentids 5 * row .. 5 * row + 4 as in flickr_annotations_30k.csv
IMAGES = [("1000092795.jpg", "train", (200, 0, 0)), ("10002456.jpg", "test", (0, 200, 0)),
          ("1000268201.jpg", "val", (0, 0, 200)), ("1000344755.jpg", "test", (200, 200, 0))]

# the features as the export's parquet schema carries them (`huggingface` metadata; lists in the `[feature]` form
# that `[datasets.Value("string")]` of flickr30k.py serialises to)
FEATURES = {"image": {"_type": "Image"}, "caption": [{"dtype": "string", "_type": "Value"}],
            "sentids": [{"dtype": "string", "_type": "Value"}], "split": {"dtype": "string", "_type": "Value"},
            "img_id": {"dtype": "string", "_type": "Value"}, "filename": {"dtype": "string", "_type": "Value"}}


def captions(row: int) -> list[str]:
    return [f"caption {j} of image {row} ." for j in range(5)]


def jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_export(root: Path, with_features: bool) -> Path:
    """The parquet branch's layout with one shard; returns the folder standing for the branch."""
    table = pa.table({
        "image": pa.array([{"bytes": jpeg(colour), "path": name} for name, _, colour in IMAGES],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": [captions(row) for row in range(len(IMAGES))],
        "sentids": [[str(5 * row + j) for j in range(5)] for row in range(len(IMAGES))],
        "split": [split for _, split, _ in IMAGES],
        "img_id": [str(row) for row in range(len(IMAGES))],
        "filename": [name for name, _, _ in IMAGES],
    })
    if with_features:
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": FEATURES}})})
    shard = root / "branch" / "TEST" / "test" / "0000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(table, shard)
    return root / "branch"


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """`datasets.load_dataset` with the hub repository served from a local copy of its parquet branch."""
    calls = []

    def load_dataset(path, name=None, *, split=None, revision=None, **kwargs):
        calls.append((path, split, revision))
        if path != FLICKR30K_REPO:
            raise AssertionError(f"unexpected repository {path}")
        if revision != FLICKR30K_REVISION:  # what datasets >= 4 does with the script on the main branch
            raise RuntimeError("Dataset scripts are no longer supported, but found flickr30k.py")
        return REAL_LOAD_DATASET(str(hub.branch), name, split=split, cache_dir=str(tmp_path / "cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub.calls = calls
    hub.root = tmp_path
    return hub


@pytest.mark.parametrize("with_features", [True, False])
def test_karpathy_test_split_from_the_parquet_export(hub, with_features):
    hub.branch = write_export(hub.root, with_features)
    ds = load_hub_flickr30k("test")
    assert hub.calls == [(FLICKR30K_REPO, "test", FLICKR30K_REVISION)]
    # the two Karpathy test images, in file order, with their 5 captions each and their sentids
    assert ds.name == "flickr30k" and ds.images.ids == ["10002456", "1000344755"]
    assert ds.captions.texts == captions(1) + captions(3)
    assert ds.captions.ids == [str(i) for i in range(5, 10)] + [str(i) for i in range(15, 20)]
    assert ds.caption_image.tolist() == [0] * 5 + [1] * 5
    for i, colour in enumerate([(0, 200, 0), (200, 200, 0)]):
        image = ds.images[i]
        assert image.size == (6, 4)
        assert all(abs(a - b) < 12 for a, b in zip(image.getpixel((3, 2)), colour)), image.getpixel((3, 2))
    assert load_hub_flickr30k("val").images.ids == ["1000268201"]
    assert load_hub_flickr30k("train").captions.texts == captions(0)


def test_the_script_branch_is_refused_with_the_revision_to_use(hub):
    hub.branch = write_export(hub.root, True)
    with pytest.raises(RuntimeError, match=r"nlphuji/flickr30k@main: .*revision='refs/convert/parquet'"):
        load_hub_flickr30k("test", revision="main")
    # another repository with the same columns goes through `repo`
    with pytest.raises(AssertionError, match="unexpected repository someone/flickr30k-copy"):
        load_hub_flickr30k("test", repo="someone/flickr30k-copy")
