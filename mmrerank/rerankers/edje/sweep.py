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

from mmrerank.core.items import RetrievalTask
from mmrerank.core.progress import SeedAfterCaches
from mmrerank.core.run import Run
from mmrerank.scaling.grid import EvalRecorder, GridPoint

MEASURES = ("nDCG@1", "nDCG@5", "nDCG@10", "AP", "RR", "R@1", "R@5", "R@10")


@dataclass(frozen=True)
class SweepArgs:
    """The sweep config's `trainer_args` for EDJE.

    Attributes:
        candidates: K, first-stage candidates per eval query (the fixed top-K every model reranks).
        batch_size: captions per step (each gives a t2i and an i2t group of 1 positive + `negatives`).
        negatives, hard: negatives per group and how many of them are first-stage hard negatives.
        curriculum_steps: steps of random negatives only before the hard ones start (`EDJEDataModule`).
        twins: put each caption's near-duplicate twin image (and its captions) in its groups (`EDJEDataModule`).
        alpha: the recorded `metrics` rank by `logit + alpha * first-stage score` (the benchmark's fused row);
            0: by the logit alone. The logit alone and the first stage on the same candidates are recorded as the
            evaluation's `references` either way.
        eval_split: the split whose captions are the eval queries (`val` or `test`).
        eval_queries: evaluate on the first this many captions of that split (None: all).
        lr, warmup_steps: AdamW peak learning rate (a size's `dims.lr` overrides it) and warm-up.
        precision: Lightning's trainer precision for training (`bf16-mixed` about halves a CPU step); the
            evaluations score in float32.
        synthetic: `SyntheticConfig` arguments of the benchmark (default: the built-in one).
        first_stage: `FirstStage` arguments of the retriever that gives the candidates and hard negatives
            (its checkpoint is also the default frozen vision source's weights).
        module: `EDJEModule` settings shared by every size: `{config: {...}, training: {...}}` (vision source, m,
            text length, ...; see `point_module_args`).
    """

    candidates: int = 16
    batch_size: int = 16
    negatives: int = 5
    hard: int = 3
    curriculum_steps: int = 0
    twins: bool = False
    alpha: float = 0.0
    eval_split: str = "val"
    eval_queries: int | None = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    precision: str = "32-true"
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
    layer, the embedding LayerNorm, the pooler and the score head. A `first_stage:` text side (the frozen first-stage
    text tower and its projection into the joint width) stands where the word embeddings would and is not counted
    either.

    The joint encoder is what a sweep scales. The image side in front of it (the compression adapter, whose width is
    the vision tower's) is the same at every size but for its output projection, so it is left out of the count;
    `image_side_params` gives it.
    """
    return sum(p.numel() for name, p in model.joint.named_parameters()
               if not name.startswith("text.") and not any(f"embeddings.{e}." in name for e in EMBEDDINGS))


def image_side_params(model: torch.nn.Module) -> int:
    """Parameters of an `EDJE`'s adapter (or patch projection), the part a sweep does not scale."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("joint."))


@dataclass
class EvalTask:
    """The fixed reranking task every grid point is scored on.

    Attributes:
        task: the eval captions' t2i task over the split's images (relevant images outside the top K count as
            missed).
        run: the first stage's top K images per eval caption, `[Q, K]`.
    """

    task: RetrievalTask
    run: Run


_TASKS: dict[str, EvalTask] = {}


def eval_task(args: SweepArgs) -> EvalTask:
    """The first stage's top-`args.candidates` images for the first `args.eval_queries` captions of the eval split
    (computed once per process and set of arguments)."""
    from mmrerank.retrieval.index import retrieve

    key = repr((args.eval_split, args.candidates, args.eval_queries, args.synthetic, args.first_stage))
    if key in _TASKS:
        return _TASKS[key]
    data = args.dataset(args.eval_split).load()
    candidates, queries = args.candidates, args.eval_queries
    if candidates > len(data.images):
        raise ValueError(f"candidates={candidates} exceeds the {len(data.images)} images of the "
                         f"{args.eval_split} split")
    encoder = args.retriever().build(progress=False)
    rows = list(range(len(data.captions) if queries is None else min(queries, len(data.captions))))
    full = data.task("t2i")
    task = RetrievalTask(full.name, data.captions.subset(rows), data.images, full.qrels)  # the eval captions only
    with torch.no_grad():
        image_emb = encoder.encode(data.images, 256, False)
        text_emb = encoder.encode(task.queries, 256, False)
    run = retrieve(text_emb, image_emb, list(task.queries.ids), list(data.images.ids), candidates).to("cpu")
    _TASKS[key] = EvalTask(task, run)
    return _TASKS[key]


class _TokensById:
    """Compressed image tokens `[U, m, d]` looked up by image id (what `EDJEReranker` reads from a token store)."""

    def __init__(self, ids: list[str], tokens: Tensor) -> None:
        self.tokens, self.shape = tokens, tuple(tokens.shape)
        self._row = {image_id: i for i, image_id in enumerate(ids)}

    def __getitem__(self, ids: list[str]) -> Tensor:
        return self.tokens[[self._row[i] for i in ids]]


@torch.no_grad()
def evaluate_point(model, task: EvalTask, patches, alpha: float = 0.0,
                   batch_queries: int = 64) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The evaluation loop's steps on the fixed task: EDJE scores the first stage's top K (`Reranker.head_scores`)
    and the task scores the runs (`measure`: the sweep's measures plus `CE@K`, contrastive entropy over the K).

    Args:
        model: an `EDJE` (in training; put back in its mode afterwards).
        patches: `[N, P, D]` patch tokens of the eval split's images (indexable by rows).
        alpha: the returned metrics rank by `logit + alpha * first-stage score` (0: the logit alone).

    Returns:
        The reranker's metrics, and the references on the same candidates: `{"first stage": ..., "alone": ...}`
        (the EDJE logit alone).
    """
    from mmrerank.rerankers.edje.reranker import EDJEReranker

    was_training = model.training
    device = next(model.parameters()).device
    unique = task.run.indices.unique()  # each candidate image compressed once
    tokens = torch.cat([model.eval().compress(patches[chunk].to(device).float()) for chunk in unique.split(512)])
    store = _TokensById([task.task.corpus.ids[int(i)] for i in unique], tokens)
    run = task.run.sorted()
    k = run.depth
    # float32 whatever the training's precision, as every recorded sweep was scored
    logits = EDJEReranker(model, store, device).head_scores(run, task.task, run.indices.cpu(), batch_queries * k,
                                                            progress=False)
    model.train(was_training)
    measures = [*MEASURES, f"CE@{k}"]

    def measured(scores: Tensor) -> dict[str, float]:
        return task.task.measure(Run(run.indices, scores, run.query_ids, run.doc_ids).sorted(), measures)

    first_stage = run.scores.float().cpu()
    references = {"first stage": measured(first_stage), "alone": measured(logits)}
    metrics = measured(logits + alpha * first_stage) if alpha else references["alone"]
    return metrics, references


class EvaluateAt(L.Callback):
    """Evaluate at each examples-seen count of `point.eval_at` and hand the metrics to the sweep's recorder."""

    def __init__(self, point: GridPoint, on_eval: EvalRecorder, task: EvalTask, batch_size: int,
                 alpha: float = 0.0) -> None:
        self.point, self.on_eval, self.task, self.batch_size, self.alpha = point, on_eval, task, batch_size, alpha
        self.pending = list(point.eval_at)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        examples = trainer.global_step * self.batch_size
        while self.pending and self.pending[0] <= examples:
            self.pending.pop(0)
            patches = module.patches[trainer.datamodule.val_config.split]
            metrics, references = evaluate_point(module.model, self.task, patches, self.alpha)
            self.on_eval(examples=examples, steps=trainer.global_step, metrics=metrics, references=references,
                         params=non_embedding_params(module.model), final=not self.pending)


def point_module_args(point: GridPoint, args: SweepArgs, weights: str) -> tuple:
    """`EDJEModule`'s (config, loss_functions, training) for a grid point: the sweep's shared `module` settings
    (`{config: {...}, training: {...}, loss_functions: [...]}`; 0.1's flat keys migrate with a FutureWarning), the
    size's joint encoder and lr, the point's ranking loss (the extra losses kept), nothing exported. `weights`: the
    first stage's folder, which the frozen vision and text sides read unless the settings name others."""
    from mmrerank.rerankers.edje.model import EDJEConfig
    from mmrerank.rerankers.edje.module import ITM_LOSSES, EDJETraining, migrate_flat_args

    shared = migrate_flat_args(dict(args.module), "the sweep's trainer_args.module")
    config = {"vision_checkpoint": weights, **shared.get("config", {})}
    if str(config.get("text", "words")).startswith("first_stage:"):
        config.setdefault("text_checkpoint", weights)
    config["joint"] = joint_config(point.size.dims)
    extra = [(n, w) for n, w in shared.get("loss_functions", []) if n not in ITM_LOSSES]
    training = {**shared.get("training", {}), "lr": float(point.size.dims.get("lr", args.lr)),
                "warmup_steps": args.warmup_steps, "export_dir": None}
    return EDJEConfig(**config), [(point.loss, 1.0), *extra], EDJETraining(**training)


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
                          curriculum_steps=args.curriculum_steps, twins=args.twins)
    module = EDJEModule(*point_module_args(point, args, str(retriever.folder())))
    # its setup reads the patch tokens from the on-disk cache after the first point
    evaluate = EvaluateAt(point, on_eval, task, args.batch_size, args.alpha)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, precision=args.precision, deterministic=True,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[SeedAfterCaches(point.seed), evaluate])
    trainer.fit(module, datamodule=data)
