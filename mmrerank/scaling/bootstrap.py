"""Bootstrap intervals for scaling-law fits: refit on points resampled with replacement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BootstrapResult:
    """A fit on all points plus its refits on resampled points.

    Attributes:
        fit: the law fitted on all points.
        fits: the laws fitted on the usable resamples.
        level: the central probability of every interval (0.9: the 5th to the 95th percentile).
        n_skipped: resamples skipped as degenerate (too few distinct sizes).
        intervals: per parameter name, the (low, high) percentile interval over `fits`.
    """

    fit: Any
    fits: list[Any]
    level: float
    n_skipped: int
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
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
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
