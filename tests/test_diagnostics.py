"""Issue 7 diagnostics: MLET moves rows a batch did not touch; a single-layer table under SGD does not."""

import pytest
import pytorch_lightning as pl
import torch

from mlet.analysis import absent_row_movement
from mlet.callbacks import AbsentRowMovement
from mlet.data import CTRDataModule, SyntheticCTR
from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
from mlet.models import DLRM
from mlet.module import CTRModule


@pytest.mark.parametrize("kind", ["single", "mlet"])
def test_collapsed_rows_equal_the_collapsed_table(kind):
    cards = [7, 30, 5]
    emb = SingleLayerEmbedding(cards, 3) if kind == "single" else MLETEmbedding(cards, 3, 8)
    rows = torch.tensor([0, 6, 7, 36, 37, 41])
    assert torch.allclose(emb.collapsed_rows(rows), emb.collapse().table.weight[rows], atol=1e-6)


def test_absent_row_movement_on_a_hand_built_batch():
    """One SGD step on a batch touching rows {1, 2} of a 6-row field."""
    torch.manual_seed(0)
    batch = torch.tensor([[1], [2]])
    rows = torch.arange(6)
    present = torch.isin(rows, batch.reshape(-1))
    uniform = {"table_init": "uniform", "init_std": None}  # the threshold below assumes DLRM's table scale
    for emb, moves in ((SingleLayerEmbedding([6], 2, **uniform), False), (MLETEmbedding([6], 2, 8, **uniform), True)):
        opt = torch.optim.SGD(emb.parameters(), lr=0.5)
        before = emb.collapsed_rows(rows).detach().clone()
        emb(batch).pow(2).sum().backward()
        opt.step()
        result = absent_row_movement(before, emb.collapsed_rows(rows).detach(), present)
        assert result["absent_rows"] == 4
        assert result["present_mean"] > 0
        if moves:
            assert result["absent_mean"] > 1e-4  # through A A^T G and the change of B
        else:
            assert result["absent_mean"] == 0.0  # exactly: untouched rows get no gradient


@pytest.mark.parametrize("kind", ["single", "mlet"])
def test_callback_in_training(kind, tmp_path):
    data = CTRDataModule(SyntheticCTR(rows=3000, num_fields=4, num_dense=2, max_cardinality=300), batch_size=128)
    data.setup()
    cards = data.cardinalities
    emb = SingleLayerEmbedding(cards, 4) if kind == "single" else MLETEmbedding(cards, 4, 16)
    module = CTRModule(emb, DLRM(4, 4, 2, [8], [8]), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    callback = AbsentRowMovement(every_n_steps=2, sample_rows=500)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    summary = callback.record_items()["absent_row_movement"]
    assert summary["steps_measured"] == -(-19 // 2)  # 2400 train rows / 128 = 19 steps
    if kind == "single":
        assert summary["absent_mean"] == 0.0
    else:
        assert summary["absent_mean"] > 0.0
    assert summary["present_mean"] > 0.0
