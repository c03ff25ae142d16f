"""Frequency-bucket metrics against a direct computation; spectra of hand-built tables."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlet.analysis import bucket_labels, bucket_metrics, effective_rank, row_frequencies, spectrum
from mlet.callbacks import EmbeddingSpectrum, FrequencyBuckets
from mlet.data.arrays import CTRArrays, Split
from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding


def _direct_auc(scores, labels):
    """Pairwise Mann-Whitney, O(n^2): ties count one half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _direct_logloss(logits, labels):
    p = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_bucket_labels():
    assert bucket_labels([0, 10, 100, 1000]) == ["0", "1-10", "11-100", "101-1000", ">1000"]
    assert bucket_labels([5, 50]) == ["0-5", "6-50", ">50"]
    with pytest.raises(ValueError):
        bucket_labels([10, 10])


def test_row_frequencies_rarest_and_chosen_field():
    counts = [np.array([5, 0, 2000]), np.array([30, 1])]
    cat = np.array([[0, 0], [2, 1], [1, 0], [2, 0]])
    assert list(row_frequencies(cat, counts)) == [5, 1, 0, 30]
    assert list(row_frequencies(cat, counts, field=0)) == [5, 2000, 0, 2000]


def test_bucket_metrics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    cards = [40, 400, 7]
    train = np.stack([rng.zipf(1.3, 5000) % n for n in cards], axis=1)
    counts = [np.bincount(train[:, f], minlength=n) for f, n in enumerate(cards)]
    n = 3000
    cat = np.stack([rng.integers(0, c, n) for c in cards], axis=1)
    logits = rng.normal(size=n).round(1)  # rounded: ties inside buckets
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    edges = [0, 10, 100, 1000]
    for field in (None, 1):
        got = bucket_metrics(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), cat, counts, edges, field)
        assert [b["bucket"] for b in got] == bucket_labels(edges)
        # direct: each row's count, by explicit loops
        freq = []
        for r in range(n):
            per = [counts[f][cat[r, f]] for f in range(len(cards))]
            freq.append(min(per) if field is None else per[field])
        bounds = [(0, 0), (1, 10), (11, 100), (101, 1000), (1001, math.inf)]
        assert sum(b["rows"] for b in got) == n
        for b, (lo, hi) in zip(got, bounds):
            rows = [r for r in range(n) if lo <= freq[r] <= hi]
            assert b["rows"] == len(rows)
            assert b["positives"] == int(sum(labels[r] for r in rows))
            if not rows:
                assert b["auc"] is None and b["logloss"] is None
                continue
            lg = np.float32(logits[rows])
            want_auc = _direct_auc(list(lg), [labels[r] for r in rows])
            assert (b["auc"] is None) == (want_auc is None)
            if want_auc is not None:
                assert b["auc"] == pytest.approx(want_auc, abs=1e-12)
            assert b["logloss"] == pytest.approx(_direct_logloss(lg, labels[rows]), rel=1e-6)
        assert sum(b["rows"] > 0 for b in got) >= 3  # the data exercise several buckets


