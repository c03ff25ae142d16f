"""``mlet-train`` end to end on tiny data: in-process and through the command line."""

import json
import os
from pathlib import Path

import pytest
import torch

from mlet.job import run
from tests.helpers import TINY, compose_cfg, run_cli

REQUIRED = {
    "data", "model", "embedding", "dim", "inner_dim", "seed", "val_auc", "test_auc", "test_logloss",
    "train_parameters", "inference_parameters", "seconds", "config",
}


@pytest.mark.parametrize("embedding", ["single", "mlet"])
def test_train_writes_record_and_learns(embedding, tmp_path):
    cfg = compose_cfg([*TINY, f"embedding={embedding}", "trainer.max_epochs=3", "data.rows=6000"], tmp_path)
    record = run(cfg)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert REQUIRED <= set(on_disk)
    assert on_disk["embedding"] == embedding
    assert on_disk["data"] == "synthetic" and on_disk["model"] == "dlrm"
    assert on_disk["dim"] == 4
    assert on_disk["inner_dim"] == (16 if embedding == "mlet" else None)
    assert record["test_auc"] == on_disk["test_auc"]
    assert on_disk["test_auc"] > 0.6  # learns well beyond chance on 4.8k training rows
    assert 0 < on_disk["test_logloss"] < 0.69
    assert on_disk["config"]["embedding"]["dim"] == 4
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if embedding == "mlet":
        assert on_disk["train_parameters"] > on_disk["inference_parameters"]
    else:
        assert on_disk["train_parameters"] == on_disk["inference_parameters"]


