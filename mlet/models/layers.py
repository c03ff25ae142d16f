"""Small building blocks shared by the CTR models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """Stack of ``Linear -> [BatchNorm] -> activation -> [Dropout]`` blocks.

    Args:
        in_features: input width.
        hidden: widths of the hidden layers (may be empty).
        out_features: width of a final plain ``Linear`` (no activation); ``None`` for none.
        activation: name in ``ACTIVATIONS``.
        dropout: dropout rate after each hidden block.
        batch_norm: batch normalisation before each hidden activation.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (),
        out_features: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        if out_features is not None:
            layers.append(nn.Linear(width, out_features))
            width = out_features
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if len(self) else x
