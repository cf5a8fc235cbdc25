"""Evaluation: the one loop (`evaluate_rows`), the benchmark suites that feed it, and `Report`."""

from mmrerank.evaluation.loop import DEFAULT_MEASURES, FIRST_STAGE, evaluate, evaluate_rows, rerank_sharded  # noqa: F401
from mmrerank.evaluation.report import Report

# `evaluate` stays importable for one release (deprecated: `evaluate_rows`); `mmrerank.evaluate` is the metrics.
__all__ = ["DEFAULT_MEASURES", "FIRST_STAGE", "Report", "evaluate_rows", "rerank_sharded"]
