"""Mixed-dimension embeddings (Ginart et al. 2019; dlrm ``tricks/md_embedding_bag.py``).

Field ``f`` gets its own width by the alpha-power rule on cardinality,

    d_f = clamp(round(dim * (n_min / n_f) ^ alpha), 1, dim)        (n_min: the smallest field)

so the smallest field keeps ``dim`` and larger fields get narrower tables (``alpha = 0``: every
field ``dim``; dlrm's ``md_solver`` with ``d0 = dim``, without rounding to powers of two). Its
``n_f x d_f`` table is followed by a ``d_f x d`` projection (none where ``d_f = dim``) that stays at
inference: the deployed embedding is the tables plus the projections (``collapse()`` is the module
for ``mixed_dim``).

Initialisation: the table by the table rule (``table_init`` / ``init_std``), the projection normal
with std ``1/sqrt(d_f)``, so an output entry starts at the table rule's variance.

``MixedDimMLETEmbedding`` (``embedding=mixed_dim_mlet``): MLET for each table, ``n_f x d_f``
trained as ``A_f B_f`` (``A_f: n_f x k``, ``B_f: k x d_f``, ``B`` with std ``1/sqrt(k)`` as MLET's
``scaled`` init); it collapses to a :class:`MixedDimEmbedding` with tables ``A_f B_f`` and the same
projections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding, check_eval_mode
from mlet.embeddings.budget import budget_problem, choose
from mlet.embeddings.init import check_table_init, init_table_
from mlet.embeddings.quantize import deployed_bytes


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def field_dims(cardinalities: Sequence[int], dim: int, alpha: float) -> list[int]:
    """The alpha-power rule (module docstring)."""
    smallest = min(cardinalities)
    return [max(1, min(dim, round(dim * (smallest / n) ** alpha))) for n in cardinalities]


def deployed_floats(cardinalities: Sequence[int], dim: int, alpha: float) -> int:
    """Floats of the deployed tables and projections at ``alpha``."""
    dims = field_dims(cardinalities, dim, alpha)
    return sum(n * d_f + (d_f * dim if d_f < dim else 0) for n, d_f in zip(cardinalities, dims))


def budget_alpha(cardinalities: Sequence[int], dim: int, budget: float) -> float:
    """The smallest ``alpha`` (0 .. 8 in steps of 0.01) whose deployed bytes fit the budget."""
    return choose([i / 100 for i in range(801)], lambda a: 4 * deployed_floats(cardinalities, dim, a),
                  cardinalities, dim, budget)


class MixedDimEmbedding(FieldEmbedding):
    """``n_f x d_f`` tables with ``d_f x d`` projections (module docstring).

    Args:
        cardinalities: categories per field (OOV index included).
        dim: output dimension d (the width of the smallest field's table).
        alpha: the power of the rule (>= 0; larger: narrower tables for large fields).
        sparse, table_init, init_std: as for a single-layer table.
        eval_mode: checked, otherwise ignored.
        budget: instead of ``alpha``: the deployed bytes as a fraction of the single-layer table's
            (:mod:`mlet.embeddings.budget`; the smallest alpha within it).
    """

    kind = "mixed_dim"
    arm_keys = ("budget", "alpha")
    key_names = {"budget": "b", "alpha": "a"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        alpha: float | None = None,
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
        **mlet: Any,
    ) -> None:
        super().__init__(cardinalities, dim)
        self.check_config({"dim": dim, "alpha": alpha, "budget": budget, **mlet})
        self.budget = budget
        if budget is not None:
            alpha = budget_alpha(self.cardinalities, self.dim, budget)
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        self.alpha, self.table_init, self.init_std = float(alpha), table_init, init_std
        self.field_dims = field_dims(self.cardinalities, self.dim, self.alpha)
        self._build_tables(sparse, table_init, init_std, **mlet)
        self.projections = nn.ModuleList(
            nn.Identity() if d_f == self.dim else nn.Linear(d_f, self.dim, bias=False) for d_f in self.field_dims
        )
        for p in self.projections:
            if isinstance(p, nn.Linear):
                nn.init.normal_(p.weight, 0.0, 1.0 / math.sqrt(p.in_features))

    def _build_tables(self, sparse: bool, table_init: str, init_std: float | None) -> None:
        self.tables = nn.ModuleList(nn.Embedding(n, d_f, sparse=sparse)
                                    for n, d_f in zip(self.cardinalities, self.field_dims))
        for n, t in zip(self.cardinalities, self.tables):
            init_table_(t.weight, [n], table_init, init_std)

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        alpha = cfg.get("alpha")
        if cfg.get("budget") is not None:
            return budget_problem(cfg, "alpha")
        if not _number(alpha) or not alpha >= 0:
            return f"embedding.alpha must be a number >= 0 (the power of the mixed-dimension rule), got {alpha!r}"
        return None

    def field_table(self, f: int, local: torch.Tensor) -> torch.Tensor:
        """Rows ``[..., d_f]`` of field ``f``'s ``n_f x d_f`` table."""
        return self.tables[f](local)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        self.rows(indices)  # shape check
        return torch.stack([self.projections[f](self.field_table(f, indices[:, f].long()))
                            for f in range(self.num_fields)], dim=1)

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        field = self.field_of_rows(rows)
        local = rows - self.offsets[field]
        out = torch.empty(len(rows), self.dim, device=rows.device)
        for f in range(self.num_fields):
            mask = field == f
            if mask.any():
                out[mask] = self.projections[f](self.field_table(f, local[mask]))
        return out

    def collapse(self) -> FieldEmbedding:
        return self

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [t.weight for t in self.tables if isinstance(t, nn.Embedding)]

    @property
    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.collapse().parameters())

    @property
    def inference_bytes(self) -> int:
        return deployed_bytes(self.collapse())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, field_dims={self.field_dims}"


