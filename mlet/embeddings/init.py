"""How embedding tables start: one rule for every embedding type.

``table_init`` says how an entry of the (collapsed, deployed) ``n_f x d`` table is drawn:

* ``uniform``: uniform in ``+-sqrt(1/n_f)`` per field (DLRM's table init; variance ``1/(3 n_f)``,
  so a field with few categories gets large vectors: +-0.58 for a 3-category field);
  ``init_std`` must be null.
* ``normal``: ``N(0, init_std^2)`` for every field (BARS/FuxiCTR: ``init_std=1e-4``).

A single-layer table is drawn by this rule directly. MLET and low-rank embeddings draw ``A`` by it
and choose ``B`` so that the product ``A B`` starts at the same scale (``mlet.embeddings.mlet``):
single-layer and MLET arms of one comparison start from the same point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TABLE_INITS = ("uniform", "normal")


def check_table_init(table_init: str, init_std: float | None) -> None:
    if table_init not in TABLE_INITS:
        raise ValueError(f"embedding.table_init must be one of {', '.join(TABLE_INITS)}; got {table_init!r}")
    if table_init == "normal":
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
            raise ValueError(f"embedding.init_std must be a positive number with table_init=normal; got {init_std!r}")
    elif init_std is not None:
        raise ValueError(
            f"embedding.init_std={init_std!r} has no effect with table_init=uniform (its scale is +-sqrt(1/n_f)): "
            "set it to null, or use table_init=normal"
        )


def init_table_(
    weight: torch.Tensor, cardinalities: Sequence[int], table_init: str, init_std: float | None = None
) -> None:
    """Fill ``weight`` (the concatenated ``sum_f n_f x w`` table) field by field, in place."""
    check_table_init(table_init, init_std)
    with torch.no_grad():
        if table_init == "normal":
            weight.normal_(0.0, float(init_std))
            return
        start = 0
        for n in cardinalities:
            bound = math.sqrt(1.0 / n)
            weight[start : start + n].uniform_(-bound, bound)
            start += n


def balance_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Re-factor ``a`` (n x k) and ``b`` (k x d) in place into a balanced pair with the same product.

    With ``P = a b = U S V^T`` (thin SVD, rank r = min(n, k, d)) and ``Q`` a random k x r matrix
    with orthonormal columns: ``a = U S^(1/2) Q^T``, ``b = Q S^(1/2) V^T``. Then ``a b = P`` and
    ``a^T a = Q S Q^T = b b^T``. Both factors have rank r (at most d): a balanced pair cannot be
    of higher rank, since ``b b^T`` (k x k) has rank at most d.
    """
    with torch.no_grad():
        product = a.double() @ b.double()
        u, s, vh = torch.linalg.svd(product, full_matrices=False)
        r = min(a.shape[0], a.shape[1], b.shape[1])
        u, s, vh = u[:, :r], s[:r], vh[:r]
        q, _ = torch.linalg.qr(torch.randn(a.shape[1], r, dtype=torch.float64))
        root = s.sqrt()
        a.copy_((u * root) @ q.T)
        b.copy_((q * root) @ vh)
