"""Every model config: forward/backward under both embedding types at several d, and learning.

Each case composes the real ``conf/model/<name>.yaml`` with OmegaConf, shrinks its widths with a
few overrides (which must name keys the file already has), and instantiates it as the trainer
does: ``instantiate(cfg)(num_fields=F, embed_dim=d, num_dense=D)``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mlet.data import CTRDataModule
from mlet.data.synthetic import SyntheticCTR
from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
from mlet.metrics import auc
from mlet.module import CTRNet

MODEL_CONF = Path(str(files("mlet.conf") / "model"))  # the packaged configs, as mlet-train finds them
NAMES = sorted(p.stem for p in MODEL_CONF.glob("*.yaml"))

# Tiny widths for speed; every key must already exist in the yaml (checked by ``compose``).
TINY = {
    "dlrm": {"bottom_mlp": [8], "top_mlp": [8]},
    "dcn": {"cross_layers": 2, "hidden": [8, 8]},
    "dcnv2": {"cross_layers": 2, "hidden": [8, 8], "low_rank": 4, "num_experts": 2},
    "autoint": {"attention_layers": 2, "attention_dim": 6},
    "autoint_plus": {"attention_layers": 2, "attention_dim": 4, "hidden": [8, 8]},
    "xdeepfm": {"cin_layer_units": [4, 3], "hidden": [8, 8]},
    "fibinet": {"hidden": [8, 8], "reduction_ratio": 2},
    "deepfm": {"hidden": [8, 8]},
    "wdl": {"hidden": [8, 8]},
    "fm": {},
    "lr": {},
}

# Variants beyond each file's defaults: the other structures and interaction types.
VARIANTS = [
    ("dcnv2", {"structure": "stacked"}),
    ("dcnv2", {"low_rank_mixture": True}),
    ("dcnv2", {"structure": "stacked", "low_rank_mixture": True}),
    ("fibinet", {"bilinear_type": "field_all"}),
    ("fibinet", {"bilinear_type": "field_each"}),
    ("autoint", {"use_scale": True, "layer_norm": True, "use_residual": False}),
]
CASES = [(name, {}) for name in NAMES] + VARIANTS
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in extra.items()) for name, extra in CASES]

CARDINALITIES = [3, 7, 11, 5]
NUM_DENSE = 3
BATCH = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: with 2 intra-op threads on a shared, loaded CPU every op waits on the other
    thread (measured 30-70x slower steps here); one thread keeps the file well under a minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose(name: str, **overrides):
    """The model config as the trainer composes it, with TINY and ``overrides`` merged in."""
    cfg = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    OmegaConf.set_struct(cfg, True)  # an override naming a key the file lacks is an error
    return OmegaConf.merge(cfg, TINY.get(name, {}), overrides)


def build(name: str, num_fields: int, embed_dim: int, num_dense: int, **overrides) -> torch.nn.Module:
    return instantiate(compose(name, **overrides))(num_fields=num_fields, embed_dim=embed_dim, num_dense=num_dense)


def test_every_model_has_a_config():
    assert set(NAMES) == set(TINY), "a config without a TINY entry (or the reverse)"
    assert len(NAMES) == 11


@pytest.mark.parametrize("name", NAMES)
def test_config_cites_its_source(name):
    text = (MODEL_CONF / f"{name}.yaml").read_text()
    assert "Source:" in text or "facebookresearch/dlrm" in text
    assert "https://github.com/" in text


def _embedding(kind: str, d: int):
    uniform = {"table_init": "uniform", "init_std": None}  # written for DLRM's table scale, +-sqrt(1/n_f)
    if kind == "single":
        return SingleLayerEmbedding(CARDINALITIES, d, **uniform)
    return MLETEmbedding(CARDINALITIES, d, inner_dim=max(8, 2 * d), **uniform)


@pytest.mark.parametrize("d", [1, 4, 16])
@pytest.mark.parametrize("kind", ["single", "mlet"])
@pytest.mark.parametrize("name,extra", CASES, ids=CASE_IDS)
def test_forward_backward(name, extra, kind, d):
    torch.manual_seed(0)
    embedding = _embedding(kind, d)
    model = build(name, len(CARDINALITIES), d, NUM_DENSE, **extra)
    net = CTRNet(embedding, model).train()
    cat = torch.stack([torch.randint(0, n, (BATCH,)) for n in CARDINALITIES], dim=1)
    dense = torch.randn(BATCH, NUM_DENSE)
    logits = net(dense, cat)
    assert logits.shape == (BATCH,)
    assert torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, torch.randint(0, 2, (BATCH,)).float()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_without_dense_features(name):
    torch.manual_seed(0)
    model = build(name, len(CARDINALITIES), 4, 0).eval()
    embedded = torch.randn(BATCH, len(CARDINALITIES), 4)
    # a first-order term with its own table (first_order: table) gets the categories' weights
    weights = [torch.randn(BATCH, len(CARDINALITIES))] if getattr(model, "category_weights", False) else []
    logits = model(embedded, torch.empty(BATCH, 0), *weights)
    assert logits.shape == (BATCH,) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "name,bad,message",
    [
        ("dcnv2", {"structure": "diagonal"}, "structure"),
        ("fibinet", {"bilinear_type": "field_pair"}, "bilinear_type"),
        ("autoint", {"attention_dim": 5}, "divisible"),
        ("autoint_plus", {"hidden": []}, "hidden"),
        ("dcn", {"cross_layers": 0}, "cross_layers"),
        ("xdeepfm", {"cin_layer_units": []}, "CIN"),
    ],
)
def test_bad_hyperparameters_are_value_errors(name, bad, message):
    with pytest.raises(ValueError, match=message):
        build(name, len(CARDINALITIES), 4, NUM_DENSE, **bad)


# ---- learning ---------------------------------------------------------------------------------
# 315 Adam steps (5 epochs of 63 batches of 256 over 16k training rows), MLET d=8 k=32, scored on
# the collapsed model. Reached when written: 0.788-0.801 for all 11 models (data seed 0; LR 0.791,
# FM 0.788, DCNv2 0.801) and 0.817-0.828 with data and model seed 1. Chance is 0.5; the floor
# leaves about 0.04 of margin below the weakest model.
AUC_FLOOR = 0.75


@pytest.fixture(scope="module")
def datamodule():
    source = SyntheticCTR(rows=20_000, num_fields=6, max_cardinality=500, num_dense=4, seed=0)
    dm = CTRDataModule(source, batch_size=256, eval_batch_size=4096, seed=0)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", NAMES)
def test_learns_synthetic_data(name, datamodule):
    torch.manual_seed(0)
    embedding = MLETEmbedding(datamodule.cardinalities, 8, inner_dim=32)
    model = build(name, datamodule.num_fields, 8, datamodule.num_dense)
    net = CTRNet(embedding, model)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = datamodule.train_dataloader()
    for epoch in range(5):
        loader.sampler.set_epoch(epoch)
        net.train()
        for dense, cat, label in loader:
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(net(dense, cat), label).backward()
            optimizer.step()
    net.eval()
    deployed = net.deployed()  # the collapsed embedding, the same model and first-order table
    with torch.no_grad():
        scores, labels = zip(*[(deployed(dense, cat), label) for dense, cat, label in datamodule.val_dataloader()])
    val_auc = auc(torch.cat(scores), torch.cat(labels))
    print(f"{name}: val AUC {val_auc:.4f}")
    assert val_auc > AUC_FLOOR


# ---- through the trainer's own config composition --------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_builds_from_train_config(name, tmp_path):
    """``mlet-train model=<name>``: the Hydra group composes and ``mlet.train.build`` supplies F, d, D."""
    from mlet.job import build
    from tests.helpers import compose_cfg

    model_overrides = [f"model.{k}={json.dumps(v)}" for k, v in TINY[name].items()]
    data = ["data.rows=600", "data.num_fields=3", "data.num_dense=2", "data.max_cardinality=50"]
    cfg = compose_cfg([f"model={name}", *model_overrides, *data, "embedding.dim=2", "embedding.inner_dim=4",
                       "datamodule.batch_size=32", "logger=none"], tmp_path)
    datamodule, module = build(cfg)
    dense, cat, label = next(iter(datamodule.train_dataloader()))
    assert module(dense, cat).shape == label.shape


@pytest.mark.parametrize("name", NAMES)
def test_collapsed_model_exports(name):
    """``mlet-export`` writes the collapsed network with ``torch.export`` and a dynamic batch."""
    torch.manual_seed(0)
    embedding = MLETEmbedding(CARDINALITIES, 4, inner_dim=8)
    net = CTRNet(embedding.collapse(), build(name, len(CARDINALITIES), 4, NUM_DENSE)).eval()
    example = (torch.zeros(2, NUM_DENSE), torch.zeros(2, len(CARDINALITIES), dtype=torch.long))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, example, dynamic_shapes={"dense": {0: batch}, "cat": {0: batch}})
    dense = torch.randn(7, NUM_DENSE)
    cat = torch.stack([torch.randint(0, n, (7,)) for n in CARDINALITIES], dim=1)
    torch.testing.assert_close(program.module()(dense, cat), net(dense, cat))
