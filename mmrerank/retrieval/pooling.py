"""Token pooling for multi-vector documents: fewer vectors per page at a small cost in MaxSim quality.

`hierarchical_pool` follows the method colpali-engine's `HierarchicalTokenPooler` describes (Clavié et al., "Reducing
the Footprint of Multi-Vector Retrieval with Minimal Performance Impact via Token Pooling"): Ward clustering of a
document's tokens, at most `n // pool_factor` clusters, each cluster replaced by its L2-normalised mean. colpali-engine
reports pool factor 3 keeping 97.8 % of ViDoRe nDCG@5 with 66.7 % fewer vectors.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.cluster.hierarchy import ClusterWarning, fcluster, linkage
from torch import Tensor


def hierarchical_pool(tokens: Tensor, pool_factor: int) -> Tensor:
    """Pool one document's `[n, d]` token vectors into at most `max(n // pool_factor, 1)` vectors.

    The clustering sees each token as its row of the cosine-distance matrix `1 - E E^T` (as colpali-engine feeds it to
    Ward linkage), so two tokens are close when they are near the same other tokens. Clusters keep the order of their
    labels; a document of one token, or `pool_factor` 1, is returned unchanged.

    Args:
        tokens: `[n, d]` L2-normalised vectors, any dtype and device.
        pool_factor: the target reduction, >= 1.

    Returns:
        `[c, d]` in `tokens`' dtype and device, `c <= max(n // pool_factor, 1)`, rows L2-normalised.
    """
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be >= 1; got {pool_factor}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [n, d]; got shape {tuple(tokens.shape)}")
    n = tokens.shape[0]
    if pool_factor == 1 or n <= 1:
        return tokens
    x = tokens.detach().to("cpu", torch.float32)
    distances = (1.0 - x @ x.T).numpy().astype(np.float64)
    clusters = max(n // pool_factor, 1)
    with warnings.catch_warnings():
        # the rows of a square distance matrix ARE the observations here (colpali-engine's choice, kept for parity);
        # scipy warns that such a matrix looks like a distance matrix passed by mistake
        warnings.simplefilter("ignore", ClusterWarning)
        tree = linkage(distances, method="ward", metric="euclidean")
    labels = fcluster(tree, t=clusters, criterion="maxclust") - 1
    labels_t = torch.from_numpy(labels.astype(np.int64))
    present = torch.unique(labels_t)  # fcluster may return fewer clusters than asked for
    sums = torch.zeros(int(labels_t.max()) + 1, x.shape[1]).index_add_(0, labels_t, x)
    pooled = torch.nn.functional.normalize(sums[present], dim=-1)  # the mean's direction: the sum's
    return pooled.to(tokens.device, tokens.dtype)


def pool_documents(documents: list[Tensor], pool_factor: int) -> list[Tensor]:
    """`hierarchical_pool` of each `[n_i, d]` document."""
    return [hierarchical_pool(doc, pool_factor) for doc in documents]
