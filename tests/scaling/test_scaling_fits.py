"""Scaling-law fits: known generating parameters are recovered, bounds hold, starts matter, bootstrap covers."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from mmrerank.scaling.bootstrap import bootstrap
from mmrerank.scaling.fits import fit_joint_law, fit_power_law
from mmrerank.scaling.kaplan import fit_kaplan

X = np.geomspace(1e4, 1e9, 10)


def noisy(y: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return y + np.random.default_rng(seed).normal(0.0, sigma, size=y.shape)


def test_power_law_recovers_a_metric_law():
    y = noisy(0.6 - 2.0 * X**-0.15, 0.002, seed=0)  # rises from 0.10 to 0.51
    law = fit_power_law(X, y, kind="metric")
    assert law.a == pytest.approx(0.6, abs=0.04)
    assert law.c == pytest.approx(-0.15, abs=0.03)
    assert law.b == pytest.approx(-2.0, rel=0.35)
    assert law.r2 > 0.99 and law.n_points == 10 and law.family == "power"
    assert law.predict(X) == pytest.approx(0.6 - 2.0 * X**-0.15, abs=0.006)


def test_power_law_recovers_a_loss_law():
    y = noisy(1.5 + 50.0 * X**-0.3, 0.005, seed=1)  # falls from 4.7 to 1.57
    law = fit_power_law(X, y, kind="loss")
    assert (law.a, law.b, law.c) == (pytest.approx(1.5, abs=0.03), pytest.approx(50.0, rel=0.15),
                                     pytest.approx(-0.3, abs=0.015))


def test_exact_data_predicts_on_raw_sizes():
    x = np.array([2e4, 3e5, 7e6, 9e8])
    law = fit_power_law(x, 0.9 - 4.0 * x**-0.25, kind="metric")
    for new in (1e4, 5e9):
        assert float(law.predict(new)) == pytest.approx(0.9 - 4.0 * new**-0.25, abs=1e-7)


def test_rescaling_x_rescales_only_b():
    y = noisy(0.6 - 2.0 * X**-0.15, 0.002, seed=2)
    big, small = fit_power_law(X, y), fit_power_law(X * 1e-6, y)
    assert small.a == pytest.approx(big.a, abs=1e-6) and small.c == pytest.approx(big.c, abs=1e-6)
    assert small.b == pytest.approx(big.b * 1e-6 ** -big.c, rel=1e-5)  # b x^c = b' (1e-6 x)^c


def test_joint_law_recovers_both_terms():
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e4, 1e7, 6))
    n, d = n.ravel(), d.ravel()
    y = noisy(0.7 - 3.0 * n**-0.2 - 2.0 * d**-0.3, 0.002, seed=3)
    law = fit_joint_law(n, d, y, kind="metric")
    assert law.a == pytest.approx(0.7, abs=0.05)
    assert law.c == pytest.approx(-0.2, abs=0.05) and law.e == pytest.approx(-0.3, abs=0.05)
    assert law.r2 > 0.99 and law.family == "joint"
    truth = 0.7 - 3.0 * 2e9**-0.2 - 2.0 * 1e7**-0.3
    assert float(law.predict(2e9, 1e7)) == pytest.approx(truth, abs=0.01)


def test_kaplan_recovers_loss_and_metric_forms():
    loss = fit_kaplan(X, noisy((1e5 / X) ** 0.3 + 1.0, 0.002, seed=4), kind="loss")
    assert (loss.A, loss.alpha, loss.delta) == (pytest.approx(1e5, rel=0.3), pytest.approx(0.3, abs=0.02),
                                                pytest.approx(1.0, abs=0.02))
    metric = fit_kaplan(X, noisy(0.8 - (1e3 / X) ** 0.2, 0.002, seed=5), kind="metric")
    assert metric.delta == pytest.approx(0.8, abs=0.03) and metric.alpha == pytest.approx(0.2, abs=0.03)
    assert metric.family == "kaplan" and metric.r2 > 0.99


def test_metric_bounds_hold_against_the_data():
    falling = fit_power_law(X, 0.2 + 3.0 * X**-0.2, kind="metric")  # wants b > 0
    assert falling.b <= 0 and -5 <= falling.c <= 0 and 0 <= falling.a <= 1
    above_one = fit_power_law(X, noisy(1.4 - 2.0 * X**-0.1, 0.002, seed=6), kind="metric")  # wants a = 1.4
    assert above_one.a <= 1.0
    step = fit_power_law(X, np.where(X < 2e4, 0.1, 0.5), kind="metric")  # wants c -> -inf
    assert step.c >= -5.0


def test_loss_bounds_hold_against_the_data():
    rising = fit_power_law(X, 3.0 - 5.0 * X**-0.2, kind="loss")  # wants b < 0
    assert rising.b >= 0 and rising.a >= 0
    below_zero = fit_power_law(X, -0.5 + 10.0 * X**-0.1, kind="loss")  # wants a = -0.5
    assert below_zero.a >= 0 and below_zero.b >= 0 and -5 <= below_zero.c <= 0


def test_several_starts_beat_one_poor_start():
    x = np.geomspace(1e4, 1e9, 6)
    y = noisy(1.0 + 500.0 * x**-0.43, 0.01, seed=5)
    best = fit_power_law(x, y, kind="loss")
    assert best.c == pytest.approx(-0.43, abs=0.03) and best.r2 > 0.999
    for start in [(0.5, 1.0, -4.8), (0.0, 1.0, -5.0), (2.0, 1.0, -4.5)]:  # a steep exponent: fits the first point only
        poor = fit_power_law(x, y, kind="loss", starts=[start], auto_starts=False)
        assert poor.r2 < 0.95 and poor.c < -2
        assert fit_power_law(x, y, kind="loss", starts=[start]).r2 == pytest.approx(best.r2)


@pytest.mark.parametrize("x, y, message", [
    ([1.0, 2.0, 3.0], [0.1, 0.2], "mismatched"),
    ([1.0, 2.0], [0.1, 0.2], "at least 3"),
    ([0.0, 2.0, 3.0], [0.1, 0.2, 0.3], "positive"),
    ([1.0, 2.0, 3.0], [0.1, float("nan"), 0.3], "NaN"),
])
def test_bad_points_raise_clear_errors(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)
    with pytest.raises(ValueError, match=message):
        fit_kaplan(x, y, kind="metric")


def test_bad_kind_and_too_few_joint_points_raise():
    with pytest.raises(ValueError, match="kind"):
        fit_power_law(X, X**-0.1, kind="accuracy")
    with pytest.raises(ValueError, match="at least 5"):
        fit_joint_law([1, 2, 3, 4], [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])


def test_bootstrap_intervals_cover_the_truth_most_of_the_time():
    x = np.geomspace(1e5, 1e9, 8)
    fit = partial(fit_power_law, kind="metric", n_random=0)
    covered_pred = covered_c = 0
    for seed in range(20):
        y = noisy(0.6 - 2.0 * x**-0.15, 0.004, seed=100 + seed)
        result = bootstrap(fit, x, y, n_resamples=60, seed=seed)
        low, high = result.predict_interval([1e7])
        covered_pred += bool(low[0] <= 0.6 - 2.0 * 1e7**-0.15 <= high[0])
        covered_c += bool(result.intervals["c"][0] <= -0.15 <= result.intervals["c"][1])
        assert result.intervals["c"][0] <= result.fit.c <= result.intervals["c"][1] or result.fit.c == -5
    assert covered_pred >= 14 and covered_c >= 14


def test_bootstrap_skips_degenerate_resamples():
    x = np.array([1e4, 1e4, 1e4, 1e4, 1e5, 1e6])
    y = 0.5 - x**-0.2
    result = bootstrap(partial(fit_power_law, n_random=0), x, y, n_resamples=30, seed=0)
    assert result.n_skipped > 0 and len(result.fits) + result.n_skipped == 30
    low, high = result.predict_interval(np.array([1e7, 1e8]))
    assert low.shape == high.shape == (2,) and np.all(low <= high)
    with pytest.raises(ValueError, match="distinct"):
        bootstrap(fit_power_law, np.array([1e4, 1e4, 1e5, 1e5]), np.array([0.1, 0.1, 0.2, 0.2]), n_resamples=5)


def test_bootstrap_of_a_joint_law_takes_two_columns():
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 3), np.geomspace(1e4, 1e7, 3))
    x = np.stack([n.ravel(), d.ravel()], axis=1)
    y = 0.7 - 3.0 * x[:, 0] ** -0.2 - 2.0 * x[:, 1] ** -0.3
    result = bootstrap(lambda xs, ys: fit_joint_law(xs[:, 0], xs[:, 1], ys, n_random=0), x, y, n_resamples=5,
                       min_distinct=5)
    low, high = result.predict_interval(2e9, 1e7)
    assert set(result.intervals) == {"a", "b", "c", "d_coef", "e"} and low[0] <= high[0]
