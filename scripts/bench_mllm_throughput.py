"""Benchmark the MLLM reranker's scoring paths: pairs/s of the plain path and of the shared one (issue 28 item 1).

Two workloads with the tiny random Qwen2-VL (`build_tiny_vlm`), fp32 on CPU, MonoQwen2-VL's template:

- t2i: 50 captions x their top 16 of 100 images (800 pairs, each image in 8 of them), 112 x 112 images (the
  benchmark's `image_size`);
- pages: 20 questions x their top 10 of 40 page images of 448 x 448 to 672 x 672 pixels (200 pairs, each page in 5),
  read at up to 1,024 visual tokens (Qwen2-VL's usual cap; 256 to 576 tokens here) instead of the tiny model's 16.

Both paths score the same pairs at the same batch size in one `score` call, in one process (the shared path's image
cache emptied before each run, so every run encodes its images), timed alternately (`plain`, `shared`, then
again: the machine is shared, so each repeat gives a ratio and the median ratio is reported). Then the peak memory of
scoring pages of mixed sizes (448 to 896 pixels a side) at a fixed batch size, for the plain path and the shared one
under several `max_tokens_per_batch`: each run in its own child process, as the rise of its peak resident set size
(`ru_maxrss`) over the resident size just before scoring (torch's CPU allocator keeps no peak statistics). Run from
the repo root:

    OMP_NUM_THREADS=1 python scripts/bench_mllm_throughput.py                 # 5 repeats, batch size 16
    OMP_NUM_THREADS=1 python scripts/bench_mllm_throughput.py --repeats 3 --no-memory

It prints a Markdown section; its last line reads `speed-up A.AAx (t2i), B.BBx (pages); max |diff| D`.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import resource
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

# The tiny model's own processor caps images at 112 x 112 pixels (16 visual tokens); pages are read at Qwen2-VL's
# usual cap instead, 1,024 visual tokens (a 448 x 448 page: 256 tokens; 896 x 896: 1,024), as a real page reranker
# reads them.
PAGE_PROCESSOR = {"min_pixels": 56 * 56, "max_pixels": 1024 * 28 * 28}

WORDS = ("red blue green cat dog tower bridge chart table page invoice figure river car tree report revenue museum "
         "annual budget map street woman man child plays holds a the on in with").split()


def _texts(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(low, high)))) for _ in range(n)]


def _image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random image (a few colour blocks with noise), so it compresses like a photo or a page would."""
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(blocks).resize((width, height), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def workload(n_queries: int, depth: int, images: list[Image.Image], rng) -> tuple[list[str], list[Image.Image]]:
    """Each query's `depth` candidates, query after query (as `Reranker.rerank` sends them); every image is the
    candidate of `n_queries * depth / len(images)` queries."""
    queries = _texts(rng, n_queries, 4, 13)
    pairs = [(q, images[(i * depth + j) % len(images)]) for i, q in enumerate(queries) for j in range(depth)]
    return [q for q, _ in pairs], [c for _, c in pairs]


def time_paths(reranker: MLLMReranker, queries, candidates, repeats: int) -> dict:
    """Both paths alternately, `repeats` times after a warm-up each: median pairs/s, median ratio, max |diff|."""
    scores, seconds = {}, {"plain": [], "shared": []}
    for path in ("plain", "shared"):  # warm-up, and the scores compared
        reranker.scoring = path
        reranker.image_cache.clear()
        scores[path] = reranker.score(queries, candidates)
    for _ in range(repeats):
        for path in ("plain", "shared"):
            reranker.scoring = path
            reranker.image_cache.clear()  # every run encodes its images (none kept from the run before)
            start = time.perf_counter()
            reranker.score(queries, candidates)
            seconds[path].append(time.perf_counter() - start)
    ratios = [p / s for p, s in zip(seconds["plain"], seconds["shared"])]
    return {"pairs": len(queries), "plain": len(queries) / statistics.median(seconds["plain"]),
            "shared": len(queries) / statistics.median(seconds["shared"]), "ratio": statistics.median(ratios),
            "ratios": ratios, "diff": float((scores["plain"] - scores["shared"]).abs().max()),
            "spread": float(scores["plain"].std())}


def _memory_child(folder: str, scoring: str, budget: int | None, batch_size: int, seed: int, queue) -> None:
    """In a fresh process: score the mixed-size pages; report the peak RSS rise in MiB, and the largest
    language-model pass (rows x (cached + new) tokens) and vision pass (visual tokens) seen by forward hooks."""
    import psutil

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    sides = [448, 560, 672, 784, 896]
    pages = [_image(rng, int(rng.choice(sides)), int(rng.choice(sides))) for _ in range(24)]
    queries, candidates = workload(12, 8, pages, rng)
    reranker = MLLMReranker(folder, device="cpu", batch_size=batch_size, scoring=scoring,
                            max_tokens_per_batch=budget, processor_kwargs=PAGE_PROCESSOR)
    reranker.score(queries[:1], candidates[:1])
    reranker.image_cache.clear()
    backbone, _ = reranker._language_model_parts()
    largest = {"lm": 0, "vision": 0}

    def lm_pass(module, args, kwargs):
        embeds, cache = kwargs["inputs_embeds"], kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        largest["lm"] = max(largest["lm"], embeds.shape[0] * (embeds.shape[1] + cached))

    def vision_pass(module, args, kwargs):
        tokens = int(kwargs["grid_thw"].prod(-1).sum()) // backbone.visual.spatial_merge_size ** 2
        largest["vision"] = max(largest["vision"], tokens)

    backbone.language_model.register_forward_pre_hook(lm_pass, with_kwargs=True)
    backbone.visual.register_forward_pre_hook(vision_pass, with_kwargs=True)
    before = psutil.Process().memory_info().rss
    reranker.score(queries, candidates)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    queue.put(((peak - before) / 2 ** 20, largest["lm"], largest["vision"]))


def peak_memory(folder: str, scoring: str, budget: int | None, batch_size: int, seed: int) -> tuple:
    """(peak RSS rise in MiB, largest language-model pass, largest vision pass) of one child process's run."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(folder, scoring, budget, batch_size, seed, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 8192],
                        help="max_tokens_per_batch values of the memory runs (besides no bound)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build_tiny_vlm(os.path.join(tmp, "model"), seed=args.seed))
        reranker = MLLMReranker(folder, device="cpu", batch_size=args.batch_size)
        images = [_image(rng, 112, 112) for _ in range(100)]
        t2i = time_paths(reranker, *workload(50, 16, images, rng), args.repeats)
        sides = [448, 560, 672]
        pages = [_image(rng, int(rng.choice(sides)), int(rng.choice(sides))) for _ in range(40)]
        reranker = MLLMReranker(folder, device="cpu", batch_size=args.batch_size, processor_kwargs=PAGE_PROCESSOR)
        page = time_paths(reranker, *workload(20, 10, pages, rng), args.repeats)
        memory = []
        if not args.no_memory:
            for scoring, budget in [("plain", None), ("shared", None)] + [("shared", b) for b in args.budgets]:
                memory.append((scoring, budget, *peak_memory(folder, scoring, budget, args.batch_size, args.seed)))
    load_after = os.getloadavg()

    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/bench_mllm_throughput.py", *sys.argv[1:]])
    print(f"### MLLM reranker: plain vs shared scoring, tiny Qwen2-VL ({datetime.date.today().isoformat()})\n")
    print(f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} {command}`")
    print(f"- machine: {os.cpu_count()} CPU cores ({cpu_model()}), {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}, transformers {transformers.__version__}; load average {load_before[0]:.2f} "
          f"before, {load_after[0]:.2f} after (other jobs share the cores)")
    print(f"- model: random Qwen2-VL from `build_tiny_vlm` (LLM hidden 64, 2 layers; vision depth 2), fp32, "
          f"MonoQwen2-VL template, batch size {args.batch_size} for both paths; both timed alternately, "
          f"{args.repeats} repeats after a warm-up, medians\n")
    print("| workload | pairs | plain pairs/s | shared pairs/s | speed-up (median of ratios) | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in (("t2i: 50 captions x top-16 of 100 images, 112 px", t2i),
                      ("pages: 20 questions x top-10 of 40 pages, 448-672 px (256-576 visual tokens)", page)):
        print(f"| {name} | {row['pairs']} | {row['plain']:.1f} | {row['shared']:.1f} | {row['ratio']:.2f}x "
              f"({', '.join(f'{r:.2f}' for r in row['ratios'])}) | {row['diff']:.2e} |")
    if memory:
        print("\nPeak memory scoring 96 pairs (12 questions x top-8 of 24 pages of 448 to 896 px a side), batch size "
              f"{args.batch_size}: rise of the child process's peak RSS (`ru_maxrss`) over its RSS before scoring, "
              "and the largest pass (language model: rows x (cached + new) tokens; vision tower: visual tokens)\n")
        print("| path | max_tokens_per_batch | peak RSS rise (MiB) | largest LM pass (tokens) | "
              "largest vision pass (tokens) |")
        print("|---|---:|---:|---:|---:|")
        for scoring, budget, mib, lm, vision in memory:
            print(f"| {scoring} | {budget if budget else 'none'} | {mib:.0f} | {lm} | {vision} |")
    diff = max(t2i["diff"], page["diff"])
    print(f"\nspeed-up {t2i['ratio']:.2f}x (t2i), {page['ratio']:.2f}x (pages); max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
