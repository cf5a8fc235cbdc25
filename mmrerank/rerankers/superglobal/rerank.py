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
that build `q'` are formed. What remains dominant is the `[b, M, M]` similarity among each query's top `M`.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bytes of working memory `rerank` may use for one batch of queries when `batch_size` is not given.
DEFAULT_MEMORY_BUDGET = 256 * 2**20


def _check_inputs(queries: Tensor, database: Tensor, top_m: int, k: int) -> int:
    """Validate the arguments shared by `rerank` and `reference_rerank`; return the effective `M`.

    Raises:
        ValueError: on wrong shapes, an empty database, `top_m < 1`, `k < 0` or `k >= min(top_m, N)` (an item
            needs `k` other items among the `M` to average with).
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
    if top_m < 1:
        raise ValueError(f"top_m must be at least 1, got {top_m}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    m = min(top_m, database.shape[0])
    if k >= m:
        raise ValueError(f"k={k} needs at least k + 1 = {k + 1} items to rerank, but top_m={top_m} and the database "
                         f"holds {database.shape[0]}: use k < min(top_m, N)")
    return m


def reference_rerank(queries: Tensor, database: Tensor, top_m: int = 400, k: int = 9, beta: float = 0.15) -> Tensor:
    """SuperGlobal reranking, one query at a time, written step by step from the method's description.

    It forms every refined descriptor explicitly (gathering `[M, K + 1, d]` members per query) and scores them
    against the query and the expanded query; it is the oracle `rerank` is tested against and the baseline it is
    timed against.

    Args:
        queries: unit-norm query descriptors `[Q, d]`.
        database: unit-norm database descriptors `[N, d]`, same dtype and device.
        top_m: how many of the top items by cosine are reranked (`M`; `min(top_m, N)` is used).
        k: neighbours per item in the refinement, and `k + 1` items form the expanded query.
        beta: weight factor of a neighbour's similarity.

    Returns:
        The full ranking `[Q, N]` (database indices, best first, int64).

    Raises:
        ValueError: see `rerank`.
    """
    m = _check_inputs(queries, database, top_m, k)
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


def _bytes_per_query(n: int, m: int, d: int, k: int, elem: int) -> int:
    """A generous estimate of `rerank`'s working memory per query in a batch, in bytes (the output not counted)."""
    return (n * (2 * elem + 8)  # cosine row and its sorted copy; a temporary index row inside the sort
            + m * d * elem  # the gathered top-M descriptors
            + m * m * elem  # their similarities
            + 2 * (k + 1) * d * elem  # the best K + 1 refined descriptors and their max
            + 16 * m * (k + 1) * 8)  # per-item members, weights and gathered scores


