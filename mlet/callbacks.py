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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from mlet.analysis import DEFAULT_EDGES, absent_row_movement, bucket_metrics, check_edges, spectrum

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
        weight = collapsed.table.weight.detach()
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
