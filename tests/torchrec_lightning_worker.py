"""Run by tests/test_torchrec.py: a tiny Lightning fit with the TorchRec backend on 2 CPU processes
(TorchRecStrategy, tables sharded table-wise, fused SGD), killed mid-epoch and resumed, or whole.

Usage: ``python tests/torchrec_lightning_worker.py OUT MODE`` with MODE ``full`` (2 epochs),
``kill`` (raises at step KILL_AT; a sharded ``last.ckpt`` every 3 steps) or ``resume`` (continues
from ``OUT/ckpt/last.ckpt``). Lightning's launcher starts rank 1 by running this file again. Rank 0
writes ``OUT/<MODE>.pt``: the validation history, the collapsed table (each process collapsing its
own shards), the steps trained and the first step this fit trained.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

KILL_AT = 7


class Killed(RuntimeError):
    pass


class Kill(Callback):
    """Raises at step ``KILL_AT`` (``kill``); records the first step this fit trains (``first``)."""

    def __init__(self, kill: bool) -> None:
        self.kill, self.first = kill, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first is None:
            self.first = trainer.global_step
        if self.kill and trainer.global_step == KILL_AT:
            raise Killed(f"killed at step {KILL_AT}")


def main(out: Path, mode: str) -> None:
    from functools import partial

    from mlet.data import CTRDataModule, SyntheticCTR
    from mlet.embeddings import MLETEmbedding
    from mlet.models.dlrm import DLRM
    from mlet.module import CTRModule
    from mlet.optim import SparseAwareOptimizer
    from mlet.torchrec_strategy import TorchRecStrategy

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    source = SyntheticCTR(rows=3000, num_fields=3, num_dense=2, max_cardinality=50, seed=0)
    dm = CTRDataModule(source, batch_size=256, eval_batch_size=500, seed=0)
    dm.setup()
    emb = MLETEmbedding(dm.cardinalities, 4, 8, backend="torchrec", sharding="table_wise", init_std=0.05)
    optimizer = SparseAwareOptimizer(partial(torch.optim.SGD), partial(torch.optim.SGD), lr=0.5)
    module = CTRModule(emb, DLRM(dm.num_fields, 4, dm.num_dense, [8], [8]), optimizer=optimizer)
    callbacks = [ModelCheckpoint(dirpath=out / "ckpt", filename="last", every_n_train_steps=3, save_top_k=1,
                                 enable_version_counter=False)]
    kill = Kill(mode == "kill")
    callbacks.append(kill)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=TorchRecStrategy(plan_dir=out), max_epochs=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(out / "ckpt" / "last.ckpt") if mode == "resume" else None)
        collapsed = module.embedding.collapse().table.weight.detach().clone()  # a collective: every rank
        if trainer.global_rank == 0:
            torch.save({"val_history": module.val_history, "collapsed": collapsed, "steps": trainer.global_step,
                        "first_step": kill.first},
                       out / f"{mode}.pt")
    except Killed:
        pass


if __name__ == "__main__":
    from mlet.train import end_process_group

    try:
        main(Path(sys.argv[1]), sys.argv[2])
    finally:  # as mlet-train does, once main's model and trainer are out of scope
        end_process_group()
