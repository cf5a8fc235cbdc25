"""`Report`: every number of a benchmark with the config that produced it, as JSON, Markdown and PNG plots."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrerank.core.io import atomic_write, atomic_write_json, atomic_write_text

DIRECTIONS = ("t2i", "i2t", "pages", "i2i", "vidore")  # the first part of every report column


@dataclass
class Paper:
    """A paper's numbers for the report's rows, printed beside the measured ones (`benchmark(paper=...)`).

    ```yaml
    paper:
      source: "LAVIS docs/benchmark.rst, BLIP retrieval (ViT-B, CapFilt-L), COCO 5k test"
      rows:
        "Salesforce/blip-itm-base-coco (LAVIS ITM + ITC)": {i2t/Success@1: 0.820, t2i/Success@1: 0.645}
    ```

    Attributes:
        source: where the numbers are from (document, table, model).
        rows: the report's row name -> the report's column name (`<direction>/<measure>`) -> the paper's value, as a
            fraction like the report's (82.0 % is 0.820).

    Raises:
        ValueError: an empty source or rows, a column without a known direction, a value outside [0, 1] (a
            percentage, most likely).
    """

    source: str
    rows: dict[str, dict[str, float]]

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("paper.source is empty: say where the numbers are from")
        if not self.rows or not all(self.rows.values()):
            raise ValueError("paper.rows needs at least one row with at least one measure")
        for row, measures in self.rows.items():
            for column, value in measures.items():
                if column.split("/")[0] not in DIRECTIONS or "/" not in column:
                    raise ValueError(f"paper.rows[{row!r}]: column {column!r} is not <direction>/<measure> with a "
                                     f"direction in {DIRECTIONS} (e.g. 't2i/Success@1')")
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"paper.rows[{row!r}][{column!r}] = {value}: give values as fractions like the "
                                     f"report's ({value / 100:g} for {value:g} %)")

    def missing(self, rows: Mapping[str, Mapping[str, float]]) -> list[str]:
        """The paper's rows and columns that `rows` (a report's, or the names a config will give) lacks, in words,
        each naming the known ones."""
        out = []
        for row, measures in self.rows.items():
            if row not in rows:
                out.append(f"row {row!r} is not among the rows {sorted(rows)}")
                continue
            unknown = [c for c in measures if c not in rows[row]]
            if unknown:
                out.append(f"row {row!r}: columns {unknown} are not among {sorted(rows[row])}")
        return out


@dataclass
class Report:
    """Every number of a benchmark, with the config that produced it.

    Attributes:
        title: what was benchmarked.
        rows: system name (`first stage`, `edje`, ...) -> `{"t2i/Success@1": value, ...}`.
        curves: system name -> direction -> Success@k for k = 1 .. depth.
        config: the settings that produced the numbers.
        timings: seconds per step of the pipeline.
        baselines: reranker row -> the first-stage row it reranks (a row below its first stage is called out).
        paper: a paper's numbers for some rows (`Paper`'s fields), printed beside the measured ones.
    """

    title: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    paper: dict[str, Any] | None = None

    def add(self, system: str, direction: str, metrics: Mapping[str, float], curve: Sequence[float] = ()) -> None:
        self.rows.setdefault(system, {}).update({f"{direction}/{k}": v for k, v in metrics.items()})
        if curve:
            self.curves.setdefault(system, {})[direction] = list(curve)

    def tables(self) -> dict[tuple[str, ...], list[str]]:
        """Rows grouped by their columns: one table per benchmark (image-text, pages, image-to-image)."""
        tables: dict[tuple[str, ...], list[str]] = {}
        for system, row in self.rows.items():
            tables.setdefault(tuple(row), []).append(system)
        return tables

    @staticmethod
    def headline(columns: Sequence[str]) -> list[str]:
        """The columns at rank 1 and the rank-free ones (`t2i/Success@1`, `pages/micro/R@1`, `i2i/hard/mAP`)."""
        return [c for c in columns if int((re.search(r"@(\d+)$", c) or ["", "1"])[1]) == 1]

    def shortfalls(self) -> list[str]:
        """Reranker rows that do not beat their first stage on a headline column, in words."""
        out = []
        for system, base in self.baselines.items():
            if system not in self.rows or base not in self.rows:
                continue
            for column in self.headline(list(self.rows[system])):
                mine, theirs = self.rows[system][column], self.rows[base].get(column)
                if theirs is not None and mine <= theirs:
                    out.append(f"{system}: {column} {mine:.4f}, not above {base}'s {theirs:.4f}")
        return out

    def against_paper(self) -> list[tuple[str, str, float, float | None]]:
        """`(row, column, paper's value, measured value or None)` for each of the paper's numbers."""
        if self.paper is None:
            return []
        return [(row, column, value, self.rows.get(row, {}).get(column))
                for row, measures in self.paper["rows"].items() for column, value in measures.items()]

    def paper_table(self) -> str:
        """The table "Against the paper (<source>)": row, measure, paper, measured, difference (measured - paper)."""
        lines = [f"**Against the paper ({self.paper['source']})**", "",
                 "| row | measure | paper | measured | difference |", "| --- | --- | ---: | ---: | ---: |"]
        for row, column, paper, measured in self.against_paper():
            got, diff = ("not measured", "") if measured is None else (f"{measured:.4f}", f"{measured - paper:+.4f}")
            lines.append(f"| {row} | {column} | {paper:.4f} | {got} | {diff} |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """One table per benchmark, the paper's numbers beside the measured ones, the rows that do not beat their
        first stage, then the timings."""
        parts = [f"### {self.title}"]
        for columns, systems in self.tables().items():
            lines = [f"| system | {' | '.join(columns)} |", "| --- |" + " ---: |" * len(columns)]
            lines += [f"| {s} | " + " | ".join(f"{self.rows[s][c]:.4f}" for c in columns) + " |" for s in systems]
            parts.append("\n".join(lines))
        if self.paper is not None:
            parts.append(self.paper_table())
        if self.baselines:
            shortfalls = self.shortfalls()
            parts.append("**Rerankers that do not beat their first stage:** " + "; ".join(shortfalls) if shortfalls
                         else "Every reranker row beats its first stage on each headline column.")
        if self.timings:
            lines = ["| step | seconds |", "| --- | ---: |"]
            lines += [f"| {k} | {v:.1f} |" for k, v in self.timings.items()]
            parts.append("Timings:\n\n" + "\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def save(self, folder: str | Path) -> list[Path]:
        """Write `report.json`, `report.md`, `success_at_k.png` (curves) and `summary.png` into `folder` (atomically,
        each)."""
        folder = Path(folder)
        atomic_write_json(folder / "report.json", {"title": self.title, "rows": self.rows, "curves": self.curves,
                                                   "config": self.config, "timings": self.timings,
                                                   "baselines": self.baselines, "paper": self.paper})
        atomic_write_text(folder / "report.md", self.to_markdown())
        atomic_write(folder / "success_at_k.png", lambda tmp: self.plot(tmp))
        atomic_write(folder / "summary.png", lambda tmp: self.plot_summary(tmp))
        return [folder / name for name in ("report.json", "report.md", "success_at_k.png", "summary.png")]

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
            measure = "recall@k" if direction == "pages" else "Success@k"  # one gold page: the same quantity
            ax.set(xscale="log", xlabel="k", ylabel=measure, title=direction, ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)

    def plot_summary(self, path: Path) -> None:
        """One panel per benchmark: each system's headline columns as bars, the first stage first."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        tables = list(self.tables().items()) or [((), [])]
        fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
        for ax, (columns, systems) in zip(axes[0], tables):
            heads = self.headline(columns) if systems else []
            width = 0.8 / max(len(systems), 1)
            for i, system in enumerate(systems):
                values = [self.rows[system][c] for c in heads]
                ax.bar(np.arange(len(heads)) + i * width, values, width, label=system)
            ax.set_xticks(np.arange(len(heads)) + 0.4 - width / 2, heads)
            ax.set(ylim=(0, 1.05) if all(v <= 1 for s in systems for v in self.rows[s].values()) else None)
            ax.grid(axis="y", alpha=0.3)
            if systems:
                ax.legend(fontsize="small")
        fig.suptitle(f"{self.title}: first stage vs rerankers")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
        plt.close(fig)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls(**json.loads(Path(path).read_text()))
