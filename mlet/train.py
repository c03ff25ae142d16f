"""``mlet-train``: the Hydra entry point around :func:`mlet.job.run` (build, fit, test the collapsed
model, write ``record.json``). Returns the best validation AUC so Hydra sweepers can optimise it.

* Errors follow :mod:`mlet.cli` (one line and exit status 2 for a user error, a traceback and exit
  status 1 for a bug). A failed run also leaves its error in its run folder: ``error.txt`` (the
  message; the traceback too for a bug), the same in ``train.log``, and a ``record.json`` with
  ``status: failed`` and the error, which a sweep started again retrains (``mlet.sweep.skip_reason``).
  Inside a multirun a failed job does not stop the others (``mlet.sweep.SweepSummary``).
* DDP (``trainer=ddp``): Lightning starts the other ranks by running this command again
  (``_hydra_subprocess_cmd``), with the parent's command line, ``-m`` and sweep lists included.
  Rank 0 hands its job to them through the environment (:data:`DDP_JOB_ENV`): a started rank runs
  exactly that job, as a single run in the job's directory, and does not take the job lock rank 0
  holds (``mlet.job.run``). Only rank 0 writes the record.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mlet import cli, sweep
from mlet.job import run
from mlet.records import RECORD_NAME, RunRecord

sweep.register_resolvers()  # ${mlet.job_dir:}, ${mlet.run_name:}, ... (conf/hydra, conf/logger)

log = logging.getLogger("mlet.train")

PROG = "mlet-train"
ERROR_NAME = "error.txt"
DDP_JOB_ENV = "MLET_DDP_JOB"
# What Lightning's launcher (lightning_fabric _SubprocessScriptLauncher) sets in rank 0's environment;
# left set, the next job of a multirun would take LOCAL_RANK as "processes are started externally".
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra settings a started rank keeps from rank 0's command line (not the sweep's or launcher's).
RANK_HYDRA_KEYS = ("hydra.job.chdir", "hydra.job.env_set", "hydra.verbose", "hydra/job_logging", "hydra.job_logging",
                   "hydra/hydra_logging", "hydra.hydra_logging")


# ---- DDP ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hand_job_to_ranks(cfg: DictConfig):
    """Rank 0: describe this job for the ranks Lightning starts; the environment is restored after."""
    saved = {key: os.environ.get(key) for key in (DDP_JOB_ENV, *LAUNCHER_ENV)}
    overrides = HydraConfig.get().overrides
    hydra_overrides = [o for o in overrides.hydra if str(o).lstrip("+~").startswith(RANK_HYDRA_KEYS)]
    os.environ[DDP_JOB_ENV] = json.dumps({
        "overrides": [*map(str, overrides.task), *map(str, hydra_overrides)],
        "output_dir": str(Path(cfg.paths.output_dir).resolve()),
    })
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _as_started_rank(argv: list[str]) -> list[str]:
    """The command line of a rank Lightning started: rank 0's job as a single run in its directory."""
    job, local_rank = os.environ.get(DDP_JOB_ENV), os.environ.get("LOCAL_RANK", "0")
    if not job or local_rank == "0":
        return argv
    job = json.loads(job)
    return [argv[0], *job["overrides"], f"hydra.run.dir='{job['output_dir']}'",
            f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]


# ---- a failed run ------------------------------------------------------------------------------
def _log_to_files(message: str, exc: BaseException | None) -> None:
    """An error record for the run's log file(s) only: the console gets the one line of mlet.cli."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (),
                            (type(exc), exc, exc.__traceback__) if exc is not None else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def record_failure(cfg: DictConfig, output_dir: Path, exc: BaseException, message: str | None) -> None:
    """``error.txt``, ``train.log`` and ``record.json`` (``status: failed``) of a failed run (rank 0)."""
    if sweep.process_rank() != 0:
        return
    cause = cli.root_cause(exc)
    error = message if message is not None else f"{type(cause).__name__}: {cause}"
    trace = None if message is not None else "".join(traceback.format_exception(exc))
    if not sweep.in_multirun():  # a multirun logs the failure on the console too (the sweep goes on)
        _log_to_files(f"run failed: {error}", None if trace is None else exc)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / ERROR_NAME).write_text(f"{PROG}: error: {error}\n" + (f"\n{trace}" if trace else ""))
    record = RunRecord(status="failed", error=error, error_type=type(cause).__name__,
                       user_error=message is not None, traceback=trace, run=sweep.identity(cfg))
    try:
        record.config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the config itself may be what failed; the record still gets written
        record.config = None
    record.write(output_dir / RECORD_NAME)


# ---- entry point -------------------------------------------------------------------------------
@cli.hydra_app(PROG, "train")
def _train_app(cfg: DictConfig) -> float | None:
    output_dir = Path(cfg.paths.output_dir)
    try:
        with _hand_job_to_ranks(cfg):
            record = run(cfg)
        if record.get("status") == "completed" and sweep.process_rank() == 0:
            (output_dir / ERROR_NAME).unlink(missing_ok=True)  # an earlier attempt's error, now retrained
    except Exception as exc:
        message = cli.user_message(exc)
        cause = cli.root_cause(exc)
        record_failure(cfg, output_dir, exc, message)
        if sweep.in_multirun():
            # one failed job must not stop the others: noted, then counted by the sweep summary,
            # which ends the multirun with exit status 1 (mlet.sweep.SweepSummary)
            log.error("job failed: %s", cause, exc_info=None if message is not None else exc)
            sweep.note_outcome(output_dir, "failed", f"{type(cause).__name__}: {cause}")
            return None
        raise  # mlet.cli: one line (user error) or the traceback (bug)
    finally:
        end_process_group()  # each job of a multirun starts its own group
    return record.get("val_auc")


def end_process_group() -> None:
    """Destroy the process groups and free them now, while the interpreter is alive.

    ``destroy_process_group()`` only unregisters a group: the trained model still holds it (DDP,
    TorchRec's sharding env, sharded tensors and fused optimiser), in reference cycles that only the
    interpreter's final garbage collection would free. A gloo worker thread still releasing a finished
    collective's tensors then needs the GIL, cannot take it during finalisation, and the process
    aborts after a run that succeeded ("terminate called without an active exception", SIGABRT: 7 of
    100 resumed runs of tests/torchrec_lightning_worker.py on two busy cores, 0 of 80 with this).
    Collected here, the group's destructor joins its threads. Call it once the caller holds no
    reference to the model or trainer."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()


def main() -> None:
    sys.argv[:] = _as_started_rank(sys.argv)
    try:
        _train_app()
    finally:  # a failed job's traceback kept the model alive through the job's own call
        end_process_group()


if __name__ == "__main__":
    main()
