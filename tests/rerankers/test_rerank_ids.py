"""A user's run file is paired with the task by id, never by position (issue 26).

The run file lists queries and candidates in another order than the task does (as any retriever's file would).
A reranker that knows the answers must then reach a perfect Success@1 over the run's candidates. Before the fix,
`Reranker.rerank` read row i as the task's query i and `run.indices` as rows of the task's corpus: the same oracle
scored Success@1 0.031 and nDCG@10 0.440 on this fixture (first stage: 0.0 and 0.425).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.core.items import RetrievalTask, Texts
from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run
from mmrerank.rerankers.base import Reranker

N_QUERIES, N_DOCS, DEPTH = 32, 48, 10


class Oracle(Reranker):
    """Scores 1 for a relevant (query text, doc text) pair, else 0: knows the answers by content, not by position."""

    def __init__(self, relevant: set[tuple[str, str]]) -> None:
        self.relevant = relevant

    def score(self, queries, candidates):
        return torch.tensor([float((q, c) in self.relevant) for q, c in zip(queries, candidates)])


def fixture(tmp_path: Path) -> tuple[RetrievalTask, Path, Oracle]:
    """A task (ids `q00`.. and `img_00`.., texts named after them), its oracle, and a run file over it written in
    another query order and with candidate ids in another order, the relevant doc at a random place in the top 10
    and below a first-stage score of some non-relevant ones."""
    rng = random.Random(0)
    query_ids = [f"q{i:02d}" for i in range(N_QUERIES)]
    doc_ids = [f"img_{i:02d}" for i in range(N_DOCS)]
    gold = {q: doc_ids[rng.randrange(N_DOCS)] for q in query_ids}
    qrels = Qrels.from_dict({q: {d: 1} for q, d in gold.items()}, query_ids, doc_ids)
    task = RetrievalTask("mine/t2i", Texts(query_ids, [f"text of {q}" for q in query_ids]),
                         Texts(doc_ids, [f"text of {d}" for d in doc_ids]), qrels)
    lines = []
    for q in rng.sample(query_ids, N_QUERIES):  # the file's query order is not the task's
        others = rng.sample([d for d in doc_ids if d != gold[q]], 19)
        ranked = others[:]
        ranked.insert(rng.randrange(1, DEPTH), gold[q])  # relevant in the top 10 but never first
        lines += [f"{q} Q0 {d} {r + 1} {20 - r} first\n" for r, d in enumerate(ranked)]
    path = tmp_path / "my_first_stage.trec"
    path.write_text("".join(lines))
    oracle = Oracle({(f"text of {q}", f"text of {d}") for q, d in gold.items()})
    return task, path, oracle


def test_oracle_rerank_of_a_shuffled_run_file(tmp_path):
    task, path, oracle = fixture(tmp_path)
    run = Run.read_trec(path)  # the naive path of issue 26: the file's own id order
    assert run.query_ids != task.queries.ids and run.doc_ids != task.corpus.ids
    first = task.measure(run, ["nDCG@10", "Success@1"])
    assert first["Success@1"] == 0.0  # the fixture never puts the relevant doc first
    reranked = oracle.rerank(run, task, rerank_depth=DEPTH, progress=False)
    scores = task.measure(reranked, ["nDCG@10", "Success@1"])
    assert scores == {"nDCG@10": 1.0, "Success@1": 1.0}
    # the output names the run's own candidates, best first
    before, after = run.to_dict(), reranked.to_dict()
    assert list(after) == list(before) and all(set(after[q]) == set(before[q]) for q in before)


def test_read_trec_aligns_to_the_task(tmp_path):
    task, path, oracle = fixture(tmp_path)
    run = Run.read_trec(path, task=task)
    assert run.query_ids == task.queries.ids and run.doc_ids == task.corpus.ids
    assert run.to_dict() == Run.read_trec(path).to_dict()  # the same pairs and scores
    reranked = oracle.rerank(run, task, rerank_depth=DEPTH, progress=False)
    assert task.measure(reranked, ["Success@1"]) == {"Success@1": 1.0}
    by_ids = Run.read_trec(path, query_ids=list(reversed(task.queries.ids)), doc_ids=task.corpus.ids)
    assert by_ids.query_ids == list(reversed(task.queries.ids))
    with pytest.raises(ValueError, match="not both"):
        Run.read_trec(path, task=task, doc_ids=task.corpus.ids)


def test_rerank_refuses_ids_the_task_lacks(tmp_path):
    task, path, oracle = fixture(tmp_path)
    text = path.read_text()
    (tmp_path / "bad_query.trec").write_text(text.replace("q05 ", "q5 "))
    with pytest.raises(ValueError, match=r"1 of 32 of the run's query ids are not in the queries.*'q5'"):
        oracle.rerank(Run.read_trec(tmp_path / "bad_query.trec"), task, rerank_depth=DEPTH, progress=False)
    (tmp_path / "bad_doc.trec").write_text(text.replace(" img_07 ", " img_07.jpg "))
    with pytest.raises(ValueError, match=r"candidate ids are not in the corpus.*'img_07.jpg'"):
        oracle.rerank(Run.read_trec(tmp_path / "bad_doc.trec"), task, rerank_depth=DEPTH, progress=False)
    with pytest.raises(ValueError, match=r"bad_doc.trec's candidate ids are not in the corpus"):
        Run.read_trec(tmp_path / "bad_doc.trec", task=task)


def test_measure_warns_when_run_and_qrels_share_no_query(tmp_path):
    task, path, _ = fixture(tmp_path)
    run = Run.read_trec(path)
    renamed = Run(run.indices, run.scores, [f"x{q}" for q in run.query_ids], run.doc_ids)
    with pytest.warns(UserWarning, match="share no query id"):
        assert task.measure(renamed, ["Success@5"]) == {"Success@5": 0.0}
    with pytest.warns(UserWarning, match="share no query id"):
        evaluate(renamed.to_dict(), task.qrels.to_dict(), "Success@5")
    few = run.select(range(5))
    with pytest.warns(UserWarning, match="share only 5 query ids"):
        task.measure(few, ["Success@5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.measure(run, ["Success@5"])  # a run over the task's queries: no warning
        evaluate(few, task.qrels, "Success@5", count_missing=False)  # a shard
    wrong_docs = Run(run.indices, run.scores, run.query_ids, [f"{d}.jpg" for d in run.doc_ids])
    with pytest.warns(UserWarning, match="none of the run's .* candidate ids is judged"):
        evaluate(wrong_docs, task.qrels, "Success@5")


class Kinds(Reranker):
    """Scores by a candidate's kind: an image is 1 + its red value / 255, a text 0; records what it was given."""

    def score(self, queries, candidates):
        self.seen = [type(q).__name__ for q in queries[:1]] + [type(c).__name__ for c in candidates]
        return torch.tensor([1 + c.getpixel((0, 0))[0] / 255 if isinstance(c, Image.Image) else 0.0
                             for c in candidates])


