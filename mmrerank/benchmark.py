"""`mmrerank benchmark`: one command from a dataset to a report, the embedded default included.

With no arguments it benchmarks the built-in synthetic test split (1,000 images, 5,000 captions) with the
tiny first stage, training that first stage on the synthetic train split the first time and reusing the
saved weights afterwards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.revisited import RevisitedDataset, load_revisited
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.datasets.synthetic.instances import InstanceConfig, load_instances
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.evaluation import DEFAULT_MEASURES, Report, evaluate_instances, evaluate_task
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.superglobal.extractor import PoolingConfig, SuperGlobalExtractor
from mmrerank.retrieval.clip import resolve_device
from mmrerank.retrieval.first_stage import FirstStage as FirstStageConfig

DATASETS = ("synthetic", "coco", "flickr30k", "karpathy", "table")


@dataclass
class DatasetConfig:
    """Which image-text dataset to benchmark.

    Attributes:
        name: `synthetic` (built in), `flickr30k` (hub `nlphuji/flickr30k`), `coco` (hub `yerevann/coco-karpathy`
            captions + images under `image_root`), `karpathy` (a local `dataset_*.json` + `image_root`), or
            `table` (a local parquet file / imagefolder at `path`).
        split: `train`, `val` or `test`.
        synthetic: size and seed of the synthetic benchmark.
        karpathy_json, image_root, path: local files for the non-hub sources.
        skip_corrupt: drop unreadable images (with a warning) instead of stopping at the first one.
    """

    name: str = "synthetic"
    split: str = "test"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    karpathy_json: str | None = None
    image_root: str | None = None
    path: str | None = None
    skip_corrupt: bool = False

    def load(self) -> ImageTextDataset:
        if self.name == "synthetic":
            return load_synthetic(self.split, self.synthetic)
        from mmrerank.core.items import loaders  # datasets / pyarrow: only for real data

        if self.name == "flickr30k":
            return loaders.load_hub_flickr30k(self.split, skip_corrupt=self.skip_corrupt)
        if self.name == "coco":
            return loaders.load_hub_coco(_required(self.image_root, "image_root"), self.split,
                                         skip_corrupt=self.skip_corrupt)
        if self.name == "karpathy":
            return loaders.load_karpathy_json(_required(self.karpathy_json, "karpathy_json"),
                                              _required(self.image_root, "image_root"), self.split,
                                              skip_corrupt=self.skip_corrupt)
        if self.name == "table":
            return loaders.load_captions_table(_required(self.path, "path"), skip_corrupt=self.skip_corrupt)
        raise ValueError(f"unknown dataset {self.name!r}; choose one of {DATASETS}")


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"this dataset needs `{name}`")
    return value


@dataclass
class SuperGlobalConfig:
    """SuperGlobal rows of a benchmark: image-to-image retrieval under the revisited protocol.

    Attributes:
        dataset: `synthetic` (built in, see `InstanceConfig`), `roxford5k` or `rparis6k` (files under `root`).
        root: the folder holding `gnd_<dataset>.pkl` and `jpg/` (real benchmarks).
        instances: size and seed of the synthetic image-to-image benchmark.
        backbone: `first_stage` (this benchmark's first-stage CNN image tower) or a timm model name.
        pretrained: timm pretrained weights for a named backbone (needs the network once).
        head_dim, cvnet_checkpoint: a linear head per scale and CVNet-style global-model weights from a local file
            (the paper's R101 setting: `backbone: resnet101`, `head_dim: 2048`).
        pooling: SuperGlobal's pooling; the `GeM` row uses single-scale GeM (p = 3) on the same backbone.
        top_m, k, beta: the reranking settings.
    """

    dataset: str = "synthetic"
    root: str | None = None
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    backbone: str = "first_stage"
    pretrained: bool = False
    head_dim: int | None = None
    cvnet_checkpoint: str | None = None
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    top_m: int = 400
    k: int = 9
    beta: float = 0.15

    def load(self) -> RevisitedDataset:
        if self.dataset == "synthetic":
            return load_instances(self.instances)
        return load_revisited(_required(self.root, "superglobal.root"), self.dataset)

    def run(self, report: Report, first_stage: FirstStageConfig, device: str = "auto", progress: bool = True) -> None:
        """Add the rows GeM, SuperGlobal pooling, and SuperGlobal pooling + reranking to `report`."""
        data = self.load()
        queries = [data.query_image(i) for i in range(data.num_queries)]
        database = [data.db_image(j) for j in range(data.num_db)]
        backbone, checkpoint = self.backbone, None
        if backbone == "first_stage":
            first_stage.build(progress=False)  # trained first when missing
            backbone, checkpoint = f"first_stage:{first_stage.model_name}", str(first_stage.folder())
        for system, pooling in (("GeM", PoolingConfig.plain_gem()), ("SuperGlobal pooling", self.pooling)):
            extractor = SuperGlobalExtractor(backbone, pooling, self.head_dim, self.pretrained, checkpoint,
                                             cvnet_checkpoint=self.cvnet_checkpoint).to(resolve_device(device))
            start = time.perf_counter()
            query_desc = extractor.extract(queries, progress=progress)
            db_desc = extractor.extract(database, progress=progress)
            report.timings[f"i2i {system} descriptors"] = time.perf_counter() - start
            evaluate_instances(report, data, query_desc, db_desc, system)
        evaluate_instances(report, data, query_desc, db_desc, "SuperGlobal pooling + rerank",
                           {"top_m": self.top_m, "k": self.k, "beta": self.beta})


@dataclass
class EDJEBenchmarkConfig:
    """EDJE rows of a benchmark: rerank the first stage's top `rerank_depth` with a trained EDJE model.

    Attributes:
        model: the exported EDJE folder (`export_dir` of `mmrerank fit --config configs/edje/synthetic.yaml`).
        store: the corpus's token store; default `<model>/tokens/<dataset>-<split>`, written by `precompute` first
            when missing (and resumed when a run was interrupted).
        alpha: final score = logit + alpha * first-stage score (0 = the reranker alone). With a value other than
            0 both rows are reported: `edje` and `edje + alpha`.
        dtype, shard_size: of the token store.
    """

    model: str = "checkpoints/edje/synthetic"
    store: str | None = None
    alpha: float = 0.0
    dtype: str = "bfloat16"
    shard_size: int = 1024

    def rerankers(self, data: ImageTextDataset, dataset: DatasetConfig, device: str = "auto",
                  progress: bool = True) -> dict:
        """The reranker rows for `data`, its token store written first if needed."""
        from mmrerank.rerankers.edje import EDJE, EDJEReranker, precompute_images

        if not (Path(self.model) / "config.json").is_file():
            raise FileNotFoundError(f"no EDJE model at {self.model}; train one first: "
                                    "mmrerank fit --config configs/edje/synthetic.yaml")
        model = EDJE.from_pretrained(self.model)
        store = self.store or default_store(self.model, dataset)
        tokens = precompute_images(model, data.images, store, self.dtype, self.shard_size, device=device,
                                   progress=progress)
        rows = {"edje": EDJEReranker(model, tokens, 0.0, device)}
        if self.alpha:
            rows[f"edje + {self.alpha:g} x first stage"] = EDJEReranker(model, tokens, self.alpha, device)
        return rows


def default_store(model: str, dataset: DatasetConfig) -> str:
    """Where a dataset split's EDJE token store goes by default: `<model>/tokens/<dataset>-<split>`."""
    return str(Path(model) / "tokens" / f"{dataset.name}-{dataset.split}")


def precompute(model: str, dataset: DatasetConfig | None = None, store: str | None = None, dtype: str = "bfloat16",
               shard_size: int = 1024, batch_size: int = 128, device: str = "auto", overwrite: bool = False,
               progress: bool = True) -> str:
    """Write an EDJE token store: every image of a dataset through the frozen vision source and the adapter.

    Args:
        model: the exported EDJE folder.
        dataset: whose images (default: the synthetic test split).
        store: the store's folder (default `<model>/tokens/<dataset>-<split>`).
        dtype: `bfloat16` or `float16` (2 bytes per value: m x d x 2 bytes per image).
        shard_size: images per shard, the unit of resumption: an interrupted run continues from the last
            finished shard.
        batch_size: images per forward pass.
        overwrite: start afresh instead of resuming.
    """
    from mmrerank.rerankers.edje import EDJE, precompute_images

    dataset = dataset or DatasetConfig()
    store = store or default_store(model, dataset)
    tokens = precompute_images(EDJE.from_pretrained(model), dataset.load().images, store, dtype, shard_size,
                               batch_size, device, overwrite, progress)
    footprint = tokens.footprint()
    print(f"{tokens}: {tokens.bytes_per_image:,} B per image, {footprint['data'] + footprint['overhead']:,} B in all "
          f"({100 * footprint['overhead'] / max(footprint['data'], 1):.3f} % overhead)")
    return store


@dataclass
class MLLMConfig:
    """MLLM yes/no reranker rows of a benchmark: document pages (BM25, BM25 + MLLM) and, optionally, the
    image-text `t2i` direction (an `mllm` row beside the first stage).

    Attributes:
        checkpoint: a Lightning checkpoint of `MLLMRerankerModule` (what `mmrerank fit` with a `configs/mllm/`
            file writes); it brings the base model, prompt, OCR setting and the score its loss trains. When set,
            `model`, `adapter`, `score` and `use_ocr` are not used.
        model: otherwise, the base model (hub name or folder; the tiny offline Qwen2-VL is built there when
            `build_tiny` and the folder is missing, an untrained reranker useful for smoke tests only).
        adapter: a LoRA adapter folder on `model` (e.g. `lightonai/MonoQwen2-VL-v0.1`).
        score, use_ocr: as for `MLLMReranker` (`"logit"` after contrastive or pairwise training).
        pages: the synthetic document pages to rerank; unused when `annotations` is set; None (without
            `annotations`): no page rows.
        annotations, pages_parquet: MMDocIR's own files (`MMDocIR_annotations.jsonl`, `MMDocIR_pages.parquet`).
        depth: BM25 pages reranked per question.
        alpha: also report `reranker score + alpha * min-max normalised BM25` for these weights (0: none).
        image_text: also rerank the `t2i` direction's top `rerank_depth` images (`mllm` row).
        image_size: resize image candidates to this square side first (match the training data's `image_size`).
        batch_size: pairs per forward pass.
    """

    checkpoint: str | None = None
    model: str = "checkpoints/tiny-qwen2-vl"
    build_tiny: bool = True
    adapter: str | None = None
    score: str = "logprob"
    use_ocr: bool = True
    pages: PagesConfig | None = field(default_factory=lambda: PagesConfig(seed=1, documents=100))
    annotations: str | None = None
    pages_parquet: str | None = None
    depth: int = 5
    alpha: list[float] = field(default_factory=list)
    image_text: bool = False
    image_size: int | None = 112
    batch_size: int = 16

    def build(self, device: str = "auto"):
        """The `MLLMReranker`, from `checkpoint` or from `model` (+ `adapter`)."""
        from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm
        from mmrerank.rerankers.mllm.module import MLLMRerankerModule

        if self.checkpoint:
            module = MLLMRerankerModule.load_from_checkpoint(self.checkpoint, map_location="cpu")
            reranker = module.reranker.to(resolve_device(device)).eval()
            reranker.batch_size = self.batch_size
            return reranker
        if self.build_tiny and not Path(self.model).exists():
            build_tiny_vlm(self.model)
        return MLLMReranker(self.model, adapter=self.adapter, score=self.score, use_ocr=self.use_ocr,
                            batch_size=self.batch_size, device=device)

    def load_pages(self):
        from mmrerank.datasets.mmdocir import load_mmdocir

        if self.annotations:
            return load_mmdocir(self.annotations, _required(self.pages_parquet, "mllm.pages_parquet"))
        folder = ensure_pages(self.pages)
        return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")

    def name(self) -> str:
        """How the report names the page set."""
        if self.annotations:
            return "MMDocIR pages"
        if self.pages is None:
            return "MLLM"
        return f"synthetic pages (seed {self.pages.seed}, {self.pages.documents} documents)"

    def run_pages(self, report: Report, reranker, progress: bool = True) -> None:
        """Add the rows BM25, BM25 + MLLM (top `depth`) and, per `alpha`, the fused row to `report`."""
        from mmrerank.evaluation import bm25_page_scores, evaluate_pages, fuse_first_stage, rerank_pages

        if self.pages is None and not self.annotations:
            return
        data = self.load_pages()
        start = time.perf_counter()
        bm25 = bm25_page_scores(data)
        report.timings["pages BM25"] = time.perf_counter() - start
        evaluate_pages(report, data, bm25, "BM25")
        start = time.perf_counter()
        scores = rerank_pages(reranker, data, bm25, self.depth, self.batch_size, progress)
        report.timings["pages MLLM"] = time.perf_counter() - start
        evaluate_pages(report, data, scores, f"BM25 + MLLM (top {self.depth})")
        for alpha in self.alpha:  # fusion reuses the reranker's scores
            fused = [fuse_first_stage(s, b, self.depth, alpha) for s, b in zip(scores, bm25)]
            evaluate_pages(report, data, fused, f"BM25 + MLLM (top {self.depth}, alpha {alpha:g})")

    def image_text_reranker(self, reranker) -> Reranker:
        """The reranker for `t2i` candidates (images), resized like the training images when `image_size`."""
        return _ResizedImages(reranker, self.image_size) if self.image_size else reranker


class _ResizedImages(Reranker):
    """Resizes PIL image candidates to a square side before the wrapped reranker scores them."""

    def __init__(self, reranker: Reranker, size: int) -> None:
        self.reranker, self.size = reranker, size

    def score(self, queries, candidates):
        return self.reranker.score(queries, [c.resize((self.size, self.size), Image.BICUBIC) for c in candidates])


def benchmark(dataset: DatasetConfig | None = None, first_stage: FirstStageConfig | None = None,
              superglobal: SuperGlobalConfig | None = None, edje: EDJEBenchmarkConfig | None = None,
              mllm: MLLMConfig | None = None, directions: list[str] | None = None, depth: int = 100,
              rerank_depth: int = 16,
              measures: list[str] | None = None, output_dir: str | None = None, device: str = "auto",
              batch_size: int = 256, progress: bool = True) -> Report:
    """Run the benchmark and write `report.json`, `report.md` and `success_at_k.png` to `output_dir`.

    Args:
        dataset: the image-text dataset (default: the synthetic test split).
        first_stage: the dual encoder that retrieves the top `depth` candidates.
        superglobal: also report SuperGlobal image-to-image rows (off by default).
        edje: also report EDJE reranking rows (off by default).
        mllm: also report MLLM yes/no reranker rows: document pages, and `t2i` if `mllm.image_text` (off by default).
        directions: `t2i` and/or `i2t` (an empty list skips image-text retrieval).
        depth: candidates retrieved per query (the run's K).
        rerank_depth: candidates each reranker rescores.
        measures: ir-measures-style names, reported per direction.
        output_dir: where the report goes (default `outputs/benchmark/<dataset name>`).
        device: `auto` (GPU when present), `cpu` or `cuda`.
    """
    dataset = dataset or DatasetConfig()
    first_stage = (first_stage or FirstStageConfig()).trained_on(dataset.synthetic)
    directions = ["t2i", "i2t"] if directions is None else directions
    measures = measures or list(DEFAULT_MEASURES)
    output_dir = output_dir or f"outputs/benchmark/{dataset.name}"
    config = {"dataset": asdict(dataset), "first_stage": asdict(first_stage),
              "superglobal": asdict(superglobal) if superglobal else None,
              "edje": asdict(edje) if edje else None, "mllm": asdict(mllm) if mllm else None,
              "directions": directions,
              "depth": depth, "rerank_depth": rerank_depth, "measures": measures}
    parts = [f"{dataset.name} {dataset.split}"] if directions else []
    parts += [f"{superglobal.dataset} image-to-image"] if superglobal else []
    parts += [mllm.name()] if mllm else []
    uses_first_stage = bool(directions) or superglobal is not None  # a pages-only benchmark needs no dual encoder
    title = f"{', '.join(parts)}: first stage {first_stage.model_name}" if uses_first_stage else ", ".join(parts)
    report = Report(title, config=config)

    if uses_first_stage:
        start = time.perf_counter()
        encoder = first_stage.build(progress).to(resolve_device(device))
        report.timings["first stage ready"] = time.perf_counter() - start
    mllm_reranker = mllm.build(device) if mllm is not None else None

    if directions:
        start = time.perf_counter()
        data = dataset.load()
        report.timings["data"] = time.perf_counter() - start
        start = time.perf_counter()
        image_emb = encoder.encode(data.images, batch_size, progress)
        text_emb = encoder.encode(data.captions, batch_size, progress)
        report.timings["encoding"] = time.perf_counter() - start
        report.config["sizes"] = {"images": len(data.images), "captions": len(data.captions)}
        rerankers = {}
        if edje is not None:
            start = time.perf_counter()
            rerankers.update(edje.rerankers(data, dataset, device, progress))
            report.timings["edje token store"] = time.perf_counter() - start
        for direction in directions:
            task = data.task(direction)
            queries, corpus = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
            direction_rerankers = dict(rerankers)
            if mllm_reranker is not None and mllm.image_text and direction == "t2i":
                direction_rerankers["mllm"] = mllm.image_text_reranker(mllm_reranker)
            evaluate_task(report, task, queries, corpus, direction_rerankers, depth, rerank_depth, measures,
                          batch_size, progress)
    if superglobal is not None:
        superglobal.run(report, first_stage, device, progress)
    if mllm_reranker is not None:
        mllm.run_pages(report, mllm_reranker, progress)
    report.config["output_dir"] = output_dir
    report.save(output_dir)
    return report
