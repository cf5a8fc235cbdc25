"""The released EDJE checkpoint, `shahafw/edje-vl-image-retrieval-reranker`, as an mmrerank `EDJE`.

What the authors' code does, read in github.com/shahafwa/EDJE at commit 56c0c23 (`pretrain_model.py`,
`token_compression.py`, `train.py`, `evaluation/evaluate_retrieval.py`), and where each piece lands here:

- The file: `torch.save({"model": state_dict, "optimizer", "config", "epoch", "global_step"}, "checkpoint_XX.pth")`
  (`train.py`), the state dict of their `MultimodalPretrainModel`. A safetensors copy of the state dict (one file or
  shards) reads the same way. Torch files are read with `weights_only=True`: nothing in them is executed.
- `vision_projection.*` (their `TokenCompressionAdapter`) -> `adapter.*`, an `OfficialCompressionAdapter` with the
  same parameter names; its heads and LayerNorm epsilon are the vision tower's (`num_attention_heads`,
  `layer_norm_eps`), its activation the language model's `hidden_act`, as their constructor takes them.
- `language_model.bert.*` (a `BertForMaskedLM` whose vocabulary grew by one `<image>` token) -> `joint.bert.*`.
- `classification_head.0.dense.*` (a `BertPooler`: `tanh(dense(h_[CLS]))`) -> `joint.bert.pooler.dense.*`, which
  `BertModel`'s own pooler computes the same way; `classification_head.1.*` (`Linear(384, 1)`) -> `joint.head.*`.
  The score is that logit (their evaluation sorts by it; no sigmoid).
- Not used for scoring: `language_model.cls.*` (MLM head), `text_projection.*` (text-embedding recovery), `clip.*`
  (the SigLIP model that mined negatives), `text_embeddings.*` (a second name of the word embeddings) and
  `vision_encoder.*`: their evaluation takes image tokens from `SiglipModel.from_pretrained(siglip_path)
  .vision_model(...).last_hidden_state`, the hub tower, which is what `VisionTokenSource("hf:<siglip>")` gives.
- The caption: every dataset of theirs (`data/flickr30k_dataset.py`, `data/coco_karpathy_dataset.py`,
  `data/pretrain_dataset.py`, and `data/utils.py`'s training transform) passes each caption through `pre_caption`
  (`data/utils.py`): open_clip's `canonicalize_text(basic_clean(caption))`, nothing else (no word limit). The model
  only ever saw cleaned captions, so the config here sets `caption_cleaning="open_clip"` and `EDJE.tokenize` cleans
  every caption the same way. The cleaning drops `<` and `>`, so a caption holding the text `<image>` reaches the
  model as the word `image`, never as the image slot's token.
- Images: their evaluation preprocesses with `AutoImageProcessor.from_pretrained(siglip_path)` under transformers
  4.x, whose default there is the PIL processor; `VisionTokenSource` asks for the PIL backend under any version
  (transformers 5 defaults to torchvision, whose resize gives other pixels). Their training (`data/__init__.py`)
  asked for the fast (torchvision) processor; scoring here follows their evaluation.
- The pair: `tokenizer(caption, "<image>" * m, truncation="only_first", max_length=64 + m, padding=True)`, i.e.
  `[CLS] caption [SEP] <image> x m [SEP]` with token types 0 then 1, default positions, and the `<image>` word
  embeddings replaced in order by the adapter's m outputs. `JointEncoder` builds exactly these inputs with
  `max_text_len = 64 - 3` (what "only_first" leaves a caption): the same ids, types, positions and attention on the
  real tokens; its caption padding sits before `[SEP]` instead of at the end, masked either way, so no real token's
  state changes (`tests/rerankers/edje/test_edje_official.py` compares both against the authors' layout). A caption
  longer than that is cut to its first 61 word pieces, as "only_first" cuts it.

Parity: `tests/rerankers/edje/test_edje_official_parity.py` scores the inputs and compares with the scores that
their own code gave on a tiny checkpoint of the release's layout (`tests/fixtures/parity/edje_official/`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmrerank.rerankers.edje.joint import MINILM
from mmrerank.rerankers.edje.model import EDJE, EDJEConfig
from mmrerank.rerankers.edje.reranker import EDJEReranker
from mmrerank.rerankers.preset import Preset

OFFICIAL = "shahafw/edje-vl-image-retrieval-reranker"
SIGLIP2_L384 = "hf:google/siglip2-large-patch16-384"
IMAGE_TOKEN = "<image>"
# Their MAX_TEXT_CONTEXT_LENGTH: the pair's max_length is this plus m, so a caption keeps 64 - 3 word pieces.
TEXT_CONTEXT = 64
# Their state dict's prefixes that scoring reads; everything else in the file is left unread where possible.
USED_PREFIXES = ("vision_projection.", "language_model.bert.", "classification_head.")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
BERT_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
               "type_vocab_size", "layer_norm_eps", "pad_token_id", "initializer_range", "hidden_dropout_prob",
               "attention_probs_dropout_prob")


# --- finding and reading the file ----------------------------------------------------------------------------------

def pick_weights(names: Iterable[str], where: str) -> list[str]:
    """The weight files among `names` (a folder's or a hub repository's top-level files): one safetensors file or
    its shards, else one torch file or its shards.

    Raises:
        FileNotFoundError: no weight file, or several unrelated ones (then pass the file itself).
    """
    names = sorted(n for n in names if "/" not in n)
    for suffixes in ((".safetensors",), TORCH_SUFFIXES):
        found = [n for n in names if n.endswith(suffixes)]
        if len(found) == 1 or (found and all(re.search(r"-\d+-of-\d+\.\w+$", n) for n in found)):
            return found
        if found:
            raise FileNotFoundError(f"{where} holds several weight files {found}; pass the path of the one to load")
    raise FileNotFoundError(f"{where} holds no weight file (*.safetensors or {', '.join(TORCH_SUFFIXES)}): {names}")


def weight_files(source: str | Path) -> list[Path]:
    """The local weight file(s) of `source`: a file, a folder holding a copy of the release, or the hub id (then
    the chosen files are downloaded into the hub cache)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return [path / name for name in pick_weights((p.name for p in path.iterdir() if p.is_file()), str(path))]
    if path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source}: no such file or folder (and not a hub id <owner>/<name>)")
    from huggingface_hub import hf_hub_download, list_repo_files

    names = pick_weights(list_repo_files(str(source)), f"hub repository {source}")
    return [Path(hf_hub_download(str(source), name)) for name in names]


