"""FM (Rendle, 2010, "Factorization Machines").

FM: ``b + first order + sum_{i<j} <v_i, v_j>`` over the fields ``[B, m, d]`` (the embedded
fields, plus the dense vector as one more field ``W x`` when ``num_dense > 0``: an FM over raw
numeric features gives each one a vector ``v_i x_i``; the extra field is their sum). The
first-order term and the bias are :class:`~mlet.models.layers.FirstOrder`.
"""

from __future__ import annotations

import torch
from torch import nn

from mlet.models.layers import DenseField, FirstOrder, FMInteraction, check_contract


class FM(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (one extra FM field, and first-order weights).
    first_order: where each category's first-order weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    """

    def __init__(self, num_fields: int, embed_dim: int, num_dense: int = 0, first_order: str = "embedding") -> None:
        super().__init__()
        check_contract("FM", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=True, source=first_order)
        self.dense_field = DenseField(num_dense, embed_dim)
        self.fm_arch = FMInteraction()

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.linear_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.linear_arch(embedded, dense, category_weights) + self.fm_arch(self.dense_field(embedded, dense))
