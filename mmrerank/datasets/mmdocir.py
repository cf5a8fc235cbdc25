"""MMDocIR (Dong et al. 2025): page and layout retrieval within long documents.

The evaluation set has 313 documents, 1,658 questions, 2,107 gold page labels and 2,638 gold layout labels over
10 domains. Three files make it up:

- `MMDocIR_annotations.jsonl`, one JSON line per document: `doc_name`, `domain`, `page_indices` and
  `layout_indices` (`[start, end]` row ranges into the two parquet files, both ends INCLUSIVE: the first document
  has pages 0..22 and `page_indices` `[18196, 18218]`, 23 rows; the ranges of all documents tile the 20,395 page
  rows and the 170,338 layout rows without gap or overlap), and `questions`, each with `Q`, `A`, `type`,
  `page_id` (gold pages, 0-based page numbers within the document) and `layout_mapping` (gold boxes:
  `{page, page_size: [width, height], bbox: [x1, y1, x2, y2]}` in the page's PDF coordinates). Some questions
  also carry `layoutindex` (gold layouts as 0-based rows within the document's layout range) and `evidence`.
- `MMDocIR_pages.parquet`, one row per page: `doc_name`, `domain`, `passage_id`, `image_path`, `image_binary`
  (JPEG bytes), `ocr_text`, `vlm_text`. Row `page_indices[0] + p` is page `p` of the document.
- `MMDocIR_layouts.parquet`, one row per layout box; its columns are named by arguments of `load_mmdocir_layouts`.

Each question is ranked only against the pages of its own document. `MMDocIRDataset` keeps every page of every
document in one corpus (page ids `f"{doc_name}#{page}"`), gives each question its document's rows as candidates,
and builds a `Run` whose row q holds exactly q's document's pages, so the generic metrics in `mmrerank.metrics`
apply; `mmrerank.metrics.mmdocir_page_metrics` computes the benchmark's own per-domain numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmrerank.core.items import ImageFiles, Texts
from mmrerank.core.run import PAD, Qrels, Run

__all__ = [
    "HUB_REPO",
    "LayoutBox",
    "MMDocIRAnnotations",
    "MMDocIRDataset",
    "MMDocIRDocument",
    "MMDocIRLayouts",
    "MMDocIRQuestion",
    "load_mmdocir",
    "load_mmdocir_annotations",
    "load_mmdocir_layouts",
    "page_id",
]

HUB_REPO = "MMDocIR/MMDocIR_Evaluation_Dataset"
ANNOTATIONS_FILE = "MMDocIR_annotations.jsonl"
PAGES_FILE = "MMDocIR_pages.parquet"
LAYOUTS_FILE = "MMDocIR_layouts.parquet"


def page_id(doc_name: str, page: int) -> str:
    """The corpus id of page `page` (0-based) of a document."""
    return f"{doc_name}#{page}"


# --- annotations --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutBox:
    """One box on a page.

    Attributes:
        page: 0-based page number within the document.
        bbox: `(x1, y1, x2, y2)`, top-left and bottom-right corners in the page's coordinates.
        page_size: `(width, height)` of the page in the same coordinates; `None` when unknown.
    """

    page: int
    bbox: tuple[float, float, float, float]
    page_size: tuple[float, float] | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1])


@dataclass
class MMDocIRQuestion:
    """One question, asked of one document.

    Attributes:
        id: `f"{doc_name}#q{j}"`, j its 0-based position among its document's questions.
        text: the question (`Q`); answer: `A`; type: the modality label as written in the file (`type`).
        doc_index: the row of its document in `MMDocIRAnnotations.documents`.
        gold_pages: 0-based page numbers within the document (`page_id`).
        gold_layouts: the gold boxes (`layout_mapping`).
        gold_layout_rows: `layoutindex` when present (0-based rows within the document's layout range), else `[]`.
        evidence: `evidence` when present, else `""`.
    """

    id: str
    text: str
    answer: str
    type: str
    doc_index: int
    gold_pages: list[int]
    gold_layouts: list[LayoutBox]
    gold_layout_rows: list[int] = field(default_factory=list)
    evidence: str = ""


@dataclass
class MMDocIRDocument:
    """One document.

    Attributes:
        doc_name, domain: as in the file.
        page_rows: `(start, end)` rows of the pages parquet, both inclusive.
        layout_rows: `(start, end)` rows of the layouts parquet, both inclusive.
        question_indices: its questions' rows in `MMDocIRAnnotations.questions`.
    """

    doc_name: str
    domain: str
    page_rows: tuple[int, int]
    layout_rows: tuple[int, int]
    question_indices: list[int] = field(default_factory=list)

    @property
    def num_pages(self) -> int:
        return self.page_rows[1] - self.page_rows[0] + 1

    @property
    def num_layouts(self) -> int:
        return self.layout_rows[1] - self.layout_rows[0] + 1


@dataclass
class MMDocIRAnnotations:
    """The annotation file: documents in file order, and all their questions flattened in file order."""

    documents: list[MMDocIRDocument]
    questions: list[MMDocIRQuestion]
    path: str = ""

    @property
    def domains(self) -> list[str]:
        """The distinct domains, in order of first appearance."""
        return list(dict.fromkeys(d.domain for d in self.documents))

    @property
    def num_gold_pages(self) -> int:
        return sum(len(q.gold_pages) for q in self.questions)

    @property
    def num_gold_layouts(self) -> int:
        return sum(len(q.gold_layouts) for q in self.questions)

    def domain_of(self, question_index: int) -> str:
        return self.documents[self.questions[question_index].doc_index].domain


class _Malformed(ValueError):
    """A bad field; the loader adds the file and line number."""


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, Mapping):
        raise _Malformed(f"{where or 'the line'} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise _Malformed(f"missing field {where + '.' if where else ''}{key!r}")
    return obj[key]


def _int(value: Any, name: str) -> int:
    # bool is an int subclass but never a valid index; floats such as 3.0 would hide a broken file
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"field {name} must be an integer, got {value!r:.80}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"field {name} must be a string, got {value!r:.80}")
    return value


def _numbers(value: Any, n: int, name: str) -> tuple[float, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise _Malformed(f"field {name} must be a list of {n} finite numbers, got {value!r:.80}")
    return tuple(float(v) for v in value)


def _row_range(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise _Malformed(f"field {name} must be [start, end], got {value!r:.80}")
    start, end = _int(value[0], f"{name}[0]"), _int(value[1], f"{name}[1]")
    if not 0 <= start <= end:
        raise _Malformed(f"field {name} must have 0 <= start <= end (end inclusive), got {list(value)}")
    return start, end


def _parse_question(raw: Any, where: str, doc: MMDocIRDocument, doc_index: int, position: int) -> MMDocIRQuestion:
    pages = _field(raw, "page_id", where)
    if not isinstance(pages, list):
        raise _Malformed(f"field {where}.page_id must be a list of page numbers, got {pages!r:.80}")
    gold_pages = [_int(p, f"{where}.page_id[{i}]") for i, p in enumerate(pages)]
    for i, p in enumerate(gold_pages):
        if not 0 <= p < doc.num_pages:
            raise _Malformed(f"field {where}.page_id[{i}] = {p} is outside the document's {doc.num_pages} pages")
    mapping = _field(raw, "layout_mapping", where)
    if not isinstance(mapping, list):
        raise _Malformed(f"field {where}.layout_mapping must be a list, got {mapping!r:.80}")
    boxes = []
    for i, box in enumerate(mapping):
        at = f"{where}.layout_mapping[{i}]"
        page = _int(_field(box, "page", at), f"{at}.page")
        bbox = _numbers(_field(box, "bbox", at), 4, f"{at}.bbox")
        size = _numbers(box["page_size"], 2, f"{at}.page_size") if box.get("page_size") is not None else None
        boxes.append(LayoutBox(page, bbox, size))  # type: ignore[arg-type]
    rows = raw.get("layoutindex") or []
    if not isinstance(rows, list):
        raise _Malformed(f"field {where}.layoutindex must be a list, got {rows!r:.80}")
    return MMDocIRQuestion(
        id=f"{doc.doc_name}#q{position}",
        text=_str(_field(raw, "Q", where), f"{where}.Q"),
        answer=str(_field(raw, "A", where)),  # a few answers are numbers or lists in QA files; keep them as text
        type=str(raw.get("type", "")),
        doc_index=doc_index,
        gold_pages=gold_pages,
        gold_layouts=boxes,
        gold_layout_rows=[_int(r, f"{where}.layoutindex[{i}]") for i, r in enumerate(rows)],
        evidence=str(raw.get("evidence") or ""),
    )


def load_mmdocir_annotations(path: str | Path) -> MMDocIRAnnotations:
    """Read `MMDocIR_annotations.jsonl`.

    Args:
        path: the JSON-lines file, one document per line (blank lines are skipped).

    Returns:
        The documents and their questions, in file order.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: a line is not JSON or lacks a field or holds a bad value; the message gives the path, the
            line number and the field (such as `questions[3].page_id[0]`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMDocIR annotation file not found: {path}")
    documents: list[MMDocIRDocument] = []
    questions: list[MMDocIRQuestion] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {err}") from None
            try:
                name = _str(_field(raw, "doc_name", ""), "doc_name")
                if name in seen:
                    raise _Malformed(f"field doc_name {name!r} repeats the document of line {seen[name]}")
                seen[name] = lineno
                doc = MMDocIRDocument(
                    doc_name=name,
                    domain=_str(_field(raw, "domain", ""), "domain"),
                    page_rows=_row_range(_field(raw, "page_indices", ""), "page_indices"),
                    layout_rows=_row_range(_field(raw, "layout_indices", ""), "layout_indices"),
                )
                raw_questions = _field(raw, "questions", "")
                if not isinstance(raw_questions, list):
                    raise _Malformed(f"field questions must be a list, got {raw_questions!r:.80}")
                parsed = [_parse_question(q, f"questions[{j}]", doc, len(documents), j)
                          for j, q in enumerate(raw_questions)]
            except _Malformed as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
            doc.question_indices = list(range(len(questions), len(questions) + len(parsed)))
            documents.append(doc)
            questions.extend(parsed)
    return MMDocIRAnnotations(documents, questions, str(path))


# --- parquet files ------------------------------------------------------------------------------------------------


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

    def of_document(self, doc_index: int) -> range:
        return range(int(self.doc_offsets[doc_index]), int(self.doc_offsets[doc_index + 1]))

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


def load_mmdocir_layouts(path: str | Path, annotations: MMDocIRAnnotations, *, doc_column: str | None = "doc_name",
                         page_column: str | None = None, bbox_column: str = "bbox", type_column: str | None = "type",
                         text_column: str | None = "ocr_text") -> MMDocIRLayouts:
    """Read the layout boxes of the annotated documents from `MMDocIR_layouts.parquet`.

    Each document's boxes are the rows `layout_indices` gives it (end inclusive).

    Args:
        path: the parquet file.
        annotations: from `load_mmdocir_annotations`.
        doc_column: the column naming each row's document, checked against the annotations; `None` skips the check.
        page_column: the column with the 0-based page number within the document; by default the first of
            `page_id`, `page`, `passage_id` that the file has.
        bbox_column: the `[x1, y1, x2, y2]` column (lists of numbers, or their JSON text).
        type_column, text_column: optional columns for the layout type and its text; `None` skips them.

    Raises:
        FileNotFoundError: no such file. ValueError: a named column is missing, a document's rows are out of
            range or belong to another document, or a box is malformed (the message gives the row).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if page_column is None:
        names = pq.read_schema(path).names if path.is_file() else []
        page_column = next((c for c in ("page_id", "page", "passage_id") if c in names), "page_id")
    columns = [c for c in (doc_column, page_column, bbox_column, type_column, text_column) if c]
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

        for j, (page, bbox, kind, text) in enumerate(zip(column(page_column), column(bbox_column), column(type_column),
                                                         column(text_column))):
            where = f"{path} row {start + j}"
            if isinstance(page, bool) or not isinstance(page, int) or page < 0:
                raise ValueError(f"{where}: {page_column} must be a page number >= 0, got {page!r:.80}")
            ids.append(f"{page_id(doc.doc_name, page)}#L{j}")
            doc_index.append(d)
            pages.append(page)
            boxes.append(_parse_bbox(bbox, where))
            types.append(str(kind or ""))
            texts.append(str(text or ""))
        offsets.append(len(ids))
    return MMDocIRLayouts(ids, torch.tensor(doc_index, dtype=torch.long), torch.tensor(pages, dtype=torch.long),
                          torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), types, Texts(ids, texts),
                          torch.tensor(offsets, dtype=torch.long))


# --- the dataset --------------------------------------------------------------------------------------------------


@dataclass
class MMDocIRDataset:
    """Questions, the pages of their documents, and the gold pages.

    Attributes:
        annotations: the parsed annotation file.
        questions: `[Q]` question texts, ids `MMDocIRQuestion.id`.
        page_ids: `[N]` ids `f"{doc_name}#{page}"`, every page of every document, documents in annotation order.
        page_doc: `[N]` long, each page's document; page_number: `[N]` long, its 0-based number in the document.
        doc_offsets: `[D + 1]` long; document d's pages are rows `doc_offsets[d]:doc_offsets[d + 1]`.
        ocr_text, vlm_text: `[N]` page texts (`None` when the pages parquet was not given).
        images: `[N]` page images, decoded lazily from the parquet's JPEG bytes (`None` without the parquet or
            with `load_images=False`). An undecodable image raises `ImageLoadError` naming the document and page.
        qrels: question -> gold page ids, grade 1.
        layouts: the layout boxes, when the layouts parquet was given.
    """

    annotations: MMDocIRAnnotations
    questions: Texts
    page_ids: list[str]
    page_doc: Tensor
    page_number: Tensor
    doc_offsets: Tensor
    qrels: Qrels
    ocr_text: Texts | None = None
    vlm_text: Texts | None = None
    images: ImageFiles | None = None
    layouts: MMDocIRLayouts | None = None

    def __len__(self) -> int:
        return len(self.questions)

    def candidates(self, question_index: int) -> range:
        """The corpus rows (into `page_ids`) of the question's own document, in page order."""
        d = self.annotations.questions[question_index].doc_index
        return range(int(self.doc_offsets[d]), int(self.doc_offsets[d + 1]))

    def candidate_ids(self, question_index: int) -> list[str]:
        return [self.page_ids[i] for i in self.candidates(question_index)]

    def domain(self, question_index: int) -> str:
        return self.annotations.domain_of(question_index)

    def _check_scores(self, scores_by_question: Sequence[Sequence[float] | Tensor],
                      question_indices: Sequence[int] | None) -> list[int]:
        rows = list(range(len(self))) if question_indices is None else [int(q) for q in question_indices]
        if len(scores_by_question) != len(rows):
            raise ValueError(f"{len(scores_by_question)} score lists for {len(rows)} questions")
        for q, scores in zip(rows, scores_by_question):
            n = len(self.candidates(q))
            if len(scores) != n:
                raise ValueError(f"question {q} ({self.questions.ids[q]}): {len(scores)} scores, but its document "
                                 f"has {n} pages")
        return rows

    def per_document_run(self, scores_by_question: Sequence[Sequence[float] | Tensor],
                         question_indices: Sequence[int] | None = None) -> Run:
        """A `Run` whose row q holds the pages of q's own document with their scores.

        Args:
            scores_by_question: one score list (or 1-D tensor) per question, over its document's pages in page
                order (`candidates(q)`).
            question_indices: the questions the lists belong to; all questions, in order, by default.

        Returns:
            A run with `[Q, P_max]` tensors over the corpus `page_ids` (P_max the longest document among the
            questions); slots beyond a document's pages are `PAD` with score `-inf`. Ties rank the lower page
            number first, as `mmdocir_page_metrics` does.
        """
        rows = self._check_scores(scores_by_question, question_indices)
        depth = max((len(self.candidates(q)) for q in rows), default=0)
        indices = torch.full((len(rows), depth), PAD, dtype=torch.long)
        scores = torch.full((len(rows), depth), -math.inf)
        for r, (q, values) in enumerate(zip(rows, scores_by_question)):
            cand = self.candidates(q)
            indices[r, : len(cand)] = torch.arange(cand.start, cand.stop)
            scores[r, : len(cand)] = torch.as_tensor(values, dtype=torch.float).reshape(-1)
        return Run(indices, scores, [self.questions.ids[q] for q in rows], self.page_ids)

    def page_records(self, scores_by_question: Sequence[Sequence[float] | Tensor],
                     question_indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per-question records in the benchmark's form, for `mmrerank.metrics.mmdocir_page_metrics`.

        Returns:
            One dict per question: `domain`, `page_id` (gold page numbers) and `scores_page` (floats in page
            order), plus `doc_name` and `question_id`.
        """
        rows = self._check_scores(scores_by_question, question_indices)
        records = []
        for q, values in zip(rows, scores_by_question):
            question = self.annotations.questions[q]
            doc = self.annotations.documents[question.doc_index]
            values = values.tolist() if isinstance(values, Tensor) else [float(v) for v in values]
            records.append({"question_id": question.id, "doc_name": doc.doc_name, "domain": doc.domain,
                            "page_id": list(question.gold_pages), "scores_page": values})
        return records


def _download_from_hub(filename: str, repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """One file of the hub dataset, through the local hub cache (downloaded once)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision,
                                cache_dir=None if cache_dir is None else str(cache_dir)))


