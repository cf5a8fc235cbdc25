"""A memory-mapped store of precomputed image tokens `[N, m, d]` (fp16 or bf16), written shard by shard, resumably.

On disk a store is a folder of three files (and a lock file):

- `tokens.bin`: the raw rows, `N x m x d` elements of 2 bytes each, row-major, nothing else (so an image costs
  exactly `m * d * 2` bytes). bf16 is stored as its raw 16-bit patterns (numpy has no bfloat16) and viewed as
  `torch.bfloat16` on reading.
- `ids.json`: the image ids in row order (strings or integers).
- `header.json`: format name and version, dtype, shape, shard size, the finished shards, each finished shard's
  crc32 (`shard_crc32`, null for unwritten shards), the store's `provenance` (what produced it, JSON, given by the
  caller) and `complete`.
- `writer.lock`: empty but for the holder's pid; a writer holds an exclusive `flock` on it for its whole life.

Writing: `TokenStoreWriter` fills one shard (a block of `shard_size` consecutive rows) at a time; after a shard's
bytes are flushed (and fsynced) to `tokens.bin`, the header listing it as finished (with its checksum) is replaced
atomically. A killed write therefore loses at most the shard in flight, and reopening the writer with the same ids,
shape and provenance resumes with the missing shards; finished shards are checked against their checksums first and
redone if they no longer match. Only one writer at a time: a second one (another process, or another writer object)
is refused with `TokenStoreLockedError` naming the holder's pid; the kernel drops the lock when the holder closes it
or dies. `finalize` writes `complete: true` last (again by atomic rename). Values a 16-bit float cannot hold (NaN,
or beyond float16's +-65504) are refused, naming the images, instead of being written as NaN / inf.

Reading: `TokenStore` refuses to open a store whose header does not say `complete: true`, whose data file has the
wrong size, or whose ids do not match the shape. It maps `tokens.bin` copy-on-write (`numpy.memmap` mode "c") and
wraps the map in a tensor without copying; in-place edits of returned tensors stay private to the process and never
reach the file. Opening does not read the data (it stays lazy); `TokenStore.verify()` re-reads every shard against its
checksum, and a resuming writer (so every `precompute` that reuses a store) verifies the shards it keeps.

Format version 1 (before checksums and provenance) is still readable; a writer treats such a store as stale.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT = "mmrerank.TokenStore"
VERSION = 2  # 2: shard checksums and provenance in the header
READABLE_VERSIONS = (1, 2)
HEADER_FILE, IDS_FILE, DATA_FILE, LOCK_FILE = "header.json", "ids.json", "tokens.bin", "writer.lock"
_CHUNK = 8 << 20  # bytes per read when checksumming

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


class StaleTokenStoreError(TokenStoreError):
    """An existing store was written for another request: other ids, shape, dtype, shard size or provenance, or an
    older format without provenance. Rebuild it with `overwrite=True` (or `on_mismatch="rebuild"`)."""


class CorruptTokenStoreError(TokenStoreError):
    """A finished shard's bytes on disk no longer match the checksum recorded when it was written."""


class TokenStoreLockedError(TokenStoreError):
    """Another writer holds the store's lock (another process, or another writer object in this one)."""


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenStoreError(f"{path}: not valid JSON ({e})") from None


