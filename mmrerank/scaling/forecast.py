"""Forecasts from a sweep's results: the model law (hold out the largest sizes), the data law per size (hold out the
last checkpoints), and the joint law with its compute allocation.

Every function takes the seed-averaged `Curve`s of one training loss and returns a result whose `to_dict()` goes
into report.json; the fitted laws and bootstrap refits stay on the result for the plots.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from mmrerank.scaling.bootstrap import BootstrapResult, bootstrap
from mmrerank.scaling.fits import JointLaw, PowerLaw, fit_joint_law, fit_power_law, r_squared
from mmrerank.scaling.kaplan import KaplanLaw, fit_kaplan
from mmrerank.scaling.results import Evaluation, metric_kind


@dataclass
class ForecastConfig:
    """How the report fits and forecasts.

    Attributes:
        holdout: largest sizes held out of the model law (and of the joint law's out-of-sample check).
        holdout_checkpoints: last checkpoints of each size held out of its data law.
        resamples: bootstrap resamples for the model law; data_resamples: for each data law.
        level: central probability of the intervals.
        seed: bootstrap seed.
        metrics: metrics to report (default: every metric in the results, in order of appearance).
        budgets: compute budgets C = params x examples for the allocation table (default: the largest observed
            C times 1, 10 and 100).
        r2_min, max_rel_error: a metric "scales predictably" for a loss when the model law's R^2 is at least
            `r2_min` and every held-out forecast is within `max_rel_error` (relative) of the actual value.
    """

    holdout: int = 1
    holdout_checkpoints: int = 1
    resamples: int = 1000
    data_resamples: int = 200
    level: float = 0.9
    seed: int = 0
    metrics: list[str] | None = None
    budgets: list[float] | None = None
    r2_min: float = 0.9
    max_rel_error: float = 0.05


@dataclass
class Curve:
    """One size's seed-averaged evaluations for one training loss, ordered by examples seen.

    Attributes:
        size, params: the size's name and non-embedding parameters.
        examples: [T] examples seen at each checkpoint.
        metrics: metric name -> [T] values (NaN where a checkpoint lacks the metric).
        n_seeds: seeds averaged.
    """

    size: str
    params: int
    examples: np.ndarray
    metrics: dict[str, np.ndarray]
    n_seeds: int

    def final(self, metric: str) -> float:
        return float(self.metrics[metric][-1])


def metric_names(evaluations: list[Evaluation]) -> list[str]:
    names: dict[str, None] = {}
    for e in evaluations:
        names.update(dict.fromkeys(e.metrics))
    return list(names)


def unique_checkpoints(evaluations: list[Evaluation]) -> list[Evaluation]:
    """One evaluation per run and checkpoint: a rerun's line (later in the file) replaces the crashed run's."""
    return list({(e.size, e.seed, e.budget, e.examples): e for e in evaluations}.values())


def latest_run(evaluations: list[Evaluation]) -> list[Evaluation]:
    """Per size and seed, only the evaluations of the run with the largest budget."""
    top: dict[tuple, int] = {}
    for e in evaluations:
        top[(e.size, e.seed)] = max(top.get((e.size, e.seed), -1), e.budget or 0)
    return [e for e in evaluations if (e.budget or 0) == top[(e.size, e.seed)]]


def curves(evaluations: list[Evaluation], loss: str, metrics: list[str], every_run: bool = False) -> list[Curve]:
    """Seed-averaged curves of the runs trained with `loss`, smallest model first.

    Args:
        every_run: one curve per size and budget; by default one per size, from its largest budget.
    """
    chosen = unique_checkpoints([e for e in evaluations if e.loss == loss])
    groups: dict[tuple, dict[int, list[Evaluation]]] = defaultdict(lambda: defaultdict(list))
    for e in chosen if every_run else latest_run(chosen):
        groups[e.size, e.budget if every_run else None][e.examples].append(e)
    out = []
    for (size, _), by_examples in groups.items():
        examples = np.array(sorted(by_examples), dtype=float)
        values = {m: np.array([np.mean([ev.metrics.get(m, np.nan) for ev in by_examples[int(x)]]) for x in examples])
                  for m in metrics}
        params = int(np.median([ev.params for evs in by_examples.values() for ev in evs]))
        seeds = len({ev.seed for evs in by_examples.values() for ev in evs})
        out.append(Curve(size, params, examples, values, seeds))
    return sorted(out, key=lambda c: c.params)


def fast_fit(kind: str):
    """The refit used inside the bootstrap: grid minima starts only (no random starts), for speed."""
    return partial(fit_power_law, kind=kind, n_random=0)


def safe_kaplan(x: np.ndarray, y: np.ndarray, kind: str) -> KaplanLaw | None:
    try:
        return fit_kaplan(x, y, kind)
    except ValueError:  # e.g. a loss with a non-positive value has no Kaplan form
        return None


@dataclass
class Forecast:
    """A power law fitted on some points of a curve and its forecast of the held-out ones.

    Attributes:
        metric, kind: what was fitted; label: the size (data law) or "model law".
        x_fit, y_fit: [F] fitted points; x_out, y_out: [H] held-out points.
        law, kaplan: the fits (kaplan None when that family has no fit); boot: the bootstrap.
        skipped: why nothing was fitted (too few points), else None.
    """

    metric: str
    kind: str
    label: str
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_out: np.ndarray
    y_out: np.ndarray
    law: PowerLaw | None = None
    kaplan: KaplanLaw | None = None
    boot: BootstrapResult | None = None
    skipped: str | None = None
    names_out: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per held-out point: actual, forecast, interval, error, coverage, and Kaplan's forecast."""
        if self.law is None:
            return []
        low, high = self.boot.predict_interval(self.x_out)
        rows = []
        for i, (x, actual) in enumerate(zip(self.x_out, self.y_out)):
            predicted = float(self.law.predict(x))
            row = {"held_out": self.names_out[i] if self.names_out else int(x), "x": float(x),
                   "actual": float(actual), "predicted": predicted, "interval": [float(low[i]), float(high[i])],
                   "abs_error": abs(predicted - float(actual)), "inside": bool(low[i] <= actual <= high[i])}
            if self.kaplan is not None:
                kaplan = float(self.kaplan.predict(x))
                row.update(kaplan_predicted=kaplan, kaplan_abs_error=abs(kaplan - float(actual)))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        if self.law is None:
            return {"metric": self.metric, "label": self.label, "skipped": self.skipped}
        return {"metric": self.metric, "kind": self.kind, "label": self.label, "fit": self.law.to_dict(),
                "param_intervals": self.boot.intervals, "bootstrap_skipped": self.boot.n_skipped,
                "kaplan": self.kaplan.to_dict() if self.kaplan else None, "fit_x": self.x_fit.tolist(),
                "forecasts": self.rows()}


def forecast(metric: str, label: str, x: np.ndarray, y: np.ndarray, holdout: int, resamples: int,
             cfg: ForecastConfig, names: list[str] | None = None) -> Forecast:
    """Fit the power law on all but the last `holdout` points of (x [P], y [P]) and forecast those."""
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    names_out = [n for n, k in zip(names, keep) if k][len(x) - holdout:] if names else []
    kind = metric_kind(metric)
    result = Forecast(metric, kind, label, x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:],
                      names_out=names_out)
    if len(np.unique(result.x_fit)) < 3 or holdout < 1:
        result.skipped = f"needs 3 fitted sizes beyond {holdout} held out, has {len(np.unique(result.x_fit))}"
        return result
    result.law = fit_power_law(result.x_fit, result.y_fit, kind=kind)
    result.kaplan = safe_kaplan(result.x_fit, result.y_fit, kind)
    result.boot = bootstrap(fast_fit(kind), result.x_fit, result.y_fit, n_resamples=resamples, seed=cfg.seed,
                            level=cfg.level)
    return result


