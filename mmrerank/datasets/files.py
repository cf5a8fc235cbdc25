"""A user's own queries and corpus read from files, with the ids their run files use.

What `read_items` accepts (the ids are what a TREC run or qrels file names):

- a TSV file: `id<TAB>text` per line (texts);
- a JSONL file: one object per line with an id (`id`, `_id`, `qid`, `query_id` or `doc_id`) and either a text
  (`text`, `query`, `caption` or `contents`) or an image path (`image`, relative to the file's folder);
- a folder of images: one item per image file, its id the file name without extension (`cat_01.png` -> `cat_01`);
- a folder of PDFs (and page images): every page of `report.pdf` rendered with pypdfium2, ids `report#0`,
  `report#1`, ... (0-based page numbers, as the MMDocIR pages);
- a caption table: a parquet file, or a folder with `metadata.jsonl` / `metadata.csv` beside its images (the
  imagefolder layout, `file_name` and a `captions`, `caption` or `text` column), read as `CaptionTable` reads it
  (`load_captions_table`, every split). As a corpus it gives its images (ids: the file names without extension);
  as queries its captions (ids `<image id>#<j>`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mmrerank.core.items import ImageFiles, Items, LazyImages, Texts, to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ID_KEYS = ("id", "_id", "qid", "query_id", "doc_id")
TEXT_KEYS = ("text", "query", "caption", "contents")
IMAGE_KEYS = ("image", "image_path", "path")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
PDF_DPI = 144  # page rendering resolution: A4 at 144 dpi is 1190 x 1684 pixels, enough for page rerankers


def read_items(path: str | Path, role: str = "corpus", dpi: int = PDF_DPI) -> Items:
    """The items in `path` (see the module docstring for the layouts), ids unique.

    Args:
        path: a TSV or JSONL file, a parquet caption table, or a folder of images / PDFs / a caption table.
        role: `"queries"` or `"corpus"`: which side a caption table gives (captions or images); also names the
            argument in messages.
        dpi: resolution PDF pages are rendered at.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: an unreadable line (naming `file:line`), a duplicate id, an empty source, or a folder with
            nothing usable in it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--{role} {path}: no such file or folder")
    if path.is_dir():
        items = _read_folder(path, role, dpi)
    elif path.suffix.lower() in (".tsv", ".txt"):
        items = _read_tsv(path)
    elif path.suffix.lower() in (".jsonl", ".json"):
        items = _read_jsonl(path)
    elif path.suffix.lower() == ".parquet":
        items = _caption_side(path, role)
    else:
        raise ValueError(f"--{role} {path}: expected a .tsv (id<TAB>text), a .jsonl, a .parquet caption table or a "
                         "folder of images / PDFs")
    if len(items) == 0:
        raise ValueError(f"--{role} {path}: no items found")
    _require_unique(items.ids, path)
    return items


def _read_folder(folder: Path, role: str, dpi: int) -> Items:
    if any((folder / name).is_file() for name in METADATA_FILES):
        return _caption_side(folder, role)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    pdfs = [p for p in files if p.suffix.lower() == ".pdf"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if pdfs:
        return _pages(pdfs, images, dpi)
    if not images:
        raise ValueError(f"--{role} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) or PDFs in this folder")
    return ImageFiles([p.stem for p in images], list(images))


def _read_tsv(path: Path) -> Texts:
    ids, texts = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item_id, tab, text = line.partition("\t")
        if not tab or not item_id.strip():
            raise ValueError(f"{path}:{lineno}: expected 'id<TAB>text', got {line[:80]!r}")
        ids.append(item_id.strip())
        texts.append(text.strip())
    return Texts(ids, texts)


def _read_jsonl(path: Path) -> Texts | ImageFiles:
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {line[:80]!r}")
        records.append((lineno, record))
    ids = [str(_field(record, ID_KEYS, f"{path}:{lineno}")) for lineno, record in records]
    if records and not any(k in records[0][1] for k in TEXT_KEYS):
        sources = [path.parent / str(_field(r, IMAGE_KEYS, f"{path}:{n}")) for n, r in records]
        return ImageFiles(ids, sources)
    return Texts(ids, [str(_field(record, TEXT_KEYS, f"{path}:{lineno}")) for lineno, record in records])


def _field(record: dict, keys: Sequence[str], where: str) -> Any:
    for key in keys:
        if key in record and record[key] not in (None, ""):
            return record[key]
    raise ValueError(f"{where}: no {' / '.join(map(repr, keys))} field in {json.dumps(record)[:120]}")


# --- PDFs and page images ------------------------------------------------------------------------------------------


def _pages(pdfs: Sequence[Path], images: Sequence[Path], dpi: int) -> LazyImages:
    """Every page of every PDF (rendered on demand) and every page image, sorted by id."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise ImportError("reading PDFs needs pypdfium2: pip install 'mmrerank[pages]'") from None
    pages: list[tuple[str, Callable[[], Image.Image]]] = [(p.stem, _image_loader(p)) for p in images]
    for pdf in pdfs:
        try:
            document = pdfium.PdfDocument(pdf)
        except pdfium.PdfiumError as err:
            raise ValueError(f"cannot read PDF {pdf}: {err}") from None
        count = len(document)
        document.close()
        pages.extend((f"{pdf.stem}#{page}", _page_loader(pdf, page, dpi)) for page in range(count))
    pages.sort(key=lambda item: item[0])
    loaders = [load for _, load in pages]
    return LazyImages([page_id for page_id, _ in pages], lambda i: loaders[i]())


def _page_loader(pdf: Path, page: int, dpi: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(pdf)
        try:
            return document[page].render(scale=dpi / 72).to_pil().convert("RGB")
        finally:
            document.close()
    return load


def _image_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as img:
            return to_rgb(img)
    return load


# --- caption tables -----------------------------------------------------------------------------------------------


def _caption_side(path: Path, role: str) -> Items:
    """A caption table's captions (as queries) or images (as the corpus), read as `CaptionTable` reads it with its
    default columns, every row whatever its split (the run's ids pick the rows), so that the ids are the ones a run
    written from `CaptionTable(path).load()` names."""
    from mmrerank.datasets.loaders import load_captions_table

    table = load_captions_table(path, split_column=None, verify=False)
    return table.captions if role == "queries" else table.images


def _require_unique(ids: Sequence[str], origin: Path) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"{origin}: id {item_id!r} appears twice (two files with one name and different "
                             "extensions, or a repeated line); ids must be unique")
        seen.add(item_id)

