"""`EDJEModule`: trains EDJE's adapter and joint encoder on groups of one positive and n hard negatives (Lightning).

Each batch holds, per caption, a t2i group (the caption against its image and n negative images) and an i2t group
(its image against the caption and n negative captions), negatives mined by the first stage
(`EDJEDataModule`). Losses (`loss_functions`: `(loss, weight)` pairs), summed with their weights:

- ITM in the chosen paradigm: `listwise` (softmax over 1 positive + n negatives; the paper's ITM cross-entropy
  generalised to n negatives), `pairwise` (RankNet) or `pointwise` (BCE per pair);
- `mlm`: masked-language modelling of the caption (50 % of its word pieces; image tokens never masked);
- `recovery`: 1 - cos between a projection of the text-only [CLS] state and the first stage's caption
  embedding;
- `distill`: BCE between the student's logit and sigmoid of an uncompressed teacher's logit (`training.teacher`: an
  exported `EDJE` folder with `num_image_tokens: null`, trained first with this same module).

The frozen vision source's patch tokens are computed once per image set in `setup` (the images come from the data
module's `edje_inputs()`, its only read of the data module) into an fp16 cache on disk (`patches.PatchTokens`), of
which each step reads only its batch's images: memory is bounded by the batch, not the image set.
`training.export_dir` receives the trained `EDJE` folder (what `mmrerank precompute` and the reranker load).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrerank.core.deprecation import nest_renamed, warn_renamed
from mmrerank.losses import ranking_loss
from mmrerank.optim import adamw_warmup_cosine
from mmrerank.rerankers.edje.joint import attention_for
from mmrerank.rerankers.edje.model import EDJE, EDJEConfig
from mmrerank.rerankers.edje.patches import PatchTokens, cached_patch_tokens, patch_statistics, scratch_patch_tokens

DEFAULT_JOINT = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}
ITM_LOSSES = ("listwise", "pairwise", "pointwise")
EXTRA_LOSSES = ("mlm", "recovery", "distill")


@dataclass
class EDJETraining:
    """How `EDJEModule` trains (what is not the model's shape, `EDJEConfig`).

    Attributes:
        tokenizer: a tokenizer folder / hub name; None builds a WordPiece vocabulary of `vocab_size` from the
            training captions (saved with the model).
        text_lr_scale: a `first_stage:` text tower's learning rate as a multiple of `lr`; 0 freezes it (and sets
            `EDJEConfig.text_trainable`).
        teacher: exported uncompressed EDJE folder for the `distill` loss.
        standardize_patches: standardise the patch tokens per channel with statistics of (up to 4,096) training
            images before the adapter; the statistics are saved with the model.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay.
        export_dir: where `on_fit_end` saves the trained model.
        attn_implementation: the joint encoder's attention (`JointEncoder`): `auto` (eager on a CPU under bf16,
            where it is about 2x faster per step; sdpa elsewhere), `eager`, `sdpa` or `flash_attention_2`.
        cache_text: keep a frozen `first_stage:` text tower's states per caption (`FirstStageText`), so the tower
            runs once per caption, not once per step it is in.
        length_buckets: the joint encoder scores a batch in this many groups of similar caption length, each cut to
            its longest caption (`JointEncoder`): less padding, the same scores.
    """

    tokenizer: str | None = None
    vocab_size: int = 1000
    text_lr_scale: float = 0.0
    teacher: str | None = None
    standardize_patches: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    export_dir: str | None = None
    attn_implementation: str = "auto"
    cache_text: bool = True
    length_buckets: int = 2


# Defaults of `EDJEModule`'s config objects: shared instances, never changed in place (`dataclasses.replace`). Not
# `None`: an optional dataclass makes jsonargparse read a nested `--model.init_args.config.x=null` as the string "None".
DEFAULT_CONFIG = EDJEConfig()
DEFAULT_TRAINING = EDJETraining()

# The flat `EDJEModule` arguments of mmrerank 0.1 -> where each lives now (a dotted path under the module's init
# args); the loss arguments (`loss`, `*_weight`) become `loss_functions` entries instead.
LEGACY_CONFIG_KEYS = ("vision", "vision_checkpoint", "vision_pretrained", "feature_index", "image_size",
                      "num_image_tokens", "adapter_heads", "adapter_mlp_ratio", "patch_positions", "joint",
                      "max_text_len", "text", "text_checkpoint", "text_pretrained")
LEGACY_PATHS = {**{k: f"config.{k}" for k in LEGACY_CONFIG_KEYS},
                **{f.name: f"training.{f.name}" for f in fields(EDJETraining)}}
LEGACY_LOSS_KEYS = {"loss": None, "mlm_weight": "mlm", "recovery_weight": "recovery", "distill_weight": "distill"}


def legacy_loss_functions(base: list | None, flat: dict[str, Any], where: str = "EDJEModule") -> list[list]:
    """`loss_functions` with the 0.1 loss arguments of `flat` (`loss`, `mlm_weight`, ...) applied to `base` (None:
    the default `[[listwise, 1.0]]`), each with a `FutureWarning` naming `loss_functions`."""
    out = [list(entry) for entry in (base or [["listwise", 1.0]])]
    for key, name in LEGACY_LOSS_KEYS.items():
        if key not in flat:
            continue
        warn_renamed(key, f"loss_functions: [[{name or flat[key]}, <weight>]]", where, stacklevel=4)
        if name is None:  # the ITM paradigm: replaces the ranking loss, weight kept
            out = [[flat[key], w] if isinstance(n, str) and n in ITM_LOSSES else [n, w] for n, w in out]
            continue
        out = [[n, w] for n, w in out if n != name]
        if float(flat[key]) > 0:
            out.append([name, float(flat[key])])
    return out


def migrate_flat_args(flat: dict[str, Any], where: str = "EDJEModule") -> dict[str, Any]:
    """0.1's flat `EDJEModule` arguments -> `{config: {...}, training: {...}, loss_functions: [...]}` (new keys
    already there are kept; each old key warns once, naming its new place)."""
    out = nest_renamed({k: v for k, v in flat.items() if k not in LEGACY_LOSS_KEYS}, LEGACY_PATHS, where)
    if any(k in flat for k in LEGACY_LOSS_KEYS):
        out["loss_functions"] = legacy_loss_functions(out.get("loss_functions"), flat, where)
    return out


def default_first_stage(spec: str, checkpoint: str | None, pretrained: str | None) -> str | None:
    """The weights a `first_stage:<model>` side reads: `checkpoint`, or else (no pretrained tag either) the default
    first stage's folder, trained into the cache first when missing."""
    if checkpoint or pretrained or not spec.startswith("first_stage:"):
        return checkpoint
    from mmrerank.retrieval.first_stage import FirstStage

    stage = FirstStage(spec.split(":", 1)[1])
    stage.build(progress=False)
    return str(stage.folder())