def test_keep_best_checkpoint_false_deletes_it_after_the_record(tmp_path):
    """A large sweep keeps only what mlet-report reads: the record, with best_checkpoint null; the
    checkpoint it names is gone, and mlet-export says why it has nothing to export."""
    from mlet.export import ExportError, locate

    cfg = compose_cfg([*TINY, "embedding=single", "trainer.max_epochs=2", "keep_best_checkpoint=false"], tmp_path)
    run(cfg)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "completed" and record["test_auc"] > 0.5
    assert record["best_checkpoint"] is None
    assert not list((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    (tmp_path / "checkpoints" / "last.ckpt").unlink()  # as a multirun job leaves it
    with pytest.raises(ExportError, match="keep_best_checkpoint=false"):
        locate(tmp_path)

    kept = compose_cfg([*TINY, "embedding=single", "trainer.max_epochs=2"], tmp_path / "kept")
    run(kept)
    best = json.loads((tmp_path / "kept" / "record.json").read_text())["best_checkpoint"]
    assert best and Path(best).is_file()


def test_evaluation_scores_the_collapsed_model(tmp_path):
    cfg = compose_cfg([*TINY, "embedding=mlet", "trainer.max_epochs=1"], tmp_path)
    from mlet.job import build
    from mlet.metrics import auc

    datamodule, module = build(cfg)
    calls = []
    original = module.embedding.collapse

    def spy():
        calls.append(1)
        return original()

    module.embedding.collapse = spy
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_train_batches=2, accelerator="cpu")
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert calls  # validation and test collapse the embedding
    # the logged test AUC equals an independent evaluation of the collapsed single-layer net
    collapsed = original()
    module.eval()
    with torch.no_grad():
        logits, labels = [], []
        for dense, cat, label in datamodule.test_dataloader():
            logits.append(module.net.model(collapsed(cat), dense))
            labels.append(label)
    assert module.results["test"]["test_auc"] == pytest.approx(auc(torch.cat(logits), torch.cat(labels)), abs=1e-9)


@pytest.mark.slow  # starts processes
def test_cli_end_to_end_prints_collapsed_metrics(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "error.txt").write_text("mlet-train: error: an earlier attempt's\n")
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["embedding"] == "mlet"
    assert not (tmp_path / "run" / "error.txt").exists()  # the completed run no longer shows an old error
    assert f"test_auc={record['test_auc']:.5f}" in proc.stdout + proc.stderr


@pytest.mark.slow  # starts processes
def test_cli_multirun_two_points(tmp_path):
    proc = run_cli(["-m", *TINY, "embedding=single,mlet", "trainer.max_epochs=1",
                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((tmp_path / "sweep").rglob("record.json"))
    kinds = sorted(json.loads(p.read_text())["embedding"] for p in records)
    assert kinds == ["mlet", "single"]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("embedding=foo", "embedding"),
        ("embedding.dim=0", "embedding.dim must be a positive integer"),
        ("embedding.inner_dim=2", "inner_dim >= dim"),
        ("keep_last_checkpoint=sometimes", "keep_last_checkpoint='sometimes': expected auto, true or false"),
    ],
)
@pytest.mark.slow  # starts processes
def test_cli_bad_input_is_one_clear_line(override, needle, tmp_path):
    proc = run_cli([*TINY, override, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlet-train: error: "), proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    record = tmp_path / "run" / "record.json"
    assert not record.exists() or json.loads(record.read_text())["status"] == "failed"


@pytest.mark.slow  # starts processes
def test_unknown_group_option_lists_the_choices(tmp_path):
    proc = run_cli([*TINY, "embedding=foo"], cwd=tmp_path, timeout=120)
    assert "mlet" in proc.stderr and "single" in proc.stderr


@pytest.mark.slow  # starts processes
def test_wandb_offline_run_writes_local_files(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_CONSOLE": "off"}
    overrides = [o for o in TINY if not o.startswith("logger=")]
    proc = run_cli([*overrides, "logger=wandb", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds its .wandb log for `wandb sync`"


@pytest.fixture
def count_steps(monkeypatch):
    """Counts the training steps actually executed."""
    from mlet.module import CTRModule

    calls = []
    original = CTRModule.training_step

    def counting(self, batch, batch_idx):
        calls.append(batch_idx)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CTRModule, "training_step", counting)
    return calls


def test_resume_from_checkpoint_continues(tmp_path, count_steps):
    first = compose_cfg([*TINY, "trainer.max_epochs=1", "callbacks.early_stopping.patience=5"], tmp_path / "a")
    rec1 = run(first)
    steps_per_epoch = rec1["steps"]
    assert len(count_steps) == steps_per_epoch
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    second = compose_cfg([*TINY, "trainer.max_epochs=3", f"ckpt_path={last}", "callbacks.early_stopping.patience=5"],
                         tmp_path / "b")
    rec2 = run(second)
    assert rec2["steps"] == 3 * steps_per_epoch
    assert rec2["epochs"] == 3
    # continued: the second run executed only the two missing epochs
    assert len(count_steps) == 3 * steps_per_epoch


def test_ckpt_path_last_resumes_in_the_same_run_dir(tmp_path, count_steps):
    rec1 = run(compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path))
    assert rec1["epochs"] == 1
    # an interrupted run has no record yet; a finished one would be skipped (see test_sweep.py)
    (tmp_path / "record.json").unlink()
    # same output dir, default ckpt_path=last: continues from checkpoints/last.ckpt
    rec2 = run(compose_cfg([*TINY, "trainer.max_epochs=2", "callbacks.early_stopping.patience=5"], tmp_path))
    assert rec2["steps"] == 2 * rec1["steps"]
    assert len(count_steps) == 2 * rec1["steps"]  # not 3: the second run did one epoch


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    from mlet.models.dlrm import DLRM

    monkeypatch.setattr(DLRM, "forward", lambda self, emb, dense: emb.sum(dim=(1, 2)) * float("nan"))
    proc_cfg = compose_cfg([*TINY, "trainer.max_epochs=1"], tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        run(proc_cfg)
    assert not (tmp_path / "record.json").exists()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("+embedding.dimm=3", "embedding.dimm: not a setting of mlet.embeddings.MLETEmbedding"),
        ("embedding.dim=abc", "embedding.dim='abc': expected int"),
        ("embedding.share_projection=maybe", "embedding.share_projection='maybe': expected bool"),
        ("+model.hidden=[3]", "model.hidden: not a setting"),
        ("embedding.inner_dim=2", "inner_dim >= dim"),
        ("keep_last_checkpoint=sometimes", "keep_last_checkpoint='sometimes': expected auto, true or false"),
        ("keep_best_checkpoint=sometimes", "keep_best_checkpoint='sometimes': expected true or false"),
    ],
)
def test_config_is_checked_before_any_work(override, needle, tmp_path, monkeypatch):
    from mlet.config_check import ConfigError
    from mlet.data.synthetic import SyntheticCTR

    def fail(self):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(SyntheticCTR, "load", fail)
    with pytest.raises(ConfigError) as info:
        run(compose_cfg([*TINY, override], tmp_path))
    assert needle in str(info.value)


@pytest.mark.slow  # starts processes
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc = run_cli(["-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "embedding=single,mlet",
                    "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("record.json")]
    assert sorted(r["embedding"] for r in records) == ["mlet", "single"]


def test_slurm_launcher_config_composes(tmp_path):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1


def test_resume_with_the_csv_logger_writes_a_new_version(tmp_path):
    """A resumed run logs new metric keys (validation) that an interrupted run's csv header lacks."""
    overrides = [o for o in TINY if o != "logger=none"] + ["logger=csv"]
    cfg = compose_cfg([*overrides, "trainer.max_epochs=1"], tmp_path)
    run(cfg)
    # as if interrupted mid-epoch: no record, and a csv that holds only training-step columns
    (tmp_path / "record.json").unlink()
    first = next((tmp_path / "csv").rglob("metrics.csv"))
    first.write_text("epoch,step,train_loss_step\n0,10,0.6\n")
    run(compose_cfg([*overrides, "trainer.max_epochs=2", "callbacks.early_stopping.patience=5"], tmp_path))
    versions = sorted(p.parent.name for p in (tmp_path / "csv").rglob("metrics.csv"))
    assert versions == ["version_0", "version_1"]
    assert "val_auc" in (tmp_path / "csv" / "version_1" / "metrics.csv").read_text().splitlines()[0]
