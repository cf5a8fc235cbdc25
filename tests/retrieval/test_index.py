"""Tests for `mmrerank.retrieval.index.RetrievalIndex`, checked against exact torch top-k as the oracle."""

from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrerank.core.run import PAD
from mmrerank.retrieval.index import KINDS, RetrievalIndex, default_nlist


def unit_gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    """`[n, d]` float32 L2-normalised Gaussian vectors (continuous, so exact score ties have probability 0)."""
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered(n: int, d: int, n_clusters: int, noise: float, seed: int) -> torch.Tensor:
    """`[n, d]` unit vectors around `n_clusters` random unit centres; `noise` is the expected norm of the jitter."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, d, generator=g), dim=1)
    assign = torch.randint(0, n_clusters, (n,), generator=g)
    return F.normalize(centres[assign] + noise * torch.randn(n, d, generator=g) / math.sqrt(d), dim=1)


def exact_topk(queries: torch.Tensor, docs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: `([Q, k] scores, [Q, k] indices)` of exact inner-product search, computed in float64."""
    top = torch.topk(queries.double() @ docs.double().T, k, dim=1)
    return top.values, top.indices


def recall_at(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over rows of |found ∩ truth| / |truth|, for `[Q, k]` index tensors."""
    hits = [len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())]
    return sum(hits) / truth.numel()


@pytest.fixture(scope="module")
def random_data() -> tuple[torch.Tensor, torch.Tensor]:
    """1,000 docs and 40 queries in 16-d, whose top-11 scores are well separated (so the order is unambiguous)."""
    docs, queries = unit_gaussian(1000, 16, seed=0), unit_gaussian(40, 16, seed=1)
    top, _ = exact_topk(queries, docs, 11)
    # Precondition: faiss (float32, its own summation order) and the float64 oracle must not disagree on order
    # because of rounding: a 16-term float32 dot product of unit vectors is off by at most ~16 * 6e-8 = 1e-6, so
    # every adjacent pair in the top-11 must be further apart than twice that.
    assert (top[:, :-1] - top[:, 1:]).min() > 2e-6
    return docs, queries


@pytest.fixture(scope="module")
def clustered_data() -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 x 32 clustered docs and 200 queries near docs (a jittered copy of random docs)."""
    docs = clustered(5000, 32, n_clusters=50, noise=1.0, seed=0)
    g = torch.Generator().manual_seed(1)
    picks = torch.randint(0, len(docs), (200,), generator=g)
    queries = F.normalize(docs[picks] + 0.3 * torch.randn(200, 32, generator=g) / math.sqrt(32), dim=1)
    return docs, queries


# --- exactness -----------------------------------------------------------------------------------------------------


def test_flat_equals_exact_topk(random_data):
    docs, queries = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs)
    run = index.search(queries, 10)
    scores, indices = exact_topk(queries, docs, 10)
    assert run.depth == 10 and len(run) == 40
    assert torch.equal(run.indices, indices)
    torch.testing.assert_close(run.scores.double(), scores, atol=1e-5, rtol=0)


def test_ivf_probing_every_cell_is_exact(random_data):
    """With nprobe == nlist IVF scans everything, so it must equal exact search, including vectors added after
    training (which are assigned to the cells trained on the first add)."""
    docs, queries = random_data
    index = RetrievalIndex(16, "ivf", nlist=8, nprobe=8, device="cpu")
    index.add(docs[:600])  # trains on these
    index.add(docs[600:])
    assert len(index) == 1000 and index.nlist == 8
    run = index.search(queries, 10)
    scores, indices = exact_topk(queries, docs, 10)
    assert torch.equal(run.indices, indices)
    torch.testing.assert_close(run.scores.double(), scores, atol=1e-5, rtol=0)


def test_inputs_of_any_dtype_and_type_give_the_same_result(random_data):
    docs, queries = random_data
    a = RetrievalIndex(16, "flat", device="cpu")
    a.add(docs.numpy())
    b = RetrievalIndex(16, "flat", device="cpu")
    b.add(docs.double())
    # A non-contiguous float64 view must be converted, not misread.
    q64 = torch.cat([queries.double(), queries.double()], dim=1)[:, :16]
    assert not q64.is_contiguous()
    run_a, run_b = a.search(queries.numpy(), 10), b.search(q64, 10)
    assert torch.equal(run_a.indices, run_b.indices)
    torch.testing.assert_close(run_a.scores, run_b.scores, atol=1e-6, rtol=0)


