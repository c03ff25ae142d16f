"""Shared layout of the table-reduction types that leave small fields alone (QR, tensor-train).

A field whose reduced form would not be smaller keeps its own ``n_f x d`` rows in one concatenated
``plain`` table; the other fields go through the type's reduced form (:meth:`reduced`). The output
keeps the field order. Used by :mod:`mlet.embeddings.qr` and :mod:`mlet.embeddings.tt`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from mlet.embeddings.base import FieldEmbedding
from mlet.embeddings.init import init_table_
from mlet.embeddings.quantize import deployed_bytes


class PlainOrReduced(FieldEmbedding):
    """Fields ``f`` with ``reduce[f]`` False in one plain table, the rest by :meth:`reduced`."""

    def __init__(self, cardinalities: Sequence[int], dim: int, reduce: Sequence[bool], sparse: bool,
                 table_init: str, init_std: float | None) -> None:
        super().__init__(cardinalities, dim)
        self.plain_fields = [f for f, r in enumerate(reduce) if not r]
        self.reduced_fields = [f for f, r in enumerate(reduce) if r]
        plain_cards = [self.cardinalities[f] for f in self.plain_fields]
        self.plain = nn.Embedding(sum(plain_cards), self.dim, sparse=sparse) if plain_cards else None
        if self.plain is not None:
            init_table_(self.plain.weight, plain_cards, table_init, init_std)
        self.register_buffer("plain_offsets", torch.tensor([0, *plain_cards[:-1]]).cumsum(0), persistent=False)
        order = self.plain_fields + self.reduced_fields
        self.register_buffer("unpermute", torch.argsort(torch.tensor(order)), persistent=False)
        # position of each field among the plain or the reduced ones
        self.slot = {f: i for i, f in enumerate(self.plain_fields)} | {f: i for i, f in enumerate(self.reduced_fields)}

    @abstractmethod
    def reduced(self, local: torch.Tensor) -> torch.Tensor:
        """``local[B, G]`` indices of the reduced fields (in ``reduced_fields`` order) -> ``[B, G, d]``."""

    @abstractmethod
    def reduced_field_rows(self, field: int, local: torch.Tensor) -> torch.Tensor:
        """Vectors ``[R, d]`` of field-local indices ``local[R]`` of reduced field ``field``."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        self.rows(indices)  # shape check
        parts = []
        if self.plain_fields:
            parts.append(self.plain(indices[:, self.plain_fields].long() + self.plain_offsets))
        if self.reduced_fields:
            parts.append(self.reduced(indices[:, self.reduced_fields].long()))
        out = torch.cat(parts, dim=1)
        return out if not (self.plain_fields and self.reduced_fields) else out[:, self.unpermute]

    @torch.no_grad()
    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        field = self.field_of_rows(rows)
        local = rows - self.offsets[field]
        out = torch.empty(len(rows), self.dim, device=rows.device)
        for f in range(self.num_fields):
            mask = field == f
            if not mask.any():
                continue
            if f in self.plain_fields:
                out[mask] = self.plain.weight[local[mask] + self.plain_offsets[self.slot[f]]]
            else:
                out[mask] = self.reduced_field_rows(f, local[mask])
        return out

    def collapse(self) -> "PlainOrReduced":
        return self

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]

    @property
    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def inference_bytes(self) -> int:
        return deployed_bytes(self.collapse())