def read_state(files: list[Path]) -> dict[str, Tensor]:
    """The tensors under `USED_PREFIXES` of the authors' state dict, from safetensors or torch files.

    A torch file may hold the state dict itself or the training checkpoint around it (`{"model": ...}`); a
    `module.` prefix (a DDP-wrapped model's) is dropped.

    Raises:
        ValueError: a torch file that needs code to unpickle, or no tensor under the used prefixes.
    """
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(_read_safetensors(file) if file.suffix == ".safetensors" else _read_torch(file))
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.startswith(USED_PREFIXES)}
    if not state:
        raise ValueError(f"{', '.join(map(str, files))}: no tensor under {USED_PREFIXES}; not an EDJE checkpoint of "
                         "the authors' layout (github.com/shahafwa/EDJE)")
    return state


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        wanted = USED_PREFIXES + tuple(f"module.{prefix}" for prefix in USED_PREFIXES)
        return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(wanted)}


def _read_torch(file: Path) -> dict[str, Tensor]:
    obj = _torch_load(file)
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):  # train.py saves {"model": state_dict, "optimizer": ..., ...}
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{file}: expected a state dict (or {{'model': state dict}}), got {type(obj).__name__}")
    return {key: value for key, value in obj.items() if isinstance(value, Tensor)}