def test_batched_search_equals_one_batch(random_data):
    docs, queries = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs)
    whole, batched = index.search(queries, 5), index.search(queries, 5, batch_size=7)
    assert torch.equal(whole.indices, batched.indices)
    assert torch.equal(whole.scores, batched.scores)


# --- approximate kinds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_at_10(kind, clustered_data):
    docs, queries = clustered_data
    index = RetrievalIndex(32, kind, device="cpu")
    index.add(docs)
    run = index.search(queries, 10)
    _, truth = exact_topk(queries, docs, 10)
    assert recall_at(run.indices, truth) >= 0.9
    # Whatever an approximate index returns, its scores must be the true inner products of what it returned.
    found = run.indices.clamp(min=0)
    true_scores = (queries.unsqueeze(1) * docs[found]).sum(-1)
    torch.testing.assert_close(run.scores[run.indices != PAD], true_scores[run.indices != PAD], atol=1e-5, rtol=0)


def test_default_nlist_rule():
    assert default_nlist(100_000) == round(4 * math.sqrt(100_000))  # 1265: the sqrt rule binds
    assert default_nlist(5000) == 5000 // 39  # 128: enough training points per centroid binds
    assert default_nlist(10) == 1


# --- depth, padding, ids -------------------------------------------------------------------------------------------


def test_k_larger_than_corpus_returns_everything(random_data):
    docs, queries = random_data
    docs = docs[:30]
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs)
    run = index.search(queries, 100)
    assert run.depth == 30
    scores, indices = exact_topk(queries, docs, 30)  # the full ranking
    assert torch.equal(run.indices.sort(dim=1).values, torch.arange(30).expand(40, 30))
    torch.testing.assert_close(run.scores.double(), scores, atol=1e-5, rtol=0)


def test_unfilled_slots_become_pad_with_minus_inf(random_data):
    """IVF probing 1 of 4 cells cannot fill k = N slots: faiss's -1 results must come back as PAD / -inf."""
    docs, queries = random_data
    docs = docs[:400]
    index = RetrievalIndex(16, "ivf", nlist=4, nprobe=1, device="cpu")
    index.add(docs)
    run = index.search(queries, 400)
    pad = run.indices == PAD
    assert run.depth == 400 and pad.any() and not pad.all(dim=1).any()
    assert torch.isneginf(run.scores[pad]).all() and torch.isfinite(run.scores[~pad]).all()
    true_scores = (queries.unsqueeze(1) * docs[run.indices.clamp(min=0)]).sum(-1)
    torch.testing.assert_close(run.scores[~pad], true_scores[~pad], atol=1e-5, rtol=0)


def test_ids_map_through_to_run_doc_ids(random_data):
    docs, queries = random_data
    ids = [f"doc-{i:04d}" for i in range(len(docs))]
    index = RetrievalIndex(16, "hnsw", device="cpu")
    index.add(docs[:500], ids[:500])
    index.add(docs[500:], ids[500:])
    assert index.ids == ids and len(index) == 1000
    run = index.search(queries[:3], 5, query_ids=["a", "b", "c"])
    assert run.doc_ids == ids and run.query_ids == ["a", "b", "c"]
    _, truth = exact_topk(queries[:3], docs, 5)
    expected = {qid: [ids[i] for i in row] for qid, row in zip("abc", truth.tolist())}
    assert {qid: list(docs_) for qid, docs_ in run.to_dict().items()} == expected


def test_default_ids_are_row_numbers_across_adds(random_data):
    docs, _ = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs[:3])
    index.add(docs[3:5])
    assert index.ids == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="unique"):
        index.add(docs[5:6], ids=["2"])


# --- errors --------------------------------------------------------------------------------------------------------


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError) as err:
        RetrievalIndex(8, "annoy")
    assert "annoy" in str(err.value) and all(kind in str(err.value) for kind in KINDS)


def test_dimension_mismatch_names_both_dims(random_data):
    docs, queries = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    with pytest.raises(ValueError, match=r"dimension 12 .* dimension 16"):
        index.add(docs[:, :12])
    index.add(docs)
    with pytest.raises(ValueError, match=r"dimension 20 .* dimension 16"):
        index.search(torch.zeros(2, 20), 3)


def test_non_finite_vectors_are_rejected(random_data):
    docs, _ = random_data
    bad = docs[:10].clone()
    bad[3, 2] = float("nan")
    index = RetrievalIndex(16, "flat", device="cpu")
    with pytest.raises(ValueError, match="non-finite"):
        index.add(bad)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        index.add(bad)
    assert len(index) == 0  # nothing half-added


