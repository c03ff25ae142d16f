"""Configs of the data group and the ``mlet-prepare`` entry point."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from tests.helpers.rawdata import write_movielens

from tests.helpers import run_script

CONF = Path(str(files("mlet.conf")))  # the packaged configs, as mlet-prepare finds them
SOURCES = {
    "criteo_kaggle": "mlet.data.criteo.CriteoKaggle",
    "criteo_terabyte": "mlet.data.criteo.CriteoTerabyte",
    "avazu": "mlet.data.avazu.Avazu",
    "movielens100k": "mlet.data.movielens.MovieLens100K",
    "tabular": "mlet.data.tabular.Tabular",
    "synthetic": "mlet.data.synthetic.SyntheticCTR",
}


def compose_prepare(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mlet.conf", version_base="1.3"):
        return compose(config_name="prepare", overrides=overrides)


def test_every_data_config_exists():
    assert {p.stem for p in (CONF / "data").glob("*.yaml")} == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_data_config_instantiates(name, tmp_path):
    extra = {
        "criteo_kaggle": ["data.path=/raw/train.txt"],
        "criteo_terabyte": ["data.path=/raw/terabyte"],
        "avazu": ["data.path=/raw/avazu/train"],
        "movielens100k": [],
        "tabular": ["data.path=/raw/t.csv", "data.label=y", "data.categorical=[a,b]"],
        "synthetic": [],
    }[name]
    cfg = compose_prepare([f"data={name}", *extra])
    assert cfg.data._target_ == SOURCES[name]
    source = instantiate(cfg.data)
    assert type(source).__name__ == SOURCES[name].rsplit(".", 1)[1]
    if name != "synthetic":
        assert str(source.cache_dir) == os.environ.get("MLET_DATA_DIR", "data_cache")
        assert source.on_bad_line == "error"
    GlobalHydra.instance().clear()


def test_path_is_mandatory():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_prepare(["data=criteo_kaggle"])
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.data.path
    GlobalHydra.instance().clear()


@pytest.mark.slow  # starts processes
def test_cli_prepares_and_writes_nothing_in_the_working_directory(tmp_path):
    folder = write_movielens(tmp_path / "ml", n_ratings=200)
    work = tmp_path / "work"
    work.mkdir()
    env = {"MLET_DATA_DIR": str(tmp_path / "cache")}
    run = run_script("mlet-prepare", ["data=movielens100k", f"data.path={folder}"], cwd=work, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path / "cache" and (path / "meta.json").is_file()
    assert "positive rate" in run.stderr  # the summary table
    assert list(work.iterdir()) == []
    # a bad line: one message, exit status 2
    inter = folder / "ml-100k.inter"
    inter.write_text(inter.read_text() + "1\t2\tx\t3\n")
    run = run_script("mlet-prepare", ["data=movielens100k", f"data.path={folder}", "data.progress=false"],
                     cwd=work, env=env, timeout=120)
    assert run.returncode == 2
    assert f"mlet-prepare: error: {inter}, line 202, field 3 (rating): not a number: 'x'" in run.stderr
    assert "Traceback" not in run.stderr
