"""The trainers a sweep config names by short name (`trainer: edje`), and the sweep's worker processes.

`scaling.grid` is in the core layer and takes its trainer as a callable; the packaged trainers live in the
rerankers (`rerankers.edje.sweep.train_point`), which the core layer may not import. This module, in the application
layer, imports them for real, so the layering test sees the dependency, and `trainer_for` gives `mmrerank scaling
sweep` the callable; a user's own trainer is still named by dotted path (`mypackage.module:train_point`,
`grid.resolve_trainer`). It also runs a sweep's points in worker processes of `mmrerank.scaling.cli`
(`run_workers`): starting the CLI is the application's business, not the grid's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mmrerank.rerankers.edje.sweep import train_point as edje_train_point
from mmrerank.scaling.grid import (
    SweepConfig,
    TrainPoint,
    finished_points,
    grid_points,
    point_args,
    resolve_trainer,
)

TRAINERS: dict[str, TrainPoint] = {"edje": edje_train_point}


def trainer_for(name: str | None) -> TrainPoint:
    """The trainer `name` (a key of `TRAINERS`), or a user's "package.module:function" imported by dotted path."""
    if name in TRAINERS:
        return TRAINERS[name]
    return resolve_trainer(name)


def point_command(config_path: str | Path, key: str, results_path: str | Path | None = None) -> list[str]:
    """The argv that trains one grid point in a fresh process with this interpreter (what `commands` prints)."""
    return [sys.executable, "-m", "mmrerank.scaling.cli", *point_args(config_path, key, results_path)]


def run_workers(config_path: str | Path, config: SweepConfig, workers: int, results_path: str | Path | None = None,
                log=print, poll_s: float = 1.0) -> list[str]:
    """Train every unfinished grid point in `workers` processes of one thread each; a rerun resumes.

    The first point of a new sweep runs alone, so that the caches every point reads (first stage, patch tokens,
    mined negatives) are written once; the rest, and every point of a resumed sweep, run `workers` at a time,
    smallest model first. Each process writes its output to `<results>.logs/<key>.log`; `log` gets a line per
    finished point with the ETA of the rest. One thread per process keeps a point's numbers the same whichever way
    the sweep is dispatched.

    Returns:
        The keys of the points trained, in grid order.

    Raises:
        RuntimeError: after every point has had its turn, naming the points whose process failed (in grid order)
            and their logs.
    """
    from mmrerank.core.progress import format_seconds

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results_path = Path(results_path or config.results)
    done = finished_points(results_path)
    points = grid_points(config)
    todo = [p.key for p in points if p.key not in done]
    logs = results_path.with_name(results_path.name + ".logs")
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log(f"sweep: {len(todo)} of {len(points)} grid points to train, {workers} worker(s); logs in {logs}")
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    finished, failed, durations, start = [], [], [], time.monotonic()

    def launch(key: str) -> None:
        out = open(logs / f"{key}.log", "w")  # noqa: SIM115 (closed when the process ends)
        running[key] = (subprocess.Popen(point_command(config_path, key, results_path), stdout=out,
                                         stderr=subprocess.STDOUT, env=env), time.monotonic(), out)

    queue = list(todo)
    try:
        while queue or running:
            # the first point of a new sweep alone: it writes the caches; a resumed one's were written before
            limit = 1 if not (done or finished or failed) else workers
            while queue and len(running) < limit:
                launch(queue.pop(0))
            time.sleep(poll_s)
            for key, (proc, began, out) in list(running.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del running[key]
                took = time.monotonic() - began
                if proc.returncode == 0:
                    finished.append(key)
                    durations.append(took)
                else:
                    failed.append(key)
                left = len(queue) + len(running)
                # a failed point says nothing about how long the others take: the ETA is from finished ones only
                eta = format_seconds(sum(durations) / len(durations) * left / workers) if durations else "unknown"
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, {logs / key}.log)"
                log(f"sweep: {key} {status} in {format_seconds(took)}; {len(finished) + len(failed)}/{len(todo)}, "
                    f"{format_seconds(time.monotonic() - start)} elapsed, ETA {eta}")
    finally:
        for proc, _, out in running.values():  # interrupted: stop the workers, keep what they recorded
            proc.terminate()
            proc.wait()
            out.close()
    finished.sort(key=todo.index)  # in grid order, however the workers happened to finish
    failed.sort(key=todo.index)
    if failed:
        raise RuntimeError(f"{len(failed)} grid point(s) failed: {', '.join(failed)}; see their logs in {logs}")
    return finished
