"""Per-run analyses stored in the run record: metrics by training frequency, table spectra.

Plain functions on arrays and tensors; nothing here knows of Lightning, Hydra or files.

* :func:`bucket_metrics`: test AUC and logloss on the rows whose category falls in a
  training-frequency bucket (the rare-category analysis: MLET's claimed gain is largest there).
* :func:`spectrum`: singular values and effective rank of an ``n x d`` table.
* :func:`absent_row_movement`: how far the collapsed rows that a batch did not touch moved in one
  optimiser step (zero for a single-layer table under SGD or a sparse optimiser; MLET moves them
  through ``A A^T G``: its cross-category learning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mlet.metrics import auc, logloss

# Upper edges of the frequency buckets: 0 (never seen in training), 1-10, 11-100, 101-1000, >1000.
DEFAULT_EDGES = (0, 10, 100, 1000)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``[0, 10, 100, 1000]`` -> ``["0", "1-10", "11-100", "101-1000", ">1000"]``."""
    edges = check_edges(edges)
    labels, lo = [], 0
    for hi in edges:
        labels.append(str(hi) if hi == lo else f"{lo}-{hi}")
        lo = hi + 1
    labels.append(f">{edges[-1]}")
    return labels


def check_edges(edges: Sequence[int]) -> list[int]:
    edges = [int(e) for e in edges]
    if not edges or any(e < 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"frequency bucket edges must be increasing non-negative integers, got {list(edges)}")
    return edges


def row_frequencies(cat: np.ndarray, counts: Sequence[np.ndarray], field: int | None = None) -> np.ndarray:
    """Training count of each row's category: of ``field``, or (``None``) of the row's rarest
    field, i.e. the smallest count over the row's categories."""
    cat = np.asarray(cat)
    if cat.ndim != 2 or cat.shape[1] != len(counts):
        raise ValueError(f"cat has shape {cat.shape}, counts has {len(counts)} fields")
    if field is not None:
        return np.asarray(counts[field])[np.asarray(cat[:, field], dtype=np.int64)]
    per_field = np.stack(
        [np.asarray(counts[f])[np.asarray(cat[:, f], dtype=np.int64)] for f in range(cat.shape[1])], axis=1
    )
    return per_field.min(axis=1)


def bucket_metrics(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    cat: np.ndarray,
    counts: Sequence[np.ndarray],
    edges: Sequence[int] = DEFAULT_EDGES,
    field: int | None = None,
) -> list[dict]:
    """AUC and logloss of the rows of each training-frequency bucket.

    Row ``r`` falls in the bucket of :func:`row_frequencies` (``field`` or the rarest field). One
    entry per bucket, in order, also when empty: ``{"bucket", "low", "high", "rows", "positives",
    "auc", "logloss"}`` (``high`` is ``None`` for the last bucket; ``auc`` is ``None`` when the
    bucket lacks a class, ``logloss`` when it is empty).
    """
    edges = check_edges(edges)
    logits = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits).reshape(-1)
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).reshape(-1)
    if len(logits) != len(labels) or len(logits) != len(cat):
        raise ValueError(f"bucket_metrics: {len(logits)} logits, {len(labels)} labels, {len(cat)} rows of cat")
    freq = row_frequencies(cat, counts, field)
    # bucket b holds edges[b-1] < freq <= edges[b]; the last holds freq > edges[-1]
    which = np.searchsorted(np.asarray(edges), freq, side="left")
    out, lo = [], 0
    for b, label in enumerate(bucket_labels(edges)):
        mask = torch.from_numpy(which == b)
        n = int(mask.sum())
        lg, lb = logits[mask], labels[mask]
        a = auc(lg, lb) if n else float("nan")
        out.append({
            "bucket": label,
            "low": lo,
            "high": edges[b] if b < len(edges) else None,
            "rows": n,
            "positives": int(lb.sum()) if n else 0,
            "auc": None if math.isnan(a) else a,
            "logloss": logloss(lg, lb) if n else None,
        })
        lo = edges[b] + 1 if b < len(edges) else lo
    return out


@torch.no_grad()
def gram(table: torch.Tensor, chunk_rows: int = 1 << 20) -> torch.Tensor:
    """``table^T table`` in float64, accumulated over row chunks (never a float64 copy of a big table)."""
    d = table.shape[1]
    g = torch.zeros(d, d, dtype=torch.float64, device=table.device)
    for lo in range(0, table.shape[0], chunk_rows):
        part = table[lo : lo + chunk_rows].double()
        g += part.T @ part
    return g


def effective_rank(singular_values: torch.Tensor | Sequence[float]) -> float:
    """Roy & Vetterli (2007) effective rank: ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` (the
    singular values normalised to a distribution, ``H`` the Shannon entropy in nats). It lies in
    ``[1, rank]``; ``0.0`` for an all-zero table."""
    s = torch.as_tensor(singular_values, dtype=torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def spectrum(table: torch.Tensor) -> dict:
    """Singular values (descending) and effective rank of an ``n x d`` table.

    Computed from the ``d x d`` Gram matrix in float64 (``s_i = sqrt(eig_i(W^T W))``, by
    ``torch.linalg.svdvals`` of the symmetric Gram matrix): cheap for tall tables with small d.
    Singular values below about ``1e-8 * s_max`` are at the Gram route's precision floor.
    """
    if table.dim() != 2:
        raise ValueError(f"spectrum: a 2-d table is needed, got shape {tuple(table.shape)}")
    eig = torch.linalg.svdvals(gram(table.detach()))
    s = eig.clamp_min(0).sqrt().sort(descending=True).values
    return {
        "rows": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "singular_values": [float(x) for x in s],
        "effective_rank": effective_rank(s),
    }


def absent_row_movement(before: torch.Tensor, after: torch.Tensor, present: torch.Tensor) -> dict | None:
    """Movement of the rows absent from a batch between two snapshots ``[R, d]`` of sampled
    collapsed rows; ``present[R]`` marks the sampled rows the batch touched.

    Returns the mean L2 movement of the absent rows, the same relative to their norm, and the
    movement of the present rows for scale; ``None`` when every sampled row was present.
    """
    absent = ~present
    if not bool(absent.any()):
        return None
    delta = (after - before).double().norm(dim=1)
    norm = before.double().norm(dim=1).clamp_min(1e-12)
    out = {
        "absent_rows": int(absent.sum()),
        "absent_mean": float(delta[absent].mean()),
        "absent_relative_mean": float((delta[absent] / norm[absent]).mean()),
    }
    out["present_mean"] = float(delta[present].mean()) if bool(present.any()) else None
    return out
