"""The evaluation loop: encode -> index -> retrieve top-K -> (rerank) -> metrics -> Report.

This is the one path data takes through mmrerank; every family's benchmark rows come out of `evaluate_task`.
Under `torch.distributed` each rank encodes and reranks a share of the work and the results are gathered,
so every rank ends with the same numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmrerank.core import distributed
from mmrerank.core.io import atomic_write, atomic_write_json, atomic_write_text
from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import PAD, Run
from mmrerank.datasets.mmdocir import MMDocIRDataset
from mmrerank.datasets.revisited import RevisitedDataset, revisited_map
from mmrerank.metrics import evaluate, mmdocir_page_metrics
from mmrerank.rerankers.base import Reranker
from mmrerank.retrieval.index import RetrievalIndex

DEFAULT_MEASURES = ("Success@1", "Success@5", "Success@10", "nDCG@10")
FIRST_STAGE = "first stage"


def retrieve(query_emb: Tensor, corpus_emb: Tensor, query_ids: Sequence[str], corpus_ids: Sequence[str], depth: int,
             index_kind: str = "flat") -> Run:
    """First-stage run through the RetrievalIndex: the top `depth` corpus items per query by inner product.

    Args:
        query_emb: `[Q, d]`, corpus_emb: `[N, d]` (L2-normalised), with their ids.
    """
    index = RetrievalIndex(corpus_emb.shape[1], kind=index_kind)
    index.add(corpus_emb, corpus_ids)
    return index.search(query_emb, depth, query_ids)


def rerank_sharded(reranker: Reranker, run: Run, task: RetrievalTask, depth: int, batch_size: int,
                   progress: bool = True) -> Run:
    """`reranker.rerank` with the queries split over distributed ranks, then gathered in order."""
    _, size = distributed.world()
    if size == 1:
        return reranker.rerank(run, task, depth, batch_size, progress)
    rows = distributed.shard(range(len(run)))
    part = reranker.rerank(run.select(rows), task, depth, batch_size, progress)
    indices = distributed.gather_shards(list(part.indices.split(1)))
    scores = distributed.gather_shards(list(part.scores.split(1)))
    return Run(indices, scores, run.query_ids, run.doc_ids)


def success_curve(run: Run, task: RetrievalTask) -> list[float]:
    """Success@k for k = 1 .. depth (the recall-vs-k curve of image-text papers)."""
    scores = evaluate(run, task.qrels, [f"Success@{k}" for k in range(1, run.depth + 1)])
    return [scores[f"Success@{k}"] for k in range(1, run.depth + 1)]


@dataclass
class Report:
    """Every number of a benchmark, with the config that produced it.

    Attributes:
        title: what was benchmarked.
        rows: system name (`first stage`, `edje`, ...) -> `{"t2i/Success@1": value, ...}`.
        curves: system name -> direction -> Success@k for k = 1 .. depth.
        config: the settings that produced the numbers.
        timings: seconds per step of the pipeline.
    """

    title: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, system: str, direction: str, metrics: Mapping[str, float], curve: Sequence[float] = ()) -> None:
        self.rows.setdefault(system, {}).update({f"{direction}/{k}": v for k, v in metrics.items()})
        if curve:
            self.curves.setdefault(system, {})[direction] = list(curve)

    def to_markdown(self) -> str:
        """One table per set of columns (image-text rows and image-to-image rows measure different things)."""
        tables: dict[tuple[str, ...], list[str]] = {}
        for system, row in self.rows.items():
            tables.setdefault(tuple(row), []).append(system)
        parts = [f"### {self.title}"]
        for columns, systems in tables.items():
            lines = [f"| system | {' | '.join(columns)} |", "| --- |" + " ---: |" * len(columns)]
            lines += [f"| {s} | " + " | ".join(f"{self.rows[s][c]:.4f}" for c in columns) + " |" for s in systems]
            parts.append("\n".join(lines))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return "\n\n".join(parts) + (f"\n\nTimings: {timing}\n" if timing else "\n")

    def save(self, folder: str | Path) -> list[Path]:
        """Write `report.json`, `report.md` and `success_at_k.png` into `folder` (atomically, each)."""
        folder = Path(folder)
        atomic_write_json(folder / "report.json", {"title": self.title, "rows": self.rows, "curves": self.curves,
                                                   "config": self.config, "timings": self.timings})
        atomic_write_text(folder / "report.md", self.to_markdown())
        atomic_write(folder / "success_at_k.png", lambda tmp: self.plot(tmp))
        return [folder / "report.json", folder / "report.md", folder / "success_at_k.png"]

    def plot(self, path: Path) -> None:
        """Success@k against k, one panel per direction, one line per system."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directions = list(dict.fromkeys(d for curves in self.curves.values() for d in curves))
        if not directions:  # nothing to plot (an image-to-image-only report): still write a valid, empty figure
            directions = ["(no curves)"]
        fig, axes = plt.subplots(1, max(len(directions), 1), figsize=(5 * max(len(directions), 1), 4), squeeze=False)
        for ax, direction in zip(axes[0], directions):
            for system, curves in self.curves.items():
                if direction in curves:
                    ks = range(1, len(curves[direction]) + 1)
                    ax.plot(ks, curves[direction], marker=".", label=system)
            ax.set(xscale="log", xlabel="k", ylabel="Success@k", title=direction, ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls(**json.loads(Path(path).read_text()))


def evaluate_task(report: Report, task: RetrievalTask, query_emb: Tensor, corpus_emb: Tensor,
                  rerankers: Mapping[str, Reranker] | None = None, depth: int = 100, rerank_depth: int = 16,
                  measures: Sequence[str] = DEFAULT_MEASURES, batch_size: int = 256, progress: bool = True) -> None:
    """Retrieve, rerank with each reranker, score, and add one report row per system for this task."""
    device = query_emb.device
    start = time.perf_counter()
    run = retrieve(query_emb, corpus_emb, task.queries.ids, task.corpus.ids, depth).to(device)
    report.timings[f"{task.direction} retrieval"] = time.perf_counter() - start
    systems = {FIRST_STAGE: run}
    for name, reranker in (rerankers or {}).items():
        start = time.perf_counter()
        systems[name] = rerank_sharded(reranker, run, task, rerank_depth, batch_size, progress)
        report.timings[f"{task.direction} {name}"] = time.perf_counter() - start
    qrels = task.qrels
    for name, system_run in systems.items():
        report.add(name, task.direction, evaluate(system_run, qrels, measures), success_curve(system_run, task))


def evaluate_instances(report: Report, dataset: RevisitedDataset, query_desc: Tensor, db_desc: Tensor, system: str,
                       rerank: Mapping[str, Any] | None = None, protocols: Sequence[str] = ("medium", "hard")) -> None:
    """Image-to-image retrieval under the revisited protocol: rank the database, optionally rerank with
    SuperGlobal, and add one row (`medium/mAP`, `hard/mAP`, ...) to the report.

    Args:
        query_desc: `[Q, d]`, db_desc: `[N, d]` unit-norm descriptors.
        rerank: SuperGlobal settings (`top_m`, `k`, `beta`), or None for the descriptor ranking alone. The
            first-stage ranking always comes from the `RetrievalIndex`; SuperGlobal reorders its top `top_m`.
    """
    from mmrerank.rerankers.superglobal import rerank_candidates

    start = time.perf_counter()
    ranks = retrieve(query_desc, db_desc, dataset.query_names, dataset.db_names,
                     len(dataset.db_names)).indices.to(query_desc.device)
    if rerank is not None:  # SuperGlobal reorders the first stage's top M; the rest keep their order
        m = min(rerank.get("top_m", 400), ranks.shape[1])
        head = rerank_candidates(query_desc, db_desc, ranks[:, :m], rerank.get("k", 9), rerank.get("beta", 0.15))
        ranks = torch.cat([head, ranks[:, m:]], dim=1)
    report.timings[f"i2i {system}"] = time.perf_counter() - start
    scores = revisited_map(ranks, dataset, protocols)
    report.add(system, "i2i", {f"{p}/mAP": scores[p]["mAP"] for p in protocols})


def bm25_page_scores(dataset: MMDocIRDataset) -> list[Tensor]:
    """The BM25 first stage for document pages: each question's scores over its own document's pages (OCR text)."""
    from mmrerank.retrieval.bm25 import bm25_scores

    if dataset.ocr_text is None:
        raise ValueError("BM25 over pages needs their OCR text: load the dataset with its pages parquet")
    by_doc: dict[int, list[int]] = {}
    for q, question in enumerate(dataset.annotations.questions):
        by_doc.setdefault(question.doc_index, []).append(q)
    scores: list[Tensor | None] = [None] * len(dataset.questions)
    for questions in by_doc.values():
        pages = dataset.candidates(questions[0])
        doc_scores = bm25_scores([dataset.questions[q] for q in questions], [dataset.ocr_text[p] for p in pages])
        for q, row in zip(questions, doc_scores):
            scores[q] = row
    return scores  # type: ignore[return-value]


def clip_page_scores(dataset: MMDocIRDataset, encoder, batch_size: int = 64, progress: bool = True) -> list[Tensor]:
    """The open_clip first stage for pages: each question's cosine similarity with its own document's page images.

    Args:
        encoder: a `CLIPEncoder` (dual encoder; pages are encoded once, questions once).

    Returns:
        Per question, `[pages of its document]` scores in page order (as `bm25_page_scores`).
    """
    if dataset.images is None:
        raise ValueError("open_clip over pages needs their images: load the dataset with its pages parquet")
    page_emb = encoder.encode(dataset.images, batch_size, progress).cpu()  # [P, e]
    question_emb = encoder.encode(dataset.questions, batch_size, progress).cpu()  # [Q, e]
    return [page_emb[dataset.candidates(q).start:dataset.candidates(q).stop] @ question_emb[q]
            for q in range(len(dataset.questions))]


def evaluate_pages(report: Report, dataset: MMDocIRDataset, scores_by_question: Sequence[Tensor], system: str,
                   ks: Sequence[int] = (1, 3, 5)) -> None:
    """MMDocIR page-level recall@k, macro (over domains) and micro (over questions), as one report row."""
    records = dataset.page_records(scores_by_question)
    row = {}
    for k in ks:
        recall = mmdocir_page_metrics(records, k)["recall"]
        row[f"macro/R@{k}"], row[f"micro/R@{k}"] = recall["macro"], recall["micro"]
    report.add(system, "pages", row)


@dataclass
class PageItems:
    """A document-page corpus as reranker items: item i is page i's `Page` (image and OCR text)."""

    dataset: MMDocIRDataset
    modality: str = field(default="page", init=False)

    @property
    def ids(self) -> list[str]:
        return self.dataset.page_ids

    def __len__(self) -> int:
        return len(self.dataset.page_ids)

    def __getitem__(self, i: int):
        from mmrerank.rerankers.mllm import Page

        return Page(self.dataset.images[i], self.dataset.ocr_text[i] if self.dataset.ocr_text is not None else "")


def fuse_first_stage(reranked: Tensor, first_stage: Tensor, depth: int, alpha: float) -> Tensor:
    """One question's page scores after reranking, fused with the first stage's.

    The first stage's top `depth` pages (ties: lower page first) score `reranker score + alpha * s`, where `s` is
    their first-stage score min-max normalised to [0, 1] over those pages (0 when they all tie); every other page
    stays below them, in first-stage order. `alpha = 0` is the reranker alone.

    Args:
        reranked: `[P]` the question's page scores from `rerank_pages` (only the top `depth` are read).
        first_stage: `[P]` the first-stage scores of the same pages.

    Returns:
        `[P]` fused scores.
    """
    if reranked.shape != first_stage.shape or reranked.ndim != 1:
        raise ValueError(f"reranked {tuple(reranked.shape)} and first_stage {tuple(first_stage.shape)} must be the "
                         "same 1-D shape")
    order = torch.sort(first_stage, descending=True, stable=True).indices
    head, tail = order[:depth], order[depth:]
    if len(head) == 0:
        return reranked.clone()
    base = first_stage[head].float()
    span = base.max() - base.min()
    norm = (base - base.min()) / span if span > 0 else torch.zeros_like(base)
    out = torch.empty(len(first_stage))
    out[head] = reranked[head].float() + alpha * norm
    out[tail] = out[head].min() - torch.arange(1, len(tail) + 1, dtype=torch.float)
    return out


def rerank_pages(reranker: Reranker, dataset: MMDocIRDataset, first_stage: Sequence[Tensor], depth: int,
                 batch_size: int = 16, progress: bool = True, alpha: float = 0.0) -> list[Tensor]:
    """Rerank each question's top `depth` first-stage pages; returns per-question scores in page order.

    The reranked pages get the reranker's scores (plus `alpha` times their normalised first-stage score, see
    `fuse_first_stage`; 0 by default: the reranker alone); the others keep their first-stage order below them.
    """
    run = dataset.per_document_run(first_stage)
    task = RetrievalTask("pages", dataset.questions, PageItems(dataset), dataset.qrels)
    reranked = rerank_sharded(reranker, run, task, depth, batch_size, progress)
    out = []
    for q, (rows, scores) in enumerate(zip(reranked.indices, reranked.scores)):
        start = dataset.candidates(q).start
        page_scores = torch.empty(len(first_stage[q]))
        valid = rows != PAD
        page_scores[rows[valid] - start] = scores[valid]
        out.append(fuse_first_stage(page_scores, first_stage[q], depth, alpha) if alpha else page_scores)
    return out
