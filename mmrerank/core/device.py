"""The one place a device name becomes a `torch.device` (`auto`: CUDA when there is one, else the CPU)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; any other name or `torch.device` as torch reads it.

    Raises:
        RuntimeError: torch does not know the device name (raised here, before anything is built).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
