"""The scaling report: from a results JSONL to report.json, report.md and plots, top to bottom in `scaling_report`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrerank.core.io import atomic_write_json, atomic_write_text
from mmrerank.scaling.forecast import (
    Forecast,
    ForecastConfig,
    JointForecast,
    curves,
    data_laws,
    joint_law,
    latest_run,
    metric_names,
    model_law,
    scales_predictably,
    unique_checkpoints,
)
from mmrerank.scaling.plots import plot_data_laws, plot_model_law, slug
from mmrerank.scaling.results import LOSSES, Evaluation, read_evaluations
from mmrerank.scaling.statistics import FTest


@dataclass
class ScalingReport:
    """Every fit of the report, per training loss and metric.

    Attributes:
        config: the forecast settings; losses, metrics: what was fitted, in order.
        model: (loss, metric) -> model-law forecast; data: (loss, metric) -> one data-law forecast per size;
        joint: (loss, metric) -> joint law; predictable: metric -> loss -> True/False/None (not fitted).
        references: one row per loss and size (`against_references`): its final metrics beside the rankings it
            was compared with on the same candidates (the first stage it reranks, the reranker unfused).
    """

    config: ForecastConfig
    losses: list[str]
    metrics: list[str]
    model: dict[tuple[str, str], Forecast]
    data: dict[tuple[str, str], list[Forecast]]
    joint: dict[tuple[str, str], JointForecast]
    predictable: dict[str, dict[str, bool | None]]
    references: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def nest(table: dict, convert) -> dict:
            return {loss: {m: convert(table[loss, m]) for m in self.metrics} for loss in self.losses}

        return {"config": asdict(self.config), "losses": self.losses, "metrics": self.metrics,
                "predictable": self.predictable, "model_law": nest(self.model, lambda r: r.to_dict()),
                "data_law": nest(self.data, lambda rs: [r.to_dict() for r in rs]),
                "joint_law": nest(self.joint, lambda r: r.to_dict()), "references": self.references}


SHOWN = ("nDCG@10", "AP")  # the metrics the report sets against the references (the issue's headline pair)


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
    return ScalingReport(cfg, losses, metrics, model, data, joint, predictable,
                         against_references(evaluations, losses, [m for m in SHOWN if m in metrics] or metrics[:2]))


def seed_mean(tables: list[dict[str, float]], metric: str) -> float:
    """Mean of `metric` over per-seed metric tables (NaN where a seed lacks it)."""
    return float(np.mean([t.get(metric, np.nan) for t in tables]))


def against_references(evaluations: list[Evaluation], losses: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Per loss and size, the final checkpoint's seed means of `metrics` beside each reference's (same seeds).

    Each row: loss, size, params, seeds, `values` metric -> mean, `references` name -> metric -> mean, and `above`
    metric -> whether the mean beats the first stage's (None without a first-stage reference).
    """
    rows = []
    for loss in losses:
        finals: dict[str, list[Evaluation]] = defaultdict(list)
        for e in latest_run(unique_checkpoints([e for e in evaluations if e.loss == loss])):
            finals[e.size].append(e)
        for size, evs in finals.items():
            last = max(e.examples for e in evs)
            evs = [e for e in evs if e.examples == last]
            names = sorted({name for e in evs for name in (e.references or {})})
            values = {m: seed_mean([e.metrics for e in evs], m) for m in metrics}
            refs = {n: {m: seed_mean([(e.references or {}).get(n, {}) for e in evs], m) for m in metrics}
                    for n in names}
            base = refs.get("first stage")
            above = {m: None if base is None else bool(values[m] > base[m]) for m in metrics}
            rows.append({"loss": loss, "size": size, "params": int(np.median([e.params for e in evs])),
                         "seeds": len(evs), "examples": last, "values": values, "references": refs, "above": above})
    return sorted(rows, key=lambda r: (losses.index(r["loss"]), r["params"]))


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def yes_no(flag: bool | None) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def interval_cells(interval: list[float] | None, inside: bool | None) -> str:
    """interval | inside, or "-" cells when the interval does not exist."""
    return "- | -" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}] | {yes_no(inside)}"


FORECAST_HEADER = "actual | forecast | abs err | bootstrap interval | inside | delta interval | inside"


def forecast_cells(row: dict[str, Any]) -> str:
    """The FORECAST_HEADER cells of one held-out point."""
    return (f"{row['actual']:.4f} | {row['predicted']:.4f} | {row['abs_error']:.4f} | "
            f"{interval_cells(row['interval'], row['inside'])} | "
            f"{interval_cells(row['delta_interval'], row['delta_inside'])}")


