"""Run vidore-benchmark's own evaluation (its v1 qrels/results builder and its mteb-based scorer) on hand-made data.

Run in a venv with vidore-benchmark (and its mteb<1.17) installed, from the repository root:
    /work/venvs/late-vidore/bin/python scripts/late_scripts/make_vidore_fixture.py
Writes tests/fixtures/vidore/v1.parquet (a tiny ViDoRe v1 table: a repeated query, a row without a query, a page
given twice) and tests/fixtures/vidore/expected.json (the authors' qrels and scores), read by
tests/datasets/test_vidore.py.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Dataset
from PIL import Image
from vidore_benchmark.evaluation.vidore_evaluators import ViDoReEvaluatorQA
from vidore_benchmark.evaluation.vidore_evaluators.base_vidore_evaluator import BaseViDoReEvaluator
from vidore_benchmark.utils.data_utils import deduplicate_dataset_rows

OUT = "tests/fixtures/vidore"


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def v1_case(rng: np.random.Generator) -> dict:
    rows = [("what is a", "p0.png"), ("what is b", "p1.png"), ("what is a", "p2.png"), (None, "p3.png"),
            ("what is c", "p1.png"), ("what is d", "p4.png"), ("what is e", "p5.png"), ("what is f", "p3.png")]
    files = sorted({f for _, f in rows})
    table = pa.table({"query": [q for q, _ in rows], "image_filename": [f for _, f in rows],
                      "image": [{"bytes": png(files.index(f)), "path": f} for _, f in rows],
                      "answer": ["x"] * len(rows)})
    pq.write_table(table, f"{OUT}/v1.parquet")
    ds = Dataset.from_dict({"query": [q for q, _ in rows], "image_filename": [f for _, f in rows]})
    queries = list(deduplicate_dataset_rows(ds, "query")["query"])
    page_scores = {f: float(s) for f, s in zip(files, rng.permutation(len(files)) + rng.random(len(files)))}
    row_scores = torch.tensor([[page_scores[f] + 0.01 * qi for _, f in rows] for qi in range(len(queries))])

    class Shim:  # the evaluator's method reads only these two attributes of its instance
        query_column, passage_filename_column = "query", "image_filename"

    qrels, results = ViDoReEvaluatorQA._get_relevant_docs_results(Shim(), ds, queries, row_scores)
    metrics = BaseViDoReEvaluator.compute_retrieval_scores(qrels, results)
    return {"queries": queries, "qrels": qrels, "results": results, "metrics": metrics}


def beir_case(rng: np.random.Generator) -> dict:
    docs = [f"c{i}" for i in range(30)]
    qrels = {f"q{i}": {docs[j]: int(rng.integers(1, 3)) for j in rng.choice(30, size=int(rng.integers(1, 5)),
                                                                             replace=False)} for i in range(12)}
    # distinct scores (no ties: trec_eval and a stable sort would break them differently), 25 of the 30 docs per query
    results = {q: {docs[j]: float(s) for j, s in zip(rng.choice(30, size=25, replace=False), rng.random(25))}
               for q in qrels}
    return {"qrels": qrels, "results": results, "metrics": BaseViDoReEvaluator.compute_retrieval_scores(qrels, results)}


def main() -> None:
    rng = np.random.default_rng(29)
    expected = {"v1": v1_case(rng), "beir": beir_case(rng)}
    with open(f"{OUT}/expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print({k: round(v["metrics"]["ndcg_at_5"], 4) for k, v in expected.items()})


if __name__ == "__main__":
    main()
