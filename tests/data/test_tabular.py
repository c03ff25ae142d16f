"""The user's own CSV / Parquet table."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from tests.helpers.rawdata import AVAZU_HEADER, assert_matches, avazu_rows, random_split_names, token_order

from mlet.data.pipeline import BadLineError
from mlet.data.tabular import Tabular


def table(path, cache, **kw):
    kw.setdefault("progress", False)
    return Tabular(path, cache_dir=cache, **kw)


def test_csv_matches_reference(tmp_path):
    """An Avazu-like CSV: 20-digit ids (over int64) as a categorical column, quoted commas,
    missing numbers."""
    rows = avazu_rows(300, seed=1)
    path = tmp_path / "clicks.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(AVAZU_HEADER.split(",") + ["price"])
        for i, r in enumerate(rows):
            price = "" if i % 7 == 0 else f"{(i % 13) * 1.5}"
            site = r[5] if i % 11 else "a,b quoted"
            w.writerow(r[:5] + [site] + r[6:] + [price])
    arrays = table(path, tmp_path / "cache", label="click", categorical=["id", "site_id", "C14"], dense=["price"],
                   dense_transform="log1p", dense_fill=-1.0).load()
    with open(path, newline="") as f:
        ref = list(csv.DictReader(f))
    labels = [int(r["click"]) for r in ref]
    values = [[r["id"], r["site_id"], r["C14"]] for r in ref]
    dense = [[np.log1p(max(float(r["price"]) if r["price"] else -1.0, 0.0))] for r in ref]
    names = random_split_names(len(ref))
    # site_id and C14 are short tokens: exact reference, ties ordered by their bytes
    assert_matches(arrays, labels, [[v[1], v[2]] for v in values], names, [1, 1], [token_order, token_order],
                   dense=dense, fields=[1, 2])
    # the 20-digit ids are long tokens (hashed): one index per distinct id seen in training
    train_ids = [v[0] for v, n in zip(values, names) if n == "train"]
    assert arrays.cardinalities[0] == len(set(train_ids)) + 1
    idx = np.asarray(arrays.splits["train"].cat[:, 0])
    assert len({(i, v) for i, v in zip(idx, train_ids)}) == len(set(train_ids)) and (idx > 0).all()


def test_parquet_types_and_split_column(tmp_path):
    df = pd.DataFrame({
        "y": [0, 1, 1, 0, 1, 0, 0, 1],
        "user": pd.array([3, 5, 3, None, 5, 3, 7, 5], dtype="Int64"),
        "item": ["a", "b", None, "a", "verylongitemname", "b", "a", "verylongitemname"],
        "kind": pd.Categorical(["x", "y", "x", "x", "y", None, "x", "y"]),
        "price": [1.0, None, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "part": ["train", "train", "valid", "test", "train", "train", "val", "TEST"],
    })
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    arrays = table(path, tmp_path / "cache", label="y", categorical=["user", "item", "kind"], dense=["price"],
                   split_column="part").load()
    assert {s: len(v) for s, v in arrays.splits.items()} == {"train": 4, "val": 2, "test": 2}
    train = arrays.splits["train"]
    np.testing.assert_array_equal(train.label, [0, 1, 1, 0])
    np.testing.assert_allclose(train.dense[:, 0], [1.0, 0.0, 5.0, 6.0])
    # user: 3 twice, 5 twice -> indices 1 (3: ties by key, 3 < 5) and 2
    np.testing.assert_array_equal(train.cat[:, 0], [1, 2, 2, 1])
    # item: a, b, verylongitemname, b -> b (2 times) first
    assert train.cat[1, 1] == train.cat[3, 1] == 1 and train.cat[0, 1] != train.cat[2, 1]
    # kind: x, y, y, null
    assert train.cat[1, 2] == train.cat[2, 2] == 1
    val, test = arrays.splits["val"], arrays.splits["test"]
    assert val.cat[0, 0] == 1 and val.cat[1, 0] == 0  # user 7 never seen in training -> OOV
    assert test.cat[0, 0] == 0  # a missing user: its own value, unseen in training -> OOV


def test_bad_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"y,a,c\n1,2.5,x\n0,3,y,extra\n1,,\n0,abc,z\n2,1,x\n1,1,\xff\n1,4,x\n")
    with pytest.raises(BadLineError) as info:
        table(path, tmp_path / "cache", label="y", categorical=["c"], dense=["a"]).prepare()
    assert str(path) in str(info.value) and "line 3" in str(info.value) and "whole line" in str(info.value)
    arrays = table(path, tmp_path / "cache", label="y", categorical=["c"], dense=["a"], on_bad_line="skip").load()
    assert arrays.meta["skipped_lines"] == 4
    reasons = [e["reason"] for e in arrays.meta["bad_line_examples"]]
    assert reasons[0] == "4 fields where 3 are expected"
    assert "not a number: 'abc'" in reasons and "the label must be 0 or 1, got '2'" in reasons
    assert any("undecodable" in r for r in reasons)
    assert sum(len(s) for s in arrays.splits.values()) == 3


def test_columns_are_checked(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,a\n1,2\n")
    with pytest.raises(ValueError, match="no column"):
        table(path, tmp_path / "cache", label="y", categorical=["nope"]).prepare()


@pytest.mark.parametrize("suffix", ["csv", "csv.gz"])
def test_csv_progress_moves_with_the_bytes_read(tmp_path, suffix):
    """The parse progress of one CSV advances with every batch (it sat at 0 bytes until the end)."""
    import gzip

    path = tmp_path / f"clicks.{suffix}"
    n = 3000 if suffix == "csv" else 20000  # gzip: enough compressed bytes for several reads
    text = AVAZU_HEADER + "\n" + "".join(",".join(r) + "\n" for r in avazu_rows(n, seed=6))
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith("gz") else text.encode())
    src = table(path, tmp_path / "cache", label="click", categorical=["site_id", "C14"], block_bytes=16 << 10)
    seg = src.segments()[0]
    updates = []
    chunks = list(src.parse(seg, src.parse_context(seg, lambda nbytes, rows: updates.append((nbytes, rows)))))
    assert len(chunks) >= 10 and sum(len(c.label) for c in chunks) == n
    done = np.cumsum([b for b, _ in updates])
    assert done[-1] == seg.size >= path.stat().st_size - len(AVAZU_HEADER) - 1  # all bytes (but the header), once
    assert (np.diff(done) >= 0).all()
    assert len(np.unique(done[:-1])) >= 5 and done[0] < seg.size / 2  # moving before the end


@pytest.mark.slow  # starts processes
def test_one_csv_is_parsed_in_parallel_pieces_with_file_line_numbers(tmp_path):
    """A single CSV is cut into byte ranges at line starts, parsed by several workers: the same
    arrays as one worker; a bad value in a later piece is named by its line in the file."""
    rows = avazu_rows(3000, seed=7)
    rows[2500][1] = "maybe"  # click: line 2502 of the file
    path = tmp_path / "clicks.csv"
    path.write_text(AVAZU_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows))
    kw = dict(label="click", categorical=["site_id", "C14", "device_ip"], on_bad_line="skip")
    one = table(path, tmp_path / "c1", workers=1, **kw)
    many = table(path, tmp_path / "c4", workers=4, segment_bytes=40_000, block_bytes=16 << 10, **kw)
    assert len(one.segments()) == 1 and len(many.segments()) == 4
    a, b = one.load(), many.load()
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[s].cat, b.splits[s].cat)
        np.testing.assert_array_equal(a.splits[s].label, b.splits[s].label)
    assert a.meta["lines_read"] == b.meta["lines_read"] == 3000
    for arrays in (a, b):
        assert [(e["line"], e["field"]) for e in arrays.meta["bad_line_examples"]] == [(2502, "column click")]
    strict = table(path, tmp_path / "c5", workers=4, segment_bytes=40_000, label="click", categorical=["site_id"])
    with pytest.raises(BadLineError, match="line 2502, column click: the label must be 0 or 1, got 'maybe'"):
        strict.prepare()
