"""Writing a token store (`TokenStoreWriter`, `write_token_store`): one locked writer, shard by shard, resumable, each
shard checksummed and its values checked; the format is described in `mmrerank.rerankers.edje.store`."""

from __future__ import annotations

import fcntl
import json
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrerank.core.deprecation import renamed_function
from mmrerank.core.io import atomic_path, atomic_write_json
from mmrerank.rerankers.edje.store import (
    _DTYPES,
    DATA_FILE,
    FORMAT,
    HEADER_FILE,
    IDS_FILE,
    ITEMSIZE,
    LOCK_FILE,
    VERSION,
    IncompleteTokenStoreError,
    StaleTokenStoreError,
    TokenStore,
    TokenStoreError,
    TokenStoreLockedError,
    _check_data_size,
    _check_ids,
    _crc32_of_file,
    _read_header,
    _read_json,
    canonical_dtype,
)


def _lock(root: Path) -> int:
    """Take the store's writer lock, an exclusive non-blocking `flock` on `root/writer.lock`; returns its fd.

    An flock belongs to the open file, so the kernel drops it when the fd is closed or the holder dies (even by
    SIGKILL), and two writer objects in one process conflict like two processes. The lock file is never deleted:
    deleting it would let a waiting writer lock the old, unlinked file while a third one locks a new file.

    Raises:
        TokenStoreLockedError: another writer holds it (the message names the folder and the holder's pid).
    """
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise TokenStoreLockedError(f"{root}: token store is being written by another writer (pid {holder}, lock "
                                    f"{path}); wait for it to finish or stop it, then retry") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _json_value(value: Any, what: str) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that a stored copy compares equal to it."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable ({e})") from None


def _differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    """`key: has X, asked for Y` for each differing key (one level into dicts, so a long provenance stays short)."""
    out = []
    for key in want:
        a, b = have.get(key), want[key]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}: has {a.get(k)!r}, asked for {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                    if a.get(k) != b.get(k)]
        else:
            out.append(f"{key}: has {a!r}, asked for {b!r}")
    return "; ".join(out)


