"""The table-reduction embedding types (hash, QR, mixed dimensions, tensor-train, with MLET where
defined): outputs against hand-computed references on tiny tables, deployed bytes counted by hand,
invalid configs refused in one line naming the keys."""

import math
import os
import subprocess
import sys

import pytest
import torch

from mlet.embeddings import (
    HashEmbedding, HashMLETEmbedding, MixedDimEmbedding, MixedDimMLETEmbedding, QREmbedding, SingleLayerEmbedding,
    TTEmbedding,
)
from mlet.embeddings.hashing import field_hash

P, M, S = 2**31 - 1, 48271, 0x9E3779B1


def h(i, f, buckets):  # the documented hash, in Python integers
    return ((M * (i % P) + ((f + 1) * S) % P) % P) % buckets


def shuffle_(emb, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in emb.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return emb


def test_hash_matches_the_documented_formula_without_overflow():
    big = torch.tensor([0, 1, 5, 2**31 - 2, 2**31, 2**40 + 7, 2**62 + 3])
    for f in range(3):
        got = field_hash(big, torch.full_like(big, f), 97).tolist()
        assert got == [h(int(i), f, 97) for i in big]
        assert all(0 <= g < 97 for g in got)


def test_hash_embedding_by_hand():
    emb = shuffle_(HashEmbedding([3, 10], dim=2, buckets=4))
    w = emb.table.weight
    idx = torch.tensor([[2, 7], [0, 9], [1, 0]])
    out = emb(idx)
    for b, (i0, i1) in enumerate(idx.tolist()):
        assert torch.equal(out[b, 0], w[i0])  # 3 <= 4 categories: the field keeps its own rows
        assert torch.equal(out[b, 1], w[3 + h(i1, 1, 4)])  # hashed into rows 3..6
    assert emb.inference_parameters == (3 + 4) * 2
    assert emb.inference_bytes == (3 + 4) * 2 * 4  # float32
    rows = emb.rows(idx).reshape(-1)
    assert torch.equal(emb.collapsed_rows(rows), out.reshape(-1, 2))


@pytest.mark.slow
def test_hash_is_the_same_in_processes_with_different_hash_seeds():
    code = ("import torch; from mlet.embeddings import HashEmbedding; e = HashEmbedding([5, 10**9, 3**20], 2, 1000);"
            "x = torch.arange(0, 3**20, 3**20 // 997).remainder(10**9); i = torch.stack([x % 5, x, x], 1);"
            "print(e.table_rows(e.rows(i).reshape(-1)).tolist())")
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 1000


def test_hash_mlet_collapse_equals_training_output():
    emb = shuffle_(HashMLETEmbedding([3, 50, 400], dim=4, buckets=16, inner_dim=8))
    gen = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randint(0, n, (64,), generator=gen) for n in (3, 50, 400)], 1)
    collapsed = emb.collapse()
    assert isinstance(collapsed, HashEmbedding)
    assert (emb(idx) - collapsed(idx)).abs().max() < 1e-5
    # A has min(n_f, buckets) rows per field; the deployed table d columns of them
    assert emb.pair.inner.weight.shape == (3 + 16 + 16, 8)
    assert emb.train_parameters == 35 * 8 + 3 * 8 * 4
    assert emb.inference_bytes == collapsed.inference_bytes == 35 * 4 * 4


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_by_hand(operation):
    emb = shuffle_(QREmbedding([2, 7], dim=4, remainder_rows=3, operation=operation))
    q, r, plain = emb.quotient.weight, emb.remainder.weight, emb.plain.weight
    width = 2 if operation == "concat" else 4
    assert q.shape == (3, width) and r.shape == (3, width) and plain.shape == (2, 4)  # ceil(7/3) = 3 quotients
    out = emb(torch.tensor([[1, 5], [0, 6]]))
    assert torch.equal(out[0, 0], plain[1]) and torch.equal(out[1, 0], plain[0])  # 2 <= 3: own table
    for b, i in enumerate((5, 6)):
        qi, ri = q[i // 3], r[i % 3]
        expected = {"mult": qi * ri, "add": qi + ri, "concat": torch.cat([qi, ri])}[operation]
        assert torch.allclose(out[b, 1], expected)
    assert emb.inference_bytes == 4 * (2 * 4 + (3 + 3) * width)
    rows = torch.arange(9)
    assert torch.allclose(emb.collapsed_rows(rows)[2 + 5], emb(torch.tensor([[0, 5]]))[0, 1])


def test_qr_distinct_indices_get_distinct_vectors():
    emb = shuffle_(QREmbedding([100], dim=4, remainder_rows=7, operation="add"))
    vectors = emb(torch.arange(100)[:, None])[:, 0]
    assert torch.unique(vectors, dim=0).shape[0] == 100


def test_tt_by_hand():
    emb = shuffle_(TTEmbedding([2, 30], dim=4, tt_rank=2, tt_cores=2, tt_dim_factors=[2, 2]))
    assert emb.plain_fields == [0] and emb.reduced_fields == [1]  # 2 x 4 table is smaller than its cores
    assert emb.row_shapes == [[5, 6]]
    g1 = emb.cores[0][0].weight.detach().view(5, 1, 2, 2)  # r0 x d1 x r1
    g2 = emb.cores[0][1].weight.detach().view(6, 2, 2, 1)  # r1 x d2 x r2
    out = emb(torch.tensor([[1, 13]]))[0]
    assert torch.equal(out[0], emb.plain.weight[1])
    i1, i2 = divmod(13, 6)
    expected = torch.tensor([[sum(g1[i1, 0, a, s] * g2[i2, s, b, 0] for s in range(2)) for b in range(2)]
                             for a in range(2)]).reshape(4)
    assert torch.allclose(out[1], expected, atol=1e-6)
    assert emb.inference_bytes == 4 * (2 * 4 + 5 * 1 * 2 * 2 + 6 * 2 * 2 * 1)


def test_mixed_dim_by_hand():
    emb = shuffle_(MixedDimEmbedding([4, 400], dim=4, alpha=0.5))
    assert emb.field_dims == [4, 1]  # round(4 * (4/400)^0.5) = 0 -> at least 1
    out = emb(torch.tensor([[3, 123]]))[0]
    assert torch.equal(out[0], emb.tables[0].weight[3])  # d_f = d: no projection
    assert torch.allclose(out[1], emb.projections[1].weight[:, 0] * emb.tables[1].weight[123, 0])
    assert emb.inference_bytes == 4 * (4 * 4 + 400 * 1 + 1 * 4)


def test_mixed_dim_mlet_collapses_to_mixed_dim():
    emb = shuffle_(MixedDimMLETEmbedding([4, 40, 400], dim=4, alpha=0.5, inner_dim=8))
    collapsed = emb.collapse()
    assert type(collapsed) is MixedDimEmbedding
    idx = torch.stack([torch.arange(64) % n for n in (4, 40, 400)], 1)
    assert (emb(idx) - collapsed(idx)).abs().max() < 1e-4
    assert emb.inference_bytes == collapsed.inference_bytes


INIT_CASES = [
    (HashEmbedding, {"buckets": 5000}),
    (HashMLETEmbedding, {"buckets": 5000, "inner_dim": 32}),
    (QREmbedding, {"remainder_rows": 100, "operation": "mult"}),
    (QREmbedding, {"remainder_rows": 100, "operation": "add"}),
    (QREmbedding, {"remainder_rows": 100, "operation": "concat"}),
    (TTEmbedding, {"tt_rank": 4}),
    (MixedDimEmbedding, {"alpha": 0.3}),
    (MixedDimMLETEmbedding, {"alpha": 0.3, "inner_dim": 32}),
]


@pytest.mark.parametrize("cls,kwargs", INIT_CASES)
@pytest.mark.parametrize("std", [1e-2, 1e-4])
def test_init_follows_the_table_rule(cls, kwargs, std):
    """An output entry starts at std ``init_std`` (embedding_init=normal_...), as a single-layer table."""
    torch.manual_seed(0)
    cards = [20000, 20000]
    emb = cls(cards, 16, table_init="normal", init_std=std, **kwargs)
    idx = torch.stack([torch.randperm(n)[:4000] for n in cards], 1)
    measured = emb(idx).std().item()
    assert 0.8 * std < measured < 1.25 * std, measured


@pytest.mark.parametrize("cls,kwargs", INIT_CASES)
def test_uniform_init_is_accepted(cls, kwargs):
    emb = cls([50, 20000], 16, table_init="uniform", init_std=None, **kwargs)
    assert emb(torch.tensor([[1, 2]])).abs().max() < 1.0


@pytest.mark.parametrize("cls,kwargs,keys", [
    (HashEmbedding, {"buckets": 0}, ["embedding.buckets"]),
    (HashMLETEmbedding, {"buckets": 10, "inner_dim": 4}, ["embedding.inner_dim", "embedding.dim"]),
    (QREmbedding, {"remainder_rows": 0}, ["embedding.remainder_rows"]),
    (QREmbedding, {"remainder_rows": 4, "operation": "max"}, ["embedding.operation"]),
    (QREmbedding, {"remainder_rows": 4, "operation": "concat", "dim": 7}, ["embedding.operation", "embedding.dim"]),
    (TTEmbedding, {"tt_rank": 0}, ["embedding.tt_rank"]),
    (TTEmbedding, {"tt_rank": 2, "dim": 7}, ["embedding.dim", "embedding.tt_cores"]),
    (TTEmbedding, {"tt_rank": 2, "tt_dim_factors": [2, 2, 2]}, ["embedding.dim", "embedding.tt_dim_factors"]),
    (TTEmbedding, {"tt_rank": 2, "tt_cores": 1}, ["embedding.tt_cores"]),
    (MixedDimEmbedding, {"alpha": -1}, ["embedding.alpha"]),
    (MixedDimMLETEmbedding, {"alpha": 0.2, "inner_dim": 4}, ["embedding.inner_dim", "embedding.dim"]),
])
def test_invalid_configs_are_refused_in_one_line(cls, kwargs, keys):
    cfg = {"dim": 16, **kwargs}
    problem = cls.config_problem(cfg)
    assert problem and "\n" not in problem and all(k in problem for k in keys), problem
    with pytest.raises(ValueError) as info:
        cls([10, 1000], **cfg)
    assert str(info.value) == problem


@pytest.mark.parametrize("cls,kwargs", INIT_CASES)
def test_valid_configs_have_no_problem_and_sizes_agree(cls, kwargs):
    emb = cls([10, 1000, 30000], 16, **kwargs)
    assert cls.config_problem({"dim": 16, **kwargs}) is None
    deployed = emb.collapse()
    assert emb.inference_bytes == sum(t.numel() * t.element_size() for t in deployed.state_dict().values())
    assert emb.inference_parameters == sum(p.numel() for p in deployed.parameters())
    assert emb.inference_bytes < 4 * SingleLayerEmbedding([10, 1000, 30000], 16).inference_parameters


@pytest.mark.parametrize("cls,kwargs", INIT_CASES)
def test_arm_and_label_follow_the_interface(cls, kwargs):
    emb = cls([10, 1000], 16, **kwargs)
    cfg = {"dim": 16, **kwargs}
    defaults = {"operation": "mult"}
    assert emb.arm() == cls.arm_of(cfg) == {"kind": cls.kind, "dim": 16,
                                            **{k: kwargs.get(k, defaults.get(k)) for k in cls.arm_keys}}
    assert emb.label().startswith(cls.kind) and emb.label() == cls.label_of(emb.arm())


BUDGET_CASES = [
    (HashEmbedding, {}, "buckets"), (HashMLETEmbedding, {"inner_dim": 32}, "buckets"),
    (QREmbedding, {"operation": "add"}, "remainder_rows"), (MixedDimEmbedding, {}, "alpha"),
    (MixedDimMLETEmbedding, {"inner_dim": 32}, "alpha"), (TTEmbedding, {}, "tt_rank"),
]
CARDS = [4, 10, 40, 200, 1000, 5000, 20000, 50000]


@pytest.mark.parametrize("cls,kwargs,knob", BUDGET_CASES)
def test_budget_chooses_the_knob(cls, kwargs, knob):
    single = 4 * 16 * sum(CARDS)
    emb = cls(CARDS, 16, budget=1 / 8, **kwargs)
    assert getattr(emb, knob) is not None and emb.arm()["budget"] == 1 / 8
    # within the budget, and not far below it (the knob's candidates are 1% apart)
    assert emb.inference_bytes <= single / 8
    if knob == "alpha":  # d_f are whole numbers: bytes move in steps; the smallest alpha within the budget
        assert cls(CARDS, 16, alpha=emb.alpha - 0.01, **kwargs).inference_bytes > single / 8
    else:
        assert emb.inference_bytes >= 0.9 * single / 8
    smaller = cls(CARDS, 16, budget=1 / 64, **kwargs)
    assert smaller.inference_bytes < emb.inference_bytes or cls in (MixedDimEmbedding, MixedDimMLETEmbedding)
    # both the knob and a budget: refused, naming both keys
    problem = cls.config_problem({"dim": 16, "budget": 0.5, knob: 3, **kwargs})
    assert problem and f"embedding.{knob}" in problem and "embedding.budget" in problem
    assert "embedding.budget" in cls.config_problem({"dim": 16, "budget": 2.0, **kwargs})


def test_a_budget_below_the_smallest_form_takes_the_smallest():
    # mixed dimensions cannot go below one column per row (plus projections): 1/64 is out of reach
    emb = MixedDimEmbedding(CARDS, 16, budget=1 / 64)
    assert emb.alpha == 0.0 or max(emb.field_dims[-3:]) == 1
    assert emb.inference_bytes > 4 * 16 * sum(CARDS) / 64
