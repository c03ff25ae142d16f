"""Tensor-train embeddings (TT-Rec, Yin et al., MLSys 2021), cores in plain PyTorch.

A field's ``n_f x d`` table is represented by ``c = tt_cores`` cores. Rows are factorised as
``n_f <= n_1 n_2 ... n_c`` (each ``n_k = ceil(n_f^(1/c))`` or less, the table padded as TT-Rec
does), columns as ``d = d_1 d_2 ... d_c`` (``tt_dim_factors``, or the prime factors of d spread
over the cores, largest first). Core ``k`` holds ``n_k`` slices of shape ``r_{k-1} x d_k x r_k``
(``r_0 = r_c = 1``, the others ``tt_rank``), stored as an ``nn.Embedding(n_k, r_{k-1} d_k r_k)`` so
row-wise quantisation quantises slices. Index ``i`` with mixed-radix digits ``(i_1 .. i_c)``
(``i_1`` most significant) has the row ``G_1[i_1] G_2[i_2] ... G_c[i_c]`` (a ``d_1 .. d_c`` tensor
flattened row-major). A field whose cores would not be smaller than its ``n_f x d`` table keeps
that table. Deployed: the cores (``collapse()`` is the module).

Initialisation: cores normal with std ``sigma`` chosen so that an entry of the row starts at the
table rule's variance ``s^2`` (``normal``: ``init_std^2``; ``uniform``: ``1/(3 n_f)``):
``sigma^(2c) * tt_rank^(c-1) = s^2`` (an entry is a sum of ``tt_rank^(c-1)`` products of c
independent zero-mean entries).

MLET on TT is not offered: the cores are already a product of factors trained jointly; a further
``A B`` in front of a core (tiny, ``n_k`` rows) adds a factorisation of a matrix that is not the
table, with no collapse to a smaller or equal deployed form than the cores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.embeddings.base import check_eval_mode
from mlet.embeddings.budget import budget_problem, choose
from mlet.embeddings.fields import PlainOrReduced
from mlet.embeddings.init import check_table_init


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def dim_factors(dim: int, cores: int) -> list[int]:
    """``dim`` as ``cores`` factors: its prime factors dealt largest first onto the smallest product."""
    primes, n, p = [], dim, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    factors = [1] * cores
    for q in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= q
    return sorted(factors, reverse=True)


def row_factors(n: int, cores: int) -> list[int]:
    """``cores`` factors with product >= n, each at most ``ceil(n^(1/cores))``, lowered greedily."""
    base = max(1, math.ceil(round(n ** (1.0 / cores), 9)))
    while base ** cores < n:
        base += 1
    factors = [base] * cores
    for k in range(cores):
        while factors[k] > 1 and math.prod(factors) // factors[k] * (factors[k] - 1) >= n:
            factors[k] -= 1
    return factors


def ranks(cores: int, rank: int) -> list[int]:
    return [1] + [rank] * (cores - 1) + [1]


def core_parameters(rows: Sequence[int], dims: Sequence[int], rank: int) -> int:
    r = ranks(len(rows), rank)
    return sum(rows[k] * r[k] * dims[k] * r[k + 1] for k in range(len(rows)))


class TTEmbedding(PlainOrReduced):
    """Tensor-train cores per field (module docstring).

    Args:
        cardinalities: categories per field (OOV index included).
        dim: output dimension d.
        tt_rank: the inner TT rank (``r_1 .. r_{c-1}``).
        tt_cores: number of cores c (at least 2).
        tt_dim_factors: ``d_1 .. d_c`` (product ``dim``), or None: from the prime factors of ``dim``.
        sparse, table_init, init_std: as for a single-layer table.
        eval_mode: checked, otherwise ignored.
        budget: instead of ``tt_rank``: the deployed bytes as a fraction of the single-layer table's
            (:mod:`mlet.embeddings.budget`; the largest rank, up to 512, within it).
    """

    kind = "tt"
    arm_keys = ("budget", "tt_rank")
    key_names = {"budget": "b", "tt_rank": "r"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        tt_rank: int | None = None,
        tt_cores: int = 3,
        tt_dim_factors: Sequence[int] | None = None,
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
    ) -> None:
        factors = list(tt_dim_factors) if tt_dim_factors is not None else None
        self.check_config({"dim": dim, "tt_rank": tt_rank, "tt_cores": tt_cores,
                                       "tt_dim_factors": factors, "budget": budget})
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        dims = factors or dim_factors(int(dim), int(tt_cores))
        shapes = [row_factors(int(n), int(tt_cores)) for n in cardinalities]
        if budget is not None:
            cards = [int(n) for n in cardinalities]
            tt_rank = choose(range(1, 513), lambda r: 4 * sum(
                min(n * dim, core_parameters(s, dims, r)) for n, s in zip(cards, shapes)), cards, int(dim), budget)
        reduce = [core_parameters(s, dims, int(tt_rank)) < int(n) * int(dim) for s, n in zip(shapes, cardinalities)]
        super().__init__(cardinalities, dim, reduce, sparse, table_init, init_std)
        self.tt_rank, self.tt_cores, self.dim_factors = int(tt_rank), int(tt_cores), dims
        self.budget = budget
        self.table_init, self.init_std = table_init, init_std
        self.row_shapes = [shapes[f] for f in self.reduced_fields]
        r = ranks(self.tt_cores, self.tt_rank)
        self.cores = nn.ModuleList()
        for f, shape in zip(self.reduced_fields, self.row_shapes):
            field_cores = nn.ModuleList(
                nn.Embedding(shape[k], r[k] * dims[k] * r[k + 1], sparse=sparse) for k in range(self.tt_cores)
            )
            var = init_std**2 if table_init == "normal" else 1.0 / (3 * self.cardinalities[f])
            sigma = (var / self.tt_rank ** (self.tt_cores - 1)) ** (1.0 / (2 * self.tt_cores))
            for core in field_cores:
                nn.init.normal_(core.weight, 0.0, sigma)
            self.cores.append(field_cores)

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        dim, rank, cores = cfg.get("dim"), cfg.get("tt_rank"), cfg.get("tt_cores", 3)
        factors = cfg.get("tt_dim_factors")
        if cfg.get("budget") is not None:
            problem = budget_problem(cfg, "tt_rank")
            if problem:
                return problem
        elif not _whole(rank) or rank < 1:
            return f"embedding.tt_rank must be a positive integer, got {rank!r}"
        if not _whole(cores) or cores < 2:
            return f"embedding.tt_cores must be an integer >= 2, got {cores!r}"
        if factors is not None:
            factors = list(factors)
            if len(factors) != cores or not all(_whole(x) and x >= 1 for x in factors):
                return (f"embedding.tt_dim_factors={factors} must be {cores} positive integers "
                        f"(one per core, embedding.tt_cores={cores})")
            if _whole(dim) and math.prod(factors) != dim:
                return (f"embedding.dim={dim} cannot be factorised as embedding.tt_dim_factors={factors} "
                        f"(product {math.prod(factors)})")
        elif _whole(dim) and dim_factors(dim, cores).count(1) > 0 and dim > 1:
            return (f"embedding.dim={dim} cannot be factorised into embedding.tt_cores={cores} factors > 1 "
                    f"(prime factors: {[x for x in dim_factors(dim, 64) if x > 1]}); set embedding.tt_dim_factors "
                    "or fewer embedding.tt_cores")
        return None

    def _digits(self, local: torch.Tensor, shape: Sequence[int]) -> list[torch.Tensor]:
        digits, rest = [], local
        for n in reversed(shape):
            digits.append(rest % n)
            rest = rest // n
        return digits[::-1]

    def reduced_field_rows(self, field: int, local: torch.Tensor) -> torch.Tensor:
        j = self.slot[field]
        cores, digits = self.cores[j], self._digits(local.long(), self.row_shapes[j])
        r, dims, batch = ranks(self.tt_cores, self.tt_rank), self.dim_factors, local.shape[0]
        out = cores[0](digits[0]).view(batch, dims[0], r[1])  # [B, D, r]
        for k in range(1, self.tt_cores):
            g = cores[k](digits[k]).view(batch, r[k], dims[k] * r[k + 1])
            out = torch.bmm(out, g).view(batch, -1, r[k + 1])
        return out.reshape(batch, self.dim)

    def reduced(self, local: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.reduced_field_rows(f, local[:, j]) for j, f in enumerate(self.reduced_fields)], 1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, tt_rank={self.tt_rank}, tt_cores={self.tt_cores}, "
                f"dim_factors={self.dim_factors}, tt_fields={len(self.reduced_fields)}")
