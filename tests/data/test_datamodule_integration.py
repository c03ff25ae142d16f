"""A prepared source feeds the DataModule exactly as ``mlet-train`` uses it: prepare(), then load()."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from tests.helpers.rawdata import write_movielens

from mlet.data.movielens import MovieLens100K


def test_prepared_source_feeds_the_datamodule(tmp_path):
    folder = write_movielens(tmp_path / "ml", n_ratings=300)
    source = MovieLens100K(folder, cache_dir=tmp_path / "cache", progress=False)
    dm = instantiate({"_target_": "mlet.data.CTRDataModule", "batch_size": 64, "eval_batch_size": 1000},
                     source=source)
    dm.prepare_data()
    assert source.built
    dm.setup()
    assert dm.num_fields == 8 and dm.num_dense == 0 and dm.cardinalities == list(source.load().cardinalities)
    dense, cat, label = next(iter(dm.train_dataloader()))
    assert dense.shape == (64, 0) and cat.shape == (64, 8) and label.shape == (64,)
    assert cat.dtype == torch.int64 and label.dtype == torch.float32
    assert (cat >= 0).all() and (cat < torch.tensor(dm.cardinalities)).all()
    batches = list(dm.test_dataloader())
    assert sum(len(b[2]) for b in batches) == 30
    assert isinstance(dm.arrays.splits["train"].cat, np.memmap)  # served from the memory-mapped cache
    # a second run reuses the cache
    again = MovieLens100K(folder, cache_dir=tmp_path / "cache", progress=False)
    again.prepare()
    assert not again.built
