"""Sharding work over `torch.distributed` ranks and gathering it back (a no-op in a single process).

Under `torchrun --nproc_per_node N`, `process_group()` initialises the group from the launcher's environment for
a command's duration. Work is then split with `shard` / `gather_shards` or `block` / `gather_blocks` (every rank
ends with the full result), or with `map_to_rank_zero` (rank 0 consumes every result in order: one writer of a
file). What fills a cache runs under `on_rank_zero_first`: rank 0 alone first (the one writer), then the others
(they find the cache filled). Every helper here is collective: all ranks call it at the same point, with the same
arguments.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")

# What torchrun sets that makes a library (Lightning) take its process for one rank of a job (see `alone`).
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE")
_alone = 0  # depth of nested `alone()` sections


def world() -> tuple[int, int]:
    """`(rank, world_size)`; `(0, 1)` without an initialised process group, or inside `alone()`."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job: the one that prints and writes reports (inside `alone()` too)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextmanager
def process_group() -> Iterator[None]:
    """Initialise `torch.distributed` from torchrun's environment for the `with` block, and destroy it after.

    A no-op for a single process (`WORLD_SIZE` unset or 1) or when a group already exists. On CUDA each rank takes
    GPU `LOCAL_RANK` (`torch.cuda.set_device`) and the backend is nccl; on CPU it is gloo.

    Raises:
        RuntimeError: `WORLD_SIZE` > 1 but a variable torchrun sets is missing, or `LOCAL_RANK` names no GPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {', '.join(missing)} unset: start several processes with "
                           "torchrun --nproc_per_node N (it sets them all)")
    if torch.cuda.is_available():
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): use "
                               "torchrun --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def alone() -> Iterator[None]:
    """Act as a single process inside the `with` block: `world()` is `(0, 1)` and the launcher's variables are
    hidden from the environment, so that what runs there (Lightning's one-device training, whose
    `TorchElasticEnvironment` would otherwise demand `devices == WORLD_SIZE`) neither shards nor waits for
    other ranks."""
    global _alone
    saved = {v: os.environ.pop(v) for v in LAUNCHER_VARIABLES if v in os.environ}
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1
        os.environ.update(saved)


def in_fresh_process(fn: Callable[..., object], *args) -> None:
    """`fn(*args)` in a new Python process (spawned: no process group, no CUDA state) that sees no launcher
    variables, for work that must not know of the other ranks: a Lightning `Trainer` that finds a process group
    waits for every rank in `prepare_data`, so one-device training on rank 0 alone needs a process of its own.

    `fn` and `args` must be picklable (a module-level function, a bound method of a dataclass); its result is
    dropped: it is for work that leaves files behind.

    Raises:
        RuntimeError: the process failed (its traceback is on its stderr).
    """
    with alone():  # the child's environment is copied from this one's at start
        # the same number of threads as here: the same kernels, so the child's floats equal what this process
        # would have computed (a spawned process would otherwise take torch's default)
        process = multiprocessing.get_context("spawn").Process(target=_with_threads,
                                                               args=(torch.get_num_threads(), fn, *args))
        process.start()
        try:
            process.join()
        except BaseException:  # interrupted (SIGTERM, Ctrl-C): the child must not outlive us, writing on
            process.terminate()
            process.join()
            raise
    if process.exitcode != 0:
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} failed in its own process (exit code "
                           f"{process.exitcode}); its traceback is above")


def _with_threads(threads: int, fn: Callable[..., object], *args) -> None:
    torch.set_num_threads(threads)
    fn(*args)


def fail_together(error: BaseException | None) -> None:
    """Raise on every rank if any rank failed: the failing rank raises its own error, the others a `RuntimeError`
    naming it, so that no rank waits forever in a later collective for one that has stopped."""
    _, size = world()
    if size > 1:
        errors: list[str | None] = [None] * size
        dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    else:
        failed = []
    if error is not None:
        raise error
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} failed ({message}); stopping this rank too")


def _attempt(fn: Callable[..., R], *args) -> tuple[R | None, BaseException | None]:
    try:
        return fn(*args), None
    except Exception as e:  # handed to `fail_together`, which re-raises it
        return None, e


def on_rank_zero_first(fn: Callable[[], R]) -> R:
    """`fn()` on rank 0 alone, then (once it has finished) on the other ranks, alone each; its result on each rank.

    For whatever fills a cache when it misses (training the first stage, rendering synthetic data): rank 0 is the
    one writer, the others wait and then find the cache filled. Both runs are `alone()`, so collectives inside
    `fn` do not wait for the other ranks. An error on any rank raises on all of them (`fail_together`).
    """
    rank, size = world()
    if size == 1:
        return fn()
    result, error = None, None
    if rank == 0:
        with alone():
            result, error = _attempt(fn)
    fail_together(error)
    if rank != 0:
        with alone():
            result, error = _attempt(fn)
    fail_together(error)
    return result  # type: ignore[return-value]


def from_rank_zero(fn: Callable[[], R]) -> R:
    """`fn()` on rank 0 only, its (picklable) result sent to every rank; an error there raises on all ranks."""
    rank, size = world()
    if size == 1:
        return fn()
    result, error = _attempt(fn) if rank == 0 else (None, None)
    fail_together(error)
    box = [result]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def map_to_rank_zero(items: Sequence[T], fn: Callable[[T], R], consume: Callable[[T, R], None]) -> None:
    """`consume(item, fn(item))` for every item in order, on rank 0 only, with `fn` computed by the ranks in turn.

    Item `i` is computed on rank `i % world_size`; in each round every rank computes one item and rank 0 gathers
    the round's results (pickled: give CPU tensors) and consumes them in order. So rank 0 holds at most
    world_size results at once. An error in `fn` or `consume` on any rank raises on all ranks, at the end of its
    round.
    """
    rank, size = world()
    if size == 1:
        for item in items:
            consume(item, fn(item))
        return
    error: BaseException | None = None
    for first in range(0, len(items), size):
        mine = first + rank
        result = None
        if error is None and mine < len(items):  # after rank 0 failed to consume, stop at this round's check
            result, error = _attempt(fn, items[mine])
        fail_together(error)
        results: list[R | None] | None = [None] * size if rank == 0 else None
        dist.gather_object(result, results, dst=0)
        if rank == 0:
            _, error = _attempt(_consume_round, consume, items[first:first + size], results)
    fail_together(error)


def _consume_round(consume: Callable[[T, R], None], items: Sequence[T], results: list[R]) -> None:
    for item, result in zip(items, results):
        consume(item, result)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: every world_size-th item, starting at its rank."""
    rank, size = world()
    return list(items[rank::size])


def block(n: int) -> slice:
    """This rank's block of `n` rows: `[rank * n // size, (rank + 1) * n // size)` (contiguous, sizes within one)."""
    rank, size = world()
    return slice(rank * n // size, (rank + 1) * n // size)


def gather_blocks(local: Tensor) -> Tensor:
    """Every rank's `block` of rows `[b_r, ...]`, concatenated in rank order, on `local`'s device."""
    _, size = world()
    if size == 1:
        return local
    pieces: list[Tensor] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(pieces, local.cpu())
    return torch.cat(pieces).to(local.device)


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