def _first_ids(ids: Sequence[Any], mask: Tensor, limit: int = 5) -> str:
    """The ids where `mask` `[b]` is true: the first `limit` of them, and how many more."""
    rows = mask.nonzero().flatten().tolist()
    shown = ", ".join(repr(ids[r]) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _refuse_nonfinite(raw: Tensor, stored: Tensor, ids: Sequence[Any], dtype: str, where: Path) -> None:
    """Raise if any image's tokens are NaN, or infinite once cast to the store's dtype (overflow).

    Args:
        raw: `[b, m, d]` the tokens as computed (any float dtype).
        stored: `[b, m, d]` the same tokens in the store's dtype.
        ids: the b images' ids.

    Raises:
        ValueError: naming the data file, the images and the largest magnitude found.
    """
    nan = raw.isnan().flatten(1).any(1)
    inf = stored.isinf().flatten(1).any(1) & ~nan
    if not (nan.any() or inf.any()):
        return
    problems = []
    if nan.any():
        problems.append(f"NaN in the tokens of image ids {_first_ids(ids, nan)}")
    if inf.any():
        biggest = raw[inf].float().abs().max().item()
        limit = torch.finfo(_DTYPES[dtype][0]).max
        hint = " (bfloat16 has float32's range)" if dtype == "float16" else ""
        problems.append(f"values beyond {dtype}'s range +-{limit:g} (largest |value| {biggest:g}){hint} in the "
                        f"tokens of image ids {_first_ids(ids, inf)}")
    raise ValueError(f"{where}: refusing to write " + "; ".join(problems))


class TokenStoreWriter:
    """Creates a token store, or resumes an unfinished one, and fills it shard by shard.

    Shard `k` holds rows `[k * shard_size, min((k + 1) * shard_size, N))`. Shards may be written in any order; each
    `write_shard` flushes the rows to disk before the header records the shard as done, with its crc32. Use as a
    context manager or call `close`: the writer holds the store's lock (`writer.lock`) from construction to
    `close` / `finalize`, and a second writer of the same folder meanwhile is refused.

    Args:
        path: the store's folder (created if needed).
        ids: the N image ids, unique, in row order.
        m: tokens per image.
        d: token width.
        dtype: "float16" or "bfloat16" (or the torch dtype).
        shard_size: rows per shard, the unit of progress.
        overwrite: start afresh even when `path` holds a store (finished or not); otherwise an existing store
            must have the same ids, shape, dtype, shard size and provenance, and writing resumes it.
        fsync: fsync the data file before recording each shard (off only for throwaway stores).
        provenance: what produces the tokens (JSON: e.g. digests of the model and of the images, see
            `state_digest` / `images_digest`), recorded in the header; resuming requires it to be equal, so a
            store written by another model or from other images is never continued or reused.

    Raises:
        TokenStoreLockedError: another writer holds the store.
        StaleTokenStoreError: an existing store at `path` differs from the request (the message says how), or has
            format version 1 (no provenance).
        TokenStoreError: an existing store is malformed or its data file has the wrong size.
    """

    def __init__(self, path: str | Path, ids: Sequence[str | int], m: int, d: int, dtype: Any = "float16",
                 shard_size: int = 1024, overwrite: bool = False, fsync: bool = True,
                 provenance: dict[str, Any] | str | None = None):
        if m <= 0 or d <= 0 or shard_size <= 0:
            raise ValueError(f"m, d and shard_size must be positive, got {m}, {d}, {shard_size}")
        self.root = Path(path)
        self.ids = _check_ids(ids)
        self.dtype = canonical_dtype(dtype)
        self.shape = (len(self.ids), m, d)
        self.shard_size, self.fsync = shard_size, fsync
        self.provenance = _json_value(provenance, "provenance")
        self.num_shards = -(-len(self.ids) // shard_size)
        self.header_path, self.data_path = self.root / HEADER_FILE, self.root / DATA_FILE
        self.row_bytes = m * d * ITEMSIZE
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock(self.root)
        self._fd: int | None = None
        try:
            if self.header_path.exists() and not overwrite:
                self.done, self.crc = self._resume()
            else:
                self.done, self.crc = set(), [None] * self.num_shards
                self._create()
            self._fd = os.open(self.data_path, os.O_RDWR)
        except BaseException:
            self.close()  # a refused resume must not keep the lock
            raise

    def _header(self, complete: bool) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "dtype": self.dtype, "shape": list(self.shape),
                "itemsize": ITEMSIZE, "shard_size": self.shard_size, "num_shards": self.num_shards,
                "shards_done": sorted(self.done), "shard_crc32": self.crc, "provenance": self.provenance,
                "complete": complete}

    def _create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Drop any old header first, so that no reader pairs it with the new data while we write.
        self.header_path.unlink(missing_ok=True)
        atomic_write_json(self.root / IDS_FILE, self.ids)
        with atomic_path(self.data_path) as tmp:
            with open(tmp, "wb") as f:
                f.truncate(len(self.ids) * self.row_bytes)  # sparse: untouched shards take no disk space
        atomic_write_json(self.header_path, self._header(complete=False))

    def _resume(self) -> tuple[set[int], list[int | None]]:
        """The finished shards of the existing store and their checksums, after checking it matches the request.

        A finished shard whose bytes no longer match its checksum is dropped from the finished ones (with a
        warning), so that it is written again.
        """
        header = _read_header(self.root)
        if header["version"] != VERSION:
            raise StaleTokenStoreError(f"{self.header_path}: format version {header['version']} (no checksums, no "
                                       "provenance: what wrote it is unknown); pass overwrite=True to rebuild it")
        want = {"dtype": self.dtype, "shape": list(self.shape), "shard_size": self.shard_size,
                "provenance": self.provenance}
        differs = _differences(header, want)
        if differs:
            raise StaleTokenStoreError(f"{self.header_path}: existing store was written for another request: "
                                       f"{differs}; pass overwrite=True to rebuild it")
        ids_path = self.root / IDS_FILE
        if _read_json(ids_path) != self.ids:
            raise StaleTokenStoreError(f"{ids_path}: existing store has other ids; pass overwrite=True to rebuild it")
        _check_data_size(self.data_path, len(self.ids) * self.row_bytes)
        done, crc = set(header["shards_done"]), list(header["shard_crc32"])
        bad = self._failing_shards(sorted(done), crc)
        if bad:
            warnings.warn(f"{self.data_path}: finished shards {bad} fail their crc32 check; writing them again",
                          stacklevel=3)
            done -= set(bad)
            for k in bad:
                crc[k] = None
        return done, crc

    def _failing_shards(self, shards: list[int], crc: list[int | None]) -> list[int]:
        """Those of `shards` whose bytes in the data file do not match their checksum in `crc`."""
        bad = []
        with open(self.data_path, "rb") as f:
            for k in shards:
                start, stop = self.shard_bounds(k)
                if _crc32_of_file(f.fileno(), start * self.row_bytes, (stop - start) * self.row_bytes) != crc[k]:
                    bad.append(k)
        return bad

    def shard_bounds(self, k: int) -> tuple[int, int]:
        """Rows `[start, stop)` of shard `k`."""
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} out of range [0, {self.num_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, len(self.ids))

    def pending_shards(self) -> list[int]:
        """Shards not yet recorded as written, in order."""
        return [k for k in range(self.num_shards) if k not in self.done]

    def write_shard(self, k: int, tokens: Tensor | np.ndarray) -> None:
        """Write shard `k`'s rows and record the shard as done.

        Args:
            k: shard index.
            tokens: `[stop - start, m, d]` in the store's dtype exactly (torch float16/bfloat16, or numpy float16
                for a float16 store); no silent casting, so a float32 mistake cannot halve precision unnoticed.

        Raises:
            TypeError: wrong dtype. ValueError: wrong shape, or NaN / inf values (naming the images). (All name the
                data file.)
        """
        if self._fd is None:
            raise ValueError(f"{self.data_path}: writer is closed")
        start, stop = self.shard_bounds(k)
        want_dtype = _DTYPES[self.dtype][0]
        if isinstance(tokens, np.ndarray):
            if tokens.dtype != np.float16:
                raise TypeError(f"{self.data_path}: shard {k} is numpy {tokens.dtype}, the store holds {self.dtype}")
            tokens = torch.from_numpy(tokens)
        if tokens.dtype != want_dtype:
            raise TypeError(f"{self.data_path}: shard {k} has dtype {tokens.dtype}, the store holds {want_dtype}")
        want_shape = (stop - start, *self.shape[1:])
        if tuple(tokens.shape) != want_shape:
            raise ValueError(f"{self.data_path}: shard {k} has shape {tuple(tokens.shape)}, expected {want_shape}")
        tokens = tokens.detach().cpu().contiguous()
        _refuse_nonfinite(tokens, tokens, self.ids[start:stop], self.dtype, self.data_path)
        view = memoryview(tokens.view(torch.int16).numpy()).cast("B")
        offset, written = start * self.row_bytes, 0
        while written < len(view):  # pwrite may write less than asked
            written += os.pwrite(self._fd, view[written:], offset + written)
        if self.fsync:
            os.fsync(self._fd)
        self.done.add(k)
        self.crc[k] = zlib.crc32(view)  # of the bytes handed to the file, so that verify sees any later change
        atomic_write_json(self.header_path, self._header(complete=False))

    def finalize(self) -> TokenStore:
        """Mark the store complete (after checking every shard is written) and open it for reading."""
        missing = self.pending_shards()
        if missing:
            raise IncompleteTokenStoreError(f"{self.header_path}: {len(missing)} of {self.num_shards} shards "
                                            f"unwritten (first: {missing[0]})")
        atomic_write_json(self.header_path, self._header(complete=True))
        self.close()
        return TokenStore(self.root)

    def close(self) -> None:
        """Close the data file and release the store's lock (idempotent)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def write_token_store(store_path: str | Path, ids: Sequence[str | int], encode_fn: Callable[[Tensor], Tensor], *,
                      m: int, d: int, dtype: Any = "float16", shard_size: int = 1024, batch_size: int | None = None,
                      progress: bool = True, overwrite: bool = False, fsync: bool = True,
                      provenance: dict[str, Any] | str | None = None, on_mismatch: str = "error") -> TokenStore:
    """Fill a token store with `encode_fn`, shard by shard, skipping shards an earlier (interrupted) run finished.

    An existing store at `store_path` is resumed (or, when complete, reused as it is) only if its ids, shape, dtype,
    shard size and provenance equal the request; its finished shards are checked against their checksums first
    (a failing one is computed again). Otherwise `on_mismatch` decides: `"error"` (the default here, so that no
    store is discarded unasked) raises `StaleTokenStoreError` saying what differs, `"rebuild"` warns and starts
    afresh. `overwrite=True` always starts afresh.

    Args:
        store_path: the store's folder.
        ids: the N image ids in row order.
        encode_fn: maps `[b]` int64 row indices (positions in `ids`) to `[b, m, d]` tokens, e.g. a vision tower
            followed by a `TokenCompressionAdapter`; run under `torch.no_grad()`. Floating outputs are cast to the
            store's dtype here (the deliberate conversion point; `TokenStoreWriter.write_shard` itself is strict).
        m, d: tokens per image and token width.
        dtype: "float16" or "bfloat16".
        shard_size: rows per shard (the unit of resumption).
        batch_size: rows per `encode_fn` call (default: `shard_size`); batches never cross shards.
        progress: show a tqdm bar over images.
        overwrite: discard an existing store at `store_path` instead of resuming it.
        fsync: passed to the writer.
        provenance: what produces the tokens (JSON, or a digest string), recorded in the header and compared with
            an existing store's.
        on_mismatch: `"error"` or `"rebuild"`, for an existing store that cannot be resumed (see above).

    Returns:
        The complete store, open for reading.

    Raises:
        ValueError: `encode_fn` gave NaN, or values beyond the dtype's range (float16: +-65504), naming the image
            ids; raised before the shard holding them is written.
        StaleTokenStoreError: a mismatching store with `on_mismatch="error"`.
        TokenStoreLockedError: another writer is filling the same store.
    """
    if on_mismatch not in ("error", "rebuild"):
        raise ValueError(f"on_mismatch must be 'error' or 'rebuild', got {on_mismatch!r}")
    batch_size = batch_size or shard_size
    args = (store_path, ids, m, d, dtype, shard_size)
    try:
        writer = TokenStoreWriter(*args, overwrite=overwrite, fsync=fsync, provenance=provenance)
    except TokenStoreLockedError:
        raise
    except TokenStoreError as err:
        if on_mismatch != "rebuild":
            raise
        warnings.warn(f"rebuilding token store {store_path}: {err}", stacklevel=2)
        writer = TokenStoreWriter(*args, overwrite=True, fsync=fsync, provenance=provenance)
    with writer:
        _fill(writer, encode_fn, batch_size, progress)
        return writer.finalize()


def _fill(writer: TokenStoreWriter, encode_fn: Callable[[Tensor], Tensor], batch_size: int, progress: bool) -> None:
    """Write every pending shard of `writer` from `encode_fn`, checking each batch before its shard is written."""
    torch_dtype = _DTYPES[writer.dtype][0]
    n, m, d = writer.shape
    pending = writer.pending_shards()
    done_rows = n - sum(b - a for a, b in map(writer.shard_bounds, pending))
    with tqdm(total=n, initial=done_rows, desc=f"precompute {writer.root.name}", unit="img",
              disable=not progress) as bar:
        for k in pending:
            start, stop = writer.shard_bounds(k)
            parts = []
            for s in range(start, stop, batch_size):
                idx = torch.arange(s, min(s + batch_size, stop))
                with torch.no_grad():
                    out = encode_fn(idx)
                if tuple(out.shape) != (len(idx), m, d):
                    raise ValueError(f"encode_fn returned shape {tuple(out.shape)} for {len(idx)} rows, "
                                     f"expected {(len(idx), m, d)}")
                if not out.is_floating_point():
                    raise TypeError(f"encode_fn returned {out.dtype}, expected floating-point tokens")
                raw = out.detach().cpu()
                stored = raw.to(torch_dtype)
                # Checked before the cast's result is kept: a value past float16's range would be stored as inf.
                _refuse_nonfinite(raw, stored, writer.ids[s:s + len(idx)], writer.dtype, writer.data_path)
                parts.append(stored)
                bar.update(len(idx))
            writer.write_shard(k, torch.cat(parts))


# The writer's name before it was told apart from the `mmrerank precompute` command's function (removed in 0.2).
precompute = renamed_function(write_token_store, "mmrerank.rerankers.edje.writer.precompute")
