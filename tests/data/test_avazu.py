"""Avazu: header, 20-digit ids that overflow int64, hour-derived fields, BARS x4 protocols."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.rawdata import (AVAZU_HEADER, assert_matches, avazu_reference, avazu_rows, random_split_names, split_names_bars,
                     token_order, write_avazu)

from mlet.data.avazu import FIELDS, TOKEN_COLUMNS, Avazu
from mlet.data.pipeline import BadLineError


def avazu(path, cache, **kw):
    return Avazu(path, cache_dir=cache, progress=False, workers=1, **kw)


def test_quirks_are_present(tmp_path):
    rows = avazu_rows(200, seed=1)
    path = write_avazu(tmp_path / "train", rows)
    lines = path.read_text().splitlines()
    assert lines[0] == AVAZU_HEADER
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert all(len(str(i)) == 20 for i in ids) and max(ids) > 2**63 - 1  # overflow int64
    assert {line.split(",")[2][4:6] for line in lines[1:]} >= {"25", "26"}  # a weekend (Sat 25, Sun 26 Oct 2014)


@pytest.mark.parametrize("protocol,min_count", [("bars_x4_001", 2), ("bars_x4_002", 1)])
def test_bars_protocol_matches_reference(tmp_path, protocol, min_count):
    rows = avazu_rows(500, seed=2)
    path = write_avazu(tmp_path / "train.csv", rows)
    arrays = avazu(path, tmp_path / "cache", protocol=protocol).load()
    ref = avazu_reference(rows)
    labels = [r[0] for r in ref]
    names = split_names_bars(labels)
    int_order = lambda v: v  # noqa: E731 - hour, weekday, weekend are integers
    order = [int_order] + [token_order] * 21 + [int_order, int_order]
    assert arrays.cat_names == FIELDS and arrays.dense_names == []
    assert_matches(arrays, labels, [r[1] for r in ref], names, [min_count] * 24, order)
    assert arrays.splits["train"].dense.shape == (len(arrays.splits["train"]), 0)


def test_mlet2020_protocol_matches_reference(tmp_path):
    """The MLET predecessor's Avazu: the 21 columns C1..C21, full vocabularies, random 80/10/10."""
    rows = avazu_rows(500, seed=6)
    rows[7][2] = "14103224"  # a bad hour: not a field of this protocol, so not an error
    path = write_avazu(tmp_path / "train.csv", rows)
    arrays = avazu(path, tmp_path / "cache", protocol="mlet2020", seed=7).load()
    labels = [int(r[1]) for r in rows]
    values = [r[3:] for r in rows]
    names = random_split_names(len(rows), (0.8, 0.1, 0.1), seed=7)
    assert arrays.cat_names == TOKEN_COLUMNS and len(TOKEN_COLUMNS) == 21 and arrays.dense_names == []
    assert {s: len(arrays.splits[s]) for s in ("train", "val", "test")} == {"train": 400, "val": 50, "test": 50}
    assert_matches(arrays, labels, values, names, [1] * 21, [token_order] * 21, vocabulary="all")
    assert arrays.meta["vocabulary"] == "all" and arrays.meta["options"]["protocol"] == "mlet2020"
    f = TOKEN_COLUMNS.index("device_ip")
    unseen = np.setdiff1d(np.asarray(arrays.splits["test"].cat[:, f]), np.asarray(arrays.splits["train"].cat[:, f]))
    assert len(unseen) > 0 and (unseen > 0).all()  # device_ip values seen only in test have their own rows
    # the same file under the training-rows vocabulary maps those to OOV 0, in another cache
    trained = avazu(path, tmp_path / "cache", protocol="mlet2020", seed=7, vocabulary="train").load()
    assert_matches(trained, labels, values, names, [1] * 21, [token_order] * 21)
    assert trained.meta["vocabulary"] == "train"


def test_full_vocabulary_refuses_a_min_count(tmp_path):
    path = write_avazu(tmp_path / "train", avazu_rows(20, seed=8))
    with pytest.raises(ValueError, match="min_count must be 1"):
        avazu(path, tmp_path / "cache", protocol="mlet2020", min_count=2, vocabulary="all").prepare()
    assert avazu(path, tmp_path / "cache", protocol="mlet2020", min_count=2).vocabulary == "train"


