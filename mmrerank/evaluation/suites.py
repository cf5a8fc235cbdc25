"""The benchmark suites: each loads its data, builds its first-stage run(s) and its task, asks each reranker's rows
(`RerankerRows`) for its rerankers and hands everything to the one loop (`evaluate_rows`).

One vocabulary in all three: `dataset` is chosen by `class_path`, `depth` is the first stage's K (where the first
stage has one), `rerank_depth` how many of its candidates each reranker rescores.

- `ImageText`: t2i / i2t over an image-text dataset (any `ImageTextSource`), first stage a dual encoder.
- `Pages`: document pages in MMDocIR's form, first stages BM25 over each document's pages and/or VLM embedders.
- `Instances`: image-to-image under the revisited protocol, first stage GeM / SuperGlobal descriptors.
- `ViDoRe`: queries against a whole page corpus (ViDoRe's setting), first stages BM25, a dense encoder and a
  late-interaction encoder, each reranked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrerank.core import distributed
from mmrerank.core.device import resolve_device
from mmrerank.core.io import require_path
from mmrerank.core.items import ImageLoadError, RetrievalTask
from mmrerank.core.metrics import parse_measure
from mmrerank.core.run import PAD, Run
from mmrerank.datasets.instance_sources import InstanceSource, SyntheticInstances
from mmrerank.datasets.mmdocir import MMDocIRDataset, mmdocir_page_metrics
from mmrerank.datasets.page_sources import PageSource, SyntheticPages
from mmrerank.datasets.revisited import RevisitedTask
from mmrerank.datasets.sources import ImageTextSource, Synthetic
from mmrerank.datasets.synthetic.vidore import SyntheticViDoRe
from mmrerank.datasets.vidore import ViDoReSource
from mmrerank.evaluation.loop import DEFAULT_MEASURES, evaluate_rows
from mmrerank.evaluation.page_items import PageItems
from mmrerank.evaluation.report import Report
from mmrerank.evaluation.vidore_task import ViDoReTask
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.rows import RerankContext, RerankerRows
from mmrerank.rerankers.superglobal.extractor import PoolingConfig, SuperGlobalExtractor
from mmrerank.rerankers.superglobal.reranker import SuperGlobalRows
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.index import retrieve
from mmrerank.retrieval.page_search import BM25PageSearch, DensePageSearch, EmbedderPageSearch
from mmrerank.retrieval.pages import bm25_page_scores, clip_page_scores
from mmrerank.retrieval.tiny_colbert import TinyColBERTConfig, ensure_tiny_colbert
from mmrerank.retrieval.vlm.train_tiny import TinyDenseVLMConfig, ensure_tiny_dense_vlm


def build_first_stage(first_stage: FirstStage, progress: bool = True, retrain: bool = False) -> CLIPEncoder:
    """`first_stage.build`, and under `torch.distributed` trained (when missing) by rank 0 alone while the others
    wait, then loaded by every rank. Rank 0 trains in a process of its own: Lightning, finding a process group,
    would wait for the other ranks. `retrain`: train the cached default again (see `FirstStage.build`)."""
    if distributed.world()[1] == 1:
        return first_stage.build(progress, retrain)

    def build() -> CLIPEncoder:
        missing = not first_stage.pretrained and not first_stage.checkpoint and not first_stage.is_ready()
        if distributed.is_rank_zero() and (retrain or missing):
            distributed.in_fresh_process(first_stage.build, progress, retrain)  # trains it and saves it to its folder
        return first_stage.build(progress)

    return distributed.on_rank_zero_first(build)


# A dataset source's attributes that name local files or folders (`CaptionTable.path`, `Karpathy.karpathy_json`,
# `COCO.image_root`, ...): checked to exist when a benchmark starts.
SOURCE_PATHS = ("path", "karpathy_json", "image_root", "root")


def check_source(dataset: ImageTextSource, key: str = "image_text.dataset") -> None:
    """Refuse a source whose local files are missing, naming `<key>.init_args.<attribute>`."""
    for name in SOURCE_PATHS:
        value = getattr(dataset, name, None)
        if isinstance(value, str) and value:
            require_path(value, f"{key}.init_args.{name}", fix=f"set --{key}.init_args.{name} to an existing path")


def load_checked(dataset: ImageTextSource, key: str = "image_text.dataset"):
    """`dataset.load()`, with an unreadable image's error pointing at `skip_corrupt` and an empty table's at `key`."""
    try:
        return dataset.load()
    except ImageLoadError as err:
        fix = (f"set --{key}.init_args.skip_corrupt=true to drop unreadable images (and their captions) with a "
               "warning" if hasattr(dataset, "skip_corrupt") else "replace or remove the image")
        raise ImageLoadError(f"{key} ({type(dataset).__name__}): {err}; {fix}") from err
    except ValueError as err:
        raise ValueError(f"{key} ({type(dataset).__name__}): {err}") from err


def cached_descriptors(key: dict, extract) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract()` (query and database descriptors), kept under `<cache>/descriptors/<digest of key>.safetensors`."""
    from safetensors.torch import load_file, save_file

    from mmrerank.core.io import atomic_path, cache_root, key_digest

    path = cache_root() / "descriptors" / f"{key_digest(key)}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        return tensors["queries"], tensors["database"]
    queries, database = extract()
    if distributed.is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"queries": queries.cpu().contiguous(), "database": database.cpu().contiguous()}, str(tmp))
    return queries, database


