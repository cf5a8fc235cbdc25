"""The MLLM yes/no reranker on the synthetic image-text benchmark, t2i: rerank the first stage's top `depth`
images per caption, alone and fused with the first stage (`final = MLLM score + alpha * first-stage cosine`,
EDJE's fusion), alpha chosen on val (Success@1), reported on test. Prints Success@1/5 of each row.

    OMP_NUM_THREADS=1 python scripts/bench_mllm_images.py --checkpoint checkpoints/mllm/synthetic-images/last.ckpt

`--checkpoint` is a Lightning checkpoint of `MLLMRerankerModule` or a saved VLM folder (scored by log P(True)).

Relevance is exact (the scene graphs), as in the benchmark's qrels; `--captions` subsamples the queries (seeded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from mmrerank.datasets.synthetic import load_synthetic
from mmrerank.evaluation import retrieve
from mmrerank.rerankers.mllm import MLLMReranker
from mmrerank.rerankers.mllm.module import MLLMRerankerModule
from mmrerank.retrieval.clip import CLIPEncoder

ALPHAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def candidates(encoder: CLIPEncoder, split: str, depth: int, captions: int, seed: int):
    """The split, the sampled caption rows `[Q]`, and the first stage's top `depth`: rows and cosines `[Q, depth]`."""
    data = load_synthetic(split, progress=False)
    rows = torch.randperm(len(data.captions), generator=torch.Generator().manual_seed(seed))[:captions].sort().values
    image_emb = encoder.encode(data.images, progress=False)
    text_emb = encoder.encode(data.captions.subset(rows.tolist()), progress=False)
    run = retrieve(text_emb, image_emb, [str(r) for r in rows.tolist()], data.images.ids, depth).sorted()
    return data, rows, run.indices, run.scores


def mllm_scores(reranker, data, rows: torch.Tensor, top: torch.Tensor, image_size: int) -> torch.Tensor:
    """`[Q, depth]` MLLM scores of each caption with each of its candidate images (resized as in training)."""
    images = {}
    out = torch.empty(top.shape)
    for q, row in enumerate(rows.tolist()):
        cands = []
        for i in top[q].tolist():
            if i not in images:
                images[i] = data.images[i].convert("RGB").resize((image_size, image_size), Image.BICUBIC)
            cands.append(images[i])
        out[q] = reranker.score([data.captions[row]] * len(cands), cands)
    return out


def success(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Success@k over the reranked depth: some relevant image among the top k by `scores` `[Q, depth]`."""
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return relevant.gather(1, order).any(dim=1).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/mllm/synthetic-images/last.ckpt")
    parser.add_argument("--first-stage", default="mmrerank-tiny-resnet")
    parser.add_argument("--first-stage-checkpoint",
                        default="checkpoints/first_stage/mmrerank-tiny-resnet-synthetic.safetensors")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--val-captions", type=int, default=500)
    parser.add_argument("--test-captions", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    encoder = CLIPEncoder(args.first_stage)
    encoder.load_weights(args.first_stage_checkpoint)
    if Path(args.checkpoint).is_dir():  # a saved VLM folder, e.g. the pretrained one before reranker training
        reranker = MLLMReranker(args.checkpoint, device="cpu")
    else:
        reranker = MLLMRerankerModule.load_from_checkpoint(args.checkpoint, map_location="cpu").reranker.eval()
    reranker.batch_size = args.batch_size
    results = {}
    for split, n in (("val", args.val_captions), ("test", args.test_captions)):
        start = time.perf_counter()
        data, rows, top, first = candidates(encoder, split, args.depth, n, seed=0)
        relevant = data.pair_relevance(rows[:, None].expand_as(top).flatten(), top.flatten()).reshape(top.shape)
        scores = mllm_scores(reranker, data, rows, top, args.image_size)
        results[split] = (relevant.bool(), scores, first)
        print(f"{split}: {len(rows)} captions x {args.depth} images scored in {time.perf_counter() - start:.0f} s")
    relevant, scores, first = results["val"]
    best = max(ALPHAS, key=lambda a: success(scores + a * first, relevant, 1))
    print(f"alpha chosen on val: {best:g} (val Success@1 " + ", ".join(
        f"{a:g}: {success(scores + a * first, relevant, 1):.4f}" for a in ALPHAS) + ")")
    for split, (relevant, scores, first) in results.items():
        systems = {"first stage": first, "MLLM alone": scores, f"MLLM + {best:g} x first stage": scores + best * first}
        for name, s in systems.items():
            print(f"{split} | {name} | Success@1 {success(s, relevant, 1):.4f} | "
                  f"Success@5 {success(s, relevant, 5):.4f}")


if __name__ == "__main__":
    main()