def loss_name(loss: Any) -> str:
    """How a `loss_functions` entry is recorded: its name, or an object's class name."""
    return loss if isinstance(loss, str) else type(loss).__name__


class EDJEModule(L.LightningModule):
    """Lightning training of an `EDJE` model.

    Args:
        config: the model's shapes and frozen sources (`EDJEConfig`; `patch_dim` / `num_patches` are read off the
            vision source). `first_stage:<model>` vision or text sides without a checkpoint read the default first
            stage (`FirstStage(<model>)`, trained into the cache first when missing), resolved once in `setup`.
        loss_functions: `(loss, weight)` pairs summed into the training loss: exactly one ranking loss over each
            group of 1 positive + n negatives (`listwise`, `pairwise`, `pointwise`, or a callable
            `(scores [B, n], labels [B, n]) -> loss`), and optionally `mlm` (masked-language modelling of the
            caption), `recovery` (1 - cos between a projection of the text-only [CLS] and the first stage's caption
            embedding), `distill` (BCE against sigmoid of `training.teacher`'s logits). Default `[(listwise, 1)]`.
        training: `EDJETraining` (optimiser, tokenizer, export folder, attention and speed settings).
        **legacy: mmrerank 0.1's flat arguments (`num_image_tokens=`, `lr=`, `loss=`, `mlm_weight=`, ...), mapped
            to the above with a `FutureWarning` each (`migrate_flat_args`); removed in 0.2.

    Example:
        >>> module = EDJEModule(EDJEConfig(num_image_tokens=16), [("listwise", 1.0), ("mlm", 0.1)],
        ...                     EDJETraining(lr=2e-3))  # doctest: +SKIP
    """

    def __init__(self, config: EDJEConfig = DEFAULT_CONFIG,
                 loss_functions: Sequence[tuple[str, float]] | None = None,
                 training: EDJETraining = DEFAULT_TRAINING, **legacy: Any) -> None:
        super().__init__()
        if legacy:
            moved = migrate_flat_args(legacy)
            config = _merged(EDJEConfig, config, moved.pop("config", {}))
            training = _merged(EDJETraining, training, moved.pop("training", {}))
            loss_functions = moved.pop("loss_functions", loss_functions)
            if moved:
                raise TypeError(f"EDJEModule got unexpected arguments {sorted(moved)}")
        self.config = _as(EDJEConfig, config)
        self.training_settings = _as(EDJETraining, training)
        self.losses = _check_losses(loss_functions or [("listwise", 1.0)], self.config, self.training_settings)
        self.export_dir = self.training_settings.export_dir  # read by `mmrerank fit` (`fitting.saved_paths`)
        # plain data only, so a checkpoint loads with `weights_only=True` and rebuilds this module
        self.save_hyperparameters({"config": asdict(self.config), "training": asdict(self.training_settings),
                                   "loss_functions": [[loss_name(n), w] for n, w in self.losses]})
        self.itm_loss = next(_itm_callable(n) for n, _ in self.losses if _is_itm(n))
        self.model: EDJE | None = None
        self.patches: dict[str, PatchTokens] = {}  # image set -> its [N, P, D] patch tokens, read by rows
        # the weights each frozen side reads, resolved once (`resolve_weights`); None until then
        self.vision_weights: str | None = None
        self.text_weights: str | None = None
        self._weights_resolved = False

    migrate_flat_args = staticmethod(migrate_flat_args)  # what `mmrerank fit` applies to 0.1 configs and flags
    LEGACY_PATHS = LEGACY_PATHS

    def weight(self, name: str) -> float:
        """The weight of the extra loss `name` (`mlm`, `recovery`, `distill`); 0 when not listed."""
        return sum(w for n, w in self.losses if n == name)

    # --- building -------------------------------------------------------------------------------------------------

    def resolve_weights(self) -> None:
        """Find (and, for the default first stage, train into the cache if missing) the weights the frozen vision
        and text sides read: once, however often `setup` runs."""
        if self._weights_resolved:
            return
        c = self.config
        self.vision_weights = default_first_stage(c.vision, c.vision_checkpoint, c.vision_pretrained)
        self.text_weights = default_first_stage(c.text, c.text_checkpoint, c.text_pretrained)
        self._weights_resolved = True

    def _config(self, source) -> EDJEConfig:
        return replace(self.config, patch_dim=source.dim, num_patches=source.num_patches,
                       vision_checkpoint=self.vision_weights, joint=dict(self.config.joint or DEFAULT_JOINT),
                       text_checkpoint=self.text_weights,
                       text_trainable=self.training_settings.text_lr_scale > 0)

    def _tokenizer(self, texts: list[str]):
        from transformers import AutoTokenizer

        from mmrerank.rerankers.edje.joint import SPECIAL_TOKENS, build_wordpiece_tokenizer

        settings = self.training_settings
        if settings.tokenizer:
            return AutoTokenizer.from_pretrained(settings.tokenizer)
        if self.config.text != "words":  # the text side tokenizes captions; the joint vocabulary is its specials
            return build_wordpiece_tokenizer([], vocab_size=len(SPECIAL_TOKENS))
        return build_wordpiece_tokenizer(texts, vocab_size=settings.vocab_size)

    def _build(self, config: EDJEConfig, tokenizer, recovery_dim: int | None = None,
               load_text_weights: bool = True) -> None:
        self.model = EDJE(config, tokenizer, load_text_weights)
        settings = self.training_settings
        self.model.joint.attn_implementation = settings.attn_implementation
        self.model.joint.length_buckets = settings.length_buckets
        if self.model.joint.text is not None:
            self.model.joint.text.cache_states = settings.cache_text
        d, vocab = self.model.dim, self.model.joint.bert.config.vocab_size
        if self.weight("mlm") > 0:
            self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, vocab))
        if self.weight("recovery") > 0:  # the joint [CLS] -> the first stage's caption-embedding width
            self.recovery = nn.Linear(d, recovery_dim)
        if self.weight("distill") > 0:
            self.teacher = EDJE.from_pretrained(settings.teacher).requires_grad_(False)

    def setup(self, stage: str) -> None:
        inputs = self.trainer.datamodule.edje_inputs()  # the one read of the data module (see `EDJEInputs`)
        self.resolve_weights()
        source = self._vision_source()
        fresh = self.model is None
        if fresh:
            self._build(self._config(source), self._tokenizer(inputs.texts), inputs.text_dim)
        for name, images in inputs.images.items():
            if name not in self.patches:
                self.patches[name] = self._cached_patches(source, images, inputs.image_keys[name])
        if fresh and self.training_settings.standardize_patches:  # of the training set's first 4,096 images
            # `EDJE.set_patch_statistics(patches[:4096])`, computed a few images at a time (at SigLIP2-L, 4,096
            # images are 4.8 GB of fp16 patch tokens) and with its clamp of tiny stds.
            mean, std = patch_statistics(self.patches[next(iter(inputs.images))], limit=4096)
            self.model.patch_mean.copy_(mean)
            self.model.patch_std.copy_(std.clamp_min(1e-3))

    def _vision_source(self):
        from mmrerank.rerankers.edje.vision import VisionTokenSource

        if not hasattr(self, "_source"):
            self.resolve_weights()
            c = self.config
            source = VisionTokenSource(c.vision, c.vision_pretrained, self.vision_weights, c.feature_index,
                                       c.image_size)
            object.__setattr__(self, "_source", source)  # not a submodule: frozen, never saved, never trained
        return self._source

    def _cached_patches(self, source, images, key: dict) -> PatchTokens:
        """`[N, P, D]` fp16 patch tokens of a set of images on disk, read by rows, cached by the vision source, its
        weights' digest, the token contract and the images' `key`, so later fits (a scaling sweep runs many) skip
        the vision tower. The processes of a node share the encoding (`patches.write_patch_tokens`)."""
        from mmrerank.rerankers.edje.vision import TOKEN_CONTRACT
        from mmrerank.retrieval.negatives import file_stamp

        h, trainer = self.config, self.trainer
        shape = (len(images), source.num_patches, source.dim)

        def encode(rows: Tensor) -> Tensor:  # [b] rows -> [b, P, D]
            return source.encode([images[i] for i in rows.tolist()])

        if not (h.vision_pretrained or self.vision_weights or h.vision.startswith("hf:")):
            return scratch_patch_tokens(shape, encode)  # random weights: nothing to key a cache by
        key = {"vision": h.vision, "pretrained": h.vision_pretrained, "checkpoint": file_stamp(self.vision_weights),
               "feature_index": h.feature_index, "image_size": h.image_size, "contract": TOKEN_CONTRACT, **key}
        # Ranks of one node split the parts (a cache folder is per machine); the barrier is the whole world's.
        return cached_patch_tokens(key, shape, encode, rank=trainer.local_rank, world=trainer.num_devices,
                                   barrier=trainer.strategy.barrier)

    # --- losses ---------------------------------------------------------------------------------------------------

    def _losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        texts, images, k = batch["texts"], batch["images"], batch["k"]
        # Each image is compressed once, however many pairs it is in (an i2t group repeats its image k times).
        unique, inverse = images.unique(return_inverse=True)
        patches = self.patches[batch["image_set"]][unique].to(self.device).float()  # [U, P, D], read from disk
        tokens = self.model.compress(patches)[inverse]  # [2Bk, m, d]
        ids, mask = self.model.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(ids, mask, tokens)  # [2Bk]
        scores = logits.view(-1, k)
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1
        losses = {"itm": self.itm_loss(scores, labels),
                  "accuracy": (scores.argmax(1) == 0).float().mean()}
        mlm, recovery, distill = self.weight("mlm"), self.weight("recovery"), self.weight("distill")
        positives = torch.arange(0, len(texts) // 2, k, device=self.device)  # the t2i positive pairs
        if mlm > 0:
            losses["mlm"] = self._mlm(ids[positives], mask[positives], tokens[positives])
        if recovery > 0:
            target = batch["caption_emb"]
            cls = self.model.joint.encode_text(ids[positives], mask[positives])
            losses["recovery"] = 1 - F.cosine_similarity(self.recovery(cls), target.to(self.device), dim=-1).mean()
        if distill > 0:
            with torch.no_grad():
                teacher = self.teacher(ids, mask, self.teacher.compress(patches)[inverse])
            losses["distill"] = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher))
        itm_weight = next(w for n, w in self.losses if _is_itm(n))
        losses["loss"] = (itm_weight * losses["itm"] + mlm * losses.get("mlm", 0) + recovery
                          * losses.get("recovery", 0) + distill * losses.get("distill", 0))
        return losses

    def _mlm(self, ids: Tensor, mask: Tensor, image_tokens: Tensor) -> Tensor:
        """Mask half of each caption's word pieces (never the image tokens) and predict them."""
        tokenizer = self.model.tokenizer
        chosen = (torch.rand(ids.shape, device=ids.device) < 0.5) & mask.bool()
        masked = ids.masked_fill(chosen, tokenizer.mask_token_id)
        hidden = self.model.joint.encode(masked, mask, image_tokens).last_hidden_state
        text_states = hidden[:, 1:1 + ids.shape[1]]  # caption slots follow [CLS]
        if not chosen.any():
            return hidden.sum() * 0
        return F.cross_entropy(self.mlm_head(text_states[chosen]), ids[chosen])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True,
                      batch_size=len(batch["caption_emb"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses = self._losses(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True,
                      batch_size=len(batch["caption_emb"]), sync_dist=True)

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.model.save_pretrained(self.export_dir)

    # --- checkpoints carry the tokenizer and shapes, so `load_from_checkpoint` rebuilds the model ----------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from dataclasses import asdict

        checkpoint["edje_config"] = asdict(self.model.config)
        checkpoint["edje_tokenizer"] = self.model.tokenizer.backend_tokenizer.to_str()
        if hasattr(self, "recovery"):
            checkpoint["edje_recovery_dim"] = self.recovery.out_features

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(checkpoint["edje_tokenizer"]),
                                          unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                          mask_token="[MASK]")
            self._build(EDJEConfig(**checkpoint["edje_config"]), tok, checkpoint.get("edje_recovery_dim"), False)

    def configure_optimizers(self):
        text = self.model.joint.text
        tower = {id(p) for p in text.tower_parameters()} if text is not None else set()
        t = self.training_settings
        return adamw_warmup_cosine(self, t.lr, t.weight_decay, t.warmup_steps, self.trainer.estimated_stepping_batches,
                                   lr_scale=lambda p: t.text_lr_scale if id(p) in tower else 1.0)


def _as(cls: type, value: Any) -> Any:
    """`value` as an instance of the dataclass `cls` (a dict from a checkpoint's hparams, None: the defaults)."""
    if value is None:
        return cls()
    return value if isinstance(value, cls) else cls(**value)


def _merged(cls: type, value: Any, moved: dict[str, Any]) -> Any:
    """The dataclass `value` (or its defaults) with the migrated legacy fields `moved` set."""
    return replace(_as(cls, value), **moved) if moved else value


def _is_itm(loss: Any) -> bool:
    return not isinstance(loss, str) or loss in ITM_LOSSES


def _itm_callable(loss: Any):
    return ranking_loss(loss) if isinstance(loss, str) else loss


def _check_losses(pairs: Sequence, config: EDJEConfig, training: EDJETraining) -> list[tuple[Any, float]]:
    """`loss_functions` as `(loss, weight)` tuples, refused (naming the entry) before anything is built."""
    losses = []
    for entry in pairs:
        if len(entry) != 2:
            raise ValueError(f"loss_functions entries are (loss, weight) pairs, got {entry!r}")
        loss, weight = entry
        if isinstance(loss, str) and loss not in ITM_LOSSES + EXTRA_LOSSES:
            raise ValueError(f"unknown loss {loss!r} in loss_functions; choose from {ITM_LOSSES + EXTRA_LOSSES} or "
                             "pass a callable (scores, labels) -> loss")
        losses.append((loss, float(weight)))
    itm = [loss for loss, _ in losses if _is_itm(loss)]
    if len(itm) != 1:
        raise ValueError(f"loss_functions needs exactly one ranking loss ({', '.join(ITM_LOSSES)} or a callable), "
                         f"got {len(itm)}")
    names = [loss for loss, _ in losses if isinstance(loss, str)]
    if len(set(names)) != len(names):
        raise ValueError(f"loss_functions lists a loss twice: {names}")
    weights = {loss: w for loss, w in losses if isinstance(loss, str)}
    if weights.get("distill", 0) > 0 and not training.teacher:
        raise ValueError("the distill loss needs `training.teacher` (an exported uncompressed EDJE folder)")
    if config.text != "words" and (weights.get("mlm", 0) > 0 or weights.get("recovery", 0) > 0):
        raise ValueError(f"the mlm and recovery losses read word pieces; drop them with text={config.text!r}")
    if training.text_lr_scale < 0:
        raise ValueError(f"training.text_lr_scale must be >= 0, got {training.text_lr_scale}")
    if training.length_buckets < 1:
        raise ValueError(f"training.length_buckets must be >= 1, got {training.length_buckets}")
    attention_for(training.attn_implementation, torch.device("cpu"))  # a misspelt name fails here, not after setup
    return losses

