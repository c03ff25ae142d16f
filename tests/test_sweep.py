"""Sweep presets, deterministic job directories, resume-skip, and a sweep end to end with its report."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

from mlet import sweep
from mlet.records import write_record
from mlet.report import main as report_main
from mlet.job import run
from tests.helpers import TINY, compose_cfg, run_cli


def _multirun(cfg, sweep_dir):
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _name(overrides, tmp_path):
    cfg = compose_cfg(overrides, tmp_path)
    assert list(cfg.hydra.overrides.task) == [o for o in overrides if not o.startswith("hydra.")]
    return sweep.job_dir_name(cfg)


def test_job_names_are_deterministic(tmp_path):
    assert _name(["embedding=mlet", "embedding.dim=4", "embedding.inner_dim=64", "seed=1"], tmp_path) == \
        "synthetic-dlrm-mlet-d4-k64-s1"
    # a single-layer table ignores k: one name whatever k is
    a = _name(["embedding=single", "embedding.dim=4", "embedding.inner_dim=16"], tmp_path)
    b = _name(["embedding=single", "embedding.dim=4", "embedding.inner_dim=32"], tmp_path)
    assert a == b == "synthetic-dlrm-single-d4-s0"
    # other overrides add a hash; overrides that change nothing in the result do not
    c = _name(["embedding=single", "embedding.dim=4", "optimizer.lr=0.1"], tmp_path)
    d = _name(["optimizer.lr=0.1", "embedding=single", "embedding.dim=4", "logger=none", "+sweep=dims",
               "trainer.enable_progress_bar=false", "force=true"], tmp_path)
    e = _name(["embedding=single", "embedding.dim=4", "optimizer.lr=0.2"], tmp_path)
    assert re.fullmatch(r"synthetic-dlrm-single-d4-s0-[0-9a-f]{8}", c)
    assert c == d and c != e
    # the inner sweep's k=64 job is the dims sweep's MLET job (scripts/reproduce_paper.sh relies on it)
    common = ["optimizer=sgd", "optimizer.lr=0.2", "embedding=mlet", "embedding.init=authors", "embedding.dim=4"]
    dims = _name(["+sweep=dims", *common, "embedding.inner_dim=64"], tmp_path)
    inner = _name(["+sweep=inner", *common, "hydra.sweep.dir=x", "embedding.inner_dim=64"], tmp_path)
    assert dims == inner


def test_presets_compose(tmp_path):
    for name, n_jobs in (("dims", 2 * 6 * 1 * 3), ("inner", 2 * 1 * 9 * 3)):
        cfg = compose_cfg([f"+sweep={name}"], tmp_path)
        params = cfg.hydra.sweeper.params
        sizes = [len(str(v).split(",")) for v in params.values()]
        assert sizes and int(__import__("math").prod(sizes)) == n_jobs, (name, dict(params))
    cfg = compose_cfg(["+sweep=quick", "data=synthetic"], tmp_path)  # MovieLens by default
    assert cfg.trainer.max_epochs == 4 and cfg.trainer.accelerator == "cpu"
    assert "data" not in cfg.hydra.sweeper.params
    assert cfg.hydra.runtime.choices.data == "synthetic"


def test_skip_reasons(tmp_path):
    out = tmp_path / "job"
    # invalid MLET combination: skipped inside a multirun only
    cfg = compose_cfg(["embedding=mlet", "embedding.dim=8", "embedding.inner_dim=4"], out)
    assert sweep.skip_reason(cfg, out) is None  # a single run fails in the embedding instead
    cfg = _multirun(cfg, tmp_path)
    status, reason, _ = sweep.skip_reason(cfg, out)
    assert status == "invalid" and "inner_dim=4 < embedding.dim=8" in reason
    # k < d is exactly what embedding=lowrank is for: never skipped as invalid
    cfg = _multirun(compose_cfg(["embedding=lowrank", "embedding.dim=8", "embedding.inner_dim=4"], out), tmp_path)
    assert sweep.skip_reason(cfg, out) is None

    cfg = compose_cfg(["embedding=single", "embedding.inner_dim=32"], out)
    assert sweep.skip_reason(cfg, out) is None  # no record yet
    write_record(out / "record.json", {"val_auc": 0.7, "config": {"embedding": {"inner_dim": 16}}})
    status, reason, existing = sweep.skip_reason(cfg, out)
    assert status == "duplicate" and "inner_dim=16" in reason and existing["val_auc"] == 0.7
    cfg = compose_cfg(["embedding=single", "embedding.inner_dim=16"], out)
    assert sweep.skip_reason(cfg, out)[0] == "exists"
    cfg = compose_cfg(["embedding=single", "embedding.inner_dim=16", "force=true"], out)
    assert sweep.skip_reason(cfg, out) is None


def test_a_budget_that_chooses_what_another_budget_trained_is_a_duplicate(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cfg = compose_cfg(["embedding=mixed_dim", "embedding.dim=4", "embedding.budget=0.015625", "optimizer.lr=0.1"],
                      tmp_path / "job")
    built = {"kind": "mixed_dim", "dim": 4, "budget": 0.015625, "alpha": 0.9}
    name = sweep.job_dir_name(cfg)
    assert re.fullmatch(r"synthetic-dlrm-mixed_dim-d4-b0.015625-s0-[0-9a-f]{8}", name)
    mine = sweep_dir / name
    sibling = sweep_dir / name.replace("-b0.015625-", "-b0.0625-")
    write_record(sibling / "record.json", {"arm": {**built, "budget": 0.0625}, "val_auc": 0.7})
    assert sweep.same_model_as(cfg, mine, built) is None  # outside a multirun: no sweep, no siblings
    cfg = _multirun(cfg, sweep_dir)
    reason, existing = sweep.same_model_as(cfg, mine, built)
    assert reason.startswith("duplicate: embedding.budget=0.015625 chooses alpha=0.9, as budget=0.0625 did")
    assert str(sibling / "record.json") in reason and existing.val_auc == 0.7
    # another chosen knob is another model
    assert sweep.same_model_as(cfg, mine, {**built, "alpha": 1.2}) is None
    # so is a sibling of another seed or other overrides (hash), or one whose run failed
    for other_name, record in ((name.replace("-b0.015625-s0-", "-b0.0625-s1-"), {}),
                               (name.replace("-b0.015625-", "-b0.0625-")[:-8] + "0" * 8, {}),
                               (sibling.name, {"status": "failed", "error": "x"})):
        (sibling / "record.json").unlink()
        target = sweep_dir / other_name / "record.json"
        write_record(target, {"arm": {**built, "budget": 0.0625}, "val_auc": 0.7, **record})
        assert sweep.same_model_as(cfg, mine, built) is None, other_name
        target.unlink()
        write_record(sibling / "record.json", {"arm": {**built, "budget": 0.0625}, "val_auc": 0.7})


def _hold(job_dir, pid=None, **extra):
    job_dir.mkdir(parents=True, exist_ok=True)
    lock = {"host": socket.gethostname(), "pid": pid or os.getpid(), "time": time.time(), **extra}
    (job_dir / sweep.LOCK_NAME).write_text(json.dumps(lock))


def test_a_budget_whose_model_a_sibling_is_training_waits_for_its_record(tmp_path, monkeypatch, caplog):
    # two parallel jobs: budget 0.0625 built alpha=0.9 first and trains; 0.015625 builds the same
    sweep_dir = tmp_path / "sweep"
    cfg = compose_cfg(["embedding=mixed_dim", "embedding.dim=4", "embedding.budget=0.015625"], tmp_path / "job")
    cfg = _multirun(cfg, sweep_dir)
    built = {"kind": "mixed_dim", "dim": 4, "budget": 0.015625, "alpha": 0.9}
    mine = sweep_dir / sweep.job_dir_name(cfg)
    sibling = sweep_dir / mine.name.replace("-b0.015625-", "-b0.0625-")
    monkeypatch.setattr(sweep, "WAIT_SECONDS", 0.05)
    theirs = {**built, "budget": 0.0625}

    def finish(record, after=0.3):
        time.sleep(after)
        write_record(sibling / "record.json", record)
        (sibling / sweep.LOCK_NAME).unlink()

    _hold(mine)
    _hold(sibling, arm=theirs, announced=time.time() - 1)
    done = threading.Thread(target=finish, args=({"arm": theirs, "val_auc": 0.7},))
    started = time.time()
    done.start()
    reason, existing = sweep.same_model_as(cfg, mine, built)
    done.join()
    assert time.time() - started >= 0.3 and existing.val_auc == 0.7 and "as budget=0.0625 did" in reason
    assert json.loads((mine / sweep.LOCK_NAME).read_text())["arm"] == built  # announced for the others

    # its run failed: this job trains the model itself
    (sibling / "record.json").unlink()
    _hold(sibling, arm=theirs, announced=time.time() - 1)
    done = threading.Thread(target=finish, args=({"arm": theirs, "status": "failed", "error": "x"},))
    done.start()
    assert sweep.same_model_as(cfg, mine, built) is None
    done.join()
    (sibling / "record.json").unlink()

    # no wait for a sibling that announced after this job (it waits for us), that builds another
    # model, or whose process is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for lock in ({"arm": theirs, "announced": time.time() + 60}, {"arm": {**theirs, "alpha": 1.2}, "announced": 0.0},
                 {"arm": theirs, "announced": 0.0, "pid": dead.pid}):
        _hold(sibling, **lock)
        caplog.clear()
        with caplog.at_level("INFO", logger="mlet.sweep"):
            assert sweep.same_model_as(cfg, mine, built) is None, lock
        assert "waiting for" not in caplog.text, lock


@pytest.mark.slow  # starts processes
def test_budgets_that_resolve_to_one_model_train_it_once(tmp_path):
    """On the tiny data every budget up to 1/4 gives mixed dimensions their smallest form (alpha 0.9):
    the sweep trains the first budget's job and skips the second, then, started again, skips both."""
    tiny = [o for o in TINY if not o.startswith("embedding.inner_dim")]  # mixed_dim has no inner_dim
    args = ["-m", *tiny, "trainer.max_epochs=1", "embedding=mixed_dim", "embedding.budget=0.0625,0.015625",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    for expected in (["trained", "duplicate"], ["exists", "duplicate"]):
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = (tmp_path / "sweep" / "sweep_jobs.jsonl").read_text().splitlines()[-2:]
        outcomes = [json.loads(line) for line in lines]
        assert [o["status"] for o in outcomes] == expected
        trained = tmp_path / "sweep" / outcomes[0]["job"] / "record.json"
        assert "-b0.0625-" in str(trained) and json.loads(trained.read_text())["arm"]["alpha"] == 0.9
        assert outcomes[1]["reason"].startswith("duplicate: embedding.budget=0.015625 chooses alpha=0.9, as "
                                                "budget=0.0625 did") and str(trained) in outcomes[1]["reason"]
        assert not (tmp_path / "sweep" / outcomes[1]["job"] / "record.json").exists()
        assert "1 skipped (duplicate)" in proc.stdout + proc.stderr


@pytest.mark.slow  # starts processes
def test_budgets_that_resolve_to_one_model_train_it_once_when_their_jobs_run_at_once(tmp_path):
    """With two jobs at a time both budgets build alpha 0.9 together: whichever announces it first
    trains; the other waits for that record and is skipped as its duplicate."""
    tiny = [o for o in TINY if not o.startswith("embedding.inner_dim")]
    # enough rows that the first job is still training when the second has built its embedding
    proc = run_cli(["-m", *tiny, "data.rows=200000", "trainer.max_epochs=2", "embedding=mixed_dim",
                    "embedding.budget=0.0625,0.015625", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = {o["status"]: o for o in map(json.loads, (tmp_path / "sweep" / "sweep_jobs.jsonl").read_text().splitlines())}
    assert sorted(outcomes) == ["duplicate", "trained"]
    trained = tmp_path / "sweep" / outcomes["trained"]["job"] / "record.json"
    assert json.loads(trained.read_text())["arm"]["alpha"] == 0.9
    assert str(trained) in outcomes["duplicate"]["reason"]
    assert not (tmp_path / "sweep" / outcomes["duplicate"]["job"] / "record.json").exists()


def test_run_skips_a_finished_job_unless_forced(tmp_path, caplog):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path)
    first = run(cfg)
    path = tmp_path / "record.json"
    mtime = path.stat().st_mtime_ns
    assert first["status"] == "completed" and "buckets" in first and "spectrum" in first
    with caplog.at_level("INFO", logger="mlet.sweep"):
        again = run(compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path))
    assert again["status"] == "skipped" and again["skipped"] == "exists"
    assert again["test_auc"] == first["test_auc"]
    assert path.stat().st_mtime_ns == mtime
    assert "skipped: record exists" in caplog.text
    forced = run(compose_cfg([*TINY, "trainer.max_epochs=1", "force=true"], tmp_path))
    assert forced["status"] == "completed" and path.stat().st_mtime_ns > mtime


def test_wandb_names_groups_and_tags(tmp_path):
    cfg = compose_cfg(["logger=wandb", "embedding=mlet", "embedding.dim=4", "embedding.inner_dim=32", "seed=2",
                       "tags=[mine]"], tmp_path)
    wb = cfg.logger.wandb
    assert wb.name == "synthetic-dlrm-mlet-d4-k32-s2"
    assert wb.group is None  # a single run has no sweep
    assert list(wb.tags) == ["data:synthetic", "model:dlrm", "embedding:mlet", "d:4", "k:32", "mine"]
    cfg = _multirun(cfg, tmp_path / "sweeps" / "dims_synthetic")
    assert cfg.logger.wandb.group == "dims_synthetic"
    assert sweep.identity(cfg) == {"data": "synthetic", "model": "dlrm", "embedding": "mlet", "dim": 4,
                                   "inner_dim": 32, "seed": 2}


@pytest.mark.slow  # starts processes
def test_sweep_end_to_end_resumes_and_reports(tmp_path):
    """The quick preset on synthetic data, two jobs (single and MLET at d=4): run, run again (nothing
    retrains), then mlet-report on the sweep directory."""
    args = ["-m", "+sweep=quick", "data=synthetic", *TINY, "embedding.dim=4", "seed=0", "trainer.max_epochs=1"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "quick_synthetic"  # deterministic: named by preset and data
    records = sorted(sweep_dir.glob("*/record.json"))
    assert [p.parent.name.split("-")[2:5] for p in records] == [["mlet", "d4", "k16"], ["single", "d4", "s0"]]
    mtimes = [p.stat().st_mtime_ns for p in records]
    log = proc.stdout + proc.stderr
    assert "sweep summary: 2 jobs: 2 trained" in log
    # a finished sweep job is never resumed (it is skipped): only its best checkpoint stays
    for record in records:
        best = json.loads(record.read_text())["best_checkpoint"]
        assert [p.name for p in (record.parent / "checkpoints").iterdir()] == [best.rsplit("/", 1)[-1]]

    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("skipped: record exists") == 2
    assert "sweep summary: 2 jobs: 0 trained, 2 skipped (record exists)" in log
    assert [p.stat().st_mtime_ns for p in sorted(sweep_dir.glob("*/record.json"))] == mtimes
    outcomes = [json.loads(line)["status"] for line in (sweep_dir / "sweep_jobs.jsonl").read_text().splitlines()]
    assert outcomes == ["trained", "trained", "exists", "exists"]

    out = tmp_path / "report"
    assert report_main([str(sweep_dir), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "runs.csv", "auc_vs_dim.csv", "dim_reduction.csv", "buckets_compare.csv", "spectrum.csv",
            "auc_vs_dim_synthetic_dlrm.png", "buckets_synthetic_dlrm.png",
            "effective_rank_synthetic_dlrm.png"} <= names
    md = (out / "report.md").read_text()
    assert "| synthetic | dlrm | single | - | 4 |" in md and "| synthetic | dlrm | mlet | 16 | 4 |" in md
    reduction = (out / "dim_reduction.csv").read_text().splitlines()
    assert len(reduction) == 2 and reduction[1].startswith("synthetic,dlrm,16.0,4,")


@pytest.mark.slow  # starts processes
def test_a_failed_job_does_not_stop_the_sweep_and_fails_it_at_the_end(tmp_path):
    """The first of two jobs fails (lr=-1): the second still trains, the failure is noted with its
    reason, the summary names it, the exit status is 1; started again, only the failed job reruns."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *TINY, "embedding=single", "trainer.max_epochs=1", "data.rows=1000", "optimizer.lr=-1,0.01",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = run_cli(args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    records = {json.loads(p.read_text())["status"]: json.loads(p.read_text()) for p in sweep_dir.glob("*/record.json")}
    assert sorted(records) == ["completed", "failed"]  # the failed job's record says so, with its error
    assert records["completed"]["config"]["optimizer"]["lr"] == 0.01
    assert records["failed"]["error"] == "optimizer.lr must be positive, got -1"
    outcomes = [json.loads(line) for line in (sweep_dir / "sweep_jobs.jsonl").read_text().splitlines()]
    assert [o["status"] for o in outcomes] == ["failed", "trained"]
    assert "optimizer.lr must be positive" in outcomes[0]["reason"]
    assert "sweep summary: 2 jobs: 1 trained, 1 failed" in log
    assert f"failed: {outcomes[0]['job']}: ValueError: optimizer.lr must be positive" in log

    proc = run_cli(args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "sweep summary: 2 jobs: 0 trained, 1 skipped (record exists), 1 failed" in log


@pytest.mark.slow  # starts processes
def test_reproduce_paper_script_dry_run():
    import subprocess

    from tests.helpers import ROOT

    proc = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_paper.sh"), "/c/train.txt", "/a/train",
                           "dlrm", "dcn"], env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * (2 * 2 + 1) + 1
    assert sum("experiment=paper_dlrm_criteo_kaggle data.path='/c/train.txt' data.protocol=dlrm" in line
               for line in lines) == 3  # single, MLET, AUC against k
    assert sum("data=criteo_kaggle model=dcn optimizer=sgd" in line and "data.protocol=dlrm" in line for line in lines) == 2
    assert sum("experiment=paper_dlrm_avazu data.path='/a/train' data.protocol=mlet2020" in line for line in lines) == 3
    assert lines[-1].startswith("+ mlet-report outputs/sweeps/dims_criteo_kaggle outputs/sweeps/dims_avazu")


@pytest.mark.slow  # starts processes
def test_default_multirun_sweep_dir_resolves(tmp_path):
    """`mlet-train -m ...` without hydra.sweep.dir: outputs/multiruns/<time>/<job name>/."""
    proc = run_cli(["-m", *TINY, "embedding=single", "trainer.max_epochs=1", "data.rows=1000"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list((tmp_path / "outputs" / "multiruns").glob("*/*/record.json"))
    assert len(records) == 1 and records[0].parent.name.startswith("synthetic-dlrm-single-d4-s0-")


@pytest.mark.slow  # starts processes
def test_a_job_held_by_another_live_process_is_skipped_not_overwritten(tmp_path):
    import json as _json
    import os
    import socket
    import subprocess
    import sys

    from mlet.sweep import LOCK_NAME, job_lock

    job = tmp_path / "job"
    job.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (job / LOCK_NAME).write_text(_json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        with job_lock(job) as held:
            assert held is not None and f"pid {other.pid}" in held
        assert (job / LOCK_NAME).exists()  # the other process's lock is left alone
    finally:
        other.kill()
        other.wait()
    # its process is gone: the stale lock is taken over, and released afterwards
    with job_lock(job) as held:
        assert held is None
        assert _json.loads((job / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (job / LOCK_NAME).exists()


def test_run_skips_a_job_another_process_is_training(tmp_path):
    import json as _json
    import socket

    from mlet.sweep import LOCK_NAME
    from mlet.job import run
    from tests.helpers import TINY, compose_cfg

    cfg = compose_cfg(TINY, tmp_path)
    (tmp_path / LOCK_NAME).write_text(_json.dumps({"host": socket.gethostname(), "pid": 1}))  # pid 1 is alive
    out = run(cfg)
    assert out["status"] == "skipped" and out["skipped"] == "running"
    assert not (tmp_path / "record.json").exists()


def test_record_write_errors_surface(tmp_path, monkeypatch):
    import errno
    import os as _os

    from mlet.job import run
    from tests.helpers import TINY, compose_cfg

    real_replace = _os.replace

    def full_disk(src, dst):
        if str(dst).endswith("record.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr("mlet.records.os.replace", full_disk)
    cfg = compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path)
    with pytest.raises(OSError, match="No space left"):
        run(cfg)
    assert not (tmp_path / "record.json").exists()
    assert not list(tmp_path.glob(".record.*"))  # no half-written temporary left behind
