"""`EDJEModule`: trains EDJE's adapter and joint encoder on groups of one positive and n hard negatives (Lightning).

Each batch holds, per caption, a t2i group (the caption against its image and n negative images) and an i2t group
(its image against the caption and n negative captions), negatives mined by the first stage
(`EDJEDataModule`). Losses, summed with their weights:

- ITM in the chosen paradigm (`loss=`): `listwise` (softmax over 1 positive + n negatives; the paper's ITM
  cross-entropy generalised to n negatives), `pairwise` (RankNet) or `pointwise` (BCE per pair);
- `mlm_weight`: masked-language modelling of the caption (50 % of its word pieces; image tokens never masked);
- `recovery_weight`: 1 - cos between a projection of the text-only [CLS] state and the first stage's caption
  embedding;
- `distill_weight`: BCE between the student's logit and sigmoid of an uncompressed teacher's logit (`teacher`: an
  exported `EDJE` folder with `num_image_tokens: null`, trained first with this same module).

The frozen vision source's patch tokens are computed once per image set in `setup` (the images come from the data
module's `edje_inputs()`, its only read of the data module) into an fp16 cache on disk (`patches.PatchTokens`), of
which each step reads only its batch's images: memory is bounded by the batch, not the image set.
`export_dir` receives the trained `EDJE` folder (what `mmrerank precompute` and the reranker load).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrerank.losses import ranking_loss
from mmrerank.optim import adamw_warmup_cosine
from mmrerank.rerankers.edje.joint import attention_for
from mmrerank.rerankers.edje.model import EDJE, EDJEConfig
from mmrerank.rerankers.edje.patches import PatchTokens, cached_patch_tokens, patch_statistics, scratch_patch_tokens

DEFAULT_JOINT = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}


def default_first_stage(spec: str, checkpoint: str | None, pretrained: str | None) -> str | None:
    """The weights a `first_stage:<model>` side reads: `checkpoint`, or else (no pretrained tag either) the default
    first stage's folder, trained into the cache first when missing."""
    if checkpoint or pretrained or not spec.startswith("first_stage:"):
        return checkpoint
    from mmrerank.retrieval.first_stage import FirstStage

    stage = FirstStage(spec.split(":", 1)[1])
    stage.build(progress=False)
    return str(stage.folder())


