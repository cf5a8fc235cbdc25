"""Lightning data modules shared by the families: (image, caption) pairs from any image-text dataset."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mmrerank.data.dataset import ImageTextDataset
from mmrerank.data.synthetic import SyntheticConfig, load_synthetic


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
