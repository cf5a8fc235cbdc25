"""Late-interaction (ColBERT / ColPali-style) retrieval: multi-vector documents scored by exact MaxSim.

`LateInteractionIndex` keeps every document's `[n_i, d]` token vectors once, as one flat `[T, d]` float16 array
with row offsets (memory-mapped after `load`, like the EDJE token store), and answers
`score(q, D) = sum_i max_j <q_i, d_j>` queries with the same `Run` that `RetrievalIndex` returns, so rerankers and
metrics work on it unchanged. Two search modes:

- `"exact"`: every document scored, in blocks of documents padded to the block's longest (one matmul and one masked
  max per block).
- `"candidates"`: each query token's `token_k` nearest document tokens from a `RetrievalIndex` over all tokens
  (the PLAID / ColBERTv2 first step), then exact MaxSim on the union of their documents. For large corpora.

Scores are accumulated in float32 whatever the storage dtype, on the index's device (`"auto"`: CUDA when present).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmrerank.core.device import resolve_device
from mmrerank.core.io import atomic_folder
from mmrerank.core.run import PAD, Run
from mmrerank.retrieval.pooling import pool_documents

FORMAT = "mmrerank.LateInteractionIndex/1"
META_FILE = "meta.json"
TOKENS_FILE = "tokens.f16"
OFFSETS_FILE = "offsets.i64"
MODES = ("exact", "candidates")
TOKEN_INDEX_KINDS = ("flat", "ivf", "hnsw")  # RetrievalIndex's kinds (not imported here: faiss only when used)


def pad_queries(queries: Sequence[Tensor] | Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Queries as one zero-padded `[Q, M, d]` float32 tensor and its `[Q, M]` bool mask of real tokens.

    Args:
        queries: `Q` tensors `[m_q, d]`, or one `[Q, M, d]` tensor (every token real).
        dim: the index's `d`, checked.
    """
    if isinstance(queries, Tensor):
        if queries.dim() != 3:
            raise ValueError(f"query vectors must be [Q, M, d] or a list of [m, d]; got shape {tuple(queries.shape)}")
        queries = list(queries)
    if not len(queries):
        raise ValueError("no query vectors given")
    for i, q in enumerate(queries):
        if q.dim() != 2 or q.shape[1] != dim or q.shape[0] == 0:
            raise ValueError(f"query {i} has shape {tuple(q.shape)}; expected [m > 0, {dim}]")
    longest = max(q.shape[0] for q in queries)
    padded = torch.zeros(len(queries), longest, dim)
    mask = torch.zeros(len(queries), longest, dtype=torch.bool)
    for i, q in enumerate(queries):
        padded[i, : q.shape[0]] = q.detach().to("cpu", torch.float32)
        mask[i, : q.shape[0]] = True
    if not torch.isfinite(padded).all():
        raise ValueError("query vectors contain non-finite values (NaN or inf)")
    return padded, mask


