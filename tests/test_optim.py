"""Sparse-aware optimisation: the optimiser config decides the embedding's gradient kind; sparse
and dense paths agree where the algorithm is the same (SGD, Adagrad) and both train otherwise."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
from mlet.models.dlrm import DLRM
from mlet.module import CTRModule
from mlet.optim import CombinedOptimizer, SparseAwareOptimizer
from mlet.job import build
from tests.helpers import TINY, compose_cfg

CARDS = [40, 7, 300, 1000]



def make_module(kind: str, optimizer, seed: int = 0) -> CTRModule:
    torch.manual_seed(seed)
    uniform = {"table_init": "uniform", "init_std": None}  # written for DLRM's table init (+-sqrt(1/n_f))
    if kind == "mlet":
        emb = MLETEmbedding(CARDS, 4, 16, **uniform)
    else:
        emb = SingleLayerEmbedding(CARDS, 4, **uniform)
    model = DLRM(len(CARDS), 4, num_dense=3, bottom_mlp=[8], top_mlp=[16])
    return CTRModule(emb, model, optimizer=optimizer)


def batches(steps: int, batch: int = 64, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        # Zipf-like: most rows of the big tables are never touched by a batch
        cat = torch.stack([(torch.rand(batch, generator=gen) ** 3 * n).long() for n in CARDS], 1)
        dense = torch.randn(batch, 3, generator=gen)
        label = (dense[:, 0] + 2.0 * (cat[:, 0] < 8) > 0.5).float()  # dense part + field 0 rows
        yield dense, cat, label


def train(module: CTRModule, steps: int = 30) -> list[float]:
    opt = module.configure_optimizers()
    losses = []
    for dense, cat, label in batches(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(module(dense, cat), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def spec(dense, sparse=None, lr=0.1):
    return SparseAwareOptimizer(dense=partial(dense), sparse=partial(sparse) if sparse else None, lr=lr)


@pytest.mark.parametrize("kind", ["single", "mlet"])
@pytest.mark.parametrize("algo,lr", [(torch.optim.SGD, 0.2), (torch.optim.Adagrad, 0.05)])
def test_sparse_and_dense_paths_agree_for_sgd_and_adagrad(kind, algo, lr):
    sparse = make_module(kind, spec(algo, algo, lr))
    dense = make_module(kind, spec(algo, None, lr))
    assert sparse.embedding.sparse and not dense.embedding.sparse
    opt = sparse.configure_optimizers()
    assert isinstance(opt, algo) and len(opt.param_groups) == 2  # one torch optimiser, no wrapper
    a, b = train(sparse, 60), train(dense, 60)
    # the same algorithm: only the summation order of duplicate rows differs (float rounding)
    assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
    assert sum(a[-5:]) < sum(a[:5])
    tol = 1e-6 if algo is torch.optim.SGD else 1e-4  # Adagrad amplifies rounding through 1/sqrt(sum)
    for p, q in zip(sparse.parameters(), dense.parameters()):
        assert torch.allclose(p, q, atol=tol)


@pytest.mark.parametrize("kind", ["single", "mlet"])
def test_sparse_adam_and_adam_both_train(kind):
    lazy = make_module(kind, spec(torch.optim.Adam, torch.optim.SparseAdam, lr=0.01))
    full = make_module(kind, spec(torch.optim.Adam, None, lr=0.01))
    assert isinstance(lazy.configure_optimizers(), CombinedOptimizer)
    assert isinstance(full.configure_optimizers(), torch.optim.Adam)
    for losses in (train(lazy, 60), train(full, 60)):
        assert sum(losses[-10:]) < 0.9 * sum(losses[:10])


def test_sparse_adam_leaves_untouched_rows_alone():
    module = make_module("mlet", spec(torch.optim.Adam, torch.optim.SparseAdam, lr=0.01))
    table = module.embedding.sparse_parameters()[0]
    before = table.detach().clone()
    opt = module.configure_optimizers()
    dense, cat, label = next(batches(1))
    for _ in range(3):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(module(dense, cat), label).backward()
        assert table.grad.is_sparse
        opt.step()
    touched = torch.zeros(table.shape[0], dtype=torch.bool)
    touched[module.embedding.rows(cat).reshape(-1)] = True
    assert torch.equal(table[~touched], before[~touched])
    assert not torch.equal(table[touched], before[touched])
    state = opt.state[table]
    assert state["exp_avg"][~touched].abs().sum() == 0  # never read nor written
    # MLET's B stays dense, with Adam
    assert not module.embedding.projection.grad.is_sparse
    assert any(module.embedding.projection is p for g in opt.optimizers[0].param_groups for p in g["params"])


def test_combined_optimizer_state_dict_roundtrip_and_scheduler():
    module = make_module("mlet", spec(torch.optim.Adam, torch.optim.SparseAdam, lr=0.01))
    opt = module.configure_optimizers()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    dense, cat, label = next(batches(1))
    opt.zero_grad()
    F.binary_cross_entropy_with_logits(module(dense, cat), label).backward()
    opt.step()
    sched.step()
    assert [g["lr"] for o in opt.optimizers for g in o.param_groups] == [0.005, 0.005]
    state = opt.state_dict()
    other = make_module("mlet", spec(torch.optim.Adam, torch.optim.SparseAdam, lr=0.01)).configure_optimizers()
    other.load_state_dict(state)
    assert len(other.state) == len(opt.state) > 0
    with pytest.raises(ValueError, match="optimizer config"):
        other.load_state_dict({"optimizers": state["optimizers"][:1]})


def test_combined_optimizer_refuses_shared_parameters():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="two optimizers"):
        CombinedOptimizer([torch.optim.SGD([p], lr=0.1), torch.optim.Adam([p])])


def test_lr_set_inside_a_factory_wins():
    opt = SparseAwareOptimizer(partial(torch.optim.SGD, lr=0.5), lr=0.1).build([torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("option,sparse", [("adam", False), ("sparse_adam", True), ("sgd", True), ("adagrad", True)])
@pytest.mark.parametrize("embedding", ["single", "mlet"])
def test_optimizer_config_sets_the_embedding_sparse_flag(option, sparse, embedding, tmp_path):
    cfg = compose_cfg([*TINY, f"optimizer={option}", f"embedding={embedding}"], tmp_path)
    datamodule, module = build(cfg)
    assert module.embedding.sparse is sparse
    opt = module.configure_optimizers()
    dense, cat, label = next(iter(datamodule.train_dataloader()))
    F.binary_cross_entropy_with_logits(module(dense, cat), label).backward()
    assert module.embedding.sparse_parameters()[0].grad.is_sparse is sparse
    opt.step()  # every optimiser accepts the gradients it is given


def test_lightning_fit_and_resume_with_combined_optimizer(tmp_path):
    from mlet.job import run

    common = [*TINY, "optimizer=sparse_adam", "embedding=mlet", "callbacks.early_stopping.patience=5"]
    first = run(compose_cfg([*common, "trainer.max_epochs=1"], tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)["optimizer_states"]
    assert len(saved) == 1 and len(saved[0]["optimizers"]) == 2  # one (combined) optimiser: Adam + SparseAdam
    second = run(compose_cfg([*common, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b"))
    assert second["steps"] == 2 * first["steps"]  # one global step per batch, resumed where it stopped
    assert second["test_auc"] > 0.55


@pytest.mark.parametrize("name", ["adam", "sparse_adam", "sgd", "adagrad"])
def test_table_lr_scale_multiplies_only_the_tables_learning_rate(name, tmp_path):
    """The lr-matched single-layer control: the table learns at lr * scale, the MLP at lr."""
    from tests.helpers import TINY, compose_cfg
    from mlet.job import build

    cfg = compose_cfg([*TINY, "embedding=single", f"optimizer={name}", "optimizer.table_lr_scale=4"], tmp_path)
    _, module = build(cfg)
    optimizer = module.configure_optimizers()
    lr = cfg.optimizer.lr
    table = module.embedding.table.weight
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(table)] == pytest.approx(4 * lr)
    others = [lrs[id(p)] for p in module.net.model.parameters()]
    assert others and all(v == pytest.approx(lr) for v in others)


@pytest.mark.parametrize("algo,sparse", [(torch.optim.SGD, None), (torch.optim.Adam, torch.optim.SparseAdam),
                                         (torch.optim.Adam, None), (torch.optim.Adagrad, torch.optim.Adagrad)])
def test_fixed_projection_is_not_updated_by_the_optimiser(algo, sparse):
    # the ablation `experiment=ablation_fixed_projection`: B stays at its random init, A trains
    torch.manual_seed(0)
    emb = MLETEmbedding(CARDS, 4, 16, train_projection=False)
    module = CTRModule(emb, DLRM(len(CARDS), 4, num_dense=3, bottom_mlp=[8], top_mlp=[16]),
                       optimizer=spec(algo, sparse, lr=0.05))
    projection, inner = emb.projection.detach().clone(), emb.inner.weight.detach().clone()
    opt = module.configure_optimizers()
    groups = [g for o in getattr(opt, "optimizers", [opt]) for g in o.param_groups]
    assert groups and all(p is not emb.projection for g in groups for p in g["params"])
    losses = train(module, 20)
    assert torch.equal(emb.projection, projection) and emb.projection.grad is None
    assert not torch.equal(emb.inner.weight, inner) and sum(losses[-5:]) < sum(losses[:5])