def load_mmdocir(annotations: str | Path | MMDocIRAnnotations | None = None, pages_parquet: str | Path | None = None,
                 layouts_parquet: str | Path | None = None, from_hub: bool = False, *, repo_id: str = HUB_REPO,
                 revision: str | None = None, cache_dir: str | Path | None = None, load_images: bool = True,
                 load_layouts: bool = False, layout_columns: Mapping[str, str | None] | None = None) -> MMDocIRDataset:
    """Load the MMDocIR evaluation set.

    Args:
        annotations: the annotation file, or its parsed form; with `from_hub` and `None`, downloaded too.
        pages_parquet: `MMDocIR_pages.parquet`; without it (and without `from_hub`) the dataset has page ids,
            questions and qrels but no page texts or images.
        layouts_parquet: `MMDocIR_layouts.parquet`, read when given (or with `from_hub` and `load_layouts`).
        from_hub: download the missing files from the hub dataset `repo_id` (needs the network).
        repo_id, revision, cache_dir: where the hub files come from and are cached.
        load_images: keep the pages' JPEG bytes for `images` (decoded lazily); `False` saves the memory.
        load_layouts: with `from_hub`, download and read the layouts parquet too (it is large).
        layout_columns: keyword arguments of `load_mmdocir_layouts` naming the layout columns.

    Returns:
        The dataset; each question's candidates are its own document's pages.

    Raises:
        FileNotFoundError: a given file does not exist (the message names it).
        ValueError: malformed annotations, missing columns, or parquet rows that do not match the annotations.
    """
    if annotations is None and not from_hub:
        raise ValueError("give the annotation file, or from_hub=True to download it")
    if from_hub:
        if annotations is None:
            annotations = _download_from_hub(ANNOTATIONS_FILE, repo_id, revision, cache_dir)
        if pages_parquet is None:
            pages_parquet = _download_from_hub(PAGES_FILE, repo_id, revision, cache_dir)
        if layouts_parquet is None and load_layouts:
            layouts_parquet = _download_from_hub(LAYOUTS_FILE, repo_id, revision, cache_dir)
    ann = annotations if isinstance(annotations, MMDocIRAnnotations) else load_mmdocir_annotations(annotations)

    page_ids: list[str] = []
    page_doc: list[int] = []
    page_number: list[int] = []
    offsets = [0]
    for d, doc in enumerate(ann.documents):
        page_ids.extend(page_id(doc.doc_name, p) for p in range(doc.num_pages))
        page_doc.extend([d] * doc.num_pages)
        page_number.extend(range(doc.num_pages))
        offsets.append(len(page_ids))
    doc_offsets = torch.tensor(offsets, dtype=torch.long)

    question_ids = [q.id for q in ann.questions]
    q_index = [i for i, q in enumerate(ann.questions) for _ in q.gold_pages]
    p_index = [offsets[q.doc_index] + p for q in ann.questions for p in q.gold_pages]
    qrels = Qrels.from_pairs(question_ids, page_ids, torch.tensor(q_index, dtype=torch.long),
                             torch.tensor(p_index, dtype=torch.long))

    dataset = MMDocIRDataset(ann, Texts(question_ids, [q.text for q in ann.questions]), page_ids,
                             torch.tensor(page_doc, dtype=torch.long), torch.tensor(page_number, dtype=torch.long),
                             doc_offsets, qrels)
    if pages_parquet is not None:
        _attach_pages(dataset, Path(pages_parquet), load_images)
    if layouts_parquet is not None:
        dataset.layouts = load_mmdocir_layouts(layouts_parquet, ann, **dict(layout_columns or {}))
    return dataset


