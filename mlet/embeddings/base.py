"""The one interface every embedding type implements.

An embedding module owns the tables of a set of categorical fields, field ``f`` having
``cardinalities[f]`` categories (out-of-vocabulary index included). It maps a batch of category
indices ``[B, F]`` (each column indexes its own field, from 0) to vectors ``[B, F, d]``.

It knows nothing of data files, models or Lightning: a model only sees ``dim`` and the output.

Everything the rest of mlet needs to know about an embedding type is declared by its class, so a
new type needs no edit outside ``mlet/embeddings/`` and its ``mlet/conf/embedding/<name>.yaml``:

* ``kind``: the short id in records, run-folder names and report groups (``single``, ``mlet``, ...);
* ``arm_keys``: the constructor arguments besides ``dim`` that define an arm (MLET: ``inner_dim``);
* ``ignored_keys``: keys accepted only so that one sweep can set them for every type, and ignored
  (single: ``inner_dim``): a sweep runs such jobs once;
* ``config_problem(cfg)``: why an embedding config is not a valid arm (one line naming the keys),
  or None; sweeps skip such jobs, the constructor raises ``ValueError`` with the same text;
* ``label_of(arm)`` / ``arm()`` / ``label()``: the arm as a dict and its display label (records
  keep both, so a report labels kinds it never imported);
* sizes: ``train_parameters``, ``train_bytes``, ``inference_parameters``, ``inference_bytes``;
* ``collapse()``: the deployed form (exportable with ``torch.export``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

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


def is_int(value: Any) -> bool:
    """A whole number (``bool`` excluded): what a config value must be for an arithmetic rule."""
    return isinstance(value, int) and not isinstance(value, bool)


class FieldEmbedding(nn.Module, ABC):
    """Embeddings for ``F`` categorical fields stored as one concatenated table.

    Field ``f`` occupies rows ``offsets[f] : offsets[f] + cardinalities[f]`` of the concatenated
    table, so a whole batch is embedded with one gather. ``offsets`` is a buffer and moves with the
    module between devices.

    A subclass declares ``kind`` and, where it has them, ``arm_keys`` / ``ignored_keys``, and
    overrides ``config_problem`` for its validity rule (module docstring).
    """

    kind: ClassVar[str] = ""
    arm_keys: ClassVar[tuple[str, ...]] = ()
    ignored_keys: ClassVar[tuple[str, ...]] = ()
    # short names of arm keys in run-folder names and tags (MLET: inner_dim -> k: ``...-d16-k64-s0``)
    key_names: ClassVar[dict[str, str]] = {}

    # ---- what a config of this type is (asked before anything is built) ---------------------
    @classmethod
    def config_problem(cls, cfg: Mapping[str, Any]) -> str | None:
        """Why ``cfg`` (the ``embedding`` config node as a plain dict, without ``_target_`` /
        ``_partial_``) is not a valid arm of this type, as one line naming the keys; None if it is.
        Sweeps skip such jobs as invalid; the constructor raises ``ValueError`` with this text."""
        return None

    @classmethod
    def check_config(cls, cfg: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` with :meth:`config_problem`'s line (for constructors)."""
        problem = cls.config_problem(cfg)
        if problem:
            raise ValueError(problem)

    @classmethod
    def arm_of(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The arm a config builds: ``{"kind", "dim", **arm_keys}`` (what :meth:`arm` returns once built)."""
        return {"kind": cls.kind, "dim": cfg.get("dim"), **{k: cfg.get(k) for k in cls.arm_keys}}

    @classmethod
    def label_of(cls, arm: Mapping[str, Any]) -> str:
        """Display label of an arm, naming the method without its ``dim`` (the report's x axis):
        ``<kind>`` then ``key=value`` for each of ``arm_keys``."""
        extra = [f"{k}={arm[k]}" for k in cls.arm_keys if arm.get(k) is not None]
        return " ".join([str(arm.get("kind", cls.kind)), *extra])

    @classmethod
    def name_parts(cls, arm: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The arm keys set in ``arm`` as ``(short name, value)`` for run-folder names and tags."""
        return [(cls.key_names.get(k, k), arm[k]) for k in cls.arm_keys if arm.get(k) is not None]

    def arm(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, **{k: getattr(self, k) for k in self.arm_keys}}

    def label(self) -> str:
        return type(self).label_of(self.arm())

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

    @property
    def train_bytes(self) -> int:
        """Bytes of this module's parameters and persistent buffers while training (trained or
        fixed; optimiser state not counted)."""
        return _state_bytes(self)

    @property
    def inference_bytes(self) -> int:
        """Bytes of the deployed embedding: ``inference_parameters`` at the parameters' element
        size (a type that deploys quantised tables, scales or kept projections overrides this)."""
        param = next(self.parameters(), None)
        return self.inference_parameters * (param.element_size() if param is not None else 4)

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


def _state_bytes(module: nn.Module) -> int:
    # TorchRec tables (embedding.backend=torchrec) count whole, fp32, however they are sharded
    tables = {f"{name}.": m for name, m in module.named_modules() if name and hasattr(m, "full_numel")}
    whole = sum(m.full_numel * 4 for m in tables.values())
    return whole + sum(t.numel() * t.element_size() for key, t in module.state_dict().items()
                       if torch.is_tensor(t) and not any(key.startswith(prefix) for prefix in tables))


def embedding_class(target: str | None) -> type[FieldEmbedding] | None:
    """The embedding class a config's ``_target_`` names (``pkg.module.Class``), or None when it
    names none (or cannot be imported: the config check reports that)."""
    if not target or "." not in str(target):
        return None
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, FieldEmbedding) else None


def plain_config(node: Mapping[str, Any]) -> dict[str, Any]:
    """An ``embedding`` config node as :meth:`FieldEmbedding.config_problem` takes it."""
    return {str(k): v for k, v in dict(node).items() if k not in ("_target_", "_partial_")}