def _table(singular_values, n, seed):
    """An n x d table with the given singular values (random orthonormal factors)."""
    g = torch.Generator().manual_seed(seed)
    d = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def _erank(s):
    p = np.asarray(s, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank_definition():
    assert effective_rank([1, 1, 1, 1]) == pytest.approx(4.0)
    assert effective_rank([3, 0, 0]) == pytest.approx(1.0)
    assert effective_rank([0, 0]) == 0.0
    assert effective_rank([3.0, 2.0, 1.0, 0.5]) == pytest.approx(_erank([3.0, 2.0, 1.0, 0.5]))


def test_spectrum_of_a_known_table():
    s = [3.0, 2.0, 1.0, 0.5]
    out = spectrum(_table(s, 50, 0).float())
    assert out["rows"] == 50 and out["dim"] == 4
    assert out["singular_values"] == pytest.approx(s, rel=1e-5)
    assert out["effective_rank"] == pytest.approx(_erank(s), rel=1e-5)
    # chunked Gram accumulation gives the same
    from mlet.analysis import gram

    t = _table(s, 50, 0)
    assert torch.allclose(gram(t, chunk_rows=7), t.T @ t)


def test_spectrum_callback_single_and_mlet_hand_built():
    field0 = _table([3.0, 2.0, 1.0, 0.5], 10, 1)
    field1 = _table([2.0, 0.0, 0.0, 0.0], 6, 2)  # rank one
    weight = torch.cat([field0, field1]).float()
    single = SingleLayerEmbedding.from_weight([10, 6], weight)
    cb = EmbeddingSpectrum()
    fields = cb.compute(single, ["user", "item"])
    assert [f["field"] for f in fields] == ["user", "item"]
    assert fields[0]["singular_values"] == pytest.approx([3.0, 2.0, 1.0, 0.5], rel=1e-5)
    assert fields[1]["singular_values"] == pytest.approx([2.0, 0, 0, 0], abs=1e-3)
    assert fields[0]["effective_rank"] == pytest.approx(_erank([3.0, 2.0, 1.0, 0.5]), rel=1e-5)
    assert fields[1]["effective_rank"] == pytest.approx(1.0, abs=1e-3)

    # MLET whose product A_f B_f equals the same tables: A_f = [W_f, 0] (n x k), B_f = [I; 0] (k x d)
    k = 8
    mlet = MLETEmbedding([10, 6], dim=4, inner_dim=k)
    with torch.no_grad():
        mlet.inner.weight.zero_()
        mlet.inner.weight[:, :4] = weight
        mlet.projection.zero_()
        mlet.projection[:, :4, :] = torch.eye(4)
    got = cb.compute(mlet)
    assert [f["field"] for f in got] == ["0", "1"]
    for a, b in zip(got, fields):
        assert a["singular_values"] == pytest.approx(b["singular_values"], rel=1e-5, abs=1e-4)

    # the hooks record the result (no trainer data module: field numbers as names)
    trainer = SimpleNamespace(datamodule=None, loggers=[])
    cb.on_train_end(trainer, SimpleNamespace(embedding=single))
    items = cb.record_items()
    assert items["spectrum_source"] == "last"
    assert items["effective_rank_mean"] == pytest.approx((_erank([3.0, 2.0, 1.0, 0.5]) + 1.0) / 2, rel=1e-3)


def test_frequency_buckets_callback_reads_test_split_and_counts():
    cards = [3, 2]
    train = Split(np.zeros((4, 0), np.float32), np.array([[0, 0], [0, 1], [1, 0], [0, 0]]), np.zeros(4, np.float32))
    test = Split(np.zeros((4, 0), np.float32), np.array([[0, 0], [1, 1], [2, 0], [0, 1]]),
                 np.array([1, 0, 1, 0], np.float32))
    arrays = CTRArrays("t", [], ["a", "b"], cards, {"train": train, "test": test},
                       counts=[np.bincount(train.cat[:, f], minlength=n) for f, n in enumerate(cards)])
    module = SimpleNamespace(results={"test": {"logits": torch.tensor([2.0, -1.0, 0.5, 1.0]),
                                               "labels": torch.tensor([1.0, 0.0, 1.0, 0.0])}})
    trainer = SimpleNamespace(datamodule=SimpleNamespace(arrays=arrays))
    cb = FrequencyBuckets(edges=[0, 1, 2], field="a")  # counts of a: [3, 1, 0]
    cb.on_test_end(trainer, module)
    items = cb.record_items()
    assert items["bucket_field"] == "a"
    assert [(b["bucket"], b["rows"]) for b in items["buckets"]] == [("0", 1), ("1", 1), ("2", 0), (">2", 2)]
    assert items["buckets"][3]["auc"] == 1.0  # rows 0 and 3: logits 2.0 (pos) > 1.0 (neg)
    cb = FrequencyBuckets(edges=[0, 1, 2])  # rarest field: min over a, b -> [3, 1, 0, 1]
    cb.on_test_end(trainer, module)
    assert [b["rows"] for b in cb.record_items()["buckets"]] == [1, 2, 0, 1]
    with pytest.raises(ValueError, match="not a field"):
        FrequencyBuckets(field="zzz").on_test_end(trainer, module)
