"""The scaling report on a synthetic sweep whose generating laws are known; and the `mmrerank scaling` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from mmrerank.scaling.cli import main
from mmrerank.scaling.fits import fit_joint_law, fit_power_law
from mmrerank.scaling.forecast import ForecastConfig
from mmrerank.scaling.report import build_report, first_stage_levels, write_report
from mmrerank.scaling.results import Evaluation, append_evaluation
from mmrerank.scaling.statistics import calibration_note

PARAMS = [1_000_000, 3_000_000, 10_000_000, 30_000_000, 100_000_000]
EXAMPLES = [10_000, 30_000, 100_000, 300_000, 1_000_000]
FAST = ForecastConfig(resamples=40, data_resamples=20, calibration_laws=40, calibration_resamples=10)


def ndcg(n: float, d: float) -> float:
    return 0.7 - 3.0 * n**-0.2 - 2.0 * d**-0.3


def ce(n: float, d: float) -> float:
    return 1.0 + 200.0 * n**-0.3 + 30.0 * d**-0.25


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two losses x two seeds x five sizes x five checkpoints of noisy known laws, written line by line."""
    path = tmp_path_factory.mktemp("sweep") / "sweep.jsonl"
    rng = np.random.default_rng(0)
    for loss, shift in [("pointwise", 0.0), ("listwise", 0.01)]:
        for seed in (0, 1):
            for i, n in enumerate(PARAMS):
                for d in EXAMPLES:
                    metrics = {"nDCG@10": ndcg(n, d) + shift + rng.normal(0, 0.002),
                               "CE@16": ce(n, d) + rng.normal(0, 0.005)}
                    append_evaluation(path, Evaluation(f"s{i + 1}", n, d, d // 32, loss, seed, metrics,
                                                       budget=EXAMPLES[-1], final=d == EXAMPLES[-1]))
    return path


@pytest.fixture(scope="module")
def report(sweep):
    return build_report(sweep, FAST)


