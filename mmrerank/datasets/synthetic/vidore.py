"""The built-in synthetic benchmark in ViDoRe v3's layout: the synthetic document pages, every page of every
document in one corpus, each question against all of them.

The pages and questions are those of `synthetic.pages` (same seed, same bytes); this writes them as ViDoRe v3's
three tables (`queries/`, `corpus/`, `qrels/` parquet folders: `query_id`, `query`, `language`; `corpus_id`, `image`,
`markdown` (the page's OCR text), `doc_id`, `page_number_in_doc`; `query_id`, `corpus_id`, `score`), so the same
loader reads it and a real ViDoRe copy. The main measure is v3's nDCG@10.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmrerank.core.io import cache_root, generate_folder_once
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.datasets.vidore import ViDoReDataset, ViDoReFiles, ViDoReSource

MARKER = "qrels/test-00000-of-00001.parquet"


def write_vidore_layout(pages_folder: Path, out: Path) -> None:
    """Write ViDoRe v3's three tables into `out` from the synthetic pages' MMDocIR files in `pages_folder`."""
    pages = pq.read_table(pages_folder / "MMDocIR_pages.parquet").to_pydict()
    corpus = {"corpus_id": list(range(len(pages["doc_name"]))),
              "image": [{"bytes": b, "path": p} for b, p in zip(pages["image_binary"], pages["image_path"])],
              "markdown": pages["ocr_text"], "doc_id": pages["doc_name"], "page_number_in_doc": pages["passage_id"]}
    queries: dict[str, list] = {"query_id": [], "query": [], "language": []}
    qrels: dict[str, list] = {"query_id": [], "corpus_id": [], "score": []}
    for line in (pages_folder / "MMDocIR_annotations.jsonl").read_text().splitlines():
        doc = json.loads(line)
        first_page = doc["page_indices"][0]
        for question in doc["questions"]:
            qid = len(queries["query_id"])
            queries["query_id"].append(qid)
            queries["query"].append(question["Q"])
            queries["language"].append("english")
            for page in question["page_id"]:
                qrels["query_id"].append(qid)
                qrels["corpus_id"].append(first_page + page)
                qrels["score"].append(1)
    for name, table in (("queries", queries), ("corpus", corpus), ("qrels", qrels)):
        (out / name).mkdir()
        pq.write_table(pa.table(table), out / name / "test-00000-of-00001.parquet")


def ensure_vidore(pages: PagesConfig) -> Path:
    """The synthetic ViDoRe folder for `pages` (generated once, beside the pages' cache)."""
    folder = (Path(pages.root) if pages.root else cache_root()) / "synthetic-vidore" / pages.folder().name
    return generate_folder_once(folder, MARKER, lambda tmp: write_vidore_layout(ensure_pages(pages), tmp))


class SyntheticViDoRe(ViDoReSource):
    """The built-in synthetic benchmark in ViDoRe v3's layout (see the module).

    Args:
        seed, documents: of the synthetic pages (`PagesConfig`); the default, seed 1 with 100 documents (about 800
            pages, 400 questions), is the Pages suite's test set, unseen by the page models trained on seed 0.
    """

    name = "synthetic-vidore"
    version = 3

    def __init__(self, seed: int = 1, documents: int = 100) -> None:
        self.seed, self.documents = seed, documents

    def pages(self) -> PagesConfig:
        return PagesConfig(seed=self.seed, documents=self.documents)

    def load(self) -> ViDoReDataset:
        folder = ensure_vidore(self.pages())
        return ViDoReFiles(str(folder), version=3, name=f"synthetic-vidore-s{self.seed}-d{self.documents}").load()
