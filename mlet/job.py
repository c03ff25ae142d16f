"""One training job, as ``mlet-train`` runs it: build data and module from a composed config, fit,
test the best checkpoint (collapsed model), and write the run record ``record.json``.

``mlet.train`` is only the command-line entry point around :func:`run`; ``mlet-export`` rebuilds a
network with :func:`build_module`, the same builder training uses.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlet import resume, sweep
from mlet.callbacks import LogProgress, PhaseTimer
from mlet.config_check import check_config
from mlet.errors import MletError
from mlet.module import CTRModule, best_validation, init_model_
from mlet.records import RECORD_NAME, RECORD_VERSION, RunRecord, write_json

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
        quantize=cfg.get("quantize", "none"),
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
        # the config group options chosen (data=..., model=...): a run continued with
        # ckpt_path=<run>/checkpoints/... is named by them (mlet.resume)
        "choices": _choices(),
    }
    write_json(output_dir / "schema.json", schema)


def _backend_strategy(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """``{"strategy": TorchRecStrategy}`` under ``embedding.backend=torchrec`` (mlet.torchrec_strategy:
    sharded tables, fused optimiser, sharded checkpoints; it takes the place of ``trainer.strategy``
    auto or ddp), else nothing."""
    if OmegaConf.select(cfg, "embedding.backend", default="native") != "torchrec":
        return {}
    chosen = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    if chosen not in ("auto", "ddp"):
        raise MletError(f"embedding.backend=torchrec trains with its own strategy (DDP with sharded tables): "
                        f"trainer.strategy={chosen} cannot be used with it (use trainer=cpu, gpu or ddp)")
    from mlet.embeddings.torchrec import require_torchrec
    from mlet.optim import fused_table_optimizer
    from mlet.torchrec_strategy import TorchRecStrategy

    require_torchrec()
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    # refused before any process starts: an optimiser FBGEMM has no kernel for, and what would silently
    # leave the sharded tables out: a scheduler with FBGEMM's fused optimiser (it updates the tables inside
    # backward, at their own lr); gradient clipping (a fused update happens before it, and no process holds
    # every table's gradient for the global norm)
    fused = fused_table_optimizer(instantiate(cfg.optimizer), "cuda" if on_gpu else "cpu") is not None
    unreached = [f"lr_scheduler={_choices().get('lr_scheduler') or 'set'}"] if fused and cfg.get("lr_scheduler") else []
    if OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None):
        unreached.append(f"trainer.gradient_clip_val={OmegaConf.select(cfg, 'trainer.gradient_clip_val')}")
    if unreached:
        raise MletError(
            f"embedding.backend=torchrec: {' and '.join(unreached)} would not reach the sharded tables (FBGEMM's "
            "fused table optimiser updates them inside backward, at their own lr; no process holds every table's "
            "gradient for a clipping norm): leave them unset, or use embedding.backend=native")
    return {"strategy": TorchRecStrategy(plan_dir=output_dir)}


def _remove_checkpoint(path: Path) -> None:
    """A checkpoint file, or a sharded one (a directory: embedding.backend=torchrec)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _drop_resume_checkpoints(cfg: DictConfig, output_dir: Path, keep: str) -> None:
    """Delete ``last*.ckpt`` of a finished run as ``keep_last_checkpoint`` says (auto: in a multirun)."""
    setting = cfg.get("keep_last_checkpoint", "auto")  # checked by check_config
    if setting is True or (setting == "auto" and not sweep.in_multirun()):
        return
    for path in (output_dir / "checkpoints").glob("last*.ckpt"):
        if str(path) != keep:
            _remove_checkpoint(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test as the config says; returns the run record.

    A job whose output directory already holds a record (unless ``force=true``), a duplicate or an
    invalid sweep combination, or one that another process is training right now (two sweeps on
    the same output root), is skipped before anything is built (see ``mlet.sweep``); it returns
    the existing record (or ``{}``) with ``status: skipped``. ``ckpt_path=<run>/checkpoints/<file>``
    continues that run with its own config (``mlet.resume``).
    """
    started = time.time()
    cfg = resume.restore_run_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if sweep.process_rank() != 0:
        # a DDP rank started for this job by rank 0, which holds the job lock and decided to train
        check_config(cfg)
        return _train(cfg, output_dir, started)
    with sweep.job_lock(output_dir) as held_elsewhere:
        # checked under the lock: a concurrent sweep may have just finished this job
        skip = ("running", held_elsewhere, None) if held_elsewhere else sweep.skip_reason(cfg, output_dir)
        if skip is not None:
            return _skipped(output_dir, *skip)
        check_config(cfg)
        if sweep.in_multirun():
            log.info("job %s: started", output_dir.name)
        retrain = bool(cfg.get("force", False)) and (output_dir / RECORD_NAME).is_file()
        try:
            return _train(cfg, output_dir, started, retrain=retrain)
        except KeyboardInterrupt:  # before or after fitting (Lightning handles it inside fit)
            _interrupted(output_dir)
            raise


def _skipped(output_dir: Path, status: str, reason: str, existing: RunRecord | None) -> dict[str, Any]:
    """Note a job that does not train, and return the record it stands on (if any) marked skipped."""
    sweep.note_outcome(output_dir, status, reason)
    if existing is not None:
        log.info("finished run %s", summary_line(existing, Path(existing.path or output_dir)))
    previous = existing.to_json() if existing is not None else {}
    return {**previous, "status": "skipped", "skipped": status, "skip_reason": reason}


def _interrupted(output_dir: Path) -> None:
    last = output_dir / "checkpoints" / "last.ckpt"
    where = (f"it continues from {last}, saved at the last epoch end or 30-minute save" if last.is_file()
             else "no checkpoint was written yet: it starts afresh")
    log.warning("interrupted (%s); continue this run with: %s", where, resume.continue_command())


def _resume_from(ckpt_path: str | None, output_dir: Path, retrain: bool) -> str | None:
    """``last`` only when this run directory holds a last checkpoint (else a fresh start, quietly).
    ``force=true`` on a finished run starts afresh: the old run's checkpoints are deleted."""
    if ckpt_path != "last":
        return ckpt_path
    checkpoints = output_dir / "checkpoints"
    if retrain:
        old = sorted(checkpoints.glob("*.ckpt"))
        for path in old:
            _remove_checkpoint(path)
        log.info("force=true: retraining from scratch%s", f" (deleted the finished run's {len(old)} checkpoint(s))" if old else "")
        return None
    if any(checkpoints.glob("last*.ckpt")):
        log.info("resuming from %s", checkpoints / "last.ckpt")
        return "last"
    return None


def _fit(trainer: pl.Trainer, module: CTRModule, datamodule, ckpt_path: str | None, output_dir: Path) -> None:
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl-C into SystemExit(1) after its clean-up
            _interrupted(output_dir)
        raise
    except RuntimeError as exc:
        if ckpt_path and "state_dict" in str(exc):
            first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc)[:200])
            raise MletError(
                f"ckpt_path={ckpt_path}: the checkpoint does not fit the network this config builds ({first}); "
                "give the overrides it was trained with, or a checkpoint inside its run directory "
                "(<run>/checkpoints/, next to the run's config.yaml), whose config is then restored"
            ) from exc
        raise


