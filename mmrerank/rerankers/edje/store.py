"""A memory-mapped store of precomputed image tokens `[N, m, d]` (fp16 or bf16), written shard by shard, resumably.

On disk a store is a folder of three files:

- `tokens.bin`: the raw rows, `N x m x d` elements of 2 bytes each, row-major, nothing else (so an image costs
  exactly `m * d * 2` bytes). bf16 is stored as its raw 16-bit patterns (numpy has no bfloat16) and viewed as
  `torch.bfloat16` on reading.
- `ids.json`: the image ids in row order (strings or integers).
- `header.json`: format name and version, dtype, shape, shard size, the finished shards and `complete`.

Writing: `TokenStoreWriter` fills one shard (a block of `shard_size` consecutive rows) at a time; after a shard's
bytes are flushed (and fsynced) to `tokens.bin`, the header listing it as finished is replaced atomically. A killed
write therefore loses at most the shard in flight, and reopening the writer with the same ids and shape resumes
with the missing shards. `finalize` writes `complete: true` last (again by atomic rename); `TokenStore` refuses to
open a store whose header does not say so, whose data file has the wrong size, or whose ids do not match the shape.

Reading: `TokenStore` maps `tokens.bin` copy-on-write (`numpy.memmap` mode "c") and wraps the map in a tensor
without copying; in-place edits of returned tensors stay private to the process and never reach the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrerank.core.io import atomic_path, atomic_write_json

FORMAT = "mmrerank.TokenStore"
VERSION = 1
HEADER_FILE, IDS_FILE, DATA_FILE = "header.json", "ids.json", "tokens.bin"

# dtype name -> (torch dtype, numpy dtype the raw bytes are mapped as)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.int16)),
}
_ALIASES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
ITEMSIZE = 2


class TokenStoreError(ValueError):
    """A token store on disk is missing, malformed, truncated or inconsistent (the message names the file)."""


class IncompleteTokenStoreError(TokenStoreError):
    """The store's header does not say `complete: true`: a write is unfinished (resume it with the writer)."""


