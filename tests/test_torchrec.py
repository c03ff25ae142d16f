"""The TorchRec backend (embedding.backend=torchrec): errors, equality with the native backend
(unsharded in one process; sharded table- and column-wise over 2 gloo processes), the fused
optimiser mapping. Tests that need torchrec skip with the install command when it is missing;
``.ci/run`` installs it (scripts/install_torchrec.sh), so there they run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
from mlet.errors import MletError
from mlet.optim import RowWiseAdagrad, SparseAwareOptimizer

CARDS = [7, 3, 11]


def _has_torchrec() -> bool:
    try:
        import torchrec.distributed  # noqa: F401
    except Exception:
        return False
    return True


needs_torchrec = pytest.mark.skipif(
    not _has_torchrec(), reason="torchrec is not installed (scripts/install_torchrec.sh installs it)"
)


def test_missing_install_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec -> ImportError
    with pytest.raises(MletError) as err:
        MLETEmbedding(CARDS, 4, 8, backend="torchrec")
    message = str(err.value)
    assert "\n" not in message
    assert "embedding.backend=torchrec" in message and "scripts/install_torchrec.sh" in message


@pytest.mark.parametrize("make,key", [
    (lambda: SingleLayerEmbedding(CARDS, 2, backend="torchrec"), "embedding.dim=2"),
    (lambda: MLETEmbedding(CARDS, 2, 6, backend="torchrec"), "embedding.inner_dim=6"),
])
def test_dim_not_divisible_by_4_is_one_line_error(make, key):
    with pytest.raises(ValueError) as err:
        make()
    message = str(err.value)
    assert "\n" not in message and key in message and "divisible by 4" in message


def test_table_sharding_names_a_bad_field_or_type_in_one_line():
    with pytest.raises(ValueError, match=r"embedding.table_sharding: keys are field indices \(0..2\); got 7"):
        MLETEmbedding(CARDS, 4, 8, backend="torchrec", table_sharding={7: "table_wise"})
    with pytest.raises(ValueError, match="embedding.table_sharding.1 must be one of"):
        MLETEmbedding(CARDS, 4, 8, backend="torchrec", table_sharding={1: "diagonal"})
    assert "embedding.table_sharding.0" in MLETEmbedding.config_problem(
        {"dim": 4, "inner_dim": 8, "backend": "torchrec", "table_sharding": {0: "by_magic"}})


def test_dim_constraint_only_binds_the_torchrec_backend():
    assert SingleLayerEmbedding(CARDS, 2).dim == 2  # native: any dim
    with pytest.raises(ValueError, match="embedding.sharding must be one of"):
        SingleLayerEmbedding(CARDS, 4, backend="torchrec", sharding="by_magic")
    with pytest.raises(ValueError, match="embedding.backend must be one of"):
        SingleLayerEmbedding(CARDS, 4, backend="tensorflow")


@needs_torchrec
@pytest.mark.parametrize("overrides,fused_named,torch_named", [
    (["lr_scheduler=plateau"], "lr_scheduler=plateau", None),
    (["experiment=bars_recipe"], "lr_scheduler=plateau and trainer.gradient_clip_val=10.0",
     "trainer.gradient_clip_val=10.0"),
    (["+trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=1.0"),
])
def test_what_would_not_reach_the_sharded_tables_is_refused_in_one_line(tmp_path, overrides, fused_named, torch_named):
    """FBGEMM's fused optimiser updates the tables inside backward: a plateau scheduler would leave
    them at their lr. Clipping cannot reach a fused update, and no process holds every sharded
    table's gradient for the norm. Refused before any process starts; a scheduler is allowed where the
    table optimiser is torch's (SparseAdam on TorchRec's dense kernel, on a CPU)."""
    from mlet.job import _backend_strategy
    from tests.helpers import compose_cfg

    base = ["embedding=mlet", "embedding.backend=torchrec", "trainer=cpu", *overrides]
    for optimizer, named in (("rowwise_adagrad", fused_named), ("sparse_adam", torch_named)):
        cfg = compose_cfg([*base, f"optimizer={optimizer}"], tmp_path / optimizer)
        if named is None:
            assert "strategy" in _backend_strategy(cfg, tmp_path / optimizer)
            continue
        with pytest.raises(MletError) as err:
            _backend_strategy(cfg, tmp_path / optimizer)
        message = str(err.value)
        assert "\n" not in message and named in message and "sharded tables" in message, message


def test_rowwise_adagrad_sparse_equals_dense_and_keeps_one_value_per_row():
    torch.manual_seed(0)
    weights = [torch.nn.Embedding(20, 8, sparse=s) for s in (True, False)]
    weights[1].weight.data.copy_(weights[0].weight.data)
    opts = [RowWiseAdagrad(w.parameters(), lr=0.1) for w in weights]
    idx = torch.tensor([1, 1, 4, 9])
    for _ in range(3):
        for w, opt in zip(weights, opts):
            opt.zero_grad()
            (w(idx) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(weights[0].weight, weights[1].weight)
    assert opts[0].state[weights[0].weight]["sum"].shape == (20,)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[idx] = False
    assert (opts[0].state[weights[0].weight]["sum"][untouched] == 0).all()


# ---- with torchrec -------------------------------------------------------------------------------
@needs_torchrec
@pytest.mark.parametrize("kind", ["single", "mlet"])
def test_unsharded_torchrec_tables_compute_the_native_outputs(kind):
    def make(backend):
        torch.manual_seed(3)
        if kind == "single":
            return SingleLayerEmbedding(CARDS, 4, backend=backend, init_std=0.1)
        return MLETEmbedding(CARDS, 4, 8, backend=backend, init_std=0.1)

    native, trec = make("native"), make("torchrec")
    after = torch.rand(())  # the backend draws nothing of its own: the next draw is the same
    make("native")
    assert torch.rand(()) == after
    idx = torch.tensor([[0, 1, 10], [6, 2, 0], [6, 2, 0]])
    torch.testing.assert_close(trec(idx), native(idx))
    torch.testing.assert_close(trec.collapse().table.weight, native.collapse().table.weight)
    rows = torch.tensor([0, 8, 20])
    torch.testing.assert_close(trec.collapsed_rows(rows), native.collapsed_rows(rows))
    assert trec.for_evaluation() is trec  # evaluation looks rows up in the (sharded) tables
    assert (trec.train_parameters, trec.train_bytes) == (native.train_parameters, native.train_bytes)


@needs_torchrec
def test_fused_optimizer_follows_the_optimizer_group():
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from mlet.optim import fused_table_optimizer

    def opt(dense, sparse=None, **kw):
        return SparseAwareOptimizer(partial(dense), partial(sparse) if sparse else None, **kw)

    assert fused_table_optimizer(opt(torch.optim.SGD, torch.optim.SGD, lr=0.2)) == {
        "optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.2}
    rowwise = fused_table_optimizer(opt(torch.optim.Adagrad, RowWiseAdagrad, lr=0.01, table_lr_scale=2.0))
    assert rowwise["optimizer"] == EmbOptimType.EXACT_ROWWISE_ADAGRAD and rowwise["learning_rate"] == 0.02
    assert fused_table_optimizer(opt(torch.optim.Adam, torch.optim.SparseAdam, lr=1e-3))["optimizer"] == EmbOptimType.ADAM
    assert fused_table_optimizer(opt(torch.optim.Adagrad, torch.optim.Adagrad, lr=0.01))["optimizer"] == EmbOptimType.EXACT_ADAGRAD
    # no Adam in FBGEMM's CPU kernels: None (the strategy shards those tables on TorchRec's dense kernel)
    assert fused_table_optimizer(opt(torch.optim.Adam, torch.optim.SparseAdam, lr=1e-3), "cpu") is None
    assert fused_table_optimizer(opt(torch.optim.Adam, torch.optim.Adam, lr=1e-3), "cpu") is None
    assert fused_table_optimizer(opt(torch.optim.SGD, torch.optim.SGD, lr=0.2), "cpu")["optimizer"] == EmbOptimType.EXACT_SGD
    with pytest.raises(MletError, match="no fused FBGEMM optimiser for RMSprop"):
        fused_table_optimizer(opt(torch.optim.RMSprop, lr=0.01))


WORKER = Path(__file__).with_name("torchrec_worker.py")


def _run_worker(out: Path, kind: str, sharding: str, world: int, optimizer: str = "sgd") -> dict:
    done = subprocess.run([sys.executable, str(WORKER), str(out), kind, sharding, str(world), optimizer],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
@pytest.mark.parametrize("kind", ["single", "mlet"])
@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_two_process_sharded_training_equals_native_single_process(tmp_path, kind, sharding):
    """Identical initial weights, plain SGD (fused EXACT_SGD for the sharded tables), the same global
    batches: the loss of every step and the final collapsed table (each process collapsing its own
    shards) match the native one-process run."""
    _assert_sharded_equals_native(tmp_path, kind, sharding, "sgd")


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sparse_adam"])
def test_two_process_sharded_training_equals_native_with_each_cpu_table_optimizer(tmp_path, optimizer):
    """The same for MLET, table-wise, with FBGEMM's fused row-wise Adagrad against the native
    RowWiseAdagrad, and with SparseAdam, which FBGEMM cannot fuse on a CPU: TorchRec's dense kernel,
    sharded as planned, its gradient's non-zero rows stepped by torch's SparseAdam."""
    _assert_sharded_equals_native(tmp_path, "mlet", "table_wise", optimizer)


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
@pytest.mark.parametrize("optimizer", ["sgd", "sparse_adam"])
def test_per_table_sharding_trains_like_native(tmp_path, optimizer):
    """embedding.table_sharding: one table replicated (data-parallel, the dense optimiser), one
    column-wise, the rest table-wise, in one collection: still the native run's losses and table."""
    native = _run_worker(tmp_path / "native.pt", "mlet", "auto", 1, optimizer)
    sharded = _run_worker(tmp_path / "sharded.pt", "mlet", "mixed", 2, optimizer)
    kinds = {line.split("|")[0].strip(): line.split("|")[1].strip() for line in sharded["plan"].splitlines()
             if line.startswith("field_") and "rank:" not in line}
    assert kinds == {"field_0": "table_wise", "field_1": "data_parallel", "field_2": "column_wise",
                     "field_3": "table_wise", "field_4": "table_wise"}, kinds
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(native["losses"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sharded["collapsed"], native["collapsed"], rtol=1e-5, atol=1e-6)


def _assert_sharded_equals_native(tmp_path, kind: str, sharding: str, optimizer: str) -> None:
    native = _run_worker(tmp_path / "native.pt", kind, "auto", 1, optimizer)
    sharded = _run_worker(tmp_path / "sharded.pt", kind, sharding, 2, optimizer)
    assert sharding in sharded["plan"] and "rank:1" in sharded["plan"]  # really split over both processes
    kernel = "dense" if optimizer == "sparse_adam" else "fused"
    assert all(kernel in line for line in sharded["plan"].splitlines() if line.startswith("field_") and "|" in line
               and "rank:" not in line)
    if sharding == "table_wise":  # the fields' owners interleave: the sharded output's key order is not the fields'
        owners = [line.split("|")[-1].strip() for line in sharded["plan"].splitlines()
                  if line.startswith("field_") and "rank:" in line]
        assert owners != sorted(owners), owners
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(native["losses"]), rtol=1e-5, atol=1e-6)
    assert len(set(native["losses"])) > 1  # it trained
    torch.testing.assert_close(sharded["collapsed"], native["collapsed"], rtol=1e-5, atol=1e-6)


