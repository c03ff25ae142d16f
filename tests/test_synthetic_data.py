import numpy as np
import pytest
import torch

from mlet.data import CTRArrays, CTRDataModule, SyntheticCTR


def small(**kw):
    return SyntheticCTR(rows=5000, num_fields=4, num_dense=2, max_cardinality=400, **kw)


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = small(seed=1).load(), small(seed=1).load(), small(seed=2).load()
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[name].cat, b.splits[name].cat)
        np.testing.assert_array_equal(a.splits[name].label, b.splits[name].label)
    assert not np.array_equal(a.splits["train"].label, c.splits["train"].label)


def test_schema_splits_and_skew():
    data = SyntheticCTR(rows=20000, num_fields=3, max_cardinality=5000, zipf_exponent=1.2).load()
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [16000, 2000, 2000]
    assert data.cardinalities == [4, 141, 5000]
    for split in data.splits.values():
        assert split.cat.min() >= 0
        assert (split.cat.max(axis=0) < np.array(data.cardinalities)).all()
        assert set(np.unique(split.label)) <= {0.0, 1.0}
    assert 0.2 < data.splits["train"].label.mean() < 0.3
    counts = data.counts[-1]
    assert counts.sum() == 16000
    # Zipf: most categories are rare, a few carry most of the traffic
    seen = counts[counts > 0]
    assert np.median(seen) <= 3
    assert np.sort(counts)[::-1][:50].sum() > 0.4 * counts.sum()


def test_labels_depend_on_categories():
    # the teacher's signal is learnable: per-category CTR of a mid-size field varies far beyond noise
    data = SyntheticCTR(rows=40000, num_fields=4, max_cardinality=50, signal_std=2.0).load()
    train = data.splits["train"]
    f = 3
    n = np.bincount(train.cat[:, f], minlength=data.cardinalities[f])
    ctr = np.bincount(train.cat[:, f], weights=train.label, minlength=data.cardinalities[f]) / n
    p = train.label.mean()
    binomial_noise = np.sqrt(np.mean(p * (1 - p) / n))
    assert ctr.std() > 2 * binomial_noise


def test_save_load_roundtrip_memory_mapped(tmp_path):
    data = small().load()
    data.save(tmp_path / "ds")
    loaded = CTRArrays.load(tmp_path / "ds")
    assert isinstance(loaded.splits["train"].cat, np.memmap)
    assert loaded.cardinalities == data.cardinalities
    np.testing.assert_array_equal(loaded.splits["test"].dense, data.splits["test"].dense)
    for a, b in zip(loaded.counts, data.counts):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        CTRArrays.load(tmp_path / "missing")


def test_datamodule_batches_cover_each_split_once():
    dm = CTRDataModule(small(), batch_size=300, eval_batch_size=1000, seed=3)
    dm.setup()
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == len(train) == -(-4000 // 300)
    dense, cat, label = batches[0]
    assert dense.dtype == torch.float32 and cat.dtype == torch.int64 and label.dtype == torch.float32
    assert cat.shape == (300, 4) and dense.shape == (300, 2)
    # every training row exactly once per epoch: compare multisets of rows
    rows = torch.cat([torch.cat([b[1].double(), b[0].double(), b[2][:, None].double()], 1) for b in batches])
    split = dm.arrays.splits["train"]
    ref = torch.from_numpy(np.concatenate([split.cat, split.dense, split.label[:, None]], 1).astype(np.float64))
    assert torch.equal(torch.unique(rows, dim=0), torch.unique(ref, dim=0))
    assert len(rows) == len(ref)
    # evaluation batches are contiguous slices in order
    val = torch.cat([b[2] for b in dm.val_dataloader()])
    assert torch.equal(val, torch.from_numpy(dm.arrays.splits["val"].label))


def test_shuffle_changes_with_epoch_and_repeats_with_seed():
    dm = CTRDataModule(small(), batch_size=500, seed=0)
    dm.setup()
    loader = dm.train_dataloader()
    first = next(iter(loader))[1]
    loader.sampler.set_epoch(1)
    second = next(iter(loader))[1]
    loader.sampler.set_epoch(0)
    again = next(iter(loader))[1]
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
