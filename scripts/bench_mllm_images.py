"""The MLLM yes/no reranker on the synthetic image-text benchmark, t2i: rerank the first stage's top `depth`
images per caption, alone and fused with the first stage (`final = MLLM score + alpha * first-stage cosine`,
the one fusion rule, `rerankers.fusion.Fused`), alpha chosen on val (Success@1), reported on test. Prints
Success@1/5 of each row.

    OMP_NUM_THREADS=1 python scripts/bench_mllm_images.py --checkpoint checkpoints/mllm/synthetic-images/last.ckpt

`--checkpoint` is a Lightning checkpoint of `MLLMRerankerModule` or a saved VLM folder (scored by log P(True)).

Relevance is exact (the scene graphs), as in the benchmark's qrels; `--captions` subsamples the queries (seeded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import Run
from mmrerank.datasets.synthetic import load_synthetic
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.mllm import MLLMReranker
from mmrerank.rerankers.mllm.benchmark import ResizedImages
from mmrerank.rerankers.mllm.module import load_reranker_checkpoint
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.index import retrieve

ALPHAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def split_task(encoder: CLIPEncoder, split: str, depth: int, captions: int, seed: int) -> tuple[RetrievalTask, Run]:
    """The split's t2i task over `captions` sampled captions (seeded), and the first stage's top-`depth` run."""
    data = load_synthetic(split, progress=False)
    rows = torch.randperm(len(data.captions), generator=torch.Generator().manual_seed(seed))[:captions].sort().values
    full = data.task("t2i")
    task = RetrievalTask(full.name, data.captions.subset(rows.tolist()), data.images, full.qrels)
    image_emb = encoder.encode(data.images, progress=False)
    text_emb = encoder.encode(task.queries, progress=False)
    return task, retrieve(text_emb, image_emb, task.queries.ids, data.images.ids, depth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/mllm/synthetic-images/last.ckpt")
    parser.add_argument("--first-stage", default="mmrerank-tiny-resnet")
    parser.add_argument("--first-stage-checkpoint", default=None,
                        help="a saved first stage (default: the default one, trained into the cache if missing)")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--val-captions", type=int, default=500)
    parser.add_argument("--test-captions", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    encoder = CLIPEncoder.from_pretrained(args.first_stage_checkpoint, args.first_stage) \
        if args.first_stage_checkpoint else FirstStage(args.first_stage).build(progress=False)
    if Path(args.checkpoint).is_dir():  # a saved VLM folder, e.g. the pretrained one before reranker training
        mllm = MLLMReranker(args.checkpoint, device="cpu")
    else:
        mllm = load_reranker_checkpoint(args.checkpoint)
    mllm.batch_size = args.batch_size
    reranker = Memoized(ResizedImages(mllm, args.image_size))  # fused rows reuse its scores
    measures = ["Success@1", "Success@5"]
    results = {}
    for split, n in (("val", args.val_captions), ("test", args.test_captions)):
        start = time.perf_counter()
        task, run = split_task(encoder, split, args.depth, n, seed=0)
        reranked = reranker.rerank(run, task, args.depth, args.batch_size, progress=False)
        print(f"{split}: {len(run)} captions x {args.depth} images scored in {time.perf_counter() - start:.0f} s")

        def fused(alpha: float, task=task, run=run) -> Run:
            return Fused(reranker, alpha).rerank(run, task, args.depth, args.batch_size, progress=False)

        results[split] = (task, run, reranked, fused)
    task, _, _, fused = results["val"]
    val = {a: task.measure(fused(a), ["Success@1"])["Success@1"] for a in ALPHAS}
    best = max(ALPHAS, key=val.get)
    print(f"alpha chosen on val: {best:g} (val Success@1 " + ", ".join(f"{a:g}: {v:.4f}" for a, v in val.items()) + ")")
    for split, (task, run, reranked, fused) in results.items():
        systems = {"first stage": run, "MLLM alone": reranked, f"MLLM + {best:g} x first stage": fused(best)}
        for name, system in systems.items():
            scores = task.measure(system, measures)
            print(f"{split} | {name} | " + " | ".join(f"{m} {scores[m]:.4f}" for m in measures))


if __name__ == "__main__":
    main()
