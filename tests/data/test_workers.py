"""run_tasks: phases over segments in worker processes, results in task order, one progress for
all, and a failure that stops the other workers at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mlet.data.workers import ProgressBar, run_tasks


def _square(x, progress=None):
    progress(x, 1)
    return x * x


def _sleep_or_fail(kind, pidfile, progress=None):
    Path(pidfile).write_text(str(os.getpid()))
    if kind == "fail":
        time.sleep(1.0)  # the other worker is asleep by now
        raise RuntimeError("segment on fire")
    time.sleep(120)
    return kind


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped
    except (FileNotFoundError, ProcessLookupError):  # gone before or while /proc was read
        return False


def test_results_in_task_order_and_progress_from_every_worker():
    bar = ProgressBar(False, "", None, "bytes")
    assert run_tasks(_square, [(x,) for x in range(7)], 3, bar) == [x * x for x in range(7)]
    assert bar.rows == 7


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_failure_stops_the_other_workers(tmp_path):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="segment on fire"):
        run_tasks(_sleep_or_fail, [("sleep", tmp_path / "a"), ("fail", tmp_path / "b")], 2,
                  ProgressBar(False, "", None, "rows"))
    assert time.monotonic() - started < 30
    pid = int((tmp_path / "a").read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the sleeping worker was left running"
