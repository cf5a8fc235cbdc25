"""SuperGlobal reranking (Shao et al., ICCV 2023): refine the shortlist, expand the query, rescore.

All descriptors are unit-norm, so inner products are cosines. For each query, with its top `M` database items by
cosine (`s0`, ranked best first):

1. Database-side refinement: item `i` is averaged with its `K` most similar items among the `M`. Its members are
   itself (forced into slot 0 with weight 1, whatever its self-similarity: duplicates can tie with it) and the
   top `K` of the other `M - 1` by similarity, weighted `beta * sim`; `x'_i = sum_j w_j x_j / sum_j w_j`, not
   re-normalised.
2. `s1_i = q . x'_i`.
3. Query expansion: `q'` is the element-wise max of the refined descriptors of the top `K + 1` items by `s1`
   (the query itself is not included, and `q'` is not normalised); `s2_i = q' . x'_i`.
4. The top `M` are reordered by `(s1 + s2) / 2`; items below `M` keep their cosine order.

Ties, everywhere (the cosine ranking, each item's neighbours, the top `K + 1` by `s1`, the final order), go to the
item that comes first in the cosine ranking; equal cosines are ordered by lower database index. Both `rerank` and
`reference_rerank` follow this rule. They compute the same scores in different orders, so they round differently:
in float64 the differences (~1e-16) practically never reorder distinct items, and exact duplicates tie bit for bit
in both (each item's members are summed in a fixed order), so the rankings agree exactly. That last point assumes
the BLAS products round identical rows identically, true of the float64 kernels tested; float32 matrix-vector
kernels may not. In float32, items whose scores differ by rounding only may swap between the two.

`reference_rerank` is a straightforward per-query loop over these steps, the tests' oracle and the speed
baseline. `rerank` computes the same ranking for a batch of queries at once and avoids materialising every refined
descriptor: `x'_i` is linear in the members, so `q . x'_i = sum_j w_j (q . x_j) / sum_j w_j`, and `s1` and `s2`
come from the `[b, M]` inner products with `q` and `q'` gathered per item. Only the `K + 1` refined descriptors
that build `q'` are formed. What remains dominant is the `[M, M]` similarity among each query's top `M`; it is
computed for a few queries at a time on a CPU (so that it is still in cache when it is read back), skipping the
quarter of it that symmetry gives for free, and each item's neighbours are picked from it with faiss's heaps in
float32 on a CPU (`torch.topk` elsewhere), with a stable sort for the rare rows with ties.
"""

from __future__ import annotations

import faiss
import torch
from torch import Tensor

from mmrerank.core.deprecation import renamed_arguments

# Bytes of working memory `rerank` may use for one batch of queries when `batch_size` is not given.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
# Queries that go through the `[M, M]` stage together on a CPU: few enough that their similarities (640 KB per
# query at M = 400 in float32) stay in cache between the matrix product and the neighbour selection.
CPU_CHUNK = 4