LIGHTNING_WORKER = Path(__file__).with_name("torchrec_lightning_worker.py")


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
def test_sharded_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """Through Lightning and TorchRecStrategy on 2 processes: sharded checkpoints (every 3 steps,
    torch.distributed.checkpoint); killed at step 7 of 10, resumed from step 6: the same validation
    history and final collapsed table as the run that was never interrupted."""
    def run(out, mode):
        done = subprocess.run([sys.executable, str(LIGHTNING_WORKER), str(out), mode], capture_output=True,
                              text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]

    run(tmp_path / "a", "full")
    run(tmp_path / "b", "kill")
    assert not (tmp_path / "b" / "kill.pt").exists()  # it was killed
    assert (tmp_path / "b" / "ckpt" / "last.ckpt" / "meta.ckpt").is_file()  # a sharded checkpoint directory
    assert len(list((tmp_path / "b" / "ckpt" / "last.ckpt").glob("*.distcp"))) == 2  # one file per process
    run(tmp_path / "b", "resume")
    full, resumed = torch.load(tmp_path / "a" / "full.pt"), torch.load(tmp_path / "b" / "resume.pt")
    assert full["first_step"] == 0 and resumed["first_step"] == 6  # continued, not retrained
    assert resumed["steps"] == full["steps"] == 10
    assert resumed["val_history"] == full["val_history"]
    torch.testing.assert_close(resumed["collapsed"], full["collapsed"], rtol=0, atol=0)
    assert "table_wise" in (tmp_path / "a" / "sharding_plan.txt").read_text()


