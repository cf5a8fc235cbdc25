"""LateInteractionIndex against a naive MaxSim loop and against colpali-engine's own scorer and pooler (fixture)."""

from pathlib import Path

import pytest
import torch

from mmrerank.core.run import PAD
from mmrerank.retrieval.late import LateInteractionIndex
from mmrerank.retrieval.pooling import hierarchical_pool

FIXTURE = Path(__file__).parents[1] / "fixtures" / "colpali_late.pt"


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def naive_maxsim(query, doc):
    """sum over query tokens of the best document token, one Python loop per token."""
    total = 0.0
    for qt in query.double():
        total += max(float(qt @ dt) for dt in doc.double())
    return total


def naive_run(queries, docs, depth):
    """Per query: every document's naive score, sorted descending, ties by lower row (Python's stable sort)."""
    rows = []
    for q in queries:
        scored = sorted(((naive_maxsim(q, d), i) for i, d in enumerate(docs)), key=lambda t: -t[0])
        rows.append(scored[:depth])
    return rows


def random_corpus(seed=0, n_docs=23, dim=8):
    gen = torch.Generator().manual_seed(seed)
    # fp16-representable values, so the index's float16 storage loses nothing and the naive loop sees the same numbers
    docs = [unit(torch.randn(int(n), dim, generator=gen)).half().float()
            for n in torch.randint(1, 12, (n_docs,), generator=gen)]
    docs.append(docs[3].clone())  # a tie: rows 3 and n_docs score the same
    queries = [unit(torch.randn(int(n), dim, generator=gen)) for n in torch.randint(1, 6, (7,), generator=gen)]
    return queries, docs


@pytest.mark.parametrize("block_tokens", [1, 7, 10_000])
def test_exact_search_equals_naive_loop(block_tokens):
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu", block_tokens=block_tokens, query_batch=3)
    index.add(docs[:10], [f"d{i}" for i in range(10)])
    index.add(docs[10:], [f"d{i}" for i in range(10, len(docs))])
    run = index.search(queries, depth=50, query_ids=[f"q{i}" for i in range(len(queries))])
    assert run.indices.shape == (len(queries), len(docs))  # depth clipped to the corpus
    for row, expected in enumerate(naive_run(queries, docs, 50)):
        assert run.indices[row].tolist() == [i for _, i in expected]
        want = torch.tensor([s for s, _ in expected], dtype=torch.float64)
        torch.testing.assert_close(run.scores[row].double(), want, atol=1e-5, rtol=0)
    assert run.doc_ids == [f"d{i}" for i in range(len(docs))] and run.query_ids[0] == "q0"


def test_tie_keeps_lower_row_first():
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu")
    index.add(docs)
    full = index.search(queries, depth=len(docs))
    for row in range(len(queries)):
        order = full.indices[row].tolist()
        assert order.index(3) < order.index(len(docs) - 1)


def test_padded_tensor_queries_equal_list_queries():
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu")
    index.add(docs)
    same = [q[:1].expand(3, -1) for q in queries]
    a = index.search(same, 5)
    b = index.search(torch.stack(same), 5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)


def test_save_load_memory_maps_and_searches_the_same(tmp_path):
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu")
    index.add(docs, [f"d{i}" for i in range(len(docs))])
    index.save(tmp_path / "late")
    loaded = LateInteractionIndex.load(tmp_path / "late", device="cpu")
    assert loaded.ids == index.ids and loaded.num_tokens == sum(len(d) for d in docs)
    a, b = index.search(queries, 10), loaded.search(queries, 10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    (tmp_path / "late" / "tokens.f16").write_bytes(b"\0" * 6)
    with pytest.raises(ValueError, match="tokens.f16"):
        LateInteractionIndex.load(tmp_path / "late")


def test_candidates_mode_with_full_token_k_equals_exact():
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu")
    index.add(docs)
    exact = index.search(queries, 6)
    cand = index.search(queries, 6, mode="candidates", token_k=index.num_tokens)
    assert torch.equal(exact.indices, cand.indices)
    torch.testing.assert_close(exact.scores, cand.scores, atol=1e-6, rtol=0)


def test_candidates_mode_scores_only_documents_of_nearest_tokens():
    queries, docs = random_corpus()
    index = LateInteractionIndex(8, device="cpu")
    index.add(docs)
    run = index.search(queries[:1], 20, mode="candidates", token_k=1)
    # one query token per nearest token: at most m_q candidate documents, the rest PAD
    real = run.indices[0][run.indices[0] != PAD]
    assert 1 <= len(real) <= len(queries[0])
    for row, score in zip(real.tolist(), run.scores[0][: len(real)].tolist()):
        assert score == pytest.approx(naive_maxsim(queries[0], docs[row]), abs=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="token_index"):
        LateInteractionIndex(8, token_index="lsh")
    index = LateInteractionIndex(8, device="cpu")
    with pytest.raises(RuntimeError, match="empty"):
        index.search([torch.ones(1, 8)], 1)
    with pytest.raises(ValueError, match="'x'.*expected"):
        index.add([torch.ones(2, 7)], ["x"])
    index.add([torch.ones(2, 8)], ["x"])
    with pytest.raises(ValueError, match="unique"):
        index.add([torch.ones(2, 8)], ["x"])
    with pytest.raises(ValueError, match="query 0"):
        index.search([torch.ones(2, 5)], 1)


def test_colpali_scores_equal_to_1e5_on_fp16_exact_vectors():
    fx = torch.load(FIXTURE, weights_only=True)
    docs = fx["docs"]
    assert all(torch.equal(d, d.half().float()) for d in docs)  # what the index stores is what colpali scored
    index = LateInteractionIndex(docs[0].shape[1], device="cpu", block_tokens=50)
    index.add(docs)
    run = index.search(fx["queries"], len(docs))
    ours = torch.empty_like(fx["scores"]).scatter_(1, run.indices, run.scores)
    torch.testing.assert_close(ours, fx["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [2, 3])
def test_pooler_matches_colpali_engine(factor):
    fx = torch.load(FIXTURE, weights_only=True)
    for tokens, expected in zip(fx["pool_in"], fx[f"pooled_{factor}"]):
        ours = hierarchical_pool(tokens, factor)
        assert ours.shape[0] <= max(tokens.shape[0] // factor, 1)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_index_pools_at_add():
    fx = torch.load(FIXTURE, weights_only=True)
    index = LateInteractionIndex(fx["pool_in"][0].shape[1], pool_factor=3, device="cpu")
    index.add(fx["pool_in"])
    assert index.num_tokens == sum(len(p) for p in fx["pooled_3"])
    torch.testing.assert_close(index.document(0).float(), fx["pooled_3"][0], atol=1e-3, rtol=0)
