"""Validation intervals that fit the dataset: a config's `val_check_interval` of N batches on a dataset whose epoch
is shorter than N batches makes Lightning refuse to start; the data modules clamp it to one epoch instead."""

from __future__ import annotations

import math
import warnings
from typing import Any


def batches_per_epoch(trainer: Any, samples: int, batch_size: int, drop_last: bool) -> int:
    """Training batches one rank sees per epoch, as Lightning counts them (`DistributedSampler` pads each rank's
    share to `ceil(samples / world_size)`; `limit_train_batches` caps or scales the count)."""
    per_rank = math.ceil(samples / max(trainer.world_size, 1))
    batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return batches if limit is None else int(batches * limit)


def fit_val_check_interval(trainer: Any, batches: int) -> None:
    """Lower the trainer's integer `val_check_interval` to `batches` (one epoch) when it is larger, with a warning.

    Lightning requires an integer interval to fit in an epoch unless `check_val_every_n_epoch` is None (then it
    counts steps across epochs and nothing needs to change). Call it from `train_dataloader`, which Lightning
    calls before it checks the interval.
    """
    interval = getattr(trainer, "val_check_interval", None)
    if trainer is None or not isinstance(interval, int) or isinstance(interval, bool) or batches < 1:
        return
    if trainer.check_val_every_n_epoch is None or interval <= batches:
        return
    warnings.warn(f"val_check_interval={interval} is more than the {batches} training batches of an epoch on this "
                  f"dataset; validating every {batches} batches (once per epoch) instead. Set "
                  "--trainer.val_check_interval to choose another interval", stacklevel=2)
    trainer.val_check_interval = batches
