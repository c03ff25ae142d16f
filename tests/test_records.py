"""Run records are written atomically and readable like any other file a run writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from mlet.job import run
from mlet.records import RECORD_NAME, RECORD_VERSION, RunRecord, read_record, write_record
from mlet.report import build_report
from tests.helpers import TINY, compose_cfg


def test_record_files_are_world_readable_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_record(tmp_path / "run" / "record.json", {"val_auc": 0.7})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0600
    assert read_record(path)["val_auc"] == 0.7
    assert not list(path.parent.glob(".record.*"))  # no temporary file left behind


def test_record_mode_follows_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = write_record(tmp_path / "schema.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- the typed record: one writer, one reader, every version ----------------------------------
FIXTURE = Path(__file__).parent / "data" / "records" / "v1_mlet_main_9391bb1.json"


def test_a_record_written_by_main_before_the_typed_record_still_reads(tmp_path):
    # written by `mlet-train data=synthetic model=fm embedding=mlet embedding.dim=4 embedding.inner_dim=8
    # trainer.max_epochs=2 ...` at main 9391bb1 (no record_version, no arm or label)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(FIXTURE, run_dir / RECORD_NAME)
    rec = read_record(run_dir / RECORD_NAME)
    assert isinstance(rec, RunRecord) and rec.record_version == 1 and rec.status == "completed"
    assert rec.arm == {"kind": "mlet", "dim": 4, "inner_dim": 8} and rec.label == "mlet k=8"
    assert rec.data == "synthetic" and rec.model == "fm" and rec.seed == 0
    assert [h["epoch"] for h in rec.val_history] == [0, 1] and rec.best_epoch == 1
    assert rec.test_auc == pytest.approx(0.3488372093023256)
    assert rec.train_parameters == 1355 and rec.embedding_inference_parameters == 600
    assert rec.seconds_train == 2.842 and rec.train_samples_per_second == 1125.8
    assert rec.buckets and rec.spectrum and rec.absent_row_movement["steps_measured"] == 1
    assert rec.config_value("embedding.inner_dim") == 8 and rec.path == str(run_dir)
    assert rec.extra == {}  # every key of today's record has its field
    # the report reads it and labels it from its arm
    res = build_report([tmp_path], tmp_path / "report", plots=False)
    assert list(res["runs"]["label"]) == ["mlet k=8"]


def test_a_new_record_round_trips_and_keeps_unknown_keys(tmp_path):
    rec = RunRecord(data="ds", model="m", embedding="hash", dim=8, arm={"kind": "hash", "dim": 8, "buckets": 100},
                    label="hash buckets=100", seed=1, test_auc=0.7, inference_bytes=3200, model_bytes=4000,
                    extra={"custom_callback": {"x": 1}})
    path = rec.write(tmp_path / RECORD_NAME)
    on_disk = json.loads(path.read_text())
    assert on_disk["record_version"] == RECORD_VERSION and on_disk["custom_callback"] == {"x": 1}
    assert "path" not in on_disk and "extra" not in on_disk
    back = read_record(path)
    assert back.to_json() == rec.to_json() and back.arm["buckets"] == 100 and back["test_auc"] == 0.7


def test_a_record_that_is_no_object_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / RECORD_NAME
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"record.json: not a run record"):
        read_record(path)


def test_training_writes_the_current_version_with_arm_label_and_bytes(tmp_path):
    cfg = compose_cfg([*TINY, "embedding=mlet", "trainer.max_epochs=1"], tmp_path)
    run(cfg)
    rec = read_record(tmp_path / RECORD_NAME)
    assert rec.record_version == RECORD_VERSION and rec.extra == {}
    assert rec.arm == {"kind": "mlet", "dim": 4, "inner_dim": 16} and rec.label == "mlet k=16"
    assert rec.inference_bytes == rec.embedding_inference_parameters * 4
    assert rec.model_bytes == rec.inference_parameters * 4  # float32 throughout
    assert rec.embedding_train_bytes == rec.embedding_train_parameters * 4
