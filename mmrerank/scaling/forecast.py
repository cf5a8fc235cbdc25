"""Forecasts from a sweep's results: the model law (hold out the largest sizes), the data law per size (hold out the
last checkpoints), and the joint law with its compute allocation.

Every function takes the seed-averaged `Curve`s of one training loss and returns a result whose `to_dict()` goes
into report.json; the fitted laws and bootstrap refits stay on the result for the plots.

Seeds: evaluations of one (size, loss, budget, checkpoint) that differ only in seed are averaged, and the laws are
fitted to the means; the per-seed values stay on the curve, so the bootstrap resamples seeds (every fitted point
with two or more) instead of points, and the forecast records each point's seed count and standard error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from mmrerank.scaling.bootstrap import BootstrapResult, bootstrap, bootstrap_seeds, seed_counts, seed_means
from mmrerank.scaling.fits import JointLaw, PowerLaw, fit_joint_law, fit_power_law, r_squared
from mmrerank.scaling.kaplan import KaplanLaw, fit_kaplan
from mmrerank.scaling.results import Evaluation, metric_kind
from mmrerank.scaling.statistics import (
    N_PARAMS,
    Coverage,
    DeltaInterval,
    LawPrior,
    adjusted_r2,
    calibration_note,
    f_vs_constant,
    f_vs_loglinear,
    holdout_distance,
    interval_coverage,
    law_delta_interval,
    pooled_seed_sd,
    seed_standard_errors,
    trust_note,
)


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
        r2_min, max_rel_error, f_alpha: a metric "scales predictably" for a loss when the model law's R^2 is at
            least `r2_min`, every held-out forecast is within `max_rel_error` (relative) of the actual value, and
            the F-test of the law against a constant has p < `f_alpha`.
        noise_sd: per-seed noise of the calibration's synthetic laws when the sweep has one seed (with several,
            the pooled seed spread is used instead).
        calibration_laws, calibration_resamples: synthetic laws, and bootstrap resamples per law, of the
            calibration (0 laws: no calibration).
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
    f_alpha: float = 0.05
    noise_sd: float = 0.005
    calibration_laws: int = 200
    calibration_resamples: int = 100


@dataclass
class Curve:
    """One size's seed-averaged evaluations for one training loss, ordered by examples seen.

    Attributes:
        size, params: the size's name and non-embedding parameters.
        examples: [T] examples seen at each checkpoint.
        metrics: metric name -> [T] seed means (NaN where no seed has the metric at a checkpoint).
        n_seeds: seeds averaged (at most; `seed_values` says per checkpoint).
        seed_values: metric name -> [T, S] per-seed values, NaN where a seed lacks the checkpoint or metric.
    """

    size: str
    params: int
    examples: np.ndarray
    metrics: dict[str, np.ndarray]
    n_seeds: int
    seed_values: dict[str, np.ndarray] = field(default_factory=dict)

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
    """Per size, only the evaluations of its largest budget (over all seeds: the seeds averaged at a point must
    share the budget, since a run's schedule depends on it)."""
    top: dict[str, int] = {}
    for e in evaluations:
        top[e.size] = max(top.get(e.size, -1), e.budget or 0)
    return [e for e in evaluations if (e.budget or 0) == top[e.size]]


def seed_table(by_examples: dict[int, list[Evaluation]], examples: np.ndarray, metric: str,
               seeds: list[int]) -> np.ndarray:
    """[T, S] values of one metric per checkpoint and seed (NaN where missing)."""
    table = np.full((len(examples), len(seeds)), np.nan)
    column = {seed: j for j, seed in enumerate(seeds)}
    for t, x in enumerate(examples):
        for ev in by_examples[int(x)]:
            table[t, column[ev.seed]] = ev.metrics.get(metric, np.nan)
    return table


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
        params = int(np.median([ev.params for evs in by_examples.values() for ev in evs]))
        seeds = sorted({ev.seed for evs in by_examples.values() for ev in evs})
        tables = {m: seed_table(by_examples, examples, m, seeds) for m in metrics}
        out.append(Curve(size, params, examples, {m: seed_means(t) for m, t in tables.items()}, len(seeds), tables))
    return sorted(out, key=lambda c: c.params)


def fast_fit(kind: str):
    """The refit used inside the bootstrap: grid minima starts only (no random starts), for speed."""
    return partial(fit_power_law, kind=kind, n_random=0)


def safe_kaplan(x: np.ndarray, y: np.ndarray, kind: str) -> KaplanLaw | None:
    try:
        return fit_kaplan(x, y, kind)
    except ValueError:  # e.g. a loss with a non-positive value has no Kaplan form
        return None


def finite_or_none(values: np.ndarray) -> list[float | None]:
    """A JSON-safe list: NaN (undefined) becomes None."""
    return [float(v) if np.isfinite(v) else None for v in np.atleast_1d(values)]


@dataclass
class Forecast:
    """A power law fitted on some points of a curve and its forecast of the held-out ones.

    Attributes:
        metric, kind: what was fitted; label: the size (data law) or "model law".
        x_fit, y_fit: [F] fitted points (seed means); x_out, y_out: [H] held-out points.
        seeds_fit, seeds_out: [F, S] / [H, S] per-seed values, NaN-padded (S = 1 with one seed).
        law, kaplan: the fits (kaplan None when that family has no fit); boot: the bootstrap (seeds resampled
            when every fitted point has two or more, else points).
        delta, delta_reason: the delta-method interval at x_out, or None and why not.
        statistics: adjusted R^2 and the F-tests (`fit_statistics`); trust: why intervals run narrow, or None.
        distance: model law only, the forecast error against extrapolation distance (`holdout_distance`).
        calibration, noise_source: model law only, the intervals' coverage on synthetic laws and where its noise
            level came from.
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
    seeds_fit: np.ndarray | None = None
    seeds_out: np.ndarray | None = None
    delta: DeltaInterval | None = None
    delta_reason: str | None = None
    statistics: dict[str, Any] = field(default_factory=dict)
    trust: str | None = None
    distance: list[dict[str, float]] = field(default_factory=list)
    calibration: Coverage | None = None
    noise_source: str | None = None

    def __post_init__(self) -> None:
        if self.seeds_fit is None:  # one seed: its values are the points
            self.seeds_fit, self.seeds_out = self.y_fit[:, None], self.y_out[:, None]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per held-out point: actual (seed mean, its seed count and standard error), forecast, bootstrap
        and delta-method intervals and whether each holds the actual value, error, and Kaplan's forecast."""
        if self.law is None:
            return []
        low, high = self.boot.predict_interval(self.x_out)
        counts, errors = seed_counts(self.seeds_out), seed_standard_errors(self.seeds_out)
        rows = []
        for i, (x, actual) in enumerate(zip(self.x_out, self.y_out)):
            predicted = float(self.law.predict(x))
            row = {"held_out": self.names_out[i] if self.names_out else int(x), "x": float(x),
                   "actual": float(actual), "n_seeds": int(counts[i]), "se": finite_or_none(errors[i])[0],
                   "predicted": predicted, "interval": [float(low[i]), float(high[i])],
                   "abs_error": abs(predicted - float(actual)), "inside": bool(low[i] <= actual <= high[i]),
                   "delta_interval": None, "delta_inside": None}
            if self.delta is not None:
                d_low, d_high = float(self.delta.low[i]), float(self.delta.high[i])
                row.update(delta_interval=[d_low, d_high], delta_inside=bool(d_low <= actual <= d_high))
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
                "bootstrap_method": self.boot.method, "kaplan": self.kaplan.to_dict() if self.kaplan else None,
                "fit_x": self.x_fit.tolist(), "fit_n_seeds": seed_counts(self.seeds_fit).tolist(),
                "fit_se": finite_or_none(seed_standard_errors(self.seeds_fit)),
                "statistics": {name: value.to_dict() if hasattr(value, "to_dict") else value
                               for name, value in self.statistics.items()} | {"delta_reason": self.delta_reason,
                                                                               "trust": self.trust},
                "forecasts": self.rows(), "holdout_distance": self.distance,
                "calibration": None if self.calibration is None else {**self.calibration.to_dict(),
                                                                      "noise_source": self.noise_source}}


