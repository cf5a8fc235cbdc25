"""MMDocIR's parquet files: reading named columns and row ranges, and the layout boxes (`MMDocIR_layouts.parquet`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmrerank.core.items import Texts
from mmrerank.datasets.mmdocir.annotations import LayoutBox, MMDocIRAnnotations, _Malformed, _numbers, page_id


def _read_table(path: Path, columns: Sequence[str], what: str):
    """The named columns of a parquet file (memory-mapped: image bytes are paged in only when sliced)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"MMDocIR {what} parquet file not found: {path}")
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"cannot read {path} as parquet: {err}") from err
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(map(repr, missing))}; its columns are {schema.names}")
    return pq.read_table(path, columns=list(dict.fromkeys(columns)), memory_map=True)


def _check_rows(table, path: Path, rows: tuple[int, int], doc_name: str, doc_column: str | None, what: str) -> None:
    """The document's row range exists, and (when the file names documents) its rows are that document's."""
    start, end = rows
    if end >= table.num_rows:
        raise ValueError(f"{path} has {table.num_rows} rows, but document {doc_name!r} needs {what} rows "
                         f"{start}..{end}: is this the file the annotations were made for?")
    if doc_column is None:
        return
    names = table.column(doc_column).slice(start, end - start + 1).to_pylist()
    for offset, name in enumerate(names):
        if name != doc_name:
            raise ValueError(f"{path} row {start + offset} belongs to {name!r}, but the annotations give rows "
                             f"{start}..{end} (inclusive) to {doc_name!r}")


def _binary_values(column) -> list[bytes | None]:
    """A column of encoded images as bytes: plain binary, or the `{bytes, path}` struct of `datasets.Image`."""
    import pyarrow as pa

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return column.to_pylist()


@dataclass
class MMDocIRLayouts:
    """Layout boxes of the annotated documents.

    Attributes:
        ids: `f"{doc_name}#{page}#L{j}"`, j the box's 0-based row within its document's layout range.
        doc_index: `[L]` long, the document of each box (row of `MMDocIRAnnotations.documents`).
        page: `[L]` long, 0-based page number within the document.
        bbox: `[L, 4]` float64, `(x1, y1, x2, y2)` in page coordinates.
        types: the layout type of each box (`""` when not loaded).
        texts: the text of each box (`""` when not loaded).
        doc_offsets: `[D + 1]` long; the boxes of document d are rows `doc_offsets[d]:doc_offsets[d + 1]`.
    """

    ids: list[str]
    doc_index: Tensor
    page: Tensor
    bbox: Tensor
    types: list[str]
    texts: Texts
    doc_offsets: Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def box(self, row: int) -> LayoutBox:
        return LayoutBox(int(self.page[row]), tuple(self.bbox[row].tolist()))  # type: ignore[arg-type]


def _parse_bbox(value: Any, where: str) -> list[float]:
    # some exports store boxes as strings such as "[72, 90, 540, 120]"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: bbox {value!r:.80} is not a list of 4 numbers") from None
    try:
        return list(_numbers(value, 4, "bbox"))
    except _Malformed as err:
        raise ValueError(f"{where}: {err}") from None


# what the official encoder reads for a layout (`get_layouts` in encode.py of github.com/MMDocRAG/MMDocIR): the
# `mode` column (`ocr_text` or `vlm_text`) for "table" and "image" layouts, `text` for all others (text, title,
# equation, ...); the dataset card says `text` holds only text / equation content, `ocr_text` and `vlm_text` only
# figure / table content, so reading one column for every layout leaves the others blank
VISUAL_LAYOUT_TYPES = ("table", "image", "figure")


def _text_columns(path: Path, names: Sequence[str | None]) -> list[str]:
    """The named text columns that the file has; at least one must be there."""
    import pyarrow.parquet as pq

    wanted = [c for c in names if c]
    if not wanted or not path.is_file():
        return wanted  # nothing asked for, or _read_table names the missing file
    present = pq.read_schema(path).names
    found = [c for c in wanted if c in present]
    if not found:
        raise ValueError(f"{path} has none of the text columns {', '.join(map(repr, wanted))}; its columns are "
                         f"{present}")
    return found