def seed_finals(path, loss: str, metric: str) -> list[list[float]]:
    """Per size, the final checkpoint's value of every seed, read line by line."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [[r["metrics"][metric] for r in lines if r["loss"] == loss and r["params"] == n and r["final"]]
            for n in PARAMS]


def seed_mean_finals(path, loss: str, metric: str) -> list[float]:
    return [sum(values) / len(values) for values in seed_finals(path, loss, metric)]


def test_model_law_forecast_equals_a_direct_fit(sweep, report):
    for metric, kind in [("nDCG@10", "metric"), ("CE@16", "loss")]:
        finals = seed_mean_finals(sweep, "listwise", metric)
        direct = fit_power_law(PARAMS[:-1], finals[:-1], kind=kind)
        row, = report.model["listwise", metric].rows()
        assert row["held_out"] == "s5" and row["actual"] == pytest.approx(finals[-1])
        assert row["predicted"] == pytest.approx(float(direct.predict(PARAMS[-1])), abs=1e-9)
        assert row["abs_error"] == pytest.approx(abs(row["predicted"] - finals[-1]))
        assert row["interval"][0] <= row["interval"][1]


def test_forecasts_are_close_to_the_generating_law(report):
    row, = report.model["pointwise", "nDCG@10"].rows()
    assert row["actual"] == pytest.approx(ndcg(PARAMS[-1], EXAMPLES[-1]), abs=0.005)
    assert row["abs_error"] < 0.02 and row["kaplan_abs_error"] < 0.05
    assert report.model["pointwise", "CE@16"].law.kind == "loss"
    joint = report.joint["pointwise", "nDCG@10"]
    assert joint.law.c == pytest.approx(-0.2, abs=0.06) and joint.law.e == pytest.approx(-0.3, abs=0.06)
    assert joint.r2_out_of_sample > 0.8
    assert report.predictable["nDCG@10"] == {"pointwise": True, "listwise": True}


def test_data_law_holds_out_the_last_checkpoint_per_size(report):
    forecasts = report.data["pointwise", "nDCG@10"]
    assert [f.label for f in forecasts] == ["s1", "s2", "s3", "s4", "s5"]
    for f, n in zip(forecasts, PARAMS):
        row, = f.rows()
        assert row["held_out"] == EXAMPLES[-1] and len(f.x_fit) == 4
        assert row["actual"] == pytest.approx(ndcg(n, EXAMPLES[-1]), abs=0.005)


def test_compute_allocation_follows_the_joint_law(sweep, report):
    rows = report.joint["listwise", "nDCG@10"].allocation
    law = report.joint["listwise", "nDCG@10"].law
    assert len(rows) == 3 and rows[0]["budget"] == pytest.approx(PARAMS[-1] * EXAMPLES[-1])
    for row in rows:
        assert row["params"] * row["examples"] == pytest.approx(row["budget"])
        assert row["predicted"] == pytest.approx(float(law.predict(row["params"], row["examples"])))
        for factor in (0.5, 2.0):  # neighbours on the budget line are no better
            assert law.predict(row["params"] * factor, row["examples"] / factor) <= row["predicted"] + 1e-12
    lines = [json.loads(line) for line in sweep.read_text().splitlines() if '"listwise"' in line]
    n = np.array([r["params"] for r in lines], dtype=float)
    d = np.array([r["examples"] for r in lines], dtype=float)
    y = np.array([r["metrics"]["nDCG@10"] for r in lines])
    keys = sorted(set(zip(n, d)))  # the report averages the two seeds first
    y_mean = [y[(n == a) & (d == b)].mean() for a, b in keys]
    direct = fit_joint_law([k[0] for k in keys], [k[1] for k in keys], y_mean, kind="metric")
    assert law.r2 == pytest.approx(direct.r2, abs=1e-9)


def test_report_writes_json_markdown_and_plots(report, tmp_path):
    written = write_report(report, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["report.json", "report.md", "model_law_nDCG_10.png", "data_law_nDCG_10.png",
                            "model_law_CE_16.png", "data_law_CE_16.png"])
    assert set(written) == set(tmp_path.iterdir())
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["model_law"]["listwise"]["nDCG@10"]["forecasts"][0]["held_out"] == "s5"
    assert data["predictable"]["nDCG@10"]["pointwise"] is True
    md = (tmp_path / "report.md").read_text()
    assert "## Which metrics scale predictably" in md and "| nDCG@10 | yes | yes | predictable |" in md


def test_too_few_sizes_are_reported_not_fitted(tmp_path):
    path = tmp_path / "small.jsonl"
    for i, n in enumerate(PARAMS[:3]):
        append_evaluation(path, Evaluation(f"s{i}", n, 1000, 10, "pairwise", 0, {"AP": 0.3 + 0.01 * i}))
    report = build_report(path, FAST)
    assert report.model["pairwise", "AP"].law is None and "needs 3" in report.model["pairwise", "AP"].skipped
    assert report.predictable == {"AP": {"pairwise": None}}
    write_report(report, tmp_path / "out")  # unfitted panels still plot
    assert "not fitted" in (tmp_path / "out" / "report.md").read_text()


def test_cli_fit_writes_the_report(sweep, tmp_path, capsys):
    main(["fit", "--results", str(sweep), "--output-dir", str(tmp_path / "report"), "--resamples", "20",
          "--data-resamples", "10", "--metrics", "nDCG@10"])
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "model_law_nDCG_10.png").exists()
    assert "scale predictably" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="No such file"):
        main(["fit", "--results", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path)])


def test_cli_sweep_dry_run_lists_commands(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text("sizes: [{name: a, params: 10}, {name: b, params: 20}]\nbudgets: [100]\nlosses: [pairwise]\n")
    main(["sweep", "--config", str(config), "--results", str(tmp_path / "r.jsonl"), "--dry-run"])
    assert capsys.readouterr().out.splitlines() == [
        f"mmrerank scaling sweep --config {config} --results {tmp_path / 'r.jsonl'} --point {key}"
        for key in ("a-pairwise-d100-s0", "b-pairwise-d100-s0")]
    with pytest.raises(SystemExit, match="no trainer"):
        main(["sweep", "--config", str(config), "--results", str(tmp_path / "r.jsonl")])


def test_runs_of_two_budgets_and_a_rerun_line(tmp_path):
    """Model and data laws read each size's largest budget; the joint law reads every run; a rerun line wins."""
    path = tmp_path / "budgets.jsonl"
    for i, n in enumerate(PARAMS[:4]):
        for budget, offset in [(100_000, -0.05), (1_000_000, 0.0)]:
            for d in [x for x in EXAMPLES if x <= budget]:
                value = ndcg(n, d) + offset
                append_evaluation(path, Evaluation(f"s{i}", n, d, d // 32, "pairwise", 0, {"AP": value},
                                                   budget=budget, final=d == budget))
    append_evaluation(path, Evaluation("s3", PARAMS[3], 1_000_000, 1, "pairwise", 0, {"AP": 0.5}, budget=1_000_000))
    report = build_report(path, FAST)
    row, = report.model["pairwise", "AP"].rows()
    assert row["held_out"] == "s3" and row["actual"] == 0.5
    assert report.model["pairwise", "AP"].y_fit == pytest.approx([ndcg(n, 1_000_000) for n in PARAMS[:3]])
    assert len(report.data["pairwise", "AP"][0].x_fit) == 4  # five checkpoints of the 1M run, one held out
    assert report.joint["pairwise", "AP"].law.n_points == 4 * (3 + 5)


