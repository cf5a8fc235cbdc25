"""What a model folder is, from its files: mmrerank's own saves (EDJE, MLLM, CLIP) and the hub's layouts.

Every folder mmrerank saves records `model_type` (`MODEL_TYPES`) and `mmrerank_version` in its own config file
(`config.json` for EDJE and CLIP, `reranker.json` for MLLM, whose `config.json` is the transformers model's).
Folders saved before that are recognised by their files where that is unambiguous. `load_reranker(folder)` and the
family loaders use `identify` to dispatch and to say, when a folder reaches the wrong loader, what it is and which
loader it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

EDJE, MLLM, CLIP = "mmrerank-edje", "mmrerank-mllm", "mmrerank-clip"
MODEL_TYPES = {
    EDJE: "an EDJE reranker saved by mmrerank (EDJE.save_pretrained, `mmrerank fit` with configs/edje)",
    MLLM: "an MLLM reranker saved by mmrerank (MLLMReranker.save_pretrained, `mmrerank fit` with configs/mllm)",
    CLIP: "a CLIP dual encoder saved by mmrerank (CLIPEncoder.save_pretrained, a first stage)",
}
LOADERS = {
    EDJE: "load_reranker(folder), or EDJEReranker(folder)",
    MLLM: "load_reranker(folder), or MLLMReranker.from_pretrained(folder)",
    CLIP: "load_reranker(folder) (scores by cosine similarity), or CLIPEncoder.from_pretrained(folder)",
}
FAMILIES = {EDJE: "edje", MLLM: "mllm", CLIP: "clip"}  # the preset family each is a save of
# transformers model types of the hub presets, by family (a local copy of their files)
HUB_FAMILIES = {"blip": "blip", "blip-2": "blip", "qwen2_vl": "mllm", "qwen2_5_vl": "mllm", "qwen3_vl": "mllm"}


def package_version() -> str:
    try:
        return metadata.version("mmrerank")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def saved_marker(model_type: str) -> dict[str, str]:
    """What every folder mmrerank saves writes first in its config: `model_type` and `mmrerank_version`."""
    return {"model_type": model_type, "mmrerank_version": package_version()}


@dataclass
class FolderKind:
    """What `identify` found.

    Attributes:
        model_type: one of `MODEL_TYPES` for an mmrerank folder, the transformers `model_type` of another
            `config.json`, or None.
        description: the folder in words, with the evidence (what its config says, or its files).
        config: the parsed config file (empty when there is none).
    """

    model_type: str | None
    description: str
    config: dict[str, Any]

    @property
    def saved_by_mmrerank(self) -> bool:
        return self.model_type in MODEL_TYPES

    def loader_hint(self) -> str:
        """Which loader takes this folder."""
        if self.saved_by_mmrerank:
            return f"load it with {LOADERS[self.model_type]}"
        family = HUB_FAMILIES.get(self.model_type or "")
        if family is not None:
            return f"load it with load_reranker(folder, preset=<the {family} preset it is a copy of>)"
        if self.config.get("adapter") == "official":
            return "load it with load_reranker(folder, preset='shahafw/edje-vl-image-retrieval-reranker')"
        if not self.config:
            return ("a local copy of a preset holds its hub repository's files (config.json and the weights among "
                    "them); load_reranker(folder) without preset= takes a folder mmrerank saved")
        return "load_reranker(folder) takes a folder mmrerank saved, or a local copy of a preset's files with preset="


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def identify(folder: str | Path) -> FolderKind:
    """What `folder` holds, read from its config files (never from its weights)."""
    folder = Path(folder)
    settings = _read_json(folder / "reranker.json")
    if settings is not None:
        version = settings.get("mmrerank_version", "before model_type was recorded")
        return FolderKind(MLLM, f"{MODEL_TYPES[MLLM]} (reranker.json; mmrerank {version})", settings)
    config = _read_json(folder / "config.json")
    if config is None:
        files = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        what = "not a folder" if not folder.is_dir() else "a folder without config.json" if not (
            folder / "config.json").exists() else "a folder whose config.json is not a JSON object"
        return FolderKind(None, f"{what} (files: {files})", {})
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        version = config.get("mmrerank_version", "unknown")
        return FolderKind(model_type, f"{MODEL_TYPES[model_type]} (config.json model_type {model_type!r}, "
                                      f"mmrerank {version})", config)
    if model_type is None and {"joint", "vision", "num_image_tokens"} <= set(config):
        old = "an older save without model_type: config.json has 'joint', 'vision', 'num_image_tokens'"
        return FolderKind(EDJE, f"{MODEL_TYPES[EDJE]} ({old})", config)
    if model_type is None and "model_name" in config and (folder / "model.safetensors").is_file() and len(
            set(config) - {"model_name", "words"}) == 0:
        return FolderKind(CLIP, f"{MODEL_TYPES[CLIP]} (an older save without model_type: config.json has only "
                                f"'model_name' {config['model_name']!r})", config)
    if model_type is not None:
        return FolderKind(model_type, f"a transformers {model_type!r} model (config.json model_type {model_type!r})",
                          config)
    return FolderKind(None, f"a folder whose config.json has no model_type (keys: {sorted(config)[:8]})", config)
