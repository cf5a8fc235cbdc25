"""`Report`: every number of a benchmark with the config that produced it, as JSON, Markdown and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrerank.core.io import atomic_write, atomic_write_json, atomic_write_text


@dataclass
class Report:
    """Every number of a benchmark, with the config that produced it.

    Attributes:
        title: what was benchmarked.
        rows: system name (`first stage`, `edje`, ...) -> `{"t2i/Success@1": value, ...}`.
        curves: system name -> direction -> Success@k for k = 1 .. depth.
        config: the settings that produced the numbers.
        timings: seconds per step of the pipeline.
    """

    title: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, system: str, direction: str, metrics: Mapping[str, float], curve: Sequence[float] = ()) -> None:
        self.rows.setdefault(system, {}).update({f"{direction}/{k}": v for k, v in metrics.items()})
        if curve:
            self.curves.setdefault(system, {})[direction] = list(curve)

    def to_markdown(self) -> str:
        """One table per set of columns (image-text rows and image-to-image rows measure different things)."""
        tables: dict[tuple[str, ...], list[str]] = {}
        for system, row in self.rows.items():
            tables.setdefault(tuple(row), []).append(system)
        parts = [f"### {self.title}"]
        for columns, systems in tables.items():
            lines = [f"| system | {' | '.join(columns)} |", "| --- |" + " ---: |" * len(columns)]
            lines += [f"| {s} | " + " | ".join(f"{self.rows[s][c]:.4f}" for c in columns) + " |" for s in systems]
            parts.append("\n".join(lines))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return "\n\n".join(parts) + (f"\n\nTimings: {timing}\n" if timing else "\n")

    def save(self, folder: str | Path) -> list[Path]:
        """Write `report.json`, `report.md` and `success_at_k.png` into `folder` (atomically, each)."""
        folder = Path(folder)
        atomic_write_json(folder / "report.json", {"title": self.title, "rows": self.rows, "curves": self.curves,
                                                   "config": self.config, "timings": self.timings})
        atomic_write_text(folder / "report.md", self.to_markdown())
        atomic_write(folder / "success_at_k.png", lambda tmp: self.plot(tmp))
        return [folder / "report.json", folder / "report.md", folder / "success_at_k.png"]

    def plot(self, path: Path) -> None:
        """Success@k against k, one panel per direction, one line per system."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directions = list(dict.fromkeys(d for curves in self.curves.values() for d in curves))
        if not directions:  # nothing to plot (an image-to-image-only report): still write a valid, empty figure
            directions = ["(no curves)"]
        fig, axes = plt.subplots(1, max(len(directions), 1), figsize=(5 * max(len(directions), 1), 4), squeeze=False)
        for ax, direction in zip(axes[0], directions):
            for system, curves in self.curves.items():
                if direction in curves:
                    ks = range(1, len(curves[direction]) + 1)
                    ax.plot(ks, curves[direction], marker=".", label=system)
            ax.set(xscale="log", xlabel="k", ylabel="Success@k", title=direction, ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls(**json.loads(Path(path).read_text()))