def test_model_law_statistics_match_direct_computations(sweep, report):
    """Two seeds per point: means fitted, seeds resampled, standard errors, F-tests, adjusted R^2, distance table."""
    result = report.model["listwise", "nDCG@10"]
    seeds = seed_finals(sweep, "listwise", "nDCG@10")
    means = np.array(seed_mean_finals(sweep, "listwise", "nDCG@10"))
    out = result.to_dict()
    assert out["fit_n_seeds"] == [2, 2, 2, 2] and out["bootstrap_method"] == "seeds"
    assert out["fit_se"] == pytest.approx([abs(a - b) / 2 for a, b in seeds[:-1]])  # sd / sqrt(2) of two values
    row, = out["forecasts"]
    assert row["n_seeds"] == 2 and row["se"] == pytest.approx(abs(seeds[-1][0] - seeds[-1][1]) / 2)
    law = fit_power_law(PARAMS[:-1], means[:-1])
    sse = np.sum((means[:-1] - law.predict(PARAMS[:-1])) ** 2)
    sst = np.sum((means[:-1] - means[:-1].mean()) ** 2)
    f_const = out["statistics"]["f_vs_constant"]
    assert f_const["df"] == [2, 1] and f_const["F"] == pytest.approx((sst - sse) / 2 / sse, rel=1e-5)
    assert f_const["p_value"] == pytest.approx(stats.f.sf((sst - sse) / 2 / sse, 2, 1), rel=1e-4)
    assert out["statistics"]["adjusted_r2"] == pytest.approx(1 - (sse / 1) / (sst / 3), abs=1e-9)
    trust = "n - p = 1 residual degrees of freedom: intervals too narrow to trust"
    if result.calibration.bootstrap < 0.8 or result.calibration.delta < 0.8:  # the seeded laws' verdict joins it
        trust += f"; {calibration_note(result.calibration)}"
    assert out["statistics"]["trust"] == trust
    low, high = row["delta_interval"]
    assert low < row["predicted"] < high and row["delta_inside"] == (low <= row["actual"] <= high)
    for h, dist in zip((1, 2), out["holdout_distance"]):
        direct = float(fit_power_law(PARAMS[:-h], means[:-h]).predict(PARAMS[-1]))
        assert dist["held_out"] == h and dist["predicted"] == pytest.approx(direct, abs=1e-9)
    calibration = out["calibration"]
    pooled = np.sqrt(np.mean([(a - b) ** 2 / 2 for a, b in seeds[:-1]]))  # one degree of freedom per point
    assert calibration["noise_source"] == "seed spread" and calibration["noise_sd"] == pytest.approx(pooled)
    assert calibration["n_seeds"] == 2 and calibration["method"] == "seeds" and calibration["n_laws"] == 40


def test_report_shows_statistics_distance_and_calibration(report, tmp_path):
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Model law: fit statistics", "## Model law: forecast error against extrapolation distance",
                    "## Model law: calibration of the intervals"):
        assert heading in md
    assert "| pointwise | CE@16 | 4 | 2 |" in md  # points and seeds per point of the statistics table
    assert md.count("| seed spread | 2 | 40 |") == 4  # two losses x two metrics
    data = json.loads((tmp_path / "report.json").read_text())
    entry = data["model_law"]["pointwise"]["nDCG@10"]
    assert len(entry["holdout_distance"]) == 2 and entry["calibration"]["n_laws"] == 40
    assert entry["forecasts"][0]["delta_interval"] is not None


def test_predictable_requires_a_significant_f_test(tmp_path):
    """Exact data on 4 sizes: R^2 = 1 and exact forecasts, but the F-test has no residual degree of freedom."""
    for count in (4, 5):
        path = tmp_path / f"sizes{count}.jsonl"
        for i, n in enumerate(PARAMS[:count]):
            append_evaluation(path, Evaluation(f"s{i}", n, 1000, 10, "pairwise", 0, {"AP": ndcg(n, 1e12)}))
        report = build_report(path, FAST)
        row, = report.model["pairwise", "AP"].rows()
        assert report.model["pairwise", "AP"].law.r2 > 0.999 and row["abs_error"] < 1e-4
        assert report.predictable["AP"]["pairwise"] is (count == 5)
    assert report.model["pairwise", "AP"].boot.method == "points"


