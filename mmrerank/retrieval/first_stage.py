"""`FirstStage`: the dual encoder a benchmark retrieves with: pretrained, loaded from a folder, or trained here.

Trained defaults live under the user cache (`$MMRERANK_CACHE/first_stage/<model>-<digest>/`), the digest taken
over everything that shapes the weights (model, data, steps, batch, learning rate, seed), so a folder never
answers for a training it did not come from and nothing depends on the working directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L

from mmrerank.core.io import cache_root, key_digest, require_path
from mmrerank.core.progress import ProgressLines, on_terminal
from mmrerank.datasets.synthetic import SyntheticConfig
from mmrerank.retrieval.clip import CLIPEncoder, mixed_precision, resolve_device


@dataclass
class FirstStage:
    """The first-stage dual encoder.

    Attributes:
        model_name: open_clip model name or a packaged tiny config (`mmrerank-tiny-resnet`, `mmrerank-tiny-vit`).
        pretrained: open_clip pretrained tag (real use; needs the network once).
        checkpoint: a saved encoder (a `save_pretrained` folder, a safetensors file or a `CLIPModule` Lightning
            checkpoint); it must exist (a mistyped path is refused here, never trained into). None (and no
            `pretrained`): the default trained on the synthetic train split, trained and saved under the cache on
            first use.
        save_to: where that default is saved instead of the cache (a folder; loaded when it holds one already).
        train_steps, batch_size, lr, seed: that training.
        synthetic: the synthetic benchmark it trains on (None: the default one).
    """

    model_name: str = "mmrerank-tiny-resnet"
    pretrained: str | None = None
    checkpoint: str | None = None
    save_to: str | None = None
    train_steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    synthetic: SyntheticConfig | None = None

    def __post_init__(self) -> None:
        for name in ("train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"first_stage.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint:
            require_path(self.checkpoint, "first_stage.checkpoint", "saved encoder",
                         "name an existing save_pretrained folder, safetensors file or CLIPModule checkpoint; leave "
                         "it unset to use the default first stage (trained into the cache, or into "
                         "first_stage.save_to, the first time)")
        if self.checkpoint and self.save_to:
            raise ValueError("first_stage takes a checkpoint to load or save_to (where to train the default), not "
                             "both")

    def trained_on(self, synthetic: SyntheticConfig | None) -> FirstStage:
        """This first stage, trained on `synthetic` unless it names its own training data."""
        return self if self.synthetic is not None or synthetic is None else replace(self, synthetic=synthetic)

    def training_key(self) -> dict:
        """What the trained weights depend on (the synthetic data's location excluded: it does not change them)."""
        synthetic = {k: v for k, v in asdict(self.synthetic or SyntheticConfig()).items() if k != "root"}
        return {"model_name": self.model_name, "train_steps": self.train_steps, "batch_size": self.batch_size,
                "lr": self.lr, "seed": self.seed, "synthetic": synthetic, "precision": self.precision()}

    @staticmethod
    def precision() -> str:
        """The training's numeric precision on this machine (bf16 autocast where the hardware has it)."""
        return mixed_precision(resolve_device("auto"))

    def identity(self) -> dict:
        """What identifies this first stage's weights, for the keys of caches built with it: the pretrained tag, the
        training that makes the cached default (nothing is built for either), or a given checkpoint's content digest
        (a checkpoint path not written yet is trained first: whatever the key is for would need it anyway)."""
        if self.pretrained:
            return {"model_name": self.model_name, "pretrained": self.pretrained}
        if not self.checkpoint:
            return {"trained": self.training_key()}
        from mmrerank.retrieval.negatives import file_stamp

        return {"model_name": self.model_name, "checkpoint": file_stamp(self.checkpoint)}

    def folder(self) -> Path:
        """Where the encoder is: `checkpoint`, `save_to`, or the cache folder of this training."""
        if self.checkpoint or self.save_to:
            return Path(self.checkpoint or self.save_to)
        return cache_root() / "first_stage" / f"{self.model_name}-{key_digest(self.training_key())}"

    def build(self, progress: bool = True, retrain: bool = False) -> CLIPEncoder:
        """The encoder: pretrained, loaded, or trained first (then saved to `folder()`); `retrain` trains the cached
        default again (a given checkpoint is only ever loaded)."""
        if self.pretrained:
            return CLIPEncoder(self.model_name, self.pretrained)
        path = self.folder()
        if retrain and not self.checkpoint:
            return self.train(progress)
        if CLIPEncoder.is_saved(path):
            return CLIPEncoder.from_pretrained(path, self.model_name)
        if self.checkpoint:
            raise ValueError(f"first_stage.checkpoint {path} is neither a save_pretrained folder, a safetensors file "
                             "nor a Lightning checkpoint")
        return self.train(progress)

    def train(self, progress: bool = True) -> CLIPEncoder:
        """Train on the synthetic train split (Lightning, `CLIPModule`), save to `folder()`."""
        from mmrerank.retrieval.module import CLIPModule, SyntheticDataModule

        L.seed_everything(self.seed, verbose=False)
        module = CLIPModule(self.model_name, lr=self.lr)
        live = progress and on_terminal()  # a log file gets whole lines with an ETA instead of the live bar
        trainer = L.Trainer(max_steps=self.train_steps, accelerator="auto", devices=1, logger=False,
                            precision=self.precision(),
                            enable_checkpointing=False, enable_progress_bar=live, enable_model_summary=False,
                            limit_val_batches=0, callbacks=[ProgressLines("first stage")] if progress and not live
                            else None)
        trainer.fit(module, datamodule=SyntheticDataModule(self.synthetic, batch_size=self.batch_size))
        module.encoder.save_pretrained(self.folder())
        return module.encoder
