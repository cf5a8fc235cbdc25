"""Helpers shared by the benchmark scripts: machine description and clustered test vectors."""

from __future__ import annotations

import math
import platform

import torch
import torch.nn.functional as F
from torch import Tensor


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def clustered_corpus(n: int, dim: int, n_clusters: int, n_queries: int, noise: float, query_noise: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """Synthetic clustered embeddings.

    Args:
        n: corpus size; dim: dimension; n_clusters: number of Gaussian clusters (random unit centres).
        n_queries: number of queries.
        noise: expected norm of each corpus vector's Gaussian jitter around its (unit) centre; around 1 the
            clusters overlap enough that approximate search is not trivial, yet are still visible.
        query_noise: expected norm of the jitter added to the corpus vector a query is copied from.
        seed: makes the data reproducible.

    Returns:
        `([n, dim] corpus, [n_queries, dim] queries)`, float32, rows L2-normalised.
    """
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=1)
    assign = torch.randint(0, n_clusters, (n,), generator=g)
    # Dividing by sqrt(dim) makes `noise` the jitter's expected norm, independent of the dimension.
    corpus = F.normalize(centres[assign] + noise * torch.randn(n, dim, generator=g) / math.sqrt(dim), dim=1)
    sources = torch.randint(0, n, (n_queries,), generator=g)
    jitter = query_noise * torch.randn(n_queries, dim, generator=g) / math.sqrt(dim)
    return corpus, F.normalize(corpus[sources] + jitter, dim=1)