def rows(rerankers: list[RerankerRows], context: RerankContext) -> dict[str, Reranker]:
    """Every family's rows for one task, in config order."""
    out: dict[str, Reranker] = {}
    for family in rerankers:
        out.update(family.rows(context))
    return out


def row_over(row: str, first_stage: str, plain: str | None = None) -> str:
    """A reranker row's name over `first_stage`: as it is when it names that first stage already ("BM25 + MLLM (top
    5)") or when `first_stage` is the suite's `plain` one (kept as before), else "<row> over <first stage>".

    >>> row_over("jinaai/jina-reranker-m0", "vidore/colqwen2-v1.0-merged")
    'jinaai/jina-reranker-m0 over vidore/colqwen2-v1.0-merged'
    >>> row_over("BM25 + MLLM (top 5)", "BM25")
    'BM25 + MLLM (top 5)'
    """
    return row if first_stage == plain or row.startswith(first_stage) else f"{row} over {first_stage}"


@dataclass
class ImageText:
    """Image-text retrieval rows: the first stage and each reranker, per direction.

    Attributes:
        dataset: the image-text dataset split (default: the synthetic test split).
        directions: `t2i` and/or `i2t` (an empty list skips image-text retrieval).
        depth: candidates retrieved per query (the run's K).
        rerank_depth: candidates each reranker rescores.
        measures: ir-measures-style names, reported per direction.
        batch_size: items per encoder batch and pairs per reranker batch.
        rerankers: the families' rows (`EDJERows`, `MLLMRows`, ...).
    """

    dataset: ImageTextSource | None = None
    directions: list[str] = field(default_factory=lambda: ["t2i", "i2t"])
    depth: int = 100
    rerank_depth: int = 16
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    batch_size: int = 256
    rerankers: list[RerankerRows] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dataset = self.dataset or Synthetic()
        if set(self.directions) - {"t2i", "i2t"}:
            raise ValueError(f"image_text.directions may hold 't2i' and 'i2t', got {self.directions}")
        for measure in self.measures:  # an unknown measure fails here, before anything is rendered or trained
            parse_measure(measure)
        if self.depth < 1 or not 0 <= self.rerank_depth <= self.depth:
            raise ValueError(f"image_text: need depth >= 1 and 0 <= rerank_depth <= depth, got depth={self.depth}, "
                             f"rerank_depth={self.rerank_depth}")

    def title(self) -> str:
        return f"{self.dataset.name} {self.dataset.split}" if self.directions else ""

    def check(self) -> None:
        """Before anything is rendered or trained: the rerankers' paths, the dataset's files, and a user's own
        data (anything but the synthetic benchmark) loaded, so an empty table or an unreadable image stops here."""
        for family in self.rerankers:
            family.check()
        if not self.directions:
            return
        check_source(self.dataset)
        if not isinstance(self.dataset, Synthetic):
            self._data = distributed.on_rank_zero_first(lambda: load_checked(self.dataset))

    def run(self, report: Report, encoder: CLIPEncoder, device: str = "auto", progress: bool = True) -> None:
        start = time.perf_counter()
        data = getattr(self, "_data", None)  # loaded by `check`
        if data is None:
            data = distributed.on_rank_zero_first(self.dataset.load)  # one rank renders a missing synthetic split
        report.timings["data"] = time.perf_counter() - start
        start = time.perf_counter()
        image_emb = encoder.encode(data.images, self.batch_size, progress)
        text_emb = encoder.encode(data.captions, self.batch_size, progress)
        report.timings["encoding"] = time.perf_counter() - start
        report.config["sizes"] = {"images": len(data.images), "captions": len(data.captions)}
        for direction in self.directions:
            task = data.task(direction)
            queries, corpus = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
            start = time.perf_counter()
            run = retrieve(queries, corpus, task.queries.ids, task.corpus.ids, self.depth).to(queries.device)
            report.timings[f"{direction} retrieval"] = time.perf_counter() - start
            context = RerankContext("image-text", direction, data, self.dataset.describe(), device, progress,
                                    timings=report.timings)
            evaluate_rows(report, task, run, rows(self.rerankers, context), self.rerank_depth, self.measures,
                     self.batch_size, progress)


