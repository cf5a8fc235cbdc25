"""EDJE training: milliseconds per step of the default recipe, variants side by side in one process.

The model is the one `mmrerank benchmark` trains (configs/edje/synthetic.yaml with the benchmark's fit arguments:
the first stage's stride-16 stage, 16 uncompressed tokens of width 256 projected to the joint encoder's 128, the
frozen first-stage text tower, a 2-layer joint BERT of width 128), random weights; a step is `EDJEModule._losses`
(the module's own training loss) on a batch of the data module's shape (16 captions, groups of 1 + 5 both ways:
192 pairs of synthetic-benchmark captions), its backward and an AdamW step, under CPU autocast for the bf16 rows
(what Lightning's `bf16-mixed` does). Variants:

- `fp32 (today)`, `bf16 (today's default)`: sdpa attention, the text tower as before (each step, padded batch);
- `bf16 + eager`: the joint encoder's attention `eager` (`attn_implementation: auto` picks it on a CPU in bf16);
- `+ text cache`: the frozen tower's states from the cache, every caption met before (the cache's best case);
- `+ cache cold + 2 buckets`: the cache's worst case (every caption new: the tower in float32 fixed-shape blocks)
  and the pairs scored in 2 groups by caption length (`length_buckets: 2`);
- `new default`: what configs/edje/synthetic.yaml now trains with: auto attention, the cache (warm), 2 buckets;
- `fp32 + eager`: whether eager would also pay in float32 (`auto` keeps sdpa there).

Every variant has its own copy of the same initial model and optimiser; rounds alternate the variants over the same
fixed batches (the machine is shared: only ratios within a round mean much). Per variant: the median ms per step
over rounds (first round is warm-up); the speed-ups are medians of per-round ratios. Run from the repo root:

    OMP_NUM_THREADS=1 python scripts/bench_edje_step.py

The last line reads `speed-up A.AAx (default over today's default); fp32 B.BBx` so a script can check it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import shlex
import statistics
import sys
import time
import types

import numpy as np
import torch
import yaml
from common import cpu_model  # scripts/common.py (scripts/ is on sys.path)

from mmrerank.datasets.synthetic.scenes import caption_scene, sample_scene
from mmrerank.rerankers.edje.model import EDJEConfig
from mmrerank.rerankers.edje.module import EDJEModule, EDJETraining
from mmrerank.rerankers.edje.text import FirstStageText

CONFIG = "configs/edje/synthetic.yaml"
PATCHES, PATCH_DIM, IMAGES = 16, 256, 2000  # feature_index 3 of the tiny ResNet at 64 px: 4 x 4 tokens of width 256

# name -> (bf16 autocast, attention, text path, length buckets); text path: "legacy" = the tower per step as before,
# "cold" / "warm" = the cache, empty or holding every caption
TODAY, NEW, FP32 = "bf16 (today's default)", "bf16 + eager + cache + 2 buckets (new default)", "fp32 (today)"
VARIANTS = {FP32: (False, "sdpa", "legacy", 1), TODAY: (True, "sdpa", "legacy", 1),
            "bf16 + eager": (True, "eager", "legacy", 1), "bf16 + eager + text cache": (True, "eager", "warm", 1),
            "bf16 + eager + cache cold + 2 buckets": (True, "eager", "cold", 2), NEW: (True, "auto", "warm", 2),
            "fp32 + eager": (False, "eager", "legacy", 1)}


def legacy_text_forward(self: FirstStageText, ids, mask):
    """`FirstStageText.forward` before the cache: the frozen tower on the batch's unique captions, cut to the
    longest, in the ambient precision, every step."""
    unique, inverse = ids.unique(dim=0, return_inverse=True)
    t = ids.shape[1]
    with torch.no_grad():
        x = self.token_embedding(unique) + self.positional_embedding[:t]
        x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask[:t, :t]))
    return self.project(x)[inverse]


def build_module() -> EDJEModule:
    """`EDJEModule` with the default benchmark's model (random weights, no first stage trained)."""
    from mmrerank.rerankers.edje.joint import SPECIAL_TOKENS, build_wordpiece_tokenizer

    with open(CONFIG) as f:
        args = yaml.safe_load(f)["model"]["init_args"]["config"]
    module = EDJEModule(EDJEConfig(joint=args["joint"], text=args["text"], patch_positions=args["patch_positions"],
                                   num_image_tokens=None, feature_index=3),
                        training=EDJETraining(lr=0.002, warmup_steps=50))
    config = EDJEConfig(vision=args["vision"], patch_dim=PATCH_DIM, num_patches=PATCHES, num_image_tokens=None,
                        feature_index=3, patch_positions=True, joint=dict(args["joint"]), text=args["text"])
    module._build(config, build_wordpiece_tokenizer([], vocab_size=len(SPECIAL_TOKENS)))
    module.patches = {"train": torch.randn(IMAGES, PATCHES, PATCH_DIM).half()}
    return module.train()


