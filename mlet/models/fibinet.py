"""FiBiNET (Huang et al., 2019, "FiBiNET: Combining Feature Importance and Bilinear feature
Interaction for Click-Through Rate Prediction").

The fields ``E = [B, m, d]`` (embedded fields plus the dense vector as one more field when
``num_dense > 0``) are re-weighted by a SENET (``senet``): squeeze ``z_f = mean(e_f)``,
excitation ``a = ReLU(W_2 ReLU(W_1 z))`` with ``W_1: r x m``, ``W_2: m x r``,
``r = max(1, floor(m / reduction_ratio))``, giving ``V = a * E``. Two bilinear layers
(``bilinear_raw`` on E, ``bilinear_senet`` on V, separate weights as in BARS/FuxiCTR and
DeepCTR) give ``p_ij = (v_i W) * v_j`` for the ``m (m - 1) / 2`` pairs ``i < j``, with ``W``
shared by all pairs (``field_all``, ``d^2``), one per left field (``field_each``), or one per
pair (``field_interaction``, ``m (m - 1) / 2 x d^2``). A DNN reads
``[flatten(p), flatten(q), dense]``; a first-order term is added, as in FuxiCTR.

``field_each`` keeps ``m - 1`` matrices, one for each field that is the left member of a pair:
the last field never is, so the paper's m-th matrix (FuxiCTR allocates it) would be dead weight
that never receives a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.layers import MLP, DenseField, FirstOrder, check_contract

BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


class SENET(nn.Module):
    """Squeeze-excitation field re-weighting ``[B, m, d] -> [B, m, d]`` (``2 m r`` weights)."""

    def __init__(self, num_fields: int, reduction_ratio: float = 3) -> None:
        super().__init__()
        if not reduction_ratio > 0:
            raise ValueError(f"model: FiBiNET reduction_ratio must be positive, got {reduction_ratio!r}")
        self.reduced = max(1, int(num_fields / reduction_ratio))
        self.excitation = nn.Sequential(
            nn.Linear(num_fields, self.reduced, bias=False),
            nn.ReLU(),
            nn.Linear(self.reduced, num_fields, bias=False),
            nn.ReLU(),
        )

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        weights = self.excitation(fields.mean(dim=-1))  # [B, m]
        return fields * weights.unsqueeze(-1)


class BilinearInteraction(nn.Module):
    """``[B, m, d] -> [B, m (m - 1) / 2, d]``: ``(v_i W) * v_j`` for every pair ``i < j``."""

    def __init__(self, num_fields: int, embed_dim: int, bilinear_type: str = "field_interaction") -> None:
        super().__init__()
        if bilinear_type not in BILINEAR_TYPES:
            raise ValueError(f"model: FiBiNET bilinear_type must be one of {', '.join(BILINEAR_TYPES)}; got {bilinear_type!r}")
        self.bilinear_type = bilinear_type
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = int(rows.numel())
        shape = {
            "field_all": (embed_dim, embed_dim),
            "field_each": (num_fields - 1, embed_dim, embed_dim),
            "field_interaction": (self.num_pairs, embed_dim, embed_dim),
        }[bilinear_type]
        self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(shape)))

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        right = fields[:, self.cols]
        if self.bilinear_type == "field_all":
            left = (fields @ self.weight)[:, self.rows]
        elif self.bilinear_type == "field_each":
            left = torch.einsum("bfd,fde->bfe", fields[:, :-1], self.weight)[:, self.rows]
        else:
            left = torch.einsum("bpd,pde->bpe", fields[:, self.rows], self.weight)
        return left * right


class FiBiNET(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (one extra field, and part of the linear and DNN inputs).
    first_order: where each category's first-order weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    bilinear_type: ``field_all``, ``field_each`` or ``field_interaction``.
    reduction_ratio: SENET reduction ratio.
    hidden: DNN widths.
    dropout, batch_norm, activation: of the DNN.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        first_order: str = "embedding",
        bilinear_type: str = "field_interaction",
        reduction_ratio: float = 12,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.5,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_contract("FiBiNET", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=False, source=first_order)
        self.dense_field = DenseField(num_dense, embed_dim)
        fields = num_fields + self.dense_field.extra_fields
        if fields < 2:
            raise ValueError("model: FiBiNET needs at least two fields (counting the dense field) to form a pair")
        self.senet = SENET(fields, reduction_ratio)
        self.bilinear_raw = BilinearInteraction(fields, embed_dim, bilinear_type)
        self.bilinear_senet = BilinearInteraction(fields, embed_dim, bilinear_type)
        deep_in = 2 * self.bilinear_raw.num_pairs * embed_dim + num_dense
        self.deep_arch = MLP(deep_in, hidden, 1, activation=activation, dropout=dropout, batch_norm=batch_norm)

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.linear_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        fields = self.dense_field(embedded, dense)
        p = self.bilinear_raw(fields)
        q = self.bilinear_senet(self.senet(fields))
        deep_in = torch.cat([p.flatten(1), q.flatten(1), dense.to(p.dtype)], dim=1)
        return self.linear_arch(embedded, dense, category_weights) + self.deep_arch(deep_in).squeeze(-1)