PAGE_KS = (1, 3, 5)  # MMDocIR's page-level recall@k


def page_columns(ks: tuple[int, ...] = PAGE_KS) -> list[str]:
    """The columns of a pages row (without the `pages/` direction): `macro/R@k`, `micro/R@k` for each k."""
    return [f"{average}/R@{k}" for k in ks for average in ("macro", "micro")]


class PageTask(RetrievalTask):
    """Questions against their documents' pages, scored by MMDocIR's page recall@k (macro over domains, micro over
    questions): the columns `page_columns(ks)`."""

    def __init__(self, dataset: MMDocIRDataset, ks: tuple[int, ...] = PAGE_KS, page_text: bool = True) -> None:
        pages = PageItems(dataset.page_ids, dataset.images, dataset.ocr_text if page_text else None)
        super().__init__("pages", dataset.questions, pages, dataset.qrels)
        self.dataset, self.ks = dataset, ks

    def page_scores(self, run: Run) -> list[torch.Tensor]:
        """Per question, `[pages of its document]` scores in page order, read off a run over those pages."""
        out = []
        for q, (rows, scores) in enumerate(zip(run.indices.cpu(), run.scores.cpu())):
            pages = self.dataset.candidates(q)
            page_scores = torch.empty(len(pages))
            valid = rows != PAD
            page_scores[rows[valid] - pages.start] = scores[valid].float()
            out.append(page_scores)
        return out

    def measure(self, run: Run, measures=()) -> dict[str, float]:
        records = self.dataset.page_records(self.page_scores(run))
        row = {}
        for k in self.ks:
            recall = mmdocir_page_metrics(records, k)["recall"]
            row[f"macro/R@{k}"], row[f"micro/R@{k}"] = recall["macro"], recall["micro"]
        return row

    def curve(self, run: Run) -> list[float]:
        """Micro recall@k for k = 1 .. max(ks)."""
        records = self.dataset.page_records(self.page_scores(run))
        return [mmdocir_page_metrics(records, k)["recall"]["micro"] for k in range(1, max(self.ks) + 1)]


