"""Training with the TorchRec backend (``embedding.backend=torchrec``): sharded tables, FBGEMM's fused
table optimiser, and a small Lightning strategy around them.

Why a Lightning strategy (and not Fabric or a plain loop): Lightning has no TorchRec strategy, but
everything mlet's training is built on (the loop, exact global evaluation on the collapsed model,
early stopping, the checkpoint callbacks and resume, the progress lines, the run record) lives in
Lightning callbacks and hooks. A plain or Fabric loop would have to re-implement all of it for one
backend and keep two loops equal. The difference to DDP is small and local, so
:class:`TorchRecStrategy` subclasses Lightning's ``DDPStrategy`` and changes only that:

* wrapping: ``DistributedModelParallel`` (DMP) instead of ``DistributedDataParallel``. DMP lets
  TorchRec's planner shard every :class:`mlet.embeddings.torchrec.TorchRecTables` collection across
  the processes (with ``embedding.sharding`` as the constraint of every table), replaces each by its
  sharded form in place, and wraps everything else (MLET's ``B_f``, the model) in DDP. The sharded
  tables start from exactly the weights the embedding drew (copied into each process's shards);
* the table optimiser: FBGEMM's, fused into backward (``fused_params`` from the ``optimizer=`` group,
  :func:`mlet.optim.fused_table_optimizer`); Lightning's optimiser gets only the dense parameters.
  Where FBGEMM has no fused kernel for it (Adam on a CPU) the planner's placement is kept with
  TorchRec's dense kernel, and the group's own table optimiser steps the shards
  (:func:`table_parameters`);
* checkpoints: a directory written with ``torch.distributed.checkpoint`` by every process (its own
  shards of the tables and of the fused optimiser state) plus ``meta.ckpt`` (rank 0: the dense
  weights and optimiser, loops, callbacks), loaded back after sharding, so resume works on the same
  or another number of processes;
* the plan, saved as ``sharding_plan.txt`` in the run folder and logged.

The sharding function :func:`shard` is plain TorchRec and is also what the equality tests call.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from mlet.embeddings.torchrec import TorchRecTables, require_torchrec
from mlet.optim import fused_table_optimizer

log = logging.getLogger("mlet.train")

PLAN_FILE = "sharding_plan.txt"
META_FILE = "meta.ckpt"


def torchrec_tables(module: nn.Module) -> dict[str, TorchRecTables]:
    return {name: m for name, m in module.named_modules() if isinstance(m, TorchRecTables)}


def _constraints(tables: dict[str, TorchRecTables], device_type: str, world: int) -> dict[str, Any]:
    """Every table's allowed sharding types and kernel. ``column_wise`` splits a table's columns
    into ``world`` blocks (TorchRec's own block is 128 columns, which leaves a k <= 128 table whole)."""
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.planner import ParameterConstraints
    from torchrec.distributed.types import ShardingType

    from mlet.embeddings.torchrec import BackendError

    # table_column_wise is left out of auto: with it (2 CPU processes, torchrec 1.8.0) evaluation and
    # the collapse of the saved weights disagreed, before the output-order fix of TorchRecTables.forward
    # (probably that bug; not measured again)
    sharded = [ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value]
    if device_type == "cuda":
        sharded += [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
    out = {}
    for t in tables.values():
        for key, sharding in t.shardings.items():
            if sharding == "row_wise" and device_type != "cuda":
                raise BackendError("embedding.sharding=row_wise needs GPUs (TorchRec shards rows on CUDA only): "
                                   "use table_wise, column_wise or auto on a CPU")
            if sharding == "data_parallel":  # replicated, dense kernel: the table optimiser in torch (table_parameters)
                kinds, kernels = [ShardingType.DATA_PARALLEL.value], [EmbeddingComputeKernel.DENSE.value]
            else:
                kinds = sharded if sharding == "auto" else [sharding]
                kernels = [EmbeddingComputeKernel.FUSED.value]
            extra = {}
            if sharding == "column_wise":
                block = -(-t.width // world)
                extra["min_partition"] = max(4, -(-block // 4) * 4)  # FBGEMM: a multiple of 4
            out[key] = ParameterConstraints(sharding_types=kinds, compute_kernels=kernels, **extra)
    return out


def shard(module: nn.Module, optimizer: Any, device: torch.device) -> Any:
    """Shard every TorchRec collection inside ``module`` across the default process group.

    Returns the ``DistributedModelParallel`` around ``module`` (whose collections are replaced in
    place by their sharded forms, the tables holding the weights they had). ``optimizer`` is the
    ``SparseAwareOptimizer`` of ``conf/optimizer``: its table optimiser becomes the fused one."""
    require_torchrec()
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.comm import get_local_size
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    tables = torchrec_tables(module)
    # the unsharded weights, kept (not copied) until each process has copied its blocks of them: DMP
    # replaces the collections, it does not write into their weights
    initial = {name: {key: t.collection.embedding_bags[key].weight.detach() for key in t.keys}
               for name, t in tables.items()}
    fused_params = fused_table_optimizer(optimizer, device.type)
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params)
    world = dist.get_world_size()
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type, local_world_size=get_local_size(world)),
        constraints=_constraints(tables, device.type, world),
    )
    plan = planner.collective_plan(module, [sharder], dist.GroupMember.WORLD)
    if fused_params is None:  # no fused kernel for this optimiser here: the planner's placement, dense kernel
        sharder = _DenseKernelSharder()
        for module_plan in plan.plan.values():
            for sharding in module_plan.values():
                if sharding.compute_kernel == "fused":
                    sharding.compute_kernel = "dense"
    dmp = DistributedModelParallel(module, plan=plan, sharders=[sharder], device=device)
    for name, t in tables.items():  # the sharded tables start from the embedding's own weights
        load_full_tables(t, initial[name])
    return dmp


def table_parameters(module: nn.Module, optimizer: Any, device_type: str) -> tuple[set[int], list[torch.Tensor]]:
    """After :func:`shard`: (the ids of every table parameter, which the ordinary optimiser leaves
    out; the tensors the ``optimizer=`` group's table optimiser steps, with dense gradients that
    ``SparseAwareOptimizer.build(..., sparsify=True)`` turns into their non-zero rows).

    Sharded tables: FBGEMM's fused optimiser owns them (none of them here), or, with no fused kernel
    for the table optimiser on this device, TorchRec's dense kernel runs them and they are stepped
    here. Replicated (``data_parallel``) tables: always stepped here (DDP averages their gradients
    first), so every table has the same optimiser as under the native backend. The tensors are
    ``n x w`` views of each table (:func:`_row_view`)."""
    tables = list(torchrec_tables(module).values())
    split = [p for t in tables for p in t.model_parallel_parameters()]
    split_ids = {id(p) for p in split}
    replicated = [p for t in tables for p in t.parameters() if id(p) not in split_ids]
    stepped = replicated if fused_table_optimizer(optimizer, device_type) is not None else [*replicated, *split]
    return split_ids | {id(p) for p in replicated}, [_row_view(p) for p in stepped if p.numel()]


def _row_view(table: torch.Tensor) -> nn.Parameter:
    """A leaf ``n x w`` parameter sharing the storage of one table of a dense kernel, which the
    table optimiser can step with row-sparse gradients. TorchRec lists the table as a view of the
    kernel's flat weights (``TableBatchedEmbeddingSlice``), whose ``grad`` reads the flat gradient
    and which cannot hold a sparse one; that view is the new parameter's ``grad_source``."""
    flat = getattr(table, "_original_tensor", None)
    if flat is None:
        view = nn.Parameter(table.detach())
    else:
        view = nn.Parameter(flat.detach()[table._start_offset : table._end_offset].view(table.shape))
    view.grad_source = table
    return view


def _DenseKernelSharder():
    """TorchRec's ``EmbeddingBagCollectionSharder`` that also offers the dense kernel to sharded
    (table-, column-wise) tables: torchrec 1.8.0 offers it to data-parallel tables only, though its
    sharded lookups run it (``BatchedDenseEmbeddingBag``). For a table optimiser FBGEMM cannot fuse
    on this device (Adam on a CPU)."""
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class DenseKernelSharder(EmbeddingBagCollectionSharder):
        def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
            return [*super().compute_kernels(sharding_type, compute_device_type), EmbeddingComputeKernel.DENSE.value]

    return DenseKernelSharder()


@torch.no_grad()
def load_full_tables(tables: TorchRecTables, full: dict[str, torch.Tensor]) -> None:
    """Copy whole tables (``key -> n_f x width``) into this process's blocks of them."""
    state = tables.collection.state_dict()
    for key, weight in full.items():
        value = state[f"embedding_bags.{key}.weight"]
        if hasattr(value, "local_shards"):
            for s in value.local_shards():
                (r, c), (nr, nc) = s.metadata.shard_offsets, s.metadata.shard_sizes
                s.tensor.copy_(weight[r : r + nr, c : c + nc])
        else:
            value.copy_(weight)


def _is_sharded(value: Any) -> bool:
    return hasattr(value, "local_shards") or hasattr(value, "to_local")


class TorchRecStrategy(DDPStrategy):
    """``DDPStrategy`` with TorchRec's ``DistributedModelParallel`` as the wrapper (module docstring).

    ``trainer.strategy=torchrec`` is not needed: ``mlet-train`` chooses it when
    ``embedding.backend=torchrec`` (also for one process: a one-process group, the same kernels)."""

    strategy_name = "torchrec"

    def __init__(self, plan_dir: str | Path | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("process_group_backend", None)
        super().__init__(**kwargs)
        self.plan_dir = Path(plan_dir) if plan_dir is not None else None
        self._dmp = None
        self._fused_state: dict[str, Any] | None = None

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # the sharded tables exist only after setup

    @property
    def fused_optimizer(self):
        return self._dmp.fused_optimizer if self._dmp is not None else None

    def _sharded(self) -> Any:
        if self._dmp is None:
            module = self.lightning_module
            self._dmp = shard(module, module.optimizer_factory, self.root_device)
            module.table_parameter_ids, module.stepped_tables = table_parameters(
                module, module.optimizer_factory, self.root_device.type)
            plan = str(self._dmp.plan)
            log.info("TorchRec sharding plan:\n%s", plan)
            if self.plan_dir is not None and self.global_rank == 0:
                self.plan_dir.mkdir(parents=True, exist_ok=True)
                (self.plan_dir / PLAN_FILE).write_text(plan + "\n")
        return self._dmp

    def setup(self, trainer) -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        if self._dmp is None:
            self.model_to_device()
        self.model = self._sharded()  # evaluation, too, runs through the sharded tables
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def teardown(self) -> None:
        self.model = self.lightning_module  # DDPStrategy only unwraps DistributedDataParallel
        super().teardown()

    # ---- checkpoints through torch.distributed.checkpoint ------------------------------------
    def _sharded_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return {
            "state_dict": {k: v for k, v in state_dict.items() if _is_sharded(v)},
            "fused_optimizer": self.fused_optimizer.state_dict() if self.fused_optimizer is not None else {},
        }

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        import torch.distributed.checkpoint as dcp

        path = Path(filepath)
        sharded = self._sharded_state(checkpoint["state_dict"])
        rest = {**checkpoint, "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if not _is_sharded(v)}}
        if self.global_rank == 0 and path.is_file():
            path.unlink()
        self.barrier("torchrec_save")
        dcp.save(sharded, checkpoint_id=path)
        # this process's dense optimiser states: the same on every process for replicated parameters;
        # its own for sharded tables stepped in torch (Adam on a CPU: TorchRec's dense kernel)
        torch.save(checkpoint.get("optimizer_states", []), path / f"optimizer_rank{self.global_rank}.pt")
        if self.global_rank == 0:
            torch.save(rest, path / META_FILE)
        self.barrier("torchrec_saved")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        import torch.distributed.checkpoint as dcp

        path = Path(checkpoint_path)
        checkpoint = torch.load(path / META_FILE, map_location="cpu", weights_only=False)
        own = path / f"optimizer_rank{self.global_rank}.pt"
        if own.is_file():
            checkpoint["optimizer_states"] = torch.load(own, map_location="cpu", weights_only=False)
        template = self._sharded_state(self.lightning_module.state_dict())
        # partial: a fused optimiser without state (SGD) writes no entry for it
        dcp.load(template, checkpoint_id=path, planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
        for name, t in torchrec_tables(self.lightning_module).items():  # copy into the live shards
            prefix = f"{name}.collection.embedding_bags."
            load_shards(t, {k[len(prefix):].removesuffix(".weight"): v for k, v in template["state_dict"].items()
                            if k.startswith(prefix)})
        self._fused_state = template["fused_optimizer"]
        return checkpoint

    def load_model_state_dict(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        result = self.lightning_module.load_state_dict(checkpoint["state_dict"], strict=False)
        missing = [k for k in result.missing_keys if "collection.embedding_bags" not in k]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict: missing {missing}, unexpected {result.unexpected_keys}")

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        super().load_optimizer_state_dict(checkpoint)
        if self._fused_state and self.fused_optimizer is not None:
            self.fused_optimizer.load_state_dict(self._fused_state)

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@torch.no_grad()
def load_shards(tables: TorchRecTables, loaded: dict[str, Any]) -> None:
    """Copy loaded sharded tensors (``key -> ShardedTensor`` of the same layout) into the tables."""
    state = tables.collection.state_dict()
    for key, value in loaded.items():
        live = state[f"embedding_bags.{key}.weight"]
        for dst, src in zip(live.local_shards(), value.local_shards()):
            if dst.tensor.data_ptr() != src.tensor.data_ptr():
                dst.tensor.copy_(src.tensor)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A checkpoint :class:`TorchRecStrategy` wrote: a directory with ``meta.ckpt``."""
    return (Path(path) / META_FILE).is_file()


def native_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a sharded checkpoint as the native backend names them, read in one process
    (no process group, no torchrec needed): each field's table ``<emb>.collection.embedding_bags.
    field_<f>.weight``, whatever its sharding (a replicated one is in ``meta.ckpt``), is read whole and
    the fields are concatenated into
    ``<emb>.weight``. What ``mlet-export`` loads into a native network: the same collapsed program."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    state = dict(torch.load(path / META_FILE, map_location="cpu", weights_only=False)["state_dict"])
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    tables = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith("state_dict.") and ".collection.embedding_bags." in key:
            tables[key.removeprefix("state_dict.")] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    dcp.load({"state_dict": tables}, checkpoint_id=path, no_dist=True)
    for key in [k for k in state if ".collection.embedding_bags." in k]:  # replicated tables: in meta.ckpt
        tables[key] = state.pop(key)
    grouped: dict[str, dict[int, torch.Tensor]] = {}
    for key, weight in tables.items():
        owner, _, table = key.partition(".collection.embedding_bags.")
        grouped.setdefault(owner, {})[int(table.removesuffix(".weight").rsplit("_", 1)[1])] = weight
    for owner, fields in grouped.items():
        state[f"{owner}.weight"] = torch.cat([fields[f] for f in sorted(fields)])
    return state
