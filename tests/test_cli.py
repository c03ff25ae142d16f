"""Every console script as the user types it (the installed entry points, run from a directory
outside the repository), the one error policy (mlet.cli), and what a failed run leaves on disk."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from mlet import cli, sweep
from mlet.errors import InputError, MletError
from tests.helpers import ROOT, TINY, compose_cfg, run_cli, run_script

SCRIPTS = ["mlet-train", "mlet-prepare", "mlet-report", "mlet-export", "mlet-predict"]


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _one_line_error(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The command failed as a user error: exit status 2, one line on stderr, no traceback."""
    lines = _error_lines(proc)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr[-3000:]
    return lines[0]


# ---- packaging ---------------------------------------------------------------------------------
def test_the_configs_are_a_real_package_and_conf_links_to_it():
    """mlet.conf is a folder inside mlet/ (not a path mapping, which .pth-based editable installs
    lose); the top-level conf/ is a link to it."""
    assert (ROOT / "mlet" / "conf" / "__init__.py").is_file() and not (ROOT / "mlet" / "conf").is_symlink()
    assert (ROOT / "conf").is_symlink() and (ROOT / "conf").resolve() == (ROOT / "mlet" / "conf").resolve()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in setuptools and setuptools["packages"]["find"]["include"] == ["mlet*"]


def test_configs_come_from_the_package_not_a_path():
    """A non-editable install has no repository around it: the Hydra apps compose from mlet.conf."""
    import mlet.conf
    import mlet.train

    assert cli.CONFIG_PATH == "pkg://mlet.conf"
    assert Path(mlet.conf.__file__).parent == ROOT / "mlet" / "conf"
    assert not hasattr(mlet.train, "CONFIG_DIR")


