"""`CLIPModule`: trains a first-stage dual encoder with the contrastive loss (Lightning), on the (image, caption)
pairs of `SyntheticDataModule`."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrerank.core.validation import batches_per_epoch, fit_val_check_interval
from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.losses import symmetric_info_nce
from mmrerank.optim import adamw_warmup_cosine
from mmrerank.retrieval.clip import CLIPEncoder


class CLIPModule(L.LightningModule):
    """Contrastive training of an open_clip dual encoder on (image, caption) batches.

    Args:
        model_name, pretrained: as for `CLIPEncoder`.
        lr, weight_decay: AdamW settings; the LR warms up linearly for `warmup_steps`, then follows a cosine to 0.
    """

    def __init__(self, model_name: str = "mmrerank-tiny-resnet", pretrained: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.1, warmup_steps: int = 50) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = CLIPEncoder(model_name, pretrained)

    def _loss(self, batch) -> torch.Tensor:
        images, texts = batch
        image_emb = self.encoder.encode_images(self.encoder.image_tensor(images))
        text_emb = self.encoder.encode_texts(texts)
        return symmetric_info_nce(image_emb, text_emb, self.encoder.logit_scale)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=len(batch[1]), sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch), batch_size=len(batch[1]), sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps,
                                   self.trainer.estimated_stepping_batches, no_decay=lambda n: "logit_scale" in n)


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
        if shuffle and self.trainer is not None:  # a config's interval may not fit a small dataset's epoch
            fit_val_check_interval(self.trainer, batches_per_epoch(self.trainer, len(data), self.batch_size, True))
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_pairs, drop_last=shuffle, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
