"""Deprecated module (removed in mmrerank 0.2): every family's rows are in `mmrerank.rerankers.family_rows`."""

from mmrerank.rerankers.family_rows import EDJERows, MLLMRows, PresetRows, SuperGlobalRows

__all__ = ["EDJERows", "MLLMRows", "PresetRows", "SuperGlobalRows"]
