"""Single-layer embedding: one ``n_f x d`` table per field (the deployed form of every type)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding, check_eval_mode
from mlet.embeddings.init import check_table_init, init_table_


class SingleLayerEmbedding(FieldEmbedding):
    """``W_f`` of shape ``n_f x dim`` for every field, stored concatenated.

    Args:
        cardinalities: categories per field (OOV index included).
        dim: embedding dimension d.
        sparse: produce sparse row gradients (for SparseAdam / sparse SGD / Adagrad).
        inner_dim: ignored (a single-layer table has no inner dimension); accepted so that one
            sweep can set ``embedding.inner_dim`` for both embedding types.
        budget: ignored (the reduction types' byte budget, :mod:`mlet.embeddings.budget`); accepted
            so that one sweep over budgets includes the single-layer reference, run once.
        eval_mode: checked, otherwise ignored (a single-layer table is its own collapsed form);
            accepted for the same reason.
        table_init, init_std: how the table is drawn, ``normal`` with std ``init_std`` (default
            ``N(0, 1e-4^2)``, BARS/FuxiCTR) or ``uniform`` in ``+-sqrt(1/n_f)`` (DLRM's; then
            ``init_std`` is None); see :mod:`mlet.embeddings.init`.
    """

    kind = "single"
    ignored_keys = ("inner_dim", "budget")

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        inner_dim: int | None = None,
        budget: float | None = None,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
    ) -> None:
        super().__init__(cardinalities, dim)
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        self.table_init, self.init_std = table_init, init_std
        self.table = nn.Embedding(self.total_rows, self.dim, sparse=sparse)
        init_table_(self.table.weight, self.cardinalities, table_init, init_std)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table(self.rows(indices))

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table.weight[rows]

    def collapse(self) -> "SingleLayerEmbedding":
        return self

    def field_table(self, field: int) -> torch.Tensor:
        start = int(self.offsets[field])
        return self.table.weight[start : start + self.cardinalities[field]]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table.weight]

    @classmethod
    def from_weight(cls, cardinalities: Sequence[int], weight: torch.Tensor) -> "SingleLayerEmbedding":
        emb = cls(cardinalities, weight.shape[1])
        if weight.shape[0] != emb.total_rows:
            raise ValueError(f"weight has {weight.shape[0]} rows, the fields need {emb.total_rows}")
        with torch.no_grad():
            emb.table.weight.copy_(weight)
        return emb.to(weight.device)
