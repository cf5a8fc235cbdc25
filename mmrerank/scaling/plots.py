"""PNG plots of scaling forecasts (matplotlib's Agg canvas, no pyplot state, atomic writes)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmrerank.core.io import atomic_write
from mmrerank.scaling.forecast import Forecast


def slug(name: str) -> str:
    """A file-name-safe form of a metric name ("nDCG@10" -> "nDCG_10")."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")


def panels(count: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.5 * count, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, count, i + 1) for i in range(count)]


def save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def draw_forecast(ax, result: Forecast, color: str, label: str, band: bool) -> None:
    """Fitted points, held-out points (stars), the fitted curve over both, and the bootstrap band."""
    ax.plot(result.x_fit, result.y_fit, "o", color=color, label=label)
    ax.plot(result.x_out, result.y_out, "*", color=color, markersize=11, markeredgecolor="black")
    if result.law is None:
        return
    xs = np.geomspace(min(result.x_fit.min(), result.x_out.min()) / 1.5,
                      max(result.x_fit.max(), result.x_out.max()) * 1.5, 100)
    ax.plot(xs, result.law.predict(xs), "-", color=color, linewidth=1.2)
    if band:
        low, high = result.boot.predict_interval(xs)
        ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        # a band that diverges far from the data (few sizes, extrapolation) must not squash the points into a line
        ys = np.concatenate([result.y_fit, result.y_out])
        pad = max(float(np.ptp(ys)), 0.02 * max(float(np.abs(ys).max()), 1e-9))
        ax.set_ylim(float(ys.min()) - pad, float(ys.max()) + pad)
    if result.kaplan is not None and band:
        ax.plot(xs, result.kaplan.predict(xs), ":", color="gray", linewidth=1.0, label="Kaplan form")


def plot_model_law(metric: str, by_loss: dict[str, Forecast], path: Path,
                   first_stage: dict[str, float] | None = None) -> None:
    """One panel per training loss: the metric at the final checkpoint against parameters (log x), with the first
    stage's value on the same candidates as a dashed line where `first_stage` (loss -> value) has one."""
    fig, axes = panels(len(by_loss))
    for ax, (loss, result) in zip(axes, by_loss.items()):
        draw_forecast(ax, result, "C0", "fitted sizes", band=True)
        level = (first_stage or {}).get(loss)
        if level is not None:
            ax.axhline(level, color="black", linestyle="--", linewidth=1.0, label="first stage")
            low, high = ax.get_ylim()  # the line stays in view however far the points are from it
            pad = 0.05 * (high - low)
            ax.set_ylim(min(low, level - pad), max(high, level + pad))
        ax.set(xscale="log", xlabel="non-embedding parameters", ylabel=metric,
               title=f"{loss}: model law" + (f" (R² {result.law.r2:.3f})" if result.law else " (not fitted)"))
        ax.legend(fontsize=7, title="★ held out", title_fontsize=7)
    save(fig, path)


def plot_data_laws(metric: str, by_loss: dict[str, list[Forecast]], path: Path) -> None:
    """One panel per training loss: the metric against examples seen, one curve per size."""
    fig, axes = panels(len(by_loss))
    for ax, (loss, results) in zip(axes, by_loss.items()):
        for i, result in enumerate(results):
            draw_forecast(ax, result, f"C{i % 10}", result.label, band=False)
        ax.set(xscale="log", xlabel="training examples seen", ylabel=metric, title=f"{loss}: data law per size")
        ax.legend(fontsize=7, title="★ held out", title_fontsize=7)
    save(fig, path)
