"""A run killed mid-epoch and resumed trains on exactly the batches an uninterrupted run trains on."""

import shutil

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from mlet.job import build
from tests.helpers import TINY, compose_cfg


class Killed(RuntimeError):
    pass


class Recorder(Callback):
    """Records (epoch, batch index, first rows of the batch); raises at global step ``kill_at``."""

    def __init__(self, kill_at: int | None, seen: list) -> None:
        self.kill_at, self.seen = kill_at, seen

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.kill_at:
            raise Killed(f"killed at step {self.kill_at}")
        self.seen.append((trainer.current_epoch, batch_idx, batch[1][:4].tolist()))


def fit(cfg, ckpt_dir, kill_at=None, ckpt_path=None):
    seen: list = []
    datamodule, module = build(cfg)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=3, save_top_k=0),
                   Recorder(kill_at, seen)],
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except Killed:
        pass
    return trainer.global_step, seen


@pytest.mark.parametrize("kills", [(7,), (12,), (7, 11)], ids=["mid-epoch-0", "mid-epoch-1", "twice"])
def test_resume_mid_epoch_replays_nothing_and_skips_nothing(kills, tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2"], tmp_path)
    steps, full = fit(cfg, tmp_path / "full")
    assert steps == 2 * -(-2400 // 256)
    trained: list = []
    ckpt = None
    for kill in kills:
        _, seen = fit(cfg, tmp_path / "ckpt", kill_at=kill, ckpt_path=ckpt)
        ckpt = str(tmp_path / "ckpt" / "last.ckpt")
        last_saved = kill // 3 * 3  # a checkpoint after every third step
        trained = (trained + seen)[:last_saved]  # work after the last checkpoint is lost, and redone
    final_steps, rest = fit(cfg, tmp_path / "ckpt", ckpt_path=ckpt)
    assert final_steps == steps
    assert trained + rest == full
    shutil.rmtree(tmp_path / "ckpt")


# ---- last.ckpt and the record's validation figures ---------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mlet.job import run  # noqa: E402

FALLING_AUC = [0.9, 0.8, 0.7]  # validation AUC of epochs 0, 1, 2: only the first is ever the best


@pytest.fixture(scope="module")
def falling_run(tmp_path_factory):
    """A default 3-epoch run whose validation AUC falls every epoch (best epoch 0, last epoch 2)."""
    import mlet.module

    out = tmp_path_factory.mktemp("falling")
    calls = {"val": 0}
    real_auc = mlet.module.auc

    def scripted_auc(logits, labels):
        if mlet.module.CTRModule._scripted_stage == "val":
            calls["val"] += 1
            return FALLING_AUC[min(calls["val"] - 1, len(FALLING_AUC) - 1)]
        return real_auc(logits, labels)

    real_end = mlet.module.CTRModule._end_eval

    def end_eval(self, stage):
        mlet.module.CTRModule._scripted_stage = stage if not self.trainer.sanity_checking else None
        return real_end(self, stage)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlet.module, "auc", scripted_auc)
        mp.setattr(mlet.module.CTRModule, "_scripted_stage", None, raising=False)
        mp.setattr(mlet.module.CTRModule, "_end_eval", end_eval)
        cfg = compose_cfg([*TINY, "trainer.max_epochs=3", "callbacks.early_stopping.patience=5",
                           ], out)
        record = run(cfg)
    return out, record


def test_last_ckpt_is_the_latest_epoch_even_without_improvement(falling_run):
    out, record = falling_run
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    best = Path(record["best_checkpoint"]).name
    assert files == sorted([best, "last.ckpt"])  # one last.ckpt, no last-v1.ckpt, the best apart
    assert best.startswith("epoch000-")
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == record["steps"]  # not epoch 0's copy
    assert [h["epoch"] for h in last["mlet_val_history"]] == [0, 1, 2]


def test_record_figures_come_from_one_epoch(falling_run):
    _, record = falling_run
    history = record["val_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["val_auc"] for h in history] == FALLING_AUC
    assert record["best_epoch"] == 0 and record["last_epoch"] == 2
    assert record["val_auc"] == 0.9 and record["val_logloss"] == history[0]["val_logloss"]
    assert record["last_val_auc"] == 0.7 and record["last_val_logloss"] == history[2]["val_logloss"]
    assert history[0]["val_logloss"] != history[2]["val_logloss"]


def test_record_times_the_phases(falling_run):
    _, record = falling_run
    for key in ("seconds_prepare", "seconds_train", "seconds_validate", "seconds_test"):
        assert record[key] > 0, key
    assert record["seconds_train"] + record["seconds_validate"] + record["seconds_test"] < record["seconds"]
    assert record["train_samples"] == 3 * 2400  # 3 epochs of the 80% training split of 3000 rows
    assert record["train_samples_per_second"] == pytest.approx(record["train_samples"] / record["seconds_train"],
                                                               rel=0.01)


def test_phase_timer_carries_the_job_totals_across_a_resume():
    from mlet.callbacks import PhaseTimer

    first = PhaseTimer()
    first.begin_process(time.time() - 100.0, 2.0)  # a process 100 s old, 2 s of it preparing
    first.seconds["train"] = 50.0
    state = first.state_dict()  # what its last checkpoint holds
    assert state["job"]["wall"] == pytest.approx(100.0, abs=1.0) and state["job"]["prepare"] == 2.0
    second = PhaseTimer()
    second.load_state_dict(state)
    second.on_fit_start(None, None)  # the resumed fit
    second.begin_process(time.time() - 30.0, 3.0)
    items = second.record_items()
    assert items["seconds"] == pytest.approx(130.0, abs=1.0)
    assert items["seconds_prepare"] == 5.0 and items["seconds_train"] == 50.0
    assert "seconds" not in PhaseTimer().record_items()  # no job around it: the job's own figure stands


def test_a_resumed_runs_record_times_every_process(tmp_path):
    """A run stopped after its last checkpoint (record not yet written) and continued: its ``seconds``
    and ``seconds_prepare`` include the first process, as ``seconds_train`` does."""
    cfg = compose_cfg([*TINY, "trainer.max_epochs=4", "callbacks.early_stopping.patience=10"], tmp_path)
    first = run(cfg)
    assert first["status"] == "completed"
    (tmp_path / "record.json").unlink()  # as if killed after the last checkpoint
    cfg = compose_cfg([*TINY, "trainer.max_epochs=5", "callbacks.early_stopping.patience=10"], tmp_path)
    record = run(cfg)
    assert record["epochs"] == 5 and record["seconds_train"] > first["seconds_train"]
    phases = sum(record[f"seconds_{p}"] for p in ("prepare", "train", "validate", "test"))
    assert record["seconds"] >= phases, record  # one process's wall clock would hold one epoch of five
    assert record["seconds"] > first["seconds_train"] + first["seconds_validate"]
    assert record["seconds_prepare"] > first["seconds_prepare"]


# ---- the same command continues a run; ckpt_path restores a run's config -----------------------
MLET_TRAIN = str(Path(sys.executable).parent / "mlet-train")
# ~75 steps an epoch: slow enough to interrupt between two epochs' checkpoints
SLOW_TINY = [o for o in TINY if not o.startswith("datamodule.batch_size")] + [
    # 12 epochs of ~0.5 s: the Ctrl-C below must land before the run ends, also on a loaded CI machine
    # (with 4, a run once finished between the first last.ckpt and the signal)
    "datamodule.batch_size=32", "trainer.max_epochs=12", "callbacks.early_stopping.patience=20",
    "++callbacks.progress_log.every_n_steps=75",
]


def mlet_train(args, cwd, timeout=300):
    """The installed console script, output to a pipe (not a terminal), as a cluster runs it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([MLET_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def only_run_dir(cwd: Path) -> Path:
    runs = sorted((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_continues_the_run(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    # the child gets Ctrl-C as in a terminal: a test run started in the background (`cmd &` without job
    # control, nohup) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([MLET_TRAIN, *SLOW_TINY], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not list((tmp_path / "outputs" / "runs").glob("*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "no last.ckpt after the first epoch"
        time.sleep(0.05)
    # Ctrl-C, pressed again while the run goes on (at most 5 times, a second apart), as an impatient user
    # does: a KeyboardInterrupt raised inside a finaliser (__del__) would be printed and dropped. Once
    # Lightning has the interrupt it ignores further presses while it shuts down.
    for _ in range(5):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=1)  # the run's output is a few kB: the pipe cannot fill and block it
            break
        except subprocess.TimeoutExpired:
            continue
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("synthetic-dlrm-mlet-d4-k16-s0-")  # named by the overrides, not the time
    assert not (run_dir / "record.json").exists()
    assert f"continue this run with: {shlex.join(['mlet-train', *SLOW_TINY])}" in out
    interrupted_at = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                                weights_only=False)["global_step"]
    assert 0 < interrupted_at < 12 * 75

    rc, out = mlet_train(SLOW_TINY, tmp_path)  # the same command again
    assert rc == 0, out[-3000:]
    assert only_run_dir(tmp_path) == run_dir
    assert "resuming from" in out
    record = json.loads((run_dir / "record.json").read_text())
    assert record["steps"] == 12 * 75 and record["epochs"] == 12
    assert [h["epoch"] for h in record["val_history"]] == list(range(12))  # the history survived the restart
    # the second process trained only what was missing: its progress lines start after the interruption
    steps_logged = [int(line.split(" step ")[1].split("/")[0]) for line in out.splitlines() if " step " in line]
    assert steps_logged and min(steps_logged) > interrupted_at

    rc, out = mlet_train(SLOW_TINY, tmp_path)  # and again: finished, reported, not retrained
    assert rc == 0, out[-3000:]
    assert "record exists" in out and "force=true" in out
    assert f"test_auc={record['test_auc']:.5f}" in out
    assert " step " not in out


@pytest.mark.slow
def test_ckpt_path_restores_the_runs_config_or_refuses(tmp_path):
    args = [*[o for o in TINY if not o.startswith("model.")], "model=fm", "trainer.max_epochs=1",
            "embedding=single", "embedding.dim=6", "seed=3"]
    rc, out = mlet_train(args, tmp_path)
    assert rc == 0, out[-3000:]
    run_dir = only_run_dir(tmp_path)
    (run_dir / "record.json").unlink()  # as if it had been interrupted
    ckpt = f"ckpt_path=outputs/runs/{run_dir.name}/checkpoints/last.ckpt"

    rc, out = mlet_train([ckpt, "embedding.dim=8"], tmp_path)  # contradicts the run: refused, one line
    assert rc == 2
    assert "Traceback" not in out and "state_dict" not in out
    error = [line for line in out.splitlines() if "error" in line]
    assert len(error) == 1 and "embedding.dim: given 8, the run has 6" in error[0]

    rc, out = mlet_train([ckpt], tmp_path)  # nothing else given: the run's own config
    assert rc == 0, out[-3000:]
    assert only_run_dir(tmp_path) == run_dir
    record = json.loads((run_dir / "record.json").read_text())
    assert (record["model"], record["embedding"], record["dim"], record["seed"]) == ("fm", "single", 6, 3)
    assert record["config"]["data"]["rows"] == 3000
    assert record["config"]["model"]["_target_"] == "mlet.models.fm.FM"
    assert "data=synthetic model=fm embedding=single d=6 seed=3" in out


def test_force_retrains_a_finished_run_from_scratch(tmp_path, monkeypatch):
    from mlet.module import CTRModule

    steps: list = []
    original = CTRModule.training_step
    monkeypatch.setattr(CTRModule, "training_step", lambda self, b, i: steps.append(i) or original(self, b, i))
    first = run(compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path))
    assert len(steps) == first["steps"] == 10
    again = run(compose_cfg([*TINY, "trainer.max_epochs=1", "force=true"], tmp_path))
    assert len(steps) == 20 and again["steps"] == 10  # trained again, not "resumed" at its end
    assert len(list((tmp_path / "checkpoints").glob("*.ckpt"))) == 2  # best and last of the new run only


def test_a_checkpoint_outside_a_run_that_does_not_fit_is_one_clear_error(tmp_path):
    from mlet.errors import MletError

    run(compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path / "a"))
    bare = tmp_path / "bare.ckpt"
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.ckpt", bare)
    with pytest.raises(MletError, match=r"ckpt_path=.*bare.ckpt: the checkpoint does not fit the network") as info:
        run(compose_cfg([*TINY, "embedding.dim=8", f"ckpt_path={bare}"], tmp_path / "b"))
    assert "\n" not in str(info.value)
