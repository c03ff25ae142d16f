import math

import pytest
import torch

from mlet.metrics import auc, logloss


def brute_force_auc(scores, labels):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return ((greater + 0.5 * ties) / (len(pos) * len(neg))).item()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [3, 50, None])
def test_auc_matches_pairwise_definition_with_ties(seed, levels):
    gen = torch.Generator().manual_seed(seed)
    n = 700
    scores = torch.rand(n, generator=gen)
    if levels:
        scores = torch.floor(scores * levels)  # many ties
    labels = (torch.rand(n, generator=gen) < 0.3).float()
    assert auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_auc_extremes_and_degenerate_input():
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auc(torch.ones(4), labels) == 0.5
    assert math.isnan(auc(torch.rand(4), torch.ones(4)))
    with pytest.raises(ValueError):
        auc(torch.rand(3), torch.ones(4))


def test_logloss_is_mean_binary_cross_entropy():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    labels = torch.tensor([0.0, 1.0, 1.0])
    p = torch.sigmoid(logits.double())
    expected = -(torch.log(1 - p[0]) + torch.log(p[1]) + torch.log(p[2])) / 3
    assert logloss(logits, labels) == pytest.approx(expected.item(), rel=1e-12)


def rank_sum_auc(scores, labels):
    """Independent reference: Mann-Whitney U from average ranks (ties share their mean rank)."""
    values, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # rank of the last member of each tie group
    mean_rank = ends - (counts.double() - 1) / 2
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    rank_sum = mean_rank[inverse][pos].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", [7, 1000, None])
def test_auc_matches_rank_sum_reference_on_many_predictions(dtype, levels):
    gen = torch.Generator().manual_seed(levels or 0)
    n = 200_000
    scores = torch.randn(n, generator=gen)
    if levels:
        scores = torch.floor(scores * levels / 6)
    scores = scores.to(dtype)  # float16/bfloat16 rounding adds ties of their own
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(scores.float())).float()
    assert auc(scores, labels) == pytest.approx(rank_sum_auc(scores, labels), abs=1e-12)


def test_auc_ties_negative_and_positive_zero():
    # -0.0 == 0.0: a positive at -0.0 and a negative at +0.0 tie (count one half)
    assert auc(torch.tensor([-0.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.5
    assert auc(torch.tensor([-0.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])) == 0.75
