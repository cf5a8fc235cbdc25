"""How far to trust a fitted scaling law: goodness of fit, F-tests, delta-method intervals, the forecast error
against extrapolation distance, and the measured coverage of the intervals on synthetic laws.

Conventions: `p` counts every fitted parameter, the constant included (the power law `a + b x^c` has p = 3, a line
in log x has 2, a constant 1); n is the number of fitted points (seed means when there are several seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from mmrerank.scaling.bootstrap import (
    PowerLawBatch,
    fit_power_law_batch,
    point_weights,
    resample_seed_means,
    seed_counts,
    seed_means,
)
from mmrerank.scaling.fits import PowerLaw, fit_power_law, jacobian, model

N_PARAMS = 3  # a, b, c of the power law
SINGULAR_RCOND = 1e-8  # J's smallest / largest singular value below this: J^T J is singular for practical purposes


def adjusted_r2(r2: float, n: int, p: int = N_PARAMS) -> float | None:
    """1 - (1 - R^2) (n - 1) / (n - p), i.e. the textbook form with p - 1 regressors; None when n <= p."""
    if n <= p:
        return None
    return 1.0 - (1.0 - r2) * (n - 1) / (n - p)


# --- F-tests --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FTest:
    """An extra-sum-of-squares F-test of a fuller model against a reduced one.

    Attributes:
        comparison: which models, and whether nested.
        f: ((SSE_r - SSE_f) / (p_f - p_r)) / (SSE_f / (n - p_f)); negative when the reduced model fits better
            (possible only when not nested). None when not computable.
        df_num, df_den: p_f - p_r and n - p_f.
        p_value: P(F' >= f) for F' ~ F(df_num, df_den) (1 when f <= 0); None when not computable.
        reason: why f is None (or infinite).
    """

    comparison: str
    f: float | None
    df_num: int
    df_den: int
    p_value: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        f = self.f if self.f is None or np.isfinite(self.f) else None  # JSON has no infinity; `reason` says why
        return {"comparison": self.comparison, "F": f, "df": [self.df_num, self.df_den],
                "p_value": self.p_value, "reason": self.reason}


def f_test(sse_reduced: float, p_reduced: int, sse_full: float, p_full: int, n: int, comparison: str = "") -> FTest:
    """The extra-sum-of-squares F-test; under the reduced model (nested, Gaussian noise) F ~ F(p_f - p_r, n - p_f)."""
    df_num, df_den = p_full - p_reduced, n - p_full
    if df_num < 1 or df_den < 1:
        return FTest(comparison, None, df_num, df_den, None, f"needs n > {p_full} points and p_full > p_reduced")
    gain = (sse_reduced - sse_full) / df_num
    scale = sse_full / df_den
    if scale <= 1e-300:  # the fuller model is exact
        if gain <= 1e-300:
            return FTest(comparison, None, df_num, df_den, None, "both models fit the points exactly")
        return FTest(comparison, float("inf"), df_num, df_den, 0.0, "the fuller model fits the points exactly")
    f = gain / scale
    return FTest(comparison, float(f), df_num, df_den, float(stats.f.sf(f, df_num, df_den)) if f > 0 else 1.0)


def sse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sum((np.asarray(y) - np.asarray(pred)) ** 2))


def f_vs_constant(y: np.ndarray, pred: np.ndarray, p: int = N_PARAMS) -> FTest:
    """The law (predictions pred [n], p parameters) against a constant: nested (the constant is the law at b = 0)."""
    y = np.asarray(y, dtype=float)
    return f_test(sse(y, np.mean(y)), 1, sse(y, pred), p, len(y), f"law ({p} parameters) vs constant (1), nested")


def f_vs_loglinear(x: np.ndarray, y: np.ndarray, pred: np.ndarray, p: int = N_PARAMS) -> FTest:
    """The law against a line `alpha + beta log x` (2 parameters).

    Not nested: the line is only the law's limit c -> 0 with b c held fixed. The standard extra-sum-of-squares F is
    used with the law as the fuller model (it has more parameters); a negative F says the line fits better.
    """
    y = np.asarray(y, dtype=float)
    design = np.stack([np.ones(len(y)), np.log(np.asarray(x, dtype=float))], axis=1)
    line = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return f_test(sse(y, line), 2, sse(y, pred), p, len(y), f"law ({p} parameters) vs line in log x (2), not nested")


# --- delta method ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeltaInterval:
    """Delta-method interval of a fitted curve's mean at new points: pred +- t_{(1+level)/2, n-p} se.

    Attributes:
        predicted, low, high, se: [M]; dof: n - p; level: central probability; sigma: sqrt(SSE / (n - p)).
    """

    predicted: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    dof: int
    level: float
    sigma: float


def delta_se(jac: np.ndarray, sse_fit: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of predictions, sqrt(g^T sigma^2 (J^T J)^-1 g) with sigma^2 = SSE / (n - p), batched.

    Args:
        jac: [..., n, p] Jacobian of the fitted values at the optimum; needs n > p.
        sse_fit: [...] squared error of the fit.
        grad: [..., M, p] gradients of the predictions w.r.t. the parameters.

    Returns:
        se [..., M] (NaN where J^T J is singular) and ok [...] (J^T J invertible).
    """
    n, p = jac.shape[-2:]
    if n <= p:
        raise ValueError(f"the delta method needs more points than parameters, got n = {n}, p = {p}")
    _, sing, vt = np.linalg.svd(jac, full_matrices=False)  # (J^T J)^-1 = V diag(1 / s^2) V^T, without forming J^T J
    ok = sing[..., -1] > SINGULAR_RCOND * sing[..., 0]
    proj = grad @ np.swapaxes(vt, -1, -2)  # [..., M, p]: g in the singular basis
    safe = np.where(ok[..., None], sing, 1.0)[..., None, :]  # singular rows get NaN below, not a division by 0
    var = (np.asarray(sse_fit) / (n - p))[..., None] * np.sum((proj / safe) ** 2, axis=-1)
    return np.where(ok[..., None], np.sqrt(var), np.nan), ok


def delta_interval(jac: np.ndarray, residuals: np.ndarray, grad: np.ndarray, predicted: np.ndarray,
                   level: float = 0.9) -> tuple[DeltaInterval | None, str | None]:
    """The delta-method interval of one fit at M new points.

    Args:
        jac: [n, p] Jacobian of the fitted values at the optimum; residuals: [n] y - fitted.
        grad: [M, p] gradients of the predictions; predicted: [M].

    Returns:
        (interval, None), or (None, reason) when n <= p or J^T J is singular.
    """
    n, p = jac.shape
    if n <= p:
        return None, f"{n} points for {p} parameters leave no residual degree of freedom"
    sse_fit = float(np.sum(np.asarray(residuals) ** 2))
    se, ok = delta_se(jac, np.array(sse_fit), np.atleast_2d(grad))
    if not ok:
        return None, "J^T J is singular: the points do not identify every parameter (e.g. b = 0 at its bound)"
    half = stats.t.ppf((1 + level) / 2, n - p) * se
    pred = np.atleast_1d(np.asarray(predicted, dtype=float))
    return DeltaInterval(pred, pred - half, pred + half, se, n - p, level, float(np.sqrt(sse_fit / (n - p)))), None


def law_delta_interval(law: PowerLaw, x_fit: np.ndarray, y_fit: np.ndarray, x_new: Any,
                       level: float = 0.9) -> tuple[DeltaInterval | None, str | None]:
    """`delta_interval` of a fitted power law (its normalised parameters a, b_scaled, c) at raw sizes x_new [M]."""
    theta = np.array([law.a, law.b_scaled, law.c])
    u = (np.asarray(x_fit, dtype=float) / law.x_scale)[:, None]
    u_new = (np.atleast_1d(np.asarray(x_new, dtype=float)) / law.x_scale)[:, None]
    residuals = np.asarray(y_fit, dtype=float) - model(theta, u)
    return delta_interval(jacobian(theta, u), residuals, jacobian(theta, u_new), model(theta, u_new), level)


# --- seeds and trust ------------------------------------------------------------------------------------------------

def seed_standard_errors(samples: np.ndarray) -> np.ndarray:
    """Standard error of each point's seed mean, std (ddof 1) / sqrt(n_p): samples [P, S] NaN-padded -> [P]
    (NaN where a point has fewer than 2 seeds)."""
    counts = seed_counts(samples)
    squares = np.nansum((samples - seed_means(samples)[..., None]) ** 2, axis=-1)
    var = squares / np.maximum(counts - 1, 1)
    return np.where(counts >= 2, np.sqrt(var / np.maximum(counts, 1)), np.nan)


def pooled_seed_sd(samples: np.ndarray) -> float | None:
    """The sd of one seed's value about its point's mean, pooled over points (df-weighted); None without repeats.

    Args:
        samples: [P, S] per-seed values, NaN-padded.
    """
    counts = seed_counts(samples)
    dof = int(np.sum(np.maximum(counts - 1, 0)))
    if dof == 0:
        return None
    return float(np.sqrt(np.nansum((samples - seed_means(samples)[..., None]) ** 2) / dof))


def trust_note(x_fit: np.ndarray, p: int = N_PARAMS) -> str | None:
    """Why a fit's intervals are too narrow to trust (fewer than 4 distinct sizes, or n - p < 2), else None."""
    distinct, n = len(np.unique(x_fit)), len(x_fit)
    reasons = [f"only {distinct} distinct sizes"] if distinct < 4 else []
    reasons += [f"n - p = {n - p} residual degrees of freedom"] if n - p < 2 else []
    return "; ".join(reasons) + ": intervals too narrow to trust" if reasons else None


def calibration_note(coverage: Coverage | None, slack: float = 0.1) -> str | None:
    """Which intervals the seeded laws found too narrow: coverage more than `slack` below the level, else None."""
    if coverage is None:
        return None
    short = [f"{name} covered {value:.0%} of {n} seeded laws" for name, value, n in
             (("bootstrap", coverage.bootstrap, coverage.n_bootstrap), ("delta", coverage.delta, coverage.n_delta))
             if value is not None and value < coverage.level - slack]
    return f"{' and '.join(short)} at {coverage.level:.0%}: too narrow" if short else None


# --- forecast error against extrapolation distance ------------------------------------------------------------------

def holdout_distance(x: Any, y: Any, kind: str = "metric",
                     fit_fn: Callable[..., PowerLaw] = fit_power_law) -> list[dict[str, float]]:
    """For h = 1 .. P - 3: fit on the P - h smallest sizes and forecast the largest one.

    Args:
        x: [P] distinct sizes; y: [P] values (seed means).
        fit_fn: `fit_fn(x, y, kind=...) -> law`.

    Returns:
        One row per h: held_out h, n_fit, fit_max_x, x (the largest size), decades (log10 of their ratio),
        actual, predicted, abs_error. Empty with fewer than 4 sizes.
    """
    order = np.argsort(np.asarray(x, dtype=float))
    x, y = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    rows = []
    for h in range(1, len(x) - 2):
        law = fit_fn(x[:-h], y[:-h], kind=kind)
        predicted = float(law.predict(x[-1]))
        rows.append({"held_out": h, "n_fit": len(x) - h, "fit_max_x": float(x[-h - 1]), "x": float(x[-1]),
                     "decades": float(np.log10(x[-1] / x[-h - 1])), "actual": float(y[-1]),
                     "predicted": predicted, "abs_error": abs(predicted - float(y[-1]))})
    return rows


# --- calibration ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LawPrior:
    """Uniform ranges of synthetic laws `y = a + sign * gap * (x / x_min)^c` (sign -1 for metrics, +1 for losses).

    Attributes:
        a: the asymptote; gap: distance from it at the smallest size; c: the exponent.
    """

    a: tuple[float, float]
    gap: tuple[float, float]
    c: tuple[float, float] = (-0.6, -0.05)

    @classmethod
    def default(cls, kind: str) -> LawPrior:
        return cls(a=(0.4, 0.9), gap=(0.1, 0.35)) if kind == "metric" else cls(a=(0.5, 3.0), gap=(0.3, 2.0))

    @classmethod
    def around(cls, law: PowerLaw, y: np.ndarray) -> LawPrior:
        """Laws like a fitted one: the asymptote within the data's spread of it, gaps of 1-3 times that spread."""
        spread = max(float(np.ptp(y)), 1e-6)
        low, high = law.a - spread, law.a + spread
        a = (max(low, 0.0), min(high, 1.0)) if law.kind == "metric" else (max(low, 0.0), max(high, spread))
        return cls(a=a, gap=(spread, 3 * spread))


@dataclass(frozen=True)
class Coverage:
    """How often 90 % (`level`) intervals of a forecast held the true noiseless value, over synthetic laws.

    Attributes:
        bootstrap, delta: fraction of laws covered, over the laws where that interval exists (None: nowhere).
        n_laws, n_bootstrap, n_delta: laws drawn, and those with a bootstrap / delta-method interval.
        method: the bootstrap's resampling ("seeds" or "points"); the rest: the settings.
    """

    bootstrap: float | None
    delta: float | None
    n_laws: int
    n_bootstrap: int
    n_delta: int
    method: str
    n_seeds: int
    noise_sd: float
    n_resamples: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def synthetic_samples(x: np.ndarray, kind: str, prior: LawPrior, noise_sd: float, n_laws: int, n_seeds: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless values [L, P] of L random laws on x [P], and noisy per-seed values [L, P, S]."""
    a, gap, c = (rng.uniform(*r, size=(n_laws, 1)) for r in (prior.a, prior.gap, prior.c))
    sign = -1.0 if kind == "metric" else 1.0
    truth = a + sign * gap * (x / x.min()) ** c
    return truth, truth[..., None] + rng.normal(0.0, noise_sd, size=truth.shape + (n_seeds,))


def bootstrap_predictions(x_fit: np.ndarray, samples: np.ndarray, x_new: float, kind: str, n_resamples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Batched bootstrap refits' predictions at x_new, [L, R] (NaN for degenerate resamples).

    Seeds are resampled when there are several (samples [L, P, S], S > 1), points otherwise.
    """
    n_laws, n_points, n_seeds = samples.shape
    if n_seeds > 1:
        y, weights = resample_seed_means(samples, n_resamples, rng), None  # [L, R, P]
    else:
        weights = point_weights(n_points, n_resamples, rng, lead=(n_laws,))
        y = np.broadcast_to(samples[..., 0][:, None, :], weights.shape)
    flat = None if weights is None else weights.reshape(-1, n_points)
    laws = fit_power_law_batch(x_fit, y.reshape(-1, n_points), kind, weights=flat)
    return laws.predict([x_new])[:, 0].reshape(n_laws, n_resamples)


def delta_hits(laws: PowerLawBatch, x_fit: np.ndarray, x_new: float, target: np.ndarray,
               level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per law: does its delta-method interval at x_new hold target [L], and does that interval exist ([L] each)."""
    if len(x_fit) <= N_PARAMS:  # no residual degree of freedom: no interval anywhere
        return np.zeros(len(target), dtype=bool), np.zeros(len(target), dtype=bool)
    u, u_new = x_fit / laws.x_scale, np.array([x_new / laws.x_scale])
    se, defined = delta_se(jacobian(laws.theta, u[:, None]), laws.sse, jacobian(laws.theta, u_new[:, None]))
    half = stats.t.ppf((1 + level) / 2, len(x_fit) - N_PARAMS) * se[:, 0]
    return np.abs(laws.predict([x_new])[:, 0] - target) <= half, defined


def bootstrap_hits(boot: np.ndarray, target: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per law: does the percentile interval of its refits' predictions boot [L, R] hold target [L], and does it
    exist (a law whose every resample was degenerate has none)."""
    usable = np.any(np.isfinite(boot), axis=1)
    hit = np.zeros(len(target), dtype=bool)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(boot[usable], [tail, 100 - tail], axis=1)
    hit[usable] = (low <= target[usable]) & (target[usable] <= high)
    return hit, usable


def share(hit: np.ndarray, defined: np.ndarray) -> float | None:
    return float(np.mean(hit[defined])) if defined.any() else None


def interval_coverage(x: Any, kind: str = "metric", noise_sd: float = 0.005, n_laws: int = 200, n_seeds: int = 1,
                      n_resamples: int = 200, holdout: int = 1, level: float = 0.9, seed: int = 0,
                      prior: LawPrior | None = None) -> Coverage:
    """Measure the coverage of the bootstrap and delta-method intervals of a forecast on seeded synthetic laws.

    Each law (parameters drawn from `prior`) is evaluated on the grid x with Gaussian noise of sd `noise_sd` per
    seed, `n_seeds` seeds averaged per point; the power law is fitted on all but the `holdout` largest sizes and
    the largest size is forecast; an interval covers when it holds the law's noiseless value there.

    Args:
        x: [P] the sweep's sizes (P - holdout >= 3).
        n_resamples: bootstrap resamples per law (seeds resampled when n_seeds > 1, else points).

    Returns:
        The measured coverages; the same for the same arguments (every draw comes from `seed`).
    """
    x = np.sort(np.asarray(x, dtype=float))
    x_fit, x_new = x[:-holdout], float(x[-1])
    if len(x_fit) < 3:
        raise ValueError(f"coverage needs 3 fitted sizes beyond {holdout} held out, has {len(x_fit)}")
    rng = np.random.default_rng(seed)
    truth, samples = synthetic_samples(x, kind, prior or LawPrior.default(kind), noise_sd, n_laws, n_seeds, rng)
    fit_samples = samples[:, :-holdout]
    laws = fit_power_law_batch(x_fit, fit_samples.mean(axis=-1), kind)
    delta_hit, delta_ok = delta_hits(laws, x_fit, x_new, truth[:, -1], level)
    boot = bootstrap_predictions(x_fit, fit_samples, x_new, kind, n_resamples, rng)
    boot_hit, boot_ok = bootstrap_hits(boot, truth[:, -1], level)
    return Coverage(bootstrap=share(boot_hit, boot_ok), delta=share(delta_hit, delta_ok), n_laws=n_laws,
                    n_bootstrap=int(boot_ok.sum()), n_delta=int(delta_ok.sum()),
                    method="seeds" if n_seeds > 1 else "points", n_seeds=n_seeds, noise_sd=float(noise_sd),
                    n_resamples=n_resamples, level=level)
