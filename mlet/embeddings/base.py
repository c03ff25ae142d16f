"""The one interface every embedding type implements.

An embedding module owns the tables of a set of categorical fields, field ``f`` having
``cardinalities[f]`` categories (out-of-vocabulary index included). It maps a batch of category
indices ``[B, F]`` (each column indexes its own field, from 0) to vectors ``[B, F, d]``.

It knows nothing of data files, models or Lightning: a model only sees ``dim`` and the output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn


def check_cardinalities(cardinalities: Sequence[int]) -> list[int]:
    cards = [int(c) for c in cardinalities]
    if not cards:
        raise ValueError("embedding: at least one categorical field is needed (cardinalities is empty)")
    bad = [(i, c) for i, c in enumerate(cards) if c < 1]
    if bad:
        raise ValueError(f"embedding: every field needs at least one category; got {bad} as (field, cardinality)")
    return cards


EVAL_MODES = ("auto", "collapse", "gather")


def check_eval_mode(eval_mode: str) -> str:
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"embedding.eval_mode must be one of {', '.join(EVAL_MODES)}; got {eval_mode!r}")
    return eval_mode


def check_dim(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"embedding.{name} must be a positive integer, got {value!r}")
    return int(value)


class FieldEmbedding(nn.Module, ABC):
    """Embeddings for ``F`` categorical fields stored as one concatenated table.

    Field ``f`` occupies rows ``offsets[f] : offsets[f] + cardinalities[f]`` of the concatenated
    table, so a whole batch is embedded with one gather. ``offsets`` is a buffer and moves with the
    module between devices.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        self.cardinalities = check_cardinalities(cardinalities)
        self.dim = check_dim("dim", dim)
        offsets = torch.tensor([0, *self.cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    @property
    def total_rows(self) -> int:
        return sum(self.cardinalities)

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Row numbers in the concatenated table for ``indices[B, F]``."""
        if indices.dim() != 2 or indices.shape[1] != self.num_fields:
            raise ValueError(
                f"embedding expects indices of shape [batch, {self.num_fields}], got {tuple(indices.shape)}"
            )
        return indices.long() + self.offsets

    def field_of_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The field each concatenated-table row belongs to."""
        return torch.bucketize(rows, self.offsets[1:], right=True)

    @abstractmethod
    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``[R]`` of the collapsed concatenated table, ``[R, dim]``, without building it."""

    @abstractmethod
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices[B, F]`` -> ``[B, F, dim]``."""

    @abstractmethod
    def collapse(self) -> "FieldEmbedding":
        """The single-layer embedding (one ``n_f x dim`` table per field) that computes the same outputs."""

    def for_evaluation(self) -> "FieldEmbedding":
        """What validation and test score: the collapsed single-layer embedding, or a module that
        computes exactly its outputs without materialising it (see ``MLETEmbedding.eval_mode``)."""
        return self.collapse()

    @property
    def train_parameters(self) -> int:
        """Parameters trained (for MLET: the factors A and B), whole tables counted also where
        this process holds only its shards of them (``embedding.backend=torchrec``)."""
        tables = [m for m in self.modules() if hasattr(m, "full_numel")]
        inside = {id(p) for t in tables for p in t.parameters()}
        rest = sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in inside)
        return rest + sum(t.full_numel for t in tables)

    @property
    def inference_parameters(self) -> int:
        """Parameters of the deployed (collapsed) embedding: ``sum_f n_f * dim``."""
        return self.total_rows * self.dim

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradient only touches the rows of a batch (the large tables)."""
        return []

    def _sparse_tables(self) -> list[nn.Embedding]:
        owned = {id(p) for p in self.sparse_parameters()}
        return [m for m in self.modules() if isinstance(m, nn.Embedding) and id(m.weight) in owned]

    @property
    def sparse(self) -> bool:
        """Whether the tables of ``sparse_parameters()`` produce row-sparse gradients.

        Set it to match the optimiser (:class:`mlet.module.CTRModule` does, from the optimiser
        config): a sparse-capable optimiser then reads and writes only the rows of a batch.
        """
        return any(m.sparse for m in self._sparse_tables())

    @sparse.setter
    def sparse(self, value: bool) -> None:
        for table in self._sparse_tables():
            table.sparse = bool(value)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={self.total_rows}, dim={self.dim}"
