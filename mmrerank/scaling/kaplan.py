"""Kaplan's form of a scaling law, `L(x) = (A / x)^alpha + delta`, as a second family to compare forecasts with.

For losses (lower is better) the gap `y - delta` shrinks as a pure power of x; the metric analogue is
`y = delta - (A / x)^alpha`, the gap `delta - y` below a ceiling `delta <= 1` shrinking the same way. Unlike
`fit_power_law` (least squares in linear space), this family is fitted the way Kaplan-style studies read their
plots: for a given delta, a straight line through log(gap) against log(x); delta itself is chosen (a profile over a
grid, then refined) so that this line's curve has the least squared error in y. (Choosing delta by the log-space
error instead would push it to the far end of its range, where all gaps look alike.) The two families agree on
clean data and disagree on how they weigh the smallest gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize_scalar

from mmrerank.scaling.fits import check_kind, check_points, geometric_mean, r_squared


@dataclass(frozen=True)
class KaplanLaw:
    """`y = delta + sign * (A / x)^alpha` (sign +1 for losses, -1 for metrics), stored as a line in log space.

    Attributes:
        intercept, slope: log(gap) = intercept + slope * log(x / x_scale), slope = -alpha <= 0.
        delta: the asymptote; kind: "metric" or "loss"; r2: in-sample R^2 in linear space.
    """

    intercept: float
    slope: float
    delta: float
    x_scale: float
    kind: str
    r2: float
    n_points: int
    family: ClassVar[str] = "kaplan"

    @property
    def alpha(self) -> float:
        return -self.slope

    @property
    def A(self) -> float:
        if self.alpha <= 0:
            return float("inf")
        return float(self.x_scale * np.exp(self.intercept / self.alpha))

    @property
    def sign(self) -> float:
        return 1.0 if self.kind == "loss" else -1.0

    @property
    def params(self) -> dict[str, float]:
        return {"A": self.A, "alpha": self.alpha, "delta": self.delta}

    def predict(self, x: Sequence[float] | float) -> np.ndarray:
        """y at raw sizes x (shape [M] or scalar)."""
        log_u = np.log(np.asarray(x, dtype=float) / self.x_scale)
        return self.delta + self.sign * np.exp(self.intercept + self.slope * log_u)

    def to_dict(self) -> dict:
        return {"family": self.family, "kind": self.kind, **self.params, "r2": self.r2, "n_points": self.n_points}


def log_line(log_u: np.ndarray, log_gap: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line (intercept, slope <= 0) through log gaps [P] and its sum of squared log residuals."""
    centred = log_u - log_u.mean()
    denom = float(np.sum(centred**2))
    slope = min(0.0, float(np.sum(centred * log_gap)) / denom) if denom > 0 else 0.0
    intercept = float(log_gap.mean() - slope * log_u.mean())
    sse = float(np.sum((log_gap - intercept - slope * log_u) ** 2))
    return intercept, slope, sse


def delta_range(y: np.ndarray, kind: str) -> tuple[float, float, float]:
    """(start, direction, room): delta = start - direction * t for gaps t in (0, room]."""
    if kind == "loss":
        if y.min() <= 0:
            raise ValueError("the Kaplan form of a loss needs positive values (its asymptote delta is >= 0)")
        return float(y.min()), 1.0, float(y.min())
    ceiling = 1.0 if y.max() < 1.0 else float(y.max() + max(1.0, np.ptp(y)))
    return float(y.max()), -1.0, ceiling - float(y.max())


def fit_kaplan(x: Sequence[float], y: Sequence[float], kind: str = "loss") -> KaplanLaw:
    """Fit `y = (A / x)^alpha + delta` (loss) or `y = delta - (A / x)^alpha` (metric) by a line in log-log space.

    Args:
        x: sizes, shape [P], all > 0; y: quality, shape [P].
        kind: "loss" (delta in [0, min y)) or "metric" (delta in (max y, 1]).

    Raises:
        ValueError: as `fit_power_law`; also for a loss with a non-positive value.
    """
    check_kind(kind)
    (x,), y = check_points([x], y)
    scale = geometric_mean(x)
    log_u = np.log(x / scale)
    start, direction, room = delta_range(y, kind)
    smallest = room * 1e-6

    def objective(log_t: float) -> float:  # squared error in y of the log-space line for this delta
        delta = start - direction * np.exp(log_t)
        intercept, slope, _ = log_line(log_u, np.log(direction * (y - delta)))
        return float(np.sum((delta + direction * np.exp(intercept + slope * log_u) - y) ** 2))

    grid = np.linspace(np.log(smallest), np.log(room), 64)
    values = [objective(t) for t in grid]
    i = int(np.argmin(values))
    bracket = (grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    refined = minimize_scalar(objective, bounds=bracket, method="bounded", options={"xatol": 1e-6})
    log_t = float(refined.x) if refined.fun < values[i] else float(grid[i])
    delta = start - direction * np.exp(log_t)
    intercept, slope, _ = log_line(log_u, np.log(direction * (y - delta)))
    law = KaplanLaw(intercept=intercept, slope=slope, delta=float(delta), x_scale=scale, kind=kind, r2=0.0,
                    n_points=len(y))
    return replace(law, r2=r_squared(y, law.predict(x)))
