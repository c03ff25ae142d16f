"""The TorchRec backend of the large tables (``embedding.backend=torchrec``).

With ``backend=native`` (the default) an embedding's large table (single-layer ``W``, MLET's ``A``)
is one ``nn.Embedding`` holding every field's rows, replicated in every process. With
``backend=torchrec`` it is a TorchRec ``EmbeddingBagCollection`` with one table per field
(:class:`TorchRecTables`); a distributed training strategy (``mlet.torchrec_strategy``) then lets
TorchRec's planner shard those tables across the job's processes and trains them with FBGEMM's
table-batched kernels, the table optimiser fused into backward. Everything else (MLET's ``B_f``,
the model) stays an ordinary dense, data-parallel module.

This module knows nothing of data or Lightning: it builds the collection, looks rows up, and
collapses each process's own shards (:func:`local_table_parts`).

Install: ``scripts/install_torchrec.sh`` (torchrec and fbgemm-gpu-cpu 1.8.0 without their pinned
dependencies, which would replace this project's torch and torchmetrics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlet.errors import MletError

BACKENDS = ("native", "torchrec")
SHARDINGS = ("auto", "table_wise", "column_wise", "row_wise", "data_parallel")
INSTALL = "scripts/install_torchrec.sh"


class BackendError(MletError, ValueError):
    """``embedding.backend`` / ``embedding.sharding`` cannot be used as configured."""


def check_backend(backend: str, sharding: str, table_sharding: Mapping[Any, str] | None = None,
                  num_fields: int | None = None) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"embedding.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if sharding not in SHARDINGS:
        raise BackendError(f"embedding.sharding must be one of {', '.join(SHARDINGS)}; got {sharding!r}")
    for field, kind in (table_sharding or {}).items():
        if isinstance(field, bool) or not isinstance(field, int) or field < 0 or (
                num_fields is not None and field >= num_fields):
            fields = f"0..{num_fields - 1}" if num_fields is not None else "a field index"
            raise BackendError(f"embedding.table_sharding: keys are field indices ({fields}); got {field!r}")
        if kind not in SHARDINGS:
            raise BackendError(f"embedding.table_sharding.{field} must be one of {', '.join(SHARDINGS)}; got {kind!r}")


def backend_problem(backend: str, sharding: str, key: str, width: int,
                    table_sharding: Mapping[Any, str] | None = None) -> str | None:
    """Why this backend cannot hold a table of ``width`` columns (``key`` names the config key
    that sets it), as one line, or None. FBGEMM's kernels need ``width % 4 == 0``."""
    try:
        check_backend(backend, sharding, table_sharding)
    except BackendError as exc:
        return str(exc)
    if backend == "torchrec" and width % 4:
        return (f"embedding.backend=torchrec needs {key} divisible by 4 (FBGEMM's table-batched kernels), "
                f"got {key}={width}: use a multiple of 4 or embedding.backend=native")
    return None


def config_backend_problem(cfg, key: str) -> str | None:
    """:func:`backend_problem` for an ``embedding`` config node (``key``: the width's key, ``dim`` or
    ``inner_dim``); None while the width is not a number yet (the constructor's checks name it)."""
    width = cfg.get(key)
    if isinstance(width, bool) or not isinstance(width, int):
        return None
    return backend_problem(cfg.get("backend", "native"), cfg.get("sharding", "auto"), f"embedding.{key}", width,
                           cfg.get("table_sharding"))


def require_torchrec():
    """The ``torchrec`` module, or a one-line :class:`BackendError` saying how to install it."""
    try:
        import torchrec  # noqa: F401
        import torchrec.distributed  # noqa: F401
    except Exception as exc:  # ImportError, or fbgemm's native library failing to load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"embedding.backend=torchrec needs torchrec and fbgemm-gpu-cpu 1.8.0, which are not importable "
            f"({first}): run {INSTALL} (README: TorchRec backend), or use embedding.backend=native"
        ) from None
    return torchrec


def table_name(field: int) -> str:
    return f"field_{field}"


