"""Run records are written atomically and readable like any other file a run writes."""

from __future__ import annotations

import os
import stat

from mlet.records import read_record, write_record


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
