"""`FirstStage`: the dual encoder a benchmark retrieves with: pretrained, loaded from a folder, or trained here.

Trained defaults live under the user cache (`$MMRERANK_CACHE/first_stage/<model>-<digest>/`), the digest taken
over everything that shapes the weights (model, data, steps, batch, learning rate, seed), so a folder never
answers for a training it did not come from and nothing depends on the working directory.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L

from mmrerank.core.device import resolve_device
from mmrerank.core.io import (
    CHECKSUMS,
    atomic_folder,
    cache_root,
    damaged_files,
    folder_lock,
    key_digest,
    require_free_space,
    require_path,
    write_checksums,
)
from mmrerank.core.progress import ProgressLines, on_terminal
from mmrerank.datasets.synthetic import SyntheticConfig
from mmrerank.retrieval.clip import CLIPEncoder, mixed_precision


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
        if self.checkpoint:
            self._refuse_damaged(path)
            if not CLIPEncoder.is_saved(path):
                raise ValueError(f"first_stage.checkpoint {path} is neither a save_pretrained folder, a safetensors "
                                 "file nor a Lightning checkpoint")
            return CLIPEncoder.from_pretrained(path, self.model_name)
        with folder_lock(path, "the first stage"):  # one trainer per cache entry; a second process waits, reuses
            if not retrain and self.is_ready():
                return CLIPEncoder.from_pretrained(path, self.model_name)
            return self.train(progress)

    def is_ready(self) -> bool:
        """Is the encoder saved at `folder()` and whole? A folder whose files differ from the checksums written
        with it (truncated, a flipped bit) is not: the cached default is then trained again, with a warning."""
        path = self.folder()
        if not CLIPEncoder.is_saved(path):
            return False
        damaged = damaged_files(path) if path.is_dir() else None
        if damaged:
            warnings.warn(f"the trained first stage at {path} is damaged ({', '.join(damaged)} differ from "
                          f"{CHECKSUMS}): training it again", stacklevel=2)
            return False
        return True

    def _refuse_damaged(self, path: Path) -> None:
        damaged = damaged_files(path) if path.is_dir() else None
        if damaged:
            raise ValueError(f"first_stage.checkpoint {path}: {', '.join(damaged)} differ from the {CHECKSUMS} "
                             "written with them (truncated or changed since); restore the folder, or leave "
                             "first_stage.checkpoint unset to train the default")

    def announce(self) -> None:
        """Say, before a training nobody asked for by name, what it is and how to skip it."""
        print(f"training the first stage ({self.model_name}, {self.train_steps} steps, batch {self.batch_size}) "
              f"into {self.folder()}: none is saved there yet. To use an existing one instead, pass its folder as "
              "first_stage.checkpoint (benchmark: --first_stage.checkpoint=PATH; fit: "
              "--data.init_args.first_stage.checkpoint=PATH, and the model's *_checkpoint=PATH)", flush=True)

    def train(self, progress: bool = True) -> CLIPEncoder:
        """Train on the synthetic train split (Lightning, `CLIPModule`), save to `folder()` (whole or not at all,
        with the checksums `is_ready` verifies)."""
        from mmrerank.retrieval.module import CLIPModule, SyntheticDataModule

        folder = self.folder()
        if self.save_to and folder.is_dir() and any(folder.iterdir()) and not CLIPEncoder.is_saved(folder):
            raise ValueError(f"first_stage.save_to {folder} holds other files; name an empty or a new folder")
        self.announce()
        L.seed_everything(self.seed, verbose=False)
        module = CLIPModule(self.model_name, lr=self.lr)
        size = sum(p.numel() * p.element_size() for p in module.encoder.model.state_dict().values())
        require_free_space(folder.parent, size, "the first stage")  # before training, not after it
        live = progress and on_terminal()  # a log file gets whole lines with an ETA instead of the live bar
        trainer = L.Trainer(max_steps=self.train_steps, accelerator="auto", devices=1, logger=False,
                            precision=self.precision(),
                            enable_checkpointing=False, enable_progress_bar=live, enable_model_summary=False,
                            limit_val_batches=0, callbacks=[ProgressLines("first stage")] if progress and not live
                            else None)
        trainer.fit(module, datamodule=SyntheticDataModule(self.synthetic, batch_size=self.batch_size))
        with atomic_folder(folder) as tmp:
            module.encoder.save_pretrained(tmp)
            write_checksums(tmp)
        return module.encoder
