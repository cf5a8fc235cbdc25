"""Loaders for real image-text datasets: COCO and Flickr30k (Karpathy splits), and captioned image tables.

Every loader returns an `ImageTextDataset` whose images are `ImageFiles`: paths on disk, or encoded bytes
held in memory with a name for error messages (parquet and hub rows). Images are decoded only when read.

* `load_karpathy_json`: the Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`) with the
  images on disk (COCO: 5,000 test images x 25,000 captions; Flickr30k: 1,000 x 5,000).
* `load_hub_flickr30k`, `load_hub_coco`: the same splits through `datasets.load_dataset` (needs the network
  or a filled Hugging Face cache).
* `load_captions_table`: your own data, as a parquet file, a `datasets.Dataset`, or an imagefolder directory.

All of them go through one conversion (`_table_to_dataset`), so ids, caption order and error handling agree.

Ids are strings. Image ids: the COCO id (`cocoid`) for COCO, the Flickr photo id (the file name's stem, e.g.
`1000092795`) for Flickr30k, an id column or the row number for tables. Caption ids: the Karpathy `sentid`,
a caption-id column, or `"{image_id}#{j}"`. Every image keeps all of its captions, in their stored order,
whitespace-stripped; blank captions are dropped with a warning naming their ids. A null (or NaN, or blank) id is
an error naming the record, never the string `'None'`.

Errors: a missing file -> `FileNotFoundError`; a missing column -> `ValueError` listing the columns there are;
an unknown split, a truncated JSON file or a malformed record (a Karpathy sentence without `raw` / `sentid`, an
image without `cocoid`, a null `filename`) -> `ValueError` naming the file and the record; a missing or
undecodable image -> `ImageLoadError` naming it, unless `skip_corrupt=True`, which warns and drops the image with
its captions. With `verify=True` (the default)
every image is decoded once at load to find the bad ones up front: about 10-20 ms an image, so a minute or
so for the 5,000 COCO test images. `verify=False` skips that; a bad image then raises when it is read.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets.table import InMemoryTable

from mmrerank.core.items import ImageFiles, ImageLoadError, Texts
from mmrerank.datasets.imagetext import ImageTextDataset

Source = str | Path | tuple[str, bytes]

# Karpathy's COCO "restval" images (the 30,504 val2014 images outside val and test) are trained on by
# convention, so split="train" means train + restval; Flickr30k has no restval, so it changes nothing there.
_KARPATHY_SPLITS = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}, "restval": {"restval"}}
_HUB_COCO_SPLITS = {"train": "train+restval", "val": "validation", "test": "test", "restval": "restval"}
_BATCH = 256


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


# Where Flickr30k's Karpathy splits come from, and what was checked (no network here: the hub pages and code):
# - nlphuji/flickr30k is a script dataset (`flickr30k.py`, hub commit 2b239be): one config `TEST`, one split `test`,
#   features `image` (Image), `caption` (list of str), `sentids` (list of str), `split`, `img_id`, `filename`, read
#   from `flickr_annotations_30k.csv`. `datasets` >= 4 (5.2 here) refuses the script on `main`
#   ("Dataset scripts are no longer supported", datasets/load.py).
# - Its dataset viewer lists subset `TEST`, split `test`, "31k rows": the viewer reads the hub's auto-converted
#   parquet export, branch `refs/convert/parquet`, laid out `TEST/test/NNNN.parquet` with the same columns (the
#   features kept in the parquet schema). For a revision other than `main`, `dataset_module_factory` (load.py) finds
#   no script on that branch and reads its parquet files; the folder `test/` resolves to the split `test` by the
#   default data-file patterns (`**/test/**`, datasets/data_files.py).
# - Parquet copies with the same columns (umaru97/flickr30k_train_val_test, AnyModal/flickr30k) split on that `split`
#   column into 29,000 / 1,014 / 1,000 images, 5 captions each: the Karpathy train / val / test, 31,014 rows.
# - lmms-lab/flickr30k (parquet, 31,783 rows in one `test` split) has no `split` column, so its Karpathy test images
#   cannot be told apart: not a usable default.
FLICKR30K_REPO = "nlphuji/flickr30k"
FLICKR30K_REVISION = "refs/convert/parquet"


def load_hub_flickr30k(split: str = "test", repo: str = FLICKR30K_REPO, skip_corrupt: bool = False,
                       verify: bool = True, *, revision: str | None = FLICKR30K_REVISION,
                       **load_kwargs: Any) -> ImageTextDataset:
    """Load a Flickr30k Karpathy split from the Hugging Face hub (images included).

    By default the parquet export of `nlphuji/flickr30k` (branch `refs/convert/parquet`), which current `datasets`
    reads without running the repository's loading script. It has one hub split, `test`, holding the 31,014 images
    of the Karpathy splits; each image's Karpathy split is in its `split` column, which is what `split` filters on.
    Its columns: `image` (an Image feature), `caption` (5 strings), `sentids`, `split`, `img_id`, `filename`.
    Images stay encoded until read.

    Args:
        split: `"train"`, `"val"` (or `"validation"`) or `"test"`.
        repo: the hub repository (any with those columns and a `test` hub split).
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        verify: decode every image once at load.
        revision: the branch, tag or commit of `repo`; `None` for its default branch.
        **load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`).

    Returns:
        The split's images and captions; image ids are the Flickr photo ids, caption ids the `sentids`.

    Raises:
        RuntimeError: `datasets` refuses the repository's loading script (the message says which revision to use).
        ValueError: an unknown split, a missing column, or no rows in the split.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    wanted = _normalize_split(split, {"train", "val", "test"})
    _check_skip(skip_corrupt, verify)
    origin = repo if revision is None else f"{repo}@{revision}"
    try:
        table = datasets.load_dataset(repo, split="test", revision=revision, **load_kwargs)
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        raise RuntimeError(f"{origin}: {err}. The installed datasets {datasets.__version__} runs no loading script; "
                           f"load the hub's parquet export with revision={FLICKR30K_REVISION!r}") from err
    _require_columns(table.column_names, ["image", "caption", "sentids", "split", "filename"], origin)
    row_splits = list(table["split"])
    rows = [i for i, s in enumerate(row_splits) if s == wanted]
    if not rows:
        raise ValueError(f"{origin} has no rows with split {wanted!r} (splits there: {sorted(set(row_splits))})")
    # select before reading any image, so only the split's image bytes are ever loaded
    table = table.select(rows)
    return _table_to_dataset(
        table, "flickr30k", origin=origin, columns=["image", "caption", "sentids", "filename"],
        image_source=_column_image("image", None, origin), image_id=lambda row, _: Path(row["filename"]).stem,
        captions_column="caption", caption_ids_column="sentids", skip_corrupt=skip_corrupt, verify=verify)


def load_hub_coco(image_root: str | Path, split: str = "test", name: str = "yerevann/coco-karpathy",
                  skip_corrupt: bool = False, verify: bool = True, **load_kwargs: Any) -> ImageTextDataset:
    """Load a COCO Karpathy split's captions from the Hugging Face hub, with the images from disk.

    `yerevann/coco-karpathy` has hub splits train/validation/test/restval with columns `filepath`, `filename`,
    `sentences` (strings), `sentids`, `cocoid`, `url`, and no images: those are read from
    `image_root / filepath / filename` (e.g. `coco/val2014/COCO_val2014_000000391895.jpg`).
    `split="train"` loads `train+restval` (see `load_karpathy_json`).

    Args:
        image_root: the directory holding `train2014/` and `val2014/`.
        split: `"train"`, `"val"` (or `"validation"`), `"test"` or `"restval"`.
        name: the hub repository.
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        verify: decode every image once at load.
        **load_kwargs: passed to `datasets.load_dataset`.

    Returns:
        The split's images and captions; image ids are the `cocoid`s, caption ids the `sentids`.

    Raises:
        FileNotFoundError: `image_root` does not exist.
        ValueError: an unknown split, a missing column, or an empty split.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    image_root = Path(image_root)
    _require_dir(image_root)
    hub_split = _HUB_COCO_SPLITS[_normalize_split(split, _HUB_COCO_SPLITS)]
    _check_skip(skip_corrupt, verify)
    table = datasets.load_dataset(name, split=hub_split, **load_kwargs)
    return _karpathy_table_to_dataset(table, image_root, "coco", origin=name, skip_corrupt=skip_corrupt,
                                      verify=verify)


def load_captions_table(path_or_dataset: str | Path | datasets.Dataset | datasets.DatasetDict,
                        image_column: str = "image", captions_column: str = "captions",
                        id_column: str | None = None, name: str = "custom", skip_corrupt: bool = False, *,
                        caption_ids_column: str | None = None, image_root: str | Path | None = None,
                        split: str = "train", verify: bool = True, **load_kwargs: Any) -> ImageTextDataset:
    """Load captioned images from a parquet file, a `datasets.Dataset`, or an imagefolder directory.

    One row per image. The image column may hold an HF Image feature (`{"bytes", "path"}`; read from its
    encoded bytes, never decoded at load), raw encoded bytes, or a file path; relative paths are taken
    from `image_root`, by default the parquet file's directory (the working directory for a `Dataset`).
    The captions column holds a list of strings (a single string is one caption). A directory is read with
    `datasets.load_dataset("imagefolder", data_dir=...)`: its `metadata.jsonl` / `metadata.csv` gives the
    captions column next to `file_name`, and the images come in an `image` column.

    Args:
        path_or_dataset: a `.parquet` file, an imagefolder directory, a `datasets.Dataset`, or a
            `datasets.DatasetDict` (then `split` picks one).
        image_column: the column with the images.
        captions_column: the column with each image's captions.
        id_column: the column with image ids; default: the row number.
        name: the dataset's name (used in task names such as `custom/t2i`).
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        caption_ids_column: a column with one id per caption; default `"{image_id}#{j}"`.
        image_root: the directory relative image paths are taken from.
        split: the split of an imagefolder directory or a `DatasetDict`.
        verify: decode every image once at load.
        **load_kwargs: passed to `datasets.load_dataset` for an imagefolder directory (e.g. `cache_dir`).

    Returns:
        The images and their captions.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a missing column, an unknown split, a file that is not parquet, duplicate ids, or no rows.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    _check_skip(skip_corrupt, verify)
    required = [image_column, captions_column] + [c for c in (id_column, caption_ids_column) if c is not None]
    base = None if image_root is None else Path(image_root)
    if isinstance(path_or_dataset, datasets.DatasetDict):
        if split not in path_or_dataset:
            raise ValueError(f"unknown split {split!r}; the DatasetDict has {sorted(path_or_dataset)}")
        path_or_dataset = path_or_dataset[split]
    if isinstance(path_or_dataset, datasets.Dataset):
        table, origin = path_or_dataset, name
    else:
        path = Path(path_or_dataset)
        if not path.exists():
            raise FileNotFoundError(f"captions table not found: {path}")
        origin = str(path)
        if path.is_dir():
            table = datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **load_kwargs)
            base = base or path
        else:
            table = _read_parquet(path, required)
            base = base or path.parent
    _require_columns(table.column_names, required, origin)
    return _table_to_dataset(
        table, name, origin=origin, columns=required, image_source=_column_image(image_column, base, origin),
        image_id=(lambda row, i: str(i)) if id_column is None else (lambda row, i: row[id_column]),
        captions_column=captions_column, caption_ids_column=caption_ids_column, skip_corrupt=skip_corrupt,
        verify=verify)


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


def _table_to_dataset(table: datasets.Dataset, name: str, *, origin: str, columns: Sequence[str],
                      image_source: Callable[[Mapping[str, Any], int], Source | None],
                      image_id: Callable[[Mapping[str, Any], int], Any], captions_column: str,
                      caption_ids_column: str | None, skip_corrupt: bool, verify: bool) -> ImageTextDataset:
    """Rows (one per image) -> `ImageTextDataset`: the one conversion every loader goes through.

    Args:
        table: the rows.
        name: the dataset's name.
        origin: where the rows come from, for messages (a file or a hub name).
        columns: the columns the callables read (the others are never loaded).
        image_source: `(row, row_number) ->` the image's path or `(name, bytes)`; `None` when the row has none.
        image_id: `(row, row_number) ->` the image's id (made a string; `None`, NaN or blank is refused).
        captions_column: the column with the captions (a list of strings, or one string).
        caption_ids_column: the column with one id per caption, or `None` for `"{image_id}#{j}"`.
        skip_corrupt: drop missing / unreadable images with a warning instead of raising `ImageLoadError`.
        verify: decode every image once (otherwise only rows without an image are caught here).
    """
    _check_skip(skip_corrupt, verify)
    _require_columns(table.column_names, columns, origin)
    table = table.select_columns(list(dict.fromkeys(columns)))
    # Image features would decode every image into a PIL image when the rows are read; keep them encoded.
    for column, feature in table.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            table = table.cast_column(column, datasets.Image(decode=False))

    image_ids: list[str] = []
    sources: list[Source] = []
    caption_ids: list[str] = []
    captions: list[str] = []
    caption_image: list[int] = []
    no_image: list[str] = []
    no_captions: list[str] = []
    empty: list[str] = []  # ids of captions that are blank once stripped
    for i, row in enumerate(_rows(table)):
        img_id = _id_text(image_id(row, i), "image id", f"{origin} row {i}")
        source = image_source(row, i)
        if source is None:
            no_image.append(f"{origin} row {i} (image {img_id})")
            continue
        texts = _caption_list(row[captions_column], captions_column, f"{origin} row {i}")
        if caption_ids_column is None:
            ids = [f"{img_id}#{j}" for j in range(len(texts))]
        else:
            ids = [_id_text(c, f"caption id {j} in {caption_ids_column!r}", f"{origin} row {i}")
                   for j, c in enumerate(row[caption_ids_column] or [])]
            if len(ids) != len(texts):
                raise ValueError(f"{origin} row {i}: {len(texts)} captions in {captions_column!r} but {len(ids)} "
                                 f"ids in {caption_ids_column!r}")
        # A blank caption is no query (every ranking of it is arbitrary) and no findable target: dropped, warned.
        empty.extend(c for t, c in zip(texts, ids) if not t)
        ids = [c for t, c in zip(texts, ids) if t]
        texts = [t for t in texts if t]
        if not texts:
            no_captions.append(img_id)
        caption_image.extend([len(image_ids)] * len(texts))
        image_ids.append(img_id)
        sources.append(source)
        captions.extend(texts)
        caption_ids.extend(ids)

    if no_image:
        if not skip_corrupt:
            raise ImageLoadError(f"no image in {no_image[0]}" + (f" and {len(no_image) - 1} more rows"
                                                                  if len(no_image) > 1 else ""))
        warnings.warn(f"skipping {len(no_image)} row(s) without an image: {', '.join(no_image[:10])}"
                      + (" ..." if len(no_image) > 10 else ""), stacklevel=3)
    if empty:
        warnings.warn(f"dropped {len(empty)} empty caption(s) in {origin}, caption ids: {', '.join(empty[:10])}"
                      + (" ..." if len(empty) > 10 else ""), stacklevel=3)
    if no_captions:
        # Kept (they still act as distractors), but as i2t queries they have nothing to find.
        warnings.warn(f"{len(no_captions)} image(s) in {origin} have no captions: {', '.join(no_captions[:10])}"
                      + (" ..." if len(no_captions) > 10 else ""), stacklevel=3)
    if not image_ids:
        raise ValueError(f"{origin} has no images")
    _require_unique(image_ids, "image", origin)
    _require_unique(caption_ids, "caption", origin)
    dataset = ImageTextDataset(name, ImageFiles(image_ids, sources), Texts(caption_ids, captions),
                               torch.tensor(caption_image, dtype=torch.long))
    if verify:
        dataset = dataset.drop_unreadable(skip_corrupt)
        if not len(dataset.images):
            raise ValueError(f"none of the {len(image_ids)} images in {origin} could be read")
    return dataset


def _rows(table: datasets.Dataset) -> Iterable[dict[str, Any]]:
    """The table's rows as dicts, read in batches (formatting a whole batch at once is much faster)."""
    for batch in table.iter(batch_size=_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield dict(zip(names, values))


def _column_image(column: str, base: Path | None, origin: str) -> Callable[[Mapping[str, Any], int], Source | None]:
    """A reader of `column` as an image source: an Image-feature dict, encoded bytes, or a path."""

    def source(row: Mapping[str, Any], i: int) -> Source | None:
        value = row[column]
        label = f"{origin} row {i}"
        if isinstance(value, Mapping):  # an Image feature read with decode=False, or a plain {bytes, path} struct
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                return (f"{path} ({label})" if path else label, bytes(data))
            value = path
        if isinstance(value, bytes | bytearray | memoryview):
            return (label, bytes(value))
        if isinstance(value, str | os.PathLike) and str(value):
            path = Path(value)
            return path if base is None or path.is_absolute() else base / path
        if value is None or value == "":
            return None
        raise TypeError(f"{label}: column {column!r} holds a {type(value).__name__}; expected an image "
                        f"(an Image feature, encoded bytes or a path)")

    return source


def _caption_list(value: Any, column: str, label: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
        raise TypeError(f"{label}: column {column!r} must hold a list of strings or a string, got {value!r:.200}")
    return [c.strip() for c in value]


def _id_text(value: Any, what: str, label: str) -> str:
    """An id as a string; `None`, NaN or a blank string (which `str` would turn into `'None'`, `'nan'`) is refused.

    Args:
        value: the stored id (a string or a number).
        what: what the id is, for the message (`"image id"`, `"'sentid'"`).
        label: the record it is in (`"file row 3"`).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or (
            isinstance(value, str) and not value.strip()):
        raise ValueError(f"{label}: the {what} is {value!r}; expected a non-empty string or number")
    return str(value)


def _file_name(value: Any, label: str) -> str:
    """A row's image file name; a missing one would otherwise surface as a bare `TypeError` from `pathlib`."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{label}: 'filename' is {value!r}; expected a non-empty file name")
    return value


def _read_parquet(path: Path, columns: Sequence[str]) -> datasets.Dataset:
    """Only `columns` of a parquet file, as a `Dataset` (its HF features, e.g. Image, come back from the schema)."""
    try:
        available = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"cannot read {path} as parquet: {err}") from err
    _require_columns(available, columns, str(path))
    # Read directly rather than via `datasets.Dataset.from_parquet`, which would copy the whole file
    # (image bytes included) into the datasets cache.
    return datasets.Dataset(InMemoryTable(pq.read_table(path, columns=list(dict.fromkeys(columns)))))


def _normalize_split(split: str, known: Iterable[str]) -> str:
    split = "val" if split == "validation" else split
    known = sorted(known)
    if split not in known:
        raise ValueError(f"unknown split {split!r}; expected one of {known} (or 'validation' for 'val')")
    return split


def _require_columns(available: Sequence[str], required: Iterable[str], origin: str) -> None:
    missing = [c for c in dict.fromkeys(required) if c not in available]
    if missing:
        raise ValueError(f"{origin} has no column {', '.join(map(repr, missing))}; its columns are {list(available)}")


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"image directory not found: {path}")


def _require_unique(ids: Sequence[str], what: str, origin: str) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"duplicate {what} id {item!r} in {origin}")
        seen.add(item)


def _check_skip(skip_corrupt: bool, verify: bool) -> None:
    if skip_corrupt and not verify:
        raise ValueError("skip_corrupt=True needs verify=True: bad images are found by reading them at load")