def model_law(loss_curves: list[Curve], metric: str, cfg: ForecastConfig) -> Forecast:
    """Fit y(final checkpoint) against parameters on all but the `cfg.holdout` largest sizes; forecast those."""
    x = np.array([c.params for c in loss_curves], dtype=float)
    y = np.array([c.final(metric) for c in loss_curves])
    return forecast(metric, "model law", x, y, cfg.holdout, cfg.resamples, cfg, [c.size for c in loss_curves])


def data_laws(loss_curves: list[Curve], metric: str, cfg: ForecastConfig) -> list[Forecast]:
    """Per size, fit y against examples seen on all but the last `cfg.holdout_checkpoints`; forecast those."""
    return [forecast(metric, c.size, c.examples, c.metrics[metric], cfg.holdout_checkpoints, cfg.data_resamples, cfg)
            for c in loss_curves]


# --- the joint law and compute allocation ---------------------------------------------------------------------------

@dataclass
class JointForecast:
    """The joint law on all points, its out-of-sample check on the held-out sizes, and the compute allocation."""

    metric: str
    law: JointLaw | None
    r2_out_of_sample: float | None
    mae_out_of_sample: float | None
    allocation: list[dict[str, Any]]
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.law is None:
            return {"metric": self.metric, "skipped": self.skipped}
        return {"metric": self.metric, "fit": self.law.to_dict(), "r2_out_of_sample": self.r2_out_of_sample,
                "mae_out_of_sample": self.mae_out_of_sample, "allocation": self.allocation}


