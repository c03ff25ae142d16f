"""Run by tests/test_distributed.py: a tiny fit + validation under DDP on CPU processes (gloo).

Usage: ``python tests/ddp_worker.py OUT_DIR``. Lightning's DDP launcher starts the other process
by running this file again; every rank writes ``rank<r>.pt`` (its gathered validation outputs,
the model weights and the training rows it saw).
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch


class SeenRows(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.rows.append(torch.cat([batch[1].double(), batch[0].double()], 1))


def main(out: Path) -> None:
    from mlet.data import CTRDataModule, SyntheticCTR
    from mlet.embeddings import MLETEmbedding
    from mlet.models.dlrm import DLRM
    from mlet.module import CTRModule

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    # 301 validation rows in blocks of 150 and 151 with batches of 150: rank 1 runs two batches, rank 0
    # one real batch and one empty one
    source = SyntheticCTR(rows=3010, num_fields=3, num_dense=2, max_cardinality=50, seed=0)
    dm = CTRDataModule(source, batch_size=256, eval_batch_size=150, seed=0)
    dm.setup()
    module = CTRModule(MLETEmbedding(dm.cardinalities, 4, 8), DLRM(dm.num_fields, 4, dm.num_dense, [8], [8]))
    seen = SeenRows()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[seen],
    )
    trainer.fit(module, datamodule=dm)
    torch.save(
        {
            "val": module.results["val"],
            "state_dict": module.state_dict(),
            "train_rows": torch.cat(seen.rows),
            "steps": trainer.global_step,
        },
        out / f"rank{trainer.global_rank}.pt",
    )
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    from mlet.train import end_process_group

    try:
        main(Path(sys.argv[1]))
    finally:  # as mlet-train does, once main's model and trainer are out of scope
        end_process_group()
