"""Logistic regression: ``b + sum_f w(c_f) + w . x``, the first-order term alone.

``w(c)``, the weight of category ``c``, comes from a table of its own (``first_order: table``,
plain LR) or is read through the category's embedding, ``w_f . e_c`` (``first_order: embedding``,
an LR tied to the embedding); see :class:`~mlet.models.layers.FirstOrder`.
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
    first_order: where each category's first-order weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    """

    def __init__(self, num_fields: int, embed_dim: int, num_dense: int = 0, first_order: str = "embedding") -> None:
        super().__init__()
        check_contract("LR", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=True, source=first_order)

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.linear_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.linear_arch(embedded, dense, category_weights)