def test_rank_reads_image_paths_and_returns_ids(tmp_path):
    for name, red in (("dim.png", 10), ("bright.jpg", 250)):
        Image.new("RGB", (4, 4), (red, 0, 0)).save(tmp_path / name)
    reranker = Kinds()
    ranked = reranker.rank(str(tmp_path / "dim.png"),
                           ["a text", str(tmp_path / "dim.png"), tmp_path / "bright.jpg", "photo of a.png"],
                           ids=["t", "dim", "bright", "t2"])
    assert reranker.seen == ["Image", "str", "Image", "Image", "str"]
    assert ranked.ids == ["bright", "dim", "t", "t2"] and ranked.order == [2, 1, 0, 3]
    assert ranked.top_k(2).ids == ["bright", "dim"]
    assert reranker.rank("q", ["a", "b"]).ids == ["0", "1"]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        reranker.rank("q", [str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="1 ids for 2 candidates"):
        reranker.rank("q", ["a", "b"], ids=["x"])


def test_ids_with_file_extensions_are_named_as_such():
    """The commonest slip, a run naming images `photo_1.jpg` where the ids are file names without extension, is
    said as such (other mismatches get the general advice)."""
    from mmrerank.core.run import id_rows

    with pytest.raises(ValueError, match=r"'photo_2.jpg' is 'photo_2' here\): an image's id is its file name"):
        id_rows(["photo_1", "photo_2.jpg"], ["photo_1", "photo_2"], "the run's candidate ids", "the corpus")
    with pytest.raises(ValueError, match="Ids are matched as strings"):
        id_rows(["photo_3.jpg"], ["photo_1", "photo_2"], "the run's candidate ids", "the corpus")
