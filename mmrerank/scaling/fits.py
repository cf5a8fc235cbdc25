"""Scaling laws fitted to (size, quality) points: `y = a + b * x^c`, its two-variable joint form, and Kaplan's form.

The saturating laws are fitted by least squares in linear space (as the reranking scaling-law study does with
`curve_fit`), under bounds that encode the direction of the quantity:

- `kind="metric"` (ranking metrics in [0, 1], higher is better): a in [0, 1], b <= 0, c in [-5, 0];
- `kind="loss"` (losses, contrastive entropy; lower is better): a >= 0, b >= 0, c in [-5, 0].

How: x is divided by its geometric mean (so 1e4..1e9 is as easy as 0.1..10); the exponents are profiled on a grid,
where for each exponent the linear coefficients are the exact bounded least-squares solution; the best grid
minima, a few seeded random exponents and any starts the caller gives are then polished with scipy's bounded
`least_squares`, and the best result is kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from scipy.optimize import least_squares

KINDS = ("metric", "loss")
EXPONENT_BOUNDS = (-5.0, 0.0)


def check_points(columns: Sequence[Sequence[float]], y: Sequence[float], min_points: int = 3) -> tuple:
    """Validate and convert scaling points.

    Args:
        columns: one or more size variables, each of shape [P] (parameters, examples, ...), all > 0.
        y: the measured quality, shape [P].
        min_points: the fewest points the fit accepts.

    Returns:
        (list of float arrays [P], float array [P]).

    Raises:
        ValueError: mismatched lengths, fewer than `min_points` points, a non-positive size, or a non-finite value.
    """
    y = np.asarray(y, dtype=float).ravel()
    cols = [np.asarray(col, dtype=float).ravel() for col in columns]
    for col in cols:
        if len(col) != len(y):
            raise ValueError(f"mismatched lengths: {len(col)} sizes for {len(y)} values")
    if len(y) < min_points:
        raise ValueError(f"a fit needs at least {min_points} points, got {len(y)}")
    for arr in [*cols, y]:
        if not np.all(np.isfinite(arr)):
            raise ValueError("scaling points contain NaN or infinite values")
    for col in cols:
        if np.any(col <= 0):
            raise ValueError(f"sizes must be positive, got minimum {col.min()}")
    return cols, y


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (1.0 for a perfect fit of constant data, 0.0 otherwise)."""
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    if ss_tot <= 1e-300:
        return 1.0 if ss_res <= 1e-24 else 0.0
    return 1.0 - ss_res / ss_tot


def geometric_mean(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x))))


# --- the generic fitter: y = a + sum_j b_j * u_j^c_j on normalised sizes u -------------------------------------------

