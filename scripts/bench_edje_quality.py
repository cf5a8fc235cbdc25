"""EDJE reranking quality on the synthetic benchmark: first stage vs EDJE on the first stage's top-k, both directions.

Needs the first stage (`mmrerank benchmark` trains it) and a trained EDJE model
(`mmrerank fit --config configs/edje/synthetic.yaml`). The fusion weight alpha (final = logit + alpha x first-stage
cosine) is chosen on the val split and then applied to the test split, so the test numbers are not tuned on test.

    python scripts/bench_edje_quality.py --model checkpoints/edje/synthetic

`--queries N` reranks only the first N queries of each direction and split (every system is then measured on those
queries, against the whole corpus), for models too slow to rerank all 5,000 test captions on a CPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone

import torch

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Run
from mmrerank.datasets import Synthetic
from mmrerank.rerankers.edje import EDJE, EDJEReranker, precompute_images
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.index import retrieve

MEASURES = ["Success@1", "Success@5", "Success@10", "nDCG@10"]
ALPHAS = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]


def split_rows(model: EDJE, encoder, split: str, depth: int, store_root: str, queries: int = 0) -> dict:
    """Per direction: the task, the first-stage run, the EDJE-reranked run (alpha 0) and the memoized reranker (its
    fused runs for any alpha then cost no model pass), over the first `queries` queries (0: all)."""
    data = Synthetic(split).load()
    image_emb, text_emb = encoder.encode(data.images, 256, False), encoder.encode(data.captions, 256, False)
    store = precompute_images(model, data.images, f"{store_root}/synthetic-{split}", progress=False)
    reranker = Memoized(EDJEReranker(model, store))
    out = {}
    for direction in ("t2i", "i2t"):
        task = data.task(direction)
        q, c = (text_emb, image_emb) if direction == "t2i" else (image_emb, text_emb)
        run = retrieve(q, c, task.queries.ids, task.corpus.ids, 100)
        if queries:  # the first rows: row r is still query r of the task, as rerank expects
            run = Run(run.indices[:queries], run.scores[:queries], run.query_ids[:queries], run.doc_ids)
        start = time.perf_counter()
        reranked = reranker.rerank(run, task, depth, batch_size=512, progress=False)
        out[direction] = (task, run, reranked, time.perf_counter() - start, reranker)
    return out


def score(run: Run, qrels, measures: list[str]) -> dict[str, float]:
    """The measures over the run's queries only (judged queries left out by `--queries` do not count as misses)."""
    return evaluate(run, qrels, measures, count_missing=False)


def fused(split: dict, direction: str, depth: int, alpha: float) -> Run:
    """The direction's run reranked by `logit + alpha * first-stage score` (`Fused`: the one fusion rule)."""
    task, run, _, _, reranker = split[direction]
    return Fused(reranker, alpha).rerank(run, task, depth, batch_size=512, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/edje/synthetic")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--queries", type=int, default=0, help="rerank only the first N queries (0: all)")
    args = parser.parse_args()
    model = EDJE.from_pretrained(args.model)
    encoder = FirstStage().build(progress=False)
    val = split_rows(model, encoder, "val", args.depth, f"{args.model}/tokens", args.queries)
    def val_success(alpha: float) -> float:
        return sum(score(fused(val, d, args.depth, alpha), val[d][0].qrels, ["Success@1"])["Success@1"] for d in val)

    best = max(ALPHAS, key=val_success)
    test = split_rows(model, encoder, "test", args.depth, f"{args.model}/tokens", args.queries)
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- machine: 2 CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; alpha chosen on val: {best:g}\n")
    columns = [f"{d}/{m}" for d in ("t2i", "i2t") for m in MEASURES]
    print("| system | " + " | ".join(columns) + " |\n| --- |" + " ---: |" * len(columns))
    systems = {"first stage": lambda d: test[d][1], f"EDJE (top {args.depth})": lambda d: test[d][2],
               f"EDJE + {best:g} x first stage": lambda d: fused(test, d, args.depth, best)}
    for name, pick in systems.items():
        row = {}
        for direction in test:
            row.update({f"{direction}/{k}": v for k, v in score(pick(direction), test[direction][0].qrels,
                                                                 MEASURES).items()})
        print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    print("\nrerank time (test): " + ", ".join(f"{d} {v[3]:.1f} s" for d, v in test.items()))
    for alpha in ALPHAS:
        s1 = [score(fused(val, d, args.depth, alpha), val[d][0].qrels, ["Success@1"])["Success@1"] for d in val]
        print(f"val alpha {alpha:g}: t2i S@1 {s1[0]:.4f}, i2t S@1 {s1[1]:.4f}")


if __name__ == "__main__":
    main()
