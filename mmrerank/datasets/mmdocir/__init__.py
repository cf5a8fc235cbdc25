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
- `MMDocIR_layouts.parquet`, one row per layout box: `doc_name`, `domain`, `type`, `layout_id`, `page_id`,
  `image_path`, `image_binary`, `text` (text and equation layouts only), `ocr_text` and `vlm_text` (figure and
  table layouts only), `bbox`, `page_size`; `load_mmdocir_layouts` takes the column names as arguments.

Each question is ranked only against the pages of its own document. `MMDocIRDataset` keeps every page of every
document in one corpus (page ids `f"{doc_name}#{page}"`), gives each question its document's rows as candidates,
and builds a `Run` whose row q holds exactly q's document's pages, so the generic metrics in `mmrerank.core.metrics`
apply; `mmdocir_page_metrics` and `mmdocir_layout_recall` (in `metrics`) compute the benchmark's own numbers as its
official evaluation code does.

Modules: `annotations` (the JSON-lines file), `layouts` (the parquet files and the layout boxes), `dataset`
(`MMDocIRDataset`, `load_mmdocir`), `metrics`. Everything public is importable from this package.
"""

from mmrerank.datasets.mmdocir.annotations import (
    LayoutBox,
    MMDocIRAnnotations,
    MMDocIRDocument,
    MMDocIRQuestion,
    load_mmdocir_annotations,
    page_id,
)
from mmrerank.datasets.mmdocir.dataset import HUB_REPO, MMDocIRDataset, load_mmdocir
from mmrerank.datasets.mmdocir.layouts import VISUAL_LAYOUT_TYPES, MMDocIRLayouts, load_mmdocir_layouts
from mmrerank.datasets.mmdocir.metrics import (
    MMDOCIR_DOMAINS,
    MMDOCIR_PAGE_METRICS,
    mmdocir_layout_recall,
    mmdocir_page_metrics,
)

__all__ = [
    "HUB_REPO",
    "MMDOCIR_DOMAINS",
    "MMDOCIR_PAGE_METRICS",
    "VISUAL_LAYOUT_TYPES",
    "LayoutBox",
    "MMDocIRAnnotations",
    "MMDocIRDataset",
    "MMDocIRDocument",
    "MMDocIRLayouts",
    "MMDocIRQuestion",
    "load_mmdocir",
    "load_mmdocir_annotations",
    "load_mmdocir_layouts",
    "mmdocir_layout_recall",
    "mmdocir_page_metrics",
    "page_id",
]
