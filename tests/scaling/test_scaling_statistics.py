"""Fit statistics, delta-method intervals, seeds and calibration, each against an independent expectation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mmrerank.scaling.bootstrap import (
    bootstrap_seeds,
    fit_power_law_batch,
    point_weights,
    resample_seed_means,
    seed_counts,
    seed_means,
)
from mmrerank.scaling.fits import fit_power_law
from mmrerank.scaling.statistics import (
    Coverage,
    adjusted_r2,
    calibration_note,
    delta_interval,
    f_test,
    f_vs_constant,
    f_vs_loglinear,
    holdout_distance,
    interval_coverage,
    law_delta_interval,
    pooled_seed_sd,
    seed_standard_errors,
    trust_note,
)

X = np.geomspace(1e6, 1e9, 8)


def ragged_samples(seed: int) -> np.ndarray:
    """[6, 4] per-seed values with 1-4 seeds per point (NaN-padded, NaNs not only at the end)."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.5, 0.02, size=(6, 4))
    for p, missing in enumerate([0, 1, 2, 3, 1, 0]):
        samples[p, rng.choice(4, size=missing, replace=False)] = np.nan
    return samples


# --- adjusted R^2 and F-tests ---------------------------------------------------------------------------------------

def test_adjusted_r2_by_hand_and_by_its_definition():
    assert adjusted_r2(0.9, n=10, p=3) == pytest.approx(1 - 0.1 * 9 / 7)
    assert adjusted_r2(0.99, n=3, p=3) is None
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 12)
    y = 1 + x - 2 * x**2 + rng.normal(0, 0.1, 12)
    pred = np.polyval(np.polyfit(x, y, 2), x)  # three parameters
    sse, sst = np.sum((y - pred) ** 2), np.sum((y - y.mean()) ** 2)
    assert adjusted_r2(1 - sse / sst, n=12, p=3) == pytest.approx(1 - (sse / 9) / (sst / 11))


def test_f_test_of_a_line_against_a_constant_is_linregress():
    """Where the models coincide (a line vs a constant), F = t^2 of the slope and the p-values agree."""
    rng = np.random.default_rng(1)
    for n in (5, 9, 30):
        x = rng.uniform(0, 10, n)
        y = 0.3 + 0.02 * x + rng.normal(0, 0.1, n)
        line = stats.linregress(x, y)
        test = f_vs_constant(y, line.intercept + line.slope * x, p=2)
        assert (test.df_num, test.df_den) == (1, n - 2)
        assert test.f == pytest.approx((line.slope / line.stderr) ** 2, rel=1e-9)
        assert test.p_value == pytest.approx(line.pvalue, rel=1e-7)


def test_f_test_hand_cases():
    # F = ((10 - 2) / 2) / (2 / 5) = 10; for F(2, d) the tail is (1 + 2F/d)^(-d/2) = 5^-2.5
    test = f_test(10.0, 1, 2.0, 3, n=8)
    assert test.f == pytest.approx(10.0) and test.p_value == pytest.approx(5**-2.5)
    exact = f_test(1.0, 1, 0.0, 3, n=8)  # the fuller model is exact
    assert exact.f == np.inf and exact.p_value == 0.0 and exact.to_dict()["F"] is None
    worse = f_test(1.0, 2, 1.5, 3, n=8)  # not nested: the reduced model fits better
    assert worse.f < 0 and worse.p_value == 1.0
    none = f_test(1.0, 1, 0.5, 3, n=3)
    assert none.f is None and none.p_value is None and "n > 3" in none.reason