def _torch_load(file: Path) -> Any:
    """`torch.load` with `weights_only=True`, memory-mapped where the format allows (the release also holds two
    SigLIP towers that scoring never reads: mapped, they stay on disk)."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code: say which file and why
        raise ValueError(f"{file}: not a plain tensor checkpoint (torch.load with weights_only=True refused it: "
                         f"{err})") from err


# --- converting ----------------------------------------------------------------------------------------------------

def _tensor(state: dict[str, Tensor], key: str, where: str, dims: int) -> Tensor:
    if key not in state:
        raise ValueError(f"{where}: key {key!r} missing; not an EDJE checkpoint of the authors' compressed layout")
    if state[key].dim() != dims:
        raise ValueError(f"{where}: {key} has shape {tuple(state[key].shape)}, expected {dims} dimensions")
    return state[key]


def _vision_shapes(vision: str) -> tuple[int, int, int, float]:
    """`(width, patches, heads, layer_norm_eps)` of an `hf:` vision tower, from its config only (no weights)."""
    if not vision.startswith("hf:"):
        raise ValueError(f"vision={vision!r}: the authors' adapter takes its heads and epsilon from a transformers "
                         "vision tower; name one as 'hf:<hub id or folder>'")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(vision[3:])
    config = getattr(config, "vision_config", config)  # a SigLIP dual model: its vision tower
    patches = (config.image_size // config.patch_size) ** 2
    return config.hidden_size, patches, config.num_attention_heads, float(config.layer_norm_eps)


def official_config(state: dict[str, Tensor], where: str, language_model: str, vision: str,
                    tokenizer_size: int) -> EDJEConfig:
    """The `EDJEConfig` of the authors' state dict: shapes from its tensors, what they do not fix (attention heads,
    epsilons, activation) from the language model's and the vision tower's configs, as the authors' code takes them.

    Raises:
        ValueError: an uncompressed (teacher) checkpoint, or shapes that disagree with the named configs.
    """
    from transformers import AutoConfig

    if "vision_projection.0.weight" in state:
        raise ValueError(f"{where}: an uncompressed (MLP projection) checkpoint, the authors' distillation teacher; "
                         "only the compressed layout (vision_projection.query, ...) is supported")
    query = _tensor(state, "vision_projection.query", where, 3)  # [1, m, D]
    fc1 = _tensor(state, "vision_projection.mlp.fc1.weight", where, 2)  # [H, D]
    words = _tensor(state, "language_model.bert.embeddings.word_embeddings.weight", where, 2)  # [V, d]
    positions = _tensor(state, "language_model.bert.embeddings.position_embeddings.weight", where, 2)
    m, patch_dim = query.shape[1], query.shape[2]
    width, num_patches, heads, eps = _vision_shapes(vision)
    if width != patch_dim or fc1.shape[0] % patch_dim:
        raise ValueError(f"{where}: the adapter reads tokens of width {patch_dim} with an MLP of {fc1.shape[0]}; "
                         f"vision {vision} gives width {width} (and the MLP must be a multiple of the width)")
    bert = AutoConfig.from_pretrained(language_model)
    layers = len({key.split(".")[4] for key in state if key.startswith("language_model.bert.encoder.layer.")})
    intermediate = _tensor(state, "language_model.bert.encoder.layer.0.intermediate.dense.weight", where, 2)
    found = {"hidden_size": words.shape[1], "num_hidden_layers": layers, "intermediate_size": intermediate.shape[0]}
    wrong = {k: (v, getattr(bert, k)) for k, v in found.items() if v != getattr(bert, k)}
    if getattr(bert, "model_type", None) != "bert" or wrong:
        raise ValueError(f"{where}: its language model does not match language_model={language_model!r} "
                         f"(model_type {getattr(bert, 'model_type', None)!r}; file vs config: {wrong})")
    if words.shape[0] != tokenizer_size:
        raise ValueError(f"{where}: the word embeddings have {words.shape[0]} rows; the tokenizer of {language_model} "
                         f"with {IMAGE_TOKEN} added has {tokenizer_size} tokens")
    joint = {key: getattr(bert, key) for key in BERT_FIELDS if hasattr(bert, key)}
    joint.update(vocab_size=words.shape[0], max_position_embeddings=positions.shape[0])
    return EDJEConfig(vision=vision, patch_dim=patch_dim, num_patches=num_patches, num_image_tokens=m,
                      adapter_heads=heads, adapter_mlp_ratio=fc1.shape[0] // patch_dim, joint=joint,
                      max_text_len=TEXT_CONTEXT - 3, adapter="official", adapter_eps=eps,
                      adapter_act=str(bert.hidden_act), caption_cleaning="open_clip")


def map_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' keys -> `EDJE`'s (the table in the module doc); `position_ids` / `token_type_ids` buffers that
    older transformers saved are dropped."""
    renames = (("vision_projection.", "adapter."), ("language_model.bert.", "joint.bert."),
               ("classification_head.0.dense.", "joint.bert.pooler.dense."), ("classification_head.1.", "joint.head."))
    out = {}
    for key, value in state.items():
        if key.endswith(("position_ids", "token_type_ids")):
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
    return out


