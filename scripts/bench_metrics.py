"""Time `mmrerank.core.metrics.evaluate` against `ir_measures.calc_aggregate` on a large random run.

The run has `--queries` rows of `--depth` candidates drawn from a corpus of `--docs`, with distinct scores per row
(so trec_eval's doc-id tie-break never matters), and graded qrels (0-3) over both retrieved and unretrieved docs.
`evaluate` is timed from `Run`/`Qrels` tensors and from the same nested dicts ir-measures gets; input preparation
is not timed. Each timing is the median of `--repeats` runs after one warm-up. The script checks that all three
agree to 1e-6 (exit status 1 if not) and prints a Markdown table.

    python scripts/bench_metrics.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run

MEASURES = ["nDCG@10", "R@10", "Success@1", "RR@10", "AP@100", "P@5"]


def make_data(n_queries: int, depth: int, n_docs: int, seed: int) -> tuple[Run, dict[str, dict[str, int]]]:
    """A random run over a corpus and `{qid: {docid: grade}}` qrels.

    Returns:
        The run (`[Q, depth]`, indices into `n_docs` corpus ids) and the nested-dict qrels.
    """
    g = torch.Generator().manual_seed(seed)
    # distinct docs per row: a random start plus a running sum of positive gaps that stays below the corpus size
    max_gap = max(2, n_docs // depth)
    gaps = torch.randint(1, max_gap, (n_queries, depth), generator=g)
    indices = (torch.randint(0, n_docs, (n_queries, 1), generator=g) + gaps.cumsum(1)) % n_docs
    # distinct scores per row: a random permutation of the ranks, jittered by less than the gap between them
    ranks = torch.rand(n_queries, depth, generator=g).argsort(1).float()
    scores = (ranks + 0.5 * torch.rand(n_queries, depth, generator=g)) / depth
    doc_ids = [f"doc{i}" for i in range(n_docs)]
    run = Run(indices, scores, [f"q{i}" for i in range(n_queries)], doc_ids)

    # ~10 judgements per query: 8 retrieved candidates and 2 corpus docs (retrieved or not), grades 0-3 skewed low
    retrieved = indices.gather(1, torch.rand(n_queries, depth, generator=g).argsort(1)[:, :8])
    others = torch.randint(0, n_docs, (n_queries, 2), generator=g)
    judged = torch.cat([retrieved, others], 1).tolist()
    grades = torch.multinomial(torch.tensor([0.4, 0.3, 0.2, 0.1]), n_queries * 10, replacement=True,
                               generator=g).view(n_queries, 10).tolist()
    qrels = {qid: {doc_ids[d]: grade for d, grade in zip(docs, gs, strict=True)}
             for qid, docs, gs in zip(run.query_ids, judged, grades, strict=True)}
    return run, qrels


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall-clock seconds of `fn` over `repeats` calls after one warm-up call, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import ir_measures  # only the benchmark needs it

    run, qrels_dict = make_data(args.queries, args.depth, args.docs, args.seed)
    run_dict = run.to_dict()
    qrels = Qrels.from_dict(qrels_dict, run.query_ids, run.doc_ids)  # the corpus id space, as a pipeline holds it
    parsed = [ir_measures.parse_measure(m) for m in MEASURES]

    t_ref, ref = median_time(lambda: ir_measures.calc_aggregate(parsed, qrels_dict, run_dict), args.repeats)
    ref = {str(m): v for m, v in ref.items()}
    t_tensor, got_tensor = median_time(lambda: evaluate(run, qrels, MEASURES), args.repeats)
    t_dict, got_dict = median_time(lambda: evaluate(run_dict, qrels_dict, MEASURES), args.repeats)
    diff_tensor = max(abs(got_tensor[m] - ref[m]) for m in MEASURES)
    diff_dict = max(abs(got_dict[m] - ref[m]) for m in MEASURES)

    cores = os.cpu_count()
    print(f"- machine: {cores} CPU cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads, ir-measures {ir_measures.__version__}")
    print(f"- command: `{shlex.join(['python', *sys.argv])}`")
    print(f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"- data: {args.queries:,} queries x {args.depth} candidates, {args.docs:,} docs, "
          f"{sum(map(len, qrels_dict.values())):,} judgements; measures: {', '.join(MEASURES)}")
    print(f"- median of {args.repeats} runs after a warm-up\n")
    print("| method | time (s) | speedup vs ir-measures | max abs diff vs ir-measures |")
    print("|---|---:|---:|---:|")
    print(f"| `ir_measures.calc_aggregate` (nested dicts) | {t_ref:.3f} | 1.0x | - |")
    print(f"| `evaluate` (`Run`/`Qrels` tensors) | {t_tensor:.3f} | {t_ref / t_tensor:.1f}x | {diff_tensor:.1e} |")
    print(f"| `evaluate` (nested dicts) | {t_dict:.3f} | {t_ref / t_dict:.1f}x | {diff_dict:.1e} |")
    print()
    print("| measure | ir-measures | evaluate (tensors) | evaluate (dicts) |")
    print("|---|---:|---:|---:|")
    for m in MEASURES:
        print(f"| {m} | {ref[m]:.6f} | {got_tensor[m]:.6f} | {got_dict[m]:.6f} |")
    if max(diff_tensor, diff_dict) > 1e-6:
        print(f"\nDISAGREEMENT with ir-measures: {max(diff_tensor, diff_dict):.2e} > 1e-6", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
