"""EDJE training probes: which negatives and losses teach the joint encoder attribute binding (synthetic benchmark).

Trains the library's `EDJE` model (compression adapter + joint encoder, the shapes of configs/edje/synthetic.yaml) in a
plain loop over cached patch tokens, without Lightning, so that a probe of 1,000 steps takes minutes on a CPU. Every
`--eval-every` steps it reports on the val split, over the first stage's top 16, Success@1 of EDJE alone and of
`logit + alpha x first-stage cosine` for a few alphas. What a probe can vary:

- `--twin`: every group also holds the caption's near-duplicate, the synthetic benchmark's minimal pair (t2i: the twin
  image, rows 2k and 2k + 1 are twins; i2t: one of the twin's captions), unless it satisfies the caption;
- `--negatives`, `--hard`, `--curriculum`: group size, how many first-stage hard negatives (the rest random), and
  how many first steps draw random negatives only (as `EDJEDataModule`);
- `--alpha`: residual training: the loss sees `logit + alpha x first-stage cosine`, the score it will be used with;
- `--mlm`: weight of masked-language modelling on the positives (50 % of word pieces, as `EDJEModule`);
- `--feature-index`, `--layers`, `--subset` (train on the first N captions only: can it memorise?).

    python scripts/probe_edje_training.py --twin --steps 1000

Results: BENCHMARKS.md, "EDJE reranking quality on the synthetic benchmark".
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmrerank.datasets import Synthetic
from mmrerank.rerankers.edje.data import EDJEDataModule
from mmrerank.rerankers.edje.joint import build_wordpiece_tokenizer, tokenize
from mmrerank.rerankers.edje.model import EDJE, EDJEConfig
from mmrerank.rerankers.edje.module import EDJEModule
from mmrerank.retrieval.first_stage import FirstStage

ALPHAS = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="captions per step (each gives a t2i and an i2t group)")
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--hard", type=int, default=3)
    p.add_argument("--pool", type=int, default=16)
    p.add_argument("--curriculum", type=int, default=300)
    p.add_argument("--twin", action="store_true")
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--mlm", type=float, default=0.0)
    p.add_argument("--feature-index", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--subset", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-captions", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--headroom", action="store_true", help="only print the first stage's t2i headroom and exit")
    return p.parse_args()


def headroom() -> None:
    """How much a reranker of the top 2 could gain: the first stage's t2i Success@1 and @2 on val and test, and the
    share of its misses whose top image is the caption's near-duplicate twin."""
    encoder = FirstStage().build(progress=False)
    for split in ("val", "test"):
        data = Synthetic(split).load()
        text, image = encoder.encode(data.captions, 256, False), encoder.encode(data.images, 256, False)
        top = (text @ image.T).topk(2, dim=1).indices  # [C, 2]
        rows = torch.arange(len(text))[:, None].expand_as(top)
        relevant = data.is_relevant(rows.reshape(-1), top.reshape(-1)).view(-1, 2)
        miss = ~relevant[:, 0]
        twin_first = (top[miss, 0] == (data.caption_image[miss] ^ 1)).float().mean().item()
        at1, at2 = relevant[:, 0].float().mean(), relevant.any(1).float().mean()
        print(f"{split}: t2i Success@1 {at1:.4f}, Success@2 {at2:.4f}, misses with the twin first {twin_first:.3f}")


