"""`MLLMRerankerModule`: fine-tunes an `MLLMReranker` (optionally through LoRA) on groups of one positive and
n negatives per query (Lightning).

Losses (`loss_functions=[(name, weight), ...]`, summed):

- `"sft"`: the MonoQwen2-VL recipe -- next-token cross-entropy on the answer, positive pair -> positive label,
  negative pair -> negative label, with the softmax restricted to the two label logits;
- `"contrastive"`: InfoNCE over each group, the positive label's logit (or the head's score) as the score;
- `"pairwise"`: RankNet over each group with the same score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrerank.core.deprecation import nest_renamed, warn_renamed
from mmrerank.datasets.mmdocir import load_mmdocir
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.losses import listwise_softmax, pairwise_ranknet, pointwise_bce
from mmrerank.rerankers.mllm.reranker import DEFAULT_PROMPT, MLLMReranker, PairOutput, import_peft
from mmrerank.rerankers.mllm.tiny import ensure_tiny_vlm
from mmrerank.rerankers.mllm.weights import load_lora

LOSS_NAMES = ("sft", "contrastive", "pairwise")
# Files that mark a folder as an earlier `save_pretrained` (a full model's config, or a LoRA adapter's).
_SAVE_MARKS = ("config.json", "adapter_config.json")
SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The learning-rate multiplier at optimizer step `step`: linear warm-up over `warmup` steps, then constant
    or a cosine decay that reaches 0 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def collate_groups(groups: Sequence[tuple[str, Sequence[Any]]]) -> dict[str, Any]:
    """Batch `B` groups `(query, [positive, negative, ...])`, each with the same number `n` of candidates.

    Returns:
        `{"queries": [B] str, "candidates": [B * n] candidates, row-major (group by group), "labels": [B, n]
        float with 1 in column 0 (the positive) and 0 elsewhere}`.
    """
    sizes = {len(cands) for _, cands in groups}
    if len(sizes) != 1:
        raise ValueError(f"every group needs the same number of candidates, got sizes {sorted(sizes)}")
    n = sizes.pop()
    if n < 1:
        raise ValueError("a group needs at least its positive")
    labels = torch.zeros(len(groups), n)
    labels[:, 0] = 1
    return {"queries": [q for q, _ in groups], "candidates": [c for _, cands in groups for c in cands],
            "labels": labels}


def sft_loss(label_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the answer token, restricted to the two label logits.

    Args:
        label_logits: `[N, 2]` logits of the (positive, negative) label tokens.
        labels: `[N]` relevance; > 0 means the answer should be the positive label (class 0).
    """
    target = (labels.reshape(-1) <= 0).long()  # positive pair -> class 0 ("True"), negative -> class 1 ("False")
    return F.cross_entropy(label_logits.float(), target)


@dataclass
class MLLMSettings:
    """What the trained `MLLMReranker` scores with (`prompt`, `labels`, `use_ocr`, `head`: as for `MLLMReranker`;
    `dtype`: the model's weights' dtype, use Lightning's `precision` for mixed precision)."""

    prompt: str = DEFAULT_PROMPT
    labels: Sequence[str] = ("True", "False")
    use_ocr: bool = False
    head: str | None = None
    dtype: str = "float32"


@dataclass
class MLLMTraining:
    """How `MLLMRerankerModule` trains.

    Attributes:
        lr, weight_decay: AdamW settings (no decay on biases and norms).
        schedule: `"constant"` or `"cosine"` (decay to 0 over the trainer's `max_steps`), after `warmup_steps` of
            linear warm-up from 0.
        temperature: divides the scores in the group losses.
        freeze_vision: without LoRA, keep the vision tower fixed.
        export_dir: where the trained reranker is saved at the end of `fit` (`save_pretrained`), if set.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    temperature: float = 1.0
    freeze_vision: bool = True
    export_dir: str | None = None


@dataclass
class LoraSettings:
    """LoRA fine-tuning: rank `r` (0 trains the full language model instead), `alpha`, `dropout`, `target_modules`
    (default: the language model's attention projections; the vision tower's are named `qkv`/`proj` and stay
    frozen); `adapter`: an existing LoRA adapter to keep training (loaded trainable), which takes precedence."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    adapter: str | None = None


