"""LightningDataModule serving whole batches cut from :class:`CTRArrays` (no per-sample Python).

A batch is the tuple ``(dense[B, D] float32, cat[B, F] int64, label[B] float32)``. Each batch is
one vectorised gather (training, shuffled per epoch) or one slice (evaluation) of the split's
arrays, which may be memory maps: a dataset larger than RAM trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from mlet.data.arrays import CTRArrays, Split


def _tensor(array: np.ndarray, dtype) -> torch.Tensor:
    """A tensor owning its memory: a slice of a read-only memory map is copied (once), a fresh
    gather or conversion is taken as it is."""
    out = np.asarray(array, dtype=dtype)
    return torch.from_numpy(out if out.flags.writeable else out.copy())


class SplitBatches(Dataset):
    """Item ``key`` is one whole batch: ``key`` is a ``slice`` (evaluation) or an index array."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: slice | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(key, slice):
            dense, cat, label = self.split.dense[key], self.split.cat[key], self.split.label[key]
        else:
            part = self.split.take(key)
            dense, cat, label = part.dense, part.cat, part.label
        return (
            _tensor(dense, np.float32),
            _tensor(cat, np.int64),
            _tensor(label, np.float32),
        )


class BatchKeys(DistributedSampler):
    """Yields one key per batch: slices in order, or (``shuffle``) sorted index arrays of a fresh
    permutation per epoch. Lightning calls ``set_epoch`` before each training epoch, so the order
    is a function of (seed, epoch) and a resumed run sees the same batches.

    With ``num_replicas`` processes (DDP), process ``rank`` gets its share:

    * evaluation (no shuffle): the contiguous row block ``[rows*rank//R, rows*(rank+1)//R)`` in
      slices, so the processes' outputs concatenated in rank order are the split in order, every
      row exactly once. Blocks can differ by one batch; the shorter ones end with empty slices, so
      every process runs the same number of steps (DDP's forward is a collective).
    * training (shuffle): batches ``rank, rank + R, ...`` of the epoch's permutation, the list
      wrapped round to a multiple of R so every process takes the same number of steps.

    It is a ``DistributedSampler`` only so that Lightning leaves it alone: Lightning wraps any other
    sampler in its own distributed wrapper, which repeats batches to even out the processes (rows
    counted twice in the metrics) and never forwards ``set_epoch`` (the same permutation every epoch).
    """

    def __init__(
        self, rows: int, batch_size: int, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        Sampler.__init__(self)  # DistributedSampler.__init__ wants a dataset and a process group
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"BatchKeys: rank {rank} out of {num_replicas} processes")
        self.rows = int(rows)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, batches) to skip once, when resuming
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_batches(self) -> int:
        """Batches of the whole split (all processes together, before any padding)."""
        return -(-self.rows // self.batch_size)

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.num_batches // self.num_replicas)
        largest_block = -(-self.rows // self.num_replicas)
        return -(-largest_block // self.batch_size)

    def __iter__(self):
        first = 0  # batches of this epoch already trained on (a resumed run skips them)
        if self.skip is not None:
            if self.skip[0] == self.epoch:
                first = self.skip[1]
            self.skip = None
        if not self.shuffle:
            lo = self.rows * self.rank // self.num_replicas
            hi = self.rows * (self.rank + 1) // self.num_replicas
            starts = range(lo, hi, self.batch_size)
            for start in starts:
                yield slice(start, min(start + self.batch_size, hi))
            for _ in range(len(self) - len(starts)):
                yield slice(hi, hi)  # empty: keeps the processes in step
            return
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.rows)
        for i in range(first, len(self)):
            b = (i * self.num_replicas + self.rank) % self.num_batches
            # sorted: sequential reads from a memory map
            yield np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (``state_dict``/``load_state_dict``), so a run
    resumed from a mid-epoch checkpoint continues with the very batches it had not trained on.

    The state is the epoch and the number of batches handed out in it: Lightning saves it in
    ``on_train_batch_end``, before its fetcher asks for the next batch (checked by
    ``tests/test_resume.py``, which compares the resumed batches with an uninterrupted run's)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._handed_out = 0

    def __iter__(self):
        skip = self.sampler.skip
        self._handed_out = skip[1] if skip is not None and skip[0] == self.sampler.epoch else 0
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.skip = (int(state["epoch"]), int(state["batches"]))


class CTRDataModule(pl.LightningDataModule):
    """Args:
    source: anything with ``load() -> CTRArrays`` (a dataset config instantiates it).
    batch_size: training batch size.
    eval_batch_size: validation/test batch size (larger is faster, results identical).
    num_workers: DataLoader worker processes (0 keeps batches in the main process).
    seed: seed of the per-epoch shuffling.
    """

    def __init__(
        self,
        source: Any,
        batch_size: int = 1024,
        eval_batch_size: int = 16384,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("data batch sizes must be positive")
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.arrays: CTRArrays | None = None

    def prepare_data(self) -> None:
        # Build the cache (if the source has one) once, before any process reads it.
        prepare = getattr(self.source, "prepare", None)
        if callable(prepare):
            prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is None:
            self.arrays = self.source.load()

    # -- schema, for building the embedding and the model ------------------------------------
    @property
    def cardinalities(self) -> list[int]:
        self.setup()
        return list(self.arrays.cardinalities)

    @property
    def num_dense(self) -> int:
        self.setup()
        return self.arrays.num_dense

    @property
    def num_fields(self) -> int:
        self.setup()
        return self.arrays.num_fields

    def _replicas(self) -> tuple[int, int]:
        """(processes, this process's rank): from the Trainer when attached, else torch.distributed."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        split = self.arrays.splits[name]
        replicas, rank = self._replicas()
        return (ResumableLoader if shuffle else DataLoader)(
            SplitBatches(split),
            sampler=BatchKeys(len(split), batch_size, shuffle=shuffle, seed=self.seed, num_replicas=replicas, rank=rank),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