def convert_official(source: str | Path = OFFICIAL, out: str | Path | None = None, *, language_model: str = MINILM,
                     vision: str = SIGLIP2_L384) -> EDJE:
    """The authors' checkpoint as an `EDJE` (eval mode, on the CPU); with `out`, also saved there
    (`EDJE.save_pretrained`: `config.json`, `model.safetensors`, `tokenizer/`, loadable by `EDJEReranker(out)`).

    Args:
        source: the hub id, a folder holding a copy of the release, or the weight file itself.
        out: a folder to save the converted model to.
        language_model: the BERT the authors started from (its config and tokenizer; `<image>` is added to the
            tokenizer as their code does).
        vision: the vision tower, `hf:<hub id or folder>` (its config gives the adapter's heads and epsilon; its
            weights encode images when the reranker is given pixels).

    Raises:
        ValueError: a file of another layout, or one whose shapes disagree with `language_model` / `vision`.
    """
    from transformers import AutoTokenizer

    files = weight_files(source)
    where = ", ".join(map(str, files))
    state = read_state(files)
    tokenizer = AutoTokenizer.from_pretrained(language_model, extra_special_tokens={"image_token": IMAGE_TOKEN})
    model = EDJE(official_config(state, where, language_model, vision, len(tokenizer)), tokenizer,
                 load_text_weights=False)
    target = model.state_dict()
    mapped = map_state(state)
    unexpected = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped) - {"patch_mean", "patch_std"})  # identity standardisation: kept
    if unexpected or missing:
        raise ValueError(f"{where}: keys do not fit the authors' layout; unexpected (as mmrerank names) {unexpected}, "
                         f"missing {missing}")
    for key, value in mapped.items():
        if value.shape != target[key].shape:
            raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
    model.load_state_dict({**target, **mapped})
    model.eval()
    if out is not None:
        model.save_pretrained(out)
    return model


def load_official(name_or_path: str | Path = OFFICIAL, *, language_model: str = MINILM, vision: str = SIGLIP2_L384,
                  store: str | Path | None = None, device: str = "auto") -> EDJEReranker:
    """The released checkpoint as an `EDJEReranker` (the preset's `build`).

    Args:
        name_or_path: the hub id, a folder with a copy of the release, its weight file, or a folder that
            `convert_official(out=...)` wrote (loaded directly, no conversion).
        language_model, vision: as `convert_official`.
        store: a token store of the corpus written with this model (`precompute_images`); None encodes images with
            `vision` as they come.
        device: `auto`, `cpu` or `cuda`.
    """
    path = Path(name_or_path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (path / "tokenizer").is_dir():
        config = json.loads((path / "config.json").read_text())
        if config.get("adapter") == "official":  # already converted
            reranker = EDJEReranker(path, store=store, device=device)
            if "caption_cleaning" not in config:  # converted before the cleaning was recorded: the authors' model
                reranker.model.config.caption_cleaning = "open_clip"
            return reranker
    return EDJEReranker(convert_official(name_or_path, language_model=language_model, vision=vision), store=store,
                        device=device)


PRESETS = {
    OFFICIAL: Preset(
        name=OFFICIAL, family="edje",
        reranks="images for a caption (t2i) and captions for an image (i2t)",
        score="logit of a BERT-pooler head on MiniLM-L12-H384 over (caption, 64 compressed SigLIP2-L/16-384 tokens)",
        licence="not stated (no licence on the model card or in github.com/shahafwa/EDJE when read)",
        build=load_official, tasks=("t2i", "i2t"),
        options={"language_model": MINILM, "vision": SIGLIP2_L384},
    ),
}