def _check_inputs(queries: Tensor, database: Tensor, rerank_depth: int, k: int) -> int:
    """Validate the arguments shared by `rerank` and `reference_rerank`; return the effective `M`.

    Raises:
        ValueError: on wrong shapes, an empty database, `rerank_depth < 1`, `k < 0` or `k >= min(rerank_depth, N)`
            (an item needs `k` other items among the `M` to average with).
    """
    if queries.dim() != 2 or database.dim() != 2:
        raise ValueError(f"expected queries [Q, d] and database [N, d], got {tuple(queries.shape)} and "
                         f"{tuple(database.shape)}")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the database {database.shape[1]}")
    if queries.dtype != database.dtype or not queries.dtype.is_floating_point:
        raise ValueError(f"queries and database must share a floating dtype, got {queries.dtype} and "
                         f"{database.dtype}")
    if queries.device != database.device:
        raise ValueError(f"queries are on {queries.device} but the database on {database.device}")
    if database.shape[0] == 0:
        raise ValueError("the database is empty")
    if rerank_depth < 1:
        raise ValueError(f"rerank_depth must be at least 1, got {rerank_depth}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    m = min(rerank_depth, database.shape[0])
    if k >= m:
        raise ValueError(f"k={k} needs at least k + 1 = {k + 1} items to rerank, but rerank_depth={rerank_depth} and "
                         f"the database holds {database.shape[0]}: use k < min(rerank_depth, N)")
    return m


@renamed_arguments(top_m="rerank_depth")
def reference_rerank(queries: Tensor, database: Tensor, rerank_depth: int = 400, k: int = 9,
                     beta: float = 0.15) -> Tensor:
    """SuperGlobal reranking, one query at a time, written step by step from the method's description.

    It forms every refined descriptor explicitly (gathering `[M, K + 1, d]` members per query) and scores them
    against the query and the expanded query; it is the oracle `rerank` is tested against and the baseline it is
    timed against.

    Args:
        queries: unit-norm query descriptors `[Q, d]`.
        database: unit-norm database descriptors `[N, d]`, same dtype and device.
        rerank_depth: how many of the top items by cosine are reranked (`M`; `min(rerank_depth, N)` is used).
        k: neighbours per item in the refinement, and `k + 1` items form the expanded query.
        beta: weight factor of a neighbour's similarity.

    Returns:
        The full ranking `[Q, N]` (database indices, best first, int64).

    Raises:
        ValueError: see `rerank`.
    """
    m = _check_inputs(queries, database, rerank_depth, k)
    n = database.shape[0]
    device = database.device
    ranking = torch.empty(queries.shape[0], n, dtype=torch.long, device=device)
    positions = torch.arange(m, device=device)
    for qi in range(queries.shape[0]):
        q = queries[qi]
        order = torch.sort(database @ q, descending=True, stable=True).indices  # [N], ties: lower index first
        top = order[:m]
        x = database[top]  # [M, d]
        sims = x @ x.T  # [M, M]
        # The K nearest *other* items: hide the diagonal (-inf sorts last; real cosines are finite), then a stable
        # sort keeps tied items in cosine-rank order.
        others = sims.clone()
        others.fill_diagonal_(float("-inf"))
        nearest = torch.sort(others, dim=1, descending=True, stable=True).indices[:, :k]  # [M, K]
        members = torch.cat([positions[:, None], nearest], dim=1)  # [M, K + 1], self first
        weights = torch.cat([torch.ones(m, 1, dtype=x.dtype, device=device), beta * sims.gather(1, nearest)], dim=1)
        refined = (weights[:, :, None] * x[members]).sum(dim=1) / weights.sum(dim=1, keepdim=True)  # [M, d]
        s1 = refined @ q  # [M]
        best = torch.sort(s1, descending=True, stable=True).indices[:k + 1]
        expanded = refined[best].amax(dim=0)  # [d]
        s2 = refined @ expanded  # [M]
        new_order = torch.sort((s1 + s2) / 2, descending=True, stable=True).indices
        ranking[qi, :m] = top[new_order]
        ranking[qi, m:] = order[m:]
    return ranking


def _bytes_per_query(n: int, m: int, d: int, k: int, elem: int) -> tuple[int, int]:
    """Generous estimates of `rerank`'s working memory, in bytes (the output not counted).

    Returns:
        `(per batch query, per chunk query)`: what each query of a batch holds (its cosine row, the sorted copy and
        a temporary index row inside the sort), and what each query of a chunk holds on top (its gathered top-M
        descriptors, their similarities, the K + 1 best refined descriptors and the per-item bookkeeping).
    """
    per_batch = n * (2 * elem + 8)
    per_chunk = (m * d + m * m + 2 * (k + 1) * d) * elem + 16 * m * (k + 1) * 8
    return per_batch, per_chunk


def auto_batch_size(num_queries: int, n: int, m: int, d: int, k: int, elem: int,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET, chunk_size: int | None = None) -> int:
    """How many queries `rerank` processes together so that one batch stays within `memory_budget` bytes.

    Args:
        chunk_size: queries that go through the `[M, M]` stage together (`None`: the whole batch, as on a GPU);
            their buffers are allocated once and count against the budget before the batch's cosine rows.
    """
    per_batch, per_chunk = _bytes_per_query(n, m, d, k, elem)
    if chunk_size is None:
        return max(1, min(num_queries, memory_budget // (per_batch + per_chunk)))
    return max(1, min(num_queries, (memory_budget - chunk_size * per_chunk) // per_batch))


def _chunk_size(batch_size: int, device: torch.device) -> int:
    """Queries per pass through the `[M, M]` stage: a few on a CPU (see `CPU_CHUNK`), the whole batch elsewhere,
    where one large kernel launch beats many small ones."""
    return min(batch_size, CPU_CHUNK) if device.type == "cpu" else batch_size


class _Workspace:
    """Buffers for the large tensors, allocated once per call and reused by every batch and chunk.

    Fresh multi-megabyte CPU allocations are mapped anew by the allocator each time and pay a page fault per 4 KiB
    on first touch, which costs about as much as the arithmetic; writing into reused buffers avoids that.
    """

    def __init__(self, b: int, chunk: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device):
        self.chunk = chunk
        self.cosines = torch.empty(b, n, dtype=dtype, device=device)
        self.sorted_cosines = torch.empty(b, n, dtype=dtype, device=device)
        self.x = torch.empty(chunk, m, d, dtype=dtype, device=device)
        self.sims = torch.empty(chunk, m, m, dtype=dtype, device=device)


def _top_entries(sims: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` largest entries of every row of `sims` `[b, M, M]`, largest first; order among ties unspecified.

    On a CPU in float32 this is faiss's heap selection (one bounded heap per row, in C++ over OpenMP threads), about
    2.5 times faster than `torch.topk`, which runs an `nth_element` over (value, index) pairs for every row. The
    heaps start from faiss's neutral value with id -1, which can only remain with `count = M` (the last slot,
    beyond the `-inf` diagonal).

    Returns:
        `(values [b, M, count], positions [b, M, count] int64)`.
    """
    b, m, _ = sims.shape
    if sims.device.type != "cpu" or sims.dtype != torch.float32 or not sims.is_contiguous():
        return sims.topk(count, dim=2)
    values = torch.empty(b, m, count, dtype=sims.dtype)
    positions = torch.empty(b, m, count, dtype=torch.long)
    heaps = faiss.float_minheap_array_t()  # a min-heap per row keeps that row's `count` largest values
    heaps.nh, heaps.k = b * m, count
    heaps.val, heaps.ids = faiss.swig_ptr(values.numpy()), faiss.swig_ptr(positions.numpy())
    heaps.heapify()
    heaps.addn(m, faiss.swig_ptr(sims.numpy()))  # row r's entries get ids 0 .. M - 1
    heaps.reorder()  # each heap sorted, largest first
    return values, positions


def _nearest_others(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each item's `k` most similar other items, ordered by similarity, ties to the lower position.

    Args:
        sims: similarities `[b, M, M]` among each query's top `M` (positions in cosine-rank order). Overwritten:
            its diagonal is set to `-inf` so that an item never picks itself.
        k: neighbours per item, `1 <= k < M`.

    Returns:
        `(positions [b, M, k] int64, similarities [b, M, k])`, most similar first.
    """
    sims.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    # One more than needed: if the k-th and (k+1)-th values differ, the top k form a unique set. (With k + 1 = M
    # the extra one is the -inf diagonal or faiss's neutral value, which never ties with a real similarity.)
    values, positions = _top_entries(sims, k + 1)  # [b, M, k + 1], values in descending order
    # The selection orders equal values arbitrarily: at the boundary it may keep the wrong tied items, and inside
    # the top k it may list tied items out of position order. The rule wants the lowest positions, and a fixed
    # order makes tied duplicates sum their members in the same order, so their scores tie bit for bit. Such rows
    # are rare (duplicates, quantised data) and are redone with a stable sort.
    tied = values[:, :, 1:] == values[:, :, :-1]  # [b, M, k]
    values, positions = values[:, :, :k], positions[:, :, :k]
    if tied.any():
        rows = tied.any(dim=2).nonzero(as_tuple=True)
        redone_values, redone_positions = torch.sort(sims[rows], dim=1, descending=True, stable=True)
        values[rows] = redone_values[:, :k]
        positions[rows] = redone_positions[:, :k]
    return positions, values


def _weighted_mean(scores: Tensor, members: Tensor, weights: Tensor, norm: Tensor) -> Tensor:
    """`(sum_j w_ij scores[members_ij]) / norm_i` for every item: a score of the refined descriptors.

    Args:
        scores: per-item inner products `[b, M]` (with `q` or `q'`) of the unrefined descriptors.
        members: `[b, M, K + 1]` positions; weights: `[b, M, K + 1]`; norm: `[b, M]`, the weights' sums.

    Returns:
        `[b, M]`.
    """
    b, m, width = members.shape
    gathered = scores.gather(1, members.reshape(b, m * width)).view(b, m, width)
    return (weights * gathered).sum(dim=2) / norm


def _gram(x: Tensor, out: Tensor) -> Tensor:
    """`x x^T` `[c, M, M]` for `x` `[c, M, d]`, written into `out`, using its symmetry to skip a quarter of the work.

    The first half of the rows is computed against all columns, the second half against its own half of the
    columns only, and the remaining block is the first one's transpose. (Finer splits skip more in theory, but
    their smaller products run less efficiently: on 2 cores a four-way split saved no more than this one.)
    The diagonal blocks get their upper triangle mirrored: a BLAS kernel need not give `a . b` and `b . a` the same
    rounding (on AVX-512 BF16 CPUs it does not), and the result must be exactly symmetric like the true product.
    """
    m = x.shape[1]
    half = m // 2
    if half < 64:  # too small to gain from splitting
        return _mirror_upper(torch.bmm(x, x.transpose(1, 2), out=out))
    torch.bmm(x[:, :half], x.transpose(1, 2), out=out[:, :half])
    torch.bmm(x[:, half:], x[:, half:].transpose(1, 2), out=out[:, half:, half:])
    out[:, half:, :half] = out[:, :half, half:].transpose(1, 2)
    _mirror_upper(out[:, :half, :half])
    _mirror_upper(out[:, half:, half:])
    return out


def _mirror_upper(block: Tensor) -> Tensor:
    """`[c, n, n]` in place: the strict lower triangle set to the upper one's transpose."""
    lower = torch.ones(block.shape[-2:], dtype=torch.bool, device=block.device).tril(-1)
    block[:, lower] = block.transpose(1, 2)[:, lower]
    return block


def _reorder(x: Tensor, s0: Tensor | None, queries: Tensor, k: int, beta: float, work: _Workspace) -> Tensor:
    """Steps 1-4 for a chunk of shortlists: the new order of each query's `M` shortlisted items.

    Args:
        x: `[c, M, d]` the shortlisted descriptors, in first-stage order (which breaks ties).
        s0: `[c, M]` their inner products with the query, or `None` to compute them from `queries`.
        queries: `[c, d]`.
        work: buffers; `work.sims` etc. hold at least `c` queries.

    Returns:
        `[c, M]` positions into the shortlist, best first.
    """
    c, m, d = x.shape
    device, dtype = x.device, x.dtype
    if s0 is None:
        s0 = torch.bmm(x, queries[:, :, None]).squeeze(2)  # [c, M]
    sims = _gram(x, work.sims[:c])  # [c, M, M], the dominant cost

    positions = torch.arange(m, device=device)[:, None].expand(c, m, 1)
    if k:
        nearest, nearest_sims = _nearest_others(sims, k)  # [c, M, K] twice
        members = torch.cat([positions, nearest], dim=2)  # [c, M, K + 1], self first
        weights = torch.cat([torch.ones(c, m, 1, dtype=dtype, device=device), beta * nearest_sims], dim=2)
    else:
        members, weights = positions, torch.ones(c, m, 1, dtype=dtype, device=device)
    norm = weights.sum(dim=2)  # [c, M]
    s1 = _weighted_mean(s0, members, weights, norm)  # q . x'_i without forming x'_i

    # The expanded query needs the K + 1 best refined descriptors themselves. Rather than gathering their
    # [c, K + 1, K + 1, d] members, scatter the weights into a sparse [c, K + 1, M] matrix and multiply by x.
    best = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, :k + 1]  # [c, K + 1]
    best_members = members.gather(1, best[:, :, None].expand(c, k + 1, k + 1))
    best_weights = weights.gather(1, best[:, :, None].expand(c, k + 1, k + 1))
    mixing = torch.zeros(c, k + 1, m, dtype=dtype, device=device).scatter_(2, best_members, best_weights)
    refined_best = torch.bmm(mixing, x) / norm.gather(1, best)[:, :, None]  # [c, K + 1, d]
    expanded = refined_best.amax(dim=1)  # [c, d]
    s2 = _weighted_mean(torch.bmm(x, expanded[:, :, None]).squeeze(2), members, weights, norm)

    return torch.sort((s1 + s2) / 2, dim=1, descending=True, stable=True).indices  # [c, M]


def _rerank_shortlists(queries: Tensor, database: Tensor, top: Tensor, s0: Tensor | None, k: int, beta: float,
                       work: _Workspace) -> Tensor:
    """The new order of shortlists `top` `[b, M]` (database indices), chunk by chunk: `[b, M]` database indices.

    A chunk's gathered descriptors and similarities are reused from `work` (on a CPU they stay in cache from the
    matrix product through the neighbour passes and the scoring).
    """
    b, m = top.shape
    d = database.shape[1]
    out = torch.empty_like(top)
    for start in range(0, b, work.chunk):
        rows = slice(start, start + work.chunk)
        shortlist = top[rows]
        c = len(shortlist)
        x = work.x[:c]
        torch.index_select(database, 0, shortlist.reshape(-1), out=x.view(c * m, d))  # [c, M, d]
        new_order = _reorder(x, None if s0 is None else s0[rows], queries[rows], k, beta, work)
        out[rows] = shortlist.gather(1, new_order)
    return out


def _rerank_batch(queries: Tensor, database: Tensor, m: int, k: int, beta: float, work: _Workspace,
                  out: Tensor) -> None:
    """`rerank` for one batch `[b, d]` of queries, written into `out` (`[b, N]` rows of the result)."""
    b = queries.shape[0]
    cosines = torch.mm(queries, database.T, out=work.cosines[:b])  # [b, N]
    s0 = torch.sort(cosines, dim=1, descending=True, stable=True, out=(work.sorted_cosines[:b], out))[0][:, :m]
    # out[:, :m]: database indices in cosine order (ties: lower index first), replaced by their new order.
    out[:, :m] = _rerank_shortlists(queries, database, out[:, :m], s0, k, beta, work)


@renamed_arguments(top_m="rerank_depth")
def rerank(queries: Tensor, database: Tensor, rerank_depth: int = 400, k: int = 9, beta: float = 0.15,
           batch_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    """SuperGlobal reranking of every query's top `rerank_depth` database items, batched over queries.

    Gives the same ranking as `reference_rerank` (see the module docstring for the tie rule) with batched matrix
    products, selections, `sort` and `gather`, and a Python loop over chunks of a few queries only. Runs on the
    inputs' device.

    Args:
        queries: unit-norm query descriptors `[Q, d]`.
        database: unit-norm database descriptors `[N, d]`, same dtype and device.
        rerank_depth: how many of the top items by cosine are reranked (`M`; `min(rerank_depth, N)` is used).
        k: neighbours per item in the refinement, and `k + 1` items form the expanded query.
        beta: weight factor of a neighbour's similarity.
        batch_size: queries per batch; by default as many as fit in `memory_budget`. A batch of `b` queries holds
            `[b, N]` cosines; a chunk of them (a few on a CPU, the whole batch elsewhere) at a time holds
            `[c, M, d]` gathered descriptors and `[c, M, M]` similarities.
        memory_budget: working-memory target in bytes for one batch when `batch_size` is not given (the `[Q, N]`
            result is not counted).

    Returns:
        The full ranking `[Q, N]` (database indices, best first, int64): the top `M` by cosine reordered by
        `(s1 + s2) / 2`, then the rest in cosine order.

    Raises:
        ValueError: on mismatched shapes, dtypes or devices, an empty database, `rerank_depth < 1`, `k < 0`, or
            `k >= min(rerank_depth, N)`.
    """
    m = _check_inputs(queries, database, rerank_depth, k)
    num_queries, d = queries.shape
    n = database.shape[0]
    device = database.device
    if batch_size is None:
        chunk = None if device.type != "cpu" else min(num_queries, CPU_CHUNK)
        batch_size = auto_batch_size(num_queries, n, m, d, k, database.element_size(), memory_budget, chunk)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = min(batch_size, num_queries)
    ranking = torch.empty(num_queries, n, dtype=torch.long, device=device)
    work = _Workspace(batch_size, _chunk_size(batch_size, device), n, m, d, database.dtype, device)
    for start in range(0, num_queries, batch_size):
        _rerank_batch(queries[start:start + batch_size], database, m, k, beta, work,
                      ranking[start:start + batch_size])
    return ranking


def rerank_candidates(queries: Tensor, database: Tensor, candidates: Tensor, k: int = 9, beta: float = 0.15,
                      batch_size: int = 64) -> Tensor:
    """SuperGlobal reranking of given shortlists, such as a `RetrievalIndex` run's top `M`.

    With `candidates` equal to each query's top `M` by cosine this gives `rerank(...)[:, :M]`; the shortlist's
    order stands in for the cosine ranking in every tie rule.

    Args:
        queries: `[Q, d]`, database: `[N, d]`, unit-norm, same dtype and device.
        candidates: `[Q, M]` database indices, each row the query's shortlist best first (no padding).
        k, beta: as for `rerank`.
        batch_size: queries per chunk off a CPU (on a CPU, chunks of `CPU_CHUNK`).

    Returns:
        `[Q, M]` the same database indices, reordered.
    """
    m = _check_inputs(queries, database, candidates.shape[1], k)
    if candidates.shape != (queries.shape[0], m) or int(candidates.min()) < 0:
        raise ValueError(f"candidates must be [{queries.shape[0]}, M] database indices without padding, "
                         f"got {tuple(candidates.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    candidates = candidates.to(database.device)
    chunk = _chunk_size(min(batch_size, len(candidates)), database.device)
    work = _Workspace(0, chunk, 0, m, queries.shape[1], database.dtype, database.device)
    return _rerank_shortlists(queries, database, candidates, None, k, beta, work)