@dataclass
class Pages:
    """Document-page rows: BM25 over each document's pages (OCR text), then each reranker over its top
    `rerank_depth` (the first stage ranks every page of the question's document: it has no `depth`).

    Attributes:
        dataset: the pages, by `class_path`: `SyntheticPages` (default: seed 1, 100 documents) or `MMDocIR` (the
            benchmark's `MMDocIR_annotations.jsonl` and `MMDocIR_pages.parquet`).
        rerank_depth: BM25 pages reranked per question.
        batch_size: pairs per reranker batch.
        rerankers: the families' rows (`MLLMRows`, ...).
        dual_encoder: also report the benchmark's first-stage dual encoder over page images (row `CLIP`), a first
            stage of its own (not reranked).
        page_text: rerankers get each page's OCR text with its image; False: the image alone, as the visual-document
            benchmarks (ViDoRe, JinaVDR) give pages to the VLM rerankers (BM25 reads the OCR text either way).
        first_stages: the first stages, by name, each reranked by every reranker: "BM25", or a VLM embedder's hub
            id (`mmrerank.retrieval.vlm.presets.PRESETS`: DSE-Qwen2, Qwen3-VL-Embedding, ColQwen2 / 2.5, ColPali).
            Rows over a VLM first stage are named "<reranker row> over <hub id>".
        embedder_folders: hub id -> local folder holding a copy of it (else the hub is used).
        embedder_options: options for `load_embedder` (batch_size, max_tokens_per_batch, attn_implementation, dtype
            as a string, ...), the same for every VLM first stage.
    """

    dataset: PageSource | None = None
    rerank_depth: int = 5
    batch_size: int = 16
    rerankers: list[RerankerRows] = field(default_factory=list)
    dual_encoder: bool = False
    page_text: bool = True
    first_stages: list[str] = field(default_factory=lambda: ["BM25"])
    embedder_folders: dict[str, str] = field(default_factory=dict)
    embedder_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dataset = self.dataset or SyntheticPages(seed=1, documents=100)
        from mmrerank.retrieval.vlm.presets import PRESETS

        unknown = [name for name in self.first_stages if name != "BM25" and name not in PRESETS]
        if unknown or not self.first_stages:
            raise ValueError(f"pages.first_stages {self.first_stages}: each must be 'BM25' or one of {sorted(PRESETS)}")
        if self.rerank_depth < 1:
            raise ValueError(f"pages.rerank_depth must be >= 1, got {self.rerank_depth}")

    def check(self) -> None:
        """The dataset's files exist (before anything is rendered or trained), and the rerankers' paths."""
        self.dataset.check("pages.dataset")
        for family in self.rerankers:
            family.check()

    def title(self) -> str:
        return self.dataset.title()

    def load(self) -> MMDocIRDataset:
        return self.dataset.load()

    def run(self, report: Report, device: str = "auto", progress: bool = True,
            encoder: CLIPEncoder | None = None) -> None:
        """BM25 and its rerankers; with `dual_encoder`, also `encoder` (the benchmark's first stage) over pages."""
        data = distributed.on_rank_zero_first(self.load)
        task = PageTask(data, page_text=self.page_text)
        if self.dual_encoder and encoder is not None:
            start = time.perf_counter()
            scores = clip_page_scores(data, encoder.to(resolve_device(device)), progress=progress)
            report.timings["pages CLIP"] = time.perf_counter() - start
            evaluate_rows(report, task, data.per_document_run(scores), {}, self.rerank_depth, (), first_stage="CLIP")
        for name in self.first_stages:
            start = time.perf_counter()
            run = data.per_document_run(self._first_stage_scores(name, data, device))
            report.timings[f"pages {name}"] = time.perf_counter() - start
            context = RerankContext("pages", "pages", data, {"name": self.title()}, device, progress,
                                    timings=report.timings, first_stage=name, rerank_depth=self.rerank_depth)
            built = {row_over(row, name, plain="BM25"): r for row, r in rows(self.rerankers, context).items()}
            evaluate_rows(report, task, run, built, self.rerank_depth, (), self.batch_size, progress, first_stage=name)

    def _first_stage_scores(self, name: str, data: MMDocIRDataset, device: str) -> list:
        """Per question, its document's pages' scores from the first stage `name` (BM25 or a VLM embedder)."""
        if name == "BM25":
            return bm25_page_scores(data)
        from mmrerank.retrieval.vlm.first_stage import page_scores
        from mmrerank.retrieval.vlm.presets import load_embedder

        embedder = load_embedder(self.embedder_folders.get(name, name), preset=name, device=resolve_device(device),
                                 **self.embedder_options)
        return page_scores(data, embedder)


