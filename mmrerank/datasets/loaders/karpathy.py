"""The Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`) with the images on disk."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.loaders.tables import (
    Source,
    _file_name,
    _id_text,
    _normalize_split,
    _require_columns,
    _require_dir,
    _table_to_dataset,
)

# Karpathy's COCO "restval" images (the 30,504 val2014 images outside val and test) are trained on by
# convention, so split="train" means train + restval; Flickr30k has no restval, so it changes nothing there.
_KARPATHY_SPLITS = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}, "restval": {"restval"}}


def load_karpathy_json(json_path: str | Path, image_root: str | Path, split: str = "test", name: str | None = None,
                       skip_corrupt: bool = False, verify: bool = True) -> ImageTextDataset:
    """Load one split of a Karpathy split file (`dataset_coco.json` or `dataset_flickr30k.json`).

    Each image is read from `image_root / filepath / filename` (`filepath`, e.g. `val2014`, only in the COCO
    file). For COCO, `split="train"` includes the `restval` images (pass `"restval"` for those alone).

    Args:
        json_path: the Karpathy JSON file.
        image_root: the directory the image paths are relative to (COCO: the one holding `val2014/`;
            Flickr30k: the one holding the jpg files).
        split: `"train"`, `"val"` (or `"validation"`), `"test"` or `"restval"`.
        name: the dataset's name; default: the file's `"dataset"` field (`coco` / `flickr30k`).
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        verify: decode every image once at load (see the module docstring for the cost).

    Returns:
        The images of the split with their captions; caption ids are the Karpathy `sentid`s.

    Raises:
        FileNotFoundError: the JSON file or the image root does not exist.
        ValueError: an unknown split, a split with no images, or a malformed file.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if not json_path.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {json_path}")
    _require_dir(image_root)
    wanted = _KARPATHY_SPLITS[_normalize_split(split, _KARPATHY_SPLITS)]
    data = _read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path} is not a Karpathy split file: expected a top-level 'images' list")
    rows, numbers = [], []  # the split's images and their positions in the file (for messages)
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise ValueError(f"{json_path}: image {i} is a {type(img).__name__}; expected an object")
        missing = [key for key in ("filename", "split", "sentences") if key not in img]
        if missing:
            raise ValueError(f"{json_path}: image {i} has no {missing} (keys: {sorted(img)})")
        if img["split"] in wanted:
            rows.append(img)
            numbers.append(i)
    if not rows:
        found = sorted({str(img["split"]) for img in data["images"]})
        raise ValueError(f"{json_path} has no images in split {split!r} (splits there: {found})")
    with_cocoid = any("cocoid" in img for img in rows)  # COCO: every image needs one; Flickr30k: none has one
    for i, img in zip(numbers, rows):
        _check_karpathy_image(img, f"{json_path}: image {i}", with_cocoid)
    # The same columns as the hub's yerevann/coco-karpathy, so both go through `_karpathy_table_to_dataset`.
    columns: dict[str, list[Any]] = {
        "filename": [img["filename"] for img in rows],
        "sentences": [[s["raw"] for s in img["sentences"]] for img in rows],
        "sentids": [[str(s["sentid"]) for s in img["sentences"]] for img in rows],
    }
    if any("filepath" in img for img in rows):
        columns["filepath"] = [img.get("filepath") for img in rows]
    if any("cocoid" in img for img in rows):
        columns["cocoid"] = [str(img["cocoid"]) for img in rows]
    table = datasets.Dataset.from_dict(columns)
    return _karpathy_table_to_dataset(table, image_root, name or data.get("dataset") or json_path.stem,
                                      origin=str(json_path), skip_corrupt=skip_corrupt, verify=verify)


def _read_json(path: Path) -> Any:
    """Parse a JSON file; a truncated or garbled file names itself and the place parsing stopped."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                         "is the file truncated?") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); expected a Karpathy split JSON file") from err


def _check_karpathy_image(img: Mapping[str, Any], label: str, with_cocoid: bool) -> None:
    """Check one image record of a Karpathy split file, naming it (`label`) and the field that is wrong.

    Expected: `filename` a non-empty string, `filepath` (COCO) a string, `cocoid` (when any image of the split has
    one) an id, and `sentences` a list of objects each with a string `raw` and a `sentid`.
    """
    label = f"{label} ({img['filename']!r})" if isinstance(img.get("filename"), str) else label
    if not isinstance(img["filename"], str) or not img["filename"].strip():
        raise ValueError(f"{label}: 'filename' is {img['filename']!r}; expected a non-empty file name")
    if img.get("filepath") is not None and not isinstance(img["filepath"], str):
        raise ValueError(f"{label}: 'filepath' is {img['filepath']!r}; expected a folder name such as 'val2014'")
    if with_cocoid:
        if "cocoid" not in img:
            raise ValueError(f"{label} has no 'cocoid' while other images of the split have one (keys: {sorted(img)})")
        _id_text(img["cocoid"], "'cocoid'", label)
    if not isinstance(img["sentences"], list):
        raise ValueError(f"{label}: 'sentences' is a {type(img['sentences']).__name__}; expected a list of objects "
                         "with 'raw' and 'sentid'")
    for j, sentence in enumerate(img["sentences"]):
        where = f"{label}, sentence {j}"
        if not isinstance(sentence, dict):
            raise ValueError(f"{where} is a {type(sentence).__name__} ({sentence!r:.80}); expected an object with "
                             "'raw' (the caption) and 'sentid'")
        missing = [key for key in ("raw", "sentid") if key not in sentence]
        if missing:
            raise ValueError(f"{where} has no {missing} (keys: {sorted(sentence)}); expected 'raw' and 'sentid'")
        if not isinstance(sentence["raw"], str):
            raise ValueError(f"{where}: 'raw' is {sentence['raw']!r:.80}; expected the caption string")
        _id_text(sentence["sentid"], "'sentid'", where)


def _karpathy_table_to_dataset(table: datasets.Dataset, image_root: Path, name: str, *, origin: str,
                               skip_corrupt: bool, verify: bool) -> ImageTextDataset:
    """A table in the yerevann/coco-karpathy layout (one row per image) -> dataset; images under `image_root`."""
    _require_columns(table.column_names, ["filename", "sentences", "sentids"], origin)
    has_path, has_cocoid = "filepath" in table.column_names, "cocoid" in table.column_names
    columns = ["filename", "sentences", "sentids"] + ["filepath"] * has_path + ["cocoid"] * has_cocoid

    def image_source(row: Mapping[str, Any], i: int) -> Source:
        # Only COCO has `filepath`; the path parts that are empty are left out.
        parts = [row["filepath"]] if has_path and row["filepath"] else []
        return image_root.joinpath(*parts, _file_name(row["filename"], f"{origin} row {i}"))

    def image_id(row: Mapping[str, Any], i: int) -> Any:
        return row["cocoid"] if has_cocoid else Path(_file_name(row["filename"], f"{origin} row {i}")).stem

    return _table_to_dataset(table, name, origin=origin, columns=columns, image_source=image_source,
                             image_id=image_id, captions_column="sentences", caption_ids_column="sentids",
                             skip_corrupt=skip_corrupt, verify=verify)
