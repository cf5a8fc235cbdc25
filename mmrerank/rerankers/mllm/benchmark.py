"""The MLLM reranker in a benchmark: `MLLMRows`, the rows of document-page tasks and of the `t2i` direction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmrerank.core.io import cache_root
from mmrerank.core.items import RetrievalTask
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.rows import FitRecipe, RerankContext, RerankerRows


@dataclass
class MLLMRows(RerankerRows):
    """An MLLM yes/no reranker's rows: `<first stage> + MLLM (top <rerank_depth>)` on pages, fused rows per `alpha`, and
    `mllm` on `t2i` image-text tasks.

    Attributes:
        model: the trained reranker: a saved one (`MLLMReranker.save_pretrained` folder) or a Lightning checkpoint
            of `MLLMRerankerModule` (what `mmrerank fit` with a `configs/mllm/` file writes); either brings the base
            model, prompt, OCR setting and the score its loss trains. When set, `base_model`, `adapter`, `score`
            and `use_ocr` are not used. (Was `checkpoint`.)
        fit: or the training that makes `model` (a `FitRecipe`), run by the benchmark into the cache the first
            time.
        base_model: otherwise, the base model (hub name or an existing folder). Default: the tiny offline Qwen2-VL
            under the cache (`$MMRERANK_CACHE/tiny-qwen2-vl`), built there when `build_tiny` and missing: an
            untrained reranker, for smoke tests only. (Was `model`.)
        adapter: a LoRA adapter folder on `base_model` (e.g. `lightonai/MonoQwen2-VL-v0.1`).
        score, use_ocr: as for `MLLMReranker` (`"logit"` after contrastive or pairwise training).
        alpha: on pages, also report `reranker score + alpha * min-max normalised first-stage score` per value.
        directions: the image-text directions to rerank (`t2i`: a caption against candidate images).
        image_size: resize image candidates to this square side first (match the training data's `image_size`).
        batch_size: pairs per forward pass.
    """

    model: str | None = None
    fit: FitRecipe | None = None
    base_model: str | None = None
    build_tiny: bool = True
    adapter: str | None = None
    score: str = "logprob"
    use_ocr: bool = True
    alpha: list[float] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    image_size: int | None = 112
    batch_size: int = 16

    def __post_init__(self) -> None:
        if set(self.directions) - {"t2i"}:
            raise ValueError(f"MLLMRows reranks images for text queries: directions may hold only 't2i', got "
                             f"{self.directions}")
        if self.model and self.fit:
            raise ValueError("MLLMRows takes a trained model or a fit recipe, not both")
        self._reranker = None

    fit_reads_first_stage = False  # it trains on pages: BM25 groups, no dual encoder

    def fit_args(self, export_dir: str, first_stage: str) -> list[str]:
        """The model is saved to `export_dir`, its tiny base built beside it (its tokenizer may be trained on the
        recipe's documents, so a base is not shared between recipes)."""
        return [f"--model.init_args.training.export_dir={export_dir}",
                f"--model.init_args.model_name_or_path={Path(export_dir).parent / 'base'}"]

    def use_trained(self, export_dir: str) -> None:
        self.model, self._reranker = export_dir, None

    def check(self) -> None:
        """`model` is always local; `base_model` and `adapter` when they look like paths (`looks_local`: a hub id
        is left to the loader). The tiny model is built only at the default place, never at a named path."""
        from mmrerank.core.io import looks_local, require_path

        if self.model:
            require_path(self.model, "MLLMRows.model", "saved reranker",
                         "name an MLLMReranker.save_pretrained folder or an MLLMRerankerModule checkpoint, or give a "
                         "fit recipe instead (a base model to start from is `base_model`, called `model` before "
                         "mmrerank 0.2)")
        for key in ("base_model", "adapter"):
            value = getattr(self, key)
            if value and looks_local(value):
                require_path(value, f"MLLMRows.{key}", "folder", "name an existing folder or a hub id (org/name)")

    def reranker(self, device: str = "auto"):
        """The `MLLMReranker`, from `model` or from `base_model` (+ `adapter`), built once."""
        if self._reranker is None:
            self._reranker = self._build(device)
        return self._reranker

    def _build(self, device: str):
        from mmrerank.core.device import resolve_device
        from mmrerank.rerankers.mllm import MLLMReranker
        from mmrerank.rerankers.mllm.module import load_reranker_checkpoint
        from mmrerank.rerankers.mllm.tiny import ensure_tiny_vlm

        if self.model and Path(self.model).is_dir():
            return MLLMReranker.from_pretrained(self.model, device=device, batch_size=self.batch_size)
        if self.model:
            reranker = load_reranker_checkpoint(self.model).to(resolve_device(device)).eval()
            reranker.batch_size = self.batch_size
            return reranker
        base_model = self.base_model or str(cache_root() / "tiny-qwen2-vl")
        if self.build_tiny and not self.base_model:  # a named model is the user's: never built at a (mistyped) path
            ensure_tiny_vlm(base_model)
        return MLLMReranker(base_model, adapter=self.adapter, score=self.score, use_ocr=self.use_ocr,
                            batch_size=self.batch_size, device=device)

    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        if context.kind == "pages":
            reranker = Memoized(self.reranker(context.device))
            name = f"{context.first_stage} + MLLM (top {context.rerank_depth})"
            rows: dict[str, Reranker] = {name: reranker}
            for alpha in self.alpha:  # Memoized: the fused rows reuse the reranker's scores
                rows[f"{context.first_stage} + MLLM (top {context.rerank_depth}, alpha {alpha:g})"] = Fused(
                    reranker, alpha, "minmax")
            return rows
        if context.kind == "image-text" and context.direction in self.directions:
            reranker = self.reranker(context.device)
            return {"mllm": ResizedImages(reranker, self.image_size) if self.image_size else reranker}
        return {}


class ResizedImages(Reranker):
    """Resizes PIL image candidates to a square side before the wrapped reranker scores them."""

    def __init__(self, reranker: Reranker, size: int) -> None:
        self.reranker, self.size = reranker, size

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]):
        return self.reranker.score(queries, [self._resize(c) for c in candidates])

    def score_rows(self, task: RetrievalTask, query_rows, candidate_rows, first_stage):
        """Each corpus image resized once, and passed as one object to every pair that has it (so the reranker
        recognises it by identity)."""
        resized = {int(d): self._resize(task.corpus[int(d)]) for d in candidate_rows.unique()}
        return self.reranker.score([task.queries[int(i)] for i in query_rows],
                                   [resized[int(d)] for d in candidate_rows])

    def _resize(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), Image.BICUBIC)
