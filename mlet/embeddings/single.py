"""Single-layer embedding: one ``n_f x d`` table per field (the deployed form of every type)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding, check_eval_mode


def init_uniform_per_field(weight: torch.Tensor, cardinalities: Sequence[int], generator=None) -> None:
    """DLRM's table initialisation: field ``f`` uniform in ``+-sqrt(1/n_f)``.

    Each entry then has variance ``1 / (3 n_f)``.
    """
    start = 0
    with torch.no_grad():
        for n in cardinalities:
            bound = math.sqrt(1.0 / n)
            weight[start : start + n].uniform_(-bound, bound, generator=generator)
            start += n


class SingleLayerEmbedding(FieldEmbedding):
    """``W_f`` of shape ``n_f x dim`` for every field, stored concatenated.

    Args:
        cardinalities: categories per field (OOV index included).
        dim: embedding dimension d.
        sparse: produce sparse row gradients (for SparseAdam / sparse SGD / Adagrad).
        inner_dim: ignored (a single-layer table has no inner dimension); accepted so that one
            sweep can set ``embedding.inner_dim`` for both embedding types.
        eval_mode: checked, otherwise ignored (a single-layer table is its own collapsed form);
            accepted for the same reason.
    """

    kind = "single"

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        inner_dim: int | None = None,
        eval_mode: str = "auto",
    ) -> None:
        super().__init__(cardinalities, dim)
        check_eval_mode(eval_mode)
        self.table = nn.Embedding(self.total_rows, self.dim, sparse=sparse)
        init_uniform_per_field(self.table.weight, self.cardinalities)

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
