"""Weights from outside the model class: LoRA adapters saved under older module paths, and ranking heads that a
published checkpoint stores beside the backbone.

**Older adapter layouts.** transformers (4.52, then 5) moved the text model of Qwen2-VL and Qwen2.5-VL from
`model.*` to `model.language_model.*` and the vision tower from `visual.*` to `model.visual.*`. It converts old
*model* checkpoints when loading (transformers 5.24, conversion_mapping.py, `Qwen2VLForConditionalGeneration`,
which Qwen2.5-VL reuses), but peft looks the conversion up by `model_type` and finds none for these models, so an
adapter saved in 2024 (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, e.g.
lightonai/MonoQwen2-VL-v0.1) matches no module: peft only warns "Found missing adapter keys" and the base model
scores alone. `load_lora` renames such keys with the same rules and then checks that every weight of the file
landed in the model, raising otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

# Per model_type: (pattern, replacement) on an adapter key without peft's `base_model.model.` prefix; the first
# pattern that matches is applied (peft's `key_mapping` semantics). Same rules as transformers' own for full
# checkpoints of these models (conversion_mapping.py, `Qwen2VLForConditionalGeneration`).
OLD_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_vl": ((r"^visual\.", "model.visual."), (r"^model\.(?!language_model\.|visual\.)", "model.language_model.")),
    "qwen2_5_vl": ((r"^visual\.", "model.visual."),
                   (r"^model\.(?!language_model\.|visual\.)", "model.language_model.")),
}
_PEFT_PREFIXES = ("base_model.model.", "base_model.")

# mmrerank's MLP head (`nn.Sequential(Linear, ReLU, Linear)`: keys `0.*`, `2.*`) and the names a checkpoint may give
# its two Linears: jina-reranker-m0's modeling.py keeps the Sequential (`score.0`, `score.2`); vLLM's jina_vl.py
# calls them `score.dense` and `score.out_proj` (its `score_mapper`).
HEAD_NAMES = {"0": ("0", "dense"), "2": ("2", "out_proj")}


def import_peft():
    """The optional `peft` package (LoRA adapters), or an error that names the extra to install."""
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA adapters need peft: pip install 'mmrerank[lora]'") from err
    return peft


def convert_adapter_key(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """`key` (a saved adapter key, with peft's prefix) renamed by the first rule that matches its module path."""
    prefix = next((p for p in _PEFT_PREFIXES if key.startswith(p)), "")
    path = key[len(prefix):]
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, path, count=1)
        if count:
            return prefix + renamed
    return key


def load_lora(model: nn.Module, adapter: str | Path, merge: bool = True, trainable: bool = False) -> nn.Module:
    """`model` with the peft LoRA adapter `adapter` (a folder or a hub id) applied, its keys converted from older
    layouts (see the module docstring); merged into the weights when `merge`, left trainable (a `PeftModel` to keep
    training) when `trainable`.

    Raises:
        ImportError: peft is not installed.
        ValueError: some of the adapter's weights match no module of `model` even after the conversion, or some of
            the adapter's modules got no weights (the message names them and the adapter).
    """
    peft = import_peft()
    rules = OLD_LAYOUTS.get(getattr(model.config, "model_type", ""), ())
    mapping = dict(rules) or None  # None: peft's own default (the model's `_checkpoint_conversion_mapping`, if any)
    wrapped = peft.PeftModel.from_pretrained(model, str(adapter), key_mapping=mapping, is_trainable=trainable)
    saved = {convert_adapter_key(k, rules): v for k, v in peft.load_peft_weights(str(adapter), device="cpu").items()}
    _check_adapter_landed(peft.get_peft_model_state_dict(wrapped), saved, adapter)
    return wrapped.merge_and_unload() if merge and not trainable else wrapped


def _check_adapter_landed(loaded: dict[str, Tensor], saved: dict[str, Tensor], adapter: str | Path) -> None:
    """Raise unless the model's adapter weights (`loaded`) are exactly the file's (`saved`, converted keys)."""
    unknown, missing = sorted(saved.keys() - loaded.keys()), sorted(loaded.keys() - saved.keys())
    if unknown or missing:
        raise ValueError(f"the LoRA adapter {adapter} does not fit the model: {len(unknown)} of its weights match no "
                         f"module (e.g. {unknown[:3]}) and {len(missing)} adapter weights of the model are not in it "
                         f"(e.g. {missing[:3]}); it was saved for another model or in a key layout mmrerank does not "
                         "convert")
    differing = [k for k, v in saved.items() if not torch.equal(loaded[k].detach().cpu().to(v.dtype), v)]
    if differing:
        raise ValueError(f"the LoRA adapter {adapter}: {len(differing)} weights did not load (e.g. {differing[:3]})")


def checkpoint_tensors(name_or_path: str | Path, prefix: str) -> dict[str, Tensor]:
    """The tensors whose key starts with `prefix` in a model's safetensors checkpoint, keyed without the prefix.

    Args:
        name_or_path: a local folder with `*.safetensors` files, or a hub id (its `model.safetensors`, or the shards
            that `model.safetensors.index.json` lists for keys under `prefix`).
        prefix: e.g. `"score."`.

    Raises:
        FileNotFoundError: a local folder without safetensors files.
    """
    from safetensors import safe_open

    out: dict[str, Tensor] = {}
    for file in _safetensors_files(name_or_path, prefix):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = handle.get_tensor(key)
    return out


def _safetensors_files(name_or_path: str | Path, prefix: str) -> list[Path]:
    folder = Path(name_or_path)
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file in {folder}")
        return files
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo = str(name_or_path)
    try:
        index = json.loads(Path(hf_hub_download(repo, "model.safetensors.index.json")).read_text())
    except EntryNotFoundError:
        return [Path(hf_hub_download(repo, "model.safetensors"))]
    shards = sorted({shard for key, shard in index["weight_map"].items() if key.startswith(prefix)})
    return [Path(hf_hub_download(repo, shard)) for shard in shards]


def mlp_head_state(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """A checkpoint's MLP head (`tensors`, keyed without their prefix) renamed to mmrerank's head keys.

    Raises:
        ValueError: a Linear of the head is missing (the message names the keys found and `source`).
    """
    state = {}
    for ours, names in HEAD_NAMES.items():
        name = next((n for n in names if f"{n}.weight" in tensors and f"{n}.bias" in tensors), None)
        if name is None:
            raise ValueError(f"{source} has no ranking head Linear {' / '.join(names)} (.weight and .bias); its keys "
                             f"under the head prefix are {sorted(tensors)}")
        state[f"{ours}.weight"], state[f"{ours}.bias"] = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
    return state


def load_checkpoint_head(head: nn.Module, name_or_path: str | Path, prefix: str) -> None:
    """Load the MLP head that the checkpoint `name_or_path` stores under `prefix` into `head` (shapes checked).

    Raises:
        ValueError: no head under `prefix`, or one whose shapes do not fit `head` (both name the checkpoint).
    """
    source = f"the checkpoint {name_or_path} (prefix {prefix!r})"
    state = mlp_head_state(checkpoint_tensors(name_or_path, prefix), source)
    expected = head.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} for {tuple(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{source}: the head's shapes do not fit the model's hidden size: {wrong}")
    head.load_state_dict(state)
