"""A config's integer `val_check_interval` is lowered to one epoch's batches on a small dataset (Lightning would
refuse to start), counted as Lightning counts them; other settings are left alone."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from mmrerank.core.validation import batches_per_epoch, fit_val_check_interval


def trainer(interval, world_size=1, limit=1.0, every_n_epoch=1):
    return SimpleNamespace(val_check_interval=interval, world_size=world_size, limit_train_batches=limit,
                           check_val_every_n_epoch=every_n_epoch)


def test_batches_per_epoch_as_lightning_counts():
    assert batches_per_epoch(trainer(1), 10, 4, drop_last=True) == 2
    assert batches_per_epoch(trainer(1), 10, 4, drop_last=False) == 3
    assert batches_per_epoch(trainer(1, world_size=3), 10, 2, drop_last=True) == 2  # ceil(10 / 3) = 4 per rank
    assert batches_per_epoch(trainer(1, limit=1), 100, 4, drop_last=True) == 1
    assert batches_per_epoch(trainer(1, limit=0.5), 100, 4, drop_last=True) == 12


def test_interval_clamped_to_an_epoch_with_a_warning():
    small = trainer(500)
    with pytest.warns(UserWarning, match="val_check_interval=500 is more than the 12 training batches"):
        fit_val_check_interval(small, 12)
    assert small.val_check_interval == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for unchanged in (trainer(5), trainer(0.25), trainer(500, every_n_epoch=None)):
            before = unchanged.val_check_interval
            fit_val_check_interval(unchanged, 12)
            assert unchanged.val_check_interval == before
