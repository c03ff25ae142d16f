"""DLRM (Naumov et al., 2019): bottom MLP on dense features, pairwise dot interaction, top MLP.

Composed of small named parts after TorchRec's ``models/dlrm.py``: ``dense_arch`` (bottom MLP,
ending at the embedding dimension so the dense vector joins the interaction as one more field),
``interaction_arch`` and ``over_arch`` (top MLP). The embedding dimension comes from the caller
(``embed_dim``), which reads it from the embedding module: the model never builds embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlet.models.layers import MLP, DotInteraction, check_contract

__all__ = ["DLRM", "DotInteraction"]  # DotInteraction lives in layers.py, shared


class DLRM(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features; 0 drops the bottom MLP.
    bottom_mlp: hidden widths of the bottom MLP (its last layer is always d wide).
    top_mlp: hidden widths of the top MLP (a final 1-wide layer is added).
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        bottom_mlp: Sequence[int] = (512, 256, 64),
        top_mlp: Sequence[int] = (512, 256),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check_contract("DLRM", num_fields, embed_dim, num_dense)
        self.num_dense = num_dense
        self.dense_arch = MLP(num_dense, bottom_mlp, embed_dim, activation="relu") if num_dense else None
        # DLRM's bottom MLP ends with a ReLU too (the dense vector is a non-negative "embedding").
        self.dense_activation = nn.ReLU()
        vectors = num_fields + (1 if num_dense else 0)
        self.interaction_arch = DotInteraction(vectors)
        over_in = self.interaction_arch.out_features + (embed_dim if num_dense else 0)
        self.over_arch = MLP(over_in, top_mlp, 1, dropout=dropout, batch_norm=batch_norm)

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if self.dense_arch is not None:
            dense_vec = self.dense_activation(self.dense_arch(dense))
            vectors = torch.cat([dense_vec.unsqueeze(1), embedded], dim=1)
            features = torch.cat([dense_vec, self.interaction_arch(vectors)], dim=1)
        else:
            features = self.interaction_arch(embedded)
        return self.over_arch(features).squeeze(-1)
