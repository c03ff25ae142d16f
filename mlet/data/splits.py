"""Split protocols: which rows are train, validation, test. Each returns one int8 code per row.

* :func:`dlrm_parts` - facebookresearch/dlrm on Criteo Kaggle: ``divmod(N, 7)`` rows per part,
  the first ``N % 7`` parts one row longer; parts 0-5 train; part 6 cut by ``np.array_split`` into
  test (first, the larger half) then validation.
* :func:`last_file_halves` - DLRM / MLPerf on Criteo Terabyte: every day file but the last
  trains; the last is halved the same way (test first).
* :func:`stratified_folds_sklearn019` / :func:`bars_x4` - BARS ``Criteo_x4`` / ``Avazu_x4``:
  ``StratifiedKFold(n_splits=10, shuffle=True, random_state=2018)`` of scikit-learn 0.19.1 (the
  version the BARS scripts require), fold 0 test, fold 1 validation, folds 2-9 train.
* :func:`random_fractions` - a seeded random permutation cut into fractions (MovieLens, tabular).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
NAMES = ("train", "val", "test")


def dlrm_part_sizes(n: int, parts: int = 7) -> list[int]:
    """Rows per part exactly as facebookresearch/dlrm's ``getCriteoAdData`` splits ``train.txt``."""
    size, extras = divmod(n, parts)
    return [size + (1 if j < extras else 0) for j in range(parts)]


def _halves(n: int) -> tuple[int, int]:
    """``np.array_split(x, 2)`` sizes: the first half gets the odd row."""
    first = -(-n // 2)
    return first, n - first


def dlrm_parts(n: int, parts: int = 7) -> np.ndarray:
    sizes = dlrm_part_sizes(n, parts)
    n_train = sum(sizes[:-1])
    n_test, _ = _halves(sizes[-1])
    codes = np.full(n, VAL, dtype=np.int8)
    codes[:n_train] = TRAIN
    codes[n_train : n_train + n_test] = TEST
    return codes


def last_file_halves(rows_per_file: Sequence[int]) -> np.ndarray:
    n = int(sum(rows_per_file))
    n_train = int(sum(rows_per_file[:-1]))
    n_test, _ = _halves(int(rows_per_file[-1]))
    codes = np.full(n, VAL, dtype=np.int8)
    codes[:n_train] = TRAIN
    codes[n_train : n_train + n_test] = TEST
    return codes


def stratified_folds_sklearn019(labels: np.ndarray, n_splits: int = 10, seed: int = 2018) -> np.ndarray:
    """The test fold of every row under scikit-learn 0.19.1's
    ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)``.

    That version runs, for each class (in sorted order), a ``KFold(n_splits, shuffle=True,
    random_state=seed)`` over the class's members in file order; ``KFold`` shuffles
    ``arange(max(count, n_splits))`` with a fresh ``np.random.RandomState(seed)`` (the same seed for
    every class: the behaviour scikit-learn 0.21 changed) and cuts it into folds of
    ``count // n_splits`` members, the first ``count % n_splits`` folds one larger. Fold 0 holds
    the shuffled positions ``[0, size_0)``, and so on. ``RandomState`` streams are frozen by numpy's
    compatibility policy, so the assignment is reproduced exactly without scikit-learn.
    """
    labels = np.asarray(labels)
    folds = np.zeros(len(labels), dtype=np.int8)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = len(members)
        m = max(count, n_splits)
        order = np.arange(m)
        np.random.RandomState(seed).shuffle(order)
        sizes = np.full(n_splits, m // n_splits, dtype=np.int64)
        sizes[: m % n_splits] += 1
        fold_at = np.repeat(np.arange(n_splits, dtype=np.int8), sizes)  # fold of each shuffled position
        member_fold = np.empty(m, dtype=np.int8)
        member_fold[order] = fold_at
        folds[members] = member_fold[:count]
    return folds


def stratified_fold_sizes_sklearn019(class_counts: Sequence[int], n_splits: int = 10) -> np.ndarray:
    """Rows per fold implied by :func:`stratified_folds_sklearn019` (no shuffling needed)."""
    total = np.zeros(n_splits, dtype=np.int64)
    for count in class_counts:
        sizes = np.full(n_splits, count // n_splits, dtype=np.int64)
        sizes[: count % n_splits] += 1
        total += sizes
    return total


def bars_x4(labels: np.ndarray, seed: int = 2018) -> np.ndarray:
    """BARS x4: fold 0 test, fold 1 validation, folds 2-9 train."""
    folds = stratified_folds_sklearn019(labels, 10, seed)
    codes = np.full(len(folds), TRAIN, dtype=np.int8)
    codes[folds == 0] = TEST
    codes[folds == 1] = VAL
    return codes


def random_fractions(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2018) -> np.ndarray:
    """A seeded permutation: the first ``int(n * f_train)`` rows train, the next ``int(n * f_val)``
    validation, the rest test."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    codes = np.full(n, TEST, dtype=np.int8)
    codes[order[:n_train]] = TRAIN
    codes[order[n_train : n_train + n_val]] = VAL
    return codes
