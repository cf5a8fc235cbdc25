"""Published rerankers by name: `load_reranker(name_or_path, **options)`.

A name is a preset's hub id (see `PRESETS`); a local folder holding a copy of a preset's files is accepted with
`preset=` naming which one it is. An unknown name is an error that lists the presets.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.preset import Preset
from mmrerank.rerankers.spec import RerankContext, RerankerSpec

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


def load_reranker(name_or_path: str | Path, preset: str | None = None, **options: Any) -> Reranker:
    """The reranker a preset names, built from its hub id or from a local copy.

    Args:
        name_or_path: a preset's hub id, or a local folder with a copy of its files (then say which with `preset`).
        preset: the preset a local folder is a copy of (default: `name_or_path` itself).
        options: override the preset's defaults (device, batch size, prompt, ...).

    Raises:
        ValueError: an unknown preset, listing the known ones.
        ImportError: a missing optional dependency, naming the extra to install.
    """
    known = presets()
    key = preset or str(name_or_path)
    if key not in known:
        listed = "\n  ".join(sorted(known))
        raise ValueError(f"unknown reranker {key!r}; the presets are:\n  {listed}\n(for a local copy of a preset's "
                         "files pass preset=<its hub id>)")
    chosen = known[key]
    for extra in chosen.extras:
        if importlib.util.find_spec(EXTRA_MODULES.get(extra, extra)) is None:
            raise ImportError(f"{key} needs the {extra!r} extra: pip install 'mmrerank[{extra}]'")
    return chosen.build(str(name_or_path), **{**chosen.options, **options})


@dataclass
class PresetRows(RerankerSpec):
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
