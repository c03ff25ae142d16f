"""Shared test helpers: compose the real configs (as the command line would) on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mlet.train import CONFIG_DIR

# Tiny tensors: one thread avoids thread start-up costs and keeps the suite steady on a loaded machine.
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = CONFIG_DIR.parent

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
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``mlet-train`` (as ``python -m mlet.train``) in a subprocess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlet.train", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
