"""MMDocIR's annotation file, `MMDocIR_annotations.jsonl`: documents, their questions and the gold pages / boxes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def page_id(doc_name: str, page: int) -> str:
    """The corpus id of page `page` (0-based) of a document."""
    return f"{doc_name}#{page}"



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
