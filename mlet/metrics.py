"""Exact ranking and calibration metrics over a whole split.

``auc`` is the Mann-Whitney statistic: the fraction of (positive, negative) pairs ranked
correctly, a tie counting one half, which equals the ROC area over every threshold. It never
builds a per-threshold curve: the positives' and the negatives' scores are sorted separately and
each positive's count of negatives below it (``left``) and at or below it (``right``) comes from a
binary search, so the result is ``sum(left + right) / (2 P N)`` with the numerator an exact
integer, whatever the number of predictions. On a CPU this runs in numpy (its vectorised sort is
about twice torch's); on a GPU in torch. 5 million predictions take well under a second on one core.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _pairs_below_twice(pos: torch.Tensor, neg: torch.Tensor) -> int:
    """``sum over positives of (#negatives < score) + (#negatives <= score)``: twice the count of
    correctly ranked pairs, ties counting one half."""
    if pos.device.type == "cpu":
        if pos.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value exactly
            pos, neg = pos.float(), neg.float()
        p, q = np.sort(pos.numpy()), np.sort(neg.numpy())  # sorted queries: cache-friendly searches
        return int(np.searchsorted(q, p, "left").sum(dtype=np.int64)) + int(
            np.searchsorted(q, p, "right").sum(dtype=np.int64)
        )
    p, q = torch.sort(pos).values, torch.sort(neg).values
    return int(torch.searchsorted(q, p).sum()) + int(torch.searchsorted(q, p, right=True).sum())


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact area under the ROC curve for 0/1 labels; ``nan`` when a class is absent."""
    scores = scores.detach().reshape(-1)
    labels = labels.detach().reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"auc: {scores.numel()} scores for {labels.numel()} labels")
    positive = labels != 0
    pos, neg = scores[positive], scores[~positive]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    return _pairs_below_twice(pos, neg) / (2 * pos.numel() * neg.numel())


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of the predicted probabilities ``sigmoid(logits)``."""
    return float(F.binary_cross_entropy_with_logits(logits.double().reshape(-1), labels.double().reshape(-1)).item())