def test_seeds_are_averaged_within_one_budget_and_checkpoint(tmp_path):
    """Seed 2 of s1 ran a smaller budget (left out of its model law); seed 1 of s2 crashed before the end."""
    path = tmp_path / "seeds.jsonl"
    rng = np.random.default_rng(3)
    expected: dict[int, list[float]] = {n: [] for n in PARAMS[:4]}
    for i, n in enumerate(PARAMS[:4]):
        for seed in (0, 1, 2):
            budget = 100_000 if (i, seed) == (1, 2) else 1_000_000
            for d in [x for x in EXAMPLES if x <= budget]:
                if (i, seed) == (2, 1) and d == budget:
                    continue
                value = ndcg(n, d) + rng.normal(0, 0.003)
                append_evaluation(path, Evaluation(f"s{i}", n, d, d // 32, "pairwise", seed, {"AP": value},
                                                   budget=budget, final=d == budget))
                if budget == 1_000_000 and d == budget:
                    expected[n].append(value)
    result = build_report(path, FAST).model["pairwise", "AP"]
    assert result.to_dict()["fit_n_seeds"] == [3, 2, 2]
    assert result.y_fit == pytest.approx([np.mean(expected[n]) for n in PARAMS[:3]])
    assert result.y_out == pytest.approx([np.mean(expected[PARAMS[3]])])
    assert result.boot.method == "seeds"


def test_every_point_is_set_against_its_first_stage(tmp_path):
    """Seed means of the final checkpoint beside the references' seed means; a point below is marked NO."""
    path = tmp_path / "refs.jsonl"
    base = {"nDCG@10": 0.50, "AP": 0.40}
    finals = {"s1": [(0.49, 0.41), (0.50, 0.42)], "s2": [(0.55, 0.45), (0.57, 0.47)]}  # s1: nDCG mean 0.495 < 0.5
    for i, (size, seeds) in enumerate(finals.items()):
        for seed, (ndcg10, ap) in enumerate(seeds):
            refs = {"first stage": base, "alone": {"nDCG@10": ndcg10 - 0.1, "AP": ap - 0.1}}
            append_evaluation(path, Evaluation(size, 1000 * (i + 1), 50, 5, "listwise", seed,
                                               {"nDCG@10": 0.3, "AP": 0.2}, budget=100, references=refs))
            append_evaluation(path, Evaluation(size, 1000 * (i + 1), 100, 10, "listwise", seed,
                                               {"nDCG@10": ndcg10, "AP": ap}, budget=100, final=True,
                                               references=refs))
    report = build_report(path, ForecastConfig(resamples=10, data_resamples=5, calibration_laws=0))
    s1, s2 = report.references
    assert (s1["size"], s1["seeds"], s1["examples"]) == ("s1", 2, 100)
    assert s1["values"] == pytest.approx({"nDCG@10": 0.495, "AP": 0.415})
    assert s1["references"]["alone"] == pytest.approx({"nDCG@10": 0.395, "AP": 0.315})
    assert s1["above"] == {"nDCG@10": False, "AP": True} and s2["above"] == {"nDCG@10": True, "AP": True}
    write_report(report, tmp_path / "out")
    table = (tmp_path / "out" / "report.md").read_text().split("## Every point against the first stage")[1]
    s1_line, = [line for line in table.splitlines() if line.startswith("| listwise | s1 |")]
    s2_line, = [line for line in table.splitlines() if line.startswith("| listwise | s2 |")]
    assert s1_line.endswith("| **NO** |") and s2_line.endswith("| yes |")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["references"][0]["size"] == "s1"
    assert first_stage_levels(report, "AP") == {"listwise": pytest.approx(0.40)}
    assert first_stage_levels(report, "RR") == {}  # the references hold only the metrics the table shows


def test_model_law_plot_draws_the_first_stage(tmp_path, monkeypatch):
    from mmrerank.scaling import plots

    path = tmp_path / "r.jsonl"
    for i, n in enumerate(PARAMS):
        append_evaluation(path, Evaluation(f"s{i}", n, 100, 10, "listwise", 0, {"AP": ndcg(n, 1e6)}, budget=100,
                                           final=True, references={"first stage": {"AP": 0.1}}))
    report = build_report(path, FAST)
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, out: drawn.append(fig))
    plots.plot_model_law("AP", {"listwise": report.model["listwise", "AP"]}, tmp_path / "p.png",
                         first_stage_levels(report, "AP"))
    ax, = drawn[0].axes
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [line.get_label() for line in dashed] == ["first stage"] and list(dashed[0].get_ydata()) == [0.1, 0.1]
    assert ax.get_ylim()[0] < 0.1 < min(ndcg(n, 1e6) for n in PARAMS)  # in view, though far below the points