def model_table(report: ScalingReport) -> list[str]:
    lines = [f"| loss | metric | fit R² | held out | seeds | {FORECAST_HEADER} | Kaplan | Kaplan abs err | note |",
             "|---" * 15 + "|"]
    for (loss, metric), result in report.model.items():
        if result.law is None:
            lines.append(f"| {loss} | {metric} | not fitted: {result.skipped} |" + " |" * 12)
        for row in result.rows():
            lines.append(f"| {loss} | {metric} | {result.law.r2:.3f} | {row['held_out']} | {row['n_seeds']} | "
                         f"{forecast_cells(row)} | {fmt(row.get('kaplan_predicted'))} | "
                         f"{fmt(row.get('kaplan_abs_error'))} | {result.trust or ''} |")
    return lines


def f_cells(test: FTest) -> str:
    """F (df) | p of one F-test, or why it has no value."""
    if test.f is None:
        return f"- | - ({test.reason})"
    return f"{test.f:.4g} ({test.df_num}, {test.df_den}) | {test.p_value:.3g}"


def seeds_cell(result: Forecast) -> str:
    counts = np.sum(np.isfinite(result.seeds_fit), axis=1)
    return str(counts.min()) if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"


def statistics_table(report: ScalingReport) -> list[str]:
    lines = ["| loss | metric | points | seeds per point | R² | adjusted R² | F vs constant (df) | p | "
             "F vs line in log N (df) | p | delta method | bootstrap |", "|---" * 12 + "|"]
    for (loss, metric), result in report.model.items():
        if result.law is None:
            continue
        stats = result.statistics
        lines.append(f"| {loss} | {metric} | {len(result.y_fit)} | {seeds_cell(result)} | {result.law.r2:.4f} | "
                     f"{fmt(stats['adjusted_r2'])} | {f_cells(stats['f_vs_constant'])} | "
                     f"{f_cells(stats['f_vs_loglinear'])} | {result.delta_reason or 'ok'} | "
                     f"{result.boot.method} resampled |")
    return lines


def distance_table(report: ScalingReport) -> list[str]:
    lines = ["| loss | metric | sizes held out | fitted up to N | forecast N | decades | actual | forecast | abs err |",
             "|---" * 9 + "|"]
    for (loss, metric), result in report.model.items():
        for row in result.distance:
            lines.append(f"| {loss} | {metric} | {row['held_out']} | {row['fit_max_x']:.3g} | {row['x']:.3g} | "
                         f"{row['decades']:.2f} | {row['actual']:.4f} | {row['predicted']:.4f} | "
                         f"{row['abs_error']:.4f} |")
    return lines


def calibration_table(report: ScalingReport) -> list[str]:
    lines = ["| loss | metric | noise sd per seed | from | seeds | laws | bootstrap coverage | delta coverage |",
             "|---" * 8 + "|"]
    for (loss, metric), result in report.model.items():
        cov = result.calibration
        if cov is None:
            continue
        boot = "-" if cov.bootstrap is None else f"{cov.bootstrap:.2f} ({cov.method}, of {cov.n_bootstrap})"
        delta = "-" if cov.delta is None else f"{cov.delta:.2f} (of {cov.n_delta})"
        lines.append(f"| {loss} | {metric} | {cov.noise_sd:.3g} | {result.noise_source} | {cov.n_seeds} | "
                     f"{cov.n_laws} | {boot} | {delta} |")
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
    lines = [f"| loss | metric | size | fit R² | held-out examples | {FORECAST_HEADER} |", "|---" * 12 + "|"]
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


def first_stage_levels(report: ScalingReport, metric: str) -> dict[str, float]:
    """loss -> the first stage's `metric` on the candidates its points rerank (the mean over sizes: one task gives one
    value); empty where the references do not hold it."""
    levels: dict[str, list[float]] = {}
    for row in report.references:
        value = row["references"].get("first stage", {}).get(metric)
        if value is not None:
            levels.setdefault(row["loss"], []).append(value)
    return {loss: float(np.mean(values)) for loss, values in levels.items()}