@pytest.mark.slow
def test_the_wheel_holds_every_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    import zipfile

    (wheel,) = tmp_path.glob("mlet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {"mlet/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(configs) > 40 and configs <= names
    assert "mlet/conf/__init__.py" in names


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compat", "strict"])
def test_every_command_runs_from_outside_after_an_editable_install_of_each_mode(mode, tmp_path):
    """``pip install -e .`` as setuptools does it in its .pth-based ``compat`` mode and in ``strict``
    mode (``lenient``, the default, is the suite's own environment): each console script of the fresh
    venv answers ``--help`` from a directory outside the repository. The venv reads the dependencies
    from this one's site-packages (a plain path in a .pth file) instead of installing them again."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT),
                    "--config-settings", f"editable_mode={mode}"], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in SCRIPTS:
        proc = subprocess.run([str(venv / "bin" / name), "--help"], cwd=elsewhere, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{mode}: {name} --help: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr


# ---- every command from anywhere ---------------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow  # starts processes
def test_help_of_every_command_from_outside_the_repository(name, tmp_path):
    proc = run_script(name, ["--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    expected = {"mlet-train": "== Configuration groups ==", "mlet-prepare": "== Configuration groups =="}
    assert expected.get(name, f"usage: {name}") in proc.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing



@pytest.mark.slow  # starts processes
def test_every_command_by_name_from_a_new_shell(tmp_path):
    """README: after `pip install -e '.[dev]'` the commands run by name from any directory in a new
    shell: outside a venv from the PATH every shell has (where pip put them, or pyenv's shims); inside
    a venv once it is activated, as the README says for that case. A stripped environment: no
    VIRTUAL_ENV, no PYTHONPATH, the venv's bin taken off PATH."""
    scripts = Path(sysconfig.get_path("scripts"))
    in_venv = sys.prefix != sys.base_prefix
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (in_venv and Path(p).resolve() == scripts.resolve()))
    activate = f". {shlex.quote(str(scripts / 'activate'))} && " if in_venv else ""
    line = activate + f"cd {shlex.quote(str(tmp_path))} && " + " && ".join(
        f"{name} --help > /dev/null" for name in SCRIPTS)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run(["bash", "-c", line], env={**env, "PATH": path}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "command not found" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---- one error policy --------------------------------------------------------------------------
def test_user_errors_are_one_line_and_bugs_are_not():
    assert cli.user_message(MletError("bad")) == "bad"
    assert cli.user_message(InputError("x.csv: no column(s) ['a']")) == "x.csv: no column(s) ['a']"
    assert cli.user_message(FileNotFoundError("x: no such file")) == "x: no such file"
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = ValueError("data.rows must be at least 10, got 5")
    assert cli.user_message(wrapped) == "data.rows must be at least 10, got 5"  # a setting the object rejects
    assert cli.user_message(ValueError("an index out of range somewhere")) is None  # a bug: traceback
    assert cli.user_message(KeyError("x")) is None


@pytest.mark.parametrize("override,needle", [
    ("model=foo", "model=foo: no such option; model is one of: autoint, autoint_plus, dcn, dcnv2, deepfm, dlrm"),
    ("embedding.dimm=3", "embedding.dimm: no such key; embedding has: backend, budget, dim, eval_mode, init, init_std, inner_dim, sharding, share_projection"),
    ("+sweep=nosuch", "sweep=nosuch: no such option; sweep is one of: compress, dims, inner, lr, quick"),
    ("model.top_mlp=[16", "model.top_mlp=[16: "),
])
@pytest.mark.slow  # starts processes
def test_composition_errors_are_one_line_with_the_choices(override, needle, tmp_path):
    proc = run_cli([override], cwd=tmp_path, timeout=120)
    assert needle in _one_line_error(proc, "mlet-train")
    assert list(tmp_path.iterdir()) == []  # no run folder for a config that does not compose


@pytest.mark.slow  # starts processes
def test_prepare_empty_file_and_missing_column_are_user_errors(tmp_path):
    env = {"MLET_DATA_DIR": str(tmp_path / "cache")}
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_script("mlet-prepare", ["data=criteo_kaggle", f"data.path={empty}", "data.progress=false"],
                      cwd=tmp_path, env=env, timeout=120)
    assert f"{empty}: no data rows (empty input file?)" in _one_line_error(proc, "mlet-prepare")
    table = tmp_path / "t.csv"
    table.write_text("x,y\n1,0\n")
    proc = run_script("mlet-prepare", ["data=tabular", f"data.path={table}", "data.label=y", "data.categorical=[a]",
                                       "data.progress=false"], cwd=tmp_path, env=env, timeout=120)
    assert f"{table}, line 1: no column(s) ['a'] in the header ['x', 'y']" in _one_line_error(proc, "mlet-prepare")
    proc = run_script("mlet-prepare", ["data=criteo_kaggle"], cwd=tmp_path, env=env, timeout=120)
    assert "data.path: missing mandatory value" in _one_line_error(proc, "mlet-prepare")


@pytest.mark.slow  # starts processes
def test_report_and_export_errors_are_one_line(tmp_path):
    proc = run_script("mlet-export", [str(tmp_path / "nothing")], cwd=tmp_path, timeout=120)
    assert "no such run directory or checkpoint" in _one_line_error(proc, "mlet-export")
    proc = run_script("mlet-predict", [str(tmp_path / "nothing"), str(tmp_path / "raw.txt")], cwd=tmp_path,
                      timeout=120)
    assert "model.json: missing" in _one_line_error(proc, "mlet-predict")


# ---- a failed run ------------------------------------------------------------------------------
def test_a_failed_record_is_retrained_not_skipped(tmp_path):
    from mlet.records import write_record

    cfg = compose_cfg([*TINY], tmp_path)
    write_record(tmp_path / "record.json", {"status": "failed", "error": "optimizer.lr must be positive"})
    assert sweep.skip_reason(cfg, tmp_path) is None
    write_record(tmp_path / "record.json", {"status": "completed"})
    assert sweep.skip_reason(cfg, tmp_path)[0] == "exists"


@pytest.mark.slow
def test_a_failed_run_leaves_its_error_in_its_folder_and_is_retrained(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    proc = run_cli([*args, "optimizer.lr=-1"], cwd=tmp_path, timeout=120)
    line = _one_line_error(proc, "mlet-train")
    assert line == "mlet-train: error: optimizer.lr must be positive, got -1"
    assert (run_dir / "error.txt").read_text() == line + "\n"
    assert "run failed: optimizer.lr must be positive, got -1" in (run_dir / "train.log").read_text()
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed" and record["error"] == "optimizer.lr must be positive, got -1"
    assert record["user_error"] is True and record["run"]["embedding"] == "mlet"
    # the same command, fixed: the failed record does not count as done
    proc = run_cli(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_bug_keeps_its_traceback_on_screen_and_on_disk(tmp_path):
    """A data source that is no source (a dict): the datamodule fails on it, which is no user error."""
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "data._target_=builtins.dict", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    error = (run_dir / "error.txt").read_text()
    assert error.startswith("mlet-train: error: ") and "Traceback (most recent call last)" in error
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed" and record["user_error"] is False and "Traceback" in record["traceback"]
    assert "Traceback" in (run_dir / "train.log").read_text()


# ---- one real call of each command, from outside the repository ---------------------------------
@pytest.mark.slow
def test_train_export_report_chain_through_the_console_scripts(tmp_path):
    proc = run_cli([*TINY, "trainer.max_epochs=1"], cwd=tmp_path, timeout=300)  # default run dir: ./outputs
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = (tmp_path / "outputs" / "runs").glob("*/record.json")
    assert json.loads(record.read_text())["status"] == "completed"
    proc = run_script("mlet-export", [str(record.parent), "--out", "exported"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "exported" / "model.pt2").is_file()
    proc = run_script("mlet-report", ["outputs", "--out", "report", "--no-plots"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| synthetic | dlrm | mlet |" in (tmp_path / "report" / "report.md").read_text()


# ---- DDP through mlet-train (gloo, two CPU processes) --------------------------------------------
DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "embedding=mlet", "embedding.dim=4",
       "embedding.inner_dim=32", *[o for o in TINY if not o.startswith(("embedding.", "trainer.accelerator"))],
       "trainer.max_epochs=1"]
# 3000 rows: 2400 training rows, 10 batches of 256, 5 steps on each of the two ranks (10 in one process)
DDP_STEPS = 5


def _check_ddp_job(job_dir: Path) -> None:
    record = json.loads((job_dir / "record.json").read_text())
    assert record["status"] == "completed" and record["steps"] == DDP_STEPS, record.get("steps")
    assert (job_dir / "train_ddp_process_1.log").is_file()  # the second rank ran this job, in this folder
    assert not (job_dir / sweep.LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("run_dir", [True, False], ids=["hydra.run.dir", "default-run-dir"])
def test_ddp_single_run_through_the_cli(run_dir, tmp_path):
    args = [*DDP, f"hydra.run.dir={tmp_path / 'run'}"] if run_dir else DDP
    proc = run_cli(args, cwd=tmp_path, timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [tmp_path / "run"] if run_dir else list((tmp_path / "outputs" / "runs").iterdir())
    assert len(jobs) == 1  # the second rank made no run folder of its own
    _check_ddp_job(jobs[0])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_multirun_through_the_cli(tmp_path):
    """Lightning starts rank 1 with the parent's command line (-m and the sweep list): it must run
    only the job rank 0 runs, and the second job must start its own rank 1 again."""
    args = ["-m", *DDP, "embedding.dim=4,8", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_cli(args, cwd=tmp_path, timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/record.json"))
    assert [p.name.split("-")[3] for p in jobs] == ["d4", "d8"]
    for job in jobs:
        _check_ddp_job(job)
    outcomes = [json.loads(line)["status"] for line in (tmp_path / "sweep" / "sweep_jobs.jsonl").read_text().splitlines()]
    assert outcomes == ["trained", "trained"]
    assert not (tmp_path / "outputs").exists()
