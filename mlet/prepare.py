"""``mlet-prepare``: run a dataset's preparation on its own (``mlet-train`` does the same before
training: ``prepare()``, then ``load()``).

    mlet-prepare data=criteo_kaggle data.path=/data/criteo/train.txt
    mlet-prepare data=criteo_kaggle data.path=/data/criteo/train.txt data.protocol=bars_x4_001
    mlet-prepare data=movielens100k
    MLET_DATA_DIR=/scratch/cache mlet-prepare data=avazu data.path=/data/avazu/train

Prints the cache directory on the last line of stdout (progress and the summary table go to
stderr). A bad input line stops with one message naming file, line and field (exit status 1).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("mlet.prepare")


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> str | None:
    from mlet.data.movielens import DownloadError
    from mlet.data.pipeline import BadLineError

    source = instantiate(cfg.data)
    prepare = getattr(source, "prepare", None)
    if not callable(prepare):
        arrays = source.load()
        log.info("%s is generated in memory, there is nothing to prepare: %s", type(source).__name__, arrays.summary())
        return None
    try:
        path = prepare()
    except (BadLineError, DownloadError, FileNotFoundError) as exc:
        print(f"mlet-prepare: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(path)
    return str(path)


if __name__ == "__main__":
    main()
