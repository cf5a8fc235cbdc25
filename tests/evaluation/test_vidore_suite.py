"""The synthetic ViDoRe benchmark, the page first stages and the `vidore` suite, on a few documents."""

import json

import pytest
import torch

from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.datasets.synthetic.vidore import SyntheticViDoRe
from mmrerank.evaluation.report import Report
from mmrerank.evaluation.suites import ViDoRe
from mmrerank.evaluation.vidore_task import ViDoReTask
from mmrerank.retrieval.bm25 import bm25_scores
from mmrerank.retrieval.page_search import BM25PageSearch, EmbedderPageSearch
from mmrerank.retrieval.tiny_colbert import TinyColBERT, TinyColBERTConfig, batch_maxsim, ensure_tiny_colbert

TINY = TinyColBERTConfig(vocab=512, hidden=8, dim=8, steps=3, batch_size=4, train_documents=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path))
    return tmp_path


def test_synthetic_vidore_keeps_the_pages_gold(cache):
    data = SyntheticViDoRe(seed=3, documents=3).load()
    folder = ensure_pages(PagesConfig(seed=3, documents=3))
    gold = {}
    for line in (folder / "MMDocIR_annotations.jsonl").read_text().splitlines():
        doc = json.loads(line)
        for q in doc["questions"]:
            gold[str(len(gold))] = {str(doc["page_indices"][0] + q["page_id"][0]): 1}
    assert data.qrels.to_dict() == gold
    assert data.version == 3 and data.main_measure == "nDCG@10" and data.languages[0] == "english"
    assert len(data.page_ids) == len(data.page_text) and data.images[0].size == (256, 320)


def test_bm25_page_search_is_bm25_over_every_page(cache):
    data = SyntheticViDoRe(seed=3, documents=3).load()
    task = ViDoReTask(data, page_text=True)
    run = BM25PageSearch().run(data.queries, task.corpus, 1000)
    expected = bm25_scores(data.queries.texts, data.page_text.texts)
    assert run.depth == len(data.page_ids)
    torch.testing.assert_close(run.scores, expected.gather(1, run.indices))
    assert torch.equal(run.scores, run.sorted().scores)


def test_late_page_search_equals_naive_maxsim(cache):
    data = SyntheticViDoRe(seed=3, documents=3).load()
    model = TinyColBERT(TINY)
    run = EmbedderPageSearch(model, page_text=True, device="cpu").run(data.queries, ViDoReTask(data, True).corpus, 5)
    q_ids, q_mask = model.token_ids(data.queries.texts)
    d_ids, d_mask = model.token_ids(data.page_text.texts)
    with torch.no_grad():
        full = batch_maxsim(model(q_ids), q_mask, model(d_ids), d_mask)  # fp32 pages; the index stores fp16
    torch.testing.assert_close(run.scores, full.gather(1, run.indices), atol=2e-2, rtol=0)


def test_tiny_colbert_trains_once_and_reloads(cache):
    model = ensure_tiny_colbert(TINY, root=cache / "colbert")
    again = ensure_tiny_colbert(TINY, root=cache / "colbert")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    (vectors,) = model.encode(["What was the revenue of Varlor in 2015?"])
    assert vectors.shape == (8, TINY.dim) and torch.allclose(vectors.norm(dim=-1), torch.ones(8))  # 8 words


def test_vidore_suite_rows(cache):
    suite = ViDoRe(dataset=SyntheticViDoRe(seed=3, documents=3), first_stages=["BM25", "tiny ColBERT"],
                   tiny_colbert=TINY, depth=10, rerank_depth=3)
    report = Report("t")
    suite.run(report, device="cpu", progress=False)
    assert set(report.rows) == {"BM25", "tiny ColBERT"}
    row = report.rows["tiny ColBERT"]
    assert {"vidore/nDCG@10", "vidore/R@1", "vidore/R@5"} <= set(row)
    assert all(0.0 <= v <= 1.0 for v in row.values())


def test_vidore_suite_refuses_bad_depths():
    with pytest.raises(ValueError, match="rerank_depth"):
        ViDoRe(depth=3, rerank_depth=5)


def test_dense_page_search_is_cosine_over_page_images(cache):
    from mmrerank.retrieval.clip import CLIPEncoder
    from mmrerank.retrieval.page_search import DensePageSearch

    data = SyntheticViDoRe(seed=3, documents=2).load()
    torch.manual_seed(0)
    encoder = CLIPEncoder("mmrerank-tiny-resnet").eval()  # batch norm in eval mode, as encode() runs it
    pages = ViDoReTask(data).corpus
    run = DensePageSearch(encoder, batch_size=8, progress=False).run(data.queries, pages, 4)
    with torch.no_grad():
        images = encoder.encode_images(encoder.image_tensor([data.images[i] for i in range(len(data.page_ids))]))
        texts = encoder.encode_texts(data.queries.texts)
    expected = texts @ images.T
    torch.testing.assert_close(run.scores, expected.gather(1, run.indices), atol=1e-5, rtol=0)
    torch.testing.assert_close(run.scores[:, 0], expected.max(1).values, atol=1e-5, rtol=0)  # (ties: any order)


def test_paper_rows_are_checked_against_the_vidore_rows():
    from mmrerank.benchmark import check_paper
    from mmrerank.evaluation.report import Paper
    from mmrerank.evaluation.suites import ImageText

    suite = ViDoRe(first_stages=["BM25", "tiny ColBERT"])
    check_paper(Paper("p", {"tiny ColBERT": {"vidore/nDCG@10": 0.5}}), ImageText(directions=[]), None, None, suite)
    with pytest.raises(ValueError, match="not among the rows"):
        check_paper(Paper("p", {"CLIP": {"vidore/nDCG@10": 0.5}}), ImageText(directions=[]), None, None, suite)
    with pytest.raises(ValueError, match="is not among"):
        check_paper(Paper("p", {"BM25": {"vidore/MAP@3": 0.5}}), ImageText(directions=[]), None, None, suite)
