"""xDeepFM (Lian et al., 2018, "xDeepFM: Combining Explicit and Implicit Feature Interactions").

Three logits summed, as in BARS/FuxiCTR's ``xDeepFM``:

* ``linear_arch``: first-order term (:class:`~mlet.models.layers.FirstOrder`, no bias);
* ``cin_arch`` + ``cin_out``: the Compressed Interaction Network over the fields ``[B, m, d]``
  (embedded fields plus the dense vector as one more field when ``num_dense > 0``). Layer k maps
  ``X^{k-1}`` (``H_{k-1}`` feature maps) to ``X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i * X^0_j)``
  (a 1x1 convolution over the ``m H_{k-1}`` Hadamard products, ``H_0 = m``); each layer's maps
  are sum-pooled over d and all pooled maps go to one ``Linear``. Every layer feeds the output
  (no split-half), as in FuxiCTR;
* ``deep_arch``: a DNN on ``[flatten(embedded), dense]`` (absent when ``hidden`` is empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.layers import DeepTower, DenseField, FirstOrder, check_contract, check_positive


class CIN(nn.Module):
    """Compressed Interaction Network: ``[B, m, d] -> [B, sum(layer_units)]`` (sum-pooled maps).

    Layer k has ``m H_{k-1} H_k`` weights and ``H_k`` biases (``H_0 = m``).
    """

    def __init__(self, num_fields: int, layer_units: Sequence[int]) -> None:
        super().__init__()
        units = [int(u) for u in layer_units]
        if not units:
            raise ValueError("model: xDeepFM needs at least one CIN layer (cin_layer_units is empty)")
        check_positive("xDeepFM", **{f"cin_layer_units[{i}]": u for i, u in enumerate(units)})
        widths = [num_fields, *units]
        # The paper's (and FuxiCTR's) 1x1 convolution over the m H_{k-1} Hadamard maps, written as
        # a Linear over that axis: same weights and biases, much faster on CPU.
        self.layers = nn.ModuleList(nn.Linear(num_fields * widths[k], widths[k + 1]) for k in range(len(units)))
        self.out_features = sum(units)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        batch, _, dim = x0.shape
        pooled = []
        x = x0
        for layer in self.layers:
            hadamard = torch.einsum("bhd,bmd->bdhm", x, x0).reshape(batch, dim, -1)  # [B, d, H_{k-1} m]
            x = layer(hadamard).transpose(1, 2)  # [B, H_k, d]
            pooled.append(x.sum(dim=-1))
        return torch.cat(pooled, dim=1)


class XDeepFM(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (one extra CIN field, and part of the linear and DNN inputs).
    first_order: where each category's first-order weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    cin_layer_units: feature maps H_k of each CIN layer.
    hidden: DNN widths; empty means no DNN (LR + CIN).
    dropout, batch_norm, activation: of the DNN.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        first_order: str = "embedding",
        cin_layer_units: Sequence[int] = (16, 16),
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.2,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_contract("XDeepFM", num_fields, embed_dim, num_dense)
        self.linear_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=False, source=first_order)
        self.dense_field = DenseField(num_dense, embed_dim)
        self.cin_arch = CIN(num_fields + self.dense_field.extra_fields, cin_layer_units)
        self.cin_out = nn.Linear(self.cin_arch.out_features, 1)
        self.deep_arch = DeepTower(num_fields, embed_dim, num_dense, hidden, activation=activation, dropout=dropout, batch_norm=batch_norm) if hidden else None

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.linear_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        logit = self.linear_arch(embedded, dense, category_weights)
        logit = logit + self.cin_out(self.cin_arch(self.dense_field(embedded, dense))).squeeze(-1)
        if self.deep_arch is not None:
            logit = logit + self.deep_arch(embedded, dense)
        return logit
