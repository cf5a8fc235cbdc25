"""VLM first stages: the embedders against vectors the authors' own code gave on the same tiny models
(tests/fixtures/vlm_parity, SOURCE.md there), length-bucketed batching, exact MaxSim against a naive loop, and the
first-stage wrapper's runs."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mmrerank.retrieval.late import maxsim_scores
from mmrerank.retrieval.vlm.base import collate, length_batches
from mmrerank.retrieval.vlm.first_stage import embedder_run, page_scores
from mmrerank.retrieval.vlm.presets import PRESETS, load_embedder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vlm_parity"
sys.path.insert(0, str(FIXTURES))
from inputs import QUERIES, pages  # noqa: E402

PAGE_TEXTS = [None, "the chart of quarterly revenue by region", None, "invoice total due in thirty days"]
TOLERANCE = 1e-5


def _load(folder: str, preset: str, **options):
    return load_embedder(FIXTURES / folder / "model", preset=preset, **options)


@pytest.fixture(scope="module")
def colqwen2():
    return _load("colqwen2", "vidore/colqwen2-v1.0-merged", batch_size=3)


# Batches of one, of three rows, and a token budget that splits the pages: the vectors must not depend on them.
BATCHINGS = [dict(batch_size=1), dict(batch_size=3), dict(batch_size=4, max_tokens_per_batch=40)]


@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("folder,preset", [("colqwen2", "vidore/colqwen2-v1.0-merged"),
                                           ("colpali", "vidore/colpali-v1.3-merged")])
def test_late_interaction_parity(folder, preset, batching):
    """colpali-engine 0.3.18 `process_queries` / `process_images` + `ColQwen2` / `ColPali`; pages and queries."""
    expected = load_file(str(FIXTURES / folder / "expected.safetensors"))
    # ColPali: colpali-engine's padded query batch attends causally (see ColVisionEmbedder.query_attention)
    options = {"query_attention": "causal"} if folder == "colpali" else {}
    embedder = _load(folder, preset, **options, **batching)
    for kind, got in (("query", embedder.encode_queries(QUERIES)), ("page", embedder.encode_documents(pages()))):
        for i, vectors in enumerate(got):
            want = expected[f"{kind}.{i}"]
            assert vectors.shape == want.shape, (kind, i)
            assert torch.allclose(vectors, want, atol=TOLERANCE, rtol=0), (kind, i)


@pytest.mark.parametrize("batching", BATCHINGS[:2])
def test_colpali_bidirectional_queries_match_colpali_engine_unpadded(batching):
    """The default: each query's tokens attend both ways, as colpali-engine gives for a query alone, whatever our
    batch's padding; the causal mode differs from it (the fixture tells the two apart)."""
    expected = load_file(str(FIXTURES / "colpali" / "expected.safetensors"))
    got = _load("colpali", "vidore/colpali-v1.3-merged", **batching).encode_queries(QUERIES)
    for i, vectors in enumerate(got):
        assert torch.allclose(vectors, expected[f"query_alone.{i}"], atol=TOLERANCE, rtol=0), i
    assert max((expected[f"query.{i}"] - expected[f"query_alone.{i}"]).abs().max() for i in range(4)) > 0.05


@pytest.mark.parametrize("batching", BATCHINGS)
def test_dse_parity_with_tevatron(batching):
    expected = load_file(str(FIXTURES / "dse" / "expected.safetensors"))
    embedder = _load("dse", "MrLight/dse-qwen2-2b-mrl-v1", **batching)
    assert torch.allclose(embedder.encode_queries(QUERIES), expected["query"], atol=TOLERANCE, rtol=0)
    assert torch.allclose(embedder.encode_documents(pages()), expected["page"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("batching", BATCHINGS)
def test_qwen3_vl_embedding_parity_with_qwenlm(batching):
    expected = load_file(str(FIXTURES / "qwen3-vl-embedding" / "expected.safetensors"))
    embedder = _load("qwen3-vl-embedding", "Qwen/Qwen3-VL-Embedding-2B",
                     query_instruction="Retrieve images or text relevant to the user's query", **batching)
    assert torch.allclose(embedder.encode_queries(QUERIES), expected["query"], atol=TOLERANCE, rtol=0)
    assert torch.allclose(embedder.encode_documents(pages(), PAGE_TEXTS), expected["page"], atol=TOLERANCE, rtol=0)


def test_matryoshka_cut_is_the_normalised_prefix():
    full = _load("dse", "MrLight/dse-qwen2-2b-mrl-v1").encode_queries(QUERIES[:2])
    cut = _load("dse", "MrLight/dse-qwen2-2b-mrl-v1", dim=16).encode_queries(QUERIES[:2])
    assert cut.shape == (2, 16)
    # normalize(h)[:16] renormalised is normalize(h[:16]): the cut is taken before the normalisation
    assert torch.allclose(cut, torch.nn.functional.normalize(full[:, :16], dim=-1), atol=1e-6)


def test_length_batches_respect_rows_and_budget():
    lengths = [5, 40, 7, 12, 40, 3, 9]
    batches = length_batches(lengths, batch_size=3, max_tokens_per_batch=30)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        widest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * widest <= 30  # an item over the budget runs alone
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        length_batches(lengths, 2, 0)


def test_collate_pads_on_the_tokenizer_side():
    a = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "pixel_values": torch.ones(4, 2)}
    b = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
         "pixel_values": torch.zeros(2, 2)}
    left = collate([a, b], pad_id=0, left=True)
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 0, 7]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["pixel_values"].shape == (6, 2)
    assert collate([a, b], pad_id=9, left=False)["input_ids"].tolist() == [[1, 2, 3], [7, 9, 9]]


