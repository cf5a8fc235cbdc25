"""The MMDocIR evaluation set as one page corpus: `MMDocIRDataset` and `load_mmdocir`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmrerank.core.items import ImageFiles, Texts
from mmrerank.core.run import PAD, Qrels, Run
from mmrerank.datasets.mmdocir.annotations import MMDocIRAnnotations, load_mmdocir_annotations, page_id
from mmrerank.datasets.mmdocir.layouts import (
    MMDocIRLayouts,
    _binary_values,
    _check_rows,
    _read_table,
    load_mmdocir_layouts,
)

HUB_REPO = "MMDocIR/MMDocIR_Evaluation_Dataset"
ANNOTATIONS_FILE = "MMDocIR_annotations.jsonl"
PAGES_FILE = "MMDocIR_pages.parquet"
LAYOUTS_FILE = "MMDocIR_layouts.parquet"


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
        """Per-question records in the benchmark's form, for `mmrerank.datasets.mmdocir.mmdocir_page_metrics`.

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
