"""Single-layer embedding: one ``n_f x d`` table per field (the deployed form of every type)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding, check_eval_mode
from mlet.embeddings.init import check_table_init, init_table_
from mlet.embeddings.torchrec import TorchRecTables, backend_problem, collapse_parts, config_backend_problem


class SingleLayerEmbedding(FieldEmbedding):
    """``W_f`` of shape ``n_f x dim`` for every field, stored concatenated.

    Args:
        cardinalities: categories per field (OOV index included).
        dim: embedding dimension d.
        sparse: produce sparse row gradients (for SparseAdam / sparse SGD / Adagrad).
        inner_dim: ignored (a single-layer table has no inner dimension); accepted so that one
            sweep can set ``embedding.inner_dim`` for both embedding types.
        budget: ignored (the reduction types' byte budget, :mod:`mlet.embeddings.budget`); accepted
            so that one sweep over budgets includes the single-layer reference, run once.
        eval_mode: checked, otherwise ignored (a single-layer table is its own collapsed form);
            accepted for the same reason.
        table_init, init_std: how the table is drawn, ``normal`` with std ``init_std`` (default
            ``N(0, 1e-4^2)``, BARS/FuxiCTR) or ``uniform`` in ``+-sqrt(1/n_f)`` (DLRM's; then
            ``init_std`` is None); see :mod:`mlet.embeddings.init`.
        backend: ``native`` (one ``nn.Embedding``) or ``torchrec`` (one TorchRec table per field,
            sharded across processes by ``mlet.torchrec_strategy``; :mod:`mlet.embeddings.torchrec`).
            The table is drawn the same way for both.
        sharding: with ``torchrec``, how the planner may shard every table (``auto``: its choice).
        table_sharding: with ``torchrec``, ``field index -> sharding`` for tables that differ.
    """

    kind = "single"
    ignored_keys = ("inner_dim", "budget")

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        inner_dim: int | None = None,
        budget: float | None = None,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        backend: str = "native",
        sharding: str = "auto",
        table_sharding: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(cardinalities, dim)
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        problem = backend_problem(backend, sharding, "embedding.dim", self.dim, table_sharding)
        if problem:
            raise ValueError(problem)
        self.backend, self.sharding = backend, sharding
        self.table_init, self.init_std = table_init, init_std
        self.table = nn.Embedding(self.total_rows, self.dim, sparse=sparse)
        init_table_(self.table.weight, self.cardinalities, table_init, init_std)
        if backend == "torchrec":
            self.table = TorchRecTables(self.cardinalities, self.table.weight.data, sharding, table_sharding)

    @classmethod
    def config_problem(cls, cfg) -> str | None:
        return config_backend_problem(cfg, "dim")  # FBGEMM's dim % 4 under embedding.backend=torchrec

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = self.rows(indices)
        return self.table(indices) if self.backend == "torchrec" else self.table(rows)

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.backend == "torchrec":
            return collapse_parts(self.table, lambda f: None, self.dim, rows).to(self.offsets.device)
        return self.table.weight[rows]

    def collapse(self) -> "SingleLayerEmbedding":
        """Itself; under the TorchRec backend a native copy of the whole table (every process
        contributes its shards, a collective)."""
        if self.backend == "torchrec":
            return SingleLayerEmbedding.from_weight(self.cardinalities, collapse_parts(self.table, lambda f: None, self.dim))
        return self

    def for_evaluation(self) -> FieldEmbedding:
        return self if self.backend == "torchrec" else self.collapse()  # sharded lookups, no gathered table

    def field_table(self, field: int) -> torch.Tensor:
        start = int(self.offsets[field])
        if self.backend == "torchrec":
            return self.collapsed_rows(torch.arange(start, start + self.cardinalities[field]))
        return self.table.weight[start : start + self.cardinalities[field]]

    def sparse_parameters(self) -> list[nn.Parameter]:
        if self.backend == "torchrec":
            return list(self.table.parameters())
        return [self.table.weight]

    @classmethod
    def from_weight(cls, cardinalities: Sequence[int], weight: torch.Tensor) -> "SingleLayerEmbedding":
        emb = cls(cardinalities, weight.shape[1])
        if weight.shape[0] != emb.total_rows:
            raise ValueError(f"weight has {weight.shape[0]} rows, the fields need {emb.total_rows}")
        with torch.no_grad():
            emb.table.weight.copy_(weight)
        return emb.to(weight.device)