def _attach_pages(dataset: MMDocIRDataset, path: Path, load_images: bool) -> None:
    """Fill in the page texts (and lazily decoded images) from the pages parquet."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names if path.is_file() else []
    text_columns = ["ocr_text"] + (["vlm_text"] if "vlm_text" in names else [])
    table = _read_table(path, ["doc_name", *text_columns] + (["image_binary"] if load_images else []), "pages")
    ocr: list[str] = []
    vlm: list[str] = []
    sources: list[tuple[str, bytes]] = []
    for doc in dataset.annotations.documents:
        _check_rows(table, path, doc.page_rows, doc.doc_name, "doc_name", "page")
        start, n = doc.page_rows[0], doc.num_pages
        ocr.extend(str(t or "") for t in table.column("ocr_text").slice(start, n).to_pylist())
        if "vlm_text" in text_columns:
            vlm.extend(str(t or "") for t in table.column("vlm_text").slice(start, n).to_pylist())
        if load_images:
            for p, data in enumerate(_binary_values(table.column("image_binary").slice(start, n))):
                # an empty payload is kept: reading it raises ImageLoadError naming the page, like a corrupt one
                sources.append((f"{doc.doc_name} page {p} ({path} row {start + p})", data or b""))
    dataset.ocr_text = Texts(list(dataset.page_ids), ocr)
    dataset.vlm_text = Texts(list(dataset.page_ids), vlm) if vlm else None
    dataset.images = ImageFiles(list(dataset.page_ids), sources) if load_images else None