DONE_WHEN = ["embedding=mlet", "embedding.backend=torchrec", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
SMALL = ["data.rows=3000", "data.num_fields=5", "data.num_dense=3", "data.max_cardinality=300", "model.bottom_mlp=[8]",
         "model.top_mlp=[16]", "embedding.dim=4", "embedding.inner_dim=16", "datamodule.batch_size=256",
         "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
def test_mlet_train_with_torchrec_on_two_cpu_processes_trains_resumes_and_exports(tmp_path):
    """The issue's command as written (the default optimizer=sparse_adam: on a CPU, TorchRec's dense
    kernel with torch's SparseAdam), on small data: killed during its second epoch, the same command
    resumes from the sharded last.ckpt and finishes; started again it reports instead of retraining;
    mlet-export writes the collapsed program, whose test AUC equals the record's (the sharded
    tables' own evaluation): the same model."""
    from tests.helpers import ROOT, run_cli, script

    args = [*DONE_WHEN, *SMALL, "data.rows=40000", "trainer.max_epochs=3"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    killed = subprocess.Popen([script("mlet-train"), *args], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "outputs" / "runs").glob("*/checkpoints/last.ckpt/meta.ckpt")):  # epoch 1 saved
        assert killed.poll() is None and time.monotonic() < deadline, "ended before its first last.ckpt"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert not (run_dir / "record.json").exists() or json.loads((run_dir / "record.json").read_text())["status"] != "completed"

    resumed = run_cli(args, tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed"
    assert [h["epoch"] for h in record["val_history"]] == [0, 1, 2]  # epoch 0 from before the kill, not retrained
    assert "dense" in (run_dir / "sharding_plan.txt").read_text()  # no fused CPU Adam: TorchRec's dense kernel
    again = run_cli(args, tmp_path, timeout=300)
    assert again.returncode == 0 and "finished run" in again.stdout + again.stderr
    assert_export_equals_record(tmp_path, run_dir, record)


@pytest.mark.slow
@pytest.mark.torchrec
@needs_torchrec
def test_mlet_train_with_torchrecs_fused_rowwise_adagrad_evaluates_the_exported_model(tmp_path):
    """optimizer=rowwise_adagrad: FBGEMM's fused kernel, with per-table constraints (field 0
    replicated: row-wise Adagrad in torch on TorchRec's dense kernel; field 3 column-wise). The
    record's test AUC (the sharded tables' evaluation) equals the exported collapsed program's (this
    was an open bug: the sharded collection's output came back in shard order, not field order)."""
    from tests.helpers import run_cli

    per_table = "embedding.table_sharding={0: data_parallel, 3: column_wise}"
    done = run_cli([*DONE_WHEN, "optimizer=rowwise_adagrad", per_table, *SMALL], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    record = json.loads((run_dir / "record.json").read_text())
    plan = (run_dir / "sharding_plan.txt").read_text()
    rows = {line.split("|")[0].strip(): line for line in plan.splitlines() if line.startswith("field_") and "rank:" not in line}
    assert "data_parallel" in rows["field_0"] and "dense" in rows["field_0"], plan
    assert "column_wise" in rows["field_3"] and "fused" in rows["field_3"], plan
    assert "embedding.inner.collection" in plan and "fused" in rows["field_1"]
    assert (Path(record["best_checkpoint"]) / "meta.ckpt").is_file()  # a sharded checkpoint
    assert_export_equals_record(tmp_path, run_dir, record)


def assert_export_equals_record(tmp_path: Path, run_dir: Path, record: dict) -> None:
    """mlet-export of the run: the collapsed n x d program, whose test AUC equals the record's."""
    import numpy as np

    from mlet.data import SyntheticCTR
    from mlet.metrics import auc
    from tests.helpers import run_script

    exported = run_script("mlet-export", [str(run_dir), "--out", str(tmp_path / "exp")], tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    spec = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert spec["sizes"]["embedding_parameters"] == record["embedding_inference_parameters"]  # collapsed: n x d
    program = torch.export.load(str(tmp_path / "exp" / "model.pt2")).module()
    data_cfg = {k: v for k, v in record["config"]["data"].items() if k != "_target_"}
    test = SyntheticCTR(**data_cfg).load().splits["test"]
    with torch.no_grad():
        logits = program(torch.from_numpy(test.dense), torch.from_numpy(test.cat.astype(np.int64)))
    assert torch.isfinite(logits).all() and logits.shape == (len(test.label),)
    assert record["test_auc"] > 0.5
    assert abs(auc(logits, torch.from_numpy(test.label)) - record["test_auc"]) < 1e-6


def test_sweeps_see_the_dim_constraint_before_a_job_starts():
    assert "embedding.dim=2" in SingleLayerEmbedding.config_problem({"dim": 2, "backend": "torchrec"})
    assert SingleLayerEmbedding.config_problem({"dim": 2}) is None
    assert "embedding.inner_dim=6" in MLETEmbedding.config_problem({"dim": 4, "inner_dim": 6, "backend": "torchrec"})
