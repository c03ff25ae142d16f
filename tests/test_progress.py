"""Progress where output is not a terminal (a file, a pipe, a cluster log), and the run's last line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY

MLET_TRAIN = str(Path(sys.executable).parent / "mlet-train")
STEP_LINE = re.compile(r"epoch (\d+)/(\d+) batch \d+/\d+ step (\d+)/(\d+) \| \d+ samples/s \| loss \d\.\d{4} \| ETA \S+")


def mlet_train_to_file(args, cwd: Path) -> tuple[int, str]:
    """The installed console script with stdout and stderr redirected to a file."""
    log_file = cwd / "out.log"
    with open(log_file, "w") as fh:
        proc = subprocess.run([MLET_TRAIN, *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=300)
    return proc.returncode, log_file.read_text()


@pytest.mark.slow  # starts processes
def test_redirected_output_gets_progress_lines_and_a_naming_last_line(tmp_path):
    # the bar on, as by default: redirected output gets plain lines instead
    args = [o for o in TINY if "enable_progress_bar" not in o] + ["++callbacks.progress_log.every_n_steps=5"]
    rc, out = mlet_train_to_file(args, tmp_path)
    assert rc == 0, out[-3000:]
    steps = [int(m.group(3)) for m in STEP_LINE.finditer(out)]
    assert steps == [5, 10, 15, 20]  # 10 steps an epoch, 2 epochs: a line every 5 steps
    assert len(re.findall(r"epoch \d/2 validated: val_auc 0\.\d+ val_logloss", out)) == 2
    assert "it/s]" not in out  # no tqdm bar in the file
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert re.search(r"done: data=synthetic model=dlrm embedding=mlet d=4 k=16 seed=0: collapsed "
                     r"val_auc=0\.\d{5} \(best_epoch=\d\) test_auc=0\.\d{5} test_logloss=0\.\d{5}", last), last


def test_log_progress_turns_on_where_a_bar_is_no_use(monkeypatch):
    from mlet.callbacks import LogProgress

    class Stdout:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stdout", Stdout(True))
    assert not LogProgress().active(progress_bar_enabled=True)  # a terminal with its bar
    assert LogProgress().active(progress_bar_enabled=False)  # the bar is off (+sweep=quick)
    assert not LogProgress(when="never").active(progress_bar_enabled=False)
    monkeypatch.setattr(sys, "stdout", Stdout(False))
    assert LogProgress().active(progress_bar_enabled=True)  # a file, a pipe
    with pytest.raises(ValueError, match="callbacks.progress_log.when='sometimes'"):
        LogProgress(when="sometimes")


@pytest.mark.slow
def test_quick_sweep_jobs_are_not_silent(tmp_path):
    args = ["-m", "+sweep=quick", *TINY, "data=synthetic", "embedding=mlet", "embedding.dim=4", "seed=0",
            "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/sweep"]
    rc, out = mlet_train_to_file(args, tmp_path)
    assert rc == 0, out[-3000:]
    job = "synthetic-dlrm-mlet-d4-k16-s0"
    started = out.index(f"job {job}")
    assert f"job {job}" in out[started:] and ": started" in out[started:]
    assert "epoch 1/1 validated: val_auc" in out[started:]
    assert re.search(rf"job {job}\S*: done, data=synthetic model=dlrm embedding=mlet d=4 k=16 seed=0: ", out)
