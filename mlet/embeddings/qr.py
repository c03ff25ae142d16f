"""Quotient-remainder embeddings (Shi et al., KDD 2020; dlrm ``tricks/qr_embedding_bag.py``).

With ``c = remainder_rows``, a field with ``n_f > c`` categories has a quotient table of
``ceil(n_f / c)`` rows and a remainder table of ``c`` rows; index ``i`` is embedded from the
quotient row ``i // c`` and the remainder row ``i mod c``, combined by ``operation``:

* ``mult``: elementwise product (both tables ``d`` wide);
* ``add``: sum (both ``d`` wide);
* ``concat``: ``[quotient, remainder]`` (each ``d / 2`` wide; ``dim`` must be even).

Every index gets a distinct vector (no two share both rows). A field with ``n_f <= c`` keeps its
own ``n_f x d`` table (QR would not shrink it). Deployed: the tables themselves (``collapse()`` is
the module).

Initialisation (not dlrm's ``U(sqrt(1/n), 1)``, all positive): the vector of an index starts at
the scale the table rule (``table_init`` / ``init_std``, :mod:`mlet.embeddings.init`; ``uniform``
by the field's ``n_f``) gives a single-layer table. ``mult``: the quotient table starts at ones
(the product's identity) and the remainder table is drawn by the rule, so each vector starts as
its remainder row, zero-mean, and both tables receive gradient from the first step (two small
zero-mean factors would start the product at std ``init_std^2`` with vanishing gradients).
``add``: both tables drawn by the rule scaled by ``1/sqrt(2)`` (the sum has the rule's variance).
``concat``: both drawn by the rule.

MLET on QR is not offered: a product ``A B`` in front of the quotient or remainder table changes
only the parameterisation of tables of ``ceil(n/c)`` or ``c`` rows, which are few and frequently
updated rows; MLET's benefit is measured on rare rows of large tables (their updates through the
shared ``B``), and the deployed size would be unchanged. It could be added as for ``hash_mlet``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.embeddings.base import check_eval_mode
from mlet.embeddings.budget import budget_problem, choose, geometric
from mlet.embeddings.fields import PlainOrReduced
from mlet.embeddings.init import check_table_init

OPERATIONS = ("mult", "add", "concat")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def init_by_field_(weight: torch.Tensor, rows: Sequence[int], scale_cards: Sequence[int], table_init: str,
                   init_std: float | None, gain: float = 1.0) -> None:
    """Fill blocks of ``rows[i]`` rows of ``weight`` by the table rule of a field with
    ``scale_cards[i]`` categories (``uniform``: ``+-gain sqrt(1/n)``; ``normal``: ``gain * init_std``)."""
    with torch.no_grad():
        if table_init == "normal":
            weight.normal_(0.0, gain * float(init_std))
            return
        start = 0
        for r, n in zip(rows, scale_cards):
            bound = gain * math.sqrt(1.0 / n)
            weight[start : start + r].uniform_(-bound, bound)
            start += r


class QREmbedding(PlainOrReduced):
    """Quotient-remainder tables (module docstring).

    Args:
        cardinalities: categories per field (OOV index included).
        dim: output dimension d.
        remainder_rows: ``c``, rows of each remainder table (the knob: fewer rows, smaller tables).
        operation: ``mult``, ``add`` or ``concat``.
        sparse, table_init, init_std: as for a single-layer table.
        eval_mode: checked, otherwise ignored.
        budget: instead of ``remainder_rows``: the deployed bytes as a fraction of the single-layer
            table's (:mod:`mlet.embeddings.budget`).
    """

    kind = "qr"
    arm_keys = ("operation", "budget", "remainder_rows")
    key_names = {"operation": "op", "budget": "b", "remainder_rows": "c"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        remainder_rows: int | None = None,
        operation: str = "mult",
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
    ) -> None:
        self.check_config({"dim": dim, "remainder_rows": remainder_rows, "operation": operation,
                                       "budget": budget})
        if budget is not None:
            cards, width = [int(n) for n in cardinalities], dim // 2 if operation == "concat" else dim
            remainder_rows = choose(geometric(max(cards)), lambda c: 4 * sum(
                n * dim if n <= c else (-(-n // c) + c) * width for n in cards), cards, dim, budget)
        check_eval_mode(eval_mode)
        check_table_init(table_init, init_std)
        c = int(remainder_rows)
        super().__init__(cardinalities, dim, [int(n) > c for n in cardinalities], sparse, table_init, init_std)
        self.remainder_rows, self.operation, self.budget = c, operation, budget
        self.table_init, self.init_std = table_init, init_std
        cards = [self.cardinalities[f] for f in self.reduced_fields]
        quotient_rows = [-(-n // c) for n in cards]
        width = self.dim // 2 if operation == "concat" else self.dim
        self.register_buffer("q_offsets", torch.tensor([0, *quotient_rows[:-1]]).cumsum(0), persistent=False)
        self.register_buffer("r_offsets", torch.arange(len(cards)) * c, persistent=False)
        self.quotient = nn.Embedding(sum(quotient_rows), width, sparse=sparse) if cards else None
        self.remainder = nn.Embedding(len(cards) * c, width, sparse=sparse) if cards else None
        if cards:
            gain = math.sqrt(0.5) if operation == "add" else 1.0
            if operation == "mult":
                nn.init.ones_(self.quotient.weight)
            else:
                init_by_field_(self.quotient.weight, quotient_rows, cards, table_init, init_std, gain)
            init_by_field_(self.remainder.weight, [c] * len(cards), cards, table_init, init_std, gain)

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        c, op, dim = cfg.get("remainder_rows"), cfg.get("operation", "mult"), cfg.get("dim")
        if cfg.get("budget") is not None:
            problem = budget_problem(cfg, "remainder_rows")
            if problem:
                return problem
        elif not _whole(c) or c < 1:
            return f"embedding.remainder_rows must be a positive integer, got {c!r}"
        if op not in OPERATIONS:
            return f"embedding.operation must be one of {', '.join(OPERATIONS)}; got {op!r}"
        if op == "concat" and _whole(dim) and dim % 2:
            return f"embedding.operation=concat needs an even embedding.dim (d/2 per table), got embedding.dim={dim}"
        return None

    def _combine(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.operation == "mult":
            return q * r
        if self.operation == "add":
            return q + r
        return torch.cat([q, r], dim=-1)

    def reduced(self, local: torch.Tensor) -> torch.Tensor:
        c = self.remainder_rows
        return self._combine(self.quotient(local // c + self.q_offsets), self.remainder(local % c + self.r_offsets))

    def reduced_field_rows(self, field: int, local: torch.Tensor) -> torch.Tensor:
        c, j = self.remainder_rows, self.slot[field]
        q = self.quotient.weight[local // c + self.q_offsets[j]]
        return self._combine(q, self.remainder.weight[local % c + self.r_offsets[j]])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, remainder_rows={self.remainder_rows}, operation={self.operation}"
