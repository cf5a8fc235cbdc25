"""The MLLM reranker's training data: groups of (query, [positive, hard negatives...]) over document pages and
over synthetic images."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmrerank.core.deprecation import nest_renamed
from mmrerank.core.io import atomic_write_json, cache_root, key_digest
from mmrerank.core.validation import batches_per_epoch, fit_val_check_interval
from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.sources import ImageTextSource
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.retrieval.first_stage import FirstStage


class PageGroups(Dataset):
    """Item q: (question q, [its gold page, n hard negative pages]) as `Page`s (image + OCR text).

    Hard negatives are the non-gold pages of the question's own document that the BM25 first stage ranks highest
    (mined once, when the dataset is built).
    """

    def __init__(self, dataset, negatives: int) -> None:
        from mmrerank.retrieval.pages import bm25_page_scores

        self.dataset = dataset
        self.groups: list[tuple[int, list[int]]] = []  # (question, [page rows]), positive first
        for q, (question, scores) in enumerate(zip(dataset.annotations.questions, bm25_page_scores(dataset))):
            pages = dataset.candidates(q)
            gold = set(question.gold_pages)
            ranked = [int(p) for p in torch.sort(scores, descending=True, stable=True).indices if int(p) not in gold]
            if len(ranked) >= negatives:
                self.groups.append((q, [pages[question.gold_pages[0]], *(pages[p] for p in ranked[:negatives])]))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        from mmrerank.rerankers.mllm import Page

        q, rows = self.groups[i]
        return self.dataset.questions[q], [Page(self.dataset.images[r], self.dataset.ocr_text[r]) for r in rows]


class GroupsDataModule(L.LightningDataModule):
    """Base of the MLLM data modules: `train_set` / `val_set` of (query, [positive, negatives...]) groups, batched
    by `collate_groups` (subclasses set the sets in `setup` and `batch_size` / `num_workers` in `__init__`)."""

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        from mmrerank.rerankers.mllm.module import collate_groups

        if shuffle and self.trainer is not None:  # a config's interval may not fit a small dataset's epoch
            fit_val_check_interval(self.trainer, batches_per_epoch(self.trainer, len(data), self.batch_size, True))
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_groups, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class PageGroupsDataModule(GroupsDataModule):
    """Groups of (question, gold page + BM25 hard negatives) from the synthetic document pages (MMDocIR format).

    Args:
        train, val: the synthetic page sets (different seeds give disjoint documents).
        negatives: hard negatives per question.
        batch_size: groups per batch.
    """

    def __init__(self, train: PagesConfig | None = None, val: PagesConfig | None = None, negatives: int = 3,
                 batch_size: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        self.train_config = train or PagesConfig(seed=0)
        self.val_config = val or PagesConfig(seed=1, documents=20)
        self.negatives, self.batch_size, self.num_workers = negatives, batch_size, num_workers

    @staticmethod
    def _load(config: PagesConfig):
        from mmrerank.datasets.mmdocir import load_mmdocir

        folder = ensure_pages(config)
        return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")

    def prepare_data(self) -> None:
        ensure_pages(self.train_config)
        ensure_pages(self.val_config)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PageGroups(self._load(self.train_config), self.negatives)
        self.val_set = PageGroups(self._load(self.val_config), self.negatives)


def image_groups(data: ImageTextDataset, captions: torch.Tensor, negatives: torch.Tensor) -> list[list[int]]:
    """Groups `[caption, its image, n hard negative images]`.

    Args:
        data: the split (gives each caption's own image).
        captions: `[C]` caption rows.
        negatives: `[C, n]` their hard negative image rows (`caption_hard_negatives`: the best-ranked images that
            are not relevant to the caption), -1 where fewer were found; such captions get no group.
    """
    return [[c, int(data.caption_image[c]), *row] for c, row in zip(captions.tolist(), negatives.tolist())
            if min(row) >= 0]


class ImageGroups(Dataset):
    """Item g: (caption, [its image, n hard negative images]) as a string and PIL images.

    Args:
        data: the synthetic split.
        groups: `[caption row, image rows...]` lists from `image_groups`.
        image_size: resize the images to this side (the tiny VLM turns 56 px into 4 visual tokens, 112 px
            into 16), or None to keep them.
    """

    def __init__(self, data: ImageTextDataset, groups: list[list[int]], image_size: int | None = None) -> None:
        self.data, self.groups, self.image_size = data, groups, image_size

    def __len__(self) -> int:
        return len(self.groups)

    def _image(self, row: int) -> Image.Image:
        image = self.data.images[row]
        return image.resize((self.image_size,) * 2, Image.BICUBIC) if self.image_size else image

    def __getitem__(self, g: int):
        caption, *rows = self.groups[g]
        return self.data.captions[caption], [self._image(r) for r in rows]


DEFAULT_CAPTIONS = {"train": 4000, "val": 400}  # queries per split of `ImageGroupsDataModule`


class ImageGroupsDataModule(GroupsDataModule):
    """Groups of (caption, its image + first-stage hard negatives) from an image-text dataset: the built-in synthetic
    benchmark, or any `ImageTextSource` given as `train` / `val` (COCO, Flickr30k, Karpathy, a `CaptionTable`).

    Hard negatives are the first stage's top images for the caption that do not satisfy it (`caption_hard_negatives`:
    a synthetic caption can describe other images too; those are never used as negatives). They are mined once
    per split and cached as JSON (atomically), keyed by the data, the first stage's weights and these settings.

    Args:
        synthetic: the benchmark's size and seed.
        first_stage: the dual encoder that ranks the images (`FirstStage`; it is trained and saved first
            when its checkpoint does not exist, as in `mmrerank benchmark`).
        negatives: hard negatives per caption.
        depth: first-stage candidates the negatives come from.
        captions: split -> captions drawn (seeded) from its captions as queries (`train`, `val`; a split not named
            keeps its default, `DEFAULT_CAPTIONS`).
        image_size: see `ImageGroups`.
        batch_size: groups per batch.
        seed: seeds the choice of captions.
        cache_dir: where the mined groups go (default `$MMRERANK_CACHE/image-groups`).
        train, val: the splits to train and validate on instead of the synthetic benchmark's (both or neither);
            give `first_stage` a `checkpoint` then, or the default first stage is trained on the synthetic data.
        **legacy: 0.1's `train_captions` / `val_captions` (now `captions`), with a FutureWarning.
    """

    LEGACY_PATHS = {"train_captions": "captions.train", "val_captions": "captions.val"}

    def __init__(self, synthetic: SyntheticConfig | None = None, first_stage: FirstStage | None = None,
                 negatives: int = 3, depth: int = 16, captions: dict[str, int] | None = None,
                 image_size: int | None = 112, batch_size: int = 4, num_workers: int = 0, seed: int = 0,
                 cache_dir: str | None = None, train: ImageTextSource | None = None,
                 val: ImageTextSource | None = None, **legacy: int) -> None:
        super().__init__()
        captions = {**(captions or {}), **nest_renamed(legacy, self.LEGACY_PATHS, "ImageGroupsDataModule").pop(
            "captions", {})}
        if set(legacy) - set(self.LEGACY_PATHS) or set(captions) - set(DEFAULT_CAPTIONS):
            raise TypeError(f"ImageGroupsDataModule: unknown arguments {sorted(set(legacy) - set(self.LEGACY_PATHS))}"
                            f" or caption splits {sorted(set(captions) - set(DEFAULT_CAPTIONS))}")
        if negatives < 1 or depth <= negatives:
            raise ValueError(f"need 1 <= negatives < depth, got negatives={negatives}, depth={depth}")
        self.synthetic = synthetic or SyntheticConfig()
        self.first_stage = (first_stage or FirstStage()).trained_on(self.synthetic)
        self.negatives, self.depth, self.image_size, self.seed = negatives, depth, image_size, seed
        self.counts = {**DEFAULT_CAPTIONS, **captions}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "image-groups"
        if (train is None) != (val is None):
            raise ValueError("give both train and val (the sources of each split), or neither (the synthetic data)")
        self.sources = {"train": train, "val": val} if train is not None else {}

    def _cache_file(self, split: str, weights: dict) -> Path:
        source = self.sources.get(split)
        data = source.describe() if source is not None else {
            "synthetic": {k: v for k, v in asdict(self.synthetic).items() if k != "root"}}
        key = {**data, "split": split,
               "weights": weights, "negatives": self.negatives, "depth": self.depth,
               "captions": self.counts[split], "seed": self.seed, "version": 2}
        return self.cache_dir / f"{split}-{key_digest(key)}.json"

    def _weights_key(self) -> dict:
        """What identifies the first stage's weights (see `FirstStage.identity`; nothing is trained for it)."""
        return self.first_stage.identity()

    def _mine(self, split: str, data: ImageTextDataset) -> list[list[int]]:
        from mmrerank.retrieval.negatives import caption_hard_negatives

        rng = np.random.default_rng([self.seed, ("train", "val").index(split)])
        captions = torch.from_numpy(np.sort(rng.permutation(len(data.captions))[:self.counts[split]]))
        encoder = self.first_stage.build(progress=False)
        image_emb = encoder.encode(data.images, progress=False)
        text_emb = encoder.encode(data.captions.subset(captions.tolist()), progress=False)
        negatives = caption_hard_negatives(data, image_emb, text_emb, captions, self.negatives, self.depth)
        return image_groups(data, captions, negatives)

    def groups(self, split: str) -> ImageGroups:
        """The split's groups, mined with the first stage on first use and read from the cache afterwards."""
        source = self.sources.get(split)
        data = source.load() if source is not None else load_synthetic(split, self.synthetic, relevance=False,
                                                                        progress=False)
        path = self._cache_file(split, self._weights_key())
        if path.is_file():
            groups = json.loads(path.read_text())
        else:
            groups = self._mine(split, data)
            atomic_write_json(path, groups)
        return ImageGroups(data, groups, self.image_size)

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self.groups(split)

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set = self.groups("train"), self.groups("val")
