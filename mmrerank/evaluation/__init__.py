"""Evaluation: the one loop (`evaluate`), the benchmark suites that feed it, and `Report`."""

from mmrerank.evaluation.loop import DEFAULT_MEASURES, FIRST_STAGE, evaluate, rerank_sharded
from mmrerank.evaluation.report import Report

__all__ = ["DEFAULT_MEASURES", "FIRST_STAGE", "Report", "evaluate", "rerank_sharded"]
