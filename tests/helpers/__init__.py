"""Shared test helpers (``from tests.helpers import ...``; pyproject's ``pythonpath`` puts the
repository root on ``sys.path``): compose the real configs (as the command line would) on tiny data,
run the console scripts. Raw-file writers live in :mod:`tests.helpers.rawdata`, a toy embedding type
in :mod:`tests.helpers.toy`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mlet import sweep

ROOT = Path(__file__).resolve().parents[2]  # the repository (scripts/); configs come from the package
CONFIG_MODULE = "mlet.conf"
sweep.register_resolvers()  # as mlet-train does: the configs use ${mlet.launch_dir:}, ${mlet.job_dir:}, ...

# A run small enough for a unit test: ~2k rows, tiny MLPs, two epochs.
TINY = [
    "data.rows=3000",
    "data.num_fields=5",
    "data.num_dense=3",
    "data.max_cardinality=300",
    "model.bottom_mlp=[8]",
    "model.top_mlp=[16]",
    "embedding.dim=4",
    "embedding.inner_dim=16",
    "datamodule.batch_size=256",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "optimizer.lr=0.01",
]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose like ``mlet-train`` would, with the run's output directory at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def script(name: str) -> str:
    """The installed console script ``name`` (``mlet-train``, ...) of the Python running the tests."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{path}: not installed (pip install -e '.[dev]')"
    return str(path)


def run_script(name: str, args: list[str], cwd: Path, timeout: int = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script ``name`` in a subprocess, in ``cwd``."""
    # the repository root on the path: a subprocess imports tests.helpers (e.g. a toy embedding's _target_)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([script(name), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``mlet-train`` (the installed console script) in a subprocess."""
    return run_script("mlet-train", args, cwd, timeout, env)