def fixed_batches(count: int, captions_per_batch: int = 16, k: int = 6, seed: int = 0) -> list[dict]:
    """Batches shaped as `EDJEDataModule`'s: t2i groups (a caption x k images), then i2t (an image x k captions)."""
    rng, texts = np.random.default_rng(seed), []
    while len(texts) < 5000:
        texts += [t for t, _ in caption_scene(rng, sample_scene(rng), 5)]
    gen, out = torch.Generator().manual_seed(seed), []
    for _ in range(count):
        caps = torch.randint(len(texts), (captions_per_batch, k), generator=gen)
        t2i = [texts[int(c)] for c in caps[:, 0] for _ in range(k)]
        i2t = [texts[int(c)] for c in caps.reshape(-1)]
        images = torch.randint(IMAGES, (captions_per_batch, k), generator=gen)
        rows = torch.cat([images.reshape(-1), images[:, :1].expand(-1, k).reshape(-1)])
        out.append({"texts": t2i + i2t, "images": rows, "image_set": "train", "k": k,
                    "caption_emb": torch.zeros(captions_per_batch, 128)})
    return out


def make_variant(base: EDJEModule, bf16: bool, attention: str, text: str, buckets: int):
    """A copy of `base` set up as the variant says, its optimiser, and `step(batch) -> seconds`."""
    module = copy.deepcopy(base)
    module.model.joint.attn_implementation, module.model.joint.length_buckets = attention, buckets
    side = module.model.joint.text
    if text == "legacy":
        side.forward = types.MethodType(legacy_text_forward, side)
    side.cache_states = text == "warm"
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict) -> float:
        if text == "cold":
            side._cache.clear()
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = module._losses(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def make_scoring(base: EDJEModule, bf16: bool, attention: str):
    """Scoring, as `EDJEReranker` does it (eval, no grad, the text cache warm): `step(batch) -> seconds`."""
    model = copy.deepcopy(base.model).eval()
    model.joint.attn_implementation = attention
    tokens: dict[int, torch.Tensor] = {}  # batch -> its compressed image tokens

    def step(batch: dict) -> float:
        if id(batch) not in tokens:
            with torch.no_grad():
                tokens[id(batch)] = model.compress(base.patches["train"][batch["images"]].float())
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
            model.score(batch["texts"], tokens[id(batch)])
        return time.perf_counter() - start

    return step


SCORING = {"scoring fp32 sdpa": (False, "sdpa"), "scoring bf16 sdpa": (True, "sdpa"),
           "scoring bf16 eager (auto)": (True, "eager")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--batches", type=int, default=4, help="fixed batches per round")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of the variant names")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base, batches = build_module(), fixed_batches(args.batches)
    steps = {name: make_variant(base, *VARIANTS[name]) for name in args.variants}
    steps.update({name: make_scoring(base, *how) for name, how in SCORING.items()})
    ms: dict[str, list[float]] = {name: [] for name in steps}  # per round: median ms per step
    for r in range(args.rounds + 1):
        for name, step in steps.items():
            times = [step(b) for b in batches]
            if r:
                ms[name].append(1000 * statistics.median(times))
    median = {name: statistics.median(v) for name, v in ms.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(ms[a], ms[b]))

    lengths = [int(side_mask.sum()) for side_mask in [base.model.tokenize(b["texts"])[1] for b in batches]]
    widths = [base.model.tokenize(b["texts"])[0].shape for b in batches]
    real = sum(lengths) + sum(3 + PATCHES for w in widths for _ in range(w[0]))
    slots = sum(w[0] * (w[1] + 3 + PATCHES) for w in widths)
    command = " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                "python", *sys.argv])
    print(f"### EDJE training step time ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(f"- machine: {os.cpu_count()} CPU cores ({cpu_model()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {args.rounds} rounds x {args.batches} fixed batches of "
          f"{len(batches[0]['texts'])} pairs; joint-encoder positions that are padding: "
          f"{100 * (1 - real / slots):.1f} %\n")
    print(f"| variant | ms / step (median) | speed-up over {TODAY} | over {FP32} |")
    print("|---|---:|---:|---:|")
    for name in args.variants:
        over_today = f"{ratio(TODAY, name):.2f}x" if TODAY in ms else "-"
        over_fp32 = f"{ratio(FP32, name):.2f}x" if FP32 in ms else "-"
        print(f"| {name} | {median[name]:.1f} | {over_today} | {over_fp32} |")
    print("\nScoring the same pairs (forward only, `EDJEReranker`'s path):\n")
    print("| variant | ms / batch (median) | speed-up over scoring bf16 sdpa |")
    print("|---|---:|---:|")
    for name in SCORING:
        print(f"| {name} | {median[name]:.1f} | {ratio('scoring bf16 sdpa', name):.2f}x |")
    if {TODAY, NEW, FP32} <= set(ms):
        print(f"\nspeed-up {ratio(TODAY, NEW):.2f}x (default over today's default); fp32 {ratio(FP32, NEW):.2f}x")


if __name__ == "__main__":
    main()
