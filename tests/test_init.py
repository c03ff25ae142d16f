"""Initialisation as configuration (embedding tables, MLET factors, dense layers) and the BARS
training recipe: embedding L2 on looked-up rows, lr cut on plateau, clipping of sparse gradients."""

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mlet.embeddings import LowRankEmbedding, MLETEmbedding, SingleLayerEmbedding
from mlet.models.dlrm import DLRM
from mlet.module import CTRModule, init_model_
from mlet.optim import CombinedOptimizer, clip_gradients_
from tests.helpers import TINY, compose_cfg, run_cli

UNIFORM = {"table_init": "uniform", "init_std": None}



# ---- embedding tables ---------------------------------------------------------------------------
@pytest.mark.parametrize("std", [1e-4, 1e-3, 1e-2])
def test_normal_table_has_the_stated_std(std):
    torch.manual_seed(0)
    w = SingleLayerEmbedding([30000, 5], 16, table_init="normal", init_std=std).table.weight
    assert w.mean().abs().item() < 4 * std / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(std, rel=0.01)  # 480k draws: sampling error ~0.1%


def test_uniform_table_is_bounded_per_field():
    cards = [3, 400, 40000]
    torch.manual_seed(0)
    emb = SingleLayerEmbedding(cards, 16, **UNIFORM)
    for f, n in enumerate(cards):
        table = emb.field_table(f)
        bound = math.sqrt(1 / n)
        assert table.abs().max().item() <= bound
        if n >= 400:  # enough draws for the moments and for reaching near the bound
            assert table.var().item() == pytest.approx(1 / (3 * n), rel=0.05)
            assert table.abs().max().item() > 0.99 * bound


@pytest.mark.parametrize(
    "table_init,init_std,match",
    [("uniform", 0.01, "init_std=0.01 has no effect"), ("normal", None, "positive number"),
     ("normal", 0.0, "positive number"), ("gaussian", 0.1, "uniform, normal")],
)
def test_bad_table_init_is_refused_naming_the_key(table_init, init_std, match):
    for build in (lambda: SingleLayerEmbedding([5], 2, table_init=table_init, init_std=init_std),
                  lambda: MLETEmbedding([5], 2, 4, table_init=table_init, init_std=init_std)):
        with pytest.raises(ValueError, match=match):
            build()


def _product_std(emb) -> float:
    return emb.collapsed_weight().std().item()


@pytest.mark.parametrize("init", ["scaled", "balanced"])
@pytest.mark.parametrize("cls,inner", [(MLETEmbedding, 64), (MLETEmbedding, 256), (LowRankEmbedding, 4)])
def test_factored_product_starts_at_the_stated_scale(cls, inner, init):
    # many fields: each has its own B, whose column norms scatter (chi^2_k / k): the product's
    # std over one field's table is off by ~6% at k=64; over 100 fields by < 2% even at k=4
    cards, d = [1000] * 100, 8
    torch.manual_seed(1)
    for std in (1e-4, 1e-2):
        emb = cls(cards, d, inner, init=init, table_init="normal", init_std=std)
        assert _product_std(emb) == pytest.approx(std, rel=0.05)
    emb = cls(cards, d, inner, init=init, **UNIFORM)  # the single-layer uniform table's scale
    assert _product_std(emb) == pytest.approx(math.sqrt(1 / (3 * 1000)), rel=0.05)


def test_authors_init_keeps_its_meaning_under_any_table_init():
    n, d, k = 20000, 8, 64
    torch.manual_seed(2)
    emb = MLETEmbedding([n], d, k, init="authors", table_init="normal", init_std=1e-3)
    # Var(A B) = k Var(A) 0.25^2 = k/16 times the stated variance
    assert _product_std(emb) == pytest.approx(1e-3 * math.sqrt(k / 16), rel=0.05)
    assert emb.projection.std().item() == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("cls,dim,inner", [(MLETEmbedding, 8, 64), (LowRankEmbedding, 8, 4), (MLETEmbedding, 16, 16)])
def test_balanced_factors_satisfy_at_a_equals_b_bt(cls, dim, inner, shared):
    cards = [5, 300, 2000]  # 5 < d: a field of lower rank than d
    torch.manual_seed(3)
    emb = cls(cards, dim, inner, init="balanced", share_projection=shared, table_init="normal", init_std=1e-2)
    a_parts = [emb.inner.weight.detach()] if shared else torch.split(emb.inner.weight.detach(), cards)
    for f, a in enumerate(a_parts):
        b = emb.projection.detach() if shared else emb.projection.detach()[f]
        ata, bbt = a.T @ a, b @ b.T
        scale = ata.abs().max().item()
        assert scale > 0
        assert (ata - bbt).abs().max().item() <= 1e-5 * scale
    # the same starting product as init=scaled from the same random state
    torch.manual_seed(3)
    scaled = cls(cards, dim, inner, init="scaled", share_projection=shared, table_init="normal", init_std=1e-2)
    assert torch.allclose(emb.collapsed_weight(), scaled.collapsed_weight(), atol=1e-6, rtol=1e-4)
    # while the scaled factors are not balanced
    b = scaled.projection.detach() if shared else scaled.projection.detach()[0]
    a = scaled.inner.weight.detach() if shared else scaled.inner.weight.detach()[: cards[0]]
    assert (a.T @ a - b @ b.T).abs().max().item() > 1e-3 * (b @ b.T).abs().max().item()


