"""How a benchmark gets a family's reranker rows: a `RerankerRows`, named in configs by jsonargparse `class_path`.

```yaml
image_text:
  rerankers:
    - class_path: EDJERows            # every family's rows, by short name (`rerankers/family_rows.py`)
      init_args: {model: checkpoints/edje/synthetic, alpha: [20]}
```

A new family is one folder (model, `Reranker`, LightningModule, data module, rows) plus a YAML file; the
benchmark and the evaluation loop never name the families. (`RerankerRows` was `RerankerSpec`, in `rerankers/spec.py`.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from mmrerank.rerankers.base import Reranker


@dataclass
class RerankContext:
    """What a spec may need to build its rerankers for one task.

    Attributes:
        kind: `image-text`, `pages` or `image-to-image`.
        direction: `t2i`, `i2t`, `pages` or `i2i`.
        data: the loaded dataset (an `ImageTextDataset`, `MMDocIRDataset` or `RevisitedDataset`).
        source: the dataset's description (`ImageTextSource.describe()`): names a spec's caches (token stores).
        features: precomputed inputs a family reads instead of items (SuperGlobal: descriptors).
        timings: where a spec records its own preparation time (seconds by step).
        first_stage: the first stage's row name (fused rows name it); rerank_depth: how many candidates are
            reranked.
    """

    kind: str
    direction: str
    data: Any
    source: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    progress: bool = True
    features: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    first_stage: str = "first stage"
    rerank_depth: int = 0


@dataclass
class FitRecipe:
    """How a benchmark trains a spec's model when none is given: `mmrerank fit --config <config> <args...>`, the
    command a user would run (a path, or a packaged config such as `edje/synthetic.yaml`)."""

    config: str
    args: list[str] = field(default_factory=list)


class RerankerRows(ABC):
    """A family's benchmark rows: `rows(context)` gives `{system name: Reranker}` for the tasks it supports
    (an empty dict for the others).

    A spec whose model is to be trained by the benchmark holds a `fit` recipe; the benchmark runs it once into a
    cache folder (`fit_args` point it there and at the benchmark's first stage) and hands the folder to `use_trained`.
    """

    fit: FitRecipe | None = None
    fit_reads_first_stage = True  # False: the recipe needs no first stage, which then neither is built nor keys it

    def fit_args(self, export_dir: str, first_stage: str) -> list[str]:
        """Arguments added to `fit.args`: save the model to `export_dir`, read the first stage saved at
        `first_stage` (a `save_pretrained` folder)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained by the benchmark")

    def use_trained(self, export_dir: str) -> None:
        """Read the model `fit` saved to `export_dir`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained by the benchmark")

    def check(self) -> None:
        """Refuse (naming the argument, the path and the fix) any local file or folder the spec names that does not
        exist; the benchmark calls this before it renders or trains anything. Nothing to check by default."""
        return None

    @abstractmethod
    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        """The rerankers to report on this task, by row name."""

    def row_names(self) -> list[str] | None:
        """The row names `rows` can give, known before anything is built (None: only `rows` knows). A benchmark
        checks a config's `paper:` rows against them before any work."""
        return None