def fit_statistics(x: np.ndarray, y: np.ndarray, law: PowerLaw) -> dict[str, Any]:
    """Adjusted R^2 and the F-tests of a fitted law against a constant and against a line in log x."""
    pred = law.predict(x)
    return {"adjusted_r2": adjusted_r2(law.r2, len(y), N_PARAMS), "f_vs_constant": f_vs_constant(y, pred),
            "f_vs_loglinear": f_vs_loglinear(x, y, pred)}


def law_bootstrap(result: Forecast, resamples: int, cfg: ForecastConfig) -> BootstrapResult:
    """Resample seeds when every fitted point has two or more, else points (as with a single seed)."""
    if np.all(seed_counts(result.seeds_fit) >= 2):
        return bootstrap_seeds(fast_fit(result.kind), result.x_fit, result.seeds_fit, n_resamples=resamples,
                               seed=cfg.seed, level=cfg.level)
    return bootstrap(fast_fit(result.kind), result.x_fit, result.y_fit, n_resamples=resamples, seed=cfg.seed,
                     level=cfg.level)


def forecast(metric: str, label: str, x: np.ndarray, y: np.ndarray, holdout: int, resamples: int,
             cfg: ForecastConfig, names: list[str] | None = None) -> Forecast:
    """Fit the power law on all but the last `holdout` points and forecast those.

    Args:
        x: [P] sizes, ascending.
        y: [P] values, or [P, S] per-seed values (NaN-padded) whose per-point means are fitted.
    """
    samples = np.asarray(y, dtype=float).reshape(len(x), -1)
    keep = seed_counts(samples) > 0
    x, samples = x[keep], samples[keep]
    y = seed_means(samples)
    names_out = [n for n, k in zip(names, keep) if k][len(x) - holdout:] if names else []
    kind = metric_kind(metric)
    result = Forecast(metric, kind, label, x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:],
                      names_out=names_out, seeds_fit=samples[:-holdout], seeds_out=samples[-holdout:])
    if len(np.unique(result.x_fit)) < 3 or holdout < 1:
        result.skipped = f"needs 3 fitted sizes beyond {holdout} held out, has {len(np.unique(result.x_fit))}"
        return result
    result.law = fit_power_law(result.x_fit, result.y_fit, kind=kind)
    result.kaplan = safe_kaplan(result.x_fit, result.y_fit, kind)
    result.boot = law_bootstrap(result, resamples, cfg)
    result.delta, result.delta_reason = law_delta_interval(result.law, result.x_fit, result.y_fit, result.x_out,
                                                           cfg.level)
    result.statistics = fit_statistics(result.x_fit, result.y_fit, result.law)
    result.trust = trust_note(result.x_fit)
    return result


