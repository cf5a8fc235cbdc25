"""Training progress a person can follow in a log file: Lightning's bar redraws one line with carriage returns,
which a file shows only at the end, so when stdout is not a terminal `ProgressLines` prints whole lines instead.
"""

from __future__ import annotations

import sys
import time

import lightning as L


def on_terminal() -> bool:
    """Is stdout a terminal (where Lightning's live bar renders)?"""
    return sys.stdout.isatty()


def format_seconds(seconds: float) -> str:
    """`75.0` -> `1:15`, `3725` -> `1:02:05`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SeedAfterCaches(L.Callback):
    """Re-seed once the caches are in place, so that a training's numbers depend on its seed and not on the cache.

    A cold cache builds things the warm one only reads (the synthetic splits, the first stage's encoder for the
    hard negatives, the patch tokens), and building them draws from the global generators. Seeding again after the
    datamodule's setup (before the model is built in the module's) and at the start of training (before the
    sampler's shuffle) puts every later draw on the same stream whichever caches were there.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        L.seed_everything(self.seed, verbose=False)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        L.seed_everything(self.seed, verbose=False)


class ProgressLines(L.Callback):
    """Print `<label> step i/N (p %), loss x, elapsed, ETA` every `every_s` seconds (and at the last step).

    Args:
        label: what is training (`first stage`, ...).
        every_s: seconds between lines.
    """

    def __init__(self, label: str = "training", every_s: float = 30.0) -> None:
        self.label, self.every_s = label, every_s
        self._start = self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        print(f"{self.label}: {self._total(trainer)} steps", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        now, step, total = time.perf_counter(), trainer.global_step, self._total(trainer)
        if now - self._last < self.every_s and step < total:
            return
        self._last = now
        elapsed = now - self._start
        eta = elapsed / max(step, 1) * max(total - step, 0)
        loss = trainer.callback_metrics.get("train/loss")
        shown = f", loss {float(loss):.4f}" if loss is not None else ""
        print(f"{self.label}: step {step}/{total} ({100 * step / max(total, 1):.0f} %){shown}, "
              f"{format_seconds(elapsed)} elapsed, ETA {format_seconds(eta)}", flush=True)

    @staticmethod
    def _total(trainer: L.Trainer) -> int:
        return int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else \
            int(trainer.estimated_stepping_batches)
