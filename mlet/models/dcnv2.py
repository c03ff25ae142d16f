"""DCNv2 (Wang et al., 2021, "DCN V2: Improved Deep & Cross Network ...").

``x0 = [flatten(embedded), dense]`` as in DCN. The cross network is either

* full-rank (``low_rank_mixture: false``): ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``,
  ``D0^2 + D0`` parameters per layer; or
* a mixture of E low-rank experts (``low_rank_mixture: true``, the paper's DCN-Mix):
  ``x_{l+1} = sum_i G_i(x_l) x0 * (U_i^l tanh(C_i^l tanh(V_i^l^T x_l)) + b_l) + x_l`` with
  ``U, V: D0 x r``, ``C: r x r`` and softmax gates ``G_i(x) = softmax(g_i . x)``. As in the
  reference implementations (DeepCTR-Torch, FuxiCTR ``CrossNetMix``) the gates are shared by all
  layers and the bias by all experts of a layer: ``L (E (2 D0 r + r^2) + D0) + E D0`` parameters.

``structure`` places the deep tower:

* ``stacked``: ``over_arch(deep_arch(cross_arch(x0)))``;
* ``parallel``: ``over_arch([cross_arch(x0), deep_arch(x0)])``.

With ``hidden: []`` the stacked model is the cross network alone (FuxiCTR's ``crossnet_only``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.dcn import CrossNet
from mlet.models.layers import MLP, check_contract, check_positive, flat_input

STRUCTURES = ("stacked", "parallel")


class CrossLayerV2(nn.Module):
    """Full-rank cross layer ``x0 * (W x_l + b) + x_l`` on ``[B, D0]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(xl) + xl


class MixtureCrossLayer(nn.Module):
    """One layer of E low-rank experts; the gate scores ``[B, E]`` come from the caller."""

    def __init__(self, dim: int, low_rank: int, num_experts: int) -> None:
        super().__init__()
        shape = (num_experts, dim, low_rank)
        self.U = nn.Parameter(nn.init.xavier_normal_(torch.empty(shape)))
        self.V = nn.Parameter(nn.init.xavier_normal_(torch.empty(shape)))
        self.C = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_experts, low_rank, low_rank)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x0: torch.Tensor, xl: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        v = torch.tanh(torch.einsum("bd,edr->ber", xl, self.V))  # V_i^T x_l
        v = torch.tanh(torch.einsum("ers,bes->ber", self.C, v))  # C_i v
        u = torch.einsum("edr,ber->bed", self.U, v)  # U_i v
        experts = x0.unsqueeze(1) * (u + self.bias)  # [B, E, D0]
        return torch.einsum("be,bed->bd", gates, experts) + xl


class CrossNetMix(nn.Module):
    """``num_layers`` mixture-of-low-rank-experts cross layers with shared softmax gates."""

    def __init__(self, dim: int, num_layers: int, low_rank: int = 32, num_experts: int = 4) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, num_experts, bias=False)  # g_1..g_E, one row each
        self.layers = nn.ModuleList(MixtureCrossLayer(dim, low_rank, num_experts) for _ in range(num_layers))
        self.out_features = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x, torch.softmax(self.gate(x), dim=-1))
        return x


class DCNv2(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (part of ``x0``).
    cross_layers: number of cross layers L.
    structure: ``stacked`` or ``parallel`` (see the module docstring).
    hidden: widths of the deep tower.
    low_rank_mixture: mixture of low-rank experts instead of full-rank cross layers.
    low_rank: rank r of each expert; num_experts: E (only with ``low_rank_mixture``).
    dropout, batch_norm, activation: of the deep tower.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        cross_layers: int = 3,
        structure: str = "parallel",
        hidden: Sequence[int] = (500, 500, 500),
        low_rank_mixture: bool = False,
        low_rank: int = 32,
        num_experts: int = 4,
        dropout: float = 0.1,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_contract("DCNv2", num_fields, embed_dim, num_dense)
        check_positive("DCNv2", cross_layers=cross_layers, low_rank=low_rank, num_experts=num_experts)
        if structure not in STRUCTURES:
            raise ValueError(f"model: DCNv2 structure must be one of {', '.join(STRUCTURES)}; got {structure!r}")
        self.structure = structure
        in_features = num_fields * embed_dim + num_dense
        self.cross_arch = (
            CrossNetMix(in_features, cross_layers, low_rank, num_experts)
            if low_rank_mixture
            else CrossNet(in_features, cross_layers, layer=CrossLayerV2)
        )
        self.deep_arch = MLP(in_features, hidden, None, activation=activation, dropout=dropout, batch_norm=batch_norm)
        over_in = self.deep_arch.out_features
        if structure == "parallel":
            over_in += self.cross_arch.out_features
        self.over_arch = nn.Linear(over_in, 1)

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = flat_input(embedded, dense)
        crossed = self.cross_arch(x0)
        if self.structure == "stacked":
            features = self.deep_arch(crossed)
        else:
            features = torch.cat([crossed, self.deep_arch(x0)], dim=1)
        return self.over_arch(features).squeeze(-1)
