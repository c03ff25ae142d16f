"""Small building blocks shared by the CTR models.

Every model reads ``embedded[B, F, d]`` (from an embedding it does not know) and ``dense[B, D]``.
The pieces here are the ones several models share:

* :class:`MLP` - the deep tower.
* :class:`DenseField` - the dense vector as one more embedded field, for models whose paper has
  no dense path but interacts fields (FM, DeepFM, xDeepFM, AutoInt, FiBiNET).
* :func:`flat_input` - ``[flatten(embedded), dense]``: the input of a DNN or of a cross network.
* :class:`DeepTower` - the DNN over that flat input, one logit (DeepFM, WDL, xDeepFM, AutoInt+).
* :class:`FirstOrder` - the linear (first-order, "wide", LR) term.
* :class:`FMInteraction` - the FM second-order term.
* :class:`DotInteraction` - DLRM's pairwise dot products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def check_positive(model: str, **values: int) -> None:
    """Raise ``ValueError`` (one readable line) unless every value is a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise ValueError(f"model: {model} needs {name} to be a positive integer, got {value!r}")


def check_contract(model: str, num_fields: int, embed_dim: int, num_dense: int) -> None:
    """The arguments every model receives from the trainer."""
    check_positive(model, num_fields=num_fields, embed_dim=embed_dim)
    if isinstance(num_dense, bool) or int(num_dense) != num_dense or int(num_dense) < 0:
        raise ValueError(f"model: {model} needs num_dense >= 0, got {num_dense!r}")


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
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
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


def flat_input(embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``[flatten(embedded[B, F, d]), dense[B, D]]`` -> ``[B, F d + D]`` (``D`` may be 0)."""
    return torch.cat([embedded.flatten(1), dense.to(embedded.dtype)], dim=1)


class DeepTower(MLP):
    """The DNN over ``[flatten(embedded), dense]`` -> logit ``[B]``: the deep part that DeepFM, WDL,
    xDeepFM and AutoInt+ add to their interaction. An :class:`MLP` (same parameter names) whose
    input is the embedded fields and the dense features."""

    def __init__(self, num_fields: int, embed_dim: int, num_dense: int, hidden: Sequence[int], **mlp) -> None:
        super().__init__(num_fields * embed_dim + num_dense, hidden, 1, **mlp)

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(flat_input(embedded, dense)).squeeze(-1)


class DenseField(nn.Module):
    """The dense vector as one more embedded field: ``[B, F, d], [B, D] -> [B, F + 1, d]``.

    The extra field is ``W x`` (``W``: d x D, no bias). This is the sum of the per-feature numeric
    embeddings ``v_i x_i`` that BARS/FuxiCTR give each numeric feature, so a field interaction
    sees the dense features as one field instead of D. With ``num_dense = 0`` it passes the
    embedded fields through unchanged (``extra_fields = 0``).
    """

    def __init__(self, num_dense: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_dense, embed_dim, bias=False) if num_dense else None
        self.extra_fields = 1 if num_dense else 0

    def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return embedded
        return torch.cat([embedded, self.proj(dense.to(embedded.dtype)).unsqueeze(1)], dim=1)


class FirstOrder(nn.Module):
    """Linear term ``sum_f w(c_f) + w_dense . x (+ b)`` -> ``[B]``, where ``w(c)`` is the
    first-order weight of category ``c``.

    ``source`` says where ``w(c)`` comes from:

    * ``table``: a per-category scalar from a table of its own (one weight per category, as in
      Rendle's FM and BARS/FuxiCTR's ``LR_Layer``). Models never own per-category tables: the
      caller (:class:`mlet.module.CTRNet`, when the model's ``category_weights`` is true) looks the
      weights up and passes them as ``category_weights[B, F]``.
    * ``embedding``: read through the category's embedding, ``w(c) = w_f . e_c`` with one vector
      ``w_f`` per field. No table of its own, but the weight is tied to the embedding: with the
      small N(0, 1e-4) table init it starts near zero and moves only as ``e_c`` does. Measured on
      MovieLens-100K (README, Baselines): DeepFM's test AUC is lower with it than with ``table``.

    Dense features enter with their own weights, as numeric features do in BARS/FuxiCTR's
    ``LogisticRegression`` layer.
    """

    SOURCES = ("table", "embedding")

    def __init__(
        self, num_fields: int, embed_dim: int, num_dense: int = 0, bias: bool = True, source: str = "embedding"
    ) -> None:
        super().__init__()
        if source not in self.SOURCES:
            raise ValueError(f"model.first_order must be one of {', '.join(self.SOURCES)}; got {source!r}")
        self.source = source
        # table: the categories' weights come from outside; dense weights and the bias stay here
        width = num_fields * embed_dim + num_dense if source == "embedding" else num_dense
        self.linear = nn.Linear(width, 1, bias=bias) if width else None
        self.bias = nn.Parameter(torch.zeros(1)) if bias and not width else None

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs ``category_weights`` (``source == "table"``)."""
        return self.source == "table"

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.source == "embedding":
            return self.linear(flat_input(embedded, dense)).squeeze(-1)
        if category_weights is None:
            raise ValueError("FirstOrder(source='table') needs category_weights[B, F] (given by mlet.module.CTRNet)")
        out = category_weights.sum(dim=1)
        if self.linear is not None:
            out = out + self.linear(dense.to(out.dtype)).squeeze(-1)
        if self.bias is not None:
            out = out + self.bias
        return out


class FMInteraction(nn.Module):
    """FM second-order term ``sum_{i<j} <v_i, v_j>`` of ``n`` vectors ``[B, n, d]`` -> ``[B]``.

    Computed in ``O(n d)`` as ``((sum_i v_i)^2 - sum_i v_i^2) / 2`` summed over the d coordinates
    (Rendle, 2010). No parameters.
    """

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        total = vectors.sum(dim=1)
        return 0.5 * (total.pow(2) - vectors.pow(2).sum(dim=1)).sum(dim=1)


class DotInteraction(nn.Module):
    """Pairwise dot products of ``n`` vectors ``[B, n, d]`` -> ``[B, n (n - 1) / 2]`` (no self-pairs)."""

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.out_features = int(rows.numel())

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return gram[:, self.rows, self.cols]
