"""The results JSONL of a scaling sweep: its schema, a crash-safe appender and a tolerant reader.

Each line is one evaluation of one trained model (one checkpoint of one run)::

    {"size": "s1",            # name of the model size in the sweep config
     "params": 17000000,      # non-embedding parameters (int > 0)
     "examples": 2048000,     # training examples seen at this checkpoint (int > 0)
     "steps": 8000,           # optimiser steps at this checkpoint (int >= 0)
     "loss": "listwise",      # "pointwise" | "pairwise" | "listwise"
     "seed": 0,               # training seed (int)
     "metrics": {"nDCG@10": 0.41, "AP": 0.35, "RR": 0.47, "R@10": 0.62, "CE@16": 2.1, ...},
     # optional:
     "budget": 4096000,       # examples the run was planned for (tells runs of one size apart); default: none
     "point": "s1-listwise-d4096000-s0",  # key of the sweep grid point that wrote the line
     "final": true,           # this is the run's last checkpoint (marks the grid point finished)
     "references": {"first stage": {"nDCG@10": 0.45, ...}}}  # rankings the model is compared with, on the
                              # same queries and candidates (the run it reranks; the reranker alone, unfused)

Metrics whose name before any "@k" is in `LOWER_IS_BETTER` (contrastive entropy `CE@k`) are lower-is-better and
fitted as losses; every other metric is a ranking metric in [0, 1], higher is better.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOSSES = ("pointwise", "pairwise", "listwise")
LOWER_IS_BETTER = frozenset({"CE"})
REQUIRED = ("size", "params", "examples", "steps", "loss", "seed", "metrics")


def metric_kind(name: str) -> str:
    """"loss" for lower-is-better metrics (contrastive entropy), "metric" for the rest."""
    return "loss" if name.split("@")[0] in LOWER_IS_BETTER else "metric"


@dataclass(frozen=True)
class Evaluation:
    """One line of the results JSONL (see the module docstring for the schema)."""

    size: str
    params: int
    examples: int
    steps: int
    loss: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    budget: int | None = None
    point: str | None = None
    final: bool = False
    references: dict[str, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        # numpy scalars from a trainer would not serialise; store plain Python types
        for name in ("params", "examples", "steps", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "budget", None if self.budget is None else int(self.budget))
        object.__setattr__(self, "final", bool(self.final))
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})
        if self.references is not None:
            object.__setattr__(self, "references", {str(name): {str(k): float(v) for k, v in values.items()}
                                                    for name, values in self.references.items()})
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.params <= 0 or self.examples <= 0 or self.steps < 0:
            raise ValueError(f"need params > 0, examples > 0, steps >= 0; got {self.params}, {self.examples}, "
                             f"{self.steps}")

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Evaluation:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"results line lacks {missing}")
        unknown = set(record) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"results line has unknown keys {sorted(unknown)}")
        return cls(**record)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {k: v for k, v in record.items() if v is not None}


def append_evaluation(path: str | Path, evaluation: Evaluation) -> None:
    """Append one line to a results JSONL so that a crash leaves at worst a truncated last line.

    The line goes out in one `write` on an `O_APPEND` descriptor, then `fsync`; an exclusive `flock` keeps
    processes that share the file from interleaving, and a truncated line left by an earlier crash is cut off
    first (its evaluation was never complete), so fragments never end up in the middle of the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(evaluation.to_dict(), sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cut_truncated_tail(fd)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def cut_truncated_tail(fd: int) -> None:
    """Truncate an open file back to just after its last newline (a no-op when it ends with one or is empty)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    while pos > 0:
        chunk_start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - chunk_start, chunk_start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, chunk_start + newline + 1)
            return
        pos = chunk_start
    os.ftruncate(fd, 0)


def read_evaluations(path: str | Path) -> list[Evaluation]:
    """Read a results JSONL; a truncated last line (a crash mid-write) is skipped with a warning.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line other than the last one, or a line that breaks the schema (with its number).
    """
    text = Path(path).read_bytes().decode()
    lines = text.split("\n")
    evaluations = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # no newline after it: the write never finished
                warnings.warn(f"{path}: ignoring a truncated last line ({len(line)} characters)", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
        try:
            evaluations.append(Evaluation.from_dict(record))
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}:{number}: {err}") from err
    return evaluations
