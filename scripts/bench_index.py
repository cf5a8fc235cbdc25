"""Benchmark `RetrievalIndex` kinds at their default settings: build time, search latency, recall@10 vs flat.

The corpus is synthetic and clustered, like embedding collections: unit vectors scattered around random unit
centres. Queries are jittered copies of random corpus vectors, so they fall where the data is. Run from the repo
root:

    python scripts/bench_index.py                 # 100,000 x 128, 1,000 clusters, 1,000 queries
    python scripts/bench_index.py --n 20000       # a quicker look

It prints a Markdown table (with the command, machine, faiss version and date) ready to paste into notes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

import faiss
import torch
from common import clustered_corpus  # scripts/common.py (scripts/ is on sys.path)
from torch import Tensor

from mmrerank.retrieval.index import KINDS, RetrievalIndex


def recall_at_k(found: Tensor, truth: Tensor) -> float:
    """Mean fraction of each `[Q, k]` truth row that the `[Q, k]` found row contains (PAD never matches)."""
    hits = (found.unsqueeze(2) == truth.unsqueeze(1)).any(dim=2).sum()
    return hits.item() / truth.numel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="corpus size")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.25, help="jitter norm of corpus vectors around centres")
    parser.add_argument("--query-noise", type=float, default=0.625, help="jitter norm of queries around docs")
    parser.add_argument("--k", type=int, default=10, help="recall@k cut-off")
    parser.add_argument("--repeats", type=int, default=3, help="searches per kind; the median time is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    corpus, queries = clustered_corpus(args.n, args.dim, args.clusters, args.queries, args.noise,
                                       args.query_noise, args.seed)
    rows = []
    truth = None
    for kind in KINDS:  # "flat" first: it is the reference for the others' recall
        start = time.perf_counter()
        index = RetrievalIndex(args.dim, kind)
        index.add(corpus)
        build_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run = index.search(queries, args.k)
            times.append(time.perf_counter() - start)
        if truth is None:
            truth = run.indices
        settings = {"flat": "exact", "ivf": f"nlist={index.nlist}, nprobe={index.nprobe}",
                    "hnsw": f"m={index.m}, ef_construction={index.ef_construction}, ef_search={index.ef_search}"}
        rows.append((kind, settings[kind], "gpu" if index.use_gpu else "cpu", build_s,
                     1e3 * statistics.median(times) / args.queries, recall_at_k(run.indices, truth)))

    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/bench_index.py", *sys.argv[1:]])
    print(f"### RetrievalIndex benchmark ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(f"- machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"faiss {faiss.__version__}, {faiss.get_num_gpus()} GPUs visible to faiss, torch {torch.__version__}")
    print(f"- data: {args.n:,} x {args.dim} unit vectors in {args.clusters:,} Gaussian clusters (jitter norm "
          f"{args.noise}), {args.queries:,} queries = corpus vectors + jitter norm {args.query_noise}, seed "
          f"{args.seed}")
    print(f"- search time: median of {args.repeats} searches of all queries in one batch, divided by the query "
          f"count; recall@{args.k} against flat\n")
    print(f"| kind | default settings | device | build (s) | search (ms/query) | recall@{args.k} vs flat |")
    print("|---|---|---|---:|---:|---:|")
    for kind, settings, device, build_s, ms, recall in rows:
        print(f"| {kind} | {settings} | {device} | {build_s:.2f} | {ms:.4f} | {recall:.4f} |")


if __name__ == "__main__":
    main()
