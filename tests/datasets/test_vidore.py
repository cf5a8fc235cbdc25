"""ViDoRe loaders and measures against vidore-benchmark's own evaluation (fixture made by
scripts/late_scripts/make_vidore_fixture.py in a venv with vidore-benchmark and its mteb)."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run
from mmrerank.datasets.vidore import ViDoReFiles
from mmrerank.evaluation.vidore_task import ViDoReTask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vidore"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
# vidore-benchmark's names (mteb's evaluator, i.e. pytrec_eval) -> ours
MEASURES = {"ndcg_at_1": "nDCG@1", "ndcg_at_3": "nDCG@3", "ndcg_at_5": "nDCG@5", "ndcg_at_10": "nDCG@10",
            "ndcg_at_100": "nDCG@100", "recall_at_1": "R@1", "recall_at_5": "R@5", "recall_at_10": "R@10",
            "map_at_10": "AP@10"}


def assert_measures(ours: dict, theirs: dict) -> None:
    for their_name, our_name in MEASURES.items():
        assert ours[our_name] == pytest.approx(theirs[their_name], abs=1e-5), our_name


def test_v1_loader_builds_the_qrels_vidore_benchmark_builds():
    data = ViDoReFiles(str(FIXTURES / "v1.parquet"), version=1).load()
    case = EXPECTED["v1"]
    assert data.queries.texts == case["queries"]  # deduplicated in first-seen order, the query-less row dropped
    assert sorted(data.page_ids) == sorted({f for r in case["results"].values() for f in r})  # pages by filename
    by_text = dict(zip(data.queries.ids, data.queries.texts))
    assert {by_text[q]: docs for q, docs in data.qrels.to_dict().items()} == case["qrels"]
    assert data.main_measure == "nDCG@5"
    assert data.images[0].size == (4, 4)


def test_v1_main_measure_equals_vidore_benchmark():
    data = ViDoReFiles(str(FIXTURES / "v1.parquet"), version=1).load()
    case = EXPECTED["v1"]
    text_id = dict(zip(data.queries.texts, data.queries.ids))
    run = Run.from_dict({text_id[t]: scores for t, scores in case["results"].items()}, data.page_ids)
    assert_measures(evaluate(run, data.qrels, list(MEASURES.values())), case["metrics"])
    task_row = ViDoReTask(data).measure(run.align(data.queries.ids))
    assert task_row["nDCG@5"] == pytest.approx(case["metrics"]["ndcg_at_5"], abs=1e-5)


def test_graded_beir_measures_equal_vidore_benchmark():
    case = EXPECTED["beir"]
    run = Run.from_dict(case["results"])
    qrels = Qrels.from_dict(case["qrels"], run.query_ids, run.doc_ids)
    assert_measures(evaluate(run, qrels, list(MEASURES.values())), case["metrics"])


def _png() -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize("version,sep", [(2, "-"), (3, "_")])
def test_beir_layout_with_languages(tmp_path, version, sep):
    for name in ("queries", "corpus", "qrels"):
        (tmp_path / name).mkdir()
    pq.write_table(pa.table({f"query{sep}id": [1, 2, 3], "query": ["a", "b", "c"],
                             "language": ["english", "french", "english"]}), tmp_path / "queries" / "test-0.parquet")
    pq.write_table(pa.table({f"corpus{sep}id": [10, 11], "image": [_png(), _png()], "markdown": ["x", None]}),
                   tmp_path / "corpus" / "test-0.parquet")
    pq.write_table(pa.table({f"query{sep}id": [1, 2, 3, 3], f"corpus{sep}id": [10, 11, 10, 11],
                             "score": [1, 2, 1, 2]}), tmp_path / "qrels" / "test-0.parquet")
    data = ViDoReFiles(str(tmp_path), version=version, language="english").load()
    assert data.queries.ids == ["1", "3"] and data.languages == ["english", "english"]
    assert data.qrels.to_dict() == {"1": {"10": 1}, "3": {"10": 1, "11": 2}}
    assert data.page_text.texts == ["x", ""]
    assert data.main_measure == ("nDCG@5" if version == 2 else "nDCG@10")
    with pytest.raises(ValueError, match="no query in language 'german'"):
        ViDoReFiles(str(tmp_path), version=version, language="german").load()


def test_missing_tables_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="qrels"):
        (tmp_path / "queries.parquet").write_bytes(b"")
        pq.write_table(pa.table({"a": [1]}), tmp_path / "queries.parquet")
        pq.write_table(pa.table({"a": [1]}), tmp_path / "corpus.parquet")
        ViDoReFiles(str(tmp_path), version=2).load()
    with pytest.raises(FileNotFoundError, match="source"):
        ViDoReFiles(str(tmp_path / "nope"), version=1).load()


def test_hub_source_reads_what_load_dataset_returns(monkeypatch):
    """ViDoReHub through a stand-in `datasets.load_dataset` (tests never download): the same dataset as the files."""
    import datasets

    def fake_load_dataset(repo_id, config, split, revision):
        assert (repo_id, config, split, revision) == ("vidore/tiny", None, "test", "abc")
        ds = datasets.Dataset.from_parquet(str(FIXTURES / "v1.parquet"))
        return ds.cast_column("image", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from mmrerank.datasets.vidore import ViDoReHub

    hub = ViDoReHub("vidore/tiny", version=1, revision="abc").load()
    files = ViDoReFiles(str(FIXTURES / "v1.parquet"), version=1).load()
    assert hub.queries == files.queries and hub.page_ids == files.page_ids
    assert hub.qrels.to_dict() == files.qrels.to_dict()
    assert hub.images[2].tobytes() == files.images[2].tobytes()