class EDJEModule(L.LightningModule):
    """Lightning training of an `EDJE` model.

    Args:
        vision, vision_checkpoint, vision_pretrained, feature_index, image_size: the frozen vision source;
            `first_stage:<model>` without a checkpoint reads the default first stage (`FirstStage(<model>)`,
            trained into the cache first when missing); so does the `first_stage:` text side without
            `text_checkpoint`.
        num_image_tokens, adapter_heads, adapter_mlp_ratio, patch_positions, joint, max_text_len: `EDJEConfig`.
        tokenizer: a tokenizer folder / hub name; None builds a WordPiece vocabulary of `vocab_size` from the
            training captions (saved with the model).
        text: the joint encoder's text side (`EDJEConfig.text`): `words`, or `first_stage:<open_clip model>`, the
            first stage's text tower read token by token (weights from `text_checkpoint` / `text_pretrained`).
        text_lr_scale: the `first_stage:` tower's learning rate as a multiple of `lr`; 0 freezes it.
        loss: `listwise`, `pairwise` or `pointwise`.
        mlm_weight, recovery_weight, distill_weight: weights of the optional losses (0 = off).
        teacher: exported uncompressed EDJE folder for distillation.
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

    def __init__(self, vision: str = "first_stage:mmrerank-tiny-resnet",
                 vision_checkpoint: str | None = None,
                 vision_pretrained: str | None = None, feature_index: int = -1, image_size: int | None = None,
                 num_image_tokens: int | None = 64, adapter_heads: int = 8, adapter_mlp_ratio: int = 4,
                 patch_positions: bool = False, joint: dict[str, Any] | None = None, max_text_len: int = 64,
                 tokenizer: str | None = None, vocab_size: int = 1000, text: str = "words",
                 text_checkpoint: str | None = None, text_pretrained: str | None = None,
                 text_lr_scale: float = 0.0, loss: str = "listwise",
                 mlm_weight: float = 0.0, recovery_weight: float = 0.0, distill_weight: float = 0.0,
                 teacher: str | None = None, standardize_patches: bool = True, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_steps: int = 100,
                 export_dir: str | None = None, attn_implementation: str = "auto", cache_text: bool = True,
                 length_buckets: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        attention_for(attn_implementation, torch.device("cpu"))  # a misspelt name fails here, not after setup
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        self.itm_loss = ranking_loss(loss)
        if distill_weight > 0 and not teacher:
            raise ValueError("distill_weight > 0 needs a `teacher` (an exported uncompressed EDJE folder)")
        if text != "words" and (mlm_weight > 0 or recovery_weight > 0):
            raise ValueError(f"mlm_weight and recovery_weight read word pieces; set them to 0 with text={text!r}")
        if text_lr_scale < 0:
            raise ValueError(f"text_lr_scale must be >= 0, got {text_lr_scale}")
        self.model: EDJE | None = None
        self.patches: dict[str, PatchTokens] = {}  # image set -> its [N, P, D] patch tokens, read by rows

    # --- building -------------------------------------------------------------------------------------------------

    @property
    def vision_checkpoint(self) -> str | None:
        h = self.hparams
        return default_first_stage(h.vision, h.vision_checkpoint, h.vision_pretrained)

    @property
    def text_checkpoint(self) -> str | None:
        h = self.hparams
        return default_first_stage(h.text, h.text_checkpoint, h.text_pretrained)

    def _config(self, source) -> EDJEConfig:
        h = self.hparams
        return EDJEConfig(vision=h.vision, patch_dim=source.dim, num_patches=source.num_patches,
                          num_image_tokens=h.num_image_tokens, vision_checkpoint=self.vision_checkpoint,
                          vision_pretrained=h.vision_pretrained, feature_index=h.feature_index,
                          image_size=h.image_size, adapter_heads=h.adapter_heads,
                          adapter_mlp_ratio=h.adapter_mlp_ratio, patch_positions=h.patch_positions,
                          joint=dict(h.joint or DEFAULT_JOINT), max_text_len=h.max_text_len, text=h.text,
                          text_checkpoint=self.text_checkpoint, text_pretrained=h.text_pretrained,
                          text_trainable=h.text_lr_scale > 0)

    def _tokenizer(self, texts: list[str]):
        from transformers import AutoTokenizer

        from mmrerank.rerankers.edje.joint import SPECIAL_TOKENS, build_wordpiece_tokenizer

        if self.hparams.tokenizer:
            return AutoTokenizer.from_pretrained(self.hparams.tokenizer)
        if self.hparams.text != "words":  # the text side tokenizes captions; the joint vocabulary is its specials
            return build_wordpiece_tokenizer([], vocab_size=len(SPECIAL_TOKENS))
        return build_wordpiece_tokenizer(texts, vocab_size=self.hparams.vocab_size)

    def _build(self, config: EDJEConfig, tokenizer, recovery_dim: int | None = None,
               load_text_weights: bool = True) -> None:
        self.model = EDJE(config, tokenizer, load_text_weights)
        self.model.joint.attn_implementation = self.hparams.attn_implementation
        self.model.joint.length_buckets = self.hparams.length_buckets
        if self.model.joint.text is not None:
            self.model.joint.text.cache_states = self.hparams.cache_text
        d, vocab = self.model.dim, self.model.joint.bert.config.vocab_size
        if self.hparams.mlm_weight > 0:
            self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, vocab))
        if self.hparams.recovery_weight > 0:  # the joint [CLS] -> the first stage's caption-embedding width
            self.recovery = nn.Linear(d, recovery_dim)
        if self.hparams.distill_weight > 0:
            self.teacher = EDJE.from_pretrained(self.hparams.teacher).requires_grad_(False)

    def setup(self, stage: str) -> None:
        inputs = self.trainer.datamodule.edje_inputs()  # the one read of the data module (see `EDJEInputs`)
        source = self._vision_source()
        fresh = self.model is None
        if fresh:
            self._build(self._config(source), self._tokenizer(inputs.texts), inputs.text_dim)
        for name, images in inputs.images.items():
            if name not in self.patches:
                self.patches[name] = self._cached_patches(source, images, inputs.image_keys[name])
        if fresh and self.hparams.standardize_patches:  # of the training set's first 4,096 images
            # `EDJE.set_patch_statistics(patches[:4096])`, computed a few images at a time (at SigLIP2-L, 4,096
            # images are 4.8 GB of fp16 patch tokens) and with its clamp of tiny stds.
            mean, std = patch_statistics(self.patches[next(iter(inputs.images))], limit=4096)
            self.model.patch_mean.copy_(mean)
            self.model.patch_std.copy_(std.clamp_min(1e-3))

    def _vision_source(self):
        h = self.hparams
        from mmrerank.rerankers.edje.vision import VisionTokenSource

        if not hasattr(self, "_source"):
            source = VisionTokenSource(h.vision, h.vision_pretrained, self.vision_checkpoint, h.feature_index,
                                       h.image_size)
            object.__setattr__(self, "_source", source)  # not a submodule: frozen, never saved, never trained
        return self._source

    def _cached_patches(self, source, images, key: dict) -> PatchTokens:
        """`[N, P, D]` fp16 patch tokens of a set of images on disk, read by rows, cached by the vision source, its
        weights' digest, the token contract and the images' `key`, so later fits (a scaling sweep runs many) skip
        the vision tower. The processes of a node share the encoding (`patches.write_patch_tokens`)."""
        from mmrerank.rerankers.edje.vision import TOKEN_CONTRACT
        from mmrerank.retrieval.negatives import file_stamp

        h, trainer = self.hparams, self.trainer
        shape = (len(images), source.num_patches, source.dim)

        def encode(rows: Tensor) -> Tensor:  # [b] rows -> [b, P, D]
            return source.encode([images[i] for i in rows.tolist()])

        if not (h.vision_pretrained or self.vision_checkpoint or h.vision.startswith("hf:")):
            return scratch_patch_tokens(shape, encode)  # random weights: nothing to key a cache by
        key = {"vision": h.vision, "pretrained": h.vision_pretrained, "checkpoint": file_stamp(self.vision_checkpoint),
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
        h = self.hparams
        positives = torch.arange(0, len(texts) // 2, k, device=self.device)  # the t2i positive pairs
        if h.mlm_weight > 0:
            losses["mlm"] = self._mlm(ids[positives], mask[positives], tokens[positives])
        if h.recovery_weight > 0:
            target = batch["caption_emb"]
            cls = self.model.joint.encode_text(ids[positives], mask[positives])
            losses["recovery"] = 1 - F.cosine_similarity(self.recovery(cls), target.to(self.device), dim=-1).mean()
        if h.distill_weight > 0:
            with torch.no_grad():
                teacher = self.teacher(ids, mask, self.teacher.compress(patches)[inverse])
            losses["distill"] = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher))
        losses["loss"] = (losses["itm"] + h.mlm_weight * losses.get("mlm", 0) + h.recovery_weight
                          * losses.get("recovery", 0) + h.distill_weight * losses.get("distill", 0))
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
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.model.save_pretrained(self.hparams.export_dir)

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
        return adamw_warmup_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps,
                                   self.trainer.estimated_stepping_batches,
                                   lr_scale=lambda p: self.hparams.text_lr_scale if id(p) in tower else 1.0)


def encode_patches(source, images, batch_size: int = 256) -> Tensor:
    """`[N, P, D]` fp16 patch tokens of every image, in memory (the cache's reference; fits use `_cached_patches`)."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="patch tokens", leave=False):
        rows = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        out.append(source.encode(rows).half().cpu())
    return torch.cat(out)

