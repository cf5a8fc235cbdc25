"""LateInteractionIndex against a naive MaxSim loop and colpali-engine's own scorer, on the same vectors.

Prints queries/s, peak memory (each method in a fresh process: `ru_maxrss` minus the process's size after loading
the vectors) and the largest score difference; then token pooling (factors 2, 3: vectors kept, Success@1 of each
query's source document against the unpooled index) and candidate generation (recall@100 against exact MaxSim).

    OMP_NUM_THREADS=1 python scripts/bench_late_index.py --colpali-python /work/venvs/late-colpali/bin/python

The vectors are clustered like page embeddings: each document's tokens are noisy copies of a few topic directions,
each query's tokens noisy copies of some of one source document's tokens; all of them rounded to float16 (what the
index stores), so every method scores the same numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def make_vectors(n_docs: int, tokens: int, n_queries: int, q_tokens: int, dim: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    # a direction shared by every vector (embedding spaces are anisotropic): similarities are mostly positive, as
    # colpali-engine's zero padding assumes (a padded 0 never beats a real token then)
    shared = F.normalize(torch.randn(dim, generator=gen), dim=0)
    topics = F.normalize(F.normalize(torch.randn(n_docs * 4, dim, generator=gen), dim=-1) + shared, dim=-1)
    docs = []
    for _ in range(n_docs):
        n = int(torch.randint(tokens // 2, tokens + 1, (1,), generator=gen))
        pick = topics[torch.randint(0, len(topics), (4,), generator=gen)]
        centres = pick[torch.randint(0, 4, (n,), generator=gen)]
        docs.append(F.normalize(centres + 0.5 * torch.randn(n, dim, generator=gen) / dim ** 0.5, dim=-1).half().float())
    source = torch.randint(0, n_docs, (n_queries,), generator=gen)
    queries = []
    for s in source.tolist():
        rows = torch.randint(0, len(docs[s]), (q_tokens,), generator=gen)
        queries.append(F.normalize(docs[s][rows] + 0.8 * torch.randn(q_tokens, dim, generator=gen) / dim ** 0.5,
                                   dim=-1))
    return {"docs": docs, "queries": queries, "source": source}


def naive_scores(queries, docs) -> torch.Tensor:
    """One (query, document) pair at a time: `sum_i max_j q_i . d_j`."""
    out = torch.empty(len(queries), len(docs))
    for qi, q in enumerate(queries):
        for di, d in enumerate(docs):
            out[qi, di] = (q @ d.T).max(dim=1).values.sum()
    return out


def _scorer(method: str):
    """`score(queries, docs) -> [Q, N]` for `method`, imported and warmed up before anything is measured."""
    if method == "index":
        sys.path.insert(0, str(ROOT))
        from mmrerank.retrieval.late import LateInteractionIndex, pad_queries

        def score(queries, docs):
            index = LateInteractionIndex(docs[0].shape[1], device="cpu")
            index.add(docs)
            q, mask = pad_queries(queries, index.dim)
            return torch.cat([index.score_all(q[s:s + 32], mask[s:s + 32]) for s in range(0, len(q), 32)])

        return score
    if method == "naive":
        return naive_scores
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    return lambda queries, docs: BaseVisualRetrieverProcessor.score_multi_vector(queries, docs, batch_size=128,
                                                                                 device="cpu")


def run_method(method: str, data_path: str) -> dict:
    """Score every query against every document with `method` (the index: building it included)."""
    score = _scorer(method)
    data = torch.load(data_path, weights_only=True)
    score(data["queries"][:1], data["docs"][:2])  # warm-up: lazy imports, kernel selection
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = score(data["queries"], data["docs"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"method": method, "seconds": seconds, "qps": len(scores) / seconds, "peak_extra_mib": peak / 1024,
            "scores": scores.tolist()}


def in_fresh_process(python: str, method: str, data_path: str) -> dict:
    out = subprocess.run([python, __file__, "--only", method, "--data", data_path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pooling_rows(data: dict, factors: list[int]) -> list[dict]:
    """Vectors kept and Success@1 of the source document, per pool factor (1: unpooled)."""
    from mmrerank.retrieval.late import LateInteractionIndex

    rows = []
    for factor in factors:
        start = time.perf_counter()
        index = LateInteractionIndex(data["docs"][0].shape[1], pool_factor=factor, device="cpu")
        index.add(data["docs"])
        build = time.perf_counter() - start
        start = time.perf_counter()
        run = index.search(data["queries"], 10)
        seconds = time.perf_counter() - start
        hit = (run.indices[:, 0] == data["source"]).float().mean().item()
        rows.append({"pool_factor": factor, "vectors": index.num_tokens, "build_s": build,
                     "qps": len(data["queries"]) / seconds, "success@1": hit, "run": run})
    base = rows[0]
    for row in rows:
        row["vectors_kept"] = row["vectors"] / base["vectors"]
        row["quality_kept"] = row["success@1"] / base["success@1"] if base["success@1"] else float("nan")
        pairs = zip(row["run"].indices.tolist(), base["run"].indices.tolist())
        overlap = [len(set(a) & set(b)) / 10 for a, b in pairs]
        row["top10_overlap"] = sum(overlap) / len(overlap)
    return rows


def candidate_rows(data: dict, token_ks: list[int], depth: int = 100) -> list[dict]:
    """Recall@depth of candidate generation against exact MaxSim's top `depth`, per `token_k`."""
    from mmrerank.retrieval.late import LateInteractionIndex

    index = LateInteractionIndex(data["docs"][0].shape[1], device="cpu")
    index.add(data["docs"])
    start = time.perf_counter()
    exact = index.search(data["queries"], depth)
    exact_s = time.perf_counter() - start
    index.search(data["queries"][:1], depth, mode="candidates", token_k=1)  # builds the token index once
    def success(run) -> float:
        return (run.indices[:, 0] == data["source"]).float().mean().item()

    rows = [{"mode": "exact", "qps": len(data["queries"]) / exact_s, "recall": 1.0, "success@1": success(exact)}]
    for k in token_ks:
        start = time.perf_counter()
        cand = index.search(data["queries"], depth, mode="candidates", token_k=k)
        seconds = time.perf_counter() - start
        recall = [len(set(a) & set(b)) / depth for a, b in zip(cand.indices.tolist(), exact.indices.tolist())]
        rows.append({"mode": f"candidates, token_k={k}", "qps": len(data["queries"]) / seconds,
                     "recall": sum(recall) / len(recall), "success@1": success(cand)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=256, help="most tokens per document (at least half of it)")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--naive-queries", type=int, default=8, help="the naive loop scores only this many queries")
    parser.add_argument("--colpali-python", default=None, help="a Python with colpali-engine installed")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_method(args.only, args.data)))
        return
    data = make_vectors(args.docs, args.tokens, args.queries, args.query_tokens, args.dim)
    n_tokens = sum(len(d) for d in data["docs"])
    store_mib = n_tokens * args.dim * 2 / 2**20
    print(f"{args.docs} documents, {n_tokens} tokens of dim {args.dim} (float16 store {store_mib:.1f} MiB), "
          f"{args.queries} queries x {args.query_tokens} tokens; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        full, small = f"{tmp}/full.pt", f"{tmp}/small.pt"
        torch.save(data, full)
        torch.save({**data, "queries": data["queries"][: args.naive_queries]}, small)
        results = {"index": in_fresh_process(sys.executable, "index", full)}
        if args.colpali_python:
            results["colpali-engine"] = in_fresh_process(args.colpali_python, "colpali", full)
        results["naive loop"] = in_fresh_process(sys.executable, "naive", small)
    ours = torch.tensor(results["index"]["scores"])
    print("| method (the index: building included) | queries/s | peak memory over the loaded vectors (MiB) | "
          "max abs score difference to the index |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        theirs = torch.tensor(r["scores"])
        diff = (theirs - ours[: len(theirs)]).abs().max().item()
        print(f"| {name} | {r['qps']:.1f} | {r['peak_extra_mib']:.0f} | {diff:.2e} |")
    print("\n| pool factor | vectors | vectors kept | build s | queries/s | Success@1 | quality kept | "
          "top-10 overlap |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in pooling_rows(data, [1, 2, 3]):
        print(f"| {r['pool_factor']} | {r['vectors']} | {r['vectors_kept']:.3f} | {r['build_s']:.1f} | "
              f"{r['qps']:.1f} | {r['success@1']:.4f} | {r['quality_kept']:.3f} | {r['top10_overlap']:.3f} |")
    print(f"\n| search | queries/s | recall@{args.depth} against exact MaxSim | Success@1 (source document) |")
    print("| --- | ---: | ---: | ---: |")
    for r in candidate_rows(data, [4, 64, 256, 1024], args.depth):
        print(f"| {r['mode']} | {r['qps']:.1f} | {r['recall']:.4f} | {r['success@1']:.4f} |")


if __name__ == "__main__":
    main()
