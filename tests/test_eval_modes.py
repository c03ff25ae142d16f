"""MLET evaluation by row gathering (A[rows] B) equals evaluation of the collapsed table."""

import pytest
import pytorch_lightning as pl
import torch

import mlet.embeddings.mlet as mlet_mod
from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
from mlet.job import build
from tests.helpers import TINY, compose_cfg


@pytest.mark.parametrize("shared", [False, True])
def test_gather_view_computes_the_collapsed_outputs(shared):
    gen = torch.Generator().manual_seed(0)
    cards = [30, 5, 700]
    emb = MLETEmbedding(cards, 4, 32, share_projection=shared, eval_mode="gather")
    with torch.no_grad():
        emb.projection.add_(torch.randn(emb.projection.shape, generator=gen))
    idx = torch.stack([torch.randint(0, n, (500,), generator=gen) for n in cards], 1)
    view = emb.for_evaluation()
    assert view is emb  # no n x d table built
    assert torch.allclose(view(idx), emb.collapse()(idx), atol=1e-6)
    emb.eval_mode = "collapse"
    assert isinstance(emb.for_evaluation(), SingleLayerEmbedding)


def test_auto_gathers_only_for_huge_tables(monkeypatch):
    emb = MLETEmbedding([100, 28], 4, 8)
    assert emb.eval_mode == "auto" and emb.resolved_eval_mode() == "collapse"
    monkeypatch.setattr(mlet_mod, "AUTO_GATHER_ENTRIES", 128 * 4 - 1)
    assert emb.resolved_eval_mode() == "gather"


def test_bad_eval_mode_is_refused():
    with pytest.raises(ValueError, match="embedding.eval_mode"):
        MLETEmbedding([5], 2, 4, eval_mode="lazy")
    with pytest.raises(ValueError, match="embedding.eval_mode"):
        SingleLayerEmbedding([5], 2, eval_mode="lazy")


def test_validation_metrics_equal_in_both_modes(tmp_path):
    results = {}
    for mode in ("collapse", "gather"):
        cfg = compose_cfg([*TINY, "embedding=mlet", f"embedding.eval_mode={mode}"], tmp_path / mode)
        pl.seed_everything(0, verbose=False)
        datamodule, module = build(cfg)
        with torch.no_grad():  # move away from the initialisation so that B matters
            module.embedding.projection.mul_(3.0)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        results[mode] = module.results["val"]
    a, b = results["collapse"], results["gather"]
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.equal(a["labels"], b["labels"])
    assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)
    assert a["val_logloss"] == pytest.approx(b["val_logloss"], abs=1e-6)
