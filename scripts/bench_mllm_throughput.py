"""Benchmark MLLM-reranker scoring throughput (pairs/s) of the tiny random Qwen2-VL on CPU, at several batch sizes.

For each batch size, `MLLMReranker.score` scores the same `--pairs` (query, image) pairs: end to end (chat
template, processor, one forward pass per batch), and the forward pass alone on pre-encoded batches, so the
processor's share is visible. One warm-up pass, then the median of `--repeats` runs. Run from the repo root:

    python scripts/bench_mllm_throughput.py                     # batch 1 and 16, 64 pairs, 5 runs
    python scripts/bench_mllm_throughput.py --batch-sizes 1 4 16 --pairs 128

It prints a Markdown table (with the command, machine, torch/transformers versions and date).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import transformers
from common import cpu_model  # scripts/common.py (scripts/ is on sys.path)
from PIL import Image

from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm


def make_pairs(n: int, seed: int) -> tuple[list[str], list[Image.Image]]:
    """`n` queries of 2-12 words and random RGB images of 56-140 px sides (4-16 visual tokens after resizing)."""
    rng = np.random.default_rng(seed)
    words = "red blue green cat dog tower bridge chart table page invoice figure river car tree report".split()
    queries = [" ".join(rng.choice(words, size=rng.integers(2, 13))) for _ in range(n)]
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(56, 141)), int(rng.integers(56, 141)), 3),
                                           dtype=np.uint8)) for _ in range(n)]
    return queries, images


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread pools, allocator, first-call caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--pairs", type=int, default=64, help="pairs scored per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    queries, images = make_pairs(args.pairs, args.seed)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_vlm(folder, seed=args.seed)
        reranker = MLLMReranker(folder, device="cpu")
        for bs in args.batch_sizes:
            reranker.batch_size = bs
            total = median_seconds(lambda: reranker.score(queries, images), args.repeats)
            batches = [reranker.encode(queries[i:i + bs], images[i:i + bs]) for i in range(0, args.pairs, bs)]
            backbone, lm_head = reranker._language_model_parts()

            def forward_only(batches=batches, backbone=backbone, lm_head=lm_head):
                with torch.no_grad():
                    for inputs in batches:
                        lm_head(backbone(**inputs, use_cache=False).last_hidden_state[:, -1])

            forward = median_seconds(forward_only, args.repeats)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches) / args.pairs
            rows.append((bs, args.pairs / total, 1e3 * total / args.pairs, args.pairs / forward, tokens))
    load_after = os.getloadavg()

    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/bench_mllm_throughput.py", *sys.argv[1:]])
    print(f"### MLLM reranker scoring throughput, tiny Qwen2-VL ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(f"- machine: {os.cpu_count()} CPU cores ({cpu_model()}), {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; load average {load_before[0]:.2f} "
          f"before, {load_after[0]:.2f} after (other jobs share the cores)")
    print("- model: random Qwen2-VL from `build_tiny_vlm` (LLM hidden 64, 2 layers; vision depth 2), fp32; images "
          "resized to 56-112 px sides (4-16 visual tokens)")
    print(f"- timing: {args.pairs} (query, image) pairs per run, 1 warm-up, median of {args.repeats} runs; "
          "`score` = chat template + processor + forward; forward only = pre-encoded batches\n")
    print("| batch size | `score` pairs/s | `score` ms/pair | forward-only pairs/s | mean tokens/pair (unpadded) |")
    print("|---:|---:|---:|---:|---:|")
    for bs, pps, ms, fwd_pps, tokens in rows:
        print(f"| {bs} | {pps:.1f} | {ms:.2f} | {fwd_pps:.1f} | {tokens:.1f} |")


if __name__ == "__main__":
    main()