def calibrate(result: Forecast, cfg: ForecastConfig) -> tuple[Coverage | None, str | None]:
    """Coverage of the model law's intervals on laws like the fitted one, on the sweep's sizes and noise level."""
    if result.law is None or cfg.calibration_laws < 1:
        return None, None
    spread = pooled_seed_sd(result.seeds_fit)
    counts = seed_counts(result.seeds_fit)  # the fewest seeds of a point, as the report's bootstrap decides by them
    noise, source = (spread, "seed spread") if spread is not None else (cfg.noise_sd, "given sd (one seed)")
    coverage = interval_coverage(np.concatenate([result.x_fit, result.x_out]), result.kind, noise,
                                 n_laws=cfg.calibration_laws, n_seeds=int(counts.min()),
                                 n_resamples=cfg.calibration_resamples, holdout=len(result.x_out), level=cfg.level,
                                 seed=cfg.seed, prior=LawPrior.around(result.law, result.y_fit))
    return coverage, source


def model_law(loss_curves: list[Curve], metric: str, cfg: ForecastConfig) -> Forecast:
    """Fit y(final checkpoint) against parameters on all but the `cfg.holdout` largest sizes; forecast those; add
    the error against extrapolation distance and the intervals' calibration."""
    x = np.array([c.params for c in loss_curves], dtype=float)
    width = max((c.seed_values[metric].shape[1] for c in loss_curves), default=1)
    samples = np.full((len(loss_curves), width), np.nan)
    for i, c in enumerate(loss_curves):
        final = c.seed_values[metric][-1]
        samples[i, :len(final)] = final
    result = forecast(metric, "model law", x, samples, cfg.holdout, cfg.resamples, cfg, [c.size for c in loss_curves])
    if result.law is not None:
        result.distance = holdout_distance(np.concatenate([result.x_fit, result.x_out]),
                                           np.concatenate([result.y_fit, result.y_out]), result.kind)
        result.calibration, result.noise_source = calibrate(result, cfg)
        result.trust = "; ".join(n for n in (result.trust, calibration_note(result.calibration)) if n) or None
    return result


def data_laws(loss_curves: list[Curve], metric: str, cfg: ForecastConfig) -> list[Forecast]:
    """Per size, fit y against examples seen on all but the last `cfg.holdout_checkpoints`; forecast those."""
    return [forecast(metric, c.size, c.examples, c.seed_values[metric], cfg.holdout_checkpoints, cfg.data_resamples,
                     cfg) for c in loss_curves]


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
    """Model-law R^2 >= r2_min, every held-out forecast within max_rel_error of the actual, and the F-test against
    a constant significant at f_alpha (an F-test without residual degrees of freedom is not); None if not fitted."""
    if result.law is None:
        return None
    rel = [row["abs_error"] / max(abs(row["actual"]), 1e-12) for row in result.rows()]
    p_value = result.statistics["f_vs_constant"].p_value
    significant = p_value is not None and p_value < cfg.f_alpha
    return bool(result.law.r2 >= cfg.r2_min and max(rel) <= cfg.max_rel_error and significant)