class MixedDimMLETEmbedding(MixedDimEmbedding):
    """Mixed dimensions with each ``n_f x d_f`` table trained as MLET's ``A_f B_f`` (``inner_dim``
    k >= dim; module docstring). Collapses to a :class:`MixedDimEmbedding`."""

    kind = "mixed_dim_mlet"
    arm_keys = ("budget", "alpha", "inner_dim")
    key_names = {"budget": "b", "alpha": "a", "inner_dim": "k"}

    def __init__(self, cardinalities: Sequence[int], dim: int, alpha: float | None = None, inner_dim: int = 64,
                 sparse: bool = False, eval_mode: str = "auto", table_init: str = "normal",
                 init_std: float | None = 1e-4, budget: float | None = None) -> None:
        super().__init__(cardinalities, dim, alpha, sparse, eval_mode, table_init, init_std, budget,
                         inner_dim=inner_dim)

    def _build_tables(self, sparse: bool, table_init: str, init_std: float | None, inner_dim: int) -> None:
        self.inner_dim = int(inner_dim)
        self.inner = nn.ModuleList(nn.Embedding(n, self.inner_dim, sparse=sparse) for n in self.cardinalities)
        for n, t in zip(self.cardinalities, self.inner):
            init_table_(t.weight, [n], table_init, init_std)
        self.inner_projections = nn.ParameterList(
            nn.Parameter(torch.randn(self.inner_dim, d_f) / math.sqrt(self.inner_dim)) for d_f in self.field_dims
        )

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        problem = super().config_problem(cfg)
        if problem:
            return problem
        dim, k = cfg.get("dim"), cfg.get("inner_dim")
        if not (isinstance(k, int) and not isinstance(k, bool)) or k < 1:
            return f"embedding.inner_dim must be a positive integer, got {k!r}"
        if isinstance(dim, int) and k < dim:
            return (f"embedding.inner_dim={k} < embedding.dim={dim}: MLET for mixed-dimension tables needs "
                    "inner_dim >= dim")
        return None

    def field_table(self, f: int, local: torch.Tensor) -> torch.Tensor:
        return self.inner[f](local) @ self.inner_projections[f]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [t.weight for t in self.inner]

    @torch.no_grad()
    def collapse(self) -> MixedDimEmbedding:
        out = MixedDimEmbedding(self.cardinalities, self.dim, self.alpha)
        out.budget = self.budget
        for f in range(self.num_fields):
            out.tables[f].weight.copy_(self.inner[f].weight @ self.inner_projections[f])
        out.projections.load_state_dict(self.projections.state_dict())
        return out.to(self.offsets.device)