def references_table(report: ScalingReport) -> list[str]:
    """The `against_references` rows as a table; a point that does not beat its first stage is marked."""
    if not report.references:
        return ["(no evaluation in the results has references)"]
    names = sorted({name for row in report.references for name in row["references"]})
    metrics = list(report.references[0]["values"])
    head = [f"{m} | " + " | ".join(f"{m} {name}" for name in names) for m in metrics]
    lines = ["| loss | size | params | seeds | examples | " + " | ".join(head) + " | above first stage |",
             "|---" * (6 + len(metrics) * (1 + len(names))) + "|"]
    for row in report.references:
        cells = [f"{row['values'][m]:.4f} | " + " | ".join(fmt(row["references"].get(n, {}).get(m)) for n in names)
                 for m in metrics]
        flags = [v for v in row["above"].values() if v is not None]
        mark = "-" if not flags else "yes" if all(flags) else "**NO**"
        lines.append(f"| {row['loss']} | {row['size']} | {row['params']} | {row['seeds']} | {row['examples']} | "
                     + " | ".join(cells) + f" | {mark} |")
    return lines


def to_markdown(report: ScalingReport) -> str:
    cfg = report.config
    level = f"{cfg.level:.0%}"
    parts = [
        "# Scaling laws", "",
        f"Model law `y = a + b N^c` on the final checkpoint of every size but the {cfg.holdout} largest; data law "
        f"`y = a + b D^c` per size on every checkpoint but the last {cfg.holdout_checkpoints} (of its largest "
        "budget); joint law `y = a + b N^c + d D^e` on every checkpoint of every run, checked out of sample on the "
        f"held-out sizes (fitted without them). Evaluations that differ only in seed are averaged before fitting. "
        f"Intervals at {level}: bootstrap ({cfg.resamples} resamples for the model law, {cfg.data_resamples} per "
        "data law; each point's seeds are resampled when every fitted point has two or more, else the points), and "
        "the delta method (`sigma^2 (J^T J)^-1` at the optimum, t quantile with n - 3 degrees of freedom). Kaplan: "
        "`(A/N)^alpha + delta` (losses) or `delta - (A/N)^alpha` (metrics), fitted as a line in log-log space of "
        "the gap. With few fitted points the intervals run narrow (a point resample with only 3 distinct sizes is "
        "fitted exactly); the note column says so when the fit has fewer than 4 distinct sizes or n - p < 2.", "",
        "## Every point against the first stage", "",
        "Final checkpoint of each size, seed means, beside the rankings it was compared with on the same queries and "
        "candidates (`first stage`: the run it reranks; `alone`: the reranker's own score, unfused). **NO** marks a "
        "point whose mean does not beat the first stage on every metric shown.", "",
        *references_table(report), "",
        "## Which metrics scale predictably", "",
        f"Predictable for a loss: model-law R² >= {cfg.r2_min}, every held-out forecast within "
        f"{cfg.max_rel_error:.0%} of the actual value, and the F-test of the law against a constant significant at "
        f"{cfg.f_alpha} (not significant when it has no residual degree of freedom).", "",
        *predictable_table(report), "",
        "## Model law: forecasts of the held-out sizes", "", *model_table(report), "",
        "## Model law: fit statistics", "",
        "F-tests (extra sum of squares): the law (3 parameters) against a constant (nested) and against a line in "
        "log N (2 parameters; not nested, the law taken as the fuller model; F < 0: the line fits better).", "",
        *statistics_table(report), "",
        "## Model law: forecast error against extrapolation distance", "",
        "Fit on all but the h largest sizes, forecast the largest; decades = log10(forecast N / largest fitted N).",
        "", *distance_table(report), "",
        "## Model law: calibration of the intervals", "",
        f"Coverage of the {level} intervals measured on {cfg.calibration_laws} seeded synthetic laws like the fitted "
        "one (asymptote within the data's spread, gap 1-3 spreads, exponent in [-0.6, -0.05]) on the sweep's own "
        f"sizes, with its noise level (the pooled seed spread, else the given sd {cfg.noise_sd}) and seed count; "
        f"{cfg.calibration_resamples} bootstrap resamples per law. Coverage well below {level} means the intervals "
        "above are too narrow.", "", *calibration_table(report), "",
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
        plot_model_law(metric, {loss: report.model[loss, metric] for loss in report.losses}, model_png,
                       first_stage_levels(report, metric))
        plot_data_laws(metric, {loss: report.data[loss, metric] for loss in report.losses}, data_png)
        written += [model_png, data_png]
    return written


def scaling_report(results_path: str | Path, output_dir: str | Path,
                   cfg: ForecastConfig | None = None) -> ScalingReport:
    """Fit every law on a results JSONL and write the report files into `output_dir`."""
    report = build_report(results_path, cfg)
    write_report(report, output_dir)
    return report
