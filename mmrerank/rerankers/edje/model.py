"""`EDJE`: the trainable part of an EDJE reranker (compression adapter + joint encoder + tokenizer), saved as a folder.

The frozen vision source is named in the config, not stored: `precompute` rebuilds it to encode a corpus, and the
joint encoder only ever sees the compressed tokens. With `num_image_tokens=None` nothing is compressed: every patch
token is projected to the joint encoder's width (the uncompressed teacher of EDJE's distillation loss).

A saved folder holds `config.json`, `model.safetensors` and `tokenizer/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from mmrerank.core.deprecation import migrate_saved_config
from mmrerank.core.io import atomic_folder, atomic_write_json
from mmrerank.rerankers import folders
from mmrerank.rerankers.edje.adapter import OfficialCompressionAdapter, TokenCompressionAdapter
from mmrerank.rerankers.edje.joint import JointEncoder

# What `save_pretrained` writes, plus the token stores kept inside a model folder: all that a re-export replaces.
_FOLDER_ENTRIES = {"config.json", "model.safetensors", "tokenizer", "tokens"}
ADAPTERS = ("mmrerank", "official")
CAPTION_CLEANING = ("none", "open_clip")


def clean_caption(text: str, cleaning: str) -> str:
    """A caption as the model's trainers fed it: `none` leaves it as given; `open_clip` is open_clip's
    `canonicalize_text(basic_clean(text))`, what the EDJE authors' `pre_caption` applies to every caption (ftfy's
    `fix_text`, HTML entities unescaped twice, `_` to a space, ASCII punctuation removed, lower case, runs of
    whitespace to one space). It also removes what a tokenizer would read as a special token (`<image>`, `[SEP]`).
    """
    if cleaning == "none":
        return text
    from open_clip.tokenizer import basic_clean, canonicalize_text

    return canonicalize_text(basic_clean(text))


@dataclass
class EDJEConfig:
    """Shapes of an EDJE model.

    Attributes:
        vision: the frozen vision source (`VisionTokenSource` name, e.g. `first_stage:mmrerank-tiny-resnet` or
            `hf:google/siglip2-large-patch16-384`).
        vision_checkpoint, vision_pretrained, feature_index, image_size: passed to `VisionTokenSource`.
        patch_dim, num_patches: D and P of the vision source's tokens (None in a training config: `EDJEModule`
            reads them off the vision source in `setup`; a built `EDJE` needs both).
        num_image_tokens: m, stored tokens per image; None = no compression (all P patches, projected).
        adapter_heads, adapter_mlp_ratio: the adapter's attention heads and MLP width multiple.
        adapter: the adapter's layout: `mmrerank` (`TokenCompressionAdapter`) or `official` (the authors',
            `OfficialCompressionAdapter`, with `adapter_eps` and `adapter_act`; what the released checkpoint uses).
        patch_positions: give patches learned positions in the adapter (for CNN feature maps).
        joint: `BertConfig` keyword arguments for a fresh joint encoder, or `{"name": <hub name or path>}` for a
            pretrained one (e.g. `microsoft/MiniLM-L12-H384-uncased`, with its tokenizer).
        max_text_len: caption word pieces kept (`words` text side).
        text: what the joint encoder reads for a caption: `words` (its own word embeddings of the tokenizer's word
            pieces; with a pretrained `joint`, the pretrained BERT's) or `first_stage:<open_clip model>` (that
            model's text tower's token states, `FirstStageText`; its weights are saved with the model).
        text_checkpoint, text_pretrained: where the `first_stage:` tower's weights came from (a first-stage
            checkpoint or an open_clip pretrained tag; recorded, only read when a model is first built).
        text_trainable: fine-tune the `first_stage:` tower (else it stays frozen).
        caption_cleaning: what a caption goes through before the tokenizer (`clean_caption`): `none`, or
            `open_clip` (the released checkpoint's, as its authors' datasets clean every caption).
    """

    vision: str = "first_stage:mmrerank-tiny-resnet"
    patch_dim: int | None = None
    num_patches: int | None = None
    num_image_tokens: int | None = 64
    vision_checkpoint: str | None = None
    vision_pretrained: str | bool | None = None
    feature_index: int = -1
    image_size: int | None = None
    adapter_heads: int = 8
    adapter_mlp_ratio: int = 4
    patch_positions: bool = False
    joint: dict[str, Any] = field(default_factory=lambda: {"hidden_size": 128, "num_hidden_layers": 4,
                                                           "num_attention_heads": 4, "intermediate_size": 512})
    max_text_len: int = 64
    text: str = "words"
    text_checkpoint: str | None = None
    text_pretrained: str | None = None
    text_trainable: bool = False
    adapter: str = "mmrerank"
    adapter_eps: float = 1e-6
    adapter_act: str = "gelu"
    caption_cleaning: str = "none"

    def __post_init__(self) -> None:
        if self.caption_cleaning not in CAPTION_CLEANING:
            raise ValueError(f"caption_cleaning must be one of {CAPTION_CLEANING}, got {self.caption_cleaning!r}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.adapter == "official" and (self.num_image_tokens is None or self.patch_positions):
            raise ValueError("adapter='official' compresses (num_image_tokens set) and has no patch positions")
        if self.text != "words" and not self.text.startswith("first_stage:"):
            raise ValueError(f"text must be 'words' or 'first_stage:<open_clip model>', got {self.text!r}")

    def text_side(self, load_weights: bool = True):
        """The text side module (None for `words`); `load_weights` reads `text_checkpoint` / `text_pretrained`
        (False: a random init, for weights that come from a saved folder)."""
        if self.text == "words":
            return None
        from mmrerank.rerankers.edje.text import FirstStageText

        width = self.joint["hidden_size"] if "hidden_size" in self.joint else None
        if width is None:
            raise ValueError("a first_stage: text side needs the joint encoder's hidden_size in `joint`")
        return FirstStageText(self.text.split(":", 1)[1], width,
                              self.text_checkpoint if load_weights else None,
                              self.text_pretrained if load_weights else None, self.text_trainable)

    def vision_source(self):
        from mmrerank.rerankers.edje.vision import VisionTokenSource

        return VisionTokenSource(self.vision, self.vision_pretrained, self.vision_checkpoint, self.feature_index,
                                 self.image_size)


class EDJE(nn.Module):
    """Compression (or projection) of patch tokens, and the joint encoder that scores (caption, image tokens).

    Args:
        config: the shapes.
        tokenizer: the joint encoder's tokenizer (a locally built WordPiece vocabulary or a pretrained one; with a
            `first_stage:` text side it only supplies the special tokens).
        load_text_weights: initialise a `first_stage:` text side from `config.text_checkpoint` (False when the
            weights are about to be loaded from a saved folder).
    """

    def __init__(self, config: EDJEConfig, tokenizer: PreTrainedTokenizerFast, load_text_weights: bool = True):
        super().__init__()
        if config.patch_dim is None or config.num_patches is None:
            raise ValueError("EDJEConfig.patch_dim and num_patches must be set to build an EDJE (EDJEModule fills them "
                             "from the vision source)")
        self.config, self.tokenizer = config, tokenizer
        joint = dict(config.joint)
        # A saved pretrained encoder records its (possibly longer) position table; rebuild it at that size.
        table_rows = joint.pop("max_position_embeddings", None)
        if "name" in joint:
            bert: BertConfig | str = joint["name"]
        else:
            joint.setdefault("vocab_size", len(tokenizer))
            if joint["vocab_size"] < len(tokenizer):
                raise ValueError(f"joint vocab_size {joint['vocab_size']} < tokenizer size {len(tokenizer)}")
            bert = BertConfig(**joint)
        m = config.num_image_tokens if config.num_image_tokens is not None else config.num_patches
        text = config.text_side(load_text_weights)
        max_text_len = text.context_length if text is not None else config.max_text_len
        self.joint = JointEncoder(bert, num_image_tokens=m, max_text_len=max_text_len, tokenizer=tokenizer,
                                  text=text, num_positions=table_rows)
        d = self.joint.hidden_size
        positions = config.num_patches if config.patch_positions else None
        if config.num_image_tokens is None:
            self.adapter = None
            self.project = nn.Linear(config.patch_dim, d)
            self.patch_pos = nn.Parameter(torch.randn(config.num_patches, d) * 0.02) if positions else None
        elif config.adapter == "official":
            self.adapter = OfficialCompressionAdapter(
                config.patch_dim, config.num_image_tokens, d, config.adapter_heads,
                config.adapter_mlp_ratio * config.patch_dim, config.adapter_eps, config.adapter_act)
        else:
            self.adapter = TokenCompressionAdapter(config.patch_dim, config.num_image_tokens, d, config.adapter_heads,
                                                   config.adapter_mlp_ratio, num_patches=positions)
        # Per-channel statistics of the vision source's patch tokens, set from the training images by `EDJEModule`
        # (identity until then). CNN feature maps share a large background component across all images; taking it
        # out lets the few patches that hold objects stand out from the first step.
        self.register_buffer("patch_mean", torch.zeros(config.patch_dim))
        self.register_buffer("patch_std", torch.ones(config.patch_dim))

    def set_patch_statistics(self, patches: Tensor) -> None:
        """Standardise patch tokens with the per-channel mean and std of `patches` `[N, P, D]` (training images)."""
        flat = patches.reshape(-1, patches.shape[-1]).float()
        self.patch_mean.copy_(flat.mean(0))
        self.patch_std.copy_(flat.std(0).clamp_min(1e-3))

    @property
    def num_image_tokens(self) -> int:
        return self.joint.num_image_tokens

    @property
    def dim(self) -> int:
        return self.joint.hidden_size

    def compress(self, patches: Tensor) -> Tensor:
        """`[B, P, D]` patch tokens -> `[B, m, d]` image tokens (what the token store keeps)."""
        patches = (patches.to(self.patch_mean.dtype) - self.patch_mean) / self.patch_std
        if self.adapter is not None:
            return self.adapter(patches.to(next(self.adapter.parameters()).dtype))
        tokens = self.project(patches.to(self.project.weight.dtype))
        return tokens + self.patch_pos if self.patch_pos is not None else tokens

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """`[B, T]` caption ids and mask with `[B, m, d]` image tokens -> `[B]` logits."""
        return self.joint(input_ids, attention_mask, image_tokens)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions, cleaned as `config.caption_cleaning` says, -> `[B, T]` ids and mask (`JointEncoder.tokenize`)."""
        return self.joint.tokenize([clean_caption(text, self.config.caption_cleaning) for text in texts])

    def score(self, texts: Sequence[str], image_tokens: Tensor) -> Tensor:
        """Captions (strings) against `[B, m, d]` image tokens -> `[B]` logits."""
        ids, mask = self.tokenize(texts)
        device = self.joint.head.weight.device
        return self(ids.to(device), mask.to(device), image_tokens.to(device))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the folder `folder`: `config.json`, `model.safetensors` and `tokenizer/`.

        The folder is written beside `folder` and swapped in whole (`atomic_folder`), so an interrupted re-export
        leaves the old model intact, never new weights beside the old tokenizer and config. Token stores that an
        earlier model left in `folder/tokens/` (the default place) go with it: a resumed precompute would
        otherwise silently reuse tokens of the model being replaced. While the two folders are swapped there is
        a moment with no folder at `folder` (the old one is then whole in a hidden `.<name>.*.old/` beside it).

        Raises:
            FileExistsError: `folder` holds entries an EDJE folder does not have (nothing is deleted then).
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in _FOLDER_ENTRIES) if folder.is_dir() else []
        if foreign:
            raise FileExistsError(f"{folder} holds {foreign}, which an EDJE folder does not; refusing to replace it "
                                  "(save to a new or empty folder)")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = {**folders.saved_marker(folders.EDJE), **asdict(self.config)}
        if "name" in config["joint"]:  # a pretrained encoder's weights are in the file: record its shape instead
            config["joint"] = self.joint.bert.config.to_diff_dict()
        with atomic_folder(folder) as tmp:
            save_file(state, str(tmp / "model.safetensors"))
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            atomic_write_json(tmp / "config.json", config)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> EDJE:
        """Load a folder written by `save_pretrained` (safetensors: no code is unpickled).

        Raises:
            FileNotFoundError: no `config.json` in `folder`.
            ValueError: a folder of another kind (naming what its config says and the loader it needs), or weights
                whose shapes do not fit its config (naming the folder and the tensors).
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        kind = folders.identify(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no EDJE model at {folder} (config.json missing: {kind.description})")
        if kind.model_type != folders.EDJE:
            raise ValueError(f"{folder} is not an EDJE folder: it is {kind.description}; {kind.loader_hint()}")
        values = {k: v for k, v in kind.config.items() if k not in ("model_type", "mmrerank_version")}
        values = migrate_saved_config(values, folders.EDJE, str(folder / "config.json"))
        unknown = sorted(set(values) - {f.name for f in fields(EDJEConfig)})
        if unknown:
            raise ValueError(f"{folder}/config.json has keys {unknown} that this mmrerank's EDJEConfig does not know "
                             f"(saved by mmrerank {kind.config.get('mmrerank_version', 'unknown')}; this is "
                             f"{folders.package_version()}): load it with the mmrerank version that saved it")
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        model = cls(EDJEConfig(**values), tokenizer, load_text_weights=False)
        try:
            model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(map_location)))
        except RuntimeError as err:  # size mismatches: torch names the tensors, not the file
            raise ValueError(f"{folder}/model.safetensors does not fit {folder}/config.json: {err}") from err
        return model.eval()
