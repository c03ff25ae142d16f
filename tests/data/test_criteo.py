"""Criteo Kaggle / Terabyte: generated files with every quirk, checked against per-line references."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from tests.helpers.rawdata import (
    bars_bucket_reference,
    assert_matches,
    criteo_line,
    criteo_rows,
    dlrm_dense_reference,
    hex_order,
    parse_criteo_reference,
    split_names_bars,
    split_names_dlrm,
    write_criteo,
)

from mlet.data.criteo import CriteoKaggle, CriteoTerabyte
from mlet.data.pipeline import BadLineError


PAD = {"on_short_line": "pad"}  # generated files strip trailing empty fields on some lines, as some copies do


def kaggle(path, cache, **kw):
    return CriteoKaggle(path, cache_dir=cache, progress=False, workers=1, **{**PAD, **kw})


def test_quirks_are_present(tmp_path):
    rows = criteo_rows(300, seed=1)
    path = write_criteo(tmp_path / "train.txt", rows, strip_every=5)
    text = path.read_text()
    lines = text.splitlines()
    assert any(len(line.split("\t")) < 40 for line in lines)  # stripped trailing tabs
    assert all(len(line.split("\t")) == 40 for i, line in enumerate(lines) if i % 5)
    assert "\t-1\t" in text or "\t-2\t" in text  # negative integers
    assert "\t\t" in text  # empty fields
    assert all(len(c) == 8 for line in lines for c in line.split("\t")[14:] if c)  # 8 hex digits


def test_dlrm_protocol_matches_reference(tmp_path):
    rows = criteo_rows(697, seed=2)  # 697 = 4 parts of 100 + 3 of 99: unequal parts, odd last part
    path = write_criteo(tmp_path / "train.txt", rows, strip_every=7)
    arrays = kaggle(path, tmp_path / "cache").load()
    ref = parse_criteo_reference(path)
    names = split_names_dlrm(len(ref))
    assert {s: len(arrays.splits[s]) for s in ("train", "val", "test")} == {"train": 598, "val": 49, "test": 50}
    assert arrays.dense_names == [f"I{i}" for i in range(1, 14)] and arrays.cat_names == [f"C{i}" for i in range(1, 27)]
    # full vocabularies (as facebookresearch/dlrm): categories seen only in val/test have rows too
    assert_matches(arrays, [r[0] for r in ref], [r[2] for r in ref], names, [1] * 26, [hex_order] * 26,
                   dense=[dlrm_dense_reference(r[1]) for r in ref], vocabulary="all")
    unseen = [np.setdiff1d(np.asarray(arrays.splits["test"].cat[:, f]), np.asarray(arrays.splits["train"].cat[:, f]))
              for f in range(26)]
    assert sum(len(u) for u in unseen) > 0 and all((u > 0).all() for u in unseen)  # own rows, not OOV 0
    assert all((np.asarray(arrays.counts[f])[u] == 0).all() for f, u in enumerate(unseen))  # training count 0
    assert arrays.meta["vocabulary"] == "all"
    assert arrays.splits["train"].cat.dtype == np.int32 and arrays.splits["train"].dense.dtype == np.float32
    assert arrays.meta["skipped_lines"] == 0 and arrays.meta["lines_read"] == 697


@pytest.mark.parametrize("protocol,min_count", [("bars_x4_001", 10), ("bars_x4_002", 2)])
def test_bars_protocol_matches_reference(tmp_path, protocol, min_count):
    rows = criteo_rows(600, seed=3, pool=30)
    path = write_criteo(tmp_path / "train.txt", rows, strip_every=9)
    arrays = kaggle(path, tmp_path / "cache", protocol=protocol).load()
    ref = parse_criteo_reference(path)
    labels = [r[0] for r in ref]
    names = split_names_bars(labels)
    values = [[bars_bucket_reference(v) for v in r[1]] + r[2] for r in ref]
    assert arrays.dense_names == [] and len(arrays.cat_names) == 39
    assert_matches(arrays, labels, values, names, [min_count] * 39, [lambda v: v] * 13 + [hex_order] * 26)
    sizes = {s: names.count(s) for s in ("train", "val", "test")}
    assert {s: len(arrays.splits[s]) for s in sizes} == sizes
    assert sizes["test"] in (60, 61) and sizes["val"] in (59, 60, 61)  # 8:1:1


def test_bars_bucket_boundaries(tmp_path):
    # floor(ln(x)^2) for x > 2; x itself for x <= 2 (negatives kept, missing -> 0)
    values = [None, -3, -1, 0, 1, 2, 3, 7, 8, 20, 21, 1000, 123456789]
    assert [bars_bucket_reference(v) for v in values] == [0, -3, -1, 0, 1, 2, 1, 3, 4, 8, 9, 47, 347]
    from mlet.data.criteo import bars_bucket

    got = bars_bucket(np.array([0 if v is None else v for v in values]))
    assert got.tolist() == [0, -3, -1, 0, 1, 2, 1, 3, 4, 8, 9, 47, 347]


def test_oov_at_min_count_boundary(tmp_path):
    """min_count=10: a category seen 10 times in training is kept, one seen 9 times is OOV."""
    base = criteo_rows(70, seed=4)
    rows = []
    for i, (label, ints, cats) in enumerate(base):  # 70 rows = 7 parts of 10: rows 0-59 train
        cats = list(cats)
        cats[0] = "aaaaaaaa" if i < 10 or i == 61 else "bbbbbbbb" if i < 19 or i == 62 else f"{i:08x}"
        rows.append((label, ints, cats))
    path = write_criteo(tmp_path / "train.txt", rows)
    arrays = kaggle(path, tmp_path / "cache", min_count=10).load()
    train, test = arrays.splits["train"], arrays.splits["test"]
    a = int(train.cat[0, 0])
    assert a >= 1 and (train.cat[:10, 0] == a).all()
    assert (train.cat[10:19, 0] == 0).all()  # bbbbbbbb: 9 times -> OOV
    assert arrays.counts[0][a] == 10
    assert arrays.counts[0][0] == 60 - 10  # every other C1 value of training is rarer than 10
    assert arrays.cardinalities[0] == 2
    # rows 60..64 are the test half of the last part: 61 (aaaaaaaa) and 62 (bbbbbbbb) among them
    assert test.cat[61 - 60, 0] == a and test.cat[62 - 60, 0] == 0


@pytest.mark.slow  # starts processes
def test_parallel_segments_give_identical_arrays(tmp_path):
    rows = criteo_rows(900, seed=5)
    path = write_criteo(tmp_path / "train.txt", rows, strip_every=11)
    src1 = kaggle(path, tmp_path / "c1", protocol="bars_x4_002")
    src2 = CriteoKaggle(path, **PAD, cache_dir=tmp_path / "c2", protocol="bars_x4_002", progress=False, workers=4,
                        segment_bytes=20_000)
    one, many = src1.load(), src2.load()
    assert many.meta["segments"] >= 3
    assert one.cardinalities == many.cardinalities
    for s in ("train", "val", "test"):
        for key in ("cat", "dense", "label"):
            np.testing.assert_array_equal(getattr(one.splits[s], key), getattr(many.splits[s], key))
    for a, b in zip(one.counts, many.counts):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.load(src1.prepare() / "vocab.npy"), np.load(src2.prepare() / "vocab.npy"))


def test_gzip_input(tmp_path):
    rows = criteo_rows(150, seed=6)
    path = write_criteo(tmp_path / "train.txt", rows, strip_every=4)
    with open(path, "rb") as f, gzip.open(tmp_path / "train.txt.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    plain = kaggle(path, tmp_path / "c1").load()
    zipped = kaggle(tmp_path / "train.txt.gz", tmp_path / "c2").load()
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(plain.splits[s].cat, zipped.splits[s].cat)
        np.testing.assert_array_equal(plain.splits[s].dense, zipped.splits[s].dense)


# ---- bad lines ---------------------------------------------------------------------------------
def _bad_file(tmp_path, bad_line: str, at: int = 37, n: int = 80):
    rows = criteo_rows(n, seed=7)
    lines = [criteo_line(*r) for r in rows]
    lines.insert(at, bad_line)
    path = tmp_path / "train.txt"
    path.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    return path


def _good():
    label, ints, cats = criteo_rows(1, seed=8)[0]
    return label, list(ints), list(cats)


def _line(label, ints, cats) -> str:
    return criteo_line(label, ints, cats)


def bad_cases():
    label, ints, cats = _good()
    too_many = _line(label, ints, cats).rstrip("\n") + "\textra\n"
    non_hex = _line(label, ints, cats[:4] + ["zz12ab34"] + cats[5:])
    short_hex = _line(label, ints, cats[:4] + ["12ab34"] + cats[5:])
    non_int = _line(label, ints[:2] + ["1.5"] + ints[3:], cats)
    bad_label = _line(2, ints, cats)
    undecodable = _line(label, ints, cats[:6] + ["ab\udcffcd012"] + cats[7:])  # a raw 0xff byte in C7
    short_not_stripped = "\t".join(_line(label, ints, cats).split("\t")[:30]) + "\t\n"
    return {
        "too many fields": (too_many, "whole line", "41 fields where 40 are expected"),
        "non-hex category": (non_hex, "C5", "not a category of 8 hex digits: 'zz12ab34'"),
        "short hex category": (short_hex, "C5", "8 hex digits"),
        "non-integer dense": (non_int, "I3", "not an integer: '1.5'"),
        "label": (bad_label, "label", "the label must be 0 or 1"),
        "undecodable byte": (undecodable, "C7", "undecodable byte 0xff"),
        "short line ending in a tab": (short_not_stripped, "whole line", "31 fields where 40 are expected"),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_bad_line_stops_with_file_line_field(tmp_path, case):
    line, field, reason = bad_cases()[case]
    path = _bad_file(tmp_path, line, at=37)
    with pytest.raises(BadLineError) as info:
        kaggle(path, tmp_path / "cache").prepare()
    msg = str(info.value)
    assert str(path) in msg and "line 38" in msg and field in msg and reason in msg, msg
    assert info.value.line == 38
    assert not list((tmp_path / "cache").iterdir())  # nothing left behind, nothing trusted


def test_bad_lines_skipped_and_counted(tmp_path):
    rows = criteo_rows(120, seed=9)
    lines = [criteo_line(*r) for r in rows]
    cases = bad_cases()
    for k, (line, _, _) in enumerate(cases.values()):
        lines.insert(10 + 13 * k, line)
    path = tmp_path / "train.txt"
    path.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    arrays = kaggle(path, tmp_path / "cache", on_bad_line="skip").load()
    assert arrays.meta["skipped_lines"] == len(cases)
    assert arrays.meta["skipped_by_file"] == {str(path): len(cases)}
    assert arrays.meta["lines_read"] == 120 + len(cases)
    assert sum(len(s) for s in arrays.splits.values()) == 120
    examples = arrays.meta["bad_line_examples"]
    assert [e["line"] for e in examples] == [11 + 13 * k for k in range(len(cases))]
    # the kept rows are exactly the good ones
    good = tmp_path / "good.txt"
    write_criteo(good, rows)
    clean = kaggle(good, tmp_path / "cache2").load()
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(arrays.splits[s].cat, clean.splits[s].cat)


@pytest.mark.slow  # starts processes
def test_bad_line_in_a_later_segment_names_its_absolute_line(tmp_path):
    rows = criteo_rows(400, seed=10)
    lines = [criteo_line(*r) for r in rows]
    lines.insert(350, bad_cases()["non-hex category"][0])
    path = tmp_path / "train.txt"
    path.write_text("".join(lines))
    src = CriteoKaggle(path, **PAD, cache_dir=tmp_path / "cache", progress=False, workers=4, segment_bytes=10_000)
    assert len(src.segments()) >= 4
    with pytest.raises(BadLineError, match="line 351, field 19 \\(C5\\)"):
        src.prepare()
    skip = CriteoKaggle(path, **PAD, cache_dir=tmp_path / "cache", progress=False, workers=4, segment_bytes=10_000,
                        on_bad_line="skip").load()
    assert skip.meta["skipped_lines"] == 1 and skip.meta["bad_line_examples"][0]["line"] == 351


# ---- Terabyte ----------------------------------------------------------------------------------
def _days(tmp_path, n_days=3, n=150):
    folder = tmp_path / "raw"
    folder.mkdir()
    all_rows = []
    for d in range(n_days):
        rows = criteo_rows(n + d, seed=20 + d)
        write_criteo(folder / f"day_{d}", rows, strip_every=6)
        all_rows.append(parse_criteo_reference(folder / f"day_{d}"))
    return folder, all_rows


def test_terabyte_days_and_cap(tmp_path):
    folder, days = _days(tmp_path)
    arrays = CriteoTerabyte(folder, **PAD, cache_dir=tmp_path / "cache", days=3, negative_keep_rate=None,
                            max_ind_range=1000, progress=False, workers=1).load()
    ref = [r for d in days for r in d]
    n_last = len(days[-1])
    names = ["train"] * (len(ref) - n_last) + ["test"] * (-(-n_last // 2)) + ["val"] * (n_last // 2)
    values = [[(0 if c is None else c) % 1000 for c in r[2]] for r in ref]
    assert_matches(arrays, [r[0] for r in ref], values, names, [1] * 26, [lambda v: v] * 26,
                   dense=[dlrm_dense_reference(r[1]) for r in ref])
    assert all(c <= 1001 for c in arrays.cardinalities)


@pytest.mark.slow  # starts processes
def test_terabyte_negative_subsampling(tmp_path):
    folder, days = _days(tmp_path, n=400)
    full = CriteoTerabyte(folder, **PAD, cache_dir=tmp_path / "c0", days=3, negative_keep_rate=None,
                          progress=False).load()
    a = CriteoTerabyte(folder, **PAD, cache_dir=tmp_path / "c1", days=3, negative_keep_rate=0.5, seed=1, progress=False,
                       workers=1).load()
    b = CriteoTerabyte(folder, **PAD, cache_dir=tmp_path / "c2", days=3, negative_keep_rate=0.5, seed=1, progress=False,
                       workers=2, segment_bytes=8_000).load()
    c = CriteoTerabyte(folder, **PAD, cache_dir=tmp_path / "c3", days=3, negative_keep_rate=0.5, seed=2, progress=False,
                       workers=1).load()
    train_rows = [r for d in days[:-1] for r in d]
    pos = sum(r[0] for r in train_rows)
    neg = len(train_rows) - pos
    kept_neg = int((a.splits["train"].label == 0).sum())
    assert int(a.splits["train"].label.sum()) == pos  # every positive kept
    assert 0.35 * neg < kept_neg < 0.65 * neg
    assert a.meta["rows_dropped"] == neg - kept_neg
    np.testing.assert_array_equal(a.splits["train"].dense, b.splits["train"].dense)  # deterministic
    assert not np.array_equal(a.splits["train"].label, c.splits["train"].label)  # the seed matters
    for s in ("val", "test"):  # the last day is never sampled
        assert len(a.splits[s]) == len(full.splits[s])
        np.testing.assert_array_equal(a.splits[s].label, full.splits[s].label)
        np.testing.assert_array_equal(a.splits[s].dense, full.splits[s].dense)
