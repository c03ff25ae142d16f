"""Exact ranking and calibration metrics over a whole split.

``auc`` is the Mann-Whitney statistic computed from one sort: ties between a positive and a
negative count one half, as in the ROC area with every threshold. It never materialises a
per-threshold curve, so millions of predictions cost one ``O(n log n)`` sort.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact area under the ROC curve; ``nan`` when a class is absent."""
    scores = scores.detach().reshape(-1)
    labels = labels.detach().reshape(-1).double()
    if scores.numel() != labels.numel():
        raise ValueError(f"auc: {scores.numel()} scores for {labels.numel()} labels")
    pos = labels.sum()
    neg = labels.numel() - pos
    if pos == 0 or neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)  # in the scores' own dtype: ties stay ties
    sorted_labels = labels[order]
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = counts.cumsum(0) - 1
    pos_cum = sorted_labels.cumsum(0)[ends]  # positives at or below each distinct score
    pos_in = torch.diff(pos_cum, prepend=pos_cum.new_zeros(1))
    neg_in = counts.double() - pos_in
    neg_below = neg_in.cumsum(0) - neg_in
    return float(((pos_in * (neg_below + 0.5 * neg_in)).sum() / (pos * neg)).item())


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of the predicted probabilities ``sigmoid(logits)``."""
    return float(F.binary_cross_entropy_with_logits(logits.double().reshape(-1), labels.double().reshape(-1)).item())
