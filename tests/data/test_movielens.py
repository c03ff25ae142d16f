"""MovieLens-100K: typed headers, the user/item join, label rating >= 4, random 8:1:1; and the
real dataset from the recbole wheel when the package index is reachable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tests.helpers.rawdata import movielens_reference, random_split_names, write_movielens

from mlet.data.movielens import FIELDS, DownloadError, MovieLens100K, fetch_ml100k
from mlet.data.pipeline import BadLineError


def movielens(folder, cache, **kw):
    return MovieLens100K(folder, cache_dir=cache, progress=False, **kw)


def check_encoding(arrays, labels, values, names, min_count=1):
    """The encoding up to the order of equally frequent categories (long tokens are hashed, so
    their tie order is not reproduced here): a bijection value <-> index >= 1 for values seen at
    least ``min_count`` times in training, index 0 for the rest, counts by decreasing frequency."""
    split_rows = {s: [i for i, n in enumerate(names) if n == s] for s in ("train", "val", "test")}
    for s, rows in split_rows.items():
        assert len(arrays.splits[s]) == len(rows)
        np.testing.assert_array_equal(arrays.splits[s].label, [labels[i] for i in rows])
    for f in range(len(FIELDS)):
        train_counts = Counter(values[i][f] for i in split_rows["train"])
        kept = {v for v, c in train_counts.items() if c >= min_count}
        assert arrays.cardinalities[f] == len(kept) + 1
        seen: dict[int, str] = {}
        for s, rows in split_rows.items():
            idx = np.asarray(arrays.splits[s].cat[:, f])
            for i, row in zip(idx, rows):
                v = values[row][f]
                if v in kept:
                    assert i >= 1 and seen.setdefault(int(i), v) == v, (FIELDS[f], v, i)
                else:
                    assert i == 0, (FIELDS[f], v)
        counts = np.asarray(arrays.counts[f])
        assert counts[0] == sum(c for v, c in train_counts.items() if v not in kept)
        assert all(counts[i] == train_counts[v] for i, v in seen.items())
        assert (np.diff(counts[1:]) <= 0).all()


@pytest.mark.parametrize("genre", ["combination", "first"])
def test_matches_reference(tmp_path, genre):
    folder = write_movielens(tmp_path / "ml", n_ratings=500, seed=1)
    arrays = movielens(folder, tmp_path / "cache", genre=genre).load()
    ref = movielens_reference(folder, genre)
    labels = [r[0] for r in ref]
    names = random_split_names(len(ref))
    assert {s: len(arrays.splits[s]) for s in names} == {"train": 400, "val": 50, "test": 50}
    assert arrays.cat_names == FIELDS and arrays.dense_names == []
    check_encoding(arrays, labels, [r[1] for r in ref], names)
    genres = {r[1][7] for r in ref}
    assert any(" " in g for g in genres) == (genre == "combination")


def test_min_count(tmp_path):
    folder = write_movielens(tmp_path / "ml", n_ratings=300, seed=2)
    arrays = movielens(folder, tmp_path / "cache", min_count=5).load()
    ref = movielens_reference(folder)
    check_encoding(arrays, [r[0] for r in ref], [r[1] for r in ref], random_split_names(len(ref)), min_count=5)


def test_bad_lines(tmp_path):
    folder = write_movielens(tmp_path / "ml", n_ratings=100, seed=3)
    inter = folder / "ml-100k.inter"
    lines = inter.read_text().splitlines(keepends=True)
    lines[5] = "7\t3\tfive\t880000000\n"  # line 6: not a number
    lines[9] = "7\t3\t4\n"  # line 10: 3 fields
    inter.write_text("".join(lines))
    with pytest.raises(BadLineError) as info:
        movielens(folder, tmp_path / "cache").prepare()
    msg = str(info.value)
    assert str(inter) in msg and "line 6" in msg and "field 3 (rating)" in msg
    arrays = movielens(folder, tmp_path / "cache", on_bad_line="skip").load()
    assert arrays.meta["skipped_lines"] == 2
    assert sum(len(s) for s in arrays.splits.values()) == 98
    assert arrays.meta["lines_read"] == 100


def test_real_movielens_100k(tmp_path):
    """Downloads the recbole 1.2.1 wheel (2 MB) and prepares the real ML-100K."""
    try:
        fetch_ml100k(tmp_path / "raw" / "ml-100k")
    except DownloadError as exc:
        pytest.skip(f"the package index is not reachable here: {exc}")
    src = MovieLens100K(None, cache_dir=tmp_path, progress=False)
    arrays = src.load()
    assert {s: len(v) for s, v in arrays.splits.items()} == {"train": 80000, "val": 10000, "test": 10000}
    assert arrays.cardinalities[0] == 944  # 943 users seen in training + OOV
    assert arrays.cardinalities[FIELDS.index("gender")] == 3
    total_pos = sum(float(np.sum(s.label)) for s in arrays.splits.values())
    assert total_pos == 55375  # ratings of 4 or 5 in ML-100K
    assert arrays.meta["skipped_lines"] == 0 and arrays.meta["lines_read"] == 100000
    again = MovieLens100K(None, cache_dir=tmp_path, progress=False)
    assert again.prepare() == src.prepare() and not again.built
