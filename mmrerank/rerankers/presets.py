"""Published rerankers by name: `load_reranker(name_or_path, **options)`.

A name is a preset's hub id (see `PRESETS`); a local folder holding a copy of a preset's files is accepted with
`preset=` naming which one it is; a folder mmrerank saved (EDJE, MLLM, CLIP) is recognised by its config. An
unknown name is an error that lists the presets.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrerank.rerankers import folders
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.preset import Preset
from mmrerank.rerankers.rows import RerankContext, RerankerRows

# Each family's presets module: a `PRESETS` dict of `Preset`s (a module that does not exist yet is skipped).
FAMILY_MODULES = ("mmrerank.rerankers.edje.official", "mmrerank.rerankers.blip.presets",
                  "mmrerank.rerankers.mllm.presets")

EXTRA_MODULES = {"lora": "peft"}


def presets() -> dict[str, Preset]:
    """Every family's presets, by hub id."""
    out: dict[str, Preset] = {}
    for module in FAMILY_MODULES:
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # its family package is not there either
            found = None
        if found is not None:
            out.update(importlib.import_module(module).PRESETS)
    return out


# The first stage's packaged model configs (open_clip JSON files), read without importing open_clip.
FIRST_STAGE_CONFIGS = Path(__file__).resolve().parents[1] / "retrieval" / "model_configs"


def list_presets() -> dict[str, list[str]]:
    """Every preset name mmrerank knows, by family: the rerankers' hub ids (`load_reranker` builds them) and the
    first stage's packaged model configs (`first_stage`: `FirstStage.model_name` values).

    Examples:
        >>> from mmrerank import list_presets
        >>> names = list_presets()
        >>> names["first_stage"]
        ['mmrerank-tiny-resnet', 'mmrerank-tiny-vit']
        >>> "Salesforce/blip-itm-base-coco" in names["blip"]
        True
    """
    out: dict[str, list[str]] = {}
    for name, preset in presets().items():
        out.setdefault(preset.family, []).append(name)
    out["first_stage"] = [path.stem for path in FIRST_STAGE_CONFIGS.glob("*.json")]
    return {family: sorted(names) for family, names in sorted(out.items())}


def load_reranker(name_or_path: str | Path, preset: str | None = None, **options: Any) -> Reranker:
    """The reranker a preset names, built from its hub id or from a local copy; or a folder mmrerank saved.

    Args:
        name_or_path: a preset's hub id; a folder mmrerank saved (an EDJE or MLLM reranker, or a CLIP first stage,
            which then scores by cosine similarity), recognised by its config (`folders.identify`); or a local
            folder with a copy of a preset's files (then say which preset with `preset`).
        preset: the preset a local folder is a copy of (default: `name_or_path` itself).
        options: override the preset's defaults (device, batch size, prompt, ...), or go to the saved folder's
            loader (`EDJEReranker`: `store`, `device`, `bf16`; `MLLMReranker.from_pretrained`: `device`,
            `batch_size`, ...; `DualEncoderReranker`: `device`, `batch_size`).

    Raises:
        ValueError: an unknown preset, listing the known ones; a folder that is neither a save of mmrerank nor a
            copy of a preset named by `preset`, or that `preset`'s loader cannot read, saying what the folder is
            (what its config says, or its files) and which loader it needs.
        ImportError: a missing optional dependency, naming the extra to install.

    Examples:
        A folder mmrerank saved loads without a preset name (here a tiny, untrained first stage, which then
        reranks by cosine similarity; a hub id such as `"jinaai/jina-reranker-m0"` needs the network once):

        >>> import tempfile
        >>> from PIL import Image
        >>> from mmrerank import load_reranker
        >>> from mmrerank.retrieval.clip import CLIPEncoder
        >>> folder = CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tempfile.mkdtemp())
        >>> reranker = load_reranker(folder, device="cpu")
        >>> type(reranker).__name__
        'DualEncoderReranker'
        >>> images = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
        >>> sorted(reranker.rank("a red square", images).order)
        [0, 1]
    """
    known = presets()
    path = Path(name_or_path)
    kind = folders.identify(path) if path.is_dir() else None
    if kind is not None and kind.saved_by_mmrerank:
        if preset is None:
            return _load_saved(path, kind.model_type, options)
        # a save of the preset's own family (the official EDJE, converted) is for the preset's loader; others are not
        if getattr(known.get(preset), "family", None) != folders.FAMILIES[kind.model_type]:
            raise ValueError(f"{path} is {kind.description}, not a copy of preset {preset!r}'s files: "
                             f"{kind.loader_hint()} (without preset=)")
    key = preset or str(name_or_path)
    if key not in known:
        listed = "\n  ".join(sorted(known))
        if kind is not None:
            raise ValueError(f"{path} is {kind.description}, not a folder mmrerank saved; {kind.loader_hint()}. The "
                             f"presets are:\n  {listed}")
        raise ValueError(f"unknown reranker {key!r}; the presets are:\n  {listed}\n(for a local copy of a preset's "
                         "files pass preset=<its hub id>)")
    chosen = known[key]
    for extra in chosen.extras:
        if importlib.util.find_spec(EXTRA_MODULES.get(extra, extra)) is None:
            raise ImportError(f"{key} needs the {extra!r} extra: pip install 'mmrerank[{extra}]'")
    try:
        return chosen.build(str(name_or_path), **{**chosen.options, **options})
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        if kind is None:  # a hub id: the loader's own message names it
            raise
        # a missing file stays an OSError (callers catch it as one); anything else is a wrong-folder ValueError
        kind_of_error = OSError if isinstance(err, OSError) else ValueError
        raise kind_of_error(f"{path} could not be loaded as preset {key!r} ({chosen.family} family): it is "
                            f"{kind.description}; {kind.loader_hint()}. The loader said: {err}") from err


def _load_saved(folder: Path, model_type: str, options: dict[str, Any]) -> Reranker:
    """A folder mmrerank saved, by its `model_type` (the family modules are imported only when needed)."""
    if model_type == folders.EDJE:
        from mmrerank.rerankers.edje.reranker import EDJEReranker

        return EDJEReranker(folder, **options)
    if model_type == folders.MLLM:
        from mmrerank.rerankers.mllm.reranker import MLLMReranker

        return MLLMReranker.from_pretrained(folder, **options)
    from mmrerank.rerankers.dual import DualEncoderReranker

    return DualEncoderReranker(folder, **options)


@dataclass
class PresetRows(RerankerRows):
    """A published reranker's benchmark row, on the tasks its preset supports (a config names it by hub id).

    Attributes:
        name: the preset's hub id; path: a local copy of its files (default: download `name`).
        options: overrides of the preset's defaults (device, batch size, ...).
        row: the row's name in the report (default: the hub id).
    """

    name: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    row: str | None = None

    def __post_init__(self) -> None:
        known = presets()
        if self.name not in known:
            raise ValueError(f"unknown reranker {self.name!r}; the presets are: {', '.join(sorted(known))}")
        self._preset, self._reranker = known[self.name], None

    def check(self) -> None:
        from mmrerank.core.io import require_path

        if self.path:
            require_path(self.path, "PresetRows.path", "local copy", f"name the folder holding {self.name}'s files, "
                         "or leave path unset to download it")

    def rows(self, context: RerankContext) -> dict[str, Reranker]:
        if context.direction not in self._preset.tasks:
            return {}
        if self._reranker is None:
            self._reranker = load_reranker(self.path or self.name, preset=self.name,
                                           **{"device": context.device, **self.options})
        return {self.row or self.name: self._reranker}

    def row_names(self) -> list[str]:
        return [self.row or self.name]
