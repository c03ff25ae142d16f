"""A synthetic CTR dataset in the Criteo mould, built so that MLET's claim can be tested.

Schema: ``num_dense`` dense fields (log-normal counts, stored as ``log(x + 1)``) and ``num_fields``
categorical fields whose cardinalities are log-spaced between ``min_cardinality`` and
``max_cardinality``. Categories are drawn with Zipf frequencies (probability of the r-th most
frequent category proportional to ``r ** -zipf_exponent``), so most categories are rare.

Labels come from a hidden teacher. The teacher's vector for category c of field f is
``Z_f[c] U_f + noise``: every category of a field lives near one ``latent_rank``-dimensional
subspace ``U_f`` shared by all of them, and only ``category_noise`` is its own. A learner can find
``U_f`` from the frequent categories; a rare category, seen a handful of times, is learnable only
through that shared structure. The logit is an FM-style sum of pairwise inner products of the
fields' teacher vectors plus first-order terms and a dense linear part, standardised to
``signal_std`` and shifted to the requested ``positive_rate``; labels are Bernoulli draws.

Everything is a deterministic function of ``seed`` and the parameters.
"""

from __future__ import annotations

import numpy as np

from mlet.data.arrays import CTRArrays, Split, training_counts


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bias_for_rate(logit: np.ndarray, rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from mlet.metrics import auc

    import torch

    return auc(torch.from_numpy(scores), torch.from_numpy(labels))


class SyntheticCTR:
    """Deterministic synthetic CTR data; ``load()`` returns train/val/test :class:`CTRArrays`."""

    def __init__(
        self,
        rows: int = 200_000,
        num_dense: int = 8,
        num_fields: int = 16,
        min_cardinality: int = 4,
        max_cardinality: int = 50_000,
        zipf_exponent: float = 1.1,
        latent_rank: int = 4,
        teacher_dim: int = 16,
        category_noise: float = 0.2,
        signal_std: float = 2.0,
        positive_rate: float = 0.25,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
    ) -> None:
        if rows < 10:
            raise ValueError(f"data.rows must be at least 10, got {rows}")
        if num_fields < 1 or num_dense < 0:
            raise ValueError("data.num_fields must be >= 1 and data.num_dense >= 0")
        if not 1 <= min_cardinality <= max_cardinality:
            raise ValueError("data needs 1 <= min_cardinality <= max_cardinality")
        if not 0 < positive_rate < 1:
            raise ValueError(f"data.positive_rate must be in (0, 1), got {positive_rate}")
        if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-6 or min(split_fractions) <= 0:
            raise ValueError(f"data.split_fractions must be three positive numbers summing to 1, got {split_fractions}")
        self.rows = int(rows)
        self.num_dense = int(num_dense)
        self.cardinalities = [
            int(round(c)) for c in np.geomspace(min_cardinality, max_cardinality, num_fields)
        ]
        self.zipf_exponent = zipf_exponent
        self.latent_rank = latent_rank
        self.teacher_dim = teacher_dim
        self.category_noise = category_noise
        self.signal_std = signal_std
        self.positive_rate = positive_rate
        self.split_fractions = tuple(split_fractions)
        self.seed = int(seed)

    def _draw_categories(self, rng: np.random.Generator) -> np.ndarray:
        cat = np.empty((self.rows, len(self.cardinalities)), dtype=np.int32)
        for f, n in enumerate(self.cardinalities):
            p = np.arange(1, n + 1, dtype=np.float64) ** -self.zipf_exponent
            cdf = np.cumsum(p / p.sum())
            rank = np.minimum(np.searchsorted(cdf, rng.random(self.rows)), n - 1)
            cat[:, f] = rng.permutation(n)[rank]  # category ids carry no frequency order
        return cat

    def _teacher_logit(self, rng: np.random.Generator, cat: np.ndarray, dense: np.ndarray) -> np.ndarray:
        r, t = self.latent_rank, self.teacher_dim
        field_vectors = []
        for f, n in enumerate(self.cardinalities):
            shared = rng.standard_normal((n, r)) @ (rng.standard_normal((r, t)) / np.sqrt(r))
            table = shared + self.category_noise * rng.standard_normal((n, t))
            field_vectors.append(table[cat[:, f]] / np.sqrt(t))
        v = np.stack(field_vectors, axis=1)  # [N, F, t]
        s = v.sum(axis=1)
        pairwise = 0.5 * ((s * s).sum(axis=1) - (v * v).sum(axis=(1, 2)))
        first_order = v.sum(axis=2).sum(axis=1) / np.sqrt(t)
        logit = pairwise + first_order
        if self.num_dense:
            logit = logit + dense @ (rng.standard_normal(self.num_dense) / np.sqrt(self.num_dense))
        logit = (logit - logit.mean()) / (logit.std() + 1e-12) * self.signal_std
        return logit + _bias_for_rate(logit, self.positive_rate)

    def load(self) -> CTRArrays:
        rng = np.random.default_rng(self.seed)
        cat = self._draw_categories(rng)
        raw_dense = np.floor(rng.lognormal(mean=1.0, sigma=1.5, size=(self.rows, self.num_dense)))
        dense = np.log1p(raw_dense).astype(np.float32)
        centred = (dense - dense.mean(axis=0)) / (dense.std(axis=0) + 1e-6) if self.num_dense else dense
        logit = self._teacher_logit(rng, cat, centred)
        label = (rng.random(self.rows) < _sigmoid(logit)).astype(np.float32)

        order = rng.permutation(self.rows)
        n_train = int(self.rows * self.split_fractions[0])
        n_val = int(self.rows * self.split_fractions[1])
        parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
        splits = {name: Split(dense[np.sort(idx)], cat[np.sort(idx)], label[np.sort(idx)]) for name, idx in parts.items()}
        return CTRArrays(
            name="synthetic",
            dense_names=[f"I{i + 1}" for i in range(self.num_dense)],
            cat_names=[f"C{i + 1}" for i in range(len(self.cardinalities))],
            cardinalities=list(self.cardinalities),
            splits=splits,
            counts=training_counts(splits["train"].cat, self.cardinalities),
            meta={
                "generator": "synthetic",
                "seed": self.seed,
                "zipf_exponent": self.zipf_exponent,
                # the best AUC any model can reach on the test split: the teacher's own
                "teacher_test_auc": _auc(logit[np.sort(parts["test"])], splits["test"].label),
            },
        )