def test_empty_index_search_raises():
    with pytest.raises(RuntimeError, match="empty"):
        RetrievalIndex(4, "flat", device="cpu").search(torch.zeros(1, 4), 1)
    with pytest.raises(RuntimeError, match="empty"):
        RetrievalIndex(4, "ivf", device="cpu").search(torch.zeros(1, 4), 1)


def test_ivf_first_add_smaller_than_nlist_raises():
    with pytest.raises(ValueError, match="nlist=64"):
        RetrievalIndex(4, "ivf", nlist=64, device="cpu").add(unit_gaussian(10, 4, seed=0))


# --- persistence ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(kind, clustered_data, tmp_path):
    docs, queries = clustered_data
    ids = [f"d{i}" for i in range(len(docs))]
    index = RetrievalIndex(32, kind, nprobe=4, ef_search=20, device="cpu")
    index.add(docs, ids)
    before = index.search(queries, 10)
    index.save(tmp_path / "idx")
    loaded = RetrievalIndex.load(tmp_path / "idx", device="cpu")
    after = loaded.search(queries, 10)
    assert loaded.ids == ids and len(loaded) == len(docs)
    assert loaded.config == index.config  # includes IVF's resolved nlist and the non-default search parameters
    assert torch.equal(before.indices, after.indices) and torch.equal(before.scores, after.scores)
    assert after.doc_ids == ids


def test_save_overwrites_a_previous_save_and_leaves_no_temporaries(random_data, tmp_path):
    docs, _ = random_data
    first = RetrievalIndex(16, "flat", device="cpu")
    first.add(docs[:10])
    first.save(tmp_path / "idx")
    second = RetrievalIndex(16, "flat", device="cpu")
    second.add(docs[:20])
    second.save(tmp_path / "idx")
    assert len(RetrievalIndex.load(tmp_path / "idx")) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_failed_save_keeps_the_old_save(random_data, tmp_path, monkeypatch):
    docs, _ = random_data
    old = RetrievalIndex(16, "flat", device="cpu")
    old.add(docs[:10])
    old.save(tmp_path / "idx")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    new = RetrievalIndex(16, "flat", device="cpu")
    new.add(docs[:20])
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    assert len(RetrievalIndex.load(tmp_path / "idx")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_save_that_fails_mid_swap_restores_the_old_save(random_data, tmp_path, monkeypatch):
    """If moving the new directory into place fails after the old one was moved aside, the old one comes back."""
    docs, _ = random_data
    old = RetrievalIndex(16, "flat", device="cpu")
    old.add(docs[:10])
    old.save(tmp_path / "idx")
    real_replace = os.replace

    def replace_failing_for_the_new_dir(src, dst):
        if str(src).endswith(".tmp") and Path(dst).name == "idx":
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_for_the_new_dir)
    new = RetrievalIndex(16, "flat", device="cpu")
    new.add(docs[:20])
    with pytest.raises(OSError, match="rename failed"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    assert len(RetrievalIndex.load(tmp_path / "idx")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_save_refuses_to_overwrite_other_things(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    index = RetrievalIndex(4, "flat", device="cpu")
    index.add(unit_gaussian(3, 4, seed=0))
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_missing_or_corrupt_path_names_it(random_data, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RetrievalIndex.load(missing)
    docs, _ = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs[:50])
    index.save(tmp_path / "idx")
    blob = tmp_path / "idx" / "index.faiss"
    blob.write_bytes(blob.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="index.faiss"):
        RetrievalIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json"):
        RetrievalIndex.load(tmp_path / "idx")


def test_load_rejects_ids_that_disagree_with_the_faiss_file(random_data, tmp_path):
    """A meta.json whose id count disagrees with the faiss file is inconsistent and must not load silently."""
    docs, _ = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs[:50])
    index.save(tmp_path / "idx")
    other = RetrievalIndex(16, "flat", device="cpu")
    other.add(docs[:40])
    other.save(tmp_path / "other")
    (tmp_path / "idx" / "meta.json").write_bytes((tmp_path / "other" / "meta.json").read_bytes())
    with pytest.raises(ValueError, match="50 vectors"):
        RetrievalIndex.load(tmp_path / "idx")


def test_float_scores_are_float32_inner_products(random_data):
    docs, queries = random_data
    index = RetrievalIndex(16, "flat", device="cpu")
    index.add(docs)
    run = index.search(queries, 3)
    assert run.scores.dtype == torch.float32 and run.indices.dtype == torch.long
    manual = np.einsum("qd,qkd->qk", queries.numpy(), docs.numpy()[run.indices.numpy()])
    np.testing.assert_allclose(run.scores.numpy(), manual, atol=1e-6)