def auto_batch_size(num_queries: int, n: int, m: int, d: int, k: int, elem: int,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many queries `rerank` processes together so that one batch stays within `memory_budget` bytes."""
    return max(1, min(num_queries, memory_budget // _bytes_per_query(n, m, d, k, elem)))


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
    # the extra one is the -inf diagonal, which never ties with a real similarity.)
    values, positions = sims.topk(k + 1, dim=2)  # [b, M, k + 1], values in descending order
    # `topk` orders equal values arbitrarily: at the boundary it may keep the wrong tied items, and inside the top
    # k it may list tied items out of position order. The rule wants the lowest positions, and a fixed order makes
    # tied duplicates sum their members in the same order, so their scores tie bit for bit. Such rows are rare
    # (duplicates, quantised data) and are redone with a stable sort.
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


class _Workspace:
    """Buffers for the large per-batch tensors, allocated once per `rerank` call and reused by every batch.

    Fresh multi-megabyte CPU allocations are mapped anew by the allocator each time and pay a page fault per 4 KiB
    on first touch, which costs about as much as the arithmetic; writing into reused buffers avoids that.
    """

    def __init__(self, b: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device):
        self.cosines = torch.empty(b, n, dtype=dtype, device=device)
        self.sorted_cosines = torch.empty(b, n, dtype=dtype, device=device)
        self.x = torch.empty(b, m, d, dtype=dtype, device=device)
        self.sims = torch.empty(b, m, m, dtype=dtype, device=device)


def _reorder(x: Tensor, s0: Tensor, k: int, beta: float, sims_buffer: Tensor) -> Tensor:
    """Steps 1-4 for a batch of shortlists: the new order of each query's `M` shortlisted items.

    Args:
        x: `[b, M, d]` the shortlisted descriptors, in first-stage order (which breaks ties).
        s0: `[b, M]` their inner products with the query.
        sims_buffer: `[b, M, M]` storage for their similarities.

    Returns:
        `[b, M]` positions into the shortlist, best first.
    """
    b, m, d = x.shape
    device, dtype = x.device, x.dtype
    sims = torch.bmm(x, x.transpose(1, 2), out=sims_buffer)  # [b, M, M], the dominant cost

    positions = torch.arange(m, device=device)[:, None].expand(b, m, 1)
    if k:
        nearest, nearest_sims = _nearest_others(sims, k)  # [b, M, K] twice
        members = torch.cat([positions, nearest], dim=2)  # [b, M, K + 1], self first
        weights = torch.cat([torch.ones(b, m, 1, dtype=dtype, device=device), beta * nearest_sims], dim=2)
    else:
        members, weights = positions, torch.ones(b, m, 1, dtype=dtype, device=device)
    norm = weights.sum(dim=2)  # [b, M]
    s1 = _weighted_mean(s0, members, weights, norm)  # q . x'_i without forming x'_i

    # The expanded query needs the K + 1 best refined descriptors themselves. Rather than gathering their
    # [b, K + 1, K + 1, d] members, scatter the weights into a sparse [b, K + 1, M] matrix and multiply by x.
    best = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, :k + 1]  # [b, K + 1]
    best_members = members.gather(1, best[:, :, None].expand(b, k + 1, k + 1))
    best_weights = weights.gather(1, best[:, :, None].expand(b, k + 1, k + 1))
    mixing = torch.zeros(b, k + 1, m, dtype=dtype, device=device).scatter_(2, best_members, best_weights)
    refined_best = torch.bmm(mixing, x) / norm.gather(1, best)[:, :, None]  # [b, K + 1, d]
    expanded = refined_best.amax(dim=1)  # [b, d]
    s2 = _weighted_mean(torch.bmm(x, expanded[:, :, None]).squeeze(2), members, weights, norm)

    return torch.sort((s1 + s2) / 2, dim=1, descending=True, stable=True).indices  # [b, M]


def _rerank_batch(queries: Tensor, database: Tensor, m: int, k: int, beta: float, work: _Workspace,
                  out: Tensor) -> None:
    """`rerank` for one batch `[b, d]` of queries, written into `out` (`[b, N]` rows of the result)."""
    b, d = queries.shape
    cosines = torch.mm(queries, database.T, out=work.cosines[:b])  # [b, N]
    s0 = torch.sort(cosines, dim=1, descending=True, stable=True, out=(work.sorted_cosines[:b], out))[0][:, :m]
    top = out[:, :m]  # [b, M] database indices in cosine order (ties: lower index first)
    x = work.x[:b]
    torch.index_select(database, 0, top.reshape(-1), out=x.view(b * m, d))  # [b, M, d]
    new_order = _reorder(x, s0, k, beta, work.sims[:b])
    out[:, :m] = top.gather(1, new_order)  # gather builds a new tensor before `top`'s storage is overwritten


def rerank(queries: Tensor, database: Tensor, top_m: int = 400, k: int = 9, beta: float = 0.15,
           batch_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    """SuperGlobal reranking of every query's top `top_m` database items, batched over queries.

    Gives the same ranking as `reference_rerank` (see the module docstring for the tie rule) with batched matrix
    products, `topk`, `sort` and `gather`; there is no Python loop per query. Runs on the inputs' device.

    Args:
        queries: unit-norm query descriptors `[Q, d]`.
        database: unit-norm database descriptors `[N, d]`, same dtype and device.
        top_m: how many of the top items by cosine are reranked (`M`; `min(top_m, N)` is used).
        k: neighbours per item in the refinement, and `k + 1` items form the expanded query.
        beta: weight factor of a neighbour's similarity.
        batch_size: queries per batch; by default as many as fit in `memory_budget`. A batch of `b` queries holds
            `[b, N]` cosines, `[b, M, d]` gathered descriptors and `[b, M, M]` similarities.
        memory_budget: working-memory target in bytes for one batch when `batch_size` is not given (the `[Q, N]`
            result is not counted).

    Returns:
        The full ranking `[Q, N]` (database indices, best first, int64): the top `M` by cosine reordered by
        `(s1 + s2) / 2`, then the rest in cosine order.

    Raises:
        ValueError: on mismatched shapes, dtypes or devices, an empty database, `top_m < 1`, `k < 0`, or
            `k >= min(top_m, N)`.
    """
    m = _check_inputs(queries, database, top_m, k)
    num_queries, d = queries.shape
    n = database.shape[0]
    if batch_size is None:
        batch_size = auto_batch_size(num_queries, n, m, d, k, database.element_size(), memory_budget)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ranking = torch.empty(num_queries, n, dtype=torch.long, device=database.device)
    work = _Workspace(min(batch_size, num_queries), n, m, d, database.dtype, database.device)
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
        batch_size: queries per batch.

    Returns:
        `[Q, M]` the same database indices, reordered.
    """
    m = _check_inputs(queries, database, candidates.shape[1], k)
    if candidates.shape != (queries.shape[0], m) or int(candidates.min()) < 0:
        raise ValueError(f"candidates must be [{queries.shape[0]}, M] database indices without padding, "
                         f"got {tuple(candidates.shape)}")
    candidates = candidates.to(database.device)
    out = torch.empty_like(candidates)
    for start in range(0, len(candidates), batch_size):
        top = candidates[start:start + batch_size]
        x = database[top]  # [b, M, d]
        s0 = torch.bmm(x, queries[start:start + batch_size, :, None]).squeeze(2)  # [b, M]
        sims = torch.empty(len(top), m, m, dtype=database.dtype, device=database.device)
        out[start:start + batch_size] = top.gather(1, _reorder(x, s0, k, beta, sims))
    return out
