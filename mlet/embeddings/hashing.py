"""The hashing trick: each field keeps at most ``buckets`` rows.

A field with ``n_f <= buckets`` categories keeps its own ``n_f`` rows (index ``i`` -> row ``i``); a
larger field maps index ``i`` to row ``h_f(i)`` of its ``buckets``-row table, so categories share
rows. The hash is fixed and computed in torch int64 (no Python ``hash``, no ``PYTHONHASHSEED``, no
platform dependence), the same rows in every process and on every machine::

    P = 2^31 - 1 (a Mersenne prime), M = 48271 (the MINSTD multiplier), S = 0x9E3779B1
    h_f(i) = ((M * (i mod P) + ((f + 1) * S mod P)) mod P) mod buckets

``i mod P < 2^31`` so ``M * (i mod P) < 2^47``: no int64 overflow. ``i -> M i mod P`` is a bijection
of ``0 .. P-1``, the per-field salt ``(f+1) S`` makes two fields collide differently.

Deployed: one ``sum_f min(n_f, buckets) x d`` table (``inference_bytes``).

``HashMLETEmbedding`` (``embedding=hash_mlet``) is MLET on the hashed table: ``A`` has
``min(n_f, buckets)`` rows of width ``k`` per field, ``B_f`` is ``k x d``; it collapses exactly to a
:class:`HashEmbedding` with the table ``A_f B_f`` (training-time output = deployed output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding, check_eval_mode
from mlet.embeddings.budget import budget_problem, choose, geometric
from mlet.embeddings.init import check_table_init, init_table_
from mlet.embeddings.mlet import MLETEmbedding
from mlet.embeddings.quantize import deployed_bytes

HASH_PRIME = 2**31 - 1
HASH_MULT = 48271
HASH_SALT = 0x9E3779B1


def field_hash(index: torch.Tensor, field: torch.Tensor, buckets: int) -> torch.Tensor:
    """``h_f(i)`` of the module docstring for int64 tensors ``index`` and ``field`` (broadcast)."""
    index, field = index.long(), field.long()
    salt = ((field + 1) * HASH_SALT) % HASH_PRIME
    return ((index % HASH_PRIME) * HASH_MULT + salt) % HASH_PRIME % buckets


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def buckets_problem(cfg: Mapping[str, Any]) -> str | None:
    buckets = cfg.get("buckets")
    if cfg.get("budget") is not None:
        return budget_problem(cfg, "buckets")
    if not _whole(buckets) or buckets < 1:
        return f"embedding.buckets must be a positive integer (rows kept per field), got {buckets!r}"
    return None


def budget_buckets(cardinalities: Sequence[int], dim: int, budget: float) -> int:
    """``buckets`` for a byte budget (:mod:`mlet.embeddings.budget`)."""
    cards = [int(n) for n in cardinalities]
    return choose(geometric(max(cards)), lambda m: sum(min(n, m) for n in cards) * dim * 4, cards, dim, budget)


class HashRows(nn.Module):
    """Maps field-local indices to field-local rows of the hashed tables."""

    def __init__(self, cardinalities: Sequence[int], buckets: int) -> None:
        super().__init__()
        self.buckets = int(buckets)
        self.table_cardinalities = [min(int(n), self.buckets) for n in cardinalities]
        self.register_buffer("hashed", torch.tensor([n > self.buckets for n in cardinalities]), persistent=False)
        self.register_buffer("fields", torch.arange(len(cardinalities)), persistent=False)

    def forward(self, local: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
        """``local[B, F]`` (columns = fields) or ``local[R]`` with ``field[R]`` -> hashed local rows."""
        field = self.fields if field is None else field
        return torch.where(self.hashed[field], field_hash(local, field, self.buckets), local.long())


class HashEmbedding(FieldEmbedding):
    """One hashed table per field: ``min(n_f, buckets) x dim`` (module docstring).

    Args:
        cardinalities: categories per field (OOV index included).
        dim: embedding dimension d.
        buckets: rows kept per field at most.
        sparse, table_init, init_std: as for :class:`~mlet.embeddings.SingleLayerEmbedding` (the
            table rule applies to the hashed table, ``uniform`` by its own row count).
        eval_mode: checked, otherwise ignored (the hashed table is its own deployed form).
        budget: instead of ``buckets``: the deployed bytes as a fraction of the single-layer
            table's (:mod:`mlet.embeddings.budget`); ``buckets`` is then chosen and null in the config.
    """

    kind = "hash"
    arm_keys = ("budget", "buckets")
    key_names = {"budget": "b", "buckets": "m"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        buckets: int | None = None,
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
    ) -> None:
        super().__init__(cardinalities, dim)
        self.check_config({"dim": dim, "buckets": buckets, "budget": budget})
        self.budget = budget
        if budget is not None:
            buckets = budget_buckets(self.cardinalities, self.dim, budget)
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        self.buckets, self.table_init, self.init_std = int(buckets), table_init, init_std
        self.hash_rows = HashRows(self.cardinalities, self.buckets)
        cards = self.hash_rows.table_cardinalities
        self.register_buffer("table_offsets", torch.tensor([0, *cards[:-1]]).cumsum(0), persistent=False)
        self.table = nn.Embedding(sum(cards), self.dim, sparse=sparse)
        init_table_(self.table.weight, cards, table_init, init_std)

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        return buckets_problem(cfg)

    def table_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the concatenated hashed table for rows of the logical ``sum_f n_f`` table."""
        field = self.field_of_rows(rows)
        return self.hash_rows(rows - self.offsets[field], field) + self.table_offsets[field]

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        self.rows(indices)  # shape check
        return self.table(self.hash_rows(indices) + self.table_offsets)

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table.weight[self.table_rows(rows)]

    def collapse(self) -> "HashEmbedding":
        return self

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table.weight]

    @property
    def inference_parameters(self) -> int:
        return self.table.weight.numel()

    @property
    def inference_bytes(self) -> int:
        return deployed_bytes(self.collapse())

    @classmethod
    def from_weight(cls, cardinalities: Sequence[int], buckets: int, weight: torch.Tensor) -> "HashEmbedding":
        emb = cls(cardinalities, weight.shape[1], buckets)
        if weight.shape[0] != emb.table.weight.shape[0]:
            raise ValueError(f"weight has {weight.shape[0]} rows, the hashed fields need {emb.table.weight.shape[0]}")
        with torch.no_grad():
            emb.table.weight.copy_(weight)
        return emb.to(weight.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, buckets={self.buckets}, table_rows={self.table.weight.shape[0]}"


class HashMLETEmbedding(FieldEmbedding):
    """MLET on a hashed table: ``A`` (``min(n_f, buckets) x k`` per field) times ``B_f`` (``k x d``),
    collapsed to a :class:`HashEmbedding`. Arguments as :class:`HashEmbedding` plus MLET's
    (``inner_dim``, ``share_projection``, ``train_projection``, ``init``; see
    :class:`~mlet.embeddings.MLETEmbedding`)."""

    kind = "hash_mlet"
    arm_keys = ("budget", "buckets", "inner_dim")
    key_names = {"budget": "b", "buckets": "m", "inner_dim": "k"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        buckets: int | None = None,
        inner_dim: int = 64,
        share_projection: bool = False,
        train_projection: bool = True,
        init: str = "scaled",
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
    ) -> None:
        super().__init__(cardinalities, dim)
        self.check_config({"dim": dim, "buckets": buckets, "inner_dim": inner_dim, "budget": budget})
        self.budget = budget
        if budget is not None:
            buckets = budget_buckets(self.cardinalities, self.dim, budget)
        self.buckets = int(buckets)
        self.hash_rows = HashRows(self.cardinalities, self.buckets)
        self.pair = MLETEmbedding(self.hash_rows.table_cardinalities, dim, inner_dim, share_projection,
                                  train_projection, init, sparse, eval_mode, table_init, init_std)
        self.inner_dim = self.pair.inner_dim

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        problem = buckets_problem(cfg)
        if problem:
            return problem
        dim, k = cfg.get("dim"), cfg.get("inner_dim")
        if _whole(dim) and _whole(k) and k < dim:
            return f"embedding.inner_dim={k} < embedding.dim={dim}: MLET on a hashed table needs inner_dim >= dim"
        return None

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        self.rows(indices)  # shape check
        return self.pair(self.hash_rows(indices))

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        field = self.field_of_rows(rows)
        local = self.hash_rows(rows - self.offsets[field], field)
        return self.pair.collapsed_rows(local + self.pair.offsets[field])

    def collapse(self) -> HashEmbedding:
        return HashEmbedding.from_weight(self.cardinalities, self.buckets, self.pair.collapsed_weight())

    def for_evaluation(self) -> FieldEmbedding:
        return self.collapse() if self.pair.resolved_eval_mode() == "collapse" else self

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.pair.sparse_parameters()

    @property
    def inference_parameters(self) -> int:
        return self.pair.total_rows * self.dim

    @property
    def inference_bytes(self) -> int:
        return deployed_bytes(self.collapse())