def test_embedding_init_is_one_choice_with_the_same_meaning_for_every_type(tmp_path):
    for option, expected in [("uniform", ("uniform", None)), ("normal_1e-4", ("normal", 1e-4)),
                             ("normal_1e-3", ("normal", 1e-3)), ("normal_1e-2", ("normal", 1e-2))]:
        for embedding in ("single", "mlet", "lowrank"):
            cfg = compose_cfg([f"embedding={embedding}", f"embedding_init={option}"], tmp_path)
            assert (cfg.embedding.table_init, cfg.embedding.init_std) == expected
            emb = instantiate(cfg.embedding)(cardinalities=[3, 50])
            assert (emb.table_init, emb.init_std) == expected
    default = compose_cfg([], tmp_path)
    assert (default.embedding.table_init, default.embedding.init_std) == ("normal", 1e-4)
    assert default.embedding.init == "scaled"  # MLET's product starts where the single-layer table does


def test_the_lr_sweep_tunes_the_init_scale_as_a_second_axis(tmp_path):
    cfg = compose_cfg(["+sweep=lr"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert set(params["embedding_init"].split(",")) == {"uniform", "normal_1e-4", "normal_1e-3", "normal_1e-2"}
    assert len(params["optimizer.lr"].split(",")) == 4


# ---- dense layers ---------------------------------------------------------------------------------
def test_xavier_model_init_draws_linear_weights_and_zeroes_biases():
    torch.manual_seed(0)
    model = DLRM(4, 16, num_dense=13, bottom_mlp=[512, 256], top_mlp=[256])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and any(m.bias.abs().sum() > 0 for m in linears)  # PyTorch's default: uniform biases
    before = [m.weight.clone() for m in linears]
    init_model_(model, "default")
    assert all(torch.equal(m.weight, w) for m, w in zip(linears, before))
    init_model_(model, "xavier")
    for m in linears:
        assert m.bias.abs().sum().item() == 0
        fan_out, fan_in = m.weight.shape
        if m.weight.numel() >= 10000:
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    with pytest.raises(ValueError, match="model_init must be one of default, xavier"):
        init_model_(model, "he")


# ---- embedding L2 on the looked-up rows -----------------------------------------------------------
def _tiny_module(embedding, l2):
    model = DLRM(2, embedding.dim, num_dense=1, bottom_mlp=[4], top_mlp=[4])
    return CTRModule(embedding, model, embedding_l2=l2)


def test_embedding_l2_is_the_documented_term_on_distinct_looked_up_rows():
    emb = SingleLayerEmbedding([4, 3], 2)
    with torch.no_grad():
        emb.table.weight.copy_(torch.arange(14, dtype=torch.float32).reshape(7, 2) / 10)
    module = _tiny_module(emb, l2=0.5)
    cat = torch.tensor([[1, 0], [1, 2], [3, 0]])  # field 0 rows 1, 1, 3; field 1 rows 4+0, 4+2, 4+0
    embedded = emb(cat)
    penalty = module.embedding_penalty(cat, embedded)
    # distinct rows 1, 3, 4, 6, each once: 0.5/2 * sum ||w_r||^2, by hand
    w = emb.table.weight.detach()
    by_hand = 0.25 * sum((w[r] ** 2).sum().item() for r in (1, 3, 4, 6))
    assert by_hand == pytest.approx(0.25 * ((0.2**2 + 0.3**2) + (0.6**2 + 0.7**2) + (0.8**2 + 0.9**2) + (1.2**2 + 1.3**2)))
    assert penalty.item() == pytest.approx(by_hand, rel=1e-6)
    penalty.backward()
    grad = emb.table.weight.grad
    grad = grad.to_dense() if grad.is_sparse else grad
    for r in range(7):  # l2 * w_r on each looked-up row (once, however often used), nothing elsewhere
        expected = 0.5 * w[r] if r in (1, 3, 4, 6) else torch.zeros(2)
        assert torch.allclose(grad[r], expected, atol=1e-7), r


def test_embedding_l2_penalises_the_collapsed_rows_of_mlet_and_is_added_to_the_loss():
    torch.manual_seed(0)
    emb = MLETEmbedding([4, 3], 2, 8, table_init="normal", init_std=0.3)
    module = _tiny_module(emb, l2=0.1)
    module.log = lambda *args, **kwargs: None
    cat = torch.tensor([[2, 1], [2, 1], [0, 1]])
    collapsed = emb.collapsed_weight()
    by_hand = 0.05 * sum((collapsed[r] ** 2).sum().item() for r in (0, 2, 5))
    assert module.embedding_penalty(cat, emb(cat)).item() == pytest.approx(by_hand, rel=1e-5)
    batch = (torch.randn(3, 1), cat, torch.tensor([1.0, 0.0, 1.0]))
    with_l2 = module.training_step(batch, 0).item()
    module.embedding_l2 = 0.0
    without = module.training_step(batch, 0).item()
    assert with_l2 - without == pytest.approx(by_hand, rel=1e-4)
    with pytest.raises(ValueError, match="embedding_l2 must be a number >= 0"):
        _tiny_module(SingleLayerEmbedding([4, 3], 2), l2=-1.0)


# ---- lr cut on plateau --------------------------------------------------------------------------------
def test_plateau_cuts_both_optimisers_at_each_non_improving_validation(tmp_path):
    cfg = compose_cfg(["lr_scheduler=plateau"], tmp_path)
    emb = SingleLayerEmbedding([10, 10], 2)
    module = CTRModule(emb, DLRM(2, 2, num_dense=1, bottom_mlp=[4], top_mlp=[4]),
                       optimizer=instantiate(compose_cfg([], tmp_path).optimizer),
                       lr_scheduler=instantiate(cfg.lr_scheduler))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, CombinedOptimizer)  # Adam + SparseAdam
    assert config["lr_scheduler"]["monitor"] == "val_auc"
    val_auc = [0.70, 0.72, 0.72, 0.71, 0.73, 0.7301, 0.70, 0.69, 0.68]
    expected = [1e-3, 1e-3, 1e-4, 1e-5, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6]  # x0.1 when not above the best; floor 1e-6
    for value, lr in zip(val_auc, expected):
        scheduler.step(value)
        for child in optimizer.optimizers:
            assert child.param_groups[0]["lr"] == pytest.approx(lr)


def test_plateau_must_watch_auc_upwards(tmp_path):
    cfg = compose_cfg(["lr_scheduler=plateau", "lr_scheduler.mode=min"], tmp_path)
    module = CTRModule(SingleLayerEmbedding([10], 2), DLRM(1, 2, num_dense=1, bottom_mlp=[4], top_mlp=[4]),
                       lr_scheduler=instantiate(cfg.lr_scheduler))
    with pytest.raises(ValueError, match="lr_scheduler.mode must be max"):
        module.configure_optimizers()


# ---- gradient clipping with sparse gradients ----------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_sparse_gradients_matches_torch_on_the_dense_equivalent(max_norm):
    torch.manual_seed(0)
    sparse_table, dense_table = nn.Embedding(20, 4, sparse=True), nn.Embedding(20, 4)
    dense_table.load_state_dict(sparse_table.state_dict())
    head = nn.Linear(4, 1)
    idx = torch.tensor([1, 2, 2, 7, 1])  # repeated rows: an uncoalesced sparse gradient
    (head(sparse_table(idx)) ** 2).sum().backward()
    head_grad = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    (head(dense_table(idx)) ** 2).sum().backward()
    ref_norm = torch.nn.utils.clip_grad_norm_([dense_table.weight, *head.parameters()], max_norm)
    ref = [dense_table.weight.grad, *(p.grad for p in head.parameters())]
    for p, g in zip(head.parameters(), head_grad):
        p.grad = g
    norm = clip_gradients_([sparse_table.weight, *head.parameters()], max_norm)
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-5)
    got = [sparse_table.weight.grad.to_dense(), *(p.grad for p in head.parameters())]
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(NotImplementedError):  # why mlet clips itself: torch refuses sparse gradients
        torch.nn.utils.clip_grad_norm_([sparse_table.weight], 1.0)


# ---- the preset -----------------------------------------------------------------------------------------
@pytest.mark.slow  # starts processes
def test_bars_recipe_preset_composes_and_trains_through_the_command(tmp_path):
    run_dir = tmp_path / "run"
    # a clip value small enough that clipping acts on every step (sparse table gradients included)
    proc = run_cli(["experiment=bars_recipe", *TINY, "trainer.max_epochs=1", "trainer.gradient_clip_val=0.01",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "record.json").read_text())
    cfg = record["config"]
    assert record["epochs"] >= 0 and 0 < record["test_auc"] <= 1
    assert (cfg["embedding"]["table_init"], cfg["embedding"]["init_std"]) == ("normal", 1e-4)
    assert cfg["model_init"] == "xavier" and cfg["embedding_l2"] == 1e-5
    assert cfg["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert cfg["lr_scheduler"]["factor"] == 0.1 and cfg["lr_scheduler"]["mode"] == "max"
    assert cfg["trainer"]["gradient_clip_algorithm"] == "norm"
    assert cfg["callbacks"]["early_stopping"]["patience"] == 2
    assert cfg["optimizer"]["sparse"]["_target_"] == "torch.optim.SparseAdam"  # sparse gradients were clipped
