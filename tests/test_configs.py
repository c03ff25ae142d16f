"""Every config file composes, and every option of every group instantiates on tiny data."""

from importlib.resources import files

import pytest
import torch
from hydra.utils import instantiate

from mlet.job import build
from tests.helpers import CONFIG_MODULE, TINY, compose_cfg

CONFIGS = files(CONFIG_MODULE)  # the packaged configs, as mlet-train finds them
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in {"hydra", "experiment", "sweep", "__pycache__"})
OPTIONS = [(g, f.name.removesuffix(".yaml")) for g in GROUPS
           for f in sorted(CONFIGS.joinpath(g).iterdir(), key=lambda f: f.name) if f.name.endswith(".yaml")]


def test_groups_exist():
    assert {"data", "model", "embedding", "trainer", "logger"} <= set(GROUPS)
    assert {("embedding", "single"), ("embedding", "mlet"), ("logger", "wandb"), ("logger", "none")} <= set(OPTIONS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    assert cfg is not None
    if group in {"embedding", "model", "optimizer", "datamodule"} and cfg[group] is not None:
        assert "_target_" in cfg[group]


@pytest.mark.parametrize("embedding", ["single", "mlet"])
def test_build_from_config(embedding, tmp_path):
    cfg = compose_cfg([*TINY, f"embedding={embedding}"], tmp_path)
    datamodule, module = build(cfg)
    assert module.embedding.dim == 4
    dense, cat, label = next(iter(datamodule.train_dataloader()))
    assert module(dense, cat).shape == label.shape
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == 2


def test_experiment_configs_compose(tmp_path):
    names = sorted(f.name.removesuffix(".yaml") for f in CONFIGS.joinpath("experiment").iterdir() if f.name.endswith(".yaml"))
    assert names
    for name in names:
        cfg = compose_cfg([f"experiment={name}"], tmp_path)
        assert cfg.model is not None
