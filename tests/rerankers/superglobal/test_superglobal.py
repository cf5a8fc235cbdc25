"""SuperGlobal pooling and reranking, checked against naive loops and hand-computed cases.

The rerankers are compared in float64: the batched `rerank` and the per-query `reference_rerank` compute the same
scores in different orders, and in float64 the rounding differences (~1e-16) are far below the gaps between the
scores of distinct random items, so the rankings must agree exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmrerank.rerankers.superglobal import gem_plus, reference_rerank, regional_gem, rerank, scale_gem
from mmrerank.rerankers.superglobal.rerank import _gram, _nearest_others, _top_entries, auto_batch_size


def unit_vectors(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Pooling


def test_gem_plus_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # negatives exercise the clamp
    p, eps = 4.6, 1e-8
    expected = torch.empty(2, 3, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            values = [max(v, eps) ** p for v in x[b, c].flatten().tolist()]
            expected[b, c] = (sum(values) / len(values)) ** (1 / p)
    torch.testing.assert_close(gem_plus(x), expected, rtol=1e-12, atol=0)


def test_gem_plus_hand_cases():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 0] = 2.0  # constant map: the power mean is the constant
    x[0, 1, 0, 0] = 1.0  # one 1 among four zeros, p = 2: sqrt((1 + 3 eps^2) / 4) = 0.5 (eps^2 is negligible)
    # x[0, 2] stays all zero (all clamped to eps): the mean of eps^p is eps^p, so the result is eps
    out = gem_plus(x, p=2.0, eps=1e-8)
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.5, 1e-8]], dtype=torch.float64), rtol=1e-12, atol=0)


def _reflect(i: int, size: int) -> int:
    """Reflection padding's source index (edge not repeated): -1 -> 1, size -> size - 2."""
    if i < 0:
        return -i
    if i >= size:
        return 2 * (size - 1) - i
    return i


@pytest.mark.parametrize("size", [3, 5])
def test_regional_gem_matches_a_window_loop(size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
    p, eps, half = 2.5, 1e-8, size // 2
    expected = torch.empty_like(x)
    for c in range(2):
        for i in range(4):
            for j in range(5):
                window = [max(x[0, c, _reflect(i + di, 4), _reflect(j + dj, 5)].item(), eps) ** p
                          for di in range(-half, half + 1) for dj in range(-half, half + 1)]
                local = (sum(window) / len(window)) ** (1 / p)
                expected[0, c, i, j] = 0.5 * x[0, c, i, j] + 0.5 * local  # residual half: x as given
    torch.testing.assert_close(regional_gem(x, p=p, size=size), expected, rtol=1e-12, atol=1e-15)


def test_regional_gem_equals_the_lppool_formulation():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64)
    pool = torch.nn.LPPool2d(2.5, 5, stride=1)
    padded = F.pad(x.clamp(min=1e-8) / 25 ** (1 / 2.5), (2, 2, 2, 2), mode="reflect")
    torch.testing.assert_close(regional_gem(x), 0.5 * x + 0.5 * pool(padded), rtol=1e-10, atol=1e-12)


def test_regional_gem_rejects_bad_windows():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="odd"):
        regional_gem(x, size=4)
    with pytest.raises(ValueError, match="padding"):
        regional_gem(torch.rand(1, 1, 2, 8), size=5)  # reflection by 2 needs at least 3 rows


def test_scale_gem_inf_normalises_then_takes_the_max():
    g = torch.Generator().manual_seed(3)
    desc = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    expected = torch.empty(2, 4, dtype=torch.float64)
    for b in range(2):
        normalised = []
        for s in range(3):
            row = desc[s, b].tolist()
            norm = math.sqrt(sum(v * v for v in row))
            normalised.append([v / norm for v in row])
        for c in range(4):
            expected[b, c] = max(normalised[s][c] for s in range(3))
    torch.testing.assert_close(scale_gem(desc), expected, rtol=1e-12, atol=0)


