"""Training losses, one place for every family: contrastive (first stage), pointwise, pairwise, listwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetric_info_nce(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """CLIP's loss: cross-entropy over in-batch pairs in both directions.

    Args:
        image_emb, text_emb: `[B, d]` L2-normalised; row i of each is a matching pair.
        logit_scale: multiplier of the cosine similarities (the model's learned temperature, already exp'd).
    """
    logits = logit_scale * image_emb @ text_emb.T  # [B, B]
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pointwise_bce(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy on each (query, candidate) logit. `scores`, `labels`: `[B, n]`, labels in {0, 1}."""
    return F.binary_cross_entropy_with_logits(scores, labels.float())


def pairwise_ranknet(scores: Tensor, labels: Tensor) -> Tensor:
    """RankNet: logistic loss on every (more relevant, less relevant) pair within a group.

    Args:
        scores, labels: `[B, n]`; a pair (i, j) counts when `labels[i] > labels[j]`.
    """
    diff = scores[:, :, None] - scores[:, None, :]  # [B, n, n]: s_i - s_j
    pairs = (labels[:, :, None] > labels[:, None, :]).float()
    return (F.softplus(-diff) * pairs).sum() / pairs.sum().clamp_min(1)


def listwise_softmax(scores: Tensor, labels: Tensor) -> Tensor:
    """ListNet / InfoNCE: cross-entropy between the softmax of scores and the normalised labels.

    With one positive per group this is InfoNCE over 1 positive + (n - 1) negatives. `scores`, `labels`: `[B, n]`.
    """
    target = labels.float() / labels.float().sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * F.log_softmax(scores, dim=-1)).sum(-1).mean()


LOSSES = {"pointwise": pointwise_bce, "pairwise": pairwise_ranknet, "listwise": listwise_softmax}


def ranking_loss(name: str):
    """The loss function for a paradigm name: `pointwise`, `pairwise` or `listwise`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown ranking loss {name!r}; choose one of {sorted(LOSSES)}") from None
