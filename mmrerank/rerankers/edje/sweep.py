"""EDJE as the reranker of a scaling sweep: `trainer: mmrerank.rerankers.edje.sweep:train_point` in a sweep config.

Every grid point trains a fresh EDJE (`EDJEModule` on `EDJEDataModule`'s first-stage groups, the same code path as
`mmrerank fit --config configs/edje/synthetic.yaml`) whose joint encoder has the size's `dims`, with the point's
loss, and evaluates it at each of `point.eval_at` on one fixed reranking task: the eval split's captions against
their first-stage top-K images (t2i), the same candidates for every point. What every point shares is computed once:
the first stage's candidates per process, the frozen vision tower's patch tokens and the mined groups on disk (the
caches of `EDJEModule` and `EDJEDataModule`), so points dispatched as separate commands share them too.

Sizes' `dims`: `hidden` (width), `layers`, `heads`, optional `intermediate` (default 4 x hidden) and `lr`. The
recorded `params` are the joint encoder's non-embedding parameters (`non_embedding_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mmrerank.core.run import Run
from mmrerank.metrics import evaluate
from mmrerank.scaling.grid import EvalRecorder, GridPoint

MEASURES = ("nDCG@1", "nDCG@5", "nDCG@10", "AP", "RR", "R@1", "R@5", "R@10")


@dataclass(frozen=True)
class SweepArgs:
    """The sweep config's `trainer_args` for EDJE.

    Attributes:
        candidates: K, first-stage candidates per eval query (the fixed top-K every model reranks).
        batch_size: captions per step (each gives a t2i and an i2t group of 1 positive + `negatives`).
        negatives, hard: negatives per group and how many of them are first-stage hard negatives.
        eval_split: the split whose captions are the eval queries (`val` or `test`).
        eval_queries: evaluate on the first this many captions of that split (None: all).
        lr, warmup_steps: AdamW peak learning rate (a size's `dims.lr` overrides it) and warm-up.
        synthetic: `SyntheticConfig` arguments of the benchmark (default: the built-in one).
        first_stage: `FirstStage` arguments of the retriever that gives the candidates and hard negatives
            (its checkpoint is also the default frozen vision source's weights).
        module: further `EDJEModule` arguments shared by every size (vision source, m, text length, ...).
    """

    candidates: int = 16
    batch_size: int = 16
    negatives: int = 5
    hard: int = 3
    curriculum_steps: int = 0
    eval_split: str = "val"
    eval_queries: int | None = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    synthetic: dict[str, Any] = field(default_factory=dict)
    first_stage: dict[str, Any] = field(default_factory=dict)
    module: dict[str, Any] = field(default_factory=dict)

    def dataset(self, split: str):
        from mmrerank.datasets.sources import Synthetic
        from mmrerank.datasets.synthetic import SyntheticConfig

        return Synthetic(split, SyntheticConfig(**self.synthetic))

    def retriever(self):
        from mmrerank.datasets.synthetic import SyntheticConfig
        from mmrerank.retrieval.first_stage import FirstStage

        return FirstStage(**self.first_stage).trained_on(SyntheticConfig(**self.synthetic))

    @classmethod
    def from_point(cls, point: GridPoint) -> SweepArgs:
        known = {k: v for k, v in point.args.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(point.args) - set(known))
        if unknown:
            raise ValueError(f"unknown EDJE sweep trainer_args {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known)


def joint_config(dims: dict[str, Any]) -> dict[str, Any]:
    """`BertConfig` keyword arguments of a size: `{hidden, layers, heads[, intermediate]}`.

    Weights start with std `hidden ** -0.5` (BERT's 0.02 is sized for width 768 and stalls narrow encoders) and
    dropout is off (the runs are far shorter than an epoch).
    """
    missing = {"hidden", "layers", "heads"} - set(dims)
    if missing:
        raise ValueError(f"an EDJE sweep size needs dims hidden, layers and heads; missing {sorted(missing)}")
    hidden = int(dims["hidden"])
    return {"hidden_size": hidden, "num_hidden_layers": int(dims["layers"]),
            "num_attention_heads": int(dims["heads"]), "intermediate_size": int(dims.get("intermediate", 4 * hidden)),
            "initializer_range": round(hidden ** -0.5, 4), "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters of an `EDJE`'s joint encoder except its embedding tables (Kaplan et al.'s count): every transformer
    layer, the embedding LayerNorm, the pooler and the score head.

    The joint encoder is what a sweep scales. The image side in front of it (the compression adapter, whose width is
    the vision tower's) is the same at every size but for its output projection, so it is left out of the count;
    `image_side_params` gives it.
    """
    return sum(p.numel() for name, p in model.joint.named_parameters()
               if not any(f"embeddings.{e}." in name for e in EMBEDDINGS))


def image_side_params(model: torch.nn.Module) -> int:
    """Parameters of an `EDJE`'s adapter (or patch projection), the part a sweep does not scale."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("joint."))


@dataclass
class EvalTask:
    """The fixed reranking task every grid point is scored on.

    Attributes:
        captions: `[Q]` caption strings (the queries).
        candidates: `[Q, K]` long, image rows of the eval split, the first stage's top K in its order.
        qrels: t2i judgements over `query_ids` x `image_ids` (relevant images outside the top K count as missed).
        query_ids, image_ids: ids of the eval captions and of the split's images.
    """

    captions: list[str]
    candidates: Tensor
    qrels: Any
    query_ids: list[str]
    image_ids: list[str]


_TASKS: dict[str, EvalTask] = {}


def eval_task(args: SweepArgs) -> EvalTask:
    """The first stage's top-`args.candidates` images for the first `args.eval_queries` captions of the eval split
    (computed once per process and set of arguments)."""
    from mmrerank.retrieval.index import retrieve

    key = repr((args.eval_split, args.candidates, args.eval_queries, args.synthetic, args.first_stage))
    if key in _TASKS:
        return _TASKS[key]
    config = args.dataset(args.eval_split)
    data = config.load()
    candidates, queries = args.candidates, args.eval_queries
    if candidates > len(data.images):
        raise ValueError(f"candidates={candidates} exceeds the {len(data.images)} images of the "
                         f"{args.eval_split} split")
    encoder = args.retriever().build(progress=False)
    rows = list(range(len(data.captions) if queries is None else min(queries, len(data.captions))))
    captions = data.captions.subset(rows)
    with torch.no_grad():
        image_emb = encoder.encode(data.images, 256, False)
        text_emb = encoder.encode(captions, 256, False)
    run = retrieve(text_emb, image_emb, list(captions.ids), list(data.images.ids), candidates)
    # reindexed to the eval captions: the split's other captions are not queries here
    qrels = data.task("t2i").qrels.reindex(captions.ids, data.images.ids)
    _TASKS[key] = EvalTask([captions[i] for i in range(len(captions))], run.indices.cpu(), qrels,
                           list(captions.ids), list(data.images.ids))
    return _TASKS[key]


@torch.no_grad()
def rerank_scores(model, task: EvalTask, patches: Tensor, batch_queries: int = 64) -> Tensor:
    """EDJE logits of every (eval caption, candidate image) pair.

    Args:
        model: an `EDJE`.
        patches: `[N, P, D]` patch tokens of the eval split's images.

    Returns:
        `[Q, K]` float scores.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    unique, inverse = task.candidates.unique(return_inverse=True)
    tokens = torch.cat([model.compress(patches[chunk].to(device).float())
                        for chunk in unique.split(512)])  # [U, m, d]
    q, k = task.candidates.shape
    out = torch.empty(q, k)
    for start in range(0, q, batch_queries):
        stop = min(start + batch_queries, q)
        texts = [t for t in task.captions[start:stop] for _ in range(k)]
        rows = inverse[start:stop].reshape(-1)
        out[start:stop] = model.score(texts, tokens[rows]).float().cpu().view(-1, k)
    model.train(was_training)
    return out


def candidate_metrics(scores: Tensor, task: EvalTask) -> dict[str, float]:
    """Metrics of the top K reordered by `scores` `[Q, K]`, plus `CE@K` (contrastive entropy over the K)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    run = Run(torch.gather(task.candidates, 1, order), torch.gather(scores, 1, order), task.query_ids,
              task.image_ids)
    k = task.candidates.shape[1]
    return evaluate(run, task.qrels, [*MEASURES, f"CE@{k}"])


class EvaluateAt(L.Callback):
    """Evaluate at each examples-seen count of `point.eval_at` and hand the metrics to the sweep's recorder."""

    def __init__(self, point: GridPoint, on_eval: EvalRecorder, task: EvalTask, batch_size: int) -> None:
        self.point, self.on_eval, self.task, self.batch_size = point, on_eval, task, batch_size
        self.pending = list(point.eval_at)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        examples = trainer.global_step * self.batch_size
        while self.pending and self.pending[0] <= examples:
            self.pending.pop(0)
            patches = module.patches[trainer.datamodule.val_config.split]
            metrics = candidate_metrics(rerank_scores(module.model, self.task, patches), self.task)
            self.on_eval(examples=examples, steps=trainer.global_step, metrics=metrics,
                         params=non_embedding_params(module.model), final=not self.pending)


class SeedAfterCaches(L.Callback):
    """Re-seed once the caches are in place, so that a point's numbers depend on its seed and not on the cache.

    A cold cache builds things the warm one only reads (the synthetic splits, the first stage's encoder for the
    hard negatives, the patch tokens), and building them draws from the global generators. Seeding again after the
    datamodule's setup (before the model is built in the module's) and at the start of training (before the
    sampler's shuffle) puts every later draw on the same stream whichever caches were there.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        L.seed_everything(self.seed, verbose=False)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        L.seed_everything(self.seed, verbose=False)


def train_point(point: GridPoint, on_eval: EvalRecorder) -> None:
    """Train and evaluate one grid point (see the module docstring); the sweep runner's trainer."""
    from mmrerank.rerankers.edje.data import EDJEDataModule
    from mmrerank.rerankers.edje.module import EDJEModule

    args = SweepArgs.from_point(point)
    steps = math.ceil(point.budget / args.batch_size)
    task = eval_task(args)
    L.seed_everything(point.seed, verbose=False)
    retriever = args.retriever()
    data = EDJEDataModule(train=args.dataset("train"), val=args.dataset(args.eval_split), first_stage=retriever,
                          n=args.negatives, hard=args.hard, batch_size=args.batch_size, seed=point.seed,
                          curriculum_steps=args.curriculum_steps)
    settings = {"vision_checkpoint": retriever.checkpoint, **args.module, "joint": joint_config(point.size.dims),
                "loss": point.loss, "lr": float(point.size.dims.get("lr", args.lr)),
                "warmup_steps": args.warmup_steps, "export_dir": None}
    module = EDJEModule(**settings)  # its setup reads the patch tokens from the on-disk cache after the first point
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0,
                        callbacks=[SeedAfterCaches(point.seed), EvaluateAt(point, on_eval, task, args.batch_size)])
    trainer.fit(module, datamodule=data)
