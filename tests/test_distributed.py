"""Evaluation and batch distribution across processes: each rank gets distinct rows, the gathered
metrics count every row of the split exactly once."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlet.data import CTRDataModule, SyntheticCTR
from mlet.data.datamodule import BatchKeys
from mlet.metrics import auc, logloss


def keys_rows(keys, rows):
    out = []
    for k in keys:
        out.append(np.arange(rows)[k] if isinstance(k, slice) else np.asarray(k))
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


@pytest.mark.parametrize("rows,batch,world", [(301, 150, 2), (1000, 64, 3), (10, 4, 4), (5, 100, 3), (999, 1000, 2)])
def test_evaluation_blocks_cover_every_row_once_in_order(rows, batch, world):
    samplers = [BatchKeys(rows, batch, shuffle=False, num_replicas=world, rank=r) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert len({len(k) for k in per_rank}) == 1  # the same number of steps everywhere
    assert all(len(k) == len(s) for k, s in zip(per_rank, samplers))
    gathered = np.concatenate([keys_rows(k, rows) for k in per_rank])
    np.testing.assert_array_equal(gathered, np.arange(rows))  # rank order = split order, no repeats


@pytest.mark.parametrize("rows,batch,world", [(1000, 64, 3), (301, 150, 2), (100, 10, 2)])
def test_training_batches_are_distinct_across_ranks_and_cover_the_epoch(rows, batch, world):
    samplers = [BatchKeys(rows, batch, shuffle=True, seed=1, num_replicas=world, rank=r) for r in range(world)]
    for s in samplers:
        s.set_epoch(3)
    per_rank = [list(s) for s in samplers]
    assert len({len(k) for k in per_rank}) == 1
    all_rows = np.concatenate([keys_rows(k, rows) for k in per_rank])
    assert set(all_rows.tolist()) == set(range(rows))
    nb = -(-rows // batch)
    assert len(per_rank[0]) * world - nb < world  # only the last round repeats batches
    single = list(BatchKeys(rows, batch, shuffle=True, seed=1))
    assert len(single) == nb


def test_datamodule_takes_world_size_from_the_trainer():
    dm = CTRDataModule(SyntheticCTR(rows=1000, num_fields=2, num_dense=1, max_cardinality=20), eval_batch_size=64)
    dm.setup()

    class FakeTrainer:
        world_size, global_rank = 2, 1

    dm.trainer = FakeTrainer()
    sampler = dm.val_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    assert isinstance(sampler, torch.utils.data.distributed.DistributedSampler)  # Lightning won't replace it


@pytest.mark.timeout(180)
@pytest.mark.slow  # starts processes
def test_ddp_two_cpu_processes_gather_every_validation_row_once(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(worker), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)

    # both ranks hold the same gathered outputs and metrics
    assert torch.equal(r0["val"]["logits"], r1["val"]["logits"])
    assert r0["val"]["val_auc"] == r1["val"]["val_auc"]

    # ... which are the whole validation split, in order, each row once
    source = SyntheticCTR(rows=3010, num_fields=3, num_dense=2, max_cardinality=50, seed=0)
    data = source.load()
    val = data.splits["val"]
    assert len(val) == 301
    np.testing.assert_array_equal(r0["val"]["labels"].numpy(), val.label)

    # ... and equal a single-process evaluation of the trained weights
    from mlet.embeddings import MLETEmbedding
    from mlet.models.dlrm import DLRM
    from mlet.module import CTRModule

    module = CTRModule(MLETEmbedding(data.cardinalities, 4, 8), DLRM(3, 4, 2, [8], [8]))
    module.load_state_dict(r0["state_dict"])
    module.eval()
    with torch.no_grad():
        logits = module.net.model(module.embedding.collapse()(torch.from_numpy(val.cat).long()),
                                  torch.from_numpy(val.dense))
    labels = torch.from_numpy(val.label)
    assert torch.allclose(r0["val"]["logits"], logits, atol=1e-5)
    assert r0["val"]["val_auc"] == pytest.approx(auc(logits, labels), abs=1e-6)
    assert r0["val"]["val_logloss"] == pytest.approx(logloss(logits, labels), abs=1e-6)

    # training: the ranks saw different rows, together the whole training split, in equal steps
    a, b = r0["train_rows"], r1["train_rows"]
    assert len(a) + len(b) == len(data.splits["train"]) == 2408
    assert r0["steps"] == r1["steps"] == 5  # ceil(10 batches / 2)
    both = torch.cat([a, b])
    assert len(torch.unique(both, dim=0)) == len(torch.unique(torch.cat([
        torch.from_numpy(data.splits["train"].cat).double(), torch.from_numpy(data.splits["train"].dense).double()
    ], 1), dim=0))


GROUP_HELD_IN_A_CYCLE = """
import os, sys, torch, torch.distributed as dist
from mlet.train import end_process_group

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)

class Model:  # holds the group in a reference cycle, as DDP and TorchRec's sharded modules do
    def __init__(self):
        self.group, self.me = dist.distributed_c10d._get_default_group(), self

model = Model()
dist.all_reduce(torch.ones(3))
during = threads()
del model
if sys.argv[2] == "end":
    end_process_group()
else:
    dist.destroy_process_group()
print(before, during, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_ending_the_process_group_joins_its_threads_before_interpreter_teardown(tmp_path):
    """mlet-train's end_process_group frees a gloo group that the model still holds in a reference
    cycle, so its worker threads end while the interpreter is alive (left to interpreter teardown, one
    of them aborted a resumed TorchRec run: SIGABRT after the run had succeeded). destroy_process_group
    alone leaves them running: the control."""
    def threads(how):
        done = subprocess.run([sys.executable, "-c", GROUP_HELD_IN_A_CYCLE, str(tmp_path / how), how],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return [int(n) for n in done.stdout.split()]

    before, during, after = threads("end")
    assert during > before  # the group's threads
    assert after == before
    before, during, after = threads("destroy")
    assert after == during > before