def _read_header(root: Path) -> dict[str, Any]:
    path = root / HEADER_FILE
    header = _read_json(path)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TokenStoreError(f"{path}: not a {FORMAT} header")
    if header.get("version") not in READABLE_VERSIONS:
        raise TokenStoreError(f"{path}: format version {header.get('version')!r}, this code reads {READABLE_VERSIONS}")
    keys = ("dtype", "shape", "shard_size", "shards_done", "complete")
    for key in keys + (("shard_crc32", "provenance") if header["version"] >= 2 else ()):
        if key not in header:
            raise TokenStoreError(f"{path}: header lacks {key!r}")
    if header["dtype"] not in _DTYPES or len(header["shape"]) != 3:
        raise TokenStoreError(f"{path}: bad dtype {header['dtype']!r} or shape {header['shape']!r}")
    if not isinstance(header["shard_size"], int) or header["shard_size"] <= 0:
        raise TokenStoreError(f"{path}: bad shard_size {header['shard_size']!r}")
    shards = -(-int(header["shape"][0]) // int(header["shard_size"]))
    if header["version"] >= 2 and (not isinstance(header["shard_crc32"], list) or len(header["shard_crc32"]) != shards):
        raise TokenStoreError(f"{path}: shard_crc32 must list one checksum (or null) for each of the {shards} shards")
    if not all(isinstance(k, int) and 0 <= k < shards for k in header["shards_done"]):
        raise TokenStoreError(f"{path}: shards_done must hold shard indices in [0, {shards})")
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


def _crc32_of_file(fd: int, offset: int, length: int) -> int:
    """crc32 of `length` bytes of an open file from `offset`, read in chunks (the file itself, not a map of it)."""
    crc, done = 0, 0
    while done < length:
        chunk = os.pread(fd, min(_CHUNK, length - done), offset + done)
        if not chunk:
            break  # short file: the checksum will not match, which is what the caller reports
        crc, done = zlib.crc32(chunk, crc), done + len(chunk)
    return crc


def footprint(path: str | Path) -> dict[str, int]:
    """Bytes on disk of a store's parts (complete or not): `data`, `header`, `ids`, `overhead` (= header + ids)."""
    root = Path(path)
    sizes = {"data": (root / DATA_FILE).stat().st_size, "header": (root / HEADER_FILE).stat().st_size,
             "ids": (root / IDS_FILE).stat().st_size}
    sizes["overhead"] = sizes["header"] + sizes["ids"]
    return sizes


class TokenStore:
    """Read-only, memory-mapped access to a complete token store.

    `store.tensor` is the whole `[N, m, d]` store as one tensor over the map (no copy). `store.rows(...)` takes row
    indices in `[0, N)` (no negative indices: -1 is a bug upstream more often than "the last row"): an int or a
    slice gives a view (no copy), a list or tensor of indices gathers the rows into a new tensor. `store[id]` /
    `store[[id, ...]]` does the same by image id. `store.provenance` is what the writer recorded as having produced
    the tokens; `store.verify()` checks the data against the shards' checksums (opening does not read the data).

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
        self.provenance = header.get("provenance")  # None for format version 1
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
    def dim(self) -> int:
        return self.shape[2]

    @property
    def bytes_per_image(self) -> int:
        """Data bytes one image costs: `m * d * 2`."""
        return self.shape[1] * self.shape[2] * ITEMSIZE

    def footprint(self) -> dict[str, int]:
        """Bytes on disk: `data`, `header`, `ids` and `overhead` (header + ids)."""
        return footprint(self.root)

    def verify(self) -> None:
        """Re-read every shard from the data file and check it against the crc32 recorded when it was written.

        Reads the whole file (at disk speed), which is why opening a store does not do it. The file is read
        directly, not through this object's copy-on-write map, so in-place edits of returned tensors do not count.

        Raises:
            CorruptTokenStoreError: a shard's bytes differ from what was written (the message names the shard, its
                rows and image ids).
            TokenStoreError: a format-version-1 store, which has no checksums.
        """
        data_path = self.root / DATA_FILE
        if self.header["version"] < 2:
            raise TokenStoreError(f"{self.root / HEADER_FILE}: format version {self.header['version']} has no "
                                  "checksums to verify; rebuild the store (precompute with overwrite=True)")
        shard_size, crc = int(self.header["shard_size"]), self.header["shard_crc32"]
        with open(data_path, "rb") as f:
            for k, expected in enumerate(crc):
                start, stop = k * shard_size, min((k + 1) * shard_size, len(self))
                actual = _crc32_of_file(f.fileno(), start * self.bytes_per_image, (stop - start) * self.bytes_per_image)
                if actual != expected:
                    raise CorruptTokenStoreError(
                        f"{data_path}: shard {k} (rows {start}-{stop - 1}, image ids {self.ids[start]!r} to "
                        f"{self.ids[stop - 1]!r}) fails its checksum (crc32 {actual:08x}, recorded "
                        f"{expected if expected is None else format(expected, '08x')}); the file changed after it "
                        "was written: rebuild the store (precompute with overwrite=True)")

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
        """Rows by position: int -> `[m, d]` view, slice -> `[b, m, d]` view, indices -> `[b, m, d]` gathered copy.

        Raises:
            IndexError: a negative or out-of-range row (or slice bound, or a slice step below 1), naming it.
        """
        n = len(self)
        if isinstance(index, slice):
            for name, bound in (("start", index.start), ("stop", index.stop)):
                if bound is not None and not 0 <= bound <= n:
                    raise IndexError(f"token store {self.root}: slice {name} {bound} outside [0, {n}]")
            if index.step is not None and index.step < 1:
                raise IndexError(f"token store {self.root}: slice step {index.step} must be at least 1")
            return self.tensor[index]
        if isinstance(index, (int, np.integer)):
            if not 0 <= index < n:
                raise IndexError(f"token store {self.root}: row {int(index)} outside [0, {n})")
            return self.tensor[index]
        idx = torch.as_tensor(index, dtype=torch.long)
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            raise IndexError(f"token store {self.root}: row {int(idx[bad][0])} outside [0, {n})")
        # Gather on the numpy map (it reads only the requested rows), then view the raw result as the store dtype.
        return torch.from_numpy(self.array[idx.numpy()]).view(self.dtype)

    def __getitem__(self, key: Any) -> Tensor:
        """`store[id] -> [m, d]`, `store[[id, ...]] -> [b, m, d]`."""
        if isinstance(key, (list, tuple)):
            return self.rows(self.index_of(key))
        return self.rows(int(self.index_of([key])[0]))

    def __repr__(self) -> str:
        return f"TokenStore({str(self.root)!r}, shape={self.shape}, dtype={self.dtype_name})"
