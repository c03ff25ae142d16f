"""Run records: one ``record.json`` per finished (or failed) run, written atomically.

:class:`RunRecord` is the record's one type: :meth:`RunRecord.write` its one writer (``mlet.job``
for a finished run, ``mlet.train`` for a failed one) and :func:`read_record` its one reader (the
report, ``mlet.sweep.skip_reason``, ``mlet-export``). On disk it is one flat JSON object with
``record_version``; a file without it is version 1 (written before the arm and label were
recorded) and still reads: its arm comes from ``embedding`` / ``dim`` / ``inner_dim``. Version 3:
a quantised run (``quantize`` not none) chose its checkpoint on the unquantised validation AUC (in
version 2 on the quantised one) and holds the unquantised deployed sizes, so it records both forms
of one trained network (``mlet-report`` reads the unquantised form as a ``quantize=none`` run).

A record exists only once its run has finished and its file is complete (written to a temporary
file, flushed to disk, then renamed), so a sweep can trust any record it finds. Write errors
(disk full, permissions) propagate: a run never silently lacks its record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"
RECORD_VERSION = 3
STATUSES = ("completed", "failed")


@dataclass
class RunRecord:
    """What one run leaves behind. Every field is a key of ``record.json``; keys this version
    does not name (a newer mlet's, a custom callback's ``record_items``) are kept in ``extra``."""

    status: str = "completed"  # completed | failed
    # ---- identity: data and model options, the embedding's arm and label, the seed
    data: str | None = None
    model: str | None = None
    embedding: str | None = None  # the arm's kind
    dim: int | None = None
    inner_dim: int | None = None  # the arm's inner_dim where it has one (as version 1 recorded it)
    arm: dict[str, Any] = field(default_factory=dict)  # FieldEmbedding.arm(): {"kind", "dim", **arm_keys}
    label: str | None = None  # FieldEmbedding.label(): the method's display name
    seed: int | None = None
    # ---- metrics: validation at its best epoch (and the last), per epoch, test of the best checkpoint
    val_auc: float | None = None
    val_logloss: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    last_val_auc: float | None = None
    last_val_logloss: float | None = None
    last_epoch: int | None = None
    val_history: list[dict[str, Any]] = field(default_factory=list)
    test_auc: float | None = None
    test_logloss: float | None = None
    # ---- sizes: parameters, and bytes (train: what training holds; deployed: the collapsed model)
    train_parameters: int | None = None  # embedding (trained form) + network
    inference_parameters: int | None = None  # embedding (deployed form) + network
    embedding_train_parameters: int | None = None
    embedding_inference_parameters: int | None = None
    embedding_train_bytes: int | None = None
    inference_bytes: int | None = None  # the deployed embedding (FieldEmbedding.inference_bytes)
    model_bytes: int | None = None  # the whole deployed model: inference_bytes + the network's parameters
    # ---- quantisation of the deployed tables (quantize=...): val_auc/test_auc and the bytes above
    # are the quantised model's; these the same checkpoint unquantised (set only when quantize is not
    # none; the checkpoint is chosen on val_auc_unquantized from version 3 on, the sizes from version 3)
    quantize: str | None = None  # none | fp16 | int8 | int4 (None: a record from before the option)
    val_auc_unquantized: float | None = None
    val_logloss_unquantized: float | None = None
    test_auc_unquantized: float | None = None
    test_logloss_unquantized: float | None = None
    inference_bytes_unquantized: int | None = None
    model_bytes_unquantized: int | None = None
    # ---- how it ran: epochs, checkpoint, device, phase seconds and throughput
    epochs: int | None = None
    steps: int | None = None
    best_checkpoint: str | None = None
    device: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    seconds_prepare: float | None = None
    seconds_train: float | None = None
    seconds_validate: float | None = None
    seconds_test: float | None = None
    train_samples: int | None = None
    train_samples_per_second: float | None = None
    # ---- diagnostics (mlet.callbacks): frequency buckets, spectrum, absent-row movement
    buckets: list[dict[str, Any]] | None = None
    bucket_field: str | None = None
    spectrum: list[dict[str, Any]] | None = None
    spectrum_source: str | None = None
    effective_rank_mean: float | None = None
    effective_rank_history: list[dict[str, Any]] | None = None
    absent_row_movement: dict[str, Any] | None = None
    # ---- a failed run: its error (user_error: a config or input error, no traceback) and identity
    error: str | None = None
    error_type: str | None = None
    user_error: bool | None = None
    traceback: str | None = None
    run: dict[str, Any] | None = None
    # ---- the resolved config the run was trained with
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    record_version: int = RECORD_VERSION
    path: str | None = None  # the run directory it was read from (not written)

    # ---- reading
    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | None = None) -> "RunRecord":
        """A record from its JSON object, of any version (version 1: no ``record_version``)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"not a run record (a JSON {type(data).__name__}, not an object)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "path"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "path"}
        known.setdefault("record_version", 1)
        record = cls(**known, extra=extra, path=path if path is not None else data.get("path"))
        if not record.arm and record.embedding is not None:  # version 1: built-in kinds only
            k = record.inner_dim if record.embedding != "single" else None
            record.arm = {"kind": record.embedding, "dim": record.dim, **({"inner_dim": k} if k is not None else {})}
        if record.label is None and record.arm:
            record.label = legacy_label(record.arm)
        return record

    # ---- writing
    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of ``record.json`` (``extra`` keys beside the fields; no ``path``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "path")}
        return {**self.extra, **out}

    def write(self, path: str | os.PathLike) -> Path:
        """The one writer of run records (atomic, see :func:`write_json`)."""
        return write_json(path, self.to_json())

    # ---- dict-style reading of the JSON keys (as records were read before they had a type)
    def __getitem__(self, key: str) -> Any:
        data = self.to_json()
        if self.path is not None:
            data["path"] = self.path
        return data[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    # ---- what the readers ask
    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def kind(self) -> str | None:
        return self.arm.get("kind", self.embedding)

    def unquantized(self) -> RunRecord | None:
        """The unquantised deployed form of a quantised run (record version 3 on): what a
        ``quantize=none`` run of the same config and seed records, as this run measured it. The
        training is the same (the checkpoint was chosen on the unquantised validation AUC), so the
        metrics and sizes are that run's; the per-bucket test AUCs, measured on the quantised model
        only, are absent. None for an unquantised run, or one recorded before version 3."""
        if self.quantize in (None, "none") or self.inference_bytes_unquantized is None:
            return None
        history = [{"epoch": h.get("epoch"), "step": h.get("step"), "val_auc": h.get("val_auc_unquantized"),
                    "val_logloss": h.get("val_logloss_unquantized")} for h in self.val_history]
        last = history[-1] if history else {}
        config = json.loads(json.dumps(self.config)) if self.config is not None else None
        if config is not None:
            config["quantize"] = "none"
            # the callbacks' monitors resolve to val_auc in an unquantised run (mlet.module.selection_metric)
            for callback in (config.get("callbacks") or {}).values():
                if isinstance(callback, dict) and callback.get("monitor") == "val_auc_unquantized":
                    callback["monitor"] = "val_auc"
        quantized = {f"{name}_unquantized" for name in ("val_auc", "val_logloss", "test_auc", "test_logloss",
                                                          "inference_bytes", "model_bytes")}
        return dataclasses.replace(
            self, quantize="none", **{name: None for name in quantized},
            val_auc=self.val_auc_unquantized, val_logloss=self.val_logloss_unquantized,
            last_val_auc=last.get("val_auc"), last_val_logloss=last.get("val_logloss"), val_history=history,
            test_auc=self.test_auc_unquantized, test_logloss=self.test_logloss_unquantized,
            inference_bytes=self.inference_bytes_unquantized, model_bytes=self.model_bytes_unquantized,
            config=config, buckets=None,
        )

    def config_value(self, dotted: str, default: Any = None) -> Any:
        """A key of the resolved config (``embedding.inner_dim``), ``default`` where it is absent."""
        node: Any = self.config or {}
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def legacy_label(arm: Mapping[str, Any]) -> str:
    """The label of a version-1 record's arm (only mlet's built-in kinds existed): ``<kind>`` or
    ``<kind> k=<inner_dim>``, as the embedding classes label them."""
    k = arm.get("inner_dim")
    return f"{arm.get('kind')}" + (f" k={int(k)}" if k is not None else "")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as JSON to ``path`` atomically, readable like any other file the run writes
    (mode 0666 less the umask; ``mkstemp`` alone would leave it 0600). Run records, ``schema.json``
    and ``model.json`` are written by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_clean(dict(record)), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(path: str | os.PathLike, record: RunRecord | Mapping[str, Any]) -> Path:
    """Write a run record (or any JSON object) atomically: :meth:`RunRecord.write`, :func:`write_json`."""
    return record.write(path) if isinstance(record, RunRecord) else write_json(path, record)


def find_records(roots: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for root in roots:
        root = Path(root)
        if root.is_file() and root.name == RECORD_NAME:
            yield root
        elif root.is_dir():
            yield from sorted(root.rglob(RECORD_NAME))


def read_record(path: str | os.PathLike) -> RunRecord:
    """The one reader of ``record.json`` files, of every version; ``ValueError`` naming the file
    when it is no run record."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return RunRecord.from_json(data, path=str(path.parent))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not a valid run record ({exc.msg})") from exc
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
