"""First-stage retrieval: the project's one wrapper around faiss.

`RetrievalIndex` stores `[N, d]` embeddings under string ids and answers top-k inner-product queries with a
`Run`. The embeddings are expected to be L2-normalised, so inner product equals cosine similarity. Three kinds
of index are offered:

- `"flat"`: exact brute-force search; the reference the approximate kinds are measured against.
- `"ivf"`: an inverted file over k-means cells (`IndexIVFFlat`); search scans the `nprobe` nearest cells.
- `"hnsw"`: a hierarchical navigable small-world graph (`IndexHNSWFlat`); always on CPU.

No other module imports faiss; anything that needs nearest-neighbour search goes through this class.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mmrerank.core.deprecation import renamed_arguments
from mmrerank.core.io import atomic_write_json
from mmrerank.core.run import PAD, Run

KINDS = ("flat", "ivf", "hnsw")
DEVICES = ("auto", "cpu", "cuda")
FORMAT = "mmrerank.RetrievalIndex/1"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"

# k-means wants roughly this many training points per centroid; faiss warns below 39.
MIN_POINTS_PER_CELL = 39


def default_nlist(n: int) -> int:
    """The IVF cell count used when none is configured, for a corpus of `n` vectors.

    About `4 * sqrt(n)` (the usual rule of thumb: cells hold ~sqrt(n)/4 vectors each, so a probe is cheap), capped
    at `n / 39` so that k-means still sees at least 39 points per centroid, and at least 1.
    """
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


def _as_matrix(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    """`x` as a C-contiguous float32 `[n, d]` numpy array, the only layout faiss's Python API accepts.

    Raises:
        ValueError: if `x` is not 2-D or holds NaN/inf (faiss would silently return garbage neighbours).
    """
    if isinstance(x, Tensor):
        # Any device and dtype: copy to host float32 (bf16/fp16 have no numpy equivalent faiss could read).
        x = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [n, d] matrix; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain non-finite values (NaN or inf)")
    return x


class RetrievalIndex:
    """Inner-product nearest-neighbour index over string-identified vectors.

    Args:
        dim: the embedding dimension `d`.
        kind: one of `"flat"`, `"ivf"`, `"hnsw"`.
        nlist: IVF cell count; `None` derives it from the size of the first `add` (see `default_nlist`).
        nprobe: IVF cells scanned per query. Higher is more accurate and slower.
        m: HNSW neighbours per node (graph degree). Higher is more accurate, bigger and slower to build.
        ef_construction: HNSW candidate-list size while building.
        ef_search: HNSW candidate-list size while searching (faiss uses `max(ef_search, k)`).
        device: `"auto"` uses GPU 0 when faiss sees one (flat and IVF only; HNSW has no GPU version and stays on
            CPU), `"cpu"` forces the CPU, `"cuda"` requires a GPU.

    The defaults reach recall@10 >= 0.95 against `"flat"` on 100,000 x 128 clustered unit vectors; see
    `scripts/bench_index.py` for the measurement.

    Row `i` of the corpus (in order of `add` calls) has id `ids[i]`; a search's `Run.doc_ids` is that list, so
    `run.indices` are corpus rows.

    Examples:
        >>> import torch
        >>> index = RetrievalIndex(dim=2, device="cpu")
        >>> index.add(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), ids=["red", "blue", "purple"])
        >>> run = index.search(torch.tensor([[0.0, 1.0]]), depth=2, query_ids=["sky"])
        >>> [run.doc_ids[i] for i in run.indices[0].tolist()]
        ['blue', 'purple']
    """

    def __init__(self, dim: int, kind: str = "flat", *, nlist: int | None = None, nprobe: int = 32, m: int = 32,
                 ef_construction: int = 64, ef_search: int = 64, device: str = "auto") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        if dim < 1:
            raise ValueError(f"dim must be positive; got {dim}")
        for name, value in (("nprobe", nprobe), ("m", m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search)):
            if value < 1:
                raise ValueError(f"{name} must be positive; got {value}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be positive; got {nlist}")
        self.dim = dim
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.device = device
        self.use_gpu = self._resolve_gpu(device, kind)
        self._gpu_resources: Any = None  # must outlive the GPU index that uses it
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        # IVF is built on the first add, once the corpus size (and so the default nlist) is known.
        self._index: faiss.Index | None = None if kind == "ivf" else self._place(self._new_cpu_index())

    @staticmethod
    def _resolve_gpu(device: str, kind: str) -> bool:
        gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        if device == "cuda" and gpus == 0:
            raise RuntimeError("device='cuda' but faiss sees no GPU (is faiss-gpu installed?)")
        return device != "cpu" and gpus > 0 and kind in ("flat", "ivf")

    # --- building ------------------------------------------------------------------------------------------------

    def _new_cpu_index(self) -> faiss.Index:
        """A fresh, empty CPU index of the configured kind (IVF needs `self.nlist` resolved first)."""
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            return index
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _place(self, cpu_index: faiss.Index) -> faiss.Index:
        """Apply the search-time parameters and move `cpu_index` to the GPU when configured to."""
        self._apply_search_params(cpu_index)
        if not self.use_gpu:
            return cpu_index
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        # The GPU clone copies nprobe from the CPU index, so the parameters set above carry over.
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, cpu_index)

    def _apply_search_params(self, index: faiss.Index) -> None:
        if self.kind == "ivf":
            index.nprobe = self.nprobe
        elif self.kind == "hnsw":
            index.hnsw.efSearch = self.ef_search

    def add(self, vectors: Tensor | np.ndarray, ids: Sequence[str] | None = None) -> None:
        """Append `[N, d]` vectors to the corpus.

        An IVF index is trained (k-means for its cells) on the vectors of the FIRST call that brings any, and
        later calls only assign vectors to those cells; so pass a representative corpus (ideally all of it)
        the first time. When `nlist` is `None` it is derived from that first batch's size.

        Args:
            vectors: `[N, d]` tensor (any device, any float dtype) or array; expected L2-normalised.
            ids: `N` unique string ids; by default the corpus row numbers `str(row)`.

        Raises:
            ValueError: wrong dimension, non-finite values, wrong id count, duplicate ids, or (IVF) fewer
                vectors in the first batch than `nlist` cells.
        """
        x = _as_matrix(vectors, "vectors")
        n, d = x.shape
        if d != self.dim:
            raise ValueError(f"vectors have dimension {d} but the index was built for dimension {self.dim}")
        start = len(self._ids)
        if ids is not None:
            missing = [row for row, i in enumerate(ids) if i is None]
            if missing:  # str(None) would file the vector under the id 'None'
                raise ValueError(f"id of vector {missing[0]} is None ({len(missing)} such ids); every vector "
                                 "needs an id")
        new_ids = [str(start + i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(new_ids) != n:
            raise ValueError(f"got {n} vectors but {len(new_ids)} ids")
        new_set = set(new_ids)
        if len(new_set) != n or not self._id_set.isdisjoint(new_set):
            raise ValueError("ids must be unique across the whole index")
        if n == 0:
            return
        if self._index is None:  # first IVF add: size the cells and train
            if self.nlist is None:
                self.nlist = default_nlist(n)
            if n < self.nlist:
                raise ValueError(f"IVF training needs at least nlist={self.nlist} vectors in the first add; got {n}")
            index = self._place(self._new_cpu_index())
            index.train(x)
            self._index = index
        self._index.add(x)
        self._ids.extend(new_ids)
        self._id_set |= new_set

    # --- searching -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """The corpus ids in row order (a copy)."""
        return list(self._ids)

    @renamed_arguments(k="depth")
    def search(self, queries: Tensor | np.ndarray, depth: int, query_ids: Sequence[str] | None = None,
               batch_size: int = 4096) -> Run:
        """Top-`depth` corpus rows by inner product for each query.

        Args:
            queries: `[Q, d]` tensor (any device/dtype) or array.
            depth: candidates per query (the first stage's K; `k=` is its deprecated name); clipped to the corpus
                size, so the run holds `min(depth, len(self))` per query.
            query_ids: `Q` ids for the run's rows; by default `str(row)`.
            batch_size: queries per faiss call; a progress bar is shown when there is more than one batch.

        Returns:
            A `Run` with `[Q, min(depth, N)]` CPU `indices`/`scores`, each row sorted by score descending, and
            `doc_ids = self.ids`. Slots an approximate index could not fill (e.g. IVF cells with too few
            vectors) are `PAD` with score `-inf`.

        Raises:
            RuntimeError: the index is empty.
            ValueError: bad `depth`, dimension mismatch, non-finite queries, or wrong number of query ids.
        """
        if len(self) == 0:
            raise RuntimeError("cannot search an empty RetrievalIndex; add vectors first")
        if depth < 1:
            raise ValueError(f"depth must be positive; got {depth}")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the index was built for dimension {self.dim}")
        n_queries = q.shape[0]
        qids = [str(i) for i in range(n_queries)] if query_ids is None else [str(i) for i in query_ids]
        if len(qids) != n_queries:
            raise ValueError(f"got {n_queries} queries but {len(qids)} query ids")
        depth = min(depth, len(self))
        scores = np.empty((n_queries, depth), dtype=np.float32)
        indices = np.empty((n_queries, depth), dtype=np.int64)
        starts = range(0, n_queries, batch_size)
        for s in tqdm(starts, desc=f"search {self.kind}", unit="batch", disable=len(starts) <= 1):
            scores[s:s + batch_size], indices[s:s + batch_size] = self._index.search(q[s:s + batch_size], depth)
        indices_t = torch.from_numpy(indices)
        # faiss marks unfilled slots with id -1 (== PAD) and a huge negative score; the Run convention is -inf.
        scores_t = torch.from_numpy(scores).masked_fill(indices_t == PAD, -math.inf)
        return Run(indices_t, scores_t, qids, self.ids)

    # --- persistence ---------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (with `nlist` as resolved, once an IVF index is trained), minus `device`."""
        return {"dim": self.dim, "kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "m": self.m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def save(self, path: str | Path) -> None:
        """Write the index to directory `path` (`index.faiss` + `meta.json` with the config and ids).

        Everything is first written to a temporary directory beside `path`, which is then renamed onto it, so a
        crash never leaves a half-written directory at `path`. Replacing an existing save takes two renames
        (old out of the way, new in); a crash between them leaves no directory at `path` (and the old one under
        a hidden name beside it), never a mixed one. A GPU index is saved as its CPU copy.

        Raises:
            FileExistsError: `path` exists and is not a saved `RetrievalIndex` (it is never overwritten then).
        """
        path = Path(path)
        if path.exists() and not (path.is_dir() and (path / META_FILE).is_file()):
            raise FileExistsError(f"{path} exists and is not a saved RetrievalIndex; refusing to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        old: Path | None = None
        try:
            if self._index is not None:
                cpu_index = faiss.index_gpu_to_cpu(self._index) if self.use_gpu else self._index
                faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
            # meta.json is written last: a directory without it is never taken for a complete save.
            atomic_write_json(tmp / META_FILE, {"format": FORMAT, "config": self.config, "ntotal": len(self),
                                                "ids": self._ids})
            if path.exists():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
                os.replace(path, old / "index")
            os.replace(tmp, path)
        except BaseException:
            if old is not None and (old / "index").exists() and not path.exists():  # swap failed half-way: undo
                os.replace(old / "index", path)
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> RetrievalIndex:
        """Read an index written by `save`, placing it on `device` (see the constructor).

        Raises:
            FileNotFoundError: nothing saved at `path`.
            ValueError: the files at `path` are corrupt or inconsistent.
        """
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no saved RetrievalIndex at {path} (missing {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            config, ids = meta["config"], meta["ids"]
            _check_ids(ids)
            index = cls(**config, device=device)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"corrupt RetrievalIndex metadata in {meta_path}: {err}") from err
        index_path = path / INDEX_FILE
        if index_path.exists():
            try:
                cpu_index = faiss.read_index(str(index_path))
            except RuntimeError as err:  # faiss reports truncated/garbled files as RuntimeError
                raise ValueError(f"corrupt faiss index file {index_path}: {err}") from err
            if cpu_index.ntotal != len(ids) or cpu_index.d != index.dim:
                raise ValueError(f"{index_path} holds {cpu_index.ntotal} vectors of dimension {cpu_index.d}, but "
                                 f"{meta_path} lists {len(ids)} ids of dimension {index.dim}")
            mismatch = _kind_mismatch(cpu_index, index)
            if mismatch:
                raise ValueError(f"{index_path} does not match {meta_path} (kind {index.kind!r}): {mismatch}")
            index._index = index._place(cpu_index)
        elif ids or config["kind"] != "ivf":
            raise ValueError(f"corrupt RetrievalIndex at {path}: missing {INDEX_FILE}")
        index._ids = list(ids)
        index._id_set = set(ids)
        return index

    def __repr__(self) -> str:
        where = "gpu" if self.use_gpu else "cpu"
        return f"RetrievalIndex(kind={self.kind!r}, dim={self.dim}, n={len(self)}, device={where!r})"


_FAISS_CLASS = {"flat": "IndexFlat", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}


def _check_ids(ids: Any) -> None:
    """Saved ids must be a list of distinct strings (a search would otherwise name the wrong or no document)."""
    if not isinstance(ids, list):
        raise ValueError(f"'ids' is a {type(ids).__name__}, expected a list of strings")
    first: dict[str, int] = {}
    for row, doc_id in enumerate(ids):
        if not isinstance(doc_id, str):
            raise ValueError(f"id of row {row} is {doc_id!r}, expected a string")
        if doc_id in first:
            raise ValueError(f"id {doc_id!r} appears twice (rows {first[doc_id]} and {row}); ids must be unique")
        first[doc_id] = row


def _kind_mismatch(cpu_index: faiss.Index, index: RetrievalIndex) -> str | None:
    """Why a faiss index read from disk is not what the metadata describes (another kind, metric or cell count),
    or None when it is."""
    expected = getattr(faiss, _FAISS_CLASS[index.kind])
    if not isinstance(cpu_index, expected):
        return f"the faiss file holds a {type(cpu_index).__name__}, expected a {expected.__name__}"
    if cpu_index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return f"the faiss index's metric is {cpu_index.metric_type}, expected inner product"
    if index.kind == "ivf" and cpu_index.nlist != index.nlist:
        return f"the faiss index has {cpu_index.nlist} cells, the metadata says nlist={index.nlist}"
    return None


def retrieve(query_emb: Tensor, corpus_emb: Tensor, query_ids: Sequence[str], corpus_ids: Sequence[str], depth: int,
             index_kind: str = "flat") -> Run:
    """A first-stage run through a `RetrievalIndex`: the top `depth` corpus items per query by inner product.

    Args:
        query_emb: `[Q, d]`, corpus_emb: `[N, d]` (L2-normalised), with their ids.
    """
    index = RetrievalIndex(corpus_emb.shape[1], kind=index_kind)
    index.add(corpus_emb, corpus_ids)
    return index.search(query_emb, depth, query_ids)
