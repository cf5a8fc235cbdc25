"""Sweep grid and runner: stable keys, resume skips finished points, crash-truncated lines are tolerated."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mmrerank.scaling.grid import (
    ModelSize,
    SweepConfig,
    commands,
    finished_points,
    grid_points,
    load_sweep_config,
    run_sweep,
)
from mmrerank.scaling.results import Evaluation, append_evaluation, metric_kind, read_evaluations

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "scaling"


def small_config(**overrides) -> SweepConfig:
    sizes = [ModelSize("s1", 1000, {"hidden": 32}), ModelSize("s2", 4000, {"hidden": 64})]
    return SweepConfig(**{"sizes": sizes, "budgets": [800], "losses": ["pointwise", "listwise"], "seeds": [0],
                          "eval_fractions": [0.25, 0.5], **overrides})


class FakeTrainer:
    """Records which points it trained; evaluates at every checkpoint; can crash before a chosen point's end."""

    def __init__(self, crash_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.crash_on = crash_on

    def __call__(self, point, on_eval) -> None:
        self.calls.append(point.key)
        for examples in point.eval_at:
            if point.key == self.crash_on and examples == point.budget:
                raise RuntimeError("simulated crash")
            on_eval(examples=examples, steps=examples // 8, metrics={"nDCG@10": examples / 1e4})


def test_grid_enumerates_every_run_with_stable_keys():
    points = grid_points(small_config(seeds=[0, 1]))
    assert len(points) == 2 * 1 * 2 * 2
    assert points[0].key == "s1-pointwise-d800-s0" and points[-1].key == "s2-listwise-d800-s1"
    assert [p.key for p in grid_points(small_config(seeds=[0, 1]))] == [p.key for p in points]
    assert points[0].eval_at == (200, 400, 800)  # the budget itself is always evaluated
    assert points[0].size.dims == {"hidden": 32}


def test_config_rejects_bad_grids():
    with pytest.raises(ValueError, match="losses"):
        small_config(losses=["hinge"])
    with pytest.raises(ValueError, match="distinct"):
        small_config(sizes=[ModelSize("s1", 1), ModelSize("s1", 2)])


def test_resume_skips_finished_points(tmp_path):
    results = tmp_path / "sweep.jsonl"
    first = FakeTrainer(crash_on="s2-pointwise-d800-s0")
    with pytest.raises(RuntimeError, match="simulated"):
        run_sweep(small_config(), results, first)
    assert first.calls == ["s1-pointwise-d800-s0", "s1-listwise-d800-s0", "s2-pointwise-d800-s0"]
    assert finished_points(results) == {"s1-pointwise-d800-s0", "s1-listwise-d800-s0"}

    second = FakeTrainer()
    ran = run_sweep(small_config(), results, second)
    assert second.calls == ran == ["s2-pointwise-d800-s0", "s2-listwise-d800-s0"]
    assert run_sweep(small_config(), results, FakeTrainer()) == []
    records = read_evaluations(results)
    assert len(records) == 2 + 4 * 3  # the crashed run's two checkpoints stay, and its rerun's three
    assert sum(r.final for r in records) == 4


def test_evaluation_lines_follow_the_schema(tmp_path):
    results = tmp_path / "sweep.jsonl"
    run_sweep(small_config(losses=["listwise"]), results, FakeTrainer(), only="s2-listwise-d800-s0")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines[-1] == {"size": "s2", "params": 4000, "examples": 800, "steps": 100, "loss": "listwise",
                         "seed": 0, "metrics": {"nDCG@10": 0.08}, "budget": 800,
                         "point": "s2-listwise-d800-s0", "final": True}
    assert [line["final"] for line in lines] == [False, False, True]
    with pytest.raises(ValueError, match="no grid point"):
        run_sweep(small_config(), results, FakeTrainer(), only="s9")


def test_truncated_last_line_is_ignored_and_repaired_on_append(tmp_path):
    results = tmp_path / "sweep.jsonl"
    record = Evaluation("s1", 1000, 200, 25, "pairwise", 0, {"AP": 0.3}, point="k", final=True)
    append_evaluation(results, record)
    with open(results, "a") as f:
        f.write('{"size": "s1", "params": 10')  # a crash mid-write
    with pytest.warns(UserWarning, match="truncated"):
        assert read_evaluations(results) == [record]
    with pytest.warns(UserWarning, match="truncated"):
        assert finished_points(results) == {"k"}
    append_evaluation(results, record)  # cuts the fragment first
    assert read_evaluations(results) == [record, record]
    assert results.read_text().count("\n") == 2


def test_malformed_middle_line_raises_with_its_number(tmp_path):
    results = tmp_path / "sweep.jsonl"
    results.write_text('{"size": "s1"\n{"size": "s1", "params": 1}\n')
    with pytest.raises(ValueError, match=":1: not a JSON line"):
        read_evaluations(results)
    results.write_text('{"size": "s1", "params": 1}\n')
    with pytest.raises(ValueError, match=":1: .*lacks"):
        read_evaluations(results)


def test_commands_list_unfinished_points(tmp_path):
    results = tmp_path / "sweep.jsonl"
    config = small_config()
    run_sweep(config, results, FakeTrainer(), only="s1-pointwise-d800-s0")
    listed = list(commands("my sweep.yaml", config, results))
    assert len(listed) == 3
    assert listed[0] == (f"mmrerank scaling sweep --config 'my sweep.yaml' --results {results} "
                         "--point s1-listwise-d800-s0")


def test_trainer_is_resolved_by_dotted_path(tmp_path, monkeypatch):
    module = types.ModuleType("fake_scaling_trainer")
    module.train = FakeTrainer()
    monkeypatch.setitem(sys.modules, "fake_scaling_trainer", module)
    ran = run_sweep(small_config(trainer="fake_scaling_trainer:train"), tmp_path / "r.jsonl")
    assert ran == module.train.calls and len(ran) == 4
    with pytest.raises(ValueError, match="no trainer"):
        run_sweep(small_config(), tmp_path / "r2.jsonl")
    with pytest.raises(ValueError, match="cannot import"):
        run_sweep(small_config(trainer="fake_scaling_trainer:missing"), tmp_path / "r3.jsonl")


@pytest.mark.parametrize("name", ["sweep.yaml", "synthetic.yaml"])
def test_example_sweep_configs_parse(name):
    from mmrerank.rerankers.edje.sweep import SweepArgs, joint_config

    config = load_sweep_config(CONFIGS / name)
    assert len(config.sizes) >= 5 and config.losses == ["pointwise", "pairwise", "listwise"]
    assert len({p.key for p in grid_points(config)}) == len(grid_points(config))
    from mmrerank.rerankers.edje.sweep import train_point
    from mmrerank.scaling.runner import trainer_for

    assert trainer_for(config.trainer) is train_point
    for point in grid_points(config):
        SweepArgs.from_point(point)  # every trainer argument is known
        joint_config(point.size.dims)
    assert config.sizes[-1].params >= 30 * config.sizes[0].params


def test_contrastive_entropy_is_the_lower_is_better_metric():
    assert [metric_kind(m) for m in ("CE@16", "CE", "nDCG@10", "RR", "CEO@3")] == [
        "loss", "loss", "metric", "metric", "metric"]


def test_numpy_scalars_are_stored_as_plain_json(tmp_path):
    record = Evaluation("s1", np.int64(10), np.int64(20), np.int32(2), "pointwise", np.int64(0),
                        {"AP": np.float32(0.25)}, budget=np.int64(20), final=np.bool_(True))
    append_evaluation(tmp_path / "r.jsonl", record)
    assert read_evaluations(tmp_path / "r.jsonl") == [record]
    assert json.loads((tmp_path / "r.jsonl").read_text())["final"] is True


WORKER_TRAINER = '''
import json, os, pathlib, time

def train_point(point, on_eval):
    """Writes when it ran, with how many threads and whether another point ran beside it; `fail` raises."""
    began = time.time()
    if point.size.name == "fail":
        raise RuntimeError("this point fails")
    running = pathlib.Path(os.environ["WORKER_TRACE"]).with_name("running")
    running.mkdir(exist_ok=True)
    (running / point.key).touch()
    together = False
    while point.size.name != "a" and not together and time.time() < began + 120:  # not the first: wait for a peer
        together = len(list(running.iterdir())) >= 3  # the first point's file and two of the rest
        time.sleep(0.05)
    with open(os.environ["WORKER_TRACE"], "a") as trace:
        trace.write(json.dumps({"key": point.key, "began": began, "ended": time.time(), "together": together,
                                "threads": os.environ.get("OMP_NUM_THREADS")}) + "\\n")
    for examples in point.eval_at:
        on_eval(examples=examples, steps=examples, metrics={"AP": point.size.params / 1e4 + point.seed / 100})
'''


def test_workers_train_every_point_once_first_alone_then_in_parallel(tmp_path, monkeypatch, capsys):
    from mmrerank.scaling.cli import main

    (tmp_path / "worker_trainer.py").write_text(WORKER_TRAINER)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    monkeypatch.setenv("WORKER_TRACE", str(tmp_path / "trace.jsonl"))
    sizes = "[{name: a, params: 1000}, {name: b, params: 2000}, {name: c, params: 3000}]"
    config = tmp_path / "sweep.yaml"
    config.write_text(f"trainer: worker_trainer:train_point\nsizes: {sizes}\nbudgets: [10]\nlosses: [pairwise]\n"
                      f"eval_fractions: [0.5]\nresults: {tmp_path / 'r.jsonl'}\n")
    main(["sweep", "--config", str(config), "--workers", "2"])
    trace = {t["key"]: t for t in map(json.loads, (tmp_path / "trace.jsonl").read_text().splitlines())}
    keys = [p.key for p in grid_points(load_sweep_config(config))]
    assert sorted(trace) == sorted(keys)  # each point once
    assert {t["threads"] for t in trace.values()} == {"1"}
    first = trace[keys[0]]
    assert all(t["began"] >= first["ended"] for key, t in trace.items() if key != keys[0])  # the first alone
    assert all(trace[key]["together"] for key in keys[1:])  # then the other two at once
    evaluations = read_evaluations(tmp_path / "r.jsonl")
    assert finished_points(tmp_path / "r.jsonl") == set(keys) and len(evaluations) == 2 * len(keys)
    assert {e.size: e.metrics["AP"] for e in evaluations if e.final} == {"a": 0.1, "b": 0.2, "c": 0.3}
    assert "ETA" in capsys.readouterr().out
    main(["sweep", "--config", str(config), "--workers", "2"])  # resumes: nothing left
    assert len((tmp_path / "trace.jsonl").read_text().splitlines()) == len(keys)

    config.write_text(config.read_text().replace("{name: c, params: 3000}", "{name: fail, params: 3000}")
                      .replace("eval_fractions", "seeds: [0, 1]\neval_fractions"))
    with pytest.raises(SystemExit, match=r"2 grid point\(s\) failed: fail-pairwise-d10-s0, fail-pairwise-d10-s1"):
        main(["sweep", "--config", str(config), "--workers", "2"])
    assert "this point fails" in (tmp_path / "r.jsonl.logs" / "fail-pairwise-d10-s0.log").read_text()


class FakeProcess:
    """Stands in for a worker process: finishes at its second poll, and records how many ran beside it."""

    running: list[str] = []
    peaks: dict[str, int] = {}

    def __init__(self, argv, **_) -> None:
        self.key, self.polls, self.returncode = argv[-1], 0, None
        FakeProcess.running.append(self.key)
        FakeProcess.peaks[self.key] = len(FakeProcess.running)

    needs_polls, exit_code = 2, 0

    def poll(self):
        self.polls += 1
        if self.polls >= self.needs_polls and self.returncode is None:
            self.returncode = self.exit_code
            FakeProcess.running.remove(self.key)
        return self.returncode


class SlowFirstFailing(FakeProcess):
    """Fails; the first point launched takes longest, so the points end in the reverse of grid order."""

    exit_code = 1

    def __init__(self, argv, **kwargs) -> None:
        super().__init__(argv, **kwargs)
        self.needs_polls = 6 - len(FakeProcess.peaks)


@pytest.mark.parametrize("resumed", [False, True])
def test_only_a_new_sweep_runs_its_first_point_alone(tmp_path, monkeypatch, resumed):
    from mmrerank.scaling import runner as grid  # the workers moved to the application layer

    FakeProcess.running, FakeProcess.peaks = [], {}
    monkeypatch.setattr(grid.subprocess, "Popen", FakeProcess)
    config, results = small_config(), tmp_path / "r.jsonl"
    if resumed:  # one point finished before: the caches it wrote are there
        run_sweep(config, results, FakeTrainer(), only="s1-pointwise-d800-s0")
    keys = [p.key for p in grid_points(config)][int(resumed):]
    assert grid.run_workers("sweep.yaml", config, 2, results, log=lambda line: None, poll_s=0) == keys
    first_alone = FakeProcess.peaks[keys[0]] == 1 and FakeProcess.peaks[keys[1]] == 1
    assert first_alone != resumed
    assert max(FakeProcess.peaks.values()) == 2


def test_workers_name_failed_points_in_grid_order_however_they_end(tmp_path, monkeypatch):
    from mmrerank.scaling import runner as grid  # the workers moved to the application layer

    FakeProcess.running, FakeProcess.peaks = [], {}
    monkeypatch.setattr(grid.subprocess, "Popen", SlowFirstFailing)
    config, results = small_config(), tmp_path / "r.jsonl"
    run_sweep(config, results, FakeTrainer(), only="s1-pointwise-d800-s0")  # resumed: the rest start together
    ended = []
    keys = [p.key for p in grid_points(config)][1:]
    with pytest.raises(RuntimeError, match="3 grid point\\(s\\) failed: " + ", ".join(keys)):
        grid.run_workers("sweep.yaml", config, 3, results, log=ended.append, poll_s=0)
    assert [line.split()[1] for line in ended[1:]] == keys[::-1]  # they did end the other way round
