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

from mlet.data.arrays import CTRArrays, Split


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
            torch.from_numpy(np.asarray(dense, dtype=np.float32)),
            torch.from_numpy(np.asarray(cat, dtype=np.int64)),
            torch.from_numpy(np.asarray(label, dtype=np.float32)),
        )


class BatchKeys(Sampler):
    """Yields one key per batch: slices in order, or (``shuffle``) sorted index arrays of a fresh
    permutation per epoch. Lightning calls ``set_epoch`` before each training epoch, so the order
    is a function of (seed, epoch) and a resumed run sees the same batches."""

    def __init__(self, rows: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.rows = int(rows)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, batches) to skip once, when resuming

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        first = 0
        if self.skip is not None:
            if self.skip[0] == self.epoch:
                first = self.skip[1]
            self.skip = None
        starts = range(first * self.batch_size, self.rows, self.batch_size)
        if not self.shuffle:
            for lo in starts:
                yield slice(lo, min(lo + self.batch_size, self.rows))
            return
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.rows)
        for lo in starts:
            yield np.sort(order[lo : lo + self.batch_size])  # sorted: sequential reads from a memory map


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

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        split = self.arrays.splits[name]
        return (ResumableLoader if shuffle else DataLoader)(
            SplitBatches(split),
            sampler=BatchKeys(len(split), batch_size, shuffle=shuffle, seed=self.seed),
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
