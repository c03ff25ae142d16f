"""The in-memory / on-disk form every dataset reaches before training.

A :class:`CTRArrays` holds, per split, three aligned arrays (possibly ``np.memmap``):

* ``dense[N, D]`` float32 (already transformed, e.g. ``log(x + 1)``),
* ``cat[N, F]`` integer category indices, field ``f`` in ``0 .. cardinalities[f] - 1``,
* ``label[N]`` float32 in {0, 1},

plus the schema (field names, cardinalities) and, per field, how often each category occurs in
the training split (``counts``; the rare-category analysis buckets test rows by it).

On disk (``save``/``load``) it is a directory holding ``meta.json`` and ``.npy`` files, loaded
memory-mapped, so a dataset larger than RAM trains by slicing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
ARRAYS = ("dense", "cat", "label")


@dataclass
class Split:
    dense: np.ndarray
    cat: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.label)
        if self.dense.ndim != 2 or self.cat.ndim != 2 or self.label.ndim != 1:
            raise ValueError("a split needs dense[N, D], cat[N, F] and label[N]")
        if len(self.dense) != n or len(self.cat) != n:
            raise ValueError(f"split arrays disagree in length: {len(self.dense)}, {len(self.cat)}, {n}")

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: np.ndarray) -> "Split":
        return Split(self.dense[index], self.cat[index], self.label[index])


@dataclass
class CTRArrays:
    name: str
    dense_names: list[str]
    cat_names: list[str]
    cardinalities: list[int]
    splits: dict[str, Split]
    counts: list[np.ndarray] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.cat_names) != len(self.cardinalities):
            raise ValueError("one cardinality per categorical field is needed")
        for name, split in self.splits.items():
            if split.cat.shape[1] != len(self.cat_names) or split.dense.shape[1] != len(self.dense_names):
                raise ValueError(
                    f"split {name!r} has {split.cat.shape[1]} categorical / {split.dense.shape[1]} dense columns, "
                    f"the schema names {len(self.cat_names)} / {len(self.dense_names)}"
                )

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    @property
    def num_fields(self) -> int:
        return len(self.cat_names)

    def summary(self) -> dict:
        out = {
            "name": self.name,
            "dense_fields": self.num_dense,
            "categorical_fields": self.num_fields,
            "total_categories": int(sum(self.cardinalities)),
        }
        for name, split in self.splits.items():
            out[f"{name}_rows"] = len(split)
            out[f"{name}_positive_rate"] = round(float(np.mean(split.label)), 4) if len(split) else None
        return out

    # ---- on disk -------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write arrays and ``meta.json`` into ``directory`` (``meta.json`` last: it marks completion)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, split in self.splits.items():
            for key in ARRAYS:
                np.save(directory / f"{name}.{key}.npy", np.ascontiguousarray(getattr(split, key)))
        if self.counts is not None:
            np.save(directory / "counts.npy", np.concatenate([np.asarray(c, dtype=np.int64) for c in self.counts]))
        meta = {
            **self.meta,
            "name": self.name,
            "dense_names": self.dense_names,
            "cat_names": self.cat_names,
            "cardinalities": [int(c) for c in self.cardinalities],
            "splits": {k: len(v) for k, v in self.splits.items()},
            "has_counts": self.counts is not None,
        }
        tmp = directory / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, directory / "meta.json")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "CTRArrays":
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no prepared dataset here (meta.json is missing)")
        meta = json.loads(meta_path.read_text())
        mode = "r" if mmap else None
        splits = {
            name: Split(*(np.load(directory / f"{name}.{key}.npy", mmap_mode=mode) for key in ARRAYS))
            for name in meta["splits"]
        }
        counts = None
        if meta.get("has_counts"):
            flat = np.load(directory / "counts.npy", mmap_mode=mode)
            counts = np.split(flat, np.cumsum(meta["cardinalities"])[:-1])
        return cls(
            name=meta["name"],
            dense_names=list(meta["dense_names"]),
            cat_names=list(meta["cat_names"]),
            cardinalities=list(meta["cardinalities"]),
            splits=splits,
            counts=counts,
            meta=meta,
        )


def training_counts(cat: np.ndarray, cardinalities: list[int]) -> list[np.ndarray]:
    """Occurrences of each category of each field in ``cat[N, F]``."""
    return [np.bincount(np.asarray(cat[:, f], dtype=np.int64), minlength=n) for f, n in enumerate(cardinalities)]
