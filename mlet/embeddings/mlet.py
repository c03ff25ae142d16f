"""MLET: each table trained as a product ``W_f = A_f B_f`` with ``A_f: n_f x k`` and ``B_f: k x d``.

There is no bias and no activation between the two factors, so after training the pair collapses
exactly into the single ``n_f x d`` table ``A_f B_f`` (``collapse()``); the deployed model has the
size of a single-layer model of dimension d.

Initialisation. ``table_init`` / ``init_std`` state the scale the product ``A B`` starts at, the same
rule a single-layer table is drawn by (:mod:`mlet.embeddings.init`: ``normal`` with std
``init_std``, or DLRM's ``uniform`` in ``+-sqrt(1/n_f)``). ``A_f`` is drawn by that rule; ``init``
chooses how the scale is split between the factors:

* ``scaled`` (default): ``B`` normal with std ``1/sqrt(k)``. Each entry of ``A B`` is a sum of k
  products, so its variance is ``k * Var(A) * 1/k = Var(A)``: the product starts at exactly the
  scale of the single-layer table it replaces, whatever k is (also for a low-rank k < d), and
  ``B^T B`` starts near the identity, so the row-wise part of the update on ``W`` starts at the
  single-layer learning rate. A comparison against a single-layer table then starts from the
  same point.
* ``authors``: ``B`` normal with std 0.25, as in the authors' public DLRM fork. The product's
  variance is ``k/16`` times the stated one (2x the std at k=64) and ``B^T B ~ (k/16) I``, so MLET
  also multiplies the table's effective learning rate by about ``k/16``: part of a gain measured
  with it can be a learning-rate effect.
* ``balanced``: the product drawn exactly as under ``scaled``, then re-factored (thin SVD, a random
  orthonormal basis) into ``A B`` with ``A^T A = B B^T`` (per field; over all fields with
  ``share_projection``): the same starting product, balanced factors. Both factors then have rank
  at most d (a balanced pair cannot have more): under plain SGD they stay in that d-dimensional
  subspace of the k inner dimensions; Adam's per-coordinate steps leave it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from collections.abc import Mapping
from typing import Any

from mlet.embeddings.base import FieldEmbedding, check_dim, check_eval_mode, is_int
from mlet.embeddings.init import balance_, check_table_init, init_table_
from mlet.embeddings.single import SingleLayerEmbedding
from mlet.embeddings.torchrec import TorchRecTables, backend_problem, collapse_parts, config_backend_problem

INITS = ("scaled", "authors", "balanced")
# eval_mode=auto gathers instead of collapsing when the collapsed table would hold more entries
# than this (2^26 float32 = 256 MiB): building it at every validation then costs real memory.
AUTO_GATHER_ENTRIES = 2**26


def projection_std(init: str, inner_dim: int) -> float:
    """The std ``B`` is drawn with (``balanced`` draws as ``scaled``, then re-factors)."""
    if init in ("scaled", "balanced"):
        return 1.0 / math.sqrt(inner_dim)
    if init == "authors":
        return 0.25
    raise ValueError(f"embedding.init must be one of {', '.join(INITS)}; got {init!r}")


class MLETEmbedding(FieldEmbedding):
    """Multi-layer embedding ``A_f B_f`` per field.

    Args:
        cardinalities: categories per field (OOV index included).
        dim: outer (deployed) dimension d.
        inner_dim: inner dimension k, at least ``dim`` (k < d is a low-rank factorisation, a
            different method, and is refused).
        share_projection: one ``B`` (k x d) for all fields instead of one per field.
        train_projection: train ``B``; ``False`` keeps it fixed at its random initialisation.
        init: ``scaled``, ``authors`` or ``balanced``: how the product's scale is split between
            ``A`` and ``B`` (module docstring).
        table_init, init_std: the scale the product starts at, the rule of a single-layer table
            (default ``normal`` with std 1e-4; ``uniform``: ``+-sqrt(1/n_f)``, ``init_std`` None).
        sparse: sparse row gradients for the large ``A`` tables (normally set from the optimiser).
        eval_mode: how evaluation computes the collapsed model's outputs. ``collapse``: build the
            ``n x d`` table ``A B`` once per validation/test and look rows up in it. ``gather``:
            look up rows of ``A`` and multiply them by ``B`` (the same numbers up to float
            rounding, no ``n x d`` table). ``auto``: ``gather`` when the table would exceed
            ``AUTO_GATHER_ENTRIES`` entries, else ``collapse``. Export always collapses (``collapse()``).
            Under ``backend=torchrec`` evaluation always gathers (through the sharded lookup).
        budget: ignored (the reduction types' byte budget); accepted so that one sweep over budgets
            includes MLET at the reference d, run once.
        backend: ``native`` (``A`` one ``nn.Embedding``) or ``torchrec`` (``A_f`` one TorchRec table
            per field, sharded across processes by ``mlet.torchrec_strategy``; ``B`` stays dense).
            ``A`` and ``B`` are drawn the same way for both.
        sharding: with ``torchrec``, how the planner may shard every ``A_f`` (``auto``: its choice).
        table_sharding: with ``torchrec``, ``field index -> sharding`` for tables that differ.
    """

    kind = "mlet"
    arm_keys = ("inner_dim",)
    ignored_keys = ("budget",)
    key_names = {"inner_dim": "k"}

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        inner_dim: int,
        share_projection: bool = False,
        train_projection: bool = True,
        init: str = "scaled",
        sparse: bool = False,
        eval_mode: str = "auto",
        table_init: str = "normal",
        init_std: float | None = 1e-4,
        budget: float | None = None,
        backend: str = "native",
        sharding: str = "auto",
        table_sharding: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(cardinalities, dim)
        self.eval_mode = check_eval_mode(eval_mode)
        self.backend, self.sharding = backend, sharding
        # Look every distinct row of a batch up once (True), or every lookup (False); None: on a CPU
        # only. The same numbers either way (see _forward_unique).
        self.dedup_lookups: bool | None = None
        self.inner_dim = check_dim("inner_dim", inner_dim)
        self.check_config({"dim": self.dim, "inner_dim": self.inner_dim})
        self.share_projection = bool(share_projection)
        self.init = init
        std = projection_std(init, self.inner_dim)
        check_table_init(table_init, init_std)
        self.table_init, self.init_std = table_init, init_std
        self.inner = nn.Embedding(self.total_rows, self.inner_dim, sparse=sparse)
        init_table_(self.inner.weight, self.cardinalities, table_init, init_std)
        shape = (self.inner_dim, self.dim) if self.share_projection else (self.num_fields, self.inner_dim, self.dim)
        self.projection = nn.Parameter(torch.randn(shape) * std, requires_grad=bool(train_projection))
        if init == "balanced":
            self._balance()
        problem = backend_problem(backend, sharding, "embedding.inner_dim", self.inner_dim, table_sharding)
        if problem:
            raise ValueError(problem)
        if backend == "torchrec":
            self.inner = TorchRecTables(self.cardinalities, self.inner.weight.data, sharding, table_sharding)

    def _balance(self) -> None:
        if self.share_projection:
            balance_(self.inner.weight.data, self.projection.data)
            return
        for f, a in enumerate(torch.split(self.inner.weight.data, self.cardinalities)):
            balance_(a, self.projection.data[f])

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        dim, k = cfg.get("dim"), cfg.get("inner_dim")
        if config_backend_problem(cfg, "inner_dim"):
            return config_backend_problem(cfg, "inner_dim")
        if not (is_int(dim) and is_int(k)):  # not numbers yet: the constructor's checks name them
            return None
        if k < dim:
            return (f"embedding.inner_dim={k} < embedding.dim={dim}: MLET needs inner_dim >= dim "
                    "(inner_dim < dim is a low-rank factorisation, a different method: embedding=lowrank)")
        return None

    @classmethod
    def label_of(cls, arm: Mapping[str, Any]) -> str:
        k = arm.get("inner_dim")
        return f"{arm.get('kind', cls.kind)}" + (f" k={k}" if k is not None else "")

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = self.rows(indices)  # [B, F]
        if self.backend == "torchrec":
            a = self.inner(indices)  # [B, F, k], looked up in the (sharded) tables
            if self.share_projection:
                return a @ self.projection
            return torch.bmm(a.transpose(0, 1), self.projection).transpose(0, 1).contiguous()
        dedup = self.dedup_lookups if self.dedup_lookups is not None else rows.device.type == "cpu"
        if dedup:
            return self._forward_unique(rows)
        if self.share_projection:
            return self.inner(rows) @ self.projection
        # Field-major: gather A's rows as [F, B, k] and multiply by each field's B in one batched
        # matmul. Against einsum("bfk,fkd->bfd") on [B, F, k] this skips two permuting copies of the
        # largest activation; forward + backward take about half the time (Criteo shapes, CPU).
        a = self.inner(rows.t().contiguous())  # [F, B, k]
        return torch.bmm(a, self.projection).transpose(0, 1).contiguous()  # [B, F, d]

    def _forward_unique(self, rows: torch.Tensor) -> torch.Tensor:
        """Each distinct row of the batch gathered and projected once, then expanded.

        CTR categories are heavily skewed: a Criteo-like batch of 4096 x 26 lookups touches about
        a fifth as many distinct rows, so the ``k``-wide gather, the projection, its backward and
        the sparse gradient (which the optimiser must coalesce) shrink about five-fold; on a CPU
        the embedding's forward + backward + SparseAdam step take about half the time. The result
        equals the plain lookup up to float rounding. Not the default on a GPU (``dedup_lookups``
        None): there ``torch.unique`` and the per-field split synchronise with the host and one
        batched matmul is already cheap (not measured on a GPU yet).
        """
        unique, inverse = torch.unique(rows, return_inverse=True)  # sorted: field by field
        a = self.inner(unique)  # [U, k]; the sparse gradient has U rows
        if self.share_projection:
            return (a @ self.projection)[inverse]
        starts = torch.searchsorted(unique, self.offsets)
        sizes = torch.diff(starts, append=starts.new_tensor([unique.numel()])).tolist()
        projected = torch.cat([part @ self.projection[f] for f, part in enumerate(torch.split(a, sizes))])
        return projected[inverse]  # [B, F, d]

    def field_projection(self, field: int) -> torch.Tensor:
        return self.projection if self.share_projection else self.projection[field]

    def collapsed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.backend == "torchrec":
            return collapse_parts(self.inner, self.field_projection, self.dim, rows).to(self.offsets.device)
        a = self.inner.weight[rows]  # [R, k]
        if self.share_projection:
            return a @ self.projection
        return torch.bmm(a.unsqueeze(1), self.projection[self.field_of_rows(rows)]).squeeze(1)

    @torch.no_grad()
    def collapsed_weight(self) -> torch.Tensor:
        """The concatenated ``sum_f n_f x d`` table ``[A_1 B_1; ...; A_F B_F]``. Under the TorchRec
        backend every process collapses its own shards of ``A`` and the partial tables are summed
        (a collective; :func:`mlet.embeddings.torchrec.collapse_parts`)."""
        if self.backend == "torchrec":
            return collapse_parts(self.inner, self.field_projection, self.dim).to(self.projection.device)
        if self.share_projection:
            return self.inner.weight @ self.projection
        parts = torch.split(self.inner.weight, self.cardinalities)
        return torch.cat([a @ self.projection[f] for f, a in enumerate(parts)])

    def collapse(self) -> SingleLayerEmbedding:
        return SingleLayerEmbedding.from_weight(self.cardinalities, self.collapsed_weight())

    def sparse_parameters(self) -> list[nn.Parameter]:
        if self.backend == "torchrec":
            return list(self.inner.parameters())
        return [self.inner.weight]

    def resolved_eval_mode(self) -> str:
        if self.backend == "torchrec":
            return "gather"
        if self.eval_mode != "auto":
            return self.eval_mode
        return "gather" if self.total_rows * self.dim > AUTO_GATHER_ENTRIES else "collapse"

    def for_evaluation(self) -> FieldEmbedding:
        """The collapsed table (``collapse``) or this module itself (``gather``: ``forward`` computes
        ``A[rows] B_f``, the collapsed table's rows, without building the table)."""
        return self.collapse() if self.resolved_eval_mode() == "collapse" else self

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, inner_dim={self.inner_dim}, share_projection={self.share_projection}, "
            f"init={self.init}, table_init={self.table_init}, init_std={self.init_std}, "
            f"train_projection={self.projection.requires_grad}, eval_mode={self.eval_mode}"
        )


class LowRankEmbedding(MLETEmbedding):
    """Low-rank factorisation ``W_f = A_f B_f`` with ``inner_dim < dim`` (rank-k tables): the
    contrast to MLET, which over-parameterises (k >= d) rather than compresses. Collapses to
    ``n_f x d`` like MLET; same options."""

    kind = "lowrank"

    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        dim, k = cfg.get("dim"), cfg.get("inner_dim")
        if config_backend_problem(cfg, "inner_dim"):
            return config_backend_problem(cfg, "inner_dim")
        if is_int(dim) and is_int(k) and k >= dim:
            return (f"embedding=lowrank needs inner_dim < dim, got embedding.inner_dim={k}, embedding.dim={dim} "
                    "(inner_dim >= dim is MLET: embedding=mlet)")
        return None