def padded_documents(flat: Tensor, starts: Tensor, lengths: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Documents `starts[i] : starts[i] + lengths[i]` of the flat `[T, d]` store as `[B, L, d]` float32 on `device`
    (zero-padded to the longest) and their `[B, L]` bool mask."""
    longest = int(lengths.max())
    steps = torch.arange(longest)
    mask = steps[None, :] < lengths[:, None]  # [B, L]
    rows = (starts[:, None] + steps[None, :]).masked_fill(~mask, 0)  # padding reads row 0, then is masked
    return flat[rows].to(device=device, dtype=torch.float32), mask.to(device)


def maxsim_padded(queries: Tensor, mask: Tensor, docs: Tensor, doc_mask: Tensor) -> Tensor:
    """Exact MaxSim: padding tokens of either side add nothing (unlike scoring zero-padded tensors, where a padded
    document token's similarity 0 can beat every real one).

    Args:
        queries: `[Q, M, d]` float32; mask: `[Q, M]` bool.
        docs: `[B, L, d]` float32; doc_mask: `[B, L]` bool, every document with at least one real token.

    Returns:
        `[Q, B]` float32 scores.
    """
    q, m, d = queries.shape
    b, length, _ = docs.shape
    sim = (queries.reshape(q * m, d) @ docs.reshape(b * length, d).T).view(q * m, b, length)  # one matmul
    best = sim.masked_fill_(~doc_mask, -math.inf).amax(-1)  # [Q*M, B]
    return (best.view(q, m, b) * mask.unsqueeze(-1)).sum(1)


def maxsim_scores(queries: Sequence[Tensor], documents: Sequence[Tensor]) -> Tensor:
    """`[Q, N]` exact MaxSim of `Q` query tensors `[m_i, d]` against `N` documents `[n_j, d]` held in memory (a few
    documents: the index scores a corpus in blocks), through `maxsim_padded`."""
    if not len(queries) or not len(documents):
        return torch.zeros(len(queries), len(documents))
    return maxsim_padded(*_padded(queries), *_padded(documents))


def _padded(vectors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """`[B, L, d]` float32 (zero-padded) and its `[B, L]` bool mask of real rows."""
    lengths = torch.tensor([v.shape[0] for v in vectors])
    padded = torch.nn.utils.rnn.pad_sequence([v.detach().float().cpu() for v in vectors], batch_first=True)
    return padded, torch.arange(padded.shape[1])[None, :] < lengths[:, None]


def _stable_top(scores: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """Top `depth` columns of `[Q, N]` by score; equal scores keep the lower column first (as `Run.sorted`)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
    return scores.gather(1, order), order


class LateInteractionIndex:
    """Multi-vector documents under string ids, searched by exact MaxSim.

    Args:
        dim: the token vector dimension `d`.
        pool_factor: hierarchical token pooling at `add` (see `pooling.hierarchical_pool`); 1 keeps every token.
        device: where scoring runs: `"auto"` (CUDA when available), `"cpu"`, `"cuda"`.
        block_tokens: document tokens scored per matmul (documents padded to the block's longest); bounds the
            similarity matrix at about `query_batch * M * block_tokens * 4` bytes. 2,048-8,192 were within 15 % of
            each other on one CPU thread (scripts/bench_late_index.py); a GPU wants larger blocks.
        query_batch: queries scored together.
        token_index: the `RetrievalIndex` kind over all tokens for `"candidates"` search (`"flat"`, `"ivf"`,
            `"hnsw"`: approximate and faster on large corpora).

    Row `i` of the corpus (in order of `add`) has id `ids[i]`; a search's `Run.doc_ids` is that list.
    """

    def __init__(self, dim: int, pool_factor: int = 1, *, device: str = "auto", block_tokens: int = 4096,
                 query_batch: int = 32, token_index: str = "flat") -> None:
        if dim < 1 or pool_factor < 1 or block_tokens < 1 or query_batch < 1:
            raise ValueError(f"dim, pool_factor, block_tokens and query_batch must be positive; got {dim}, "
                             f"{pool_factor}, {block_tokens}, {query_batch}")
        if token_index not in TOKEN_INDEX_KINDS:
            raise ValueError(f"unknown token_index {token_index!r}; expected one of {', '.join(TOKEN_INDEX_KINDS)}")
        self.dim, self.pool_factor = dim, pool_factor
        self.device = resolve_device(device)
        self.block_tokens, self.query_batch, self.token_index = block_tokens, query_batch, token_index
        self._chunks: list[Tensor] = []  # float16 [n_i, d] of adds not yet joined into `_tokens`
        self._tokens = torch.empty(0, dim, dtype=torch.float16)
        self._offsets = [0]
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._token_index = None  # the RetrievalIndex over all tokens, built on the first candidates search

    # --- building ------------------------------------------------------------------------------------------------

    def add(self, doc_vectors: Sequence[Tensor], ids: Sequence[str] | None = None) -> None:
        """Append documents, each `[n_i, d]` (L2-normalised token vectors, any float dtype and device).

        Raises:
            ValueError: a document of the wrong shape, empty or non-finite; wrong id count; duplicate ids.
        """
        new_ids = [str(len(self._ids) + i) for i in range(len(doc_vectors))] if ids is None else [str(i) for i in ids]
        if len(new_ids) != len(doc_vectors):
            raise ValueError(f"got {len(doc_vectors)} documents but {len(new_ids)} ids")
        if len(set(new_ids)) != len(new_ids) or not self._id_set.isdisjoint(new_ids):
            raise ValueError("ids must be unique across the whole index")
        for i, doc in enumerate(doc_vectors):
            if doc.dim() != 2 or doc.shape[1] != self.dim or doc.shape[0] == 0:
                raise ValueError(f"document {new_ids[i]!r} has shape {tuple(doc.shape)}; expected [n > 0, {self.dim}]")
            if not torch.isfinite(doc).all():
                raise ValueError(f"document {new_ids[i]!r} has non-finite values (NaN or inf)")
        docs = pool_documents(list(doc_vectors), self.pool_factor)
        for doc in docs:
            self._chunks.append(doc.detach().to("cpu", torch.float16))
            self._offsets.append(self._offsets[-1] + doc.shape[0])
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        self._token_index = None

    def _flat(self) -> Tensor:
        """All tokens as one `[T, d]` float16 tensor (joins pending adds once)."""
        if self._chunks:
            self._tokens = torch.cat([self._tokens, *self._chunks])
            self._chunks = []
        return self._tokens

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def num_tokens(self) -> int:
        return self._offsets[-1]

    def document(self, row: int) -> Tensor:
        """Document `row`'s stored `[n, d]` float16 tokens (after pooling)."""
        return self._flat()[self._offsets[row]: self._offsets[row + 1]]

    # --- searching -----------------------------------------------------------------------------------------------

    def _blocks(self) -> list[tuple[int, int]]:
        """Consecutive document ranges `[a, b)` of about `block_tokens` tokens each (a long document alone)."""
        blocks, start = [], 0
        for row in range(len(self)):
            if self._offsets[row + 1] - self._offsets[start] > self.block_tokens and row > start:
                blocks.append((start, row))
                start = row
        blocks.append((start, len(self)))
        return blocks

    def score_all(self, queries: Tensor, mask: Tensor) -> Tensor:
        """`[Q, N]` exact MaxSim of padded `[Q, M, d]` queries against every document (in blocks)."""
        offsets = torch.tensor(self._offsets)
        queries, mask = queries.to(self.device), mask.to(self.device)  # once, not once per block
        return torch.cat([self.score_rows(queries, mask, torch.arange(a, b), offsets) for a, b in self._blocks()], 1)

    def score_rows(self, queries: Tensor, mask: Tensor, rows: Tensor, offsets: Tensor | None = None) -> Tensor:
        """`[Q, len(rows)]` exact MaxSim of padded `[Q, M, d]` queries against the documents `rows`."""
        offsets = torch.tensor(self._offsets) if offsets is None else offsets
        starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
        docs, doc_mask = padded_documents(self._flat(), starts, lengths, self.device)
        return maxsim_padded(queries.to(self.device), mask.to(self.device), docs, doc_mask)

    def search(self, query_vectors: Sequence[Tensor] | Tensor, depth: int, query_ids: Sequence[str] | None = None,
               mode: str = "exact", token_k: int = 64) -> Run:
        """Top-`depth` documents by MaxSim for each query.

        Args:
            query_vectors: `Q` tensors `[m_q, d]` or one `[Q, M, d]` tensor.
            depth: candidates per query, clipped to the corpus size.
            query_ids: `Q` ids for the run's rows; by default `str(row)`.
            mode: `"exact"` scores every document; `"candidates"` scores the documents owning each query token's
                `token_k` nearest tokens (found by a `RetrievalIndex`), which may miss some of the exact top.
            token_k: nearest document tokens per query token in `"candidates"` mode.

        Returns:
            A CPU `Run` `[Q, min(depth, N)]`, rows sorted by score (ties: lower corpus row first), `doc_ids = ids`;
            in `"candidates"` mode a query with fewer candidates than `depth` has `PAD` slots.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if len(self) == 0:
            raise RuntimeError("cannot search an empty LateInteractionIndex; add documents first")
        if depth < 1 or token_k < 1:
            raise ValueError(f"depth and token_k must be positive; got {depth}, {token_k}")
        queries, mask = pad_queries(query_vectors, self.dim)
        qids = [str(i) for i in range(len(queries))] if query_ids is None else [str(i) for i in query_ids]
        if len(qids) != len(queries):
            raise ValueError(f"got {len(queries)} queries but {len(qids)} query ids")
        depth = min(depth, len(self))
        if mode == "candidates":
            scores, indices = self._search_candidates(queries, mask, depth, token_k)
        else:
            parts = [_stable_top(self.score_all(queries[s:s + self.query_batch], mask[s:s + self.query_batch]), depth)
                     for s in range(0, len(queries), self.query_batch)]
            scores = torch.cat([p[0] for p in parts]).cpu()
            indices = torch.cat([p[1] for p in parts]).cpu()
        return Run(indices, scores, qids, self.ids)

    def _search_candidates(self, queries: Tensor, mask: Tensor, depth: int, token_k: int) -> tuple[Tensor, Tensor]:
        """`[Q, depth]` scores and indices from exact MaxSim over each query's candidate documents."""
        token_index = self._tokens_index()
        owner = torch.repeat_interleave(torch.arange(len(self)), torch.tensor(self._offsets).diff())
        flat_q = queries[mask]  # [sum m_q, d]: every real query token at once
        hits = token_index.search(flat_q, min(token_k, self.num_tokens)).indices
        starts = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
        scores = torch.full((len(queries), depth), -math.inf)
        indices = torch.full((len(queries), depth), PAD, dtype=torch.long)
        for i in range(len(queries)):
            found = hits[starts[i]: starts[i + 1]]
            rows = torch.unique(owner[found[found != PAD]])  # sorted, so ties keep the lower row first
            s = self.score_rows(queries[i: i + 1], mask[i: i + 1], rows)[0].cpu()
            top_s, top_c = _stable_top(s.unsqueeze(0), depth)
            scores[i, : top_s.shape[1]], indices[i, : top_s.shape[1]] = top_s[0], rows[top_c[0]]
        return scores, indices

    def _tokens_index(self):
        """A `RetrievalIndex` over every stored token (built once per corpus state)."""
        if self._token_index is None:
            from mmrerank.retrieval.index import RetrievalIndex  # faiss only when this mode is used

            # "auto": faiss's GPU when faiss-gpu sees one (a CUDA torch with faiss-cpu stays on the CPU)
            self._token_index = RetrievalIndex(self.dim, kind=self.token_index,
                                               device="auto" if self.device.type == "cuda" else "cpu")
            self._token_index.add(self._flat().float())
        return self._token_index

    # --- persistence ---------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write `meta.json`, `tokens.f16` (`[T, d]` float16) and `offsets.i64` (`[N+1]`) to folder `path`.

        The folder is written beside `path` and renamed into place, so a reader never sees half of it."""
        flat = self._flat()
        with atomic_folder(path) as tmp:
            flat.numpy().tofile(tmp / TOKENS_FILE)
            np.asarray(self._offsets, dtype=np.int64).tofile(tmp / OFFSETS_FILE)
            meta = {"format": FORMAT, "dim": self.dim, "pool_factor": self.pool_factor, "num_tokens": self.num_tokens,
                    "ids": self._ids}
            (tmp / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", **kwargs) -> LateInteractionIndex:
        """Open a saved index; the tokens stay memory-mapped (read-only pages, no copy until scored).

        Raises:
            FileNotFoundError: nothing saved at `path`.
            ValueError: the metadata, offsets or token file disagree (the message names the file).
        """
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no saved LateInteractionIndex at {path} (missing {META_FILE})")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        dim, n_tokens, ids = int(meta["dim"]), int(meta["num_tokens"]), list(meta["ids"])
        offsets = np.fromfile(path / OFFSETS_FILE, dtype=np.int64)
        if len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != n_tokens or (np.diff(offsets) < 1).any():
            raise ValueError(f"{path / OFFSETS_FILE}: offsets do not match {len(ids)} documents of {n_tokens} tokens")
        tokens_path = path / TOKENS_FILE
        if tokens_path.stat().st_size != n_tokens * dim * 2:
            raise ValueError(f"{tokens_path}: {tokens_path.stat().st_size} bytes, {meta_path} needs "
                             f"{n_tokens * dim * 2}")
        index = cls(dim, int(meta["pool_factor"]), device=device, **kwargs)
        # Copy-on-write map: torch needs a writable buffer, and nothing here writes, so no page is ever copied.
        index._tokens = torch.from_numpy(np.memmap(tokens_path, dtype=np.float16, mode="c", shape=(n_tokens, dim)))
        index._offsets = offsets.tolist()
        index._ids, index._id_set = ids, set(ids)
        return index

    def __repr__(self) -> str:
        return (f"LateInteractionIndex(dim={self.dim}, n={len(self)}, tokens={self.num_tokens}, "
                f"pool_factor={self.pool_factor}, device={str(self.device)!r})")
