"""EDJE training's frozen patch tokens `[N, P, D]` (fp16) on disk, read a batch of rows at a time.

`EDJEModule` needs the vision source's patch tokens of every image of a set, but a step reads only its batch's
images. At SigLIP2-L/384 an image costs 576 x 1024 x 2 B = 1.18 MB, so COCO's 113,287 training images would need
134 GB per rank in memory. Instead the tokens are written once into token stores (the `TokenStoreWriter` format,
m = P, d = D, float16: locked, sharded, checksummed, resumable, with provenance) and `PatchTokens` reads the rows
asked for with `pread`, so resident memory is bounded by the batch, not by N.

Layout: `<cache>/patches/<digest of the key>/part-<k>`, each part a token store of `PART_ROWS` consecutive rows
(the last one shorter) whose ids are the global row numbers and whose provenance is the cache key, the part's rows
and the set's shape. The parts split the encoding between the processes of a node: with `world` of them, process
`rank` fills parts `rank, rank + world, ...`, then all wait at a barrier and open every part. No two processes
write one store (its lock allows one writer; a process that finds a part locked by another fit waits for it, then
reuses its work), and an interrupted fill resumes with its missing shards. Reusing a part checks its shards
against their checksums; a part that is malformed or written for other inputs is rebuilt (with a warning).

Why `pread` and not the store's memory map: pages of a file mapping that training has touched count in the
process's resident set (reclaimable, but a fit that visits every row would show the whole file as resident); a
`pread` copies the rows into a fresh buffer and nothing of the file stays mapped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmrerank.rerankers.edje.store import DATA_FILE, StaleTokenStoreError, TokenStore, TokenStoreLockedError

PART_ROWS = 4096  # rows per part store: the unit a process of a node fills (COCO: 28 parts of 4.8 GB)
SHARD_ROWS = 256  # rows per shard of a part: the unit of resumption and of checksums (COCO: 300 MB)
STATISTICS_ELEMENTS = 1 << 22  # values per read when computing the standardisation statistics (32 MB in float64)
LOCK_POLL_S = 1.0  # how often a process waiting for another fit's writer retries

Encode = Callable[[Tensor], Tensor]  # `[b]` int64 rows -> `[b, P, D]` float tokens of those images


class PatchTokens:
    """`[N, P, D]` float16 patch tokens in the data files of contiguous parts, indexed by rows like a tensor.

    `tokens[rows]` (a list, array or tensor of rows, on any device), `tokens[i]` and `tokens[a:b]` read just those
    rows from disk into a new CPU tensor (`[b, P, D]`, `[P, D]`, `[b, P, D]`); nothing else is held in memory.
    Slices clip to `[0, N)` as a tensor's do (so `tokens[:4096]` is the first min(N, 4096) rows); row indices must
    lie in `[0, N)` (no negative rows: -1 is a bug upstream more often than "the last row").

    Args:
        parts: `(first row, data file)` of each part in row order, the first starting at 0; a data file holds its
            part's rows back to back, `P * D` float16 values each (a token store's `tokens.bin`).
        num_rows, num_patches, dim: N, P, D.
        name: what error messages call the set (default: the first part's folder).
    """

    dtype = torch.float16

    def __init__(self, parts: Sequence[tuple[int, str | Path]], num_rows: int, num_patches: int, dim: int,
                 name: str | Path | None = None):
        if not parts or parts[0][0] != 0 or any(a >= b for (a, _), (b, _) in zip(parts, parts[1:])):
            raise ValueError(f"parts must start at row 0 and be in increasing row order, got {[p[0] for p in parts]}")
        self.shape = torch.Size((num_rows, num_patches, dim))
        self.paths = [Path(path) for _, path in parts]
        self.name = str(name or self.paths[0].parent)
        self._starts = np.array([start for start, _ in parts] + [num_rows], dtype=np.int64)
        self._row_bytes = num_patches * dim * 2
        self._fds: list[int] = []
        self._open()

    def _open(self) -> None:
        for k, path in enumerate(self.paths):
            fd = os.open(path, os.O_RDONLY)
            self._fds.append(fd)
            rows, size = int(self._starts[k + 1] - self._starts[k]), os.fstat(fd).st_size
            if size != rows * self._row_bytes:
                self.close()
                raise ValueError(f"{path}: {size:,} bytes, its {rows} rows of {tuple(self.shape[1:])} float16 need "
                                 f"{rows * self._row_bytes:,}")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of all N rows (what holding them in memory would cost)."""
        return len(self) * self._row_bytes

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """Rows `index` -> a new CPU float16 tensor: `[P, D]` for an int, else `[b, P, D]`.

        Raises:
            IndexError: a row outside `[0, N)`, or a slice step below 1.
        """
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step < 1:
                raise IndexError(f"patch tokens {self.name}: slice step {step} must be at least 1")
            return self.read(np.arange(start, stop, step, dtype=np.int64))
        if isinstance(index, (int, np.integer)):
            return self.read(np.array([int(index)], dtype=np.int64))[0]
        if isinstance(index, Tensor):
            index = index.detach().cpu().numpy()
        rows = np.asarray(index, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError(f"patch tokens {self.name}: rows must be 1-D, got shape {rows.shape}")
        return self.read(rows)

    def read(self, rows: np.ndarray) -> Tensor:
        """`[b]` int64 rows -> `[b, P, D]` float16 tensor, each run of consecutive rows of a part in one `preadv`."""
        n = len(self)
        bad = (rows < 0) | (rows >= n)
        if bad.any():
            raise IndexError(f"patch tokens {self.name}: row {int(rows[bad][0])} outside [0, {n})")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float16)
        if not len(rows):
            return torch.from_numpy(out)
        part = np.searchsorted(self._starts, rows, side="right") - 1
        # A run ends where the next row is not the next on disk (another row, or another part's file).
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(part) != 0)) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            k = int(part[a])
            self._pread(k, (int(rows[a]) - int(self._starts[k])) * self._row_bytes, out[a:b])
        return torch.from_numpy(out)

    def _pread(self, k: int, offset: int, into: np.ndarray) -> None:
        view, done = memoryview(into).cast("B"), 0
        while done < len(view):  # a read may return less than asked
            got = os.preadv(self._fds[k], [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.paths[k]}: file ended at byte {offset + done:,} (truncated since it was opened)")
            done += got

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        """Close the data files (idempotent)."""
        # `os.close` bound at definition: `__del__` may run at interpreter exit, after the `os` global is cleared.
        for fd in getattr(self, "_fds", ()):  # also after a failed __init__
            _close(fd)
        self._fds = []

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled by path, reopened on load (a scratch set, whose files are already unlinked, cannot be).
        return {"parts": list(zip(self._starts[:-1].tolist(), map(str, self.paths))), "shape": tuple(self.shape),
                "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["parts"], *state["shape"], name=state["name"])

    def __repr__(self) -> str:
        return f"PatchTokens({self.name!r}, shape={tuple(self.shape)}, parts={len(self.paths)})"


def part_bounds(num_rows: int, part_rows: int | None = None) -> list[tuple[int, int]]:
    """Rows `[start, stop)` of each part of a set of `num_rows` images (`part_rows` each, default `PART_ROWS`)."""
    part_rows = part_rows or PART_ROWS
    return [(s, min(s + part_rows, num_rows)) for s in range(0, num_rows, part_rows)]


def _as_json(value: Any) -> Any:
    """`value` as it reads back from a store's header (non-JSON values as `str`, as `key_digest` hashes them)."""
    return json.loads(json.dumps(value, default=str))


def _part_provenance(key: dict[str, Any], shape: tuple[int, int, int], start: int, stop: int) -> dict[str, Any]:
    return _as_json({"patch_cache": key, "shape": list(shape), "rows": [start, stop]})


def _fill_part(folder: Path, start: int, stop: int, encode: Encode, shape: tuple[int, int, int],
               provenance: dict[str, Any], fsync: bool, progress: bool) -> None:
    """Write (or resume, or check and keep) the part store of rows `[start, stop)`, waiting for another writer."""
    from mmrerank.rerankers.edje.writer import write_token_store

    _, p, d = shape
    kwargs = dict(m=p, d=d, dtype="float16", shard_size=SHARD_ROWS, progress=progress, fsync=fsync,
                  provenance=provenance)
    ids, rows = list(range(start, stop)), (lambda idx: encode(idx + start))
    waited = False
    while True:
        try:
            write_token_store(folder, ids, rows, on_mismatch="rebuild", **kwargs)
            return
        except TokenStoreLockedError as err:  # another fit fills the same part: wait, then reuse what it wrote
            if not waited:
                warnings.warn(f"waiting for another writer of the patch cache: {err}", stacklevel=2)
            waited = True
            time.sleep(LOCK_POLL_S)
        except UnicodeDecodeError as err:  # a header or ids file that is not text is no store: start afresh
            warnings.warn(f"rebuilding patch cache part {folder}: a JSON file is not UTF-8 text ({err})", stacklevel=2)
            write_token_store(folder, ids, rows, overwrite=True, **kwargs)
            return


def _open_parts(root: Path, shape: tuple[int, int, int], key: dict[str, Any]) -> PatchTokens:
    """Open the complete parts under `root`, each checked to hold its rows of this key's set."""
    parts = []
    for k, (start, stop) in enumerate(part_bounds(shape[0])):
        store = TokenStore(root / f"part-{k:05d}")
        want = _part_provenance(key, shape, start, stop)
        if store.provenance != want or store.shape != (stop - start, *shape[1:]) or store.dtype_name != "float16":
            raise StaleTokenStoreError(f"{store.root}: written for other inputs (provenance {store.provenance!r}, "
                                       f"shape {store.shape}, {store.dtype_name}); expected {want!r}")
        parts.append((start, store.root / DATA_FILE))
    return PatchTokens(parts, *shape, name=root)


def write_patch_tokens(root: str | Path, key: dict[str, Any], shape: tuple[int, int, int], encode: Encode, *,
                       rank: int = 0, world: int = 1, barrier: Callable[[], Any] | None = None, fsync: bool = True,
                       progress: bool = True) -> PatchTokens:
    """Fill this process's parts of a patch-token set under `root` (see the module doc), wait, open all of them.

    Args:
        root: the set's folder (parts go to `root/part-<k>`).
        key: what identifies the tokens (JSON-able); recorded in each part's provenance.
        shape: `(N, P, D)`.
        encode: `[b]` int64 rows -> `[b, P, D]` float tokens (run under `torch.no_grad()`, at most `SHARD_ROWS` rows
            at a time).
        rank, world: this process's place among those sharing `root` (e.g. the ranks of one node).
        barrier: waits until every process has filled its parts (e.g. the trainer strategy's `barrier`); needed
            when `world > 1`.
        fsync, progress: passed to `write_token_store`.

    Raises:
        ValueError: `encode` gave NaN or values beyond float16's range (naming the images).
    """
    if world > 1 and barrier is None:
        raise ValueError(f"write_patch_tokens: world={world} processes share {root}; pass their `barrier`")
    if not 0 <= rank < world:
        raise ValueError(f"write_patch_tokens: rank {rank} outside [0, world={world})")
    root, key, shape = Path(root), _as_json(key), tuple(int(x) for x in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"write_patch_tokens: shape {shape} must be (N, P, D), all at least 1 ({root})")
    for k, (start, stop) in enumerate(part_bounds(shape[0])):
        if k % world == rank:
            _fill_part(root / f"part-{k:05d}", start, stop, encode, shape, _part_provenance(key, shape, start, stop),
                       fsync, progress)
    if barrier is not None:
        barrier()
    return _open_parts(root, shape, key)


def cached_patch_tokens(key: dict[str, Any], shape: tuple[int, int, int], encode: Encode, *, rank: int = 0,
                        world: int = 1, barrier: Callable[[], Any] | None = None,
                        progress: bool = True) -> PatchTokens:
    """The patch tokens `encode` gives, cached under `<cache>/patches/<digest of key>/` (see `write_patch_tokens`).

    Args:
        key: what identifies the tokens (vision source, its weights' digest, token contract, image set); the folder
            is named by its digest and each part's provenance holds it, so a cache never answers for other inputs.
        shape, encode, rank, world, barrier, progress: as `write_patch_tokens`.
    """
    from mmrerank.core.io import cache_root, key_digest

    return write_patch_tokens(cache_root() / "patches" / key_digest(key), key, shape, encode, rank=rank, world=world,
                              barrier=barrier, progress=progress)


def scratch_patch_tokens(shape: tuple[int, int, int], encode: Encode, progress: bool = True) -> PatchTokens:
    """`encode`'s patch tokens in a throwaway set (random vision weights: nothing to key a cache by).

    Written without fsync into a fresh folder under `<cache>/patches/scratch/` (on disk, unlike a `/tmp` that may
    be RAM), opened, then deleted at once: the open files keep the data until the returned object is closed or the
    process ends, so nothing is left behind.
    """
    from mmrerank.core.io import cache_root

    parent = cache_root() / "patches" / "scratch"
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=parent, prefix=f"{os.getpid()}-"))
    try:
        return write_patch_tokens(root, {"scratch": str(root)}, shape, encode, fsync=False, progress=progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def patch_statistics(patches: PatchTokens | Tensor, limit: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std `[D]` of the first `limit` images' patch tokens, read a few images at a time.

    The same numbers `EDJE.set_patch_statistics(patches[:limit])` computes over the whole `[n, P, D]` block (the
    std unbiased over the n * P tokens), without holding the block: blocks of about `STATISTICS_ELEMENTS` values are
    reduced in float64 and merged with Chan et al.'s pairwise update (exact, no cancellation).

    Returns:
        `(mean, std)`, each `[D]` float32.
    """
    n, p, d = patches.shape
    n = min(n, limit)
    step = max(1, STATISTICS_ELEMENTS // (p * d))
    count, mean, m2 = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, step):
        block = patches[start:min(start + step, n)].reshape(-1, d).double()
        b, block_mean = block.shape[0], block.mean(0)
        block_m2 = (block - block_mean).square().sum(0)
        delta, total = block_mean - mean, count + b
        mean = mean + delta * (b / total)
        m2 = m2 + block_m2 + delta.square() * (count * b / total)
        count = total
    return mean.float(), (m2 / (count - 1)).sqrt().float()