def test_hour_fields(tmp_path):
    rows = avazu_rows(60, seed=3)
    rows[0][2] = "14102523"  # Saturday 23:00
    rows[1][2] = "14102600"  # Sunday 00:00
    rows[2][2] = "14102712"  # Monday
    path = write_avazu(tmp_path / "train", rows)
    src = avazu(path, tmp_path / "cache")
    arrays = src.load()
    vocab = np.load(src.prepare() / "vocab.npy")
    sizes = [c - 1 for c in arrays.cardinalities]
    keys = np.split(vocab, np.cumsum(sizes)[:-1])
    decoded = {}
    for s, split in arrays.splits.items():
        for f, name in ((0, "hour"), (22, "weekday"), (23, "weekend")):
            idx = np.asarray(split.cat[:, f])
            decoded.setdefault(name, {}).update({int(i): int(keys[f][i - 1]) for i in np.unique(idx) if i > 0})
    assert set(decoded["weekday"].values()) <= set(range(7)) and set(decoded["weekend"].values()) == {0, 1}
    assert set(decoded["hour"].values()) <= set(range(24))


def test_bad_lines(tmp_path):
    rows = avazu_rows(50, seed=4)
    rows[10][2] = "14103224"  # hour 24
    rows[20] = rows[20] + ["extra"]  # 25 columns
    rows[30][5] = "1fbe\udcff1fe"  # an undecodable byte in site_id
    rows[40][1] = "yes"
    path = tmp_path / "train"
    path.write_bytes((AVAZU_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8", "surrogateescape"))
    with pytest.raises(BadLineError) as info:
        avazu(path, tmp_path / "cache").prepare()
    msg = str(info.value)
    assert str(path) in msg and "line 12" in msg and "field 3 (hour)" in msg and "14103224" in msg
    arrays = avazu(path, tmp_path / "cache", on_bad_line="skip").load()
    assert arrays.meta["skipped_lines"] == 4
    got = [(e["line"], e["field"]) for e in arrays.meta["bad_line_examples"]]
    assert got == [(12, "field 3 (hour)"), (22, "whole line"), (32, "field 6 (site_id)"), (42, "field 2 (click)")]
    assert sum(len(s) for s in arrays.splits.values()) == 46


def test_header_is_checked(tmp_path):
    path = tmp_path / "train"
    path.write_text("id,click,hour\n1,0,14102100\n")
    with pytest.raises(ValueError, match="line 1: the header must name the Avazu columns"):
        avazu(path, tmp_path / "cache").prepare()


@pytest.mark.slow  # starts processes
def test_parallel_segments_give_identical_arrays(tmp_path):
    rows = avazu_rows(800, seed=5)
    path = write_avazu(tmp_path / "train", rows)
    one = avazu(path, tmp_path / "c1").load()
    many = Avazu(path, cache_dir=tmp_path / "c2", progress=False, workers=4, segment_bytes=10_000).load()
    assert many.meta["segments"] >= 3
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(one.splits[s].cat, many.splits[s].cat)
        np.testing.assert_array_equal(one.splits[s].label, many.splits[s].label)


@pytest.mark.parametrize("preset", ["paper_dlrm_avazu", "paper_dlrm_criteo_kaggle"])
def test_predecessor_preset_trains_from_a_raw_file(preset, tmp_path):
    """One command per published setting: the preset, a raw file, an MLET with the authors' init."""
    from tests.helpers.rawdata import criteo_rows, write_criteo

    from mlet.job import run
    from tests.helpers import compose_cfg

    if "avazu" in preset:
        raw = write_avazu(tmp_path / "train", avazu_rows(600, seed=9))
        fields, protocol, train_rows = 21, "mlet2020", 480  # 80%
    else:
        raw = write_criteo(tmp_path / "train.txt", criteo_rows(600, seed=9))
        fields, protocol, train_rows = 26, "dlrm", 86 * 5 + 85  # parts 0-5 of 7 (86 x 5, 85 x 2)
    cfg = compose_cfg([f"experiment={preset}", f"data.path={raw}", f"paths.data_dir={tmp_path / 'cache'}",
                       "data.progress=false", "data.workers=1", "embedding=mlet", "embedding.init=authors",
                       "embedding.dim=4", "embedding.inner_dim=8", "trainer.accelerator=cpu", "logger=none",
                       "trainer.enable_progress_bar=false"], tmp_path / "run")
    assert cfg.optimizer.lr == 0.2 and cfg.datamodule.batch_size == 128 and cfg.trainer.max_epochs == 1
    assert list(cfg.model.top_mlp) == [512, 256] and cfg.data.protocol == protocol
    record = run(cfg)
    assert record["status"] == "completed" and 0.0 <= record["test_auc"] <= 1.0
    assert record["steps"] == -(-train_rows // 128)  # one epoch at batch 128
    assert len(record["config"]["embedding"]) and record["config"]["embedding"]["init"] == "authors"
    assert record["embedding_inference_parameters"] > 0 and fields == len(record["spectrum"])