@dataclass
class Instances:
    """Image-to-image rows under the revisited protocol (mAP Medium / Hard): GeM, SuperGlobal pooling, and each
    reranker over the SuperGlobal-pooling ranking's top `rerank_depth` (the first stage ranks the whole database).

    Attributes:
        dataset: the images, by `class_path`: `SyntheticInstances` (built in; the default) or `Revisited`
            (`name: roxford5k` or `rparis6k`, `root`: the folder holding `gnd_<name>.pkl` and `jpg/`).
        backbone: `first_stage` (the benchmark's first-stage CNN image tower) or a timm model name.
        pretrained: timm pretrained weights for a named backbone (needs the network once).
        head_dim, cvnet_checkpoint: a linear head per scale and CVNet-style global-model weights from a local file
            (the paper's R101 setting: `backbone: resnet101`, `head_dim: 2048`).
        pooling: SuperGlobal's pooling; the `GeM` row uses single-scale GeM (p = 3) on the same backbone.
        rerank_depth: the shortlist the rerankers reorder.
        rerankers: default `[SuperGlobalRows()]` (k = 9, beta = 0.15).
    """

    dataset: InstanceSource | None = None
    backbone: str = "first_stage"
    pretrained: bool = False
    head_dim: int | None = None
    cvnet_checkpoint: str | None = None
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    rerank_depth: int = 400
    rerankers: list[RerankerRows] | None = None

    def __post_init__(self) -> None:
        self.dataset = self.dataset or SyntheticInstances()
        if self.rerank_depth < 1:
            raise ValueError(f"instances.rerank_depth must be >= 1, got {self.rerank_depth}")
        if self.rerankers is None:
            self.rerankers = [SuperGlobalRows()]

    def check(self) -> None:
        """The real benchmark's folder and ground truth, the CVNet weights, and the rerankers' paths exist."""
        self.dataset.check("instances.dataset")
        if self.cvnet_checkpoint:
            require_path(self.cvnet_checkpoint, "instances.cvnet_checkpoint", "file",
                         "name CVNet's weights file (.pth), or leave it unset")
        for family in self.rerankers:
            family.check()

    def title(self) -> str:
        return f"{self.dataset.name} image-to-image"

    def descriptor_key(self, backbone: str, checkpoint: str | None, pooling: PoolingConfig,
                       relu_plus: bool | None) -> dict | None:
        """What the descriptors depend on, for the built-in benchmark on the first stage's tower (its images are a
        function of `instances`, its weights of the checkpoint's bytes); None (no caching) for anything else."""
        instances = self.dataset.cache_key()
        if instances is None or self.backbone != "first_stage" or self.cvnet_checkpoint:
            return None
        from dataclasses import asdict

        from mmrerank.retrieval.negatives import file_stamp

        return {"instances": instances, "backbone": backbone, "weights": file_stamp(checkpoint),
                "pooling": asdict(pooling), "relu_plus": relu_plus, "head_dim": self.head_dim}

    def run(self, report: Report, first_stage: FirstStage, device: str = "auto", progress: bool = True) -> None:
        data = distributed.on_rank_zero_first(self.dataset.load)
        queries = [data.query_image(i) for i in range(data.num_queries)]
        database = [data.db_image(j) for j in range(data.num_db)]
        backbone, checkpoint = self.backbone, None
        if backbone == "first_stage":
            build_first_stage(first_stage, progress=False)  # trained first when missing
            backbone, checkpoint = f"first_stage:{first_stage.model_name}", str(first_stage.folder())
        task = RevisitedTask(data)
        for system, pooling in (("GeM", PoolingConfig.plain_gem()), ("SuperGlobal pooling", self.pooling)):
            # ReLU+ is part of SuperGlobal: the GeM baseline is the plain global model (CVNet-Global's own setting)
            relu_plus = None if system == "SuperGlobal pooling" else False

            def extract(pooling=pooling, relu_plus=relu_plus) -> tuple[torch.Tensor, torch.Tensor]:
                extractor = SuperGlobalExtractor(backbone, pooling, self.head_dim, self.pretrained, checkpoint,
                                                 cvnet_checkpoint=self.cvnet_checkpoint,
                                                 relu_plus=relu_plus).to(resolve_device(device))
                return extractor.extract(queries, progress=progress), extractor.extract(database, progress=progress)

            start = time.perf_counter()
            key = self.descriptor_key(backbone, checkpoint, pooling, relu_plus)
            query_desc, db_desc = cached_descriptors(key, extract) if key else extract()
            report.timings[f"i2i {system} descriptors"] = time.perf_counter() - start
            run = retrieve(query_desc, db_desc, data.query_names, data.db_names, data.num_db)
            rerankers = self.rerankers if system == "SuperGlobal pooling" else []
            rerank_depth = min(self.rerank_depth, data.num_db)
            context = RerankContext("image-to-image", "i2i", data, {"name": self.dataset.name}, device, progress,
                                    {"queries": query_desc, "database": db_desc}, report.timings, system,
                                    rerank_depth)
            evaluate_rows(report, task, run, rows(rerankers, context), rerank_depth, (), progress=progress,
                          first_stage=system)