class Probe:
    """The data (splits, hard negatives, patch tokens, first-stage embeddings, word pieces) and one EDJE model."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dm = EDJEDataModule(n=args.negatives, hard=args.hard, pool=args.pool)
        self.dm.setup("fit")
        self.train, self.val = self.dm.splits["train"], self.dm.splits["val"]
        # for its vision source and on-disk patch-token cache
        module = EDJEModule(EDJEConfig(feature_index=args.feature_index))
        source = module._vision_source()
        inputs = self.dm.edje_inputs()
        self.patches = {s: module._cached_patches(source, inputs.images[s], inputs.image_keys[s])[:]
                        for s in ("train", "val")}  # the whole split in memory: the probe's sets are small
        encoder = FirstStage().build(progress=False)
        splits = ("train", "val") if args.alpha else ("val",)
        self.emb = {s: (encoder.encode(self.dm.splits[s].captions, 256, False),
                        encoder.encode(self.dm.splits[s].images, 256, False)) for s in splits}
        tokenizer = build_wordpiece_tokenizer(self.dm.edje_inputs().texts, 1000)
        # split -> (word-piece ids, mask), each [C, T]
        self.words = {s: tokenize(tokenizer, self.dm.splits[s].captions.texts, 32) for s in ("train", "val")}
        joint = {"hidden_size": 128, "num_hidden_layers": args.layers, "num_attention_heads": 4,
                 "intermediate_size": 512, "initializer_range": 0.088, "hidden_dropout_prob": 0.0,
                 "attention_probs_dropout_prob": 0.0}
        _, p, d = self.patches["train"].shape
        config = EDJEConfig(vision=module.config.vision, patch_dim=d, num_patches=p, num_image_tokens=16,
                            adapter_heads=4, adapter_mlp_ratio=4, patch_positions=True, joint=joint, max_text_len=32)
        self.model = EDJE(config, tokenizer)
        self.model.set_patch_statistics(self.patches["train"][:4096])
        self.mlm_head = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, len(tokenizer)))
        self.first_caption: dict[int, int] = {}  # image row -> its first caption row (the twin's i2t negative)
        for c, i in enumerate(self.train.caption_image.tolist()):
            self.first_caption.setdefault(i, c)
        self.gen = torch.Generator().manual_seed(args.seed)

    def logits(self, split: str, captions: torch.Tensor, images: torch.Tensor, alpha: float) -> torch.Tensor:
        """`[P]` scores of (caption, image) row pairs: the joint encoder's logit + alpha x first-stage cosine."""
        ids, mask = (t[captions] for t in self.words[split])
        used = mask.sum(0) > 0
        unique, inverse = images.unique(return_inverse=True)
        tokens = self.model.compress(self.patches[split][unique].float())[inverse]
        out = self.model(ids[:, used], mask[:, used], tokens)
        if alpha:
            text, image = self.emb[split]
            out = out + alpha * (text[captions] * image[images]).sum(-1)
        return out

    def _negatives(self, mined: torch.Tensor, total: int, hard: int, twins: list[int]) -> list[int]:
        out = twins[: self.args.negatives]
        pool = mined[: self.args.pool]
        for row in pool[pool >= 0][torch.randperm(int((pool >= 0).sum()), generator=self.gen)].tolist()[:hard]:
            if row not in out and len(out) < self.args.negatives:
                out.append(row)
        while len(out) < self.args.negatives:
            out.append(int(torch.randint(total, (1,), generator=self.gen)))
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Caption rows `[G * k]`, image rows `[G * k]`, and `[G, k]` True on negatives that are in fact relevant; the
        B t2i groups come first, then the B i2t groups, each with its positive first."""
        a, warm = self.args, step < self.args.curriculum
        rows = torch.randint(a.subset or len(self.train.captions), (a.batch_size,), generator=self.gen).tolist()
        t2i, i2t = [], []
        for c in rows:
            image = int(self.train.caption_image[c])
            twin = image ^ 1
            images = self._negatives(self.dm.negatives["train"].t2i[c], len(self.train.images), 0 if warm else a.hard,
                                     [twin] if a.twin and not warm else [])
            captions = self._negatives(self.dm.negatives["train"].i2t[image], len(self.train.captions),
                                       0 if warm else a.hard, [self.first_caption[twin]] if a.twin and not warm else [])
            t2i += [(c, i) for i in [image, *images]]
            i2t += [(x, image) for x in [c, *captions]]
        captions, images = torch.tensor(t2i + i2t).T
        wrong = self.train.is_relevant(captions, images).view(-1, a.negatives + 1)
        wrong[:, 0] = False
        return captions, images, wrong

    def mlm_loss(self, captions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        ids, mask = (t[captions] for t in self.words["train"])
        chosen = (torch.rand(ids.shape, generator=self.gen) < 0.5) & mask.bool()
        masked = ids.masked_fill(chosen, self.model.tokenizer.mask_token_id)
        tokens = self.model.compress(self.patches["train"][images].float())
        hidden = self.model.joint.encode(masked, mask, tokens).last_hidden_state[:, 1:1 + ids.shape[1]]
        return F.cross_entropy(self.mlm_head(hidden[chosen]), ids[chosen])

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        """Val Success@1 over the first stage's top 16: EDJE alone, fused for each alpha, and the first stage."""
        self.model.eval()
        text, image = self.emb["val"]
        out = {}
        for direction in ("t2i", "i2t"):
            if direction == "t2i":
                queries = torch.arange(min(self.args.eval_captions, len(text)))
                top = (text[queries] @ image.T).topk(16, dim=1).indices
                captions, images = queries[:, None].expand_as(top), top
            else:
                queries = torch.arange(len(image))
                top = (image @ text.T).topk(16, dim=1).indices
                captions, images = top, queries[:, None].expand_as(top)
            captions, images = captions.reshape(-1), images.reshape(-1)
            logits = torch.cat([self.logits("val", captions[s:s + 1024], images[s:s + 1024], 0.0)
                                for s in range(0, len(captions), 1024)]).view(-1, 16)
            cosine = (text[captions] * image[images]).sum(-1).view(-1, 16)
            relevant = self.val.is_relevant(captions, images).view(-1, 16).float()
            out[direction] = {f"alpha {a:g}": success(relevant, logits + a * cosine) for a in ALPHAS}
            out[direction]["first stage"] = success(relevant, cosine)
        self.model.train()
        return out


def success(relevant: torch.Tensor, scores: torch.Tensor) -> float:
    """Success@1 of `[Q, k]` scores against `[Q, k]` 0/1 relevance."""
    return round(relevant.gather(1, scores.argmax(1, keepdim=True)).mean().item(), 4)


def main() -> None:
    args = parse()
    if args.headroom:
        return headroom()
    torch.manual_seed(args.seed)
    probe = Probe(args)
    params = list(probe.model.parameters()) + (list(probe.mlm_head.parameters()) if args.mlm else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (t + 1) / warmup if t < warmup else 0.5 * (
        1 + math.cos(math.pi * min(1.0, (t - warmup) / max(args.steps - warmup, 1)))))
    print(json.dumps(vars(args)), flush=True)
    start, correct = time.time(), []
    for step in range(1, args.steps + 1):
        captions, images, wrong = probe.batch(step - 1)
        scores = probe.logits("train", captions, images, args.alpha).view(wrong.shape).masked_fill(wrong, -1e4)
        loss = F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long))
        if args.mlm:
            positives = torch.arange(0, len(captions) // 2, args.negatives + 1)
            loss = loss + args.mlm * probe.mlm_loss(captions[positives], images[positives])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        correct.append((scores.argmax(1) == 0).float().mean().item())
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f}, group accuracy (last 100 steps) "
                  f"{sum(correct[-100:]) / 100:.3f}, {time.time() - start:.0f} s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            print(f"val Success@1 at step {step}: {json.dumps(probe.evaluate())}", flush=True)


if __name__ == "__main__":
    main()
