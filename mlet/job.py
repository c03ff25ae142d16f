"""One training job, as ``mlet-train`` runs it: build data and module from a composed config, fit,
test the best checkpoint (collapsed model), and write the run record ``record.json``.

``mlet.train`` is only the command-line entry point around :func:`run`; ``mlet-export`` rebuilds a
network with :func:`build_module`, the same builder training uses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlet import sweep
from mlet.config_check import check_config
from mlet.module import CTRModule, init_model_
from mlet.records import write_record

log = logging.getLogger("mlet.train")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a keyed group (callbacks, loggers); empty or null -> []."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def build_module(cfg: DictConfig, cardinalities: list[int], num_dense: int) -> CTRModule:
    """The Lightning module for a data schema: the embedding first, then the model sized by it."""
    embedding = instantiate(cfg.embedding)(cardinalities=cardinalities)
    model = instantiate(cfg.model)(num_fields=len(cardinalities), embed_dim=embedding.dim, num_dense=num_dense)
    init_model_(model, cfg.get("model_init", "default"))
    scheduler = cfg.get("lr_scheduler")
    return CTRModule(
        embedding=embedding, model=model, optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(scheduler) if scheduler else None, embedding_l2=cfg.get("embedding_l2", 0.0),
    )


def build(cfg: DictConfig):
    """Data module and Lightning module from a composed config."""
    source = instantiate(cfg.data)
    datamodule = instantiate(cfg.datamodule, source=source)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule, build_module(cfg, datamodule.cardinalities, datamodule.num_dense)


def save_run_spec(output_dir: Path, cfg: DictConfig, datamodule) -> None:
    """The resolved config and the data schema, saved at the start of a run: enough to rebuild
    the network from any of its checkpoints (``mlet-export``) without the data."""
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    arrays = datamodule.arrays
    schema = {
        "dataset": arrays.name,
        "dense_names": list(arrays.dense_names),
        "cat_names": list(arrays.cat_names),
        "cardinalities": [int(c) for c in arrays.cardinalities],
    }
    write_record(output_dir / "schema.json", schema)


def _resume_from(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` only when this run directory holds a last checkpoint (else a fresh start, quietly)."""
    if ckpt_path != "last":
        return ckpt_path
    if any((output_dir / "checkpoints").glob("last*.ckpt")):
        log.info("resuming from %s", output_dir / "checkpoints" / "last.ckpt")
        return "last"
    return None


def _drop_resume_checkpoints(cfg: DictConfig, output_dir: Path, keep: str) -> None:
    """Delete ``last*.ckpt`` of a finished run as ``keep_last_checkpoint`` says (auto: in a multirun)."""
    setting = cfg.get("keep_last_checkpoint", "auto")  # checked by check_config
    if setting is True or (setting == "auto" and not sweep.in_multirun()):
        return
    for path in (output_dir / "checkpoints").glob("last*.ckpt"):
        if str(path) != keep:
            path.unlink(missing_ok=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test as the config says; returns the run record.

    A job whose output directory already holds a record (unless ``force=true``), a duplicate or an
    invalid sweep combination, or one that another process is training right now (two sweeps on
    the same output root), is skipped before anything is built (see ``mlet.sweep``); it returns
    the existing record (or ``{}``) with ``status: skipped``.
    """
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    with sweep.job_lock(output_dir) as held_elsewhere:
        # checked under the lock: a concurrent sweep may have just finished this job
        skip = ("running", held_elsewhere, None) if held_elsewhere else sweep.skip_reason(cfg, output_dir)
        if skip is not None:
            status, reason, existing = skip
            sweep.note_outcome(output_dir, status, reason)
            return {**(existing or {}), "status": "skipped", "skipped": status, "skip_reason": reason}
        check_config(cfg)
        return _train(cfg, output_dir, started)


def _train(cfg: DictConfig, output_dir: Path, started: float) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    save_run_spec(output_dir, cfg, datamodule)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "run": sweep.identity(cfg)})

    log.info("embedding: %s", module.embedding)
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_from(cfg.ckpt_path, output_dir))
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, verbose=False)

    record = make_record(cfg, module, trainer, ckpt, seconds=time.time() - started)
    write_record(output_dir / "record.json", record)
    sweep.note_outcome(output_dir, "trained")
    if trainer.is_global_zero:
        _drop_resume_checkpoints(cfg, output_dir, keep=ckpt)
    for lg in loggers:
        if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in record.items() if k != "config"})
            lg.experiment.finish()  # one wandb run per job, also inside a multirun
    log.info(
        "collapsed %s d=%s: val_auc=%.5f test_auc=%s test_logloss=%s  (record: %s)",
        record["embedding"], record["dim"], record["val_auc"] or float("nan"),
        f"{record['test_auc']:.5f}" if record["test_auc"] is not None else "-",
        f"{record['test_logloss']:.5f}" if record["test_logloss"] is not None else "-",
        output_dir / "record.json",
    )
    return record


def _choice(group: str, target: str) -> str:
    """The config option chosen for ``group`` (e.g. ``dlrm``); the class name outside Hydra."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return target.rsplit(".", 1)[-1]


def make_record(cfg: DictConfig, module: CTRModule, trainer: pl.Trainer, ckpt: str, seconds: float) -> dict:
    emb = module.embedding
    model_params = sum(p.numel() for p in module.net.model.parameters())
    val = module.results.get("val", {})
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    test = module.results.get("test", {})
    extra = {}  # analyses from callbacks with record_items() (mlet.callbacks: buckets, spectrum)
    for cb in trainer.callbacks:
        if callable(getattr(cb, "record_items", None)):
            extra.update(cb.record_items())
    return {
        "status": "completed",
        "data": _choice("data", cfg.data._target_),
        "model": _choice("model", cfg.model._target_),
        "embedding": getattr(emb, "kind", type(emb).__name__),
        "dim": emb.dim,
        "inner_dim": getattr(emb, "inner_dim", None),
        "seed": int(cfg.seed),
        "val_auc": float(best) if best is not None else val.get("val_auc"),
        "val_logloss": val.get("val_logloss"),
        "test_auc": test.get("test_auc"),
        "test_logloss": test.get("test_logloss"),
        "train_parameters": emb.train_parameters + model_params,
        "inference_parameters": emb.inference_parameters + model_params,
        "embedding_train_parameters": emb.train_parameters,
        "embedding_inference_parameters": emb.inference_parameters,
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "best_checkpoint": ckpt or None,
        "seconds": round(seconds, 2),
        "device": str(trainer.strategy.root_device),
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
        **extra,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