def test_scale_gem_finite_p_by_hand():
    # Two scales, one image, two channels: x_1 = [-1, 1], x_2 = [1, 3]; gamma = -1, so the shifted values are
    # [0, 2] and [2, 4]. With p = 2: channel 0 -> sqrt((0 + 4) / 2) - 1 = sqrt(2) - 1,
    # channel 1 -> sqrt((4 + 16) / 2) - 1 = sqrt(10) - 1.
    desc = torch.tensor([[[-1.0, 1.0]], [[1.0, 3.0]]], dtype=torch.float64)
    expected = torch.tensor([[math.sqrt(2) - 1, math.sqrt(10) - 1]], dtype=torch.float64)
    torch.testing.assert_close(scale_gem(desc, p=2.0), expected, rtol=1e-12, atol=0)
    # gamma is the minimum over *all* entries, not per channel: here -1 for channel 1 too (its own minimum is 1).


def test_scale_gem_finite_p_approaches_the_max_form():
    # On unit-norm inputs, (mean_s (x_s - gamma)^p)^(1/p) lies between S^(-1/p) * max_s (x_s - gamma) and the max
    # itself, so it converges to the inf form from below as p grows.
    g = torch.Generator().manual_seed(4)
    desc = F.normalize(torch.randn(3, 2, 8, generator=g, dtype=torch.float64), dim=-1)
    limit = scale_gem(desc)
    gamma = desc.min()
    errors = []
    for p in (10.0, 50.0, 200.0):
        out = scale_gem(desc, p=p)
        lower = 3 ** (-1 / p) * (limit - gamma) + gamma
        assert torch.all(out <= limit + 1e-12) and torch.all(out >= lower - 1e-12)
        errors.append((limit - out).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_scale_gem_rejects_bad_input():
    with pytest.raises(ValueError):
        scale_gem(torch.rand(2, 3))
    with pytest.raises(ValueError):
        scale_gem(torch.rand(2, 1, 3), p=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Reranking


def naive_superglobal(queries: torch.Tensor, database: torch.Tensor, rerank_depth: int, k: int, beta: float) -> list:
    """The method in plain Python floats, one query and one item at a time; ties go to the lower position."""
    q_rows, x_rows = queries.tolist(), database.tolist()
    n, d = len(x_rows), len(x_rows[0])
    m = min(rerank_depth, n)

    def dot(a, b):
        return sum(u * v for u, v in zip(a, b))

    rankings = []
    for q in q_rows:
        cos = [dot(q, x) for x in x_rows]
        order = sorted(range(n), key=lambda i: (-cos[i], i))
        top = [x_rows[i] for i in order[:m]]
        refined = []
        for i in range(m):
            sims = {j: dot(top[i], top[j]) for j in range(m) if j != i}
            others = sorted(sims, key=lambda j: (-sims[j], j))[:k]
            members, weights = [i] + others, [1.0] + [beta * sims[j] for j in others]
            total = sum(weights)
            refined.append([sum(w * top[j][c] for w, j in zip(weights, members)) / total for c in range(d)])
        s1 = [dot(q, r) for r in refined]
        best = sorted(range(m), key=lambda i: (-s1[i], i))[:k + 1]
        expanded = [max(refined[i][c] for i in best) for c in range(d)]
        final = [(a + dot(expanded, r)) / 2 for a, r in zip(s1, refined)]
        rankings.append([order[i] for i in sorted(range(m), key=lambda i: (-final[i], i))] + order[m:])
    return rankings


@pytest.mark.parametrize("unit_norm", [True, False])
def test_reference_and_rerank_match_a_plain_python_oracle(unit_norm):
    queries, database = unit_vectors(3, 6, seed=10), unit_vectors(40, 6, seed=11)
    if not unit_norm:
        # With norms other than one an item can be more similar to another item than to itself: the self member
        # must still be forced into slot 0 (the oracle does that by construction).
        # (With this seed, 18 of the 40 items are more similar to some other item than to themselves.)
        shuffle = torch.randperm(40, generator=torch.Generator().manual_seed(12))
        database = database * torch.linspace(0.5, 2.0, 40, dtype=torch.float64)[shuffle, None]
    expected = naive_superglobal(queries, database, rerank_depth=25, k=4, beta=0.3)
    assert reference_rerank(queries, database, rerank_depth=25, k=4, beta=0.3).tolist() == expected
    assert rerank(queries, database, rerank_depth=25, k=4, beta=0.3).tolist() == expected


@pytest.mark.parametrize(("q", "n", "d", "rerank_depth", "k", "batch_size"), [
    (6, 50, 8, 20, 3, None),
    (7, 200, 32, 60, 9, 3),  # batches of 3: the last one holds a single query
    (5, 30, 16, 400, 9, None),  # rerank_depth > N: all N items are reranked
    (4, 15, 6, 10, 9, 1),  # k + 1 = M: every item averages the whole shortlist
    (3, 25, 5, 8, 0, 2),  # k = 0: no refinement, the expanded query is the best item itself
    (9, 120, 12, 1, 0, None),  # M = 1: nothing to reorder, the ranking is the cosine ranking
])
def test_rerank_matches_reference(q, n, d, rerank_depth, k, batch_size):
    queries, database = unit_vectors(q, d, seed=q * n), unit_vectors(n, d, seed=q * n + 1)
    expected = reference_rerank(queries, database, rerank_depth=rerank_depth, k=k)
    got = rerank(queries, database, rerank_depth=rerank_depth, k=k, batch_size=batch_size)
    assert got.dtype == torch.long and got.shape == (q, n)
    assert torch.equal(got, expected)
    assert torch.equal(torch.sort(got, dim=1).values, torch.arange(n).expand(q, n))  # a permutation per query


def test_rerank_with_duplicate_database_vectors():
    # Copies (some triplicated) scattered through the database: their cosines tie exactly, and so must all their
    # later scores, so the tie rule alone decides their order, in both implementations.
    base = unit_vectors(150, 16, seed=20)
    g = torch.Generator().manual_seed(21)
    database = torch.cat([base, base[:40], base[:15]])[torch.randperm(205, generator=g)]
    queries = unit_vectors(8, 16, seed=22)
    expected = reference_rerank(queries, database, rerank_depth=80, k=9)
    assert torch.equal(rerank(queries, database, rerank_depth=80, k=9, batch_size=3), expected)
    # Tied copies stay adjacent, lower index first, inside the reranked head as in the tail (a group split by the
    # rerank_depth boundary is the exception: its head part is reranked, its tail part is not).
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(database.tolist()):
        groups.setdefault(tuple(row), []).append(i)
    copies = [ids for ids in groups.values() if len(ids) > 1]
    assert len(copies) == 40
    checked_in_head = 0
    for ranking in expected.tolist():
        where = {item: pos for pos, item in enumerate(ranking)}
        for ids in copies:
            positions = [where[i] for i in ids]
            if max(positions) < 80 or min(positions) >= 80:
                assert positions == list(range(positions[0], positions[0] + len(ids)))
                checked_in_head += max(positions) < 80
    assert checked_in_head >= 10


def test_items_below_top_m_keep_cosine_order():
    queries, database = unit_vectors(5, 10, seed=30), unit_vectors(90, 10, seed=31)
    rerank_depth = 30
    got = rerank(queries, database, rerank_depth=rerank_depth, k=5)
    cosine_order = torch.sort(queries @ database.T, dim=1, descending=True, stable=True).indices
    assert torch.equal(got[:, rerank_depth:], cosine_order[:, rerank_depth:])
    assert torch.equal(got[:, :rerank_depth].sort(dim=1).values, cosine_order[:, :rerank_depth].sort(dim=1).values)
    assert not torch.equal(got[:, :rerank_depth], cosine_order[:, :rerank_depth])  # the head really was reordered


def test_rerank_hand_computed_case():
    # q = (1, 0); database E=(0,-1), C=(0.28,0.96), A=(0.8,-0.6), D=(-1,0), B=(0.6,0.8) at indices 0..4.
    # Cosines: A 0.8, B 0.6, C 0.28, E 0, D -1. With rerank_depth = 3 the shortlist is A, B, C; E and D follow as is.
    # Similarities: A.B = 0, A.C = -0.352, B.C = 0.936. With k = 1, beta = 0.5 the single neighbours are
    # A -> B (0 > -0.352), B -> C, C -> B, so
    #   x'_A = (A + 0 * B) / 1 = A,
    #   x'_B = (B + 0.468 C) / 1.468 = (0.73104, 1.24928) / 1.468 = (0.49798, 0.85101),
    #   x'_C = (C + 0.468 B) / 1.468 = (0.5608, 1.3344) / 1.468 = (0.38202, 0.90899).
    # s1 = q . x' = A 0.8, B 0.49798, C 0.38202 (same order as the cosines).
    # The expanded query is the max of x'_A and x'_B (the k + 1 = 2 best by s1): q' = (0.8, 0.85101), so
    # s2: A 0.64 - 0.51061 = 0.12939, B 0.39839 + 0.72422 = 1.12261, C 0.30561 + 0.77356 = 1.07917.
    # Final (s1 + s2) / 2: A 0.46470, B 0.81030, C 0.73060 -> B, C, A: A drops from first to third.
    database = torch.tensor([[0.0, -1.0], [0.28, 0.96], [0.8, -0.6], [-1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    expected = [[4, 1, 2, 0, 3]]
    assert reference_rerank(queries, database, rerank_depth=3, k=1, beta=0.5).tolist() == expected
    assert rerank(queries, database, rerank_depth=3, k=1, beta=0.5).tolist() == expected
    assert naive_superglobal(queries, database, rerank_depth=3, k=1, beta=0.5) == expected


def test_nearest_others_breaks_ties_by_lower_position():
    nan = float("nan")  # the diagonal is overwritten, whatever it holds
    sims = torch.tensor([[[nan, 0.5, 0.9, 0.5, 0.5],  # 0.9 at 2, then the first of the tied 0.5s: 1
                          [0.3, nan, 0.3, 0.3, 0.1],  # three-way tie at the top: 0 and 2
                          [0.7, 0.7, nan, 0.7, 0.7],  # all tied: 0 and 1
                          [0.2, 0.8, 0.8, nan, 0.1],  # tie inside the top two, listed in position order
                          [0.6, 0.1, 0.2, 0.3, nan]]])  # no ties: 0 then 3
    positions, values = _nearest_others(sims.clone(), k=2)
    assert positions.tolist() == [[[2, 1], [0, 2], [0, 1], [1, 2], [0, 3]]]
    torch.testing.assert_close(values, torch.tensor([[[0.9, 0.5], [0.3, 0.3], [0.7, 0.7], [0.8, 0.8], [0.6, 0.3]]]))


def test_gram_uses_symmetry_and_matches_the_product():
    x = unit_vectors(3 * 150, 20, seed=70).view(3, 150, 20)  # M = 150: split into halves of 75 rows
    out = torch.full((3, 150, 150), float("nan"), dtype=torch.float64)
    got = _gram(x, out)
    assert got.data_ptr() == out.data_ptr() and not got.isnan().any()  # every block written
    assert torch.equal(got, got.transpose(1, 2))
    expected = torch.tensor([[[sum(a * b for a, b in zip(u, v)) for v in rows] for u in rows] for rows in x.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_rerank_matches_reference_with_a_split_gram_and_duplicates():
    # M = 200 >= 128, so `rerank` computes the similarities in two halves; copies of items land in both halves.
    base = unit_vectors(260, 24, seed=71)
    g = torch.Generator().manual_seed(72)
    perm = torch.randperm(310, generator=g)
    database = torch.cat([base, base[:50]])[perm]
    item = torch.cat([torch.arange(260), torch.arange(50)])[perm]  # a copy and its original: the same item
    queries = unit_vectors(5, 24, seed=73)
    expected = reference_rerank(queries, database, rerank_depth=200, k=9)
    # Equal up to the order of a copy and its original: their scores tie exactly in exact arithmetic, and which
    # comes first then depends on how the BLAS kernel rounds x . y against y . x (it differs between CPUs).
    assert torch.equal(item[rerank(queries, database, rerank_depth=200, k=9, batch_size=2)], item[expected])


def quantised_sims(b: int, m: int, seed: int, levels: int) -> torch.Tensor:
    """Symmetric float32 similarities with many exact ties (values on a grid of `levels` steps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, m, 8, generator=g), dim=2)
    sims = torch.bmm(x, x.transpose(1, 2))
    return (sims * levels).round() / levels


@pytest.mark.parametrize(("m", "k", "levels"), [(50, 9, 4), (50, 9, 1000), (12, 11, 3), (30, 1, 2)])
def test_nearest_others_float32_matches_a_stable_sort(m, k, levels):
    """The float32 CPU path selects with faiss heaps; ties (many at `levels` 2-4) must still go to the lower
    position, and k = M - 1 (every other item) must not pick the diagonal or faiss's empty slot."""
    sims = quantised_sims(3, m, seed=m + k, levels=levels)
    hidden = sims.clone()
    hidden.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    expected = torch.sort(hidden, dim=2, descending=True, stable=True)
    positions, values = _nearest_others(sims, k)
    assert torch.equal(positions, expected.indices[:, :, :k])
    assert torch.equal(values, expected.values[:, :, :k])


def test_top_entries_faiss_path_agrees_with_topk():
    sims = quantised_sims(2, 40, seed=80, levels=10**6)  # practically no ties
    values, positions = _top_entries(sims, 7)
    expected_values, expected_positions = sims.topk(7, dim=2)
    assert torch.equal(values, expected_values) and torch.equal(positions, expected_positions)


def test_batching_does_not_change_the_ranking():
    queries, database = unit_vectors(11, 24, seed=40), unit_vectors(300, 24, seed=41)
    full = rerank(queries, database, rerank_depth=50, k=9)
    for batch_size in (1, 4):
        assert torch.equal(rerank(queries, database, rerank_depth=50, k=9, batch_size=batch_size), full)
    tiny = rerank(queries, database, rerank_depth=50, k=9, memory_budget=1)  # the budget allows one query per batch
    assert torch.equal(tiny, full)
    assert auto_batch_size(11, 300, 50, 24, 9, 8, memory_budget=1) == 1
    assert auto_batch_size(11, 300, 50, 24, 9, 8, memory_budget=2**40) == 11


@pytest.mark.parametrize("fn", [rerank, reference_rerank])
def test_rerank_rejects_bad_arguments(fn):
    queries, database = unit_vectors(2, 4, seed=50), unit_vectors(10, 4, seed=51)
    with pytest.raises(ValueError, match="k < min"):
        fn(queries, database, rerank_depth=5, k=5)
    with pytest.raises(ValueError, match="k < min"):
        fn(queries, database, rerank_depth=400, k=10)  # rerank_depth > N: the database size is the limit
    with pytest.raises(ValueError, match="rerank_depth"):
        fn(queries, database, rerank_depth=0, k=0)
    with pytest.raises(ValueError, match="non-negative"):
        fn(queries, database, rerank_depth=5, k=-1)
    with pytest.raises(ValueError, match="dimension"):
        fn(queries[:, :3], database)
    with pytest.raises(ValueError, match="dtype"):
        fn(queries.float(), database)
    assert fn(queries, database, rerank_depth=10, k=9).shape == (2, 10)  # k = N - 1 is the largest allowed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rerank_on_gpu_matches_cpu():
    queries, database = unit_vectors(20, 64, seed=60), unit_vectors(500, 64, seed=61)
    expected = reference_rerank(queries, database, rerank_depth=100, k=9)
    got = rerank(queries.cuda(), database.cuda(), rerank_depth=100, k=9, batch_size=8)
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), expected)


def test_rerank_candidates_equals_rerank_on_the_cosine_shortlist():
    """Given each query's cosine top-M (as a flat RetrievalIndex run gives it), the shortlist's new order is
    the head of `rerank`'s full ranking."""
    from mmrerank.rerankers.superglobal import rerank_candidates
    from mmrerank.retrieval.index import RetrievalIndex

    g = torch.Generator().manual_seed(5)
    centres = torch.nn.functional.normalize(torch.randn(6, 16, generator=g, dtype=torch.float64), dim=1)
    database = torch.nn.functional.normalize(centres[torch.arange(90) % 6] + 0.4 * torch.randn(
        90, 16, generator=g, dtype=torch.float64), dim=1)
    queries = torch.nn.functional.normalize(database[:7] + 0.3 * torch.randn(7, 16, generator=g, dtype=torch.float64),
                                            dim=1)
    index = RetrievalIndex(16)
    index.add(database.float())
    shortlist = index.search(queries.float(), 30).indices
    assert torch.equal(shortlist, (queries @ database.T).argsort(dim=1, descending=True)[:, :30])
    got = rerank_candidates(queries, database, shortlist, k=4, beta=0.15, batch_size=3)
    assert torch.equal(got, rerank(queries, database, rerank_depth=30, k=4, beta=0.15)[:, :30])
    with pytest.raises(ValueError, match="without padding"):
        rerank_candidates(queries, database, torch.full((7, 30), -1), k=4)
