"""DeepFM (Guo et al., 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction").

``FM(fields) + DNN([flatten(embedded), dense])``, the FM part (``linear_arch`` with bias +
``fm_arch``) as in :class:`~mlet.models.fm.FM` (dense vector as one more field), the DNN
sharing the same embeddings, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.layers import DeepTower, DenseField, FirstOrder, FMInteraction, check_contract


class DeepFM(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (one extra FM field, first-order weights, DNN input).
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
        check_contract("DeepFM", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=True, source=first_order)
        self.dense_field = DenseField(num_dense, embed_dim)
        self.fm_arch = FMInteraction()
        self.deep_arch = DeepTower(num_fields, embed_dim, num_dense, hidden, activation=activation, dropout=dropout, batch_norm=batch_norm)

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.linear_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        fm = self.linear_arch(embedded, dense, category_weights) + self.fm_arch(self.dense_field(embedded, dense))
        return fm + self.deep_arch(embedded, dense)
