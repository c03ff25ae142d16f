"""A run killed mid-epoch and resumed trains on exactly the batches an uninterrupted run trains on."""

import shutil

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from mlet.job import build
from tests.conftest import TINY, compose_cfg


class Killed(RuntimeError):
    pass


class Recorder(Callback):
    """Records (epoch, batch index, first rows of the batch); raises at global step ``kill_at``."""

    def __init__(self, kill_at: int | None, seen: list) -> None:
        self.kill_at, self.seen = kill_at, seen

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.kill_at:
            raise Killed(f"killed at step {self.kill_at}")
        self.seen.append((trainer.current_epoch, batch_idx, batch[1][:4].tolist()))


def fit(cfg, ckpt_dir, kill_at=None, ckpt_path=None):
    seen: list = []
    datamodule, module = build(cfg)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=3, save_top_k=0),
                   Recorder(kill_at, seen)],
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except Killed:
        pass
    return trainer.global_step, seen


@pytest.mark.parametrize("kills", [(7,), (12,), (7, 11)], ids=["mid-epoch-0", "mid-epoch-1", "twice"])
def test_resume_mid_epoch_replays_nothing_and_skips_nothing(kills, tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2"], tmp_path)
    steps, full = fit(cfg, tmp_path / "full")
    assert steps == 2 * -(-2400 // 256)
    trained: list = []
    ckpt = None
    for kill in kills:
        _, seen = fit(cfg, tmp_path / "ckpt", kill_at=kill, ckpt_path=ckpt)
        ckpt = str(tmp_path / "ckpt" / "last.ckpt")
        last_saved = kill // 3 * 3  # a checkpoint after every third step
        trained = (trained + seen)[:last_saved]  # work after the last checkpoint is lost, and redone
    final_steps, rest = fit(cfg, tmp_path / "ckpt", ckpt_path=ckpt)
    assert final_steps == steps
    assert trained + rest == full
    shutil.rmtree(tmp_path / "ckpt")
