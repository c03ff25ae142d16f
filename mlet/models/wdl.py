"""Wide & Deep (Cheng et al., 2016, "Wide & Deep Learning for Recommender Systems").

``wide_arch([flatten(embedded), dense]) + deep_arch([flatten(embedded), dense])``: the wide part
is the first-order term (:class:`~mlet.models.layers.FirstOrder`, no bias; the DNN's output
layer has one), as in BARS/FuxiCTR's ``WideDeep``, which also drops the paper's hand-made
cross-product features. The paper feeds dense features to the deep part; they also get wide
weights here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.layers import DeepTower, FirstOrder, check_contract


class WDL(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D.
    first_order: where each category's first-order weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    hidden: DNN widths.
    dropout, batch_norm, activation: of the DNN.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        first_order: str = "embedding",
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.1,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_contract("WDL", num_fields, embed_dim, num_dense)
        self.wide_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=False, source=first_order)
        self.deep_arch = DeepTower(num_fields, embed_dim, num_dense, hidden, activation=activation, dropout=dropout, batch_norm=batch_norm)

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.wide_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.wide_arch(embedded, dense, category_weights) + self.deep_arch(embedded, dense)
