"""Bootstrap intervals for scaling-law fits: refit on resampled points, or on resampled seeds when a point has several.

Two resampling schemes:

- points (`bootstrap`): draw P points with replacement and refit; the only choice with one seed per point;
- seeds (`bootstrap_seeds`): every point keeps its size; at each point draw that point's seeds with replacement,
  average them, and refit the means. This is the noise the fit actually sees (seed-to-seed spread of one size),
  and it never produces a resample with fewer distinct sizes.

`fit_power_law_batch` refits many datasets on one x grid at once (the bootstrap resamples of many synthetic laws in
`mmrerank.scaling.statistics.interval_coverage`): for an exponent c, the bounded least-squares (a, b) follow in
closed form from five weighted sums, so the exact profile over c is a grid search then a golden-section refinement,
both vectorised over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrerank.scaling.fits import check_kind, coefficient_bounds, exponent_grid, geometric_mean, model

GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass
class BootstrapResult:
    """A fit on all points plus its refits on resampled points.

    Attributes:
        fit: the law fitted on all points (on the per-point seed means for the seed bootstrap).
        fits: the laws fitted on the usable resamples.
        level: the central probability of every interval (0.9: the 5th to the 95th percentile).
        n_skipped: resamples skipped as degenerate (too few distinct sizes).
        method: "points" (points resampled) or "seeds" (each point's seeds resampled).
        intervals: per parameter name, the (low, high) percentile interval over `fits`.
    """

    fit: Any
    fits: list[Any]
    level: float
    n_skipped: int
    method: str = "points"
    intervals: dict[str, tuple[float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.intervals = {name: self.percentiles(np.array([f.params[name] for f in self.fits]))
                          for name in self.fit.params}

    def percentiles(self, values: np.ndarray) -> tuple:
        tail = 100 * (1 - self.level) / 2
        low, high = np.percentile(values, [tail, 100 - tail], axis=0)
        return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)

    def predictions(self, *x: Any) -> np.ndarray:
        """Every refit's prediction at new sizes, shape [R, M] (x as `fit.predict` takes it)."""
        return np.stack([np.atleast_1d(f.predict(*x)) for f in self.fits])

    def predict_interval(self, *x: Any) -> tuple[np.ndarray, np.ndarray]:
        """The percentile interval of the refits' predictions at new sizes: (low [M], high [M])."""
        return self.percentiles(self.predictions(*x))


def check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap(fit_fn: Callable[[np.ndarray, np.ndarray], Any], x: Any, y: Any, n_resamples: int = 1000,
              seed: int = 0, level: float = 0.9, min_distinct: int = 3) -> BootstrapResult:
    """Refit `fit_fn` on `n_resamples` resamples of the points (drawn with replacement).

    Args:
        fit_fn: `fit_fn(x, y) -> law`, the law having `params` (dict) and `predict`.
        x: sizes, shape [P] or [P, k] (rows are resampled; a joint law takes x[:, 0], x[:, 1]).
        y: quality, shape [P].
        n_resamples: resamples drawn (degenerate ones are skipped, not replaced).
        seed: seed of the resampling.
        level: central probability of the intervals.
        min_distinct: resamples with fewer distinct sizes than this are skipped.

    Raises:
        ValueError: mismatched lengths, a level outside (0, 1), or no usable resample.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"mismatched lengths: {len(x)} sizes for {len(y)} values")
    check_level(level)
    full = fit_fn(x, y)
    rng = np.random.default_rng(seed)
    fits, skipped = [], 0
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y), size=len(y))
        if len(np.unique(x[idx], axis=0)) < min_distinct:
            skipped += 1
            continue
        fits.append(fit_fn(x[idx], y[idx]))
    if not fits:
        raise ValueError(f"all {n_resamples} resamples had fewer than {min_distinct} distinct sizes")
    return BootstrapResult(fit=full, fits=fits, level=level, n_skipped=skipped)


# --- seeds ----------------------------------------------------------------------------------------------------------

def seed_counts(samples: np.ndarray) -> np.ndarray:
    """Seeds measured at each point: the finite entries of samples [..., P, S] along S, shape [..., P]."""
    return np.sum(np.isfinite(samples), axis=-1)


def seed_means(samples: np.ndarray) -> np.ndarray:
    """Per-point mean over the measured seeds of samples [..., P, S] (NaN-padded), shape [..., P]."""
    counts = seed_counts(samples)
    total = np.nansum(samples, axis=-1)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def resample_seed_means(samples: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Seed-bootstrap means: at every point, draw its n_p seeds with replacement and average them.

    Args:
        samples: [..., P, S] per-seed values, NaN where a point has fewer than S seeds; every point needs one.
        n_resamples: R.
        rng: the generator drawn from (one call, so a seed fixes the result).

    Returns:
        [..., R, P] resampled means, their spread about each point's mean widened by sqrt(n_p / (n_p - 1)).
    """
    compact = np.sort(samples, axis=-1)  # NaN sorts last, so a point's n_p seeds sit in its first n_p slots
    counts = seed_counts(compact)  # [..., P]
    if np.any(counts < 1):
        raise ValueError("every point needs at least one seed value")
    lead, (p, s) = compact.shape[:-2], compact.shape[-2:]
    draws = rng.integers(0, counts[..., None, :, None], size=lead + (n_resamples, p, s))  # [..., R, P, S]
    values = np.take_along_axis(compact[..., None, :, :], draws, axis=-1)
    used = np.arange(s) < counts[..., None, :, None]  # only the first n_p draws count, so n_p seeds are averaged
    means = np.sum(np.where(used, values, 0.0), axis=-1) / counts[..., None, :]
    # A mean of n draws with replacement varies by (n - 1) / n of the mean's sampling variance (it divides the
    # population variance by n, not the sample variance): widen each deviation by sqrt(n / (n - 1)) so that the
    # resampled means vary as much as the estimated sampling variance of the mean says.
    centre = np.nanmean(compact, axis=-1)[..., None, :]
    widen = np.sqrt(counts / np.maximum(counts - 1, 1))[..., None, :]
    return centre + (means - centre) * widen


def bootstrap_seeds(fit_fn: Callable[[np.ndarray, np.ndarray], Any], x: Any, samples: Any, n_resamples: int = 1000,
                    seed: int = 0, level: float = 0.9) -> BootstrapResult:
    """Refit `fit_fn` on `n_resamples` seed resamples: the sizes stay, each point's seeds are drawn with replacement.

    Args:
        fit_fn: `fit_fn(x, y) -> law`, as in `bootstrap`.
        x: sizes, shape [P].
        samples: per-seed values, shape [P, S], NaN where a point has fewer than S seeds.
        n_resamples: resamples drawn (none is degenerate: every size stays).

    Raises:
        ValueError: mismatched lengths, a level outside (0, 1), or a point without any seed value.
    """
    x = np.asarray(x, dtype=float)
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or len(samples) != len(x):
        raise ValueError(f"samples must be [P, S] with P = {len(x)}, got shape {samples.shape}")
    check_level(level)
    full = fit_fn(x, seed_means(samples))
    means = resample_seed_means(samples, n_resamples, np.random.default_rng(seed))
    return BootstrapResult(fit=full, fits=[fit_fn(x, row) for row in means], level=level, n_skipped=0,
                           method="seeds")


def point_weights(n_points: int, n_resamples: int, rng: np.random.Generator, lead: tuple = ()) -> np.ndarray:
    """Point-bootstrap resamples as multiplicities: [*lead, R, P] counts of each point among P draws."""
    idx = rng.integers(0, n_points, size=lead + (n_resamples, n_points))
    return np.sum(idx[..., None] == np.arange(n_points), axis=-2).astype(float)


# --- batched refits -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerLawBatch:
    """B laws `y = a + b_scaled (x / x_scale)^c` fitted on one x grid.

    Attributes:
        theta: [B, 3] (a, b_scaled, c); NaN rows where a dataset had fewer than 3 distinct weighted sizes.
        x_scale: the common normalisation of x; kind: "metric" or "loss"; sse: [B] weighted squared error.
    """

    theta: np.ndarray
    x_scale: float
    kind: str
    sse: np.ndarray

    def predict(self, x: Any) -> np.ndarray:
        """y of every law at raw sizes x [M]: [B, M]."""
        u = np.atleast_1d(np.asarray(x, dtype=float)) / self.x_scale
        return model(self.theta, u[:, None])


def profile_ab(sums: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Exact box-bounded weighted least squares of centred y on [1, u^c], by enumerating the active sets.

    Args:
        sums: S0 = sum w, Syy = sum w y^2, S1 = sum w u^c, S2 = sum w u^2c, Sy1 = sum w y u^c, for centred y
            (sum w y = 0), each broadcastable to [B, M].
        lo, hi: bounds of (a, b), each entry broadcastable to [B, M] (the intercept's are shifted by the centring).

    Returns:
        a, b, sse, each [B, M].
    """
    s0, syy, s1, s2, sy1 = (sums[k] for k in ("S0", "Syy", "S1", "S2", "Sy1"))
    shape = np.broadcast_shapes(*(np.shape(v) for v in sums.values()))
    best = [np.zeros(shape), np.zeros(shape), np.full(shape, np.inf)]
    for fix_a in (None, lo[0], hi[0]):
        for fix_b in (None, lo[1], hi[1]):
            if any(f is not None and not np.all(np.isfinite(f)) for f in (fix_a, fix_b)):
                continue
            ok = np.ones(shape, dtype=bool)
            if fix_a is None and fix_b is None:
                det = s0 * s2 - s1**2
                ok = det > 1e-12 * s0 * s2  # c = 0 makes the two columns equal; other states cover it
                safe = np.where(ok, det, 1.0)
                a, b = -s1 * sy1 / safe, s0 * sy1 / safe
            elif fix_a is None:
                b = np.broadcast_to(fix_b, shape)
                a = -b * s1 / s0
            elif fix_b is None:
                a = np.broadcast_to(fix_a, shape)
                b = (sy1 - a * s1) / np.where(s2 > 0, s2, 1.0)
            else:
                a, b = np.broadcast_to(fix_a, shape), np.broadcast_to(fix_b, shape)
            for coef, low, high in ((a, lo[0], hi[0]), (b, lo[1], hi[1])):
                tol = 1e-12 * (1 + np.abs(coef))
                ok = ok & (coef >= low - tol) & (coef <= high + tol)
            a, b = np.clip(a, lo[0], hi[0]), np.clip(b, lo[1], hi[1])
            sse = syy - 2 * b * sy1 + a**2 * s0 + 2 * a * b * s1 + b**2 * s2
            better = ok & (sse < best[2])
            for slot, value in zip(best, (a, b, sse)):
                slot[better] = np.broadcast_to(value, shape)[better]
    return tuple(best)


def batch_profile(u: np.ndarray, yc: np.ndarray, w: np.ndarray, c: np.ndarray, lo: list, hi: list) -> tuple:
    """profile_ab at exponents c [B, M] for centred data yc, weights w [B, P] on sizes u [P]."""
    powers = u ** c[..., None]  # [B, M, P]
    sums = {"S0": np.sum(w, axis=1)[:, None], "Syy": np.sum(w * yc**2, axis=1)[:, None],
            "S1": np.einsum("bmp,bp->bm", powers, w), "S2": np.einsum("bmp,bp->bm", powers**2, w),
            "Sy1": np.einsum("bmp,bp->bm", powers, w * yc)}
    return profile_ab(sums, lo, hi)


def fit_chunk(u: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str, iterations: int) -> np.ndarray:
    """theta [B, 3] of one chunk: the exponent grid's best cell, then golden-section steps inside its neighbours."""
    ybar = np.sum(w * y, axis=1) / np.sum(w, axis=1)  # centring keeps the expanded SSE free of cancellation
    yc = y - ybar[:, None]
    coef_lo, coef_hi = coefficient_bounds(kind, 1)
    lo = [coef_lo[0] - ybar[:, None], coef_lo[1]]
    hi = [coef_hi[0] - ybar[:, None], coef_hi[1]]
    axis = exponent_grid(1)[0][:, 0]  # [M], from 0 down to -5
    _, _, grid_sse = batch_profile(u, yc, w, np.broadcast_to(axis, (len(y), len(axis))), lo, hi)
    best = np.argmin(grid_sse, axis=1)
    left, right = axis[np.minimum(best + 1, len(axis) - 1)], axis[np.maximum(best - 1, 0)]
    for _ in range(iterations):
        c1, c2 = right - GOLDEN * (right - left), left + GOLDEN * (right - left)
        _, _, f = batch_profile(u, yc, w, np.stack([c1, c2], axis=1), lo, hi)
        keep_left = f[:, 0] <= f[:, 1]  # the minimum lies in [left, c2]
        right, left = np.where(keep_left, c2, right), np.where(keep_left, left, c1)
    c = np.stack([(left + right) / 2, axis[best]], axis=1)  # the refined exponent, and the grid point as a fallback
    a, b, sse = batch_profile(u, yc, w, c, lo, hi)
    pick = np.argmin(sse, axis=1)
    rows = np.arange(len(y))
    return np.stack([a[rows, pick] + ybar, b[rows, pick], c[rows, pick]], axis=1)


def fit_power_law_batch(x: Any, y: Any, kind: str = "metric", weights: Any = None, iterations: int = 40,
                        chunk: int = 2048) -> PowerLawBatch:
    """Fit `y = a + b x^c` under the bounds of `kind` (as `fit_power_law`) to B datasets on one grid x.

    Args:
        x: sizes, shape [P], all > 0.
        y: values, shape [B, P].
        weights: [B, P] non-negative point weights (bootstrap multiplicities), default all 1.
        iterations: golden-section steps (each shrinks the exponent's bracket by 0.618).
        chunk: datasets fitted together (bounds the [chunk, M, P] temporaries).

    Returns:
        The B laws; a dataset with fewer than 3 distinct sizes of positive weight gets a NaN row.
    """
    check_kind(kind)
    x = np.asarray(x, dtype=float).ravel()
    y = np.atleast_2d(np.asarray(y, dtype=float))
    w = np.ones_like(y) if weights is None else np.broadcast_to(np.asarray(weights, dtype=float), y.shape)
    if y.shape[1] != len(x) or np.any(x <= 0):
        raise ValueError(f"need positive sizes [P] and values [B, P], got {x.shape} and {y.shape}")
    scale = geometric_mean(x)
    u = x / scale
    _, group = np.unique(x, return_inverse=True)
    distinct = np.sum((w @ np.eye(group.max() + 1)[group]) > 0, axis=1)  # sizes with positive total weight
    theta = np.full((len(y), 3), np.nan)
    usable = np.flatnonzero(distinct >= 3)
    for start in range(0, len(usable), chunk):
        rows = usable[start:start + chunk]
        theta[rows] = fit_chunk(u, y[rows], w[rows], kind, iterations)
    sse = np.sum(w * (y - model(theta, u[:, None])) ** 2, axis=1)
    return PowerLawBatch(theta=theta, x_scale=scale, kind=kind, sse=sse)
