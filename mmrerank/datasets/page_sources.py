"""Where a document-page benchmark's pages come from, chosen in configs by `class_path` (as image-text datasets are):
`SyntheticPages` (built in, rendered once into the cache) or `MMDocIR` (the benchmark's own files).

```yaml
pages:
  dataset:
    class_path: SyntheticPages
    init_args: {seed: 1, documents: 100}
```
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrerank.core.io import require_path
from mmrerank.datasets.synthetic.pages import PagesConfig

if TYPE_CHECKING:  # the readers (pyarrow) load with the data, not with the config
    from mmrerank.datasets.mmdocir import MMDocIRDataset


class PageSource(ABC):
    """A document-page dataset in MMDocIR's form (questions, each against its own document's pages)."""

    @abstractmethod
    def load(self) -> MMDocIRDataset:
        """The questions, pages and judgements."""

    @abstractmethod
    def title(self) -> str:
        """The name a report gives it."""

    def describe(self) -> dict[str, Any]:
        """What it is, for a report's config: the class and its settings."""
        return {"class": type(self).__name__, **self.settings()}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The arguments it was built with."""

    def check(self, key: str = "pages.dataset") -> None:
        """Refuse missing local files (naming `<key>.init_args.<attribute>`) before anything is rendered or trained;
        nothing to check by default."""
        return None


class SyntheticPages(PageSource):
    """The built-in synthetic document pages (MMDocIR's three files, rendered once under the cache).

    Args:
        seed, documents, pages, questions, root: as for `PagesConfig` (generation seed, number of documents,
            (min, max) pages per document, questions per document, cache folder).

    Examples:
        >>> SyntheticPages(seed=1, documents=4).title()
        'synthetic pages (seed 1, 4 documents)'
    """

    def __init__(self, seed: int = 0, documents: int = 60, pages: tuple[int, int] = (6, 10), questions: int = 4,
                 root: str | None = None) -> None:
        self.config = PagesConfig(seed, documents, tuple(pages), questions, root)

    def load(self) -> MMDocIRDataset:
        from mmrerank.datasets.mmdocir import load_mmdocir
        from mmrerank.datasets.synthetic.pages import ensure_pages

        folder = ensure_pages(self.config)
        return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    def title(self) -> str:
        return f"synthetic pages (seed {self.config.seed}, {self.config.documents} documents)"

    def __repr__(self) -> str:
        return f"SyntheticPages({self.config})"


class MMDocIR(PageSource):
    """MMDocIR's own files (Dong et al. 2025).

    Args:
        annotations: `MMDocIR_annotations.jsonl`.
        pages_parquet: `MMDocIR_pages.parquet` (page images and OCR text).
    """

    def __init__(self, annotations: str, pages_parquet: str) -> None:
        self.annotations, self.pages_parquet = annotations, pages_parquet

    def check(self, key: str = "pages.dataset") -> None:
        for name, file in (("annotations", "MMDocIR_annotations.jsonl"), ("pages_parquet", "MMDocIR_pages.parquet")):
            require_path(getattr(self, name), f"{key}.init_args.{name}", "file",
                         f"set --{key}.init_args.{name} to MMDocIR's {file}, or choose --{key}=SyntheticPages")

    def load(self) -> MMDocIRDataset:
        from mmrerank.datasets.mmdocir import load_mmdocir

        return load_mmdocir(Path(self.annotations), Path(self.pages_parquet))

    def settings(self) -> dict[str, Any]:
        return {"annotations": self.annotations, "pages_parquet": self.pages_parquet}

    def title(self) -> str:
        return "MMDocIR pages"

    def __repr__(self) -> str:
        return f"MMDocIR({self.annotations!r}, {self.pages_parquet!r})"
