"""``budget``: a reduction type's knob chosen from a byte budget instead of given.

``budget`` is the deployed embedding's size as a fraction of a float32 single-layer table of the
same d (``sum_f n_f * d * 4`` bytes): ``budget=0.0625`` asks for 1/16 of it. A type with a budget
computes its deployed bytes for each candidate value of its knob (``buckets``, ``remainder_rows``,
``alpha``, ``tt_rank``) from the cardinalities, and takes the candidate with the largest size
within the budget; where no candidate fits (e.g. mixed dimensions cannot go below one column per
row), the smallest one, so that the run still records its real ``inference_bytes``. One sweep then
sets the same budgets for every type on every dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


def budget_problem(cfg: Mapping[str, Any], knob: str) -> str | None:
    """Exactly one of ``knob`` and ``budget`` is set; a budget is a fraction in (0, 1]."""
    budget, value = cfg.get("budget"), cfg.get(knob)
    if budget is None:
        return None
    if (value is not None) == (budget is not None):
        return (f"embedding.{knob}={value!r} and embedding.budget={budget!r}: set one of them "
                f"(the budget chooses {knob}); the other null")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        return f"embedding.budget must be a fraction in (0, 1] of the single-layer table's bytes, got {budget!r}"
    return None


def geometric(top: int, ratio: float = 1.01) -> list[int]:
    """Integers 1 .. top, about ``ratio`` apart (every integer while they are closer)."""
    out, x = {1, int(top)}, 1.0
    while x < top:
        out.add(int(round(x)))
        x *= ratio
    return sorted(v for v in out if 1 <= v <= top)


def choose(candidates: Iterable, bytes_of: Callable[[Any], int], cardinalities: Sequence[int], dim: int,
           budget: float) -> Any:
    """The candidate with the largest deployed bytes within ``budget`` (else the smallest)."""
    target = budget * sum(cardinalities) * dim * 4
    sized = [(bytes_of(c), i, c) for i, c in enumerate(candidates)]
    fitting = [s for s in sized if s[0] <= target]
    return (max(fitting, key=lambda s: (s[0], -s[1])) if fitting else min(sized))[2]