@dataclass
class TinyVLM:
    """The tiny offline Qwen2-VL: with `build`, unless `model_name_or_path` is a folder holding a whole model, build
    it there first (`ensure_tiny_vlm`: a half-built folder is rebuilt), so configs run without a download.

    Attributes:
        hidden, layers: its language model's width and depth.
        vocab_pages, vocab: train its byte-level BPE tokenizer (vocabulary `vocab`) on these synthetic pages' OCR
            text and questions (the training documents), so that words are tokens as in a real model's vocabulary:
            shorter sequences, and about 5 points of R@1 (BENCHMARKS.md, run B).
    """

    build: bool = False
    hidden: int = 64
    layers: int = 2
    vocab_pages: PagesConfig | None = None
    vocab: int = 2000

    def __post_init__(self) -> None:
        if isinstance(self.vocab_pages, dict):  # from a checkpoint's plain-data hparams
            self.vocab_pages = PagesConfig(**self.vocab_pages)


# Shared defaults, never changed in place (not None: see `edje.module.DEFAULT_CONFIG`).
DEFAULT_SETTINGS, DEFAULT_TRAINING, DEFAULT_LORA, DEFAULT_TINY = MLLMSettings(), MLLMTraining(), LoraSettings(), \
    TinyVLM()
# mmrerank 0.1's flat `MLLMRerankerModule` arguments -> where each lives now (`loss` -> `loss_functions`)
LEGACY_PATHS = {**{k: f"reranker.{k}" for k in ("prompt", "labels", "use_ocr", "head", "dtype")},
                **{f.name: f"training.{f.name}" for f in fields(MLLMTraining)},
                "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                "lora_target_modules": "lora.target_modules", "adapter": "lora.adapter", "build_tiny": "tiny.build",
                "tiny_hidden": "tiny.hidden", "tiny_layers": "tiny.layers", "tiny_vocab_pages": "tiny.vocab_pages",
                "tiny_vocab": "tiny.vocab"}


def migrate_flat_args(flat: dict[str, Any], where: str = "MLLMRerankerModule") -> dict[str, Any]:
    """0.1's flat `MLLMRerankerModule` arguments -> `{reranker, training, lora, tiny: {...}, loss_functions}`,
    each old key with a FutureWarning naming its new place."""
    out = nest_renamed({k: v for k, v in flat.items() if k != "loss"}, LEGACY_PATHS, where)
    if "loss" in flat:
        warn_renamed("loss", f"loss_functions: [[{flat['loss']}, 1.0]]", where, stacklevel=3)
        out["loss_functions"] = [[flat["loss"], 1.0]]
    return out


