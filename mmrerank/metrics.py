"""Moved to `mmrerank.core.metrics` (the metrics are pure functions of `core`'s `Run` / `Qrels`, and `core.items`
uses them: living in `core` keeps `core` and the metrics from importing each other).

Every name still reads from here for one release, with a `FutureWarning` naming its new home.
"""

from __future__ import annotations

from typing import Any

from mmrerank.core import metrics as _moved
from mmrerank.core.deprecation import warn_renamed


def __getattr__(name: str) -> Any:
    value = getattr(_moved, name)  # an unknown name: AttributeError from the new module
    warn_renamed(f"mmrerank.metrics.{name}", f"mmrerank.core.metrics.{name}")
    return value