def _train(cfg: DictConfig, output_dir: Path, started: float, retrain: bool = False) -> dict[str, Any]:
    backend = _backend_strategy(cfg, output_dir)  # a TorchRec backend that cannot run fails before the data is built
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    if sweep.process_rank() == 0:
        same = sweep.same_model_as(cfg, output_dir, module.embedding.arm())
        if same is not None:  # a budget that chose the knob another budget's job already trained
            return _skipped(output_dir, "duplicate", *same)
        save_run_spec(output_dir, cfg, datamodule)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    bar = bool(OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True))
    # plain progress lines instead of tqdm's bar where the bar is of no use (mlet.callbacks.LogProgress)
    plain = any(isinstance(cb, LogProgress) and cb.active(bar) for cb in callbacks)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      **({"enable_progress_bar": False} if plain and bar else {}),
                                      **backend)
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "run": sweep.identity(cfg)})

    log.info("embedding: %s", module.embedding)
    seconds_prepare = time.time() - started
    for cb in callbacks:  # a resumed run's totals add the earlier processes' (PhaseTimer keeps them)
        if isinstance(cb, PhaseTimer):
            cb.begin_process(started, seconds_prepare)
    if cfg.train:
        _fit(trainer, module, datamodule, _resume_from(cfg.ckpt_path, output_dir, retrain), output_dir)
    best = best_checkpoint_callback(trainer)
    ckpt = best.best_model_path if best is not None else ""
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, verbose=False)

    record = make_record(cfg, module, trainer, ckpt, seconds=time.time() - started, seconds_prepare=seconds_prepare)
    drop_best = bool(ckpt) and cfg.get("keep_best_checkpoint", True) is False
    if drop_best:
        record.best_checkpoint = None
    if trainer.is_global_zero:  # one record per job, also under DDP
        record.write(output_dir / RECORD_NAME)
        sweep.note_outcome(output_dir, "trained")
        _drop_resume_checkpoints(cfg, output_dir, keep="" if drop_best else ckpt)
        if drop_best and Path(ckpt).exists():  # after the record: a kill in between loses no result
            _remove_checkpoint(Path(ckpt))
    for lg in loggers:
        if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in record.to_json().items() if k != "config"})
            lg.experiment.finish()  # one wandb run per job, also inside a multirun
    if trainer.is_global_zero:  # rank 0 wrote the record; the other ranks finish quietly
        log.info("%s %s", f"job {output_dir.name}: done," if sweep.in_multirun() else "done:", summary_line(record, output_dir))
    return record.to_json()


