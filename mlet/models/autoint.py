"""AutoInt and AutoInt+ (Song et al., 2019, "AutoInt: Automatic Feature Interaction Learning via
Self-Attentive Neural Networks").

The fields ``[B, F', d]`` (the embedded fields, plus the dense vector as one more field through
:class:`~mlet.models.layers.DenseField` when ``num_dense > 0``: the paper embeds each numeric
feature as ``v_i x_i``; one projected field is their sum) pass through ``attention_layers``
multi-head self-attention layers with residual connections. Each layer maps every field to
``attention_dim = num_heads x head_dim`` values, whatever d is: the first layer projects d to
``attention_dim`` (queries, keys, values and, for the residual, ``W_res``), so any d >= 1 works.
The output is one ``Linear`` over the flattened attention output (``attention_out``).

Optional parts, as in BARS/FuxiCTR's ``AutoInt``:

* ``use_wide``: a first-order term (:class:`~mlet.models.layers.FirstOrder`, no bias);
* ``hidden``: a DNN on ``[flatten(embedded), dense]`` whose logit is added: this is AutoInt+.
  :class:`AutoInt` has no DNN by default; :class:`AutoIntPlus` requires one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlet.models.layers import DeepTower, DenseField, FirstOrder, check_contract, check_positive


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention over fields ``[B, n, in_dim] -> [B, n, attention_dim]``.

    ``out = ReLU(concat_h softmax(Q_h K_h^T [/ sqrt(head_dim)]) V_h + W_res x)``; ``W_res`` only when
    ``in_dim != attention_dim`` (identity residual otherwise), as in the paper.
    """

    def __init__(
        self,
        in_dim: int,
        attention_dim: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(
                f"model: AutoInt attention_dim={attention_dim} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        self.scale = self.head_dim**-0.5 if use_scale else 1.0
        self.query = nn.Linear(in_dim, attention_dim, bias=False)
        self.key = nn.Linear(in_dim, attention_dim, bias=False)
        self.value = nn.Linear(in_dim, attention_dim, bias=False)
        self.use_residual = use_residual
        self.residual = nn.Linear(in_dim, attention_dim, bias=False) if use_residual and in_dim != attention_dim else None
        self.dropout = float(dropout)  # on the attention weights
        self.layer_norm = nn.LayerNorm(attention_dim) if layer_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        return x.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, n, head_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )  # softmax(q k^T * scale) v per head, fused
        out = out.transpose(1, 2).flatten(2)  # [B, n, attention_dim]
        if self.use_residual:
            out = out + (self.residual(x) if self.residual is not None else x)
        return torch.relu(self.layer_norm(out))


class AutoInt(nn.Module):
    """Args:
    num_fields: categorical fields F.
    embed_dim: embedding dimension d (from the embedding module).
    num_dense: dense features D (one extra attention field, and part of the DNN input).
    first_order: where each category's first-order (wide) weight comes from: ``table`` (one weight per
        category, looked up by :class:`mlet.module.CTRNet`) or ``embedding`` (``w_f . e_c``); see
        :class:`~mlet.models.layers.FirstOrder`.
    attention_layers: number of self-attention layers.
    num_heads: heads per layer; attention_dim: total width per field (divisible by num_heads).
    use_residual, use_scale, layer_norm: of the attention layers.
    use_wide: add a first-order term.
    hidden: DNN widths; empty means no DNN (plain AutoInt).
    dropout: on attention weights and after each DNN block; batch_norm, activation: of the DNN.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        first_order: str = "embedding",
        attention_layers: int = 6,
        num_heads: int = 2,
        attention_dim: int = 128,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        use_wide: bool = True,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_contract(name, num_fields, embed_dim, num_dense)
        check_positive(name, attention_layers=attention_layers, num_heads=num_heads, attention_dim=attention_dim)
        self.dense_field = DenseField(num_dense, embed_dim)
        fields = num_fields + self.dense_field.extra_fields
        self.attention_arch = nn.Sequential(
            *(
                SelfAttentionLayer(
                    embed_dim if i == 0 else attention_dim, attention_dim, num_heads, dropout,
                    use_residual=use_residual, use_scale=use_scale, layer_norm=layer_norm,
                )
                for i in range(attention_layers)
            )
        )
        self.attention_out = nn.Linear(fields * attention_dim, 1)
        self.wide_arch = FirstOrder(num_fields, embed_dim, num_dense, bias=False, source=first_order) if use_wide else None
        self.deep_arch = DeepTower(num_fields, embed_dim, num_dense, hidden, activation=activation, dropout=dropout, batch_norm=batch_norm) if hidden else None

    @property
    def category_weights(self) -> bool:
        """Whether ``forward`` needs each category's first-order weight (``first_order: table``)."""
        return self.wide_arch is not None and self.wide_arch.category_weights

    def forward(
        self, embedded: torch.Tensor, dense: torch.Tensor, category_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        attended = self.attention_arch(self.dense_field(embedded, dense))
        logit = self.attention_out(attended.flatten(1)).squeeze(-1)
        if self.wide_arch is not None:
            logit = logit + self.wide_arch(embedded, dense, category_weights)
        if self.deep_arch is not None:
            logit = logit + self.deep_arch(embedded, dense)
        return logit


class AutoIntPlus(AutoInt):
    """AutoInt+: :class:`AutoInt` with a DNN (``hidden`` must not be empty); arguments as there.

    The signature is spelled out (not ``**kwargs``) so a config key the model lacks is an error.
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_dense: int = 0,
        attention_layers: int = 3,
        num_heads: int = 1,
        attention_dim: int = 128,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        use_wide: bool = True,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.1,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        if not hidden:
            raise ValueError("model: AutoIntPlus needs a DNN: hidden must not be empty (use AutoInt without one)")
        super().__init__(
            num_fields, embed_dim, num_dense, attention_layers=attention_layers, num_heads=num_heads,
            attention_dim=attention_dim, use_residual=use_residual, use_scale=use_scale, layer_norm=layer_norm,
            use_wide=use_wide, hidden=hidden, dropout=dropout, batch_norm=batch_norm, activation=activation,
        )
