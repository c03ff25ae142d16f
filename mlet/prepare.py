"""``mlet-prepare``: run a dataset's preparation on its own (``mlet-train`` does the same before
training: ``prepare()``, then ``load()``).

    mlet-prepare data=criteo_kaggle data.path=/data/criteo/train.txt
    mlet-prepare data=criteo_kaggle data.path=/data/criteo/train.txt data.protocol=bars_x4_001
    mlet-prepare data=movielens100k
    MLET_DATA_DIR=/scratch/cache mlet-prepare data=avazu data.path=/data/avazu/train

Prints the cache directory on the last line of stdout (progress and the summary table go to
stderr). Errors follow :mod:`mlet.cli`: a bad input line (naming file, line and field), an empty
input file, a missing column or a missing file stop with one line and exit status 2.
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from mlet import cli

log = logging.getLogger("mlet.prepare")


@cli.hydra_app("mlet-prepare", "prepare")
def main(cfg: DictConfig) -> None:
    source = instantiate(cfg.data)
    prepare = getattr(source, "prepare", None)
    if not callable(prepare):
        arrays = source.load()
        log.info("%s is generated in memory, there is nothing to prepare: %s", type(source).__name__, arrays.summary())
        return
    print(prepare())


if __name__ == "__main__":
    main()
