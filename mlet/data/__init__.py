"""Data: raw formats -> features -> cache (:class:`CTRArrays`) -> batches (:class:`CTRDataModule`).

Sources: :class:`SyntheticCTR` (in memory) and the file-backed ones, which share one preparation
pipeline (:mod:`mlet.data.pipeline` describes its modules): :class:`CriteoKaggle`, :class:`CriteoTerabyte`,
:class:`Avazu`, :class:`MovieLens100K`, :class:`Tabular`.

Names are imported on first use, so that preparing data (``mlet-prepare``, worker processes)
does not import torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CTRArrays": "mlet.data.arrays",
    "Split": "mlet.data.arrays",
    "CTRDataModule": "mlet.data.datamodule",
    "SyntheticCTR": "mlet.data.synthetic",
    "CriteoKaggle": "mlet.data.criteo",
    "CriteoTerabyte": "mlet.data.criteo",
    "Avazu": "mlet.data.avazu",
    "MovieLens100K": "mlet.data.movielens",
    "Tabular": "mlet.data.tabular",
    "BadLineError": "mlet.data.parsing",
    "PreparedSource": "mlet.data.source",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from mlet.data.arrays import CTRArrays, Split
    from mlet.data.avazu import Avazu
    from mlet.data.criteo import CriteoKaggle, CriteoTerabyte
    from mlet.data.datamodule import CTRDataModule
    from mlet.data.movielens import MovieLens100K
    from mlet.data.parsing import BadLineError
    from mlet.data.source import PreparedSource
    from mlet.data.synthetic import SyntheticCTR
    from mlet.data.tabular import Tabular


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlet.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
