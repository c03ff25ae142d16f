import math

import pytest
import torch

from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding


def random_indices(cards, batch, gen):
    return torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in cards], dim=1)


@pytest.mark.parametrize("trial", range(12))
def test_mlet_collapse_computes_the_same_outputs(trial):
    gen = torch.Generator().manual_seed(trial)
    fields = int(torch.randint(1, 7, (1,), generator=gen))
    cards = [int(c) for c in torch.randint(1, 500, (fields,), generator=gen)]
    dim = [1, 2, 3, 8, 16, 33][trial % 6]
    inner = dim + int(torch.randint(0, 70, (1,), generator=gen))
    shared = trial % 2 == 0
    init = ["scaled", "authors"][trial % 3 == 0]
    emb = MLETEmbedding(cards, dim, inner, share_projection=shared, init=init)
    # move the factors away from their initialisation, as training would
    with torch.no_grad():
        emb.inner.weight.add_(torch.randn(emb.inner.weight.shape, generator=gen) * 0.1)
        emb.projection.add_(torch.randn(emb.projection.shape, generator=gen) * 0.1)
    idx = random_indices(cards, 257, gen)
    collapsed = emb.collapse()
    assert isinstance(collapsed, SingleLayerEmbedding)
    out, ref = emb(idx), collapsed(idx)
    assert out.shape == ref.shape == (257, fields, dim)
    assert (out - ref).abs().max().item() <= 1e-5
    # the collapsed table holds A_f B_f for each field
    for f in range(fields):
        expected = emb.inner.weight[emb.offsets[f] : emb.offsets[f] + cards[f]] @ emb.field_projection(f)
        assert torch.allclose(collapsed.field_table(f), expected, atol=1e-6)


def test_parameter_counts_by_hand():
    cards = [10, 3, 7]
    single = SingleLayerEmbedding(cards, 4)
    assert single.train_parameters == single.inference_parameters == 20 * 4
    per_field = MLETEmbedding(cards, 4, 16)
    assert per_field.train_parameters == 20 * 16 + 3 * 16 * 4
    shared = MLETEmbedding(cards, 4, 16, share_projection=True)
    assert shared.train_parameters == 20 * 16 + 16 * 4
    frozen = MLETEmbedding(cards, 4, 16, train_projection=False)
    assert frozen.train_parameters == 20 * 16
    for emb in (per_field, shared, frozen):
        collapsed = emb.collapse()
        # the deployed MLET model is exactly as large as a single-layer one of the same d
        assert emb.inference_parameters == collapsed.train_parameters == single.inference_parameters
        assert sum(p.numel() for p in collapsed.parameters()) == sum(p.numel() for p in single.parameters())


@pytest.mark.parametrize("dim,inner", [(8, 4), (2, 1)])
def test_inner_dim_below_dim_is_refused(dim, inner):
    with pytest.raises(ValueError, match="inner_dim >= dim"):
        MLETEmbedding([5, 5], dim, inner)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_non_positive_dims_are_refused(bad):
    with pytest.raises(ValueError, match="embedding.dim"):
        SingleLayerEmbedding([5], bad)
    with pytest.raises(ValueError, match="embedding.inner_dim"):
        MLETEmbedding([5], 1, bad)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="scaled, authors, balanced"):
        MLETEmbedding([5], 2, 4, init="xavier")


@pytest.mark.parametrize("inner", [16, 64, 256])
def test_init_scales(inner):
    n, d = 20000, 8
    uniform = {"table_init": "uniform", "init_std": None}  # DLRM's table init, +-sqrt(1/n_f)
    torch.manual_seed(0)
    single = SingleLayerEmbedding([n], d, **uniform).table.weight
    assert single.var().item() == pytest.approx(1 / (3 * n), rel=0.05)
    scaled = MLETEmbedding([n], d, inner, init="scaled", **uniform).collapsed_weight()
    assert scaled.var().item() == pytest.approx(1 / (3 * n), rel=0.15)
    authors = MLETEmbedding([n], d, inner, init="authors", **uniform).collapsed_weight()
    # k * Var(A) * 0.25^2 = k / 16 times the single-layer variance
    assert authors.var().item() == pytest.approx(inner / 16 / (3 * n), rel=0.15)


def test_indices_shape_is_checked():
    emb = SingleLayerEmbedding([3, 4], 2)
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        emb(torch.zeros(5, 3, dtype=torch.long))


def test_gradients_reach_both_factors_and_sparse_option_works():
    emb = MLETEmbedding([50, 20], 4, 8, sparse=True)
    idx = torch.tensor([[1, 2], [3, 4]])
    emb(idx).sum().backward()
    assert emb.inner.weight.grad.is_sparse
    assert emb.projection.grad.abs().sum() > 0
    assert emb.sparse_parameters() == [emb.inner.weight]
    assert math.isfinite(emb.inner.weight.grad.coalesce().values().sum().item())


@pytest.mark.parametrize("shared", [False, True])
def test_deduplicated_lookups_give_the_same_outputs_and_gradients(shared):
    gen = torch.Generator().manual_seed(5)
    cards = [3, 40, 900, 1]
    ref = MLETEmbedding(cards, 8, 32, share_projection=shared, sparse=True)
    dedup = MLETEmbedding(cards, 8, 32, share_projection=shared, sparse=True)
    dedup.load_state_dict(ref.state_dict())
    ref.dedup_lookups, dedup.dedup_lookups = False, True
    idx = torch.stack([(torch.rand(300, generator=gen) ** 4 * n).long() for n in cards], 1)  # many repeats
    weights = torch.randn(300, len(cards), 8, generator=gen)
    out_ref, out = ref(idx), dedup(idx)
    assert torch.allclose(out, out_ref, atol=1e-6)
    (out_ref * weights).sum().backward()
    (out * weights).sum().backward()
    assert dedup.inner.weight.grad.is_sparse
    assert dedup.inner.weight.grad.coalesce().indices().shape[1] == len(torch.unique(ref.rows(idx)))
    assert torch.allclose(dedup.inner.weight.grad.to_dense(), ref.inner.weight.grad.to_dense(), atol=1e-5)
    assert torch.allclose(dedup.projection.grad, ref.projection.grad, atol=1e-5)


def test_lowrank_is_the_contrast_and_collapses():
    from mlet.embeddings import LowRankEmbedding

    emb = LowRankEmbedding([30, 40], 8, 2)
    idx = torch.tensor([[1, 2], [29, 39]])
    assert (emb(idx) - emb.collapse()(idx)).abs().max() <= 1e-6
    assert torch.linalg.matrix_rank(emb.collapsed_weight()[:30]).item() <= 2
    with pytest.raises(ValueError, match="embedding=mlet"):
        LowRankEmbedding([30], 8, 8)