def _fmt(value: Any) -> str:
    return f"{value:.5f}" if isinstance(value, (int, float)) else "-"


def summary_line(record: RunRecord, output_dir: Path) -> str:
    """One line naming the run (data, model, embedding, d, the arm's other keys, seed) with its metrics."""
    kind, label = record.kind, record.label or ""
    keys = label[len(kind):] if kind and label.startswith(kind) else (f" ({label})" if label else "")
    best_epoch = record.best_epoch
    return (
        f"data={record.data} model={record.model} embedding={kind} d={record.dim}{keys} seed={record.seed}: "
        f"collapsed val_auc={_fmt(record.val_auc)}"
        f"{f' (best_epoch={best_epoch})' if best_epoch is not None else ''} "
        f"test_auc={_fmt(record.test_auc)} test_logloss={_fmt(record.test_logloss)} "
        f"| {record.seconds if record.seconds is not None else '-'} s | record: {output_dir / RECORD_NAME}"
    )


def _choices() -> dict[str, str]:
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {str(g): str(c) for g, c in choices.items() if c is not None and not str(g).startswith("hydra/")}


def _choice(group: str, target: str) -> str:
    """The config option chosen for ``group`` (e.g. ``dlrm``); the class name outside Hydra."""
    return _choices().get(group) or target.rsplit(".", 1)[-1]


