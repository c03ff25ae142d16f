"""DCN (Wang et al., 2017, "Deep & Cross Network for Ad Click Predictions").

``x0 = [flatten(embedded), dense]`` (the paper stacks embeddings and dense features, so DCN has a
native dense path). Two towers read ``x0``:

* ``cross_arch``: L cross layers ``x_{l+1} = x0 (x_l . w_l) + b_l + x_l`` (2 D0 parameters each);
* ``deep_arch``: an MLP;

and ``over_arch`` is one ``Linear`` on their concatenation (the paper's combination layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mlet.models.layers import MLP, check_contract, check_positive, flat_input


class CrossLayer(nn.Module):
    """One DCN cross layer on ``[B, D0]``: ``x0 * (x_l . w) + b + x_l`` (parameters: ``w``, ``b``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.weight(xl) + self.bias + xl


class CrossNet(nn.Module):
    """``num_layers`` cross layers, all reading the same ``x0``: DCN's :class:`CrossLayer` by
    default, DCNv2's full-rank ``CrossLayerV2`` with ``layer=CrossLayerV2``. ``layer(dim)`` builds
    one layer, called as ``layer(x0, x_l)``."""

    def __init__(self, dim: int, num_layers: int, layer: Callable[[int], nn.Module] = CrossLayer) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layer(dim) for _ in range(num_layers))
        self.out_features = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class DCN(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (part of ``x0``, as in the paper).
    cross_layers: number of cross layers L.
    hidden: widths of the deep tower (empty: cross network only, plus ``x0`` into the output).
    dropout, batch_norm, activation: of the deep tower.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        cross_layers: int = 3,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.1,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_contract("DCN", num_fields, embed_dim, num_dense)
        check_positive("DCN", cross_layers=cross_layers)
        in_features = num_fields * embed_dim + num_dense
        self.cross_arch = CrossNet(in_features, cross_layers)
        self.deep_arch = MLP(in_features, hidden, None, activation=activation, dropout=dropout, batch_norm=batch_norm)
        self.over_arch = nn.Linear(self.cross_arch.out_features + self.deep_arch.out_features, 1)

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = flat_input(embedded, dense)
        combined = torch.cat([self.cross_arch(x0), self.deep_arch(x0)], dim=1)
        return self.over_arch(combined).squeeze(-1)
