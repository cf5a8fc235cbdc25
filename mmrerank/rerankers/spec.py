"""How a benchmark gets a family's reranker rows: a `RerankerSpec`, named in configs by jsonargparse `class_path`.

```yaml
image_text:
  rerankers:
    - class_path: EDJERows            # every family exports its spec from `mmrerank.rerankers`
      init_args: {model: checkpoints/edje/synthetic, alpha: 20}
```

A new family is one folder (model, `Reranker`, LightningModule, data module, spec) plus a YAML file; the
benchmark and the evaluation loop never name the families.
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
        first_stage: the first stage's row name (fused rows name it); depth: how many candidates are reranked.
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
    depth: int = 0


class RerankerSpec(ABC):
    """A family's benchmark rows: `rows(context)` gives `{system name: Reranker}` for the tasks it supports
    (an empty dict for the others)."""

    @abstractmethod
    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        """The rerankers to report on this task, by row name."""