def best_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The callback keeping the best checkpoint (the first with a monitored metric; the
    ``last.ckpt`` writers monitor nothing)."""
    monitored = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
    return monitored[0] if monitored else trainer.checkpoint_callback


def validation_summary(history: list[dict[str, Any]], selection: str = "val_auc") -> dict[str, Any]:
    """Best and last validation epoch of a run's per-epoch history. Every un-prefixed figure is
    the best epoch's (:func:`mlet.module.best_validation` by ``selection``, the metric the best
    checkpoint watched)."""
    if not history:
        return {}
    best, last = best_validation(history, selection), history[-1]
    return {
        "val_auc": best["val_auc"], "val_logloss": best["val_logloss"], "best_epoch": best["epoch"],
        "best_step": best["step"],
        "last_val_auc": last["val_auc"], "last_val_logloss": last["val_logloss"], "last_epoch": last["epoch"],
        "val_history": history,
    }


def quantization_summary(module: CTRModule, validation: dict[str, Any]) -> dict[str, Any]:
    """With ``quantize`` set: the unquantised deployed model of the same checkpoint (the network
    training chose), its AUC and log loss at the best epoch and on test and its deployed sizes,
    beside the quantised figures the record's ``val_auc``, ``test_auc``, ``inference_bytes`` and
    ``model_bytes`` hold: what a ``quantize=none`` run of the same config and seed records
    (``mlet-report`` reads it as that run)."""
    if module.quantize == "none":
        return {}
    best = next((h for h in validation.get("val_history", []) if h.get("epoch") == validation.get("best_epoch")), {})
    test = module.results.get("test", {})
    unquantized_bytes = module.embedding.inference_bytes
    return {
        "val_auc_unquantized": best.get("val_auc_unquantized"),
        "val_logloss_unquantized": best.get("val_logloss_unquantized"),
        "test_auc_unquantized": test.get("test_auc_unquantized"),
        "test_logloss_unquantized": test.get("test_logloss_unquantized"),
        "inference_bytes_unquantized": unquantized_bytes,
        "model_bytes_unquantized": module.model_bytes - module.inference_bytes + unquantized_bytes,
    }


def make_record(cfg: DictConfig, module: CTRModule, trainer: pl.Trainer, ckpt: str, seconds: float,
                seconds_prepare: float | None = None) -> RunRecord:
    emb = module.embedding
    # the model's weights and the first-order table (CTRNet.first_order) beside the embedding
    model_weights = [p for n, p in module.net.named_parameters() if not n.startswith("embedding.")]
    model_params = sum(p.numel() for p in model_weights)
    val = module.results.get("val", {})
    callback = best_checkpoint_callback(trainer)
    best = callback.best_model_score if callback is not None else None
    test = module.results.get("test", {})
    validation = validation_summary(module.results.get("val_history", []), module.selection_metric)
    if not validation:  # no validation in this process (train=false): what the checkpoint callback kept
        kept = float(best) if best is not None and module.selection_metric == "val_auc" else None
        validation = {"val_auc": kept if kept is not None else val.get("val_auc"), "val_logloss": val.get("val_logloss")}
    extra = {}  # analyses from callbacks with record_items() (mlet.callbacks: buckets, spectrum, timing)
    for cb in trainer.callbacks:
        if callable(getattr(cb, "record_items", None)):
            extra.update(cb.record_items())
    return RunRecord.from_json({
        "record_version": RECORD_VERSION,
        "status": "completed",
        "data": _choice("data", cfg.data._target_),
        "model": _choice("model", cfg.model._target_),
        "embedding": emb.kind,
        "dim": emb.dim,
        "inner_dim": emb.arm().get("inner_dim"),
        "arm": emb.arm(),
        "label": emb.label(),
        "seed": int(cfg.seed),
        **validation,
        "test_auc": test.get("test_auc"),
        "test_logloss": test.get("test_logloss"),
        "train_parameters": emb.train_parameters + model_params,
        "inference_parameters": emb.inference_parameters + model_params,
        "embedding_train_parameters": emb.train_parameters,
        "embedding_inference_parameters": emb.inference_parameters,
        "embedding_train_bytes": emb.train_bytes,
        # deployed bytes: the collapsed (and quantised) embedding, and the whole network with it
        "inference_bytes": module.inference_bytes,
        "model_bytes": module.model_bytes,
        "quantize": module.quantize,
        **quantization_summary(module, validation),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "best_checkpoint": ckpt or None,
        "seconds": round(seconds, 2),  # this process's; PhaseTimer's record items give a resumed run's total
        "seconds_prepare": round(seconds_prepare, 3) if seconds_prepare is not None else None,
        "device": str(trainer.strategy.root_device),
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
        **extra,
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
