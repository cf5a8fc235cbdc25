"""The image-text benchmarks by name: each is a class, chosen in configs by jsonargparse `class_path`.

```yaml
dataset:
  class_path: Flickr30k      # short names resolve: every source is exported from `mmrerank.datasets`
  init_args: {split: test}
```

A new image-text dataset is one subclass of `ImageTextSource` (anywhere importable) plus a YAML file; nothing in
the benchmark or the training code names the datasets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, is_dataclass
from typing import Any

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic

SPLITS = ("train", "val", "test")


class ImageTextSource(ABC):
    """An image-text dataset split, loadable on demand.

    Args:
        split: `train`, `val` or `test` (checked here, before anything is loaded).
    """

    name = "image-text"

    def __init__(self, split: str = "test") -> None:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; choose one of {SPLITS}")
        self.split = split

    @abstractmethod
    def load(self) -> ImageTextDataset:
        """The split's images, captions and judgements."""

    def describe(self) -> dict[str, Any]:
        """Everything that identifies the data (reports and cache keys)."""
        fields = {k: asdict(v) if is_dataclass(v) else v for k, v in vars(self).items()}
        return {"class": type(self).__name__, "name": self.name, **fields}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Synthetic(ImageTextSource):
    """The built-in synthetic benchmark (rendered scenes with exact scene graphs; see `SyntheticConfig`)."""

    name = "synthetic"

    def __init__(self, split: str = "test", synthetic: SyntheticConfig | None = None) -> None:
        super().__init__(split)
        self.synthetic = synthetic or SyntheticConfig()

    def load(self) -> ImageTextDataset:
        return load_synthetic(self.split, self.synthetic)


class Flickr30k(ImageTextSource):
    """Flickr30k (Karpathy splits) from the hub dataset `nlphuji/flickr30k`.

    Args:
        repo, revision: the hub repository and revision; the default branch `refs/convert/parquet` is the hub's
            parquet copy, which current `datasets` reads (it refuses the repository's loading script).
    """

    name = "flickr30k"

    def __init__(self, split: str = "test", repo: str = "nlphuji/flickr30k",
                 revision: str | None = "refs/convert/parquet", skip_corrupt: bool = False) -> None:
        super().__init__(split)
        self.repo, self.revision, self.skip_corrupt = repo, revision, skip_corrupt

    def load(self) -> ImageTextDataset:
        from mmrerank.datasets import loaders  # datasets / pyarrow: only for real data

        return loaders.load_hub_flickr30k(self.split, repo=self.repo, revision=self.revision,
                                          skip_corrupt=self.skip_corrupt)


class COCO(ImageTextSource):
    """COCO Karpathy splits: captions from the hub (`yerevann/coco-karpathy`), images from a local folder.

    Args:
        image_root: the folder holding `train2014/` and `val2014/`.
    """

    name = "coco"

    def __init__(self, image_root: str, split: str = "test", skip_corrupt: bool = False) -> None:
        super().__init__(split)
        self.image_root, self.skip_corrupt = image_root, skip_corrupt

    def load(self) -> ImageTextDataset:
        from mmrerank.datasets import loaders

        return loaders.load_hub_coco(self.image_root, self.split, skip_corrupt=self.skip_corrupt)


class Karpathy(ImageTextSource):
    """A local Karpathy `dataset_*.json` (COCO, Flickr8k / 30k) with its images under `image_root`."""

    name = "karpathy"

    def __init__(self, karpathy_json: str, image_root: str, split: str = "test", skip_corrupt: bool = False) -> None:
        super().__init__(split)
        self.karpathy_json, self.image_root, self.skip_corrupt = karpathy_json, image_root, skip_corrupt

    def load(self) -> ImageTextDataset:
        from mmrerank.datasets import loaders

        return loaders.load_karpathy_json(self.karpathy_json, self.image_root, self.split,
                                          skip_corrupt=self.skip_corrupt)


class CaptionTable(ImageTextSource):
    """Your own captioned images: a parquet file or an imagefolder directory at `path`, one row per image.

    Columns (see `loaders.load_captions_table`):

    - `image_column` (default `image`): the image, as an HF Image feature, encoded bytes, or a file path (relative
      to the parquet file's folder). An imagefolder directory gives it from its files.
    - `caption_column` (default: the first of `captions`, `caption`, `text` there): one caption (a string) or
      several (a list of strings) per image.
    - `caption_id_column` (optional): the captions' ids, one per caption (a string, or a list beside a list of
      captions), as a run file of caption queries names them. Default: `"{image id}#{j}"`.
    - `id_column` (optional): the image id. Default: the image's file name without extension (`cat.jpg` -> `cat`),
      which is how a run file over an image folder names it; ids must be unique.
    - `split_column` (default `split`; used when there): the row's split (`train`, `val` / `validation`, `test`).

    Splits: rows of `split_column`, or the split subfolders of an imagefolder directory. Data without either is one
    split, the `split` this source was made with: asking it for another (`with_split`) is an error, so a fit on
    `train` and a benchmark on `test` never read the same images unknowingly.

    Args:
        path: the parquet file or imagefolder directory.
        split: the split to load.
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        id_column, caption_column, caption_id_column, image_column, split_column: the columns above.
    """

    name = "table"

    def __init__(self, path: str, split: str = "test", skip_corrupt: bool = False, id_column: str | None = None,
                 caption_column: str | None = None, image_column: str = "image", split_column: str = "split",
                 caption_id_column: str | None = None) -> None:
        super().__init__(split)
        self.path, self.skip_corrupt = path, skip_corrupt
        self.id_column, self.caption_column, self.image_column = id_column, caption_column, image_column
        self.split_column, self.holds, self.caption_id_column = split_column, split, caption_id_column

    def load(self) -> ImageTextDataset:
        from mmrerank.datasets import loaders

        return loaders.load_captions_table(self.path, image_column=self.image_column,
                                           captions_column=self.caption_column, id_column=self.id_column,
                                           caption_ids_column=self.caption_id_column,
                                           skip_corrupt=self.skip_corrupt, split=self.split,
                                           split_column=self.split_column, holds=self.holds)
