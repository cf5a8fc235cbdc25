"""The scaling report: from a results JSONL to report.json, report.md and plots, top to bottom in `scaling_report`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmrerank.core.io import atomic_write_json, atomic_write_text
from mmrerank.scaling.forecast import (
    Forecast,
    ForecastConfig,
    JointForecast,
    curves,
    data_laws,
    joint_law,
    metric_names,
    model_law,
    scales_predictably,
)
from mmrerank.scaling.plots import plot_data_laws, plot_model_law, slug
from mmrerank.scaling.results import LOSSES, read_evaluations


@dataclass
class ScalingReport:
    """Every fit of the report, per training loss and metric.

    Attributes:
        config: the forecast settings; losses, metrics: what was fitted, in order.
        model: (loss, metric) -> model-law forecast; data: (loss, metric) -> one data-law forecast per size;
        joint: (loss, metric) -> joint law; predictable: metric -> loss -> True/False/None (not fitted).
    """

    config: ForecastConfig
    losses: list[str]
    metrics: list[str]
    model: dict[tuple[str, str], Forecast]
    data: dict[tuple[str, str], list[Forecast]]
    joint: dict[tuple[str, str], JointForecast]
    predictable: dict[str, dict[str, bool | None]]

    def to_dict(self) -> dict[str, Any]:
        def nest(table: dict, convert) -> dict:
            return {loss: {m: convert(table[loss, m]) for m in self.metrics} for loss in self.losses}

        return {"config": asdict(self.config), "losses": self.losses, "metrics": self.metrics,
                "predictable": self.predictable, "model_law": nest(self.model, lambda r: r.to_dict()),
                "data_law": nest(self.data, lambda rs: [r.to_dict() for r in rs]),
                "joint_law": nest(self.joint, lambda r: r.to_dict())}


def build_report(results_path: str | Path, cfg: ForecastConfig | None = None) -> ScalingReport:
    """Fit every law of the report on a results JSONL (see `mmrerank.scaling.results` for its schema)."""
    cfg = cfg or ForecastConfig()
    evaluations = read_evaluations(results_path)
    if not evaluations:
        raise ValueError(f"{results_path} holds no evaluations")
    metrics = cfg.metrics or metric_names(evaluations)
    losses = [loss for loss in LOSSES if any(e.loss == loss for e in evaluations)]
    model, data, joint = {}, {}, {}
    for loss in losses:
        loss_curves = curves(evaluations, loss, metrics)
        runs = curves(evaluations, loss, metrics, every_run=True)
        for metric in metrics:
            model[loss, metric] = model_law(loss_curves, metric, cfg)
            data[loss, metric] = data_laws(loss_curves, metric, cfg)
            joint[loss, metric] = joint_law(runs, metric, cfg)
    predictable = {m: {loss: scales_predictably(model[loss, m], cfg) for loss in losses} for m in metrics}
    return ScalingReport(cfg, losses, metrics, model, data, joint, predictable)


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def forecast_cells(row: dict[str, Any]) -> str:
    """actual | forecast | interval | abs err | inside, for one held-out point."""
    low, high = row["interval"]
    return (f"{row['actual']:.4f} | {row['predicted']:.4f} | [{low:.4f}, {high:.4f}] | {row['abs_error']:.4f} | "
            f"{'yes' if row['inside'] else 'no'}")


def model_table(report: ScalingReport) -> list[str]:
    lines = ["| loss | metric | fit R² | held out | actual | forecast | interval | abs err | inside | Kaplan | "
             "Kaplan abs err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (loss, metric), result in report.model.items():
        if result.law is None:
            lines.append(f"| {loss} | {metric} | not fitted: {result.skipped} |" + " |" * 8)
        for row in result.rows():
            lines.append(f"| {loss} | {metric} | {result.law.r2:.3f} | {row['held_out']} | {forecast_cells(row)} | "
                         f"{fmt(row.get('kaplan_predicted'))} | {fmt(row.get('kaplan_abs_error'))} |")
    return lines


def predictable_table(report: ScalingReport) -> list[str]:
    lines = ["| metric | " + " | ".join(report.losses) + " | verdict |", "|---|" + "---|" * (len(report.losses) + 1)]
    for metric, by_loss in report.predictable.items():
        marks = ["-" if v is None else ("yes" if v else "no") for v in by_loss.values()]
        fitted = [v for v in by_loss.values() if v is not None]
        verdict = "not fitted" if not fitted else "predictable" if all(fitted) else "partly" if any(fitted) else "no"
        lines.append(f"| {metric} | " + " | ".join(marks) + f" | {verdict} |")
    return lines


def data_table(report: ScalingReport) -> list[str]:
    lines = ["| loss | metric | size | fit R² | held-out examples | actual | forecast | interval | abs err | inside |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (loss, metric), results in report.data.items():
        for result in results:
            for row in result.rows():
                lines.append(f"| {loss} | {metric} | {result.label} | {result.law.r2:.3f} | {row['held_out']} | "
                             f"{forecast_cells(row)} |")
    return lines


def joint_tables(report: ScalingReport) -> list[str]:
    fits = ["| loss | metric | R² (all points) | R² out of sample | MAE out of sample | a | b | c | d | e |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    alloc = ["| loss | metric | budget C = N x D | params N | examples D | predicted | note |",
             "|---|---|---|---|---|---|---|"]
    for (loss, metric), result in report.joint.items():
        if result.law is None:
            continue
        p = result.law.params
        fits.append(f"| {loss} | {metric} | {result.law.r2:.3f} | {fmt(result.r2_out_of_sample, 3)} | "
                    f"{fmt(result.mae_out_of_sample)} | {p['a']:.4g} | {p['b']:.4g} | {p['c']:.3f} | "
                    f"{p['d_coef']:.4g} | {p['e']:.3f} |")
        for row in result.allocation:
            note = "optimum at grid edge" if row["at_edge"] else ""
            alloc.append(f"| {loss} | {metric} | {row['budget']:.3g} | {row['params']:.3g} | {row['examples']:.3g} | "
                         f"{row['predicted']:.4f} | {note} |")
    return fits + ["", "Compute allocation (the joint law's best split of each budget; N searched from a tenth of "
                       "the smallest to 100x the largest size):", ""] + alloc


def to_markdown(report: ScalingReport) -> str:
    cfg = report.config
    level = f"{cfg.level:.0%}"
    parts = [
        "# Scaling laws", "",
        f"Model law `y = a + b N^c` on the final checkpoint of every size but the {cfg.holdout} largest; data law "
        f"`y = a + b D^c` per size on every checkpoint but the last {cfg.holdout_checkpoints} (of its largest "
        "budget); joint law `y = a + b N^c + d D^e` on every checkpoint of every run, checked out of sample on the "
        f"held-out sizes (fitted without them). Intervals: bootstrap {level} ({cfg.resamples} resamples for the "
        f"model law, {cfg.data_resamples} per data law). Kaplan: `(A/N)^alpha + delta` (losses) or "
        "`delta - (A/N)^alpha` (metrics), fitted as a line in log-log space of the gap. With few fitted points the "
        "bootstrap intervals run narrow (a resample with only 3 distinct sizes is fitted exactly), so read "
        "\"inside\" with that in mind.", "",
        "## Which metrics scale predictably", "",
        f"Predictable for a loss: model-law R² >= {cfg.r2_min} and every held-out forecast within "
        f"{cfg.max_rel_error:.0%} of the actual value.", "",
        *predictable_table(report), "",
        "## Model law: forecasts of the held-out sizes", "", *model_table(report), "",
        "## Data law: forecasts of the held-out checkpoints", "", *data_table(report), "",
        "## Joint law", "", *joint_tables(report), "",
    ]
    return "\n".join(parts)


def write_report(report: ScalingReport, output_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and two PNGs per metric into `output_dir`; returns the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    atomic_write_json(written[0], report.to_dict())
    atomic_write_text(written[1], to_markdown(report))
    for metric in report.metrics:
        model_png, data_png = out / f"model_law_{slug(metric)}.png", out / f"data_law_{slug(metric)}.png"
        plot_model_law(metric, {loss: report.model[loss, metric] for loss in report.losses}, model_png)
        plot_data_laws(metric, {loss: report.data[loss, metric] for loss in report.losses}, data_png)
        written += [model_png, data_png]
    return written


def scaling_report(results_path: str | Path, output_dir: str | Path,
                   cfg: ForecastConfig | None = None) -> ScalingReport:
    """Fit every law on a results JSONL and write the report files into `output_dir`."""
    report = build_report(results_path, cfg)
    write_report(report, output_dir)
    return report
