"""`CLIPModule`: trains a first-stage dual encoder with the contrastive loss (Lightning)."""

from __future__ import annotations

import lightning as L
import torch

from mmrerank.encoders.clip import CLIPEncoder
from mmrerank.losses import symmetric_info_nce
from mmrerank.optim import adamw_warmup_cosine


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
