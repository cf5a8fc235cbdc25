"""Captioned image tables (parquet, `datasets.Dataset`, imagefolder) and the one conversion every loader uses
(`_table_to_dataset`): ids, caption order, checks and errors agree across sources."""

from __future__ import annotations

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
_BATCH = 256  # rows per arrow batch read


CAPTION_COLUMNS = ("captions", "caption", "text")  # tried in this order when no caption column is named


def load_captions_table(path_or_dataset: str | Path | datasets.Dataset | datasets.DatasetDict,
                        image_column: str = "image", captions_column: str | None = None,
                        id_column: str | None = None, name: str = "custom", skip_corrupt: bool = False, *,
                        caption_ids_column: str | None = None, image_root: str | Path | None = None,
                        split: str = "train", split_column: str | None = None, holds: str | None = None,
                        verify: bool = True, **load_kwargs: Any) -> ImageTextDataset:
    """Load captioned images from a parquet file, a `datasets.Dataset`, or an imagefolder directory.

    One row per image, with these columns:

    - `image_column` (default `image`): an HF Image feature (`{"bytes", "path"}`; read from its encoded bytes,
      never decoded at load), raw encoded bytes, or a file path; relative paths are taken from `image_root`, by
      default the parquet file's directory (the working directory for a `Dataset`).
    - `captions_column` (default: the first of `captions`, `caption`, `text` the table has): the image's
      captions, a list of strings or one string.
    - `id_column` (optional): the image's id. Default: the image's file name without extension (`cat.jpg` ->
      `cat`, what a run file written over an image folder names it); an image stored as bytes without a file name
      gets its row number.
    - `caption_ids_column` (optional): one id per caption. Default: `"{image id}#{j}"`.
    - `split_column` (optional): the split each row belongs to (`train`, `val` / `validation`, `test`).

    A directory is read with `datasets.load_dataset("imagefolder", data_dir=...)`: its `metadata.jsonl` /
    `metadata.csv` gives the captions column next to `file_name`, and the images come in an `image` column; split
    subfolders (`train/`, `test/`, ...) are its splits.

    Args:
        path_or_dataset: a `.parquet` file, an imagefolder directory, a `datasets.Dataset`, or a
            `datasets.DatasetDict` (then `split` picks one).
        image_column, captions_column, id_column, caption_ids_column, split_column: the columns above.
        name: the dataset's name (used in task names such as `custom/t2i`).
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        image_root: the directory relative image paths are taken from.
        split: the split to load: rows of `split_column` equal to it, the `DatasetDict`'s or the directory's split
            of that name, or (data without splits) see `holds`.
        holds: the split that data without splits (no `split_column` in it, one file or folder) is. Asking such data
            for another split is an error. None: it serves any split.
        verify: decode every image once at load.
        **load_kwargs: passed to `datasets.load_dataset` for an imagefolder directory (e.g. `cache_dir`).

    Returns:
        The images and their captions.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a missing column, a split the data does not have, a file that is not parquet, duplicate ids, or
            no rows.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    _check_skip(skip_corrupt, verify)
    base = None if image_root is None else Path(image_root)
    origin = name
    if not isinstance(path_or_dataset, datasets.Dataset | datasets.DatasetDict):
        path = Path(path_or_dataset)
        if not path.exists():
            raise FileNotFoundError(f"captions table not found: {path}")
        origin = str(path)
        if path.is_dir():
            path_or_dataset = _load_imagefolder(path, load_kwargs)
            base = base or path
        else:
            names = _parquet_columns(path)
            required = _required_columns(names, image_column, captions_column, id_column, caption_ids_column, origin)
            path_or_dataset = _read_parquet(path, required + [c for c in (split_column,) if c in names])
            base = base or path.parent
    table = _pick_split(path_or_dataset, split, split_column, holds, origin)
    required = _required_columns(table.column_names, image_column, captions_column, id_column, caption_ids_column,
                                 origin)
    captions_column = required[1]
    image_id = _file_stem_id(image_column) if id_column is None else (lambda row, i: row[id_column])
    return _table_to_dataset(
        table, name, origin=origin, columns=required, image_source=_column_image(image_column, base, origin),
        image_id=image_id, captions_column=captions_column, caption_ids_column=caption_ids_column,
        skip_corrupt=skip_corrupt, verify=verify,
        id_hint="" if id_column else " (ids are the images' file names without extension: pass id_column=)")


def _load_imagefolder(path: Path, load_kwargs: Mapping[str, Any]) -> datasets.DatasetDict:
    """`datasets.load_dataset("imagefolder")` without its progress bars: "Downloading data" over a local folder
    reads as a download to a user (nothing is fetched), and the bars repeat on every load."""
    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(path), **load_kwargs)
    finally:
        if shown:
            datasets.enable_progress_bars()


def _required_columns(available: Sequence[str], image_column: str, captions_column: str | None,
                      id_column: str | None, caption_ids_column: str | None, origin: str) -> list[str]:
    """[image, captions, id and caption-id columns if named], the captions column found among `CAPTION_COLUMNS`
    when not named; all checked to be there."""
    if captions_column is None:
        captions_column = next((c for c in CAPTION_COLUMNS if c in available), None)
        if captions_column is None:
            raise ValueError(f"{origin} has none of the caption columns {list(CAPTION_COLUMNS)}; its columns are "
                             f"{list(available)}: name the one with the captions (caption_column=)")
    required = [image_column, captions_column] + [c for c in (id_column, caption_ids_column) if c is not None]
    _require_columns(available, required, origin)
    return required


def _pick_split(data: datasets.Dataset | datasets.DatasetDict, split: str, split_column: str | None,
                holds: str | None, origin: str) -> datasets.Dataset:
    """The rows of `split`: a `DatasetDict`'s split, a `split_column`'s rows, or data without splits (see
    `load_captions_table`'s `holds`)."""
    aliases = {split, "validation" if split == "val" else "val" if split == "validation" else split}
    if isinstance(data, datasets.DatasetDict):
        if len(data) > 1:
            found = [s for s in data if s in aliases]
            if not found:
                raise ValueError(f"unknown split {split!r}; {origin} has the splits {sorted(data)}")
            return data[found[0]]
        data = next(iter(data.values()))  # a folder without split subfolders: datasets calls it "train"
    if split_column is not None and split_column in data.column_names:
        values = data[split_column]
        rows = [i for i, v in enumerate(values) if v in aliases]
        if not rows:
            raise ValueError(f"{origin} has no rows of split {split!r} in its column {split_column!r} (its splits: "
                             f"{sorted({str(v) for v in values})})")
        return data.select(rows)
    if holds is not None and split not in {holds, *(("val", "validation") if holds in ("val", "validation") else ())}:
        column = f" and no {split_column!r} column" if split_column else ""
        raise ValueError(f"{origin} has one split, {holds!r} (no split subfolders{column}); it has no split "
                         f"{split!r}. Give that split its own table (path=...), or add a split column")
    return data


def _file_stem_id(column: str) -> Callable[[Mapping[str, Any], int], str]:
    """The default image id: the image's file name without extension, or the row number when it has none."""

    def image_id(row: Mapping[str, Any], i: int) -> str:
        value = row[column]
        path = value.get("path") if isinstance(value, Mapping) else value
        return Path(path).stem if isinstance(path, str | os.PathLike) and str(path) and Path(path).stem else str(i)

    return image_id


def _table_to_dataset(table: datasets.Dataset, name: str, *, origin: str, columns: Sequence[str],
                      image_source: Callable[[Mapping[str, Any], int], Source | None],
                      image_id: Callable[[Mapping[str, Any], int], Any], captions_column: str,
                      caption_ids_column: str | None, skip_corrupt: bool, verify: bool,
                      id_hint: str = "") -> ImageTextDataset:
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
        id_hint: added to the message of a duplicate image id (where the ids come from).
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
            given = row[caption_ids_column]
            given = [given] if isinstance(given, str | int) else given or []  # one id beside one caption string
            ids = [_id_text(c, f"caption id {j} in {caption_ids_column!r}", f"{origin} row {i}")
                   for j, c in enumerate(given)]
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
    _require_unique(image_ids, "image", origin + id_hint)
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


def _parquet_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"cannot read {path} as parquet: {err}") from err


def _read_parquet(path: Path, columns: Sequence[str]) -> datasets.Dataset:
    """Only `columns` of a parquet file, as a `Dataset` (its HF features, e.g. Image, come back from the schema)."""
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
