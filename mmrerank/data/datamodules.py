"""Lightning data modules shared by the families: image-caption pairs and page groups for rerankers."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrerank.data.dataset import ImageTextDataset
from mmrerank.data.synthetic import SyntheticConfig, load_synthetic
from mmrerank.data.synthetic.pages import PagesConfig, ensure_pages


class CaptionPairs(Dataset):
    """Item c is (the image caption c was written for, caption c): PIL image and string."""

    def __init__(self, dataset: ImageTextDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def __getitem__(self, c: int):
        return self.dataset.images[int(self.dataset.caption_image[c])], self.dataset.captions[c]


def collate_pairs(rows):
    """Lists stay lists: the model turns images and texts into tensors with its own transform and tokenizer."""
    images, texts = zip(*rows)
    return list(images), list(texts)


class SyntheticDataModule(L.LightningDataModule):
    """(image, caption) pairs of the built-in synthetic benchmark's train, val and test splits.

    Args:
        config: the benchmark's size and seed.
        batch_size: pairs per batch (per device under DDP).
        num_workers: DataLoader workers.
    """

    def __init__(self, config: SyntheticConfig | None = None, batch_size: int = 256, num_workers: int = 0) -> None:
        super().__init__()
        self.config = config or SyntheticConfig()
        self.batch_size, self.num_workers = batch_size, num_workers

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            load_synthetic(split, self.config, relevance=False)

    def setup(self, stage: str | None = None) -> None:
        def pairs(split: str) -> CaptionPairs:
            return CaptionPairs(load_synthetic(split, self.config, relevance=False, progress=False))

        if stage in (None, "fit"):
            self.train_set = pairs("train")
        if stage in (None, "fit", "validate"):
            self.val_set = pairs("val")
        if stage in (None, "test"):
            self.test_set = pairs("test")

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_pairs, drop_last=shuffle, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class PageGroups(Dataset):
    """Item q: (question q, [its gold page, n hard negative pages]) as `Page`s (image + OCR text).

    Hard negatives are the non-gold pages of the question's own document that the BM25 first stage ranks highest
    (mined once, when the dataset is built).
    """

    def __init__(self, dataset, negatives: int) -> None:
        from mmrerank.evaluation import bm25_page_scores

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


class PageGroupsDataModule(L.LightningDataModule):
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
        from mmrerank.data.mmdocir import load_mmdocir

        folder = ensure_pages(config)
        return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")

    def prepare_data(self) -> None:
        ensure_pages(self.train_config)
        ensure_pages(self.val_config)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PageGroups(self._load(self.train_config), self.negatives)
        self.val_set = PageGroups(self._load(self.val_config), self.negatives)

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        from mmrerank.rerankers.mllm.module import collate_groups

        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_groups, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