def test_f_against_a_line_in_log_x():
    rng = np.random.default_rng(2)
    y = 0.6 - 2.0 * X**-0.15 + rng.normal(0, 0.002, len(X))
    law = fit_power_law(X, y)
    test = f_vs_loglinear(X, y, law.predict(X))
    slope, intercept = np.polyfit(np.log(X), y, 1)
    sse_line = np.sum((y - intercept - slope * np.log(X)) ** 2)
    sse_law = np.sum((y - law.predict(X)) ** 2)
    assert (test.df_num, test.df_den) == (1, len(X) - 3)
    assert test.f == pytest.approx((sse_line - sse_law) / (sse_law / (len(X) - 3)), rel=1e-6)
    assert test.p_value < 1e-3 and "not nested" in test.comparison
    exact_line = 0.2 + 0.01 * np.log(X)  # the law only approaches a line, so the line fits better
    on_line = f_vs_loglinear(X, exact_line, fit_power_law(X, exact_line).predict(X))
    assert on_line.f <= 0 and on_line.p_value == 1.0


# --- delta method ---------------------------------------------------------------------------------------------------

def test_delta_interval_of_a_line_is_the_regression_confidence_interval():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 5, 9)
    y = 1.0 + 2.0 * x + rng.normal(0, 0.3, 9)
    jac = np.stack([np.ones_like(x), x], axis=1)
    coef = np.linalg.lstsq(jac, y, rcond=None)[0]
    x0 = np.array([-1.0, 2.5, 8.0])
    grad = np.stack([np.ones_like(x0), x0], axis=1)
    interval, reason = delta_interval(jac, y - jac @ coef, grad, grad @ coef, level=0.9)
    s = np.sqrt(np.sum((y - jac @ coef) ** 2) / 7)
    half = stats.t.ppf(0.95, 7) * s * np.sqrt(1 / 9 + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    assert reason is None and interval.dof == 7 and interval.sigma == pytest.approx(s)
    assert interval.low == pytest.approx(grad @ coef - half) and interval.high == pytest.approx(grad @ coef + half)


def test_delta_interval_of_a_law_is_invariant_to_its_parametrisation():
    """The interval from the law's normalised Jacobian equals one from finite differences in raw (a, b, c)."""
    rng = np.random.default_rng(4)
    y = 0.6 - 2.0 * X**-0.15 + rng.normal(0, 0.003, len(X))
    law = fit_power_law(X, y)
    interval, reason = law_delta_interval(law, X, y, [3e9, 1e10])

    def curve(theta, x):
        return theta[0] + theta[1] * x ** theta[2]

    theta = np.array([law.a, law.b, law.c])
    steps = 1e-6 * np.maximum(np.abs(theta), 1e-3)
    numeric = [np.stack([(curve(theta + np.eye(3)[k] * steps[k], x) - curve(theta - np.eye(3)[k] * steps[k], x))
                         / (2 * steps[k]) for k in range(3)], axis=1) for x in (X, np.array([3e9, 1e10]))]
    expected, _ = delta_interval(numeric[0], y - curve(theta, X), numeric[1], curve(theta, np.array([3e9, 1e10])))
    assert reason is None
    assert interval.se == pytest.approx(expected.se, rel=1e-4)
    assert interval.low == pytest.approx(expected.low, abs=1e-6)


def test_delta_interval_degrades_with_a_reason():
    interval, reason = delta_interval(np.ones((3, 3)), np.zeros(3), np.ones((1, 3)), np.zeros(1))
    assert interval is None and "no residual degree of freedom" in reason
    rising = fit_power_law(X, 3.0 - 5.0 * X**-0.2, kind="loss")  # wants b < 0, gets b = 0: c is not identified
    assert abs(rising.b) < 1e-12
    interval, reason = law_delta_interval(rising, X, 3.0 - 5.0 * X**-0.2, [1e10])
    assert interval is None and "singular" in reason


# --- seeds ----------------------------------------------------------------------------------------------------------

def test_seed_means_errors_and_pooled_sd_against_a_loop():
    samples = ragged_samples(5)
    pooled_num = pooled_dof = 0.0
    for p, row in enumerate(samples):
        values = row[np.isfinite(row)]
        assert seed_counts(samples)[p] == len(values)
        assert seed_means(samples)[p] == pytest.approx(sum(values) / len(values))
        if len(values) >= 2:
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            assert seed_standard_errors(samples)[p] == pytest.approx(np.sqrt(var / len(values)))
            pooled_num, pooled_dof = pooled_num + var * (len(values) - 1), pooled_dof + len(values) - 1
        else:
            assert np.isnan(seed_standard_errors(samples)[p])
    assert pooled_seed_sd(samples) == pytest.approx(np.sqrt(pooled_num / pooled_dof))
    assert pooled_seed_sd(samples[:, :1]) is None


def test_seed_resamples_draw_each_points_own_seeds():
    samples = ragged_samples(6)
    means = resample_seed_means(samples, 4000, np.random.default_rng(0))
    assert means.shape == (4000, 6)
    for p, row in enumerate(samples):
        values = row[np.isfinite(row)]
        n = len(values)
        possible = {round(float(np.mean(c)), 9) for c in itertools.combinations_with_replacement(values, n)}
        widen = np.sqrt(n / (n - 1)) if n > 1 else 1.0
        unwidened = values.mean() + (means[:, p] - values.mean()) / widen
        assert {round(float(m), 9) for m in unwidened} <= possible  # n_p draws of the point's own seeds
        # widened so the resampled means vary as the sample variance (ddof 1) / n says a mean of n seeds does
        expected = values.var(ddof=1) / n if n > 1 else 0.0
        assert means[:, p].var() == pytest.approx(expected, rel=0.12, abs=1e-12)
    again = resample_seed_means(samples, 4000, np.random.default_rng(0))
    assert np.array_equal(means, again)
    with pytest.raises(ValueError, match="at least one seed"):
        resample_seed_means(np.full((2, 2), np.nan), 3, np.random.default_rng(0))


def test_seed_bootstrap_keeps_the_sizes_and_refits_resampled_means():
    rng = np.random.default_rng(7)
    truth = 0.6 - 2.0 * X**-0.15
    samples = truth[:, None] + rng.normal(0, 0.003, size=(len(X), 3))
    seen = []

    def recorder(x, y):
        seen.append((x.copy(), y.copy()))
        return fit_power_law(x, y, n_random=0)

    result = bootstrap_seeds(recorder, X, samples, n_resamples=25, seed=1)
    assert result.method == "seeds" and len(result.fits) == 25 and result.n_skipped == 0
    assert np.array_equal(seen[0][1], samples.mean(axis=1))  # the full fit takes the per-point means
    for x, y in seen[1:]:
        assert np.array_equal(x, X)
        for p in range(len(X)):
            centre = samples[p].mean()
            possible = [centre + (np.mean(c) - centre) * np.sqrt(1.5) for c in itertools.product(samples[p], repeat=3)]
            assert np.min(np.abs(np.array(possible) - y[p])) < 1e-12  # 3 draws of its seeds, widened by sqrt(3/2)
    again = bootstrap_seeds(recorder, X, samples, n_resamples=25, seed=1)
    assert again.intervals == result.intervals


# --- batched refits -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, truth", [("metric", 0.6 - 2.0 * X**-0.15), ("loss", 1.5 + 50.0 * X**-0.3)])
def test_batch_fit_equals_the_single_fit_with_repeated_points(kind, truth):
    rng = np.random.default_rng(8)
    y = truth + rng.normal(0, 0.01, size=(12, len(X)))
    weights = point_weights(len(X), 12, rng)
    batch = fit_power_law_batch(X, y, kind, weights=weights)
    for i in range(12):
        repeat = weights[i].astype(int)
        law = fit_power_law(np.repeat(X, repeat), np.repeat(y[i], repeat), kind=kind)
        single = np.sum(repeat * (y[i] - law.predict(X)) ** 2)
        assert batch.sse[i] <= single * (1 + 1e-7) + 1e-15
        assert batch.predict([3e9])[i, 0] == pytest.approx(float(law.predict(3e9)), abs=1e-4)
    assert np.all(weights.sum(axis=1) == len(X))


def test_batch_fit_skips_resamples_with_too_few_sizes():
    weights = np.zeros((2, len(X)))
    weights[0, :2] = 4  # two distinct sizes
    weights[1, :3] = 1
    batch = fit_power_law_batch(X, np.tile(0.5 - X**-0.2, (2, 1)), weights=weights)
    assert np.all(np.isnan(batch.theta[0])) and np.all(np.isfinite(batch.theta[1]))


# --- distance, trust and calibration --------------------------------------------------------------------------------

def test_holdout_distance_against_a_naive_loop():
    rng = np.random.default_rng(9)
    x = np.geomspace(1e6, 1e9, 6)
    y = 0.6 - 2.0 * x**-0.15 + rng.normal(0, 0.002, 6)
    order = rng.permutation(6)
    rows = holdout_distance(x[order], y[order], "metric")
    assert [r["held_out"] for r in rows] == [1, 2, 3]
    for h, row in zip((1, 2, 3), rows):
        direct = float(fit_power_law(x[:6 - h], y[:6 - h]).predict(x[-1]))
        assert row["n_fit"] == 6 - h and row["x"] == x[-1] and row["fit_max_x"] == x[5 - h]
        assert row["predicted"] == pytest.approx(direct) and row["abs_error"] == pytest.approx(abs(direct - y[-1]))
        assert row["decades"] == pytest.approx(np.log10(x[-1] / x[5 - h]))
    assert holdout_distance(x[:3], y[:3]) == []


def test_calibration_note_names_the_intervals_that_undercover():
    def coverage(bootstrap, delta):
        return Coverage(bootstrap, delta, n_laws=200, n_bootstrap=200, n_delta=180, method="seeds", n_seeds=2,
                        noise_sd=0.01, n_resamples=100, level=0.9)

    assert calibration_note(None) is None
    assert calibration_note(coverage(0.85, 0.97)) is None  # within 0.1 of the level
    note = calibration_note(coverage(0.73, 0.96))
    assert note == "bootstrap covered 73% of 200 seeded laws at 90%: too narrow"
    assert "delta covered 50% of 180" in calibration_note(coverage(0.73, 0.5))
    assert calibration_note(coverage(None, 0.5)) == "delta covered 50% of 180 seeded laws at 90%: too narrow"


def test_trust_note_flags_few_sizes_and_few_degrees_of_freedom():
    assert "3 distinct sizes" in trust_note(X[:3]) and "n - p = 0" in trust_note(X[:3])
    assert "n - p = 1" in trust_note(X[:4]) and "distinct" not in trust_note(X[:4])
    assert trust_note(X[:5]) is None
    assert "2 distinct sizes" in trust_note(np.repeat(X[:2], 3))


def test_delta_method_covers_about_ninety_percent_of_synthetic_laws():
    coverage = interval_coverage(X, "metric", noise_sd=0.003, n_laws=500, n_resamples=20, seed=0)
    assert coverage.n_delta >= 490 and 0.8 <= coverage.delta <= 0.97
    assert coverage.method == "points" and 0.0 <= coverage.bootstrap <= 1.0
    assert interval_coverage(X, "metric", noise_sd=0.003, n_laws=500, n_resamples=20, seed=0) == coverage
    loss = interval_coverage(X, "loss", noise_sd=0.01, n_laws=300, n_seeds=3, n_resamples=20, seed=1)
    assert loss.method == "seeds" and 0.8 <= loss.delta <= 0.97


def test_coverage_needs_three_fitted_sizes():
    with pytest.raises(ValueError, match="3 fitted sizes"):
        interval_coverage(X[:3], n_laws=5)
    no_delta = interval_coverage(X[:4], n_laws=20, n_resamples=5)  # 3 fitted points: no residual dof
    assert no_delta.delta is None and no_delta.n_delta == 0