def coefficient_bounds(kind: str, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the linear coefficients [a, b_1, ..., b_k] for a kind."""
    if kind == "metric":
        return np.array([0.0] + [-np.inf] * n_terms), np.array([1.0] + [0.0] * n_terms)
    return np.array([0.0] + [0.0] * n_terms), np.array([np.inf] + [np.inf] * n_terms)


def box_lstsq(design: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact box-constrained least squares for a batch of small designs, by enumerating active sets.

    The optimum has some set of coefficients at a bound and the rest at the unconstrained optimum given those, so
    the best feasible candidate over all free/lower/upper assignments is the optimum.

    Args:
        design: [M, P, q] design matrices (one per exponent setting).
        y: [P] targets.
        lo, hi: [q] bounds (may be infinite).

    Returns:
        coef [M, q] and sum of squared residuals [M].
    """
    m, _, q = design.shape
    best_coef = np.zeros((m, q))
    best_sse = np.full(m, np.inf)
    for state in itertools.product((0, 1, 2), repeat=q):  # 0 free, 1 at lower bound, 2 at upper bound
        fixed_vals = np.array([lo[j] if s == 1 else hi[j] if s == 2 else 0.0 for j, s in enumerate(state)])
        if not np.all(np.isfinite(fixed_vals)):
            continue
        free = [j for j, s in enumerate(state) if s == 0]
        resid = y[None, :] - design @ fixed_vals  # [M, P]
        coef = np.broadcast_to(fixed_vals, (m, q)).copy()
        feasible = np.ones(m, dtype=bool)
        if free:
            sub = design[:, :, free]  # [M, P, f]
            sol = (np.linalg.pinv(sub) @ resid[:, :, None])[:, :, 0]  # [M, f]
            tol = 1e-12 * (1 + np.abs(sol))
            feasible = np.all((sol >= lo[free] - tol) & (sol <= hi[free] + tol), axis=1)
            coef[:, free] = np.clip(sol, lo[free], hi[free])
            resid = resid - np.einsum("mpf,mf->mp", sub, coef[:, free])
        sse = np.sum(resid**2, axis=1)
        better = feasible & (sse < best_sse)
        best_sse[better] = sse[better]
        best_coef[better] = coef[better]
    return best_coef, best_sse


def profile(u: np.ndarray, y: np.ndarray, exponents: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Best bounded linear coefficients for each exponent setting.

    Args:
        u: [P, k] normalised sizes.
        y: [P] targets.
        exponents: [M, k] exponent settings.

    Returns:
        coef [M, 1 + k] (a, b_1..b_k) and sse [M].
    """
    powers = u[None, :, :] ** exponents[:, None, :]  # [M, P, k]
    design = np.concatenate([np.ones(powers.shape[:2] + (1,)), powers], axis=2)
    lo, hi = coefficient_bounds(kind, u.shape[1])
    return box_lstsq(design, y, lo, hi)


def exponent_grid(n_terms: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Exponent settings [M, k] on a grid denser near 0 (where fitted exponents usually are), and the grid shape."""
    per_axis = 121 if n_terms == 1 else 25
    axis = EXPONENT_BOUNDS[0] * np.linspace(0.0, 1.0, per_axis) ** 2
    mesh = np.meshgrid(*([axis] * n_terms), indexing="ij")
    return np.stack([g.ravel() for g in mesh], axis=1), mesh[0].shape


def grid_minima(sse: np.ndarray, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Indices of the `count` lowest local minima (no lower neighbour along any axis) of a gridded profile."""
    grid = sse.reshape(shape)
    is_min = np.isfinite(grid)
    for axis in range(grid.ndim):
        padded = np.pad(grid, [(1, 1) if a == axis else (0, 0) for a in range(grid.ndim)], constant_values=np.inf)
        before = np.take(padded, range(0, grid.shape[axis]), axis=axis)
        after = np.take(padded, range(2, grid.shape[axis] + 2), axis=axis)
        is_min &= (grid <= before) & (grid <= after)
    idx = np.flatnonzero(is_min.ravel())
    return idx[np.argsort(sse[idx])][:count]


def model(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y for theta = [a, b_1, c_1, ..., b_k, c_k] at normalised sizes u [P, k].

    theta may carry leading batch dimensions, [..., 1 + 2k]; the result is then [..., P].
    """
    theta = np.asarray(theta, dtype=float)
    out = np.broadcast_to(theta[..., :1], theta.shape[:-1] + (u.shape[0],))
    for j in range(u.shape[1]):
        out = out + theta[..., 1 + 2 * j, None] * u[:, j] ** theta[..., 2 + 2 * j, None]
    return out


def jacobian(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    """d model / d theta at normalised sizes u [P, k]: [P, 1 + 2k], or [..., P, 1 + 2k] for a batch of thetas."""
    theta = np.asarray(theta, dtype=float)
    jac = np.ones(theta.shape[:-1] + (u.shape[0], theta.shape[-1]))
    for j in range(u.shape[1]):
        power = u[:, j] ** theta[..., 2 + 2 * j, None]  # [..., P]
        jac[..., 1 + 2 * j] = power
        jac[..., 2 + 2 * j] = theta[..., 1 + 2 * j, None] * power * np.log(u[:, j])
    return jac


def theta_bounds(kind: str, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    coef_lo, coef_hi = coefficient_bounds(kind, n_terms)
    lo, hi = [coef_lo[0]], [coef_hi[0]]
    for j in range(n_terms):
        lo += [coef_lo[1 + j], EXPONENT_BOUNDS[0]]
        hi += [coef_hi[1 + j], EXPONENT_BOUNDS[1]]
    return np.array(lo), np.array(hi)


def to_theta(coef: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    theta = [coef[0]]
    for j, c in enumerate(exponents):
        theta += [coef[1 + j], c]
    return np.array(theta, dtype=float)


def polish(theta0: np.ndarray, u: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Refine theta from a start under bounds with scipy's `least_squares` (trust-region reflective)."""
    start = np.clip(theta0, lo, hi)
    result = least_squares(lambda t: model(t, u) - y, start, jac=lambda t: jacobian(t, u), bounds=(lo, hi),
                           method="trf", x_scale="jac")
    return np.clip(result.x, lo, hi)


def fit_terms(u: np.ndarray, y: np.ndarray, kind: str, starts: list[np.ndarray], auto_starts: bool,
              n_random: int, seed: int) -> np.ndarray:
    """Best theta = [a, b_1, c_1, ...] for `y = a + sum_j b_j u_j^c_j` over all starting points.

    Args:
        u: [P, k] normalised sizes.
        starts: explicit thetas (normalised units) to polish.
        auto_starts: also polish the best grid minima and `n_random` seeded random exponent settings.
    """
    k = u.shape[1]
    lo, hi = theta_bounds(kind, k)
    candidates = [polish(s, u, y, lo, hi) for s in starts]
    if auto_starts:
        grid, shape = exponent_grid(k)
        coef, sse = profile(u, y, grid, kind)
        picks = [to_theta(coef[i], grid[i]) for i in grid_minima(sse, shape, count=3)]
        if n_random:
            rand_exp = np.random.default_rng(seed).uniform(*EXPONENT_BOUNDS, size=(n_random, k))
            rand_coef, _ = profile(u, y, rand_exp, kind)
            picks += [to_theta(rand_coef[i], rand_exp[i]) for i in range(n_random)]
        candidates += [picks[0]] + [polish(t, u, y, lo, hi) for t in picks]  # the unpolished grid optimum counts
    if not candidates:
        raise ValueError("no starting points: pass `starts` or leave `auto_starts` on")
    sse = [float(np.sum((model(theta, u) - y) ** 2)) for theta in candidates]
    best = candidates[int(np.argmin(sse))]
    return best


def normalise_start(start: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """A start [a, b_1, c_1, ...] in raw units, with each b_j rescaled to the normalised sizes u_j = x_j / scale_j."""
    theta = np.array(start, dtype=float)
    if len(theta) != 1 + 2 * len(scales):
        raise ValueError(f"a start needs {1 + 2 * len(scales)} values (a, then b and c per term), got {len(theta)}")
    for j, scale in enumerate(scales):
        theta[1 + 2 * j] *= scale ** theta[2 + 2 * j]
    return theta


# --- public laws ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerLaw:
    """`y = a + b * x^c`, stored with x normalised by `x_scale` (so `b = b_scaled * x_scale^-c`).

    Attributes:
        a: the asymptote as x grows; b_scaled, c: coefficient (for x / x_scale) and exponent.
        kind: "metric" or "loss"; r2: in-sample R^2; n_points: points fitted.
    """

    a: float
    b_scaled: float
    c: float
    x_scale: float
    kind: str
    r2: float
    n_points: int
    family: ClassVar[str] = "power"

    @property
    def b(self) -> float:
        return self.b_scaled * self.x_scale ** (-self.c)

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c}

    def predict(self, x: Sequence[float] | float) -> np.ndarray:
        """y at raw sizes x (shape [M] or scalar)."""
        return self.a + self.b_scaled * (np.asarray(x, dtype=float) / self.x_scale) ** self.c

    def to_dict(self) -> dict:
        return {"family": self.family, "kind": self.kind, **self.params, "r2": self.r2, "n_points": self.n_points}


def fit_power_law(x: Sequence[float], y: Sequence[float], kind: str = "metric",
                  starts: Sequence[Sequence[float]] = (), auto_starts: bool = True, n_random: int = 2,
                  seed: int = 0) -> PowerLaw:
    """Fit `y = a + b * x^c` under the bounds of `kind`.

    Args:
        x: sizes, shape [P], all > 0 (parameters or examples; any magnitude).
        y: quality, shape [P].
        kind: "metric" (higher is better) or "loss" (lower is better).
        starts: extra starting points (a, b, c) in raw units.
        auto_starts: also start from the exponent-grid minima and `n_random` seeded random exponents.
        seed: seed of the random starts.

    Raises:
        ValueError: fewer than 3 points, mismatched lengths, non-positive x, NaN, or an unknown kind.
    """
    check_kind(kind)
    (x,), y = check_points([x], y)
    scale = geometric_mean(x)
    u = (x / scale)[:, None]
    theta = fit_terms(u, y, kind, [normalise_start(s, [scale]) for s in starts], auto_starts, n_random, seed)
    law = PowerLaw(a=float(theta[0]), b_scaled=float(theta[1]), c=float(theta[2]), x_scale=scale, kind=kind,
                   r2=0.0, n_points=len(y))
    return replace(law, r2=r_squared(y, law.predict(x)))


@dataclass(frozen=True)
class JointLaw:
    """`y = a + b * n^c + d_coef * d^e` over parameters n and training examples d (stored normalised, see PowerLaw)."""

    a: float
    b_scaled: float
    c: float
    d_scaled: float
    e: float
    n_scale: float
    d_scale: float
    kind: str
    r2: float
    n_points: int
    family: ClassVar[str] = "joint"

    @property
    def b(self) -> float:
        return self.b_scaled * self.n_scale ** (-self.c)

    @property
    def d_coef(self) -> float:
        return self.d_scaled * self.d_scale ** (-self.e)

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "d_coef": self.d_coef, "e": self.e}

    def predict(self, n: Sequence[float] | float, d: Sequence[float] | float) -> np.ndarray:
        """y at raw parameters n and examples d (broadcast together)."""
        n = np.asarray(n, dtype=float) / self.n_scale
        d = np.asarray(d, dtype=float) / self.d_scale
        return self.a + self.b_scaled * n**self.c + self.d_scaled * d**self.e

    def to_dict(self) -> dict:
        return {"family": self.family, "kind": self.kind, **self.params, "r2": self.r2, "n_points": self.n_points}


def fit_joint_law(n: Sequence[float], d: Sequence[float], y: Sequence[float], kind: str = "metric",
                  starts: Sequence[Sequence[float]] = (), auto_starts: bool = True, n_random: int = 2,
                  seed: int = 0) -> JointLaw:
    """Fit `y = a + b * n^c + d_coef * d^e`, each term bounded as in `fit_power_law`.

    Args:
        n: parameters, shape [P]; d: training examples, shape [P]; y: quality, shape [P] (at least 5 points).
        starts: extra starting points (a, b, c, d_coef, e) in raw units.
    """
    check_kind(kind)
    (n, d), y = check_points([n, d], y, min_points=5)
    scales = [geometric_mean(n), geometric_mean(d)]
    u = np.stack([n / scales[0], d / scales[1]], axis=1)
    theta = fit_terms(u, y, kind, [normalise_start(s, scales) for s in starts], auto_starts, n_random, seed)
    law = JointLaw(a=float(theta[0]), b_scaled=float(theta[1]), c=float(theta[2]), d_scaled=float(theta[3]),
                   e=float(theta[4]), n_scale=scales[0], d_scale=scales[1], kind=kind, r2=0.0, n_points=len(y))
    return replace(law, r2=r_squared(y, law.predict(n, d)))