@dataclass
class ViDoRe:
    """Visual-document retrieval rows: each first stage over the whole page corpus, then each reranker over its top
    `rerank_depth`, scored by the dataset's official measure (`nDCG@5` v1 / v2, `nDCG@10` v3) and `measures`.

    Attributes:
        dataset: a `ViDoReSource` by `class_path` (`SyntheticViDoRe`, `ViDoReFiles`, `ViDoReHub`).
        first_stages: the first stages, by name, each a row reranked by every reranker: "BM25" (the pages' text:
            OCR / markdown), "CLIP" (the benchmark's first-stage dual encoder over page images), "tiny ColBERT" (the
            late-interaction encoder over page text trained here, `tiny_colbert`), "tiny Qwen3-VL-Embedding" (a
            dense Qwen3-VL-Embedding trained here over page image + text, `tiny_dense_vlm`), or a VLM embedder's hub id
            (`mmrerank.retrieval.vlm.presets.PRESETS`: DSE-Qwen2, Qwen3-VL-Embedding, ColQwen2 / 2.5, ColPali).
        tiny_colbert: the tiny ColBERT's recipe (`TinyColBERTConfig`; trained once, cached).
        tiny_dense_vlm: the tiny dense Qwen3-VL-Embedding's recipe (`TinyDenseVLMConfig`; trained once, cached).
        embedder_folders: hub id -> local folder holding a copy of it (else the hub is used).
        embedder_options: options for `load_embedder` (dtype as a string, batch_size, max_tokens_per_batch,
            attn_implementation, query_instruction, ...), the same for every VLM first stage.
        pool_factor: hierarchical token pooling of the late-interaction index (1: none).
        depth: candidates per first stage; rerank_depth: how many of them the rerankers rescore.
        batch_size: pairs per reranker batch.
        page_text: rerankers get each page's text with its image (the trained MLLM page reranker reads OCR);
            the first stages that read text (BM25, the tiny ColBERT, the tiny Qwen3-VL-Embedding) get it either way.
        measures: reported beside the official one.
        rerankers: the families' rows (`MLLMRows`, ...), over every first stage.
    """

    dataset: ViDoReSource | None = None
    first_stages: list[str] = field(default_factory=lambda: ["BM25", "CLIP", "tiny ColBERT"])
    tiny_colbert: TinyColBERTConfig = field(default_factory=TinyColBERTConfig)
    tiny_dense_vlm: TinyDenseVLMConfig = field(default_factory=TinyDenseVLMConfig)
    embedder_folders: dict[str, str] = field(default_factory=dict)
    embedder_options: dict[str, Any] = field(default_factory=dict)
    pool_factor: int = 1
    depth: int = 100
    rerank_depth: int = 5
    batch_size: int = 16
    page_text: bool = True
    measures: list[str] = field(default_factory=lambda: ["nDCG@10", "R@1", "R@5", "R@10"])
    rerankers: list[RerankerRows] = field(default_factory=list)

    BUILT_IN = ("BM25", "CLIP", "tiny ColBERT", "tiny Qwen3-VL-Embedding")

    def __post_init__(self) -> None:
        from mmrerank.retrieval.vlm.presets import PRESETS

        self.dataset = self.dataset or SyntheticViDoRe()
        unknown = [n for n in self.first_stages if n not in self.BUILT_IN and n not in PRESETS]
        if unknown or not self.first_stages:
            raise ValueError(f"vidore.first_stages {self.first_stages}: each must be one of {list(self.BUILT_IN)} "
                             f"or a VLM embedder's hub id {sorted(PRESETS)}")
        if self.depth < 1 or not 1 <= self.rerank_depth <= self.depth:
            raise ValueError(f"vidore: need 1 <= rerank_depth <= depth; got {self.rerank_depth}, {self.depth}")
        for measure in self.measures:
            parse_measure(measure)  # an unknown measure fails here, before anything is built

    def check(self) -> None:
        self.dataset.check("vidore.dataset")
        for family in self.rerankers:
            family.check()

    def title(self) -> str:
        return f"ViDoRe {self.dataset.name}"

    def _search(self, name: str, encoder: CLIPEncoder | None, device: str, progress: bool):
        """The page search of first stage `name` (`.run(queries, pages, depth) -> Run`)."""
        if name == "BM25":
            return BM25PageSearch()
        if name == "CLIP":
            return DensePageSearch(encoder.to(resolve_device(device)), progress=progress)
        if name == "tiny ColBERT":
            return EmbedderPageSearch(ensure_tiny_colbert(self.tiny_colbert, progress=progress), page_text=True,
                                      pool_factor=self.pool_factor, device=device)
        if name == "tiny Qwen3-VL-Embedding":  # reads each page's image and its text, as Qwen3-VL-Embedding can
            embedder = ensure_tiny_dense_vlm(self.tiny_dense_vlm, progress=progress, device=resolve_device(device))
            return EmbedderPageSearch(embedder, page_text=True)
        from mmrerank.retrieval.vlm.presets import load_embedder

        embedder = load_embedder(self.embedder_folders.get(name, name), preset=name, device=resolve_device(device),
                                 **self.embedder_options)
        return EmbedderPageSearch(embedder, pool_factor=self.pool_factor, device=device)

    def run(self, report: Report, device: str = "auto", progress: bool = True,
            encoder: CLIPEncoder | None = None) -> None:
        data = distributed.on_rank_zero_first(self.dataset.load)
        task = ViDoReTask(data, self.page_text)
        pages = PageItems(data.page_ids, data.images, data.page_text)  # text-reading first stages get it either way
        for name in self.first_stages:
            start = time.perf_counter()
            run = self._search(name, encoder, device, progress).run(data.queries, pages, self.depth)
            report.timings[f"vidore {name}"] = time.perf_counter() - start
            context = RerankContext("pages", "vidore", data, self.dataset.describe(), device, progress,
                                    timings=report.timings, first_stage=name, rerank_depth=self.rerank_depth)
            built = {row_over(row, name): reranker for row, reranker in rows(self.rerankers, context).items()}
            evaluate_rows(report, task, run, built, self.rerank_depth, self.measures, self.batch_size, progress,
                          first_stage=name)
