"""Ranking losses against naive per-group loops."""

from __future__ import annotations

import math

import pytest
import torch

from mmrerank.losses import listwise_softmax, pairwise_ranknet, pointwise_bce, ranking_loss


@pytest.fixture
def group():
    torch.manual_seed(0)
    return torch.randn(3, 5), torch.tensor([[1, 0, 0, 0, 0], [0, 2, 1, 0, 0], [0, 0, 0, 0, 1]])


def test_ranknet_matches_naive_pairs(group):
    scores, labels = group
    total, count = 0.0, 0
    for s, y in zip(scores.tolist(), labels.tolist()):
        for i in range(5):
            for j in range(5):
                if y[i] > y[j]:
                    total += math.log1p(math.exp(-(s[i] - s[j])))
                    count += 1
    assert pairwise_ranknet(scores, labels).item() == pytest.approx(total / count, rel=1e-6)


def test_listwise_is_infonce_with_one_positive(group):
    scores, labels = group
    one_hot = (labels == labels.max(1, keepdim=True).values).long()
    naive = sum(-torch.log_softmax(s, 0)[int(y.argmax())] for s, y in zip(scores, one_hot)) / 3
    assert listwise_softmax(scores, one_hot).item() == pytest.approx(naive.item(), rel=1e-6)


def test_pointwise_bce_matches_formula(group):
    scores, labels = group
    binary = (labels > 0).float()
    p = torch.sigmoid(scores)
    naive = -(binary * p.log() + (1 - binary) * (1 - p).log()).mean()
    assert pointwise_bce(scores, binary).item() == pytest.approx(naive.item(), rel=1e-5)


def test_unknown_loss_name():
    assert ranking_loss("pairwise") is pairwise_ranknet
    with pytest.raises(ValueError, match="listwise"):
        ranking_loss("lambdamart")