def _layout_text(kind: Any, values: Mapping[str, Any], text_column: str | None, visual_text_column: str | None,
                 visual_types: Sequence[str]) -> str:
    """A layout's text: its type's column first, then the other one when that is absent or empty."""
    first, second = (visual_text_column, text_column) if kind in visual_types else (text_column, visual_text_column)
    for name in (first, second):
        if name and values.get(name):
            return str(values[name])
    return ""


def load_mmdocir_layouts(path: str | Path, annotations: MMDocIRAnnotations, *, doc_column: str | None = "doc_name",
                         page_column: str | None = None, bbox_column: str = "bbox", type_column: str | None = "type",
                         text_column: str | None = "text", visual_text_column: str | None = "ocr_text",
                         visual_types: Sequence[str] = VISUAL_LAYOUT_TYPES) -> MMDocIRLayouts:
    """Read the layout boxes of the annotated documents from `MMDocIR_layouts.parquet`.

    Each document's boxes are the rows `layout_indices` gives it (end inclusive). A layout's text is read as the
    official encoder reads it: from `visual_text_column` for the types in `visual_types` (tables and images), from
    `text_column` for every other type; when that column is missing from the file or empty in the row, from the
    other one (so a file with a single text column serves every layout).

    Args:
        path: the parquet file.
        annotations: from `load_mmdocir_annotations`.
        doc_column: the column naming each row's document, checked against the annotations; `None` skips the check.
        page_column: the column with the 0-based page number within the document; by default the first of
            `page_id`, `page`, `passage_id` that the file has.
        bbox_column: the `[x1, y1, x2, y2]` column (lists of numbers, or their JSON text).
        type_column: the layout type column; `None` skips it (then every layout reads `text_column` first).
        text_column: the text of text, title and equation layouts (`text` in the benchmark's file).
        visual_text_column: the text of table and image layouts: `ocr_text`, or `vlm_text` (the official
            encoder's default). `None` for both text columns loads no text.
        visual_types: the layout types that read `visual_text_column` first.

    Raises:
        FileNotFoundError: no such file. ValueError: a named column is missing (for the two text columns: both),
            a document's rows are out of range or belong to another document, or a box is malformed (the message
            gives the row).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if page_column is None:
        names = pq.read_schema(path).names if path.is_file() else []
        page_column = next((c for c in ("page_id", "page", "passage_id") if c in names), "page_id")
    text_columns = _text_columns(path, (text_column, visual_text_column))
    columns = [c for c in (doc_column, page_column, bbox_column, type_column) if c] + text_columns
    table = _read_table(path, columns, "layouts")
    ids: list[str] = []
    doc_index: list[int] = []
    pages: list[int] = []
    boxes: list[list[float]] = []
    types: list[str] = []
    texts: list[str] = []
    offsets = [0]
    for d, doc in enumerate(annotations.documents):
        _check_rows(table, path, doc.layout_rows, doc.doc_name, doc_column, "layout")
        start, n = doc.layout_rows[0], doc.num_layouts

        def column(name: str | None, start: int = start, n: int = n) -> list[Any]:
            return table.column(name).slice(start, n).to_pylist() if name else [""] * n

        text_values = {name: column(name) for name in text_columns}
        for j, (page, bbox, kind) in enumerate(zip(column(page_column), column(bbox_column), column(type_column))):
            where = f"{path} row {start + j}"
            if isinstance(page, bool) or not isinstance(page, int) or page < 0:
                raise ValueError(f"{where}: {page_column} must be a page number >= 0, got {page!r:.80}")
            ids.append(f"{page_id(doc.doc_name, page)}#L{j}")
            doc_index.append(d)
            pages.append(page)
            boxes.append(_parse_bbox(bbox, where))
            types.append(str(kind or ""))
            row = {name: values[j] for name, values in text_values.items()}
            texts.append(_layout_text(kind, row, text_column, visual_text_column, visual_types))
        offsets.append(len(ids))
    return MMDocIRLayouts(ids, torch.tensor(doc_index, dtype=torch.long), torch.tensor(pages, dtype=torch.long),
                          torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), types, Texts(ids, texts),
                          torch.tensor(offsets, dtype=torch.long))
