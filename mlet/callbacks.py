"""Lightning callbacks that add analyses to the run record.

A callback with a ``record_items() -> dict`` method contributes those items to ``record.json``
(``mlet.job.make_record`` merges them); the computations themselves live in
:mod:`mlet.analysis`.

* :class:`FrequencyBuckets`: test AUC/logloss per training-frequency bucket -> ``record["buckets"]``.
* :class:`EmbeddingSpectrum`: singular values and effective rank of every field's collapsed table
  -> ``record["spectrum"]`` (and the wandb run, when a ``WandbLogger`` is attached), plus the mean
  effective rank after every validation -> ``record["effective_rank_history"]``.
* :class:`AbsentRowMovement`: how far the collapsed rows a batch did not touch move per optimiser
  step -> ``record["absent_row_movement"]`` (MLET's mechanism; zero for a single-layer table
  under SGD or a sparse optimiser, not under dense Adam, whose moments move every row).
* :class:`PhaseTimer`: seconds spent training, validating and testing, and the training loop's
  own throughput -> ``record["seconds_train"]``, ``["seconds_validate"]``, ``["seconds_test"]``,
  ``["train_samples"]``, ``["train_samples_per_second"]``.
* :class:`LogProgress`: plain log lines (step, epoch, samples/s, loss, ETA; one per validated
  epoch) where a tqdm bar is of no use: output redirected to a file, or the bar turned off.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from mlet.analysis import DEFAULT_EDGES, absent_row_movement, bucket_metrics, check_edges, spectrum
from mlet.embeddings.single import SingleLayerEmbedding
from mlet.module import best_validation

log = logging.getLogger(__name__)


def _arrays(trainer: pl.Trainer):
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "arrays", None)


class FrequencyBuckets(pl.Callback):
    """After testing, the collapsed model's test AUC/logloss on the rows whose category falls in
    each training-frequency bucket.

    Args:
        edges: upper bucket edges; ``[0, 10, 100, 1000]`` gives the buckets 0 (unseen in
            training), 1-10, 11-100, 101-1000 and >1000 occurrences.
        field: a field index or name whose category decides the bucket; ``None``: the row's rarest
            field (the one whose category has the smallest training count).
    """

    def __init__(self, edges: Sequence[int] = DEFAULT_EDGES, field: int | str | None = None) -> None:
        self.edges = check_edges(edges)
        self.field = field
        self.buckets: list[dict] | None = None
        self.bucket_field: str | None = None

    def _field_index(self, names: Sequence[str]) -> int | None:
        if self.field is None:
            return None
        if isinstance(self.field, str) and not self.field.lstrip("-").isdigit():
            if self.field not in names:
                raise ValueError(f"callbacks.frequency_buckets.field={self.field!r} is not a field; fields: {list(names)}")
            return list(names).index(self.field)
        index = int(self.field)
        if not 0 <= index < len(names):
            raise ValueError(f"callbacks.frequency_buckets.field={index} is out of range (0..{len(names) - 1})")
        return index

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        test = getattr(pl_module, "results", {}).get("test")
        arrays = _arrays(trainer)
        if not test or arrays is None or arrays.counts is None or "test" not in arrays.splits:
            log.warning("frequency buckets: no test predictions or no training counts; skipped")
            return
        logits, labels = test["logits"], test["labels"]
        cat = arrays.splits["test"].cat
        if len(logits) > len(cat):
            raise ValueError(f"frequency buckets: {len(logits)} test predictions for {len(cat)} test rows")
        if len(logits) < len(cat):  # limit_test_batches: evaluation slices in order, so a prefix
            log.warning("frequency buckets: %d of %d test rows were scored; using those", len(logits), len(cat))
            cat = cat[: len(logits)]
        field = self._field_index(arrays.cat_names)
        self.bucket_field = "rarest" if field is None else arrays.cat_names[field]
        self.buckets = bucket_metrics(logits, labels, np.asarray(cat), arrays.counts, self.edges, field)

    def record_items(self) -> dict[str, Any]:
        if self.buckets is None:
            return {}
        return {"buckets": self.buckets, "bucket_field": self.bucket_field}


class EmbeddingSpectrum(pl.Callback):
    """Singular values and effective rank (Roy & Vetterli 2007, entropy of the normalised singular
    values) of each field's collapsed ``n_f x d`` table.

    Computed when training ends and again after testing (the tested weights, i.e. the best
    checkpoint, replace those of the last step); ``record["spectrum"]`` holds one entry per field
    and ``record["spectrum_source"]`` says which weights (``"last"`` or ``"tested"``).
    """

    def __init__(self) -> None:
        self.fields: list[dict] | None = None
        self.source: str | None = None
        self.history: list[dict] = []

    @torch.no_grad()
    def compute(self, embedding, names: Sequence[str] | None = None) -> list[dict]:
        collapsed = embedding.collapse()
        if isinstance(collapsed, SingleLayerEmbedding):
            weight = collapsed.table.weight.detach()
        else:  # a reduced deployed form (hashed, QR, TT, mixed-dimension tables): its n x d rows
            weight = collapsed.collapsed_rows(torch.arange(collapsed.total_rows, device=collapsed.offsets.device))
        names = list(names) if names is not None else [str(f) for f in range(len(collapsed.cardinalities))]
        out, start = [], 0
        for f, n in enumerate(collapsed.cardinalities):
            out.append({"field": names[f], **spectrum(weight[start : start + n])})
            start += n
        return out

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, source: str) -> None:
        arrays = _arrays(trainer)
        self.fields = self.compute(pl_module.embedding, arrays.cat_names if arrays is not None else None)
        self.source = source
        self._log_wandb(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fields = self.compute(pl_module.embedding)
        rank = float(np.mean([f["effective_rank"] for f in fields]))
        self.history.append({"epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
                             "effective_rank_mean": rank})
        pl_module.log("effective_rank_mean", rank)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "last")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "tested")

    def mean_effective_rank(self) -> float | None:
        if not self.fields:
            return None
        return float(np.mean([f["effective_rank"] for f in self.fields]))

    def _log_wandb(self, trainer: pl.Trainer) -> None:
        for lg in trainer.loggers:
            if lg.__class__.__name__ != "WandbLogger":
                continue
            import wandb

            run = lg.experiment
            rows = [[f["field"], i + 1, s] for f in self.fields for i, s in enumerate(f["singular_values"])]
            run.log({
                "spectrum/singular_values": wandb.Table(columns=["field", "index", "singular_value"], data=rows),
            })
            run.summary.update({
                "spectrum/effective_rank_mean": self.mean_effective_rank(),
                **{f"spectrum/effective_rank/{f['field']}": f["effective_rank"] for f in self.fields},
            })

    def record_items(self) -> dict[str, Any]:
        if self.fields is None:
            return {}
        return {
            "spectrum": self.fields,
            "spectrum_source": self.source,
            "effective_rank_mean": self.mean_effective_rank(),
            "effective_rank_history": self.history,
        }


class AbsentRowMovement(pl.Callback):
    """Every ``every_n_steps`` training steps, snapshot ``sample_rows`` random rows of the collapsed
    table before and after the optimiser step and measure how far the rows the batch did not
    touch moved (:func:`mlet.analysis.absent_row_movement`); the record holds the means over the
    measured steps.
    """

    def __init__(self, every_n_steps: int = 50, sample_rows: int = 4096, seed: int = 0) -> None:
        if every_n_steps < 1 or sample_rows < 1:
            raise ValueError("callbacks.absent_row_movement: every_n_steps and sample_rows must be positive")
        self.every_n_steps = every_n_steps
        self.sample_rows = sample_rows
        self.seed = seed
        self._rows: torch.Tensor | None = None
        self._before: torch.Tensor | None = None
        self._present: torch.Tensor | None = None
        self.measurements: list[dict] = []

    def _sample(self, embedding) -> torch.Tensor:
        if self._rows is None:
            g = torch.Generator().manual_seed(self.seed)
            n = embedding.total_rows
            rows = torch.randperm(n, generator=g)[: self.sample_rows] if n > self.sample_rows else torch.arange(n)
            self._rows = rows.sort().values.to(embedding.offsets.device)
        return self._rows

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = None
        if trainer.global_step % self.every_n_steps:
            return
        embedding = pl_module.embedding
        rows = self._sample(embedding)
        touched = embedding.rows(batch[1]).reshape(-1)
        self._present = torch.isin(rows, touched)
        self._before = embedding.collapsed_rows(rows).detach().clone()

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is None:
            return
        after = pl_module.embedding.collapsed_rows(self._rows)
        result = absent_row_movement(self._before, after, self._present)
        if result is not None:
            self.measurements.append(result)
        self._before = None

    def record_items(self) -> dict[str, Any]:
        if not self.measurements:
            return {}
        keys = ("absent_mean", "absent_relative_mean", "present_mean")
        summary = {
            k: float(np.mean([m[k] for m in self.measurements if m[k] is not None]))
            for k in keys
            if any(m[k] is not None for m in self.measurements)
        }
        return {"absent_row_movement": {**summary, "steps_measured": len(self.measurements)}}


def _batch_rows(batch) -> int:
    """Rows in a ``(dense, cat, label)`` batch."""
    return int(len(batch[-1])) if isinstance(batch, (list, tuple)) and batch else 0


class PhaseTimer(pl.Callback):
    """Wall-clock seconds per phase, from Lightning's hooks, summed over every epoch.

    * ``train``: the training loop (batches, optimiser steps and the callbacks run per batch),
      without the validation Lightning runs inside each training epoch;
    * ``validate``: every validation pass (the sanity check included);
    * ``test``: the test pass.

    ``train_samples_per_second`` is the rows trained (all processes under DDP) over the training
    seconds: the loop's own throughput, without data preparation or evaluation. The totals are
    saved in the checkpoints, so a resumed run counts the time before the interruption too (the
    batches redone after the last checkpoint count once). (Lightning's ``Timer`` callback keeps
    only the latest interval of each stage, and counts validation into training.)

    The job's own totals, ``seconds`` (wall clock, preparation to record) and ``seconds_prepare``,
    are summed over the processes of a resumed run the same way: the job hands each process's
    start and preparation time to :meth:`begin_process`, the checkpoints carry the running sums
    (an interrupted process counted up to its last checkpoint), and ``record_items`` gives the
    totals.
    """

    def __init__(self) -> None:
        self.seconds = {"train": 0.0, "validate": 0.0, "test": 0.0}
        self.train_samples = 0
        self._started: dict[str, float] = {}
        self._loaded: dict[str, Any] | None = None
        # this process (wall-clock start, preparation seconds) and the processes before a resume
        self._process: tuple[float, float] | None = None
        self.earlier = {"wall": 0.0, "prepare": 0.0}

    def begin_process(self, started: float, seconds_prepare: float) -> None:
        """This process's wall-clock start (``time.time()``) and its preparation seconds."""
        self._process = (started, seconds_prepare)

    def _job_totals(self) -> dict[str, float]:
        if self._process is None:
            return {}
        started, prepare = self._process
        return {"wall": self.earlier["wall"] + time.time() - started, "prepare": self.earlier["prepare"] + prepare}

    def _start(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def _stop(self, phase: str) -> float:
        started = self._started.pop(phase, None)
        if started is None:
            return 0.0
        elapsed = time.perf_counter() - started
        self.seconds[phase] += elapsed
        return elapsed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start("train")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_samples += _batch_rows(batch) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start("validate")

    def on_validation_end(self, trainer, pl_module) -> None:
        elapsed = self._stop("validate")
        if "train" in self._started:  # validation inside a training epoch: not training time
            self.seconds["train"] -= elapsed

    def on_test_start(self, trainer, pl_module) -> None:
        self._loaded = None
        self._start("test")

    def on_test_end(self, trainer, pl_module) -> None:
        self._stop("test")

    def on_exception(self, trainer, pl_module, exception) -> None:
        for phase in list(self._started):
            self._stop(phase)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "train_samples": self.train_samples, "job": self._job_totals()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict  # applied when a fit resumes, not when the best checkpoint is tested

    def on_fit_start(self, trainer, pl_module) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded:
            self.seconds.update(loaded.get("seconds", {}))
            self.train_samples = int(loaded.get("train_samples", 0))
            self.earlier.update(loaded.get("job", {}))

    def samples_per_second(self) -> float | None:
        return self.train_samples / self.seconds["train"] if self.seconds["train"] > 0 else None

    def record_items(self) -> dict[str, Any]:
        rate = self.samples_per_second()
        job = self._job_totals()
        return {
            **({"seconds": round(job["wall"], 2), "seconds_prepare": round(job["prepare"], 3)} if job else {}),
            **{f"seconds_{phase}": round(s, 3) for phase, s in self.seconds.items()},
            "train_samples": self.train_samples,
            "train_samples_per_second": round(rate, 1) if rate is not None else None,
        }


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LogProgress(pl.Callback):
    """Progress as plain log lines, for output that is not a terminal.

    Every ``every_n_steps`` optimiser steps or ``every_seconds`` seconds, whichever comes first,
    one line: epoch, step of the run, samples/s (since the previous line), training loss, and
    an estimate of the time left (to ``trainer.max_epochs``; early stopping may end sooner). After
    each validation: one line with val AUC/logloss and the best so far.

    Args:
        when: ``auto`` (default): when stdout is not a terminal (redirected to a file, a pipe, a
            cluster's log) or the progress bar is off (``trainer.enable_progress_bar=false``, as in
            ``+sweep=quick``); ``always``; ``never``. Where it logs, mlet turns tqdm's bar off.
        every_n_steps: a line every this many steps (0: by time only).
        every_seconds: a line at least this often (0: by steps only).
    """

    WHEN = ("auto", "always", "never")

    def __init__(self, when: str = "auto", every_n_steps: int = 0, every_seconds: float = 30.0) -> None:
        if when not in self.WHEN:
            raise ValueError(f"callbacks.progress_log.when={when!r}: expected one of {', '.join(self.WHEN)}")
        if every_n_steps < 0 or every_seconds < 0 or not (every_n_steps or every_seconds):
            raise ValueError("callbacks.progress_log: every_n_steps and every_seconds must be >= 0, one of them > 0")
        self.when = when
        self.every_n_steps = int(every_n_steps)
        self.every_seconds = float(every_seconds)
        self._last_time = 0.0
        self._last_step = 0
        self._last_samples = 0
        self._samples = 0
        self._fit_started = 0.0
        self._first_step = 0
        self._logging = False  # decided once per fit (on_train_start), not on every batch

    def active(self, progress_bar_enabled: bool = True) -> bool:
        """Whether lines are logged; ``progress_bar_enabled``: the trainer config's setting."""
        if self.when != "auto":
            return self.when == "always"
        return not sys.stdout.isatty() or not progress_bar_enabled

    def _on(self, trainer) -> bool:
        return trainer.is_global_zero and self.active(trainer.progress_bar_callback is not None)

    def on_train_start(self, trainer, pl_module) -> None:
        self._logging = self._on(trainer)
        self._fit_started = self._last_time = time.perf_counter()
        self._first_step = self._last_step = int(trainer.global_step)
        self._samples = self._last_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._logging:
            return
        self._samples += _batch_rows(batch) * trainer.world_size
        now, step = time.perf_counter(), int(trainer.global_step)
        by_steps = self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step
        by_time = self.every_seconds and now - self._last_time >= self.every_seconds
        if not (by_steps or by_time):
            return
        rate = (self._samples - self._last_samples) / max(now - self._last_time, 1e-9)
        total = trainer.estimated_stepping_batches
        done = step - self._first_step
        eta = "-"
        if done > 0 and total and total != float("inf"):
            eta = _duration((now - self._fit_started) / done * max(total - step, 0))
        loss = trainer.callback_metrics.get("train_loss_step")
        batches = trainer.num_training_batches
        log.info(
            "epoch %d/%s batch %d/%s step %d/%s | %.0f samples/s | loss %s | ETA %s",
            trainer.current_epoch + 1, trainer.max_epochs if trainer.max_epochs not in (None, -1) else "-",
            batch_idx + 1, batches if batches != float("inf") else "-", step,
            total if total != float("inf") else "-", rate,
            f"{float(loss):.4f}" if loss is not None else "-", eta,
        )
        self._last_time, self._last_step, self._last_samples = now, step, self._samples

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._on(trainer):
            return
        history = getattr(pl_module, "results", {}).get("val_history") or []
        if not history:
            return
        last = history[-1]
        best = best_validation(history, getattr(pl_module, "selection_metric", "val_auc"))
        log.info(
            "epoch %d/%s validated: val_auc %.5f val_logloss %.5f (best %.5f, best_epoch=%d) | %s elapsed",
            last["epoch"] + 1, trainer.max_epochs if trainer.max_epochs not in (None, -1) else "-",
            last["val_auc"], last["val_logloss"], best["val_auc"], best["epoch"],  # 0-based, as record and checkpoints
            _duration(time.perf_counter() - self._fit_started),
        )