def _naive_maxsim(q, d):
    return sum(max(float(q[i] @ d[j]) for j in range(d.shape[0])) for i in range(q.shape[0]))


def test_maxsim_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    queries = [torch.randn(n, 8, generator=gen) for n in (3, 5)]
    docs = [torch.randn(n, 8, generator=gen) for n in (4, 1, 7, 2, 6)]
    got = maxsim_scores(queries, docs)
    want = torch.tensor([[_naive_maxsim(q, d) for d in docs] for q in queries])
    assert torch.allclose(got, want, atol=1e-5)


def test_embedder_run_late_interaction_and_single_vector(colqwen2):
    images, ids = pages(), ["p0", "p1", "p2", "p3"]
    run = embedder_run(colqwen2, QUERIES[:2], ["q0", "q1"], images, ids, depth=3)
    docs, qs = colqwen2.encode_documents(images), colqwen2.encode_queries(QUERIES[:2])
    want = torch.tensor([[_naive_maxsim(q, d) for d in docs] for q in qs])
    assert run.indices.tolist() == want.argsort(dim=1, descending=True, stable=True)[:, :3].tolist()
    dse = _load("dse", "MrLight/dse-qwen2-2b-mrl-v1")
    run = embedder_run(dse, QUERIES, [f"q{i}" for i in range(4)], images, ids, depth=2)
    scores = dse.encode_queries(QUERIES) @ dse.encode_documents(images).T
    assert run.indices.tolist() == scores.argsort(dim=1, descending=True)[:, :2].tolist()
    assert torch.allclose(run.scores, scores.sort(dim=1, descending=True).values[:, :2], atol=1e-5)


def test_page_scores_stay_within_each_document(colqwen2):
    data = SimpleNamespace(images=pages(), ocr_text=None, questions=QUERIES[:2],
                           candidates=lambda q: [range(0, 3), range(3, 4)][q])
    scores = page_scores(data, colqwen2)
    docs, qs = colqwen2.encode_documents(pages()), colqwen2.encode_queries(QUERIES[:2])
    assert torch.allclose(scores[0], torch.tensor([_naive_maxsim(qs[0], d) for d in docs[:3]]), atol=1e-5)
    assert scores[1].shape == (1,)


def test_clear_errors_before_loading(tmp_path):
    with pytest.raises(ValueError, match="not a known embedder"):
        load_embedder(tmp_path, preset="nobody/nothing")
    with pytest.raises(ValueError, match="attn_implementation"):
        load_embedder(tmp_path, preset="vidore/colpali-v1.3-merged", attn_implementation="fast")
    assert "vidore/colqwen2-v1.0-merged" in PRESETS


def test_tiny_builders_load_through_the_user_path(tmp_path):
    from mmrerank.retrieval.vlm.tiny import build_tiny_colpali

    embedder = load_embedder(build_tiny_colpali(tmp_path / "colpali", seed=1), preset="vidore/colpali-v1.3-merged")
    (page,) = embedder.encode_documents(pages()[:1])
    assert page.shape[0] > 16 and page.shape[1] == 128  # 16 image tokens, then the prompt's
    assert torch.allclose(page.norm(dim=1), torch.ones(page.shape[0]), atol=1e-5)


def test_pages_suite_runs_a_vlm_first_stage_by_name(tmp_path):
    """Pages with first_stages [BM25, ColQwen2]: one row each, the ColQwen2 row's micro R@1 equal to a naive count
    over `page_scores` (MaxSim over each question's own document's pages)."""
    pytest.importorskip("bm25s")
    from mmrerank.datasets import SyntheticPages
    from mmrerank.evaluation import Report
    from mmrerank.evaluation.suites import Pages

    preset = "vidore/colqwen2-v1.0-merged"
    suite = Pages(SyntheticPages(seed=6, documents=3, pages=(4, 6), questions=2, root=str(tmp_path)), rerank_depth=3,
                  first_stages=["BM25", preset], embedder_folders={preset: str(FIXTURES / "colqwen2" / "model")})
    report = Report("pages")
    suite.run(report, device="cpu", progress=False)
    assert {"BM25", preset} <= set(report.rows)
    data = suite.load()
    scores = page_scores(data, _load("colqwen2", preset))
    hits = [float(int(torch.argmax(s)) in q.gold_pages) / len(q.gold_pages) for s, q in
            zip(scores, data.annotations.questions)]
    assert report.rows[preset]["pages/micro/R@1"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
    with pytest.raises(ValueError, match="first_stages"):
        Pages(first_stages=["nobody/nothing"])


@pytest.mark.parametrize("folder,builder", [("colqwen2", "build_tiny_colqwen2"), ("colpali", "build_tiny_colpali"),
                                            ("dse", "build_tiny_dse"),
                                            ("qwen3-vl-embedding", "build_tiny_qwen3_vl_embedding")])
def test_fixture_models_are_what_the_builders_write(tmp_path, folder, builder):
    """The fixtures' tiny models come from these builders (seed 0): rebuilt, the weights are the same tensors."""
    from mmrerank.retrieval.vlm import tiny

    built = load_file(str(getattr(tiny, builder)(tmp_path / folder) / "model.safetensors"))
    stored = load_file(str(FIXTURES / folder / "model" / "model.safetensors"))
    assert built.keys() == stored.keys()
    assert all(torch.equal(built[k], stored[k]) for k in built)
