"""The sweep grid (sizes x budgets x losses x seeds) and a resumable runner that takes the trainer as a callable.

A trainer is any callable `train_point(point: GridPoint, on_eval: EvalRecorder) -> None` that trains the model of
`point.size` (its `dims`) with `point.loss` for `point.budget` examples and, at each of `point.eval_at` (examples
seen), calls `on_eval(examples=..., steps=..., metrics={...}, params=...)`; each call is appended to the results
JSONL at once, and the call at the budget marks the point finished. A sweep config names its trainer by dotted
path (`trainer: mypackage.module:train_point`); tests pass one directly.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import shlex
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmrerank.scaling.results import LOSSES, Evaluation, append_evaluation, read_evaluations


@dataclass(frozen=True)
class ModelSize:
    """One model size of the sweep.

    Attributes:
        name: short name used in keys and reports ("s1").
        params: planned non-embedding parameters (the trainer may report the exact count per evaluation).
        dims: whatever the trainer needs to build the model (hidden size, layers, heads, ...).
    """

    name: str
    params: int
    dims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepConfig:
    """A grid of training runs: every size x budget x loss x seed.

    Attributes:
        sizes: model sizes.
        budgets: training examples per run.
        losses: training losses, from "pointwise", "pairwise", "listwise".
        seeds: training seeds.
        eval_fractions: checkpoints to evaluate, as fractions of the budget (1.0, the final one, is always added).
        trainer: a packaged trainer's name (`edje`: `scaling.runner.TRAINERS`, resolved by `mmrerank scaling
            sweep`) or the dotted path "package.module:function" of one's own, imported when the sweep runs.
        results: default results JSONL path.
        trainer_args: passed through untouched for the trainer (data paths, batch size, ...), as `point.args`.
    """

    sizes: list[ModelSize]
    budgets: list[int]
    losses: list[str] = field(default_factory=lambda: list(LOSSES))
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_fractions: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    trainer: str | None = None
    results: str = "scaling/sweep.jsonl"
    trainer_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.sizes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"sizes need distinct names, got {names}")
        if not self.budgets or any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive example counts, got {self.budgets}")
        bad = [loss for loss in self.losses if loss not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"losses must be among {LOSSES}, got {self.losses}")
        if not self.seeds or any(not 0 < f <= 1 for f in self.eval_fractions):
            raise ValueError("need at least one seed and eval_fractions in (0, 1]")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], origin: str = "sweep config") -> SweepConfig:
        """Build a config from its parsed YAML / JSON form.

        Args:
            raw: the settings (`sizes` a list of `{name, params, dims}`; see the attributes).
            origin: where `raw` comes from (a file), for messages.

        Raises:
            ValueError: an unknown or missing key (naming it, `origin` and the valid keys), a list setting given as
                something else, or a value `__post_init__` refuses.
        """
        _check_keys(raw, cls, origin)
        for name in ("sizes", "budgets", "losses", "seeds", "eval_fractions"):
            if name in raw and not isinstance(raw[name], list):
                raise ValueError(f"{origin}: {name!r} must be a list, got {raw[name]!r}")
        sizes = [s if isinstance(s, ModelSize) else _model_size(s, f"{origin}: sizes[{j}]")
                 for j, s in enumerate(raw["sizes"])]
        try:
            return cls(**{**raw, "sizes": sizes})
        except (ValueError, TypeError) as err:  # TypeError: e.g. a budget given as a string
            raise ValueError(f"{origin}: {err}") from err


def _model_size(raw: Any, origin: str) -> ModelSize:
    _check_keys(raw, ModelSize, origin)
    if not isinstance(raw.get("dims", {}), Mapping):
        raise ValueError(f"{origin}: 'dims' must be a mapping (hidden, layers, ...), got {raw['dims']!r}")
    return ModelSize(**raw)


def _check_keys(raw: Any, cls: type, origin: str) -> None:
    """`raw` must be a mapping holding every required field of dataclass `cls` and no other key."""
    fields = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{origin}: expected a mapping with keys {fields}, got {type(raw).__name__} {raw!r:.80}")
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{origin}: unknown key {key!r}{hint}; valid keys: {', '.join(fields)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ValueError(f"{origin}: missing key(s) {', '.join(map(repr, missing))}; valid keys: {', '.join(fields)}")


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read a sweep config from YAML (or JSON).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file does not parse, or holds an unknown / missing key or a bad value (naming the file).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    return SweepConfig.from_dict(raw, origin=str(path))


@dataclass(frozen=True)
class GridPoint:
    """One training run of the grid; `eval_at` are the examples-seen counts to evaluate at (the last is the budget)."""

    key: str
    size: ModelSize
    loss: str
    seed: int
    budget: int
    eval_at: tuple[int, ...]
    args: dict[str, Any] = field(default_factory=dict)


def point_key(size: str, loss: str, budget: int, seed: int) -> str:
    return f"{size}-{loss}-d{budget}-s{seed}"


def grid_points(config: SweepConfig) -> list[GridPoint]:
    """Every run of the grid, smallest model first, in a fixed order (sizes, budgets, losses, seeds)."""
    points = []
    for size in config.sizes:
        for budget in config.budgets:
            eval_at = tuple(sorted({max(1, round(f * budget)) for f in config.eval_fractions} | {budget}))
            for loss in config.losses:
                for seed in config.seeds:
                    points.append(GridPoint(point_key(size.name, loss, budget, seed), size, loss, seed, budget,
                                            eval_at, dict(config.trainer_args)))
    return points


def finished_points(results_path: str | Path) -> set[str]:
    """Keys of the grid points whose final evaluation is in the results JSONL (none if the file is missing)."""
    if not Path(results_path).exists():
        return set()
    return {e.point for e in read_evaluations(results_path) if e.final and e.point is not None}


class EvalRecorder:
    """The `on_eval` callback a trainer gets: each call appends one evaluation of `point` to the results."""

    def __init__(self, results_path: str | Path, point: GridPoint) -> None:
        self.results_path = Path(results_path)
        self.point = point
        self.final_written = False

    def __call__(self, examples: int, steps: int, metrics: Mapping[str, float], params: int | None = None,
                 final: bool | None = None, references: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Record one evaluation.

        Args:
            examples: training examples seen at this checkpoint.
            steps: optimiser steps at this checkpoint.
            metrics: metric name -> value (see `mmrerank.scaling.results` for the names the report reads).
            params: exact non-embedding parameters (default: the size's planned count).
            final: whether this is the run's last checkpoint (default: examples >= budget).
            references: rankings compared with on the same task, name -> metrics (`"first stage"`: the run the
                model reranks).
        """
        final = examples >= self.point.budget if final is None else final
        evaluation = Evaluation(size=self.point.size.name, params=params or self.point.size.params,
                                examples=int(examples), steps=int(steps), loss=self.point.loss, seed=self.point.seed,
                                metrics={k: float(v) for k, v in metrics.items()}, budget=self.point.budget,
                                point=self.point.key, final=bool(final),
                                references=None if references is None else {k: dict(v) for k, v in references.items()})
        append_evaluation(self.results_path, evaluation)
        self.final_written |= evaluation.final


TrainPoint = Callable[[GridPoint, EvalRecorder], None]


def resolve_trainer(path: str | None) -> TrainPoint:
    """Import a trainer named "package.module:function" (or "package.module.function")."""
    if not path:
        raise ValueError("no trainer: set `trainer: edje` (a packaged trainer, `scaling.runner.TRAINERS`) or "
                         "`trainer: package.module:function` in the sweep config (a callable train_point(point, "
                         "on_eval), see mmrerank.scaling.grid)")
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        trainer = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import trainer {path!r}: {err}") from err
    if not callable(trainer):
        raise ValueError(f"trainer {path!r} is not callable")
    return trainer


def select(config: SweepConfig, only: str | None) -> list[GridPoint]:
    points = grid_points(config)
    if only is None:
        return points
    chosen = [p for p in points if p.key == only]
    if not chosen:
        raise ValueError(f"no grid point {only!r}; keys look like {points[0].key!r}")
    return chosen


def run_sweep(config: SweepConfig, results_path: str | Path | None = None, train_point: TrainPoint | None = None,
              only: str | None = None) -> list[str]:
    """Train every unfinished grid point (or just `only`), appending each evaluation to the results JSONL.

    Args:
        config: the grid.
        results_path: the results JSONL (default: `config.results`).
        train_point: the trainer (default: `config.trainer`, imported).
        only: a single grid point key to run.

    Returns:
        Keys of the points trained in this call (finished points are skipped, so a rerun resumes).
    """
    results_path = Path(results_path or config.results)
    trainer = train_point or resolve_trainer(config.trainer)
    done = finished_points(results_path)
    ran = []
    for point in select(config, only):
        if point.key in done:
            continue
        recorder = EvalRecorder(results_path, point)
        trainer(point, recorder)
        ran.append(point.key)
        if not recorder.final_written:
            warnings.warn(f"trainer returned without a final evaluation of {point.key}; it will rerun on resume",
                          stacklevel=2)
    return ran


def point_args(config_path: str | Path, key: str, results_path: str | Path | None = None) -> list[str]:
    """The `mmrerank scaling` arguments that train one grid point."""
    results = ["--results", str(results_path)] if results_path else []
    return ["sweep", "--config", str(config_path), *results, "--point", key]


def commands(config_path: str | Path, config: SweepConfig, results_path: str | Path | None = None) -> Iterator[str]:
    """One shell command per unfinished grid point (for a scheduler, or `--dry-run`)."""
    done = finished_points(results_path or config.results)
    for point in grid_points(config):
        if point.key not in done:
            yield shlex.join(["mmrerank", "scaling", *point_args(config_path, point.key, results_path)])
