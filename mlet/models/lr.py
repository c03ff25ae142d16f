"""Logistic regression: ``b + sum_f w_f . e_f + w . x``, the first-order term alone.

See :class:`~mlet.models.layers.FirstOrder` for why a category's weight is read through its
embedding (models never own per-category tables): with d = 1 this is plain LR up to one scale
per field, for larger d an LR whose per-category weights are ``w_f . e_c``.
"""

from __future__ import annotations

import torch
from torch import nn

from mlet.models.layers import FirstOrder, check_contract


class LR(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D.
    """

    def __init__(self, num_fields: int, embed_dim: int, num_dense: int = 0) -> None:
        super().__init__()
        check_contract("LR", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=True)

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.linear_arch(embedded, dense)
