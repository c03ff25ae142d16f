"""Split protocols: exact sizes and row assignments."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.rawdata import sklearn019_test_folds, split_names_dlrm

from mlet.data import splits as S


@pytest.mark.parametrize("n", [7, 8, 14, 100, 697, 1001])
def test_dlrm_parts_match_reference(n):
    names = split_names_dlrm(n)
    codes = S.dlrm_parts(n)
    assert [S.NAMES[c] for c in codes] == names


def test_dlrm_parts_of_criteo_kaggle():
    n = 45_840_617
    assert S.dlrm_part_sizes(n) == [6_548_660] * 4 + [6_548_659] * 3
    codes = S.dlrm_parts(n)
    sizes = np.bincount(codes, minlength=3)
    assert sizes.tolist() == [39_291_958, 3_274_329, 3_274_330]  # train, val, test (test = first half)
    assert codes[39_291_958] == S.TEST and codes[-1] == S.VAL


def test_last_file_halves():
    codes = S.last_file_halves([5, 4, 7])
    assert [S.NAMES[c] for c in codes] == ["train"] * 9 + ["test"] * 4 + ["val"] * 3


@pytest.mark.parametrize("n,rate,seed", [(1000, 0.3, 2018), (257, 0.5, 2018), (95, 0.05, 7), (12, 0.5, 2018)])
def test_stratified_folds_match_sklearn_0_19_1(n, rate, seed):
    rng = np.random.default_rng(n)
    labels = (rng.random(n) < rate).astype(np.float64)
    labels[0] = 1.0  # at least one of each class
    labels[1] = 0.0
    expected = sklearn019_test_folds(labels, 10, seed)
    np.testing.assert_array_equal(S.stratified_folds_sklearn019(labels, 10, seed), expected)
    codes = S.bars_x4(labels, seed) if seed == 2018 else None
    if codes is not None:
        np.testing.assert_array_equal(codes == S.TEST, expected == 0)
        np.testing.assert_array_equal(codes == S.VAL, expected == 1)


def test_bars_sizes_match_published_avazu_x4():
    # Avazu train: 40,428,967 rows, 6,865,066 clicks. BARS publishes Avazu_x4 as
    # 32,343,172 / 4,042,897 / 4,042,898 (train / validation / test), which is what
    # scikit-learn 0.19.1 gives (a per-class KFold); scikit-learn >= 0.22 would not.
    folds = S.stratified_fold_sizes_sklearn019([40_428_967 - 6_865_066, 6_865_066])
    assert (folds[2:].sum(), folds[1], folds[0]) == (32_343_172, 4_042_897, 4_042_898)


def test_random_fractions():
    codes = S.random_fractions(1003, (0.8, 0.1, 0.1), seed=1)
    assert np.bincount(codes, minlength=3).tolist() == [802, 100, 101]
    np.testing.assert_array_equal(codes, S.random_fractions(1003, (0.8, 0.1, 0.1), seed=1))
    with pytest.raises(ValueError):
        S.random_fractions(10, (0.5, 0.1, 0.1))
