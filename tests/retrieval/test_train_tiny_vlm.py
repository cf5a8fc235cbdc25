"""The tiny dense Qwen3-VL-Embedding trained here: it learns, it is saved in the hub format, it reloads the same."""

import json

import pytest
import torch

from mmrerank.datasets.synthetic.vidore import SyntheticViDoRe
from mmrerank.retrieval.pages import page_training_data
from mmrerank.retrieval.vlm.base import last_token
from mmrerank.retrieval.vlm.tiny import build_tiny_qwen3_vl_embedding
from mmrerank.retrieval.vlm.train_tiny import TinyDenseVLMConfig, ensure_tiny_dense_vlm, load_tiny_dense_vlm


def _training_texts(config: TinyDenseVLMConfig) -> list[str]:
    return page_training_data(config.train_seed, config.train_documents)[0].ocr_text.texts


# Small enough for a test (about half a minute on one thread), large enough to learn the task well above chance.
TINY = TinyDenseVLMConfig(hidden=32, vocab_size=1000, steps=80, train_documents=30, lr=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    return root, ensure_tiny_dense_vlm(TINY, root=root)


def _gold_ranks(embedder, data) -> torch.Tensor:
    """Each question's gold page's rank (1 = first) among all the held-out corpus' pages."""
    pages = embedder.encode_documents(data.images, list(data.page_text.texts))
    scores = embedder.encode_queries(data.queries.texts) @ pages.T  # [Q, N]
    gold = torch.tensor([data.page_ids.index(next(iter(data.qrels.to_dict()[q]))) for q in data.queries.ids])
    return (scores > scores.gather(1, gold[:, None])).sum(1) + 1


def test_training_beats_the_untrained_model_on_unseen_documents(trained, tmp_path):
    _, embedder = trained
    data = SyntheticViDoRe(seed=3, documents=4).load()  # seed 3: not the training pages (seed 0)
    untrained = load_tiny_dense_vlm(build_tiny_qwen3_vl_embedding(
        tmp_path / "untrained", TINY.seed, TINY.hidden, TINY.layers, _training_texts(TINY),
        TINY.vocab_size), TINY)
    chance = (len(data.page_ids) + 1) / 2
    before, after = _gold_ranks(untrained, data).float().mean(), _gold_ranks(embedder, data).float().mean()
    assert after < 0.5 * chance and after < 0.5 * before, (after, before, chance)


def test_saved_folder_is_the_hub_format_and_reloads_the_same_vectors(trained):
    root, embedder = trained
    (folder,) = [p for p in root.iterdir() if (p / "training.json").exists()]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["text_config"]["hidden_size"] == TINY.hidden
    log = json.loads((folder / "training.json").read_text())
    assert len(log["losses"]) == TINY.steps and log["losses"][-1] < log["losses"][0]
    again = ensure_tiny_dense_vlm(TINY, root=root)  # cached: loaded, not retrained
    data = SyntheticViDoRe(seed=3, documents=1).load()
    texts = list(data.page_text.texts)
    batched = again.encode_documents(data.images, texts)
    torch.testing.assert_close(batched, embedder.encode_documents(data.images, texts))
    # independently: each page alone (no padding), the last position's hidden state, normalised
    with torch.no_grad():
        for i, (image, text) in enumerate(zip(data.images, texts)):
            inputs = again._document_inputs(image, text)
            hidden = again.model.model(**inputs).last_hidden_state
            alone = torch.nn.functional.normalize(last_token(hidden, inputs["attention_mask"]), dim=-1)[0]
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=0)


def test_tokenizer_holds_the_training_pages_words(trained):
    _, embedder = trained
    word = _training_texts(TINY)[0].split(":")[0]  # the first document's entity name
    assert len(embedder.tokenizer.tokenize(word)) == 1, word


def test_vidore_suite_row_reads_page_text(tmp_path, monkeypatch):
    from mmrerank.evaluation.report import Report
    from mmrerank.evaluation.suites import ViDoRe
    from mmrerank.retrieval.page_search import EmbedderPageSearch

    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path))
    recipe = TinyDenseVLMConfig(hidden=16, vocab_size=500, steps=2, train_documents=2)
    suite = ViDoRe(dataset=SyntheticViDoRe(seed=3, documents=2), first_stages=["tiny Qwen3-VL-Embedding"],
                   tiny_dense_vlm=recipe, depth=5, rerank_depth=3)
    search = suite._search("tiny Qwen3-VL-Embedding", None, "cpu", False)
    assert isinstance(search, EmbedderPageSearch) and search.page_text and not search.embedder.multi_vector
    report = Report("t")
    suite.run(report, device="cpu", progress=False)
    row = report.rows["tiny Qwen3-VL-Embedding"]
    assert {"vidore/nDCG@10", "vidore/R@1"} <= set(row) and all(0.0 <= v <= 1.0 for v in row.values())
