"""Sharding work over `torch.distributed` ranks and gathering it back (a no-op in a single process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def world() -> tuple[int, int]:
    """`(rank, world_size)`; `(0, 1)` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: every world_size-th item, starting at its rank."""
    rank, size = world()
    return list(items[rank::size])


def gather_shards(local: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Concatenate every rank's `shard` results back into the original order.

    Args:
        local: this rank's results, one tensor per item of its shard (e.g. `[b, d]` per batch).

    Returns:
        The concatenation over all items in their original order, on `device` (default: that of `local`).
    """
    _, size = world()
    device = device or (local[0].device if local else torch.device("cpu"))
    if size == 1:
        return torch.cat(local).to(device)
    # Variable-length pieces: objects are the simplest exact transport (CPU copies; embeddings are small).
    pieces: list[list[Tensor]] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(pieces, [t.cpu() for t in local])
    ordered = [pieces[i % size][i // size] for i in range(sum(len(p) for p in pieces))]
    return torch.cat(ordered).to(device)