class TorchRecTables(nn.Module):
    """One TorchRec table per field, ``n_f x width``, in an ``EmbeddingBagCollection``.

    ``forward(indices[B, F]) -> [B, F, width]`` looks up each field's index in its own table (a
    bag of one id, so sum pooling is the row itself). Until a strategy shards it, the collection
    is a plain CPU module with dense gradients; sharded (``DistributedModelParallel`` replaces
    ``self.collection`` in place), each process holds only its shards and each batch's lookups
    travel to their owners and back (all-to-all).

    Args:
        cardinalities: rows per field.
        weight: the initial concatenated ``sum_f n_f x width`` table (copied field by field), so
            that the backend starts from exactly the native table.
        sharding: the sharding every table is constrained to (``auto``: the planner chooses).
        table_sharding: ``field -> sharding`` for the tables that differ from ``sharding``.
    """

    def __init__(self, cardinalities: Sequence[int], weight: torch.Tensor, sharding: str = "auto",
                 table_sharding: Mapping[int, str] | None = None) -> None:
        super().__init__()
        self.cardinalities = [int(c) for c in cardinalities]
        # the config first: a misspelt sharding is named whether or not TorchRec is installed
        check_backend("torchrec", sharding, table_sharding, len(self.cardinalities))
        torchrec = require_torchrec()
        self.width = int(weight.shape[1])
        self._field_order: tuple[list[str], list[int] | None] | None = None  # (output keys, their permutation)
        # each field's table: its own entry of table_sharding, else sharding
        self.shardings = {table_name(f): (table_sharding or {}).get(f, sharding) for f in range(len(self.cardinalities))}
        configs = [
            torchrec.EmbeddingBagConfig(name=table_name(f), embedding_dim=self.width, num_embeddings=n,
                                        feature_names=[table_name(f)], pooling=torchrec.PoolingType.SUM)
            for f, n in enumerate(self.cardinalities)
        ]
        # built on the meta device, then given storage: no random draw of its own, so the model built
        # after the embedding starts from the same random state as under the native backend
        self.collection = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
        self.collection = self.collection.to_empty(device=weight.device)
        with torch.no_grad():
            for f, part in enumerate(torch.split(weight, self.cardinalities)):
                self.collection.embedding_bags[table_name(f)].weight.copy_(part)

    @property
    def keys(self) -> list[str]:
        return [table_name(f) for f in range(len(self.cardinalities))]

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        batch, fields = indices.shape
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys, values=indices.t().reshape(-1).long(),  # field-major: KJT values are key by key
            lengths=torch.ones(batch * fields, dtype=torch.int32, device=indices.device),
        )
        pooled = self.collection(kjt)  # KeyedTensor [B, F * width]
        values = pooled.values().view(batch, fields, self.width)
        # in its own key order: a sharded collection orders its output by shard (table-wise: rank 0's
        # tables first), not by field; field f must come back at position f
        order = pooled.keys()
        if self._field_order is None or self._field_order[0] != order:  # the same after sharding: computed once
            self._field_order = (list(order), None if order == self.keys else [order.index(k) for k in self.keys])
        permutation = self._field_order[1]
        return values if permutation is None else values[:, permutation]

    def model_parallel_parameters(self) -> list[nn.Parameter]:
        """The parameters of the tables that are not replicated (``data_parallel``): under a strategy
        their optimiser is FBGEMM's fused one, or the table optimiser on TorchRec's dense kernel. The
        collection names each table's parameter ``embedding_bags.<field_f>.weight``, sharded or not."""
        split = {key for key, sharding in self.shardings.items() if sharding != "data_parallel"}
        return [p for name, p in self.collection.named_parameters() if name.split(".")[-2] in split]

    @property
    def full_numel(self) -> int:
        """Entries of all the tables together (however they are sharded)."""
        return sum(self.cardinalities) * self.width

    @property
    def is_sharded(self) -> bool:
        """Whether a strategy has replaced the collection by its sharded form."""
        return type(self.collection).__name__ != "EmbeddingBagCollection"

    def local_parts(self) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """``(field, first_row, first_column, block)`` for every block of the tables this process
        holds: the whole table unsharded; its own shards when sharded (table-, column-, row-wise).
        A data-parallel (replicated) table is yielded by rank 0 only, so the blocks of all
        processes together cover every entry exactly once."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        sharded = self.is_sharded
        state = self.collection.state_dict()
        for f in range(len(self.cardinalities)):
            value = state[f"embedding_bags.{table_name(f)}.weight"]
            if hasattr(value, "local_shards"):  # ShardedTensor: this process's blocks
                for shard in value.local_shards():
                    row, col = shard.metadata.shard_offsets
                    yield f, int(row), int(col), shard.tensor
            elif hasattr(value, "to_local"):  # DTensor
                raise NotImplementedError("TorchRecTables.local_parts: DTensor state is not handled")
            elif not sharded or rank == 0:
                yield f, 0, 0, value

    def parameters_bytes(self) -> int:
        """Bytes of table weights this process holds."""
        return sum(block.numel() * block.element_size() for *_, block in self.local_parts())


def collapse_parts(tables: TorchRecTables, projection_of, dim: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``rows`` (concatenated-table row numbers; None: all) of the collapsed table, ``[R, dim]``.

    Each process multiplies its own blocks by their slice of the field's projection
    (``block @ B_f[cols]``; ``projection_of(f)`` None: the block is the table itself) and the
    partial rows are summed across processes: only collapsed (deployed-width) rows cross processes,
    never the ``k``-wide shards, and no process builds the full ``k``-wide table. A collective when
    the tables are sharded: every process must call it."""
    import torch.distributed as dist

    offsets = [0]
    for n in tables.cardinalities:
        offsets.append(offsets[-1] + n)
    rows = torch.arange(offsets[-1]) if rows is None else rows.detach().long().cpu()
    out = torch.zeros(rows.numel(), dim)
    with torch.no_grad():
        for f, row, col, block in tables.local_parts():
            start = offsets[f] + row
            inside = (rows >= start) & (rows < start + block.shape[0])
            if not bool(inside.any()):
                continue
            values = block.detach().float().cpu()[rows[inside] - start]
            proj = projection_of(f)
            if proj is None:
                out[inside, col : col + values.shape[1]] += values
            else:
                out[inside] += values @ proj[col : col + values.shape[1]].detach().float().cpu()
        if tables.is_sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else out.device
            reduced = out.to(device)
            dist.all_reduce(reduced)
            out = reduced.cpu()
    return out
