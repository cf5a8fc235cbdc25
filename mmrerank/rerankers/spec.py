"""Deprecated module (removed in mmrerank 0.2): `RerankerSpec` is `mmrerank.rerankers.rows.RerankerRows`."""

from mmrerank.core.deprecation import warn_renamed
from mmrerank.rerankers.rows import FitRecipe, RerankContext, RerankerRows

__all__ = ["FitRecipe", "RerankContext", "RerankerRows"]


def __getattr__(name: str):
    if name == "RerankerSpec":
        warn_renamed("mmrerank.rerankers.spec.RerankerSpec", "mmrerank.rerankers.rows.RerankerRows")
        return RerankerRows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
