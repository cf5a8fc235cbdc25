"""EDJE in a benchmark: `EDJERows` (the `edje` and fused rows of image-text tasks) and `precompute` (the
`mmrerank precompute` command: a dataset's images into a token store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrerank.core import distributed
from mmrerank.core.deprecation import renamed_arguments, warn_renamed
from mmrerank.datasets.sources import ImageTextSource, Synthetic
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.edje.model import EDJE
from mmrerank.rerankers.edje.reranker import EDJEReranker, precompute_images
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.rows import FitRecipe, RerankContext, RerankerRows


def default_store(model: str | Path, source: dict) -> str:
    """Where a dataset split's token store goes by default: `<model>/tokens/<dataset>-<split>`."""
    return str(Path(model) / "tokens" / f"{source['name']}-{source['split']}")


TRAIN_ONE = ("train one first (mmrerank fit --config configs/edje/synthetic.yaml) or give EDJERows a fit recipe "
             "instead of a model")


@dataclass
class EDJERows(RerankerRows):
    """Rerank image-text tasks (both directions) with an exported EDJE model.

    Attributes:
        model: the exported EDJE folder (`export_dir` of `mmrerank fit --config configs/edje/synthetic.yaml`).
        fit: or the training that makes it (a `FitRecipe`), run by the benchmark into the cache the first time.
        store: the corpus's token store; default `<model>/tokens/<dataset>-<split>`, written by `precompute` first
            when missing (and resumed when a run was interrupted).
        alpha: also report `logit + alpha * first-stage score` per value (row `edje + <alpha> x first stage`);
            empty: no fused row. (A single number is read as a one-value list, with a warning.)
        store_dtype, shard_size: of the token store (`store_dtype`: how the tokens are kept on disk, `bfloat16` or
            `float16`; `bf16` is the compute's). (Was `dtype`.)
        bf16: score under bfloat16 autocast (`EDJEReranker.bf16`).
    """

    model: str | None = None
    fit: FitRecipe | None = None
    store: str | None = None
    alpha: list[float] = field(default_factory=list)
    store_dtype: str = "bfloat16"
    shard_size: int = 1024
    bf16: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.alpha, (int, float)):  # the float of before: one fused row, or none for 0
            warn_renamed("EDJERows.alpha: <number>", "EDJERows.alpha: [<number>] (a list, as MLLMRows.alpha)")
            self.alpha = [float(self.alpha)] if self.alpha else []
        if (self.model is None) == (self.fit is None):
            raise ValueError("EDJERows needs exactly one of model (an exported EDJE folder) and fit (a recipe)")
        self._built: tuple[int, dict[str, Reranker]] | None = None

    def fit_args(self, export_dir: str, first_stage: str) -> list[str]:
        model = "--model.init_args."
        return [f"{model}training.export_dir={export_dir}",
                f"{model}config.vision_checkpoint={first_stage}", f"{model}config.text_checkpoint={first_stage}",
                f"--data.init_args.first_stage.checkpoint={first_stage}"]

    def use_trained(self, export_dir: str) -> None:
        self.model, self._built = export_dir, None

    def check(self) -> None:
        from mmrerank.core.io import require_path

        if self.model and not (require_path(self.model, "EDJERows.model", "EDJE folder", TRAIN_ONE) /
                               "config.json").is_file():
            raise FileNotFoundError(f"EDJERows.model: {self.model} holds no config.json, so no exported EDJE model; "
                                    f"{TRAIN_ONE}")

    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        if context.kind != "image-text":
            return {}
        if self._built is None or self._built[0] != id(context.data):  # one token store for both directions
            self._built = (id(context.data), self._build(context))
        return dict(self._built[1])

    def _build(self, context: RerankContext) -> dict[str, Reranker]:
        if self.model is None:
            raise ValueError("EDJERows.fit has not been run: mmrerank benchmark trains it first")
        if not (Path(self.model) / "config.json").is_file():
            raise FileNotFoundError(f"no EDJE model at {self.model}; {TRAIN_ONE}")
        start = time.perf_counter()
        model = EDJE.from_pretrained(self.model)
        store = self.store or default_store(self.model, context.source)
        tokens = precompute_images(model, context.data.images, store, self.store_dtype, self.shard_size,
                                   device=context.device, progress=context.progress)
        context.timings["edje token store"] = time.perf_counter() - start
        reranker = Memoized(EDJEReranker(model, tokens, context.device, self.bf16))
        rows: dict[str, Reranker] = {"edje": reranker}
        for alpha in self.alpha:  # Memoized: the fused rows reuse the reranker's scores
            rows[f"edje + {alpha:g} x first stage"] = Fused(reranker, alpha)
        return rows


@renamed_arguments(dtype="store_dtype")
def precompute(model: str, dataset: ImageTextSource | None = None, store: str | None = None,
               store_dtype: str = "bfloat16", shard_size: int = 1024, batch_size: int = 128, device: str = "auto",
               overwrite: bool = False, progress: bool = True) -> str:
    """Write an EDJE token store: every image of a dataset through the frozen vision source and the adapter.

    Args:
        model: the exported EDJE folder.
        dataset: whose images (default: the synthetic test split).
        store: the store's folder (default `<model>/tokens/<dataset>-<split>`).
        store_dtype: how the tokens are kept, `bfloat16` or `float16` (2 bytes per value: m x d x 2 bytes per
            image). (Was `dtype`: `--dtype` still works, with a warning.)
        shard_size: images per shard, the unit of resumption: an interrupted run continues from the last
            finished shard.
        batch_size: images per forward pass.
        overwrite: start afresh instead of resuming.

    Under `torchrun --nproc_per_node N` every rank encodes a share of the shards and rank 0 writes them: the store
    is the one a single process writes.
    """
    dataset = dataset or Synthetic()
    store = store or default_store(model, {"name": dataset.name, "split": dataset.split})
    images = distributed.on_rank_zero_first(dataset.load).images  # one rank renders a missing synthetic split
    tokens = precompute_images(EDJE.from_pretrained(model), images, store, store_dtype, shard_size, batch_size, device,
                               overwrite, progress)
    if not distributed.is_rank_zero():
        return store
    footprint = tokens.footprint()
    print(f"{tokens}: {tokens.bytes_per_image:,} B per image, {footprint['data'] + footprint['overhead']:,} B in all "
          f"({100 * footprint['overhead'] / max(footprint['data'], 1):.3f} % overhead)")
    return store