def canonical_dtype(dtype: str | torch.dtype | np.dtype | type) -> str:
    """`"float16"` or `"bfloat16"` for any spelling of those two (names, torch dtypes, numpy float16)."""
    if dtype is torch.float16 or dtype is torch.bfloat16:
        return "float16" if dtype is torch.float16 else "bfloat16"
    if isinstance(dtype, str) and dtype.lower() in _ALIASES:
        return _ALIASES[dtype.lower()]
    try:
        if np.dtype(dtype) == np.float16:
            return "float16"
    except TypeError:
        pass
    raise ValueError(f"a token store holds float16 or bfloat16, not {dtype!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TokenStoreError(f"{path}: missing; is {path.parent} a token store?") from None
    except json.JSONDecodeError as e:
        raise TokenStoreError(f"{path}: not valid JSON ({e})") from None


def _read_header(root: Path) -> dict[str, Any]:
    path = root / HEADER_FILE
    header = _read_json(path)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TokenStoreError(f"{path}: not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise TokenStoreError(f"{path}: format version {header.get('version')!r}, this code reads {VERSION}")
    for key in ("dtype", "shape", "shard_size", "shards_done", "complete"):
        if key not in header:
            raise TokenStoreError(f"{path}: header lacks {key!r}")
    if header["dtype"] not in _DTYPES or len(header["shape"]) != 3:
        raise TokenStoreError(f"{path}: bad dtype {header['dtype']!r} or shape {header['shape']!r}")
    return header


def _check_data_size(path: Path, expected: int) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise TokenStoreError(f"{path}: data file missing") from None
    if actual < expected:
        raise TokenStoreError(f"{path}: truncated: {actual:,} bytes, the header's shape needs {expected:,}")
    if actual != expected:
        raise TokenStoreError(f"{path}: size mismatch: {actual:,} bytes, the header's shape needs {expected:,}")


def _check_ids(ids: Sequence[Any]) -> list[Any]:
    ids = list(ids)
    for i in ids:
        # JSON keeps str and int exactly; bool is an int subclass but would come back as a bool, so refuse it.
        if isinstance(i, bool) or not isinstance(i, (str, int)):
            raise TypeError(f"image ids must be str or int, got {type(i).__name__}: {i!r}")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    return ids


def footprint(path: str | Path) -> dict[str, int]:
    """Bytes on disk of a store's parts (complete or not): `data`, `header`, `ids`, `overhead` (= header + ids)."""
    root = Path(path)
    sizes = {"data": (root / DATA_FILE).stat().st_size, "header": (root / HEADER_FILE).stat().st_size,
             "ids": (root / IDS_FILE).stat().st_size}
    sizes["overhead"] = sizes["header"] + sizes["ids"]
    return sizes


class TokenStoreWriter:
    """Creates a token store, or resumes an unfinished one, and fills it shard by shard.

    Shard `k` holds rows `[k * shard_size, min((k + 1) * shard_size, N))`. Shards may be written in any order; each
    `write_shard` flushes the rows to disk before the header records the shard as done. Use as a context manager
    or call `close`.

    Args:
        path: the store's folder (created if needed).
        ids: the N image ids, unique, in row order.
        m: tokens per image.
        d: token width.
        dtype: "float16" or "bfloat16" (or the torch dtype).
        shard_size: rows per shard, the unit of progress.
        overwrite: start afresh even when `path` holds a store (finished or not); otherwise an existing store
            must have the same ids, shape, dtype and shard size, and writing resumes it.
        fsync: fsync the data file before recording each shard (off only for throwaway stores).

    Raises:
        TokenStoreError: an existing store at `path` differs from the request or its data file has the wrong size.
    """

    def __init__(self, path: str | Path, ids: Sequence[str | int], m: int, d: int, dtype: Any = "float16",
                 shard_size: int = 1024, overwrite: bool = False, fsync: bool = True):
        if m <= 0 or d <= 0 or shard_size <= 0:
            raise ValueError(f"m, d and shard_size must be positive, got {m}, {d}, {shard_size}")
        self.root = Path(path)
        self.ids = _check_ids(ids)
        self.dtype = canonical_dtype(dtype)
        self.shape = (len(self.ids), m, d)
        self.shard_size, self.fsync = shard_size, fsync
        self.num_shards = -(-len(self.ids) // shard_size)
        self.header_path, self.data_path = self.root / HEADER_FILE, self.root / DATA_FILE
        self.row_bytes = m * d * ITEMSIZE
        if self.header_path.exists() and not overwrite:
            self.done = self._resume()
        else:
            self.done = set()
            self._create()
        self._fd = os.open(self.data_path, os.O_RDWR)

    def _header(self, complete: bool) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "dtype": self.dtype, "shape": list(self.shape),
                "itemsize": ITEMSIZE, "shard_size": self.shard_size, "num_shards": self.num_shards,
                "shards_done": sorted(self.done), "complete": complete}

    def _create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Drop any old header first, so that no reader pairs it with the new data while we write.
        self.header_path.unlink(missing_ok=True)
        atomic_write_json(self.root / IDS_FILE, self.ids)
        with atomic_path(self.data_path) as tmp:
            with open(tmp, "wb") as f:
                f.truncate(len(self.ids) * self.row_bytes)  # sparse: untouched shards take no disk space
        atomic_write_json(self.header_path, self._header(complete=False))

    def _resume(self) -> set[int]:
        header = _read_header(self.root)
        want = {"dtype": self.dtype, "shape": list(self.shape), "shard_size": self.shard_size}
        have = {k: header[k] for k in want}
        if have != want:
            raise TokenStoreError(f"{self.header_path}: existing store has {have}, asked for {want}; "
                                  "pass overwrite=True to start afresh")
        ids_path = self.root / IDS_FILE
        if _read_json(ids_path) != self.ids:
            raise TokenStoreError(f"{ids_path}: existing store has other ids; pass overwrite=True to start afresh")
        _check_data_size(self.data_path, len(self.ids) * self.row_bytes)
        return set(header["shards_done"])

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
            TypeError: wrong dtype. ValueError: wrong shape. (Both name the data file.)
        """
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
        raw = tokens.detach().cpu().contiguous().view(torch.int16).numpy()
        view = memoryview(raw).cast("B")
        offset, written = start * self.row_bytes, 0
        while written < len(view):  # pwrite may write less than asked
            written += os.pwrite(self._fd, view[written:], offset + written)
        if self.fsync:
            os.fsync(self._fd)
        self.done.add(k)
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
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class TokenStore:
    """Read-only, memory-mapped access to a complete token store.

    `store.tensor` is the whole `[N, m, d]` store as one tensor over the map (no copy). `store.rows(...)` takes row
    indices: an int or a slice gives a view (no copy), a list or tensor of indices gathers the rows into a new
    tensor. `store[id]` / `store[[id, ...]]` does the same by image id.

    Args:
        path: the store's folder.

    Raises:
        IncompleteTokenStoreError: the header does not say `complete: true`.
        TokenStoreError: missing or malformed header/ids, ids not matching the shape, data file of the wrong size.
    """

    def __init__(self, path: str | Path):
        self.root = Path(path)
        header = _read_header(self.root)
        header_path = self.root / HEADER_FILE
        if header["complete"] is not True:
            raise IncompleteTokenStoreError(
                f"{header_path}: incomplete store ({len(header['shards_done'])} of {header.get('num_shards', '?')} "
                "shards written); finish it with precompute/TokenStoreWriter before reading")
        self.header = header
        n, m, d = (int(x) for x in header["shape"])
        self.shape = (n, m, d)
        self.dtype_name = header["dtype"]
        self.dtype, np_dtype = _DTYPES[self.dtype_name]
        ids_path = self.root / IDS_FILE
        self.ids = _read_json(ids_path)
        if not isinstance(self.ids, list) or len(self.ids) != n:
            raise TokenStoreError(f"{ids_path}: {len(self.ids) if isinstance(self.ids, list) else '?'} ids, "
                                  f"the header's shape has {n} rows")
        self._row = {i: r for r, i in enumerate(self.ids)}
        if len(self._row) != n:
            raise TokenStoreError(f"{ids_path}: duplicate ids")
        data_path = self.root / DATA_FILE
        _check_data_size(data_path, n * m * d * ITEMSIZE)
        if n * m * d == 0:
            self.array = np.zeros(self.shape, dtype=np_dtype)  # mmap cannot map an empty file
        else:
            # Copy-on-write: readers may edit returned tensors in place without a segfault or touching the file.
            self.array = np.memmap(data_path, dtype=np_dtype, mode="c", shape=self.shape)
        self.tensor = torch.from_numpy(self.array).view(self.dtype)  # zero-copy: shares the map's memory

    @property
    def num_tokens(self) -> int:
        return self.shape[1]

    @property
    def dim(self) -> int:
        return self.shape[2]

    @property
    def bytes_per_image(self) -> int:
        """Data bytes one image costs: `m * d * 2`."""
        return self.shape[1] * self.shape[2] * ITEMSIZE

    def footprint(self) -> dict[str, int]:
        """Bytes on disk: `data`, `header`, `ids` and `overhead` (header + ids)."""
        return footprint(self.root)

    def __len__(self) -> int:
        return self.shape[0]

    def __contains__(self, image_id: Any) -> bool:
        return image_id in self._row

    def index_of(self, ids: Sequence[Any]) -> Tensor:
        """Row indices `[b]` of image ids (KeyError naming an unknown id)."""
        try:
            return torch.tensor([self._row[i] for i in ids], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"image id {e.args[0]!r} not in token store {self.root}") from None

    def rows(self, index: int | slice | Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Rows by position: int -> `[m, d]` view, slice -> `[b, m, d]` view, indices -> `[b, m, d]` gathered copy."""
        if isinstance(index, (int, np.integer, slice)):
            return self.tensor[index]
        idx = torch.as_tensor(index, dtype=torch.long)
        # Gather on the numpy map (it reads only the requested rows), then view the raw result as the store dtype.
        return torch.from_numpy(self.array[idx.numpy()]).view(self.dtype)

    def __getitem__(self, key: Any) -> Tensor:
        """`store[id] -> [m, d]`, `store[[id, ...]] -> [b, m, d]`."""
        if isinstance(key, (list, tuple)):
            return self.rows(self.index_of(key))
        return self.rows(int(self.index_of([key])[0]))

    def __repr__(self) -> str:
        return f"TokenStore({str(self.root)!r}, shape={self.shape}, dtype={self.dtype_name})"


def precompute(store_path: str | Path, ids: Sequence[str | int], encode_fn: Callable[[Tensor], Tensor], *, m: int,
               d: int, dtype: Any = "float16", shard_size: int = 1024, batch_size: int | None = None,
               progress: bool = True, overwrite: bool = False, fsync: bool = True) -> TokenStore:
    """Fill a token store with `encode_fn`, shard by shard, skipping shards an earlier (interrupted) run finished.

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

    Returns:
        The complete store, open for reading.
    """
    batch_size = batch_size or shard_size
    with TokenStoreWriter(store_path, ids, m, d, dtype, shard_size, overwrite=overwrite, fsync=fsync) as writer:
        torch_dtype = _DTYPES[writer.dtype][0]
        pending = writer.pending_shards()
        done_rows = len(writer.ids) - sum(b - a for a, b in map(writer.shard_bounds, pending))
        with tqdm(total=len(writer.ids), initial=done_rows, desc=f"precompute {Path(store_path).name}",
                  unit="img", disable=not progress) as bar:
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
                    parts.append(out.detach().to("cpu", torch_dtype))
                    bar.update(len(idx))
                writer.write_shard(k, torch.cat(parts))
        return writer.finalize()
