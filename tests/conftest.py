"""Shared fixtures: tiny synthetic data and a tiny untrained first stage, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

from mmrerank.data.synthetic import SyntheticConfig, load_synthetic

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> SyntheticConfig:
    """A small synthetic benchmark (cached in a session temp folder, so tests never touch ~/.cache)."""
    root = tmp_path_factory.mktemp("synthetic")
    return SyntheticConfig(seed=3, train_images=64, val_images=16, test_images=40, root=str(root))


@pytest.fixture(scope="session")
def tiny_test_split(tiny_config):
    return load_synthetic("test", tiny_config, progress=False)