class MLLMRerankerModule(L.LightningModule):
    """Trains an `MLLMReranker` on `collate_groups` batches.

    Args:
        model_name_or_path: the base model (a folder or hub name; see `tiny`).
        reranker: `MLLMSettings`, what the trained reranker scores with.
        loss_functions: `(loss, weight)` pairs, summed: `"sft"`, `"contrastive"`, `"pairwise"` (default
            `[(sft, 1)]`). With a head, `"sft"` adds a pointwise BCE on the head's score (the head has no other
            training signal), and the group losses rank with the head's score.
        training: `MLLMTraining` (optimiser, schedule, temperature, export folder).
        lora: `LoraSettings`.
        tiny: `TinyVLM`, the offline tiny model built at `model_name_or_path`.
        **legacy: mmrerank 0.1's flat arguments (`loss=`, `lora_r=`, `build_tiny=`, ...), mapped to the above with a
            `FutureWarning` each (`migrate_flat_args`); removed in 0.2.

    The reranker scores with what the first loss trains: `log P(positive label)` after SFT, the positive label's
    raw logit after the group losses (`MLLMReranker(score="logit")`; the negative label's logit gets no training).
    """

    migrate_flat_args = staticmethod(migrate_flat_args)  # what `mmrerank fit` applies to 0.1 configs and flags
    LEGACY_PATHS = LEGACY_PATHS

    def __init__(self, model_name_or_path: str, reranker: MLLMSettings = DEFAULT_SETTINGS,
                 loss_functions: Sequence[tuple[str, float]] | None = None,
                 training: MLLMTraining = DEFAULT_TRAINING, lora: LoraSettings = DEFAULT_LORA,
                 tiny: TinyVLM = DEFAULT_TINY, **legacy: Any) -> None:
        super().__init__()
        groups = {"reranker": reranker, "training": training, "lora": lora, "tiny": tiny}
        if legacy:
            moved = migrate_flat_args(legacy)
            loss_functions = moved.pop("loss_functions", loss_functions)
            for name, cls in GROUPS.items():
                if name in moved:
                    groups[name] = replace(_as(cls, groups[name]), **moved.pop(name))
            if moved:
                raise TypeError(f"MLLMRerankerModule got unexpected arguments {sorted(moved)}")
        self.settings, self.training_settings, self.lora, self.tiny = (_as(cls, groups[name])
                                                                       for name, cls in GROUPS.items())
        self.losses = _check_losses(loss_functions or [("sft", 1.0)])
        if self.training_settings.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.training_settings.schedule!r}")
        self.export_dir = self.training_settings.export_dir  # read by `mmrerank fit` (`fitting.saved_paths`)
        tiny = self.tiny
        if tiny.build:  # the offline default: a tiny random Qwen2-VL
            corpus = page_text(tiny.vocab_pages) if tiny.vocab_pages else ()
            ensure_tiny_vlm(model_name_or_path, hidden=tiny.hidden, layers=tiny.layers, corpus=corpus,
                            vocab_size=tiny.vocab)
        # plain data only, so a checkpoint loads with `weights_only=True` and rebuilds this module
        self.save_hyperparameters({"model_name_or_path": model_name_or_path,
                                   **{name: asdict(getattr(self, attr)) for name, attr in
                                      zip(GROUPS, ("settings", "training_settings", "lora", "tiny"))},
                                   "loss_functions": [list(x) for x in self.losses]})
        s, lora = self.settings, self.lora
        # Built on CPU; Lightning moves the module (and so the model) to the training device.
        self.reranker = MLLMReranker(model_name_or_path, prompt=s.prompt, labels=s.labels, use_ocr=s.use_ocr,
                                     head=s.head, score="logprob" if self.losses[0][0] == "sft" else "logit",
                                     device="cpu", dtype=s.dtype)
        if lora.adapter is not None or lora.r > 0:
            peft = import_peft()

            if lora.adapter is not None:
                self.reranker.model = load_lora(self.reranker.model, lora.adapter, merge=False, trainable=True)
            else:
                config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                         target_modules=list(lora.target_modules))
                self.reranker.model = peft.get_peft_model(self.reranker.model, config)
        elif self.training_settings.freeze_vision:
            self.reranker.model.model.visual.requires_grad_(False)
        # from_pretrained leaves the model in eval mode, and Lightning keeps the modes it finds (LoRA dropout).
        self.reranker.train()

    def group_scores(self, out: PairOutput, shape: torch.Size) -> Tensor:
        """The ranking score of each pair, `[B, n]`: the head's output or the positive label's logit."""
        scores = out.head if out.head is not None else out.label_logits[:, 0]
        return scores.reshape(shape) / self.training_settings.temperature

    def loss_from(self, out: PairOutput, labels: Tensor) -> Tensor:
        """The configured losses, weighted and summed, for one batch's forward output and its `[B, n]` labels."""
        return sum(weight * self.one_loss(name, out, labels) for name, weight in self.losses)

    def one_loss(self, name: str, out: PairOutput, labels: Tensor) -> Tensor:
        if name == "sft":
            loss = sft_loss(out.label_logits, labels)
            if out.head is not None:
                loss = loss + pointwise_bce(out.head, labels.reshape(-1))
            return loss
        scores = self.group_scores(out, labels.shape)
        if name == "contrastive":
            return listwise_softmax(scores, labels)
        return pairwise_ranknet(scores, labels)

    def _step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        labels = batch["labels"].to(self.device)
        n = labels.shape[1]
        queries = [q for q in batch["queries"] for _ in range(n)]  # one query per candidate, row-major like labels
        out = self.reranker.logits_for(queries, batch["candidates"])
        loss = self.loss_from(out, labels)
        # Reciprocal rank of the positive (column 0) within its group, by the same score the losses rank with;
        # ties count against the positive, so an untrained constant scorer does not look perfect.
        scores = self.group_scores(out, labels.shape).detach()
        rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1) + 1
        return loss, (1.0 / rank.float()).mean()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, mrr = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["queries"]))
        self.log("train/mrr", mrr, batch_size=len(batch["queries"]))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, mrr = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["queries"]), sync_dist=True)
        self.log("val/mrr", mrr, prog_bar=True, batch_size=len(batch["queries"]), sync_dist=True)

    def configure_optimizers(self):
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        t = self.training_settings
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=t.lr)
        if t.schedule == "constant" and t.warmup_steps == 0:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        factor = partial(lr_factor, warmup=t.warmup_steps, total=total, schedule=t.schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_end(self) -> None:
        """Save the trained reranker to `export_dir` (rank 0), the folder `MLLMRows(model=...)` reads."""
        if self.export_dir and self.trainer.is_global_zero:
            self.save_pretrained(self.export_dir)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Save the trained reranker as a folder `MLLMReranker.from_pretrained` loads (`MLLMReranker.save_pretrained`;
        the one name every saved model uses: `EDJE`, `CLIPEncoder`, `MLLMReranker`).

        Raises:
            FileExistsError: `folder` is neither empty nor an earlier save (no `config.json`, `adapter_config.json`).
        """
        folder = Path(folder)
        if folder.is_dir() and any(folder.iterdir()) and not any((folder / name).is_file() for name in _SAVE_MARKS):
            raise FileExistsError(f"{folder} is not empty and holds no saved reranker (none of {list(_SAVE_MARKS)}); "
                                  "refusing to replace it")
        return self.reranker.save_pretrained(folder)

    def save_reranker(self, folder: str | Path) -> Path:
        """Deprecated name of `save_pretrained` (removed in mmrerank 0.2)."""
        warn_renamed("MLLMRerankerModule.save_reranker", "MLLMRerankerModule.save_pretrained")
        return self.save_pretrained(folder)


GROUPS = {"reranker": MLLMSettings, "training": MLLMTraining, "lora": LoraSettings, "tiny": TinyVLM}


def _as(cls: type, value: Any) -> Any:
    """`value` as the dataclass `cls` (a dict from a checkpoint's hparams is read into one)."""
    return value if isinstance(value, cls) else cls(**(value or {}))


def _check_losses(pairs: Sequence) -> list[tuple[str, float]]:
    """`loss_functions` as `(name, weight)` tuples, each name checked."""
    losses = [(str(name), float(weight)) for name, weight in pairs]
    for name, _ in losses:
        if name not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {name!r}")
    if not losses:
        raise ValueError("loss_functions is empty")
    return losses


def page_text(config: PagesConfig) -> list[str]:
    """Every OCR text and question of the synthetic pages `config` renders."""
    folder = ensure_pages(config)
    data = load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet", load_images=False)
    return [*data.ocr_text, *data.questions.texts]


def load_reranker_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MLLMReranker:
    """The `MLLMReranker` of an `MLLMRerankerModule` Lightning checkpoint (what `mmrerank fit` writes), in eval mode.

    The checkpoint is unpickled with `weights_only=True`: tensors, containers, numbers and strings, no code. Its
    hyperparameters rebuild the module (they name the base model, which is loaded from its folder or the hub),
    then its weights are loaded into it.

    Args:
        path: the `.ckpt` file.
        map_location: where the tensors are loaded (the reranker stays there).

    Raises:
        pickle.UnpicklingError: the checkpoint holds objects other than plain data (the message names them).
        TypeError: the checkpoint rebuilds a module that is not an `MLLMRerankerModule`.
    """
    module = MLLMRerankerModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    if not isinstance(module, MLLMRerankerModule):
        raise TypeError(f"{path} holds a {type(module).__name__}, not an MLLMRerankerModule")
    return module.reranker.eval()
