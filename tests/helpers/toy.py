"""A toy embedding type defined outside mlet: every field's categories hashed (modulo) into
``buckets`` shared rows. It proves that a new type needs nothing outside its class and its config
(tests/test_toy_embedding.py registers it through a config directory on ``hydra.searchpath``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.embeddings import FieldEmbedding, SingleLayerEmbedding
from mlet.embeddings.base import is_int


class ToyHashEmbedding(FieldEmbedding):
    kind = "toyhash"
    arm_keys = ("buckets",)
    ignored_keys = ("inner_dim",)

    def __init__(self, cardinalities: Sequence[int], dim: int, buckets: int, inner_dim: int | None = None,
                 eval_mode: str = "auto", table_init: str = "normal", init_std: float | None = 1e-4) -> None:
        super().__init__(cardinalities, dim)
        self.check_config({"dim": dim, "buckets": buckets})
        self.buckets = int(buckets)
        self.table = nn.Embedding(self.buckets, self.dim)
        nn.init.normal_(self.table.weight, std=0.1)

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        buckets = cfg.get("buckets")
        if not is_int(buckets) or buckets < 1:
            return f"embedding.buckets={buckets!r}: a toyhash table needs at least one bucket"
        return None

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table(self.rows(indices) % self.buckets)

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table.weight[rows % self.buckets]

    @property
    def inference_parameters(self) -> int:
        return self.buckets * self.dim  # deployed as it trains: the shared table

    def collapse(self) -> FieldEmbedding:
        rows = torch.arange(self.total_rows, device=self.table.weight.device)
        return SingleLayerEmbedding.from_weight(self.cardinalities, self.collapsed_rows(rows).detach())

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table.weight]
