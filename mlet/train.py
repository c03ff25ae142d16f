"""``mlet-train``: the Hydra entry point around :func:`mlet.job.run` (build, fit, test the collapsed
model, write ``record.json``). Returns the best validation AUC so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mlet import sweep
from mlet.errors import MletError
from mlet.job import run

sweep.register_resolvers()  # ${mlet.job_dir:}, ${mlet.run_name:}, ... (conf/hydra, conf/logger)

log = logging.getLogger("mlet.train")

# The project's top-level conf/ (the package is installed editable from the repository).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


# Config and input errors: one line, no traceback (a bug elsewhere keeps its traceback).
EXPECTED_ERRORS = (MletError, ValueError, OSError, FloatingPointError, InstantiationException)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        record = run(cfg)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a gloo group left to interpreter teardown can abort the process
    except Exception as exc:
        expected = isinstance(exc, EXPECTED_ERRORS)
        cause = _root_cause(exc)
        if sweep.in_multirun():
            # one failed job must not stop the others: noted, then counted by the sweep summary,
            # which ends the multirun with exit status 1 (mlet.sweep.SweepSummary)
            log.error("job failed: %s", cause, exc_info=None if expected else exc)
            sweep.note_outcome(Path(cfg.paths.output_dir), "failed", f"{type(cause).__name__}: {cause}")
            return None
        if not expected:
            raise
        print(f"mlet-train: error: {cause}", file=sys.stderr)
        sys.exit(2)
    return record.get("val_auc")


if __name__ == "__main__":
    main()
