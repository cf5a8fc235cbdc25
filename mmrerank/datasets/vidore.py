"""ViDoRe (Visual Document Retrieval benchmark) v1 / v2 / v3: queries against page images, with the official measure.

Layouts on the hub, as the authors' code reads them (vidore-benchmark's `ViDoReEvaluatorQA` / `ViDoReEvaluatorBEIR`,
mteb's `Vidore2*` / `Vidore3*` tasks):

- **v1** (e.g. `vidore/docvqa_test_subsampled`): one table, split `test`, one row per (query, page) with columns
  `query`, `image`, `image_filename`, ... Pages are identified by `image_filename`; queries are deduplicated (a
  query given twice keeps the page of its last row) and rows without a query are pages only; each query has one
  relevant page (grade 1).
- **v2** (e.g. `vidore/esg_reports_v2`): three configs `queries` (`query-id`, `query`, `language`), `corpus`
  (`corpus-id`, `image`, ...), `qrels` (`query-id`, `corpus-id`, `score`), split `test`.
- **v3** (e.g. `vidore/vidore_v3_hr`): the same three configs with underscores (`query_id`, `corpus_id`), queries in
  several languages (`language`), the corpus with its `markdown` text, graded qrels (`score`).

Main scores: v1 nDCG@5 (ColPali paper, vidore-benchmark); v2 nDCG@5 (mteb's `Vidore2*` tasks declare
`main_score="ndcg_at_5"`, although the issue asked for @10); v3 nDCG@10 (mteb's `Vidore3*` tasks).

Local copies: a folder of parquet files in the hub's layout (v1: `*.parquet` anywhere below the folder; v2 / v3:
`queries/`, `corpus/`, `qrels/` sub-folders, or files named `queries*.parquet`, ...). The hub (`ViDoReHub`) needs the
network once and `datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmrerank.core.io import require_path
from mmrerank.core.items import ImageFiles, Texts
from mmrerank.core.run import Qrels

VERSIONS = (1, 2, 3)
MAIN_MEASURE = {1: "nDCG@5", 2: "nDCG@5", 3: "nDCG@10"}
TABLES = ("queries", "corpus", "qrels")


@dataclass
class ViDoReDataset:
    """One ViDoRe dataset: queries, page images (optionally their text), judgements.

    Attributes:
        name: e.g. `docvqa_test_subsampled`; version: 1, 2 or 3.
        queries: the query texts with their ids.
        images: the page images (ids = page ids), decoded lazily from the parquet bytes.
        page_text: each page's text where the dataset gives it (v3 `markdown`, or an `ocr_text` column), else None.
        qrels: query -> relevant page ids, with their grades.
        languages: each query's language (v2 / v3), else None.
    """

    name: str
    version: int
    queries: Texts
    images: ImageFiles
    qrels: Qrels
    page_text: Texts | None = None
    languages: list[str] | None = None

    @property
    def page_ids(self) -> list[str]:
        return self.images.ids

    @property
    def main_measure(self) -> str:
        return MAIN_MEASURE[self.version]


# --- reading tables ----------------------------------------------------------------------------------------------


def _column(table: pa.Table, names: tuple[str, ...], where: str) -> list[Any]:
    """The first of `names` that `table` has, as a Python list (v2 spells ids with '-', v3 with '_')."""
    for name in names:
        if name in table.column_names:
            return table.column(name).to_pylist()
    raise ValueError(f"{where}: none of the columns {list(names)} (it has {table.column_names})")


def _image_sources(table: pa.Table, ids: list[str], where: str) -> list[tuple[str, bytes]]:
    """The encoded page images of an `image` column (the `datasets` Image feature: a struct with `bytes`)."""
    out = []
    for page_id, cell in zip(ids, _column(table, ("image",), where)):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(data, bytes):
            raise ValueError(f"{where}: page {page_id!r} has no image bytes")
        out.append((f"{where}:{page_id}", data))
    return out


def _language_filter(languages: list[str] | None, language: str | None, where: str) -> list[int]:
    if language is None:
        return list(range(len(languages or [])))
    if languages is None:
        raise ValueError(f"{where}: language={language!r} asked for, but the queries have no 'language' column")
    keep = [i for i, lang in enumerate(languages) if lang == language]
    if not keep:
        raise ValueError(f"{where}: no query in language {language!r}; it has {sorted(set(languages))}")
    return keep


def dataset_from_v1(table: pa.Table, name: str, where: str) -> ViDoReDataset:
    """A v1 table (one row per query and page) as queries, unique pages and one-page qrels."""
    queries = _column(table, ("query",), where)
    files = [str(f) for f in _column(table, ("image_filename",), where)]
    first_row: dict[str, int] = {}
    for row, filename in enumerate(files):
        first_row.setdefault(filename, row)
    page_ids = list(first_row)
    images = ImageFiles(page_ids, _image_sources(table.take(list(first_row.values())), page_ids, where))
    gold: dict[str, str] = {}
    for query, filename in zip(queries, files):
        if query is not None:
            gold[query] = filename  # a repeated query keeps its last row's page, as vidore-benchmark's dict does
    texts = list(gold)
    query_ids = [str(i) for i in range(len(texts))]
    qrels = Qrels.from_dict({qid: {gold[t]: 1} for qid, t in zip(query_ids, texts)}, query_ids, page_ids)
    return ViDoReDataset(name, 1, Texts(query_ids, texts), images, qrels)


def dataset_from_beir(tables: dict[str, pa.Table], name: str, version: int, where: str,
                      language: str | None = None) -> ViDoReDataset:
    """v2 / v3 `queries`, `corpus`, `qrels` tables as a dataset (queries of `language` only, when given)."""
    q, c, r = (tables[k] for k in TABLES)
    query_ids = [str(i) for i in _column(q, ("query-id", "query_id"), f"{where} queries")]
    texts = _column(q, ("query",), f"{where} queries")
    languages = _column(q, ("language",), f"{where} queries") if "language" in q.column_names else None
    keep = _language_filter(languages, language, f"{where} queries") if language else list(range(len(query_ids)))
    page_ids = [str(i) for i in _column(c, ("corpus-id", "corpus_id"), f"{where} corpus")]
    images = ImageFiles(page_ids, _image_sources(c, page_ids, f"{where} corpus"))
    text_col = next((n for n in ("markdown", "ocr_text", "text") if n in c.column_names), None)
    page_text = Texts(page_ids, [t or "" for t in c.column(text_col).to_pylist()]) if text_col else None
    judged: dict[str, dict[str, int]] = {}
    for qid, pid, grade in zip(_column(r, ("query-id", "query_id"), f"{where} qrels"),
                               _column(r, ("corpus-id", "corpus_id"), f"{where} qrels"),
                               _column(r, ("score",), f"{where} qrels")):
        judged.setdefault(str(qid), {})[str(pid)] = int(grade)
    kept_ids = [query_ids[i] for i in keep]
    return ViDoReDataset(name, version, Texts(kept_ids, [texts[i] for i in keep]), images,
                         Qrels.from_dict(judged, kept_ids, page_ids), page_text,
                         [languages[i] for i in keep] if languages else None)


def _read_parquets(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(paths)])


def read_local_tables(folder: Path, version: int) -> pa.Table | dict[str, pa.Table]:
    """The parquet tables of a local copy: v1 one table; v2 / v3 the three named ones.

    Raises:
        FileNotFoundError: a table's files are missing (the message names what was looked for).
    """
    if folder.is_file():
        if version != 1:
            raise ValueError(f"{folder}: a v{version} dataset is a folder with queries, corpus and qrels tables")
        return pq.read_table(folder)
    if version == 1:
        files = sorted(folder.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{folder}: no *.parquet file below it (ViDoRe v1 is one table)")
        return _read_parquets(files)
    tables = {}
    for name in TABLES:
        files = sorted((folder / name).rglob("*.parquet")) if (folder / name).is_dir() else \
            sorted(folder.glob(f"{name}*.parquet"))
        if not files:
            raise FileNotFoundError(f"{folder}: no {name}/ folder of parquet files and no {name}*.parquet")
        tables[name] = _read_parquets(files)
    return tables


# --- sources chosen by class_path -----------------------------------------------------------------------------------


class ViDoReSource:
    """A ViDoRe dataset, loadable on demand (chosen in configs by `class_path`)."""

    name = "vidore"
    version = 1

    def load(self) -> ViDoReDataset:
        raise NotImplementedError

    def check(self, key: str) -> None:
        """Refuse missing local files before any work (nothing to check by default)."""

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **vars(self)}


class ViDoReFiles(ViDoReSource):
    """A local copy in the hub's parquet layout.

    Args:
        source: the folder (or, v1, the parquet file).
        version: 1, 2 or 3 (decides the layout and the main measure).
        language: v2 / v3: keep the queries of this language (`english`, `french`, ...); None keeps all.
        name: the report's name for it; default the folder's name.
    """

    def __init__(self, source: str, version: int = 1, language: str | None = None, name: str | None = None) -> None:
        if version not in VERSIONS:
            raise ValueError(f"ViDoReFiles: version must be one of {VERSIONS}; got {version!r}")
        self.source, self.version, self.language = source, version, language
        self.name = name or Path(source).stem

    def check(self, key: str) -> None:
        require_path(self.source, f"{key}.init_args.source", fix="point it at a local copy of the dataset's parquet "
                     "files, or use ViDoReHub")

    def load(self) -> ViDoReDataset:
        self.check("dataset")
        tables = read_local_tables(Path(self.source), self.version)
        if self.version == 1:
            return dataset_from_v1(tables, self.name, self.source)
        return dataset_from_beir(tables, self.name, self.version, self.source, self.language)


class ViDoReHub(ViDoReSource):
    """A ViDoRe dataset from the hub through `datasets.load_dataset` (needs the network once, then its cache).

    Args:
        repo_id: e.g. `vidore/docvqa_test_subsampled` (v1), `vidore/esg_reports_v2` (v2), `vidore/vidore_v3_hr` (v3).
        version, language: as `ViDoReFiles`.
        revision: a hub revision to pin.
        split: the split the authors evaluate (`test`).
    """

    def __init__(self, repo_id: str, version: int = 1, language: str | None = None, revision: str | None = None,
                 split: str = "test") -> None:
        if version not in VERSIONS:
            raise ValueError(f"ViDoReHub: version must be one of {VERSIONS}; got {version!r}")
        self.repo_id, self.version, self.language = repo_id, version, language
        self.revision, self.split = revision, split
        self.name = repo_id.rsplit("/", 1)[-1]

    def _table(self, config: str | None) -> pa.Table:
        from datasets import load_dataset

        ds = load_dataset(self.repo_id, config, split=self.split, revision=self.revision)
        return ds.with_format("arrow")[:]  # the Image feature stays {bytes, path}: decoded lazily, as local copies

    def load(self) -> ViDoReDataset:
        if self.version == 1:
            return dataset_from_v1(self._table(None), self.name, self.repo_id)
        tables = {name: self._table(name) for name in TABLES}
        return dataset_from_beir(tables, self.name, self.version, self.repo_id, self.language)