def joint_points(runs: list[Curve], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(params [P], examples [P], values [P]) of every finite checkpoint of every run."""
    n, d, y = [], [], []
    for c in runs:
        ok = np.isfinite(c.metrics[metric])
        n += [c.params] * int(ok.sum())
        d += c.examples[ok].tolist()
        y += c.metrics[metric][ok].tolist()
    return np.array(n, dtype=float), np.array(d, dtype=float), np.array(y)


def allocate(law: JointLaw, budgets: list[float], params_range: tuple[float, float],
             grid_size: int = 400) -> list[dict[str, Any]]:
    """For each compute budget C, the split N x D = C (N on a log grid over `params_range`) the law rates best.

    Returns:
        One row per budget: params, examples, predicted value, and whether the optimum sits at the grid's edge
        (then the law does not bound it inside the range: more of one resource always helps).
    """
    n = np.geomspace(*params_range, grid_size)
    rows = []
    for budget in budgets:
        pred = law.predict(n, budget / n)
        best = int(np.argmax(pred) if law.kind == "metric" else np.argmin(pred))
        rows.append({"budget": float(budget), "params": float(n[best]), "examples": float(budget / n[best]),
                     "predicted": float(pred[best]), "at_edge": best in (0, grid_size - 1)})
    return rows


def joint_law(runs: list[Curve], metric: str, cfg: ForecastConfig) -> JointForecast:
    """Fit the joint law on every checkpoint of every run, check it out of sample on the `cfg.holdout` largest sizes
    (fitted without them), and allocate compute.

    Args:
        runs: seed-averaged curves, one per size and budget (`curves(..., every_run=True)`).
    """
    n, d, y = joint_points(runs, metric)
    kind = metric_kind(metric)
    if len(y) < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        return JointForecast(metric, None, None, None, [], skipped=f"needs 5 points over >= 2 sizes, has {len(y)}")
    law = fit_joint_law(n, d, y, kind=kind)
    inside = n < np.unique(n)[-cfg.holdout] if len(np.unique(n)) > cfg.holdout else np.zeros(len(n), dtype=bool)
    r2_out = mae_out = None
    if inside.sum() >= 5 and len(np.unique(n[inside])) >= 2 and len(np.unique(d[inside])) >= 2:
        partial_law = fit_joint_law(n[inside], d[inside], y[inside], kind=kind)
        pred = partial_law.predict(n[~inside], d[~inside])
        r2_out, mae_out = r_squared(y[~inside], pred), float(np.mean(np.abs(pred - y[~inside])))
    budgets = cfg.budgets or [float(np.max(n * d)) * k for k in (1, 10, 100)]
    allocation = allocate(law, budgets, (float(n.min()) / 10, float(n.max()) * 100))
    return JointForecast(metric, law, r2_out, mae_out, allocation)


def scales_predictably(result: Forecast, cfg: ForecastConfig) -> bool | None:
    """Model-law R^2 >= r2_min and every held-out forecast within max_rel_error of the actual (None if not fitted)."""
    if result.law is None:
        return None
    rel = [row["abs_error"] / max(abs(row["actual"]), 1e-12) for row in result.rows()]
    return bool(result.law.r2 >= cfg.r2_min and max(rel) <= cfg.max_rel_error)
