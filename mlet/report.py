"""``mlet-report [DIR ...]``: tables and plots from the run records under the given directories.

Reads every ``record.json`` (recursively) into one table of runs (:func:`runs_frame`, one row per
run) and writes into ``--out`` (default ``outputs/report``) a ``report.md`` made of the sections in
:data:`SECTIONS`, numbered in order, each with its CSVs and PNGs:

* ``runs.csv``: one row per run;
* tuning (with ``--tune KEY[,KEY...]``): ``tuning.csv`` (every arm and setting tried, its mean
  validation AUC) and ``tuning_choice.csv`` (the setting each arm is reported at, and whether it
  lies on the edge of the grid);
* ``auc_vs_dim.csv``: test AUC and logloss per dataset, model, embedding type, k and d, mean and
  sample standard deviation (ddof 1) over seeds, with the number of seeds;
* ``dim_reduction.csv`` / ``dim_reduction_summary.csv``: per dataset, model and method (each
  embedding type other than the single-layer reference, and k), the single-layer reference AUC
  (largest single-layer d, or ``--reference-dim``), the method's smallest d whose mean AUC >=
  reference - ``--tolerance``, the factor reference_d / method_d ("never" when no d reaches it); the
  summary gives the largest and the mean factor per dataset and over everything (the ``mlet_*``
  columns hold the method's figures, whatever its type, named so for compatibility);
* ``auc_vs_inner_dim.csv``: AUC against k at fixed d (where more than one k was run);
* ``buckets.csv`` / ``buckets_compare.csv``: test AUC/logloss per training-frequency bucket
  (``record["buckets"]``), single-layer vs each method at equal d;
* ``spectrum.csv`` / ``spectrum_fields.csv``: effective rank (Roy & Vetterli 2007) of the
  collapsed tables (``record["spectrum"]``);
* ``absent_rows.csv`` / ``effective_rank_history.csv``: MLET's mechanism per arm
  (``record["absent_row_movement"]``, ``record["effective_rank_history"]``).

An arm is a (dataset, model, embedding type, k, d) and every setting of the run's resolved config
that defines the experiment (all keys but :data:`NOT_EXPERIMENT`: paths, loggers, progress output,
checkpointing, the seed, ...). Runs of the same arm and seed found twice count once (the newest),
and the report names the keys in which the dropped record differs. Runs of the same (dataset,
model, embedding, k, d) whose settings differ are reported apart: every table is split by the keys
that differ, as ``--by`` would, and the report names them; a single-layer run that lacks such a
setting (e.g. ``embedding.init``) is the reference of every split it agrees with.
``--by optimizer.lr embedding.init`` splits every table by those config keys explicitly;
``--ignore data.path`` makes a key not tell arms apart.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd

from mlet.errors import MletError
from mlet.records import RECORD_NAME, RunRecord, find_records, read_record

log = logging.getLogger("mlet.report")

KEYS = ["data", "model"]
# A method: the embedding kind, its label (the record's: the embedding class names its arm keys in
# it) and k (the arm's inner_dim where it has one, shown in the tables as its own column).
SERIES = ["embedding", "label", "k"]
ARM = [*KEYS, *SERIES, "dim"]
REFERENCE = "single"  # the embedding kind every other kind is compared with

# Config keys (and key prefixes) that do not define the experiment: two runs that differ only in
# these are the same arm (seeds are averaged, not told apart).
NOT_EXPERIMENT = (
    "seed", "datamodule.seed",  # the seed: runs of one arm differ in it (datamodule.seed is ${seed})
    # in the arm already, as the record's d and k (a single-layer table ignores its inner_dim)
    "embedding.dim", "embedding.inner_dim",
    "paths", "logger", "hydra", "task_name", "force", "tags", "ckpt_path", "keep_last_checkpoint", "keep_best_checkpoint",
    "train", "test",
    "trainer.default_root_dir", "trainer.accelerator", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.enable_checkpointing",
    "callbacks.model_checkpoint", "callbacks.last_checkpoint", "callbacks.periodic_checkpoint",
    "callbacks.frequency_buckets", "callbacks.embedding_spectrum", "callbacks.absent_row_movement",
    "callbacks.phase_timer", "callbacks.progress_log",
    "datamodule.num_workers", "datamodule.eval_batch_size", "embedding.eval_mode",
    "data.cache_dir", "data.workers", "data.block_bytes", "data.segment_bytes", "data.progress",
    "data.on_bad_line",
)

# What the record holds beyond the run's scalars: kept in the runs table, read by the sections.
_NESTED = ["buckets", "bucket_field", "spectrum", "absent_row_movement", "effective_rank_history"]
_METRICS = ["test_auc", "test_logloss", "val_auc", "effective_rank_mean", "inference_bytes", "model_bytes",
            "test_auc_unquantized"]


# ---- labels: the one place that names a method ------------------------------------------------
_KIND_NAMES = {"mlet": "MLET", "single": "single-layer"}  # prose names that differ from the kind


def split_kind(kind) -> tuple[str, str]:
    """A method's embedding type and quantisation: ``"hash+int8"`` -> ``("hash", "int8")``, ``"hash"`` -> ``("hash", "")``."""
    base, _, quantized = str(kind).partition("+")
    return base, quantized


def kind_name(kind) -> str:
    """An embedding kind in prose: ``mlet`` -> ``MLET`` (``mlet+int8`` -> ``MLET+int8``), any other kind as
    the record names it."""
    base, quantized = split_kind(kind)
    return _KIND_NAMES.get(base, base) + (f"+{quantized}" if quantized else "")


def arm_label(kind, k) -> str:
    """The label of a method whose record names none: ``single``, ``<kind>`` or ``<kind> k=<inner_dim>``
    (a record carries its embedding class's label: :attr:`mlet.records.RunRecord.label`)."""
    if kind == REFERENCE or _isnan(k) or k is None:
        return str(kind)
    return f"{kind} k={int(k)}"


# ---- loading -----------------------------------------------------------------------------------
def _flatten(node, prefix: str = "") -> dict:
    """A nested config as ``{"a.b.c": value}``; lists (and empty dicts) as their ``str``."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node) if isinstance(node, (dict, list)) else node} if prefix else {}


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


def load_records(dirs: Iterable[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """Every readable record of a finished run under ``dirs``, and warnings."""
    records, warnings = [], []
    for path in find_records(dirs):
        try:
            rec = read_record(path)
        except (ValueError, OSError) as exc:
            warnings.append(f"skipped unreadable record {path}: {exc}")
            continue
        if rec.failed:  # written by a failed mlet-train run: no results
            warnings.append(f"skipped the record of a failed run {path}: {rec.error}")
            continue
        records.append(rec)
    return records, warnings


def _mtime(rec: RunRecord) -> float:
    path = Path(rec.path or ".") / RECORD_NAME
    return path.stat().st_mtime if path.is_file() else 0.0


def _same_value(a, b) -> bool:
    return a == b or (_missing(a) and _missing(b))


def _missing(x) -> bool:
    return x is None or _isnan(x)


def _fmt_values(values) -> str:
    shown = sorted({"-" if _missing(v) else str(v) for v in values})
    return ", ".join(shown)


def runs_frame(records: Sequence[RunRecord], by: Sequence[str] = (), ignore: Sequence[str] = ()
               ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The one table of runs: a row per record with the ``by`` config keys, data, model, embedding,
    k (NaN for the single-layer reference), dim, seed, metrics, path, mtime and the record's nested
    analyses (``buckets``, ``spectrum``, ...).

    Runs of one (by, data, model, embedding, k, d) whose experiment-defining settings (every config
    key but :data:`NOT_EXPERIMENT` and ``ignore``) differ are different arms: the keys that differ
    become columns too and are returned as the third value. Runs of the same arm and seed count once
    (the newest record). A quantised run (record version 3 on) is also read as the unquantised run of
    its config and seed (:meth:`RunRecord.unquantized`: the same training), unless that run's own
    record is there. Returns the runs, warnings, and those extra keys."""
    ignore = [*NOT_EXPERIMENT, *ignore]
    rows, configs, derived = [], [], []
    forms = [(rec, False) for rec in records]
    forms += [(form, True) for rec in records if (form := rec.unquantized()) is not None]
    for rec, is_derived in forms:
        derived.append(is_derived)
        arm = rec.arm
        k = arm.get("inner_dim")
        # a quantised deployment is a method of its own: kind "<kind>+int8", label "<label> int8"
        quantized = rec.quantize not in (None, "none")
        rows.append({
            "data": rec.data, "model": rec.model, "embedding": rec.kind + (f"+{rec.quantize}" if quantized else ""),
            "label": (rec.label or arm_label(rec.kind, k)) + (f" {rec.quantize}" if quantized else ""),
            "k": float(k) if k is not None else np.nan,
            "dim": arm.get("dim", rec.dim), "seed": rec.seed,
            **{m: getattr(rec, m) for m in _METRICS},
            "path": rec.path, "mtime": _mtime(rec),
            **{n: getattr(rec, n) for n in _NESTED},
        })
        configs.append(_flatten(rec.config or {}))
    base = [*KEYS, *SERIES, "dim", "seed", *_METRICS, "path", "mtime", *_NESTED]
    df = pd.DataFrame(rows, columns=base)
    cfg = pd.DataFrame(configs, index=df.index, dtype=object)
    for key in by:
        if key not in cfg:
            raise MletError(f"{key} (--by or --tune): no run record's config has this key")
        df[key] = cfg[key]
    warnings: list[str] = []
    if df.empty:
        return df[[*by, *base]], warnings, []
    for col in _METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce")

    # keys that tell runs of one (by, data, model, embedding, k, d) apart become columns as well
    defining = [c for c in cfg.columns if not _ignored(c, ignore) and c not in by]
    group = [*by, *ARM]
    split: list[str] = []
    for key, part in cfg[defining].groupby([df[g] for g in group], dropna=False, sort=True):
        counts = part.nunique()
        differ = list(counts.index[counts > 1])
        new = [c for c in differ if c not in split]
        if new:
            what = ", ".join(f"{c} ({_fmt_values(part[c])})" for c in differ)
            arm = ", ".join(f"{n}={_k(v) if n == 'k' else _fmt_values([v])}" for n, v in zip(group, key))
            warnings.append(f"runs of the same {', '.join(group)} (e.g. {arm}) differ in {what}: reported as "
                            f"separate arms, every table split by {', '.join(new)}; name the split yourself with "
                            f"`--by {' '.join(new)}` (or `--tune KEY` to report each arm at its best setting)")
            split += new
    for key in split:
        df[key] = cfg[key]

    # the same arm and seed twice: the newest record counts, a run's own record before one read from
    # its quantised twin (the same training: no warning)
    ident = [*by, *split, *ARM, "seed"]
    df = df.assign(_own=[not d for d in derived]).sort_values(["_own", "mtime"], kind="stable")
    ident_str = df[ident].astype(str)
    dup = ident_str.duplicated(keep="last")
    newest = {tuple(r): i for i, r in zip(df.index, ident_str.itertuples(index=False))}
    for i in df.index[dup & df["_own"]]:
        j = newest[tuple(ident_str.loc[i])]
        keys = sorted(set(configs[i]) | set(configs[j]))
        differ = [c for c in keys if not _same_value(configs[i].get(c), configs[j].get(c))]
        warnings.append(f"duplicate run (same settings and seed): a newer record is used instead of "
                        f"{df.loc[i, 'path']} ({df.loc[j, 'path']}); "
                        + (f"they differ only in {', '.join(differ)} (settings that do not define the experiment; "
                           "to keep such runs apart, pass `--by KEY`)" if differ else "their configs are equal"))
    df = df[~dup]
    df = _ordered(df[[*by, *split, *base]], [*by, *split], then=["seed"])
    return df, warnings, split


def tune_runs(runs: pd.DataFrame, keys: str | Sequence[str], by: Sequence[str] = ()
              ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Keep, for each arm (data, model, embedding, k, d), only the runs with the combination of
    ``keys`` (e.g. ``optimizer.lr``) whose mean validation AUC over seeds is best: every arm is
    compared at its own best-tuned setting, chosen on validation, never on test. Returns the kept
    runs, the grid (one row per arm and combination: mean validation AUC, seeds, chosen) and the
    choice (one row per arm: its combination and ``edge``, the keys whose chosen value is the
    smallest or largest value that arm tried)."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    arm = [*by, *ARM]
    scored = runs.dropna(subset=["val_auc"])
    gcols = [*arm, *keys, "val_auc_mean", "seeds", "chosen"]
    ccols = [*arm, *keys, "val_auc_mean", "seeds", "edge"]
    if scored.empty:
        return runs.iloc[0:0], pd.DataFrame(columns=gcols), pd.DataFrame(columns=ccols)
    # a tuned key may hold None beside numbers (embedding.init_std under table_init=uniform): compare as
    # objects throughout, or a filtered frame (all numbers: float64) would not merge with the grid's
    as_object = {k: object for k in keys}
    runs, scored = runs.astype(as_object), scored.astype(as_object)
    grid = scored.groupby([*arm, *keys], dropna=False).agg(val_auc_mean=("val_auc", "mean"),
                                                          seeds=("seed", "nunique")).reset_index()
    grid = grid.astype(as_object)
    best = grid.loc[grid.groupby(arm, dropna=False)["val_auc_mean"].idxmax()]
    grid = grid.merge(best[[*arm, *keys]].assign(chosen=True), on=[*arm, *keys], how="left")
    grid["chosen"] = grid["chosen"].eq(True)
    kept = runs.merge(best[[*arm, *keys]], on=[*arm, *keys], how="inner")

    def edge(row) -> str:
        tried = grid[np.logical_and.reduce([_eq(grid[c], row[c]) for c in arm])]
        notes = []
        for key in keys:
            values = pd.to_numeric(tried[key], errors="coerce").dropna().unique()
            chosen = pd.to_numeric(pd.Series([row[key]]), errors="coerce").iloc[0]
            if len(values) < 2 or _isnan(chosen):
                continue
            if chosen == values.min():
                notes.append(f"{key} at the smallest value tried")
            elif chosen == values.max():
                notes.append(f"{key} at the largest value tried")
        return "; ".join(notes)

    best = best.assign(edge=[edge(r) for _, r in best.iterrows()]) if len(best) else best.assign(edge="")
    return kept, _ordered(grid, by)[gcols], _ordered(best, by)[ccols]


def untuned_settings(keys: Sequence[str], given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The value each of ``keys`` has when it is not tuned: ``given[key]`` where given (``--untuned
    KEY=VALUE``), else the value of mlet-train's default config (e.g. ``optimizer.lr`` 0.001,
    ``embedding.init_std`` 0.0001)."""
    given = dict(given or {})
    missing = [k for k in keys if k not in given]
    if missing:
        from hydra import compose, initialize_config_module
        from omegaconf import OmegaConf

        with initialize_config_module("mlet.conf", version_base="1.3"):
            cfg = compose("train")
        for key in missing:
            value = OmegaConf.select(cfg, key, default="???missing")
            if value == "???missing":
                raise MletError(f"{key}: not a key of mlet-train's default config; give its untuned value "
                                f"with --untuned {key}=VALUE")
            given[key] = value
    return {k: given[k] for k in keys}


def _held(column: pd.Series, value) -> np.ndarray:
    return np.array([_same_value(v, value) for v in column], dtype=bool)


def control_groups(keys: Sequence[str]) -> list[list[str]]:
    """The tuned keys grouped into controls, one per config group (``optimizer.lr`` alone;
    ``embedding.table_init`` with ``embedding.init_std``, which together are the init), in order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".")[0], []).append(key)
    return list(groups.values())


def control_gains(runs: pd.DataFrame, tune: Sequence[str], untuned: Mapping[str, Any],
                  by: Sequence[str] = ()) -> pd.DataFrame:
    """How much of each method's gain over the single-layer reference survives each control.

    For every subset of the controls (:func:`control_groups`; none, each alone, ..., all): the keys
    of the controls in the subset are tuned per arm on validation AUC (:func:`tune_runs`), the others
    held at their ``untuned`` value; then each method's mean test AUC minus the single-layer
    reference's at the same (by, data, model, d), both selected the same way. A row per method arm
    and subset: ``control`` names the tuned groups ("none" for none), ``method_auc``,
    ``reference_auc``, ``gain``; ``missing`` names untuned values never run (then no gain)."""
    groups = control_groups(tune)
    cols = [*by, *ARM, "control", "method_auc", "reference_auc", "gain", "seeds", "missing"]
    arms = _methods(runs.dropna(subset=["test_auc"]))[[*by, *ARM]].drop_duplicates()
    rows = []
    for size in range(len(groups) + 1):
        for subset in itertools.combinations(groups, size):
            tuned = [k for g in subset for k in g]
            fixed = [k for k in tune if k not in tuned]
            name = " + ".join(",".join(g) for g in subset) or "none"
            sel = runs
            for key in fixed:
                sel = sel[_held(sel[key], untuned[key])]
            absent = [f"{k}={untuned[k]}" for k in fixed if not _held(runs[k], untuned[k]).any()]
            if tuned:
                sel, _, _ = tune_runs(sel, tuned, by)
            table = auc_vs_dim(sel.drop(columns=list(tune), errors="ignore"), by)
            ref = table[table["embedding"] == REFERENCE]
            ref = ref[[*by, *KEYS, "dim", "auc_mean"]].rename(columns={"auc_mean": "reference_auc"})
            methods = _methods(table).merge(ref, on=[*by, *KEYS, "dim"], how="left")
            methods = arms.merge(methods, on=[*by, *ARM], how="left")  # every method arm, run here or not
            for _, r in methods.iterrows():
                rows.append({**{c: r[c] for c in [*by, *ARM]}, "control": name, "method_auc": r["auc_mean"],
                             "reference_auc": r["reference_auc"], "gain": r["auc_mean"] - r["reference_auc"],
                             "seeds": 0 if _missing(r["seeds"]) else int(r["seeds"]), "missing": ", ".join(absent)})
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows, columns=cols)
    order = {n: i for i, n in enumerate(dict.fromkeys(out["control"]))}
    return _ordered(out.assign(_c=out["control"].map(order)), by, then=["_c"]).drop(columns="_c")


def _eq(column: pd.Series, value) -> pd.Series:
    return column.isna() if _missing(value) else column == value


# ---- tables ------------------------------------------------------------------------------------
def _ordered(df: pd.DataFrame, by: Sequence[str], then: Sequence[str] = ()) -> pd.DataFrame:
    """Rows by (by, data, model), the single-layer rows first, then embedding, k, d and ``then``."""
    if df.empty:
        return df.reset_index(drop=True)
    rank = (df["embedding"] != REFERENCE).astype(int).rename("_rank")
    cols = [c for c in [*by, *KEYS] if c in df] + ["_rank"] + [c for c in ("embedding", "k", "dim") if c in df]
    cols += list(then)
    return df.assign(_rank=rank).sort_values(cols, na_position="first", kind="stable").drop(
        columns="_rank").reset_index(drop=True)


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def _methods(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of every embedding kind but the single-layer reference."""
    return df[df["embedding"] != REFERENCE]


def with_reference(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``df`` with each single-layer row that lacks a ``by`` setting (one it does not have, e.g.
    ``embedding.init``) repeated for every combination of ``by`` values that the other kinds of the
    same data and model were run with and that agrees with the settings it has, so that it is the
    reference of each of them. Rows that match no such combination stay as they are."""
    by = [c for c in by if c in df]
    if df.empty or not by:
        return df
    ref = df["embedding"] == REFERENCE
    lacking = ref & df[by].isna().any(axis=1)
    if not lacking.any():
        return df
    combos = df.loc[~ref, [*KEYS, *by]].drop_duplicates()
    rows = df[lacking].reset_index(drop=True)
    pairs = rows.drop(columns=by).reset_index(names="_row").merge(combos, on=KEYS, how="inner")
    own = rows[by].loc[pairs["_row"]].reset_index(drop=True)
    agree = np.logical_and.reduce([own[c].isna().to_numpy() | (own[c].to_numpy() == pairs[c].to_numpy())
                                   for c in by])
    pairs = pairs[agree]
    alone = rows[~rows.index.isin(pairs["_row"])]
    out = pd.concat([df[~lacking], pairs.drop(columns="_row"), alone], ignore_index=True)[list(df.columns)]
    return _ordered(out, by, then=[c for c in ("_order", "epoch") if c in out])


def auc_vs_dim(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and standard deviation over seeds of test AUC and logloss, and the number of seeds."""
    scored = runs.dropna(subset=["test_auc"])
    keys = [*by, *ARM]
    if scored.empty:
        return pd.DataFrame(columns=[*keys, "auc_mean", "auc_std", "logloss_mean", "logloss_std", "seeds"])
    out = scored.groupby(keys, dropna=False, sort=True).agg(
        auc_mean=("test_auc", "mean"),
        auc_std=("test_auc", _std),
        logloss_mean=("test_logloss", "mean"),
        logloss_std=("test_logloss", _std),
        seeds=("seed", "nunique"),
    )
    return _ordered(out.reset_index(), by)


def dim_reduction(table: pd.DataFrame, by: Sequence[str] = (), tolerance: float = 0.0,
                  reference_dim: int | None = None) -> pd.DataFrame:
    """Per (dataset, model, method): the method's smallest d matching the single-layer reference
    (a method: an embedding kind other than the reference, and its k)."""
    rows = []
    for key, group in with_reference(table, by).groupby([*by, *KEYS], dropna=False, sort=True):
        key = dict(zip([*by, *KEYS], key if isinstance(key, tuple) else (key,)))
        single = group[group["embedding"] == REFERENCE].set_index("dim")
        methods = _methods(group)
        if methods.empty:
            continue
        if single.empty:
            ref_d, ref_auc, note = None, None, "no single-layer runs"
        else:
            ref_d = int(reference_dim) if reference_dim is not None else int(single.index.max())
            if ref_d in single.index:
                ref_auc, note = float(single.loc[ref_d, "auc_mean"]), ""
            else:
                ref_auc, note = None, f"no single-layer run at d={ref_d}"
        # The same question asked of the single-layer curve: the smallest single-layer d that already
        # reaches the target. Where it is no larger than the method's, the curve is flat and the factor
        # measures that flatness, not the method.
        single_d = None
        if ref_auc is not None:
            enough = single[single["auc_mean"] >= ref_auc - tolerance]
            single_d = int(enough.index.min()) if len(enough) else None
        for (kind, label, k), runs_k in methods.groupby(SERIES, dropna=False, sort=True):
            row = {**key, "k": k, "label": label, "reference_dim": ref_d, "reference_auc": ref_auc,
                   "target_auc": None if ref_auc is None else ref_auc - tolerance,
                   "mlet_dim": None, "mlet_auc": None, "factor": np.nan, "reached": False,
                   "single_dim": single_d, "beats_single": False, "note": note, "embedding": kind}
            if ref_auc is not None:
                hit = runs_k[runs_k["auc_mean"] >= ref_auc - tolerance].sort_values("dim")
                if hit.empty:
                    row.update(mlet_dim="never", note=f"best {kind_name(kind)} AUC {runs_k['auc_mean'].max():.4f}")
                else:
                    d = int(hit.iloc[0]["dim"])
                    row.update(mlet_dim=d, mlet_auc=float(hit.iloc[0]["auc_mean"]), factor=ref_d / d, reached=True)
                    if d >= ref_d:
                        row["note"] = f"no reduction: {kind_name(kind)} needs the reference d"
                    elif single_d is not None and single_d <= d:
                        row["note"] = f"single-layer reaches it at d={single_d} too"
                    elif (near := _within_one_std(single, d, ref_auc - tolerance)) is not None:
                        row["note"] = near
                    else:
                        row["beats_single"] = True
            rows.append(row)
    columns = [*by, *KEYS, "k", "reference_dim", "reference_auc", "target_auc", "mlet_dim", "mlet_auc",
               "factor", "reached", "single_dim", "beats_single", "note", "embedding", "label"]
    return pd.DataFrame(rows, columns=columns)


def _within_one_std(single: pd.DataFrame, d: int, target: float) -> str | None:
    """Where a single-layer d no larger than the method's is short of the target by less than its
    seeds' standard deviation, the single-layer curve is flat within noise up to the method's d and
    "the method reaches the reference at d" says nothing the seeds can tell apart; None otherwise."""
    for d_single, r in single[single.index <= d].sort_index().iterrows():
        std = 0.0 if pd.isna(r["auc_std"]) else float(r["auc_std"])
        if r["auc_mean"] + std >= target:
            return (f"within noise: single-layer d={int(d_single)} is {r['auc_mean']:.4f} ± {std:.4f}, "
                    "less than one seed std below the target")
    return None


def reduction_summary(reduction: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Largest and mean reduction factor, per dataset and over all rows ('all')."""
    rows = []
    scored = reduction[reduction["reference_auc"].notna()]

    def summarise(label: dict, part: pd.DataFrame) -> dict:
        reached = part[part["reached"]]
        return {
            **label,
            "pairs": len(part),
            "reached": len(reached),
            "beats_single": int(part["beats_single"].sum()),
            "max_factor": float(reached["factor"].max()) if len(reached) else np.nan,
            "mean_factor": float(reached["factor"].mean()) if len(reached) else np.nan,
        }

    for key, part in scored.groupby([*by, "data"], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append(summarise(dict(zip([*by, "data"], key)), part))
    if not scored.empty:
        rows.append(summarise({**{b: "all" for b in by}, "data": "all"}, scored))
    return pd.DataFrame(rows, columns=[*by, "data", "pairs", "reached", "beats_single", "max_factor",
                                       "mean_factor"])


def auc_vs_bytes(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per arm: mean and std over seeds of test AUC, the deployed embedding bytes and model bytes
    (the same for every seed), and ``pareto``: no arm of the same (by, data, model) has fewer or
    equal bytes and a higher mean AUC."""
    scored = runs.dropna(subset=["test_auc", "inference_bytes"])
    keys = [*by, *ARM]
    columns = [*keys, "inference_bytes", "model_bytes", "auc_mean", "auc_std", "seeds", "pareto"]
    if scored.empty:
        return pd.DataFrame(columns=columns)
    out = scored.groupby(keys, dropna=False, sort=True).agg(
        inference_bytes=("inference_bytes", "max"), model_bytes=("model_bytes", "max"),
        auc_mean=("test_auc", "mean"), auc_std=("test_auc", _std), seeds=("seed", "nunique")).reset_index()
    out["pareto"] = False
    for _, group in out.groupby([*by, *KEYS], dropna=False, sort=False):
        for i, r in group.iterrows():
            cheaper = group[(group["inference_bytes"] <= r["inference_bytes"]) & (group.index != i)]
            out.loc[i, "pareto"] = bool((cheaper["auc_mean"] <= r["auc_mean"]).all())
    return _ordered(out, by)[columns]


def bytes_reduction(table: pd.DataFrame, by: Sequence[str] = (), tolerance: float = 0.0,
                    reference_dim: int | None = None) -> pd.DataFrame:
    """Per (dataset, model, method): the method's smallest deployed embedding (bytes) whose mean AUC
    reaches the single-layer reference's (largest d, or ``reference_dim``) minus ``tolerance``, and
    the factor reference bytes / method bytes. A method: an embedding kind (with its quantisation,
    ``hash+int8``) over all its arms (knobs, d, k)."""
    rows = []
    for key, group in table.groupby([*by, *KEYS], dropna=False, sort=True):
        key = dict(zip([*by, *KEYS], key if isinstance(key, tuple) else (key,)))
        single = group[group["embedding"] == REFERENCE].set_index("dim")
        ref_d = ref_auc = ref_bytes = None
        note = "no single-layer runs"
        if not single.empty:
            ref_d = int(reference_dim) if reference_dim is not None else int(single.index.max())
            note = "" if ref_d in single.index else f"no single-layer run at d={ref_d}"
            if not note:
                ref_auc, ref_bytes = float(single.loc[ref_d, "auc_mean"]), float(single.loc[ref_d, "inference_bytes"])
        for kind, arms in _methods(group).groupby("embedding", sort=True):
            row = {**key, "embedding": kind, "reference_dim": ref_d, "reference_auc": ref_auc,
                   "reference_bytes": ref_bytes, "method_label": None, "method_bytes": None, "method_auc": None,
                   "factor": np.nan, "reached": False, "best_auc": float(arms["auc_mean"].max()), "note": note}
            if ref_auc is not None:
                hit = arms[arms["auc_mean"] >= ref_auc - tolerance].sort_values("inference_bytes")
                if hit.empty:
                    row["note"] = f"never reaches the target (best {kind_name(kind)} AUC {row['best_auc']:.4f})"
                else:
                    best = hit.iloc[0]
                    row.update(method_label=f"{best['label']} d={int(best['dim'])}",
                               method_bytes=float(best["inference_bytes"]), method_auc=float(best["auc_mean"]),
                               factor=ref_bytes / float(best["inference_bytes"]), reached=True)
            rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *KEYS, "embedding", "reference_dim", "reference_auc", "reference_bytes",
                                       "method_label", "method_bytes", "method_auc", "factor", "reached", "best_auc",
                                       "note"])


def auc_vs_inner_dim(table: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Each method's rows of a (dataset, model, d) run with more than one k, with the single-layer AUC
    at that d."""
    keys = [*by, *KEYS, "dim"]
    methods = _methods(table)
    swept = methods.groupby([*keys, "embedding"], dropna=False)["k"].transform("nunique") > 1
    out = methods[swept].copy()
    table = with_reference(table, by)
    single = table[table["embedding"] == REFERENCE][[*keys, "auc_mean", "auc_std", "seeds"]].rename(
        columns={"auc_mean": "single_auc_mean", "auc_std": "single_auc_std", "seeds": "single_seeds"})
    out = out.merge(single, on=keys, how="left")
    return out[[*keys, "embedding", "k", "auc_mean", "auc_std", "seeds", "single_auc_mean", "single_auc_std",
                "single_seeds"]]


def _items(runs: pd.DataFrame, column: str, by: Sequence[str]) -> pd.DataFrame:
    """One row per element of the list (or the dict) in ``runs[column]``: the run's arm and seed
    beside the element's fields (prefixed ``item.``), and ``_order``, its position in the list."""
    cols = [*by, *ARM, "seed"]
    part = runs.loc[runs[column].map(lambda v: isinstance(v, (list, dict)) and len(v) > 0), [*cols, column]]
    part[column] = part[column].map(lambda v: [v] if isinstance(v, dict) else v)
    part = part.explode(column)
    part = part.assign(_order=part.groupby(level=0).cumcount()).reset_index(drop=True)
    items = pd.json_normalize(part[column].tolist()).add_prefix("item.")
    return pd.concat([part[[*cols, "_order"]], items], axis=1)


def bucket_frame(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (run, bucket)."""
    items = _items(runs, "buckets", by)
    out = items.rename(columns={"item.bucket": "bucket", "item.rows": "rows", "item.auc": "auc",
                                "item.logloss": "logloss"})
    cols = [*by, *ARM, "seed", "_order", "bucket", "rows", "auc", "logloss"]
    return out.reindex(columns=cols)


def bucket_table(buckets: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    keys = [*by, *ARM, "_order", "bucket"]
    if buckets.empty:
        return pd.DataFrame(columns=[*keys, "rows", "auc_mean", "auc_std", "logloss_mean", "seeds"])
    b = buckets.copy()
    b["auc"] = pd.to_numeric(b["auc"], errors="coerce")
    b["logloss"] = pd.to_numeric(b["logloss"], errors="coerce")
    out = b.groupby(keys, dropna=False, sort=True).agg(
        rows=("rows", "mean"), auc_mean=("auc", "mean"), auc_std=("auc", _std),
        logloss_mean=("logloss", "mean"), seeds=("auc", "count"),
    )
    return out.reset_index()


def bucket_compare(btable: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Single-layer vs each method per frequency bucket at equal d: AUC, logloss and the gain."""
    keys = [*by, *KEYS, "dim", "_order", "bucket"]
    btable = with_reference(btable, by)
    single = btable[btable["embedding"] == REFERENCE][[*keys, "rows", "auc_mean", "logloss_mean", "seeds"]].rename(
        columns={"auc_mean": "single_auc", "logloss_mean": "single_logloss", "seeds": "single_seeds"})
    other = _methods(btable)[[*keys, *SERIES, "auc_mean", "logloss_mean", "seeds"]].rename(
        columns={"auc_mean": "mlet_auc", "logloss_mean": "mlet_logloss", "seeds": "mlet_seeds"})
    out = single.merge(other, on=keys, how="inner")
    out["auc_gain"] = out["mlet_auc"] - out["single_auc"]
    out["logloss_gain"] = out["single_logloss"] - out["mlet_logloss"]
    cols = [*by, *KEYS, "dim", "k", "bucket", "rows", "single_auc", "mlet_auc", "auc_gain", "single_logloss",
            "mlet_logloss", "logloss_gain", "single_seeds", "mlet_seeds", "embedding", "_order"]
    return out[cols].sort_values([*by, *KEYS, "dim", "embedding", "k", "_order"]).reset_index(drop=True)


def spectrum_frames(runs: pd.DataFrame, by: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per field (one row per run and field) and per (dataset, model, embedding, k, d) over seeds."""
    items = _items(runs, "spectrum", by)
    keys = [*by, *ARM]
    fcols = [*keys, "seed", "field", "rows", "effective_rank", "top_singular_value", "singular_values"]
    tcols = [*keys, "erank_mean", "erank_std", "erank_over_d", "seeds"]
    if items.empty:
        return pd.DataFrame(columns=fcols), pd.DataFrame(columns=tcols)
    sv = items.get("item.singular_values", pd.Series([None] * len(items)))
    sv = sv.map(lambda s: s if isinstance(s, list) else [])
    fields = items.assign(field=items["item.field"], rows=items.get("item.rows"),
                          effective_rank=items["item.effective_rank"],
                          top_singular_value=sv.map(lambda s: s[0] if s else None),
                          singular_values=sv.map(lambda s: " ".join(f"{x:.6g}" for x in s)))[fcols]
    per_run = fields.groupby([*keys, "seed"], dropna=False)["effective_rank"].mean().rename("erank").reset_index()
    table = per_run.groupby(keys, dropna=False, sort=True).agg(
        erank_mean=("erank", "mean"), erank_std=("erank", _std), seeds=("seed", "nunique")).reset_index()
    table["erank_over_d"] = table["erank_mean"] / table["dim"]
    return fields, _ordered(table, by)[tcols]


def mechanism_frames(runs: pd.DataFrame, by: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MLET's mechanism per arm (dataset, model, embedding, k, d), mean and std over seeds:

    * movement: how far the sampled collapsed rows that a batch did not touch moved per measured
      step (``record["absent_row_movement"]``: absolute, relative to the row's norm, and the rows
      the batch did touch for scale); exactly zero for a single-layer table under SGD or a sparse
      optimiser, non-zero under MLET, whose update ``A A^T G`` reaches every row;
    * history: the effective rank of the collapsed tables (mean over fields) after each validation
      (``record["effective_rank_history"]``), per epoch.
    """
    keys = [*by, *ARM]
    mcols = [*keys, "absent_mean", "absent_std", "absent_relative_mean", "present_mean", "ratio_mean", "seeds"]
    moves = _items(runs, "absent_row_movement", by)
    if moves.empty:
        movement = pd.DataFrame(columns=mcols)
    else:
        num = {c: pd.to_numeric(moves.get(f"item.{c}"), errors="coerce")
               for c in ("absent_mean", "absent_relative_mean", "present_mean")}
        moves = moves.assign(absent=num["absent_mean"], absent_relative=num["absent_relative_mean"],
                             present=num["present_mean"],
                             ratio=num["absent_mean"] / num["present_mean"].where(num["present_mean"] != 0))
        movement = _ordered(moves.groupby(keys, dropna=False, sort=True).agg(
            absent_mean=("absent", "mean"), absent_std=("absent", _std),
            absent_relative_mean=("absent_relative", "mean"), present_mean=("present", "mean"),
            ratio_mean=("ratio", "mean"), seeds=("seed", "nunique")).reset_index(), by)[mcols]
    hcols = [*keys, "epoch", "erank_mean", "erank_std", "seeds"]
    hist = _items(runs, "effective_rank_history", by)
    if hist.empty:
        history = pd.DataFrame(columns=hcols)
    else:
        hist = hist.assign(epoch=hist["item.epoch"],
                           erank=pd.to_numeric(hist["item.effective_rank_mean"], errors="coerce"))
        history = hist.groupby([*keys, "epoch"], dropna=False, sort=True).agg(
            erank_mean=("erank", "mean"), erank_std=("erank", _std), seeds=("seed", "nunique")).reset_index()
        history = _ordered(history, by, then=["epoch"])[hcols]
    return movement, history


# ---- formatting --------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e9 and digits == 0 else f"{value:.{digits}f}"
    return str(value)


def _pm(mean, std, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _k(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _cell(value) -> str:
    """A config value in a table: ``-`` where the run has no such setting."""
    return "-" if _missing(value) else str(value)


def _isnan(x) -> bool:
    return isinstance(x, (float, np.floating)) and math.isnan(x)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(str(p) for p in parts if p is not None and p != ""))


# ---- plots: every figure goes through plot() -----------------------------------------------------
@dataclass
class Line:
    """One curve: ``style`` "method" (markers and error bars), "reference" (the single-layer arm:
    black, dashed), "guide" (a thin grey line) or "band" (a horizontal line at ``y[0]``, shaded
    +- ``err[0]``)."""
    label: str
    x: Sequence
    y: Sequence
    err: Sequence | None = None
    style: str = "method"
    color: int | str | None = None  # a "method" line's colour: a tab10 index or a name (None: the next colour)
    variant: bool = False  # a variant of the method of the same colour (its quantised form): dashed, open markers


@dataclass
class Panel:
    lines: list[Line]
    xlabel: str
    ylabel: str
    title: str = ""
    log2_x: bool = False
    log_x: bool = False  # log10 axis (bytes)
    xticks: tuple[Sequence, Sequence[str]] | None = None
    rotate_xticks: bool = False
    integer_x: bool = False


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LEGEND_INSIDE = 8  # a one-panel plot with more labelled curves puts its legend beside the axes


def plot(path: Path, panels: Sequence[Panel], title: str = "", sharey: bool = False) -> Path:
    """Draw ``panels`` side by side into the PNG ``path`` (the one plotting helper of the report)."""
    plt = _plt()
    n = len(panels)
    # more curves than a corner holds: the legend goes right of the axes, on a wider figure
    outside = n == 1 and sum(1 for line in panels[0].lines if line.label) > LEGEND_INSIDE
    size = (9, 4.5) if outside else (6, 4) if n == 1 else (3.2 * n + 1, 3.6)
    fig, axes = plt.subplots(1, n, figsize=size, squeeze=False, sharey=sharey)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            if line.style == "band":
                m = float(line.y[0])
                s = None if line.err is None else line.err[0]
                ax.axhline(m, color="gray", linestyle="--", label=line.label)
                if not _missing(s):
                    ax.axhspan(m - s, m + s, color="gray", alpha=0.15)
            elif line.style == "guide":
                ax.plot(line.x, line.y, color="gray", linewidth=0.8, label=line.label)
            elif line.style == "front":  # open squares around the points of a front, joined by a step line
                ax.step(line.x, line.y, where="post", color="gray", linewidth=0.8, linestyle=":")
                ax.plot(line.x, line.y, linestyle="none", marker="s", markersize=10, markerfacecolor="none",
                        color="black", label=line.label)
            else:
                ref = line.style == "reference"
                err = None if line.err is None else pd.Series(line.err, dtype=float).fillna(0).to_numpy()
                color = "black" if ref else line.color
                if isinstance(color, int):
                    color = plt.get_cmap("tab10")(color % 10)
                ax.errorbar(line.x, line.y, yerr=err, marker="o", capsize=3, label=line.label, color=color,
                            linestyle="--" if ref or line.variant else "-",
                            markerfacecolor="white" if line.variant else None)
        if panel.log2_x:
            ax.set_xscale("log", base=2)
        if panel.log_x:
            ax.set_xscale("log")
        if panel.xticks is not None:
            ax.set_xticks(*panel.xticks, rotation=45 if panel.rotate_xticks else 0)
        if panel.integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(panels[0].ylabel)
    if n == 1:
        axes[0][0].set_title(" / ".join(t for t in (title, panels[0].title) if t))
        if outside:
            axes[0][0].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
        else:
            axes[0][0].legend()
    else:
        axes[0][-1].legend(fontsize="small")
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _method_lines(group: pd.DataFrame, x: str, y: str, err: str | None) -> list[Line]:
    """One line per method (embedding kind, label and k) of ``group``, labelled by the record's
    label, the single-layer reference styled apart."""
    lines = []
    for (kind, label, k), series in group.groupby(SERIES, dropna=False, sort=True):
        series = series.sort_values(x)
        lines.append(Line(str(label), series[x].tolist(), series[y].tolist(),
                          None if err is None else series[err].tolist(),
                          "reference" if kind == REFERENCE else "method"))
    return lines


def _ticks(values) -> tuple[list, list[str]]:
    values = sorted(pd.unique(pd.Series(values)))
    return values, [str(int(v)) for v in values]


def _title(key) -> str:
    return " / ".join(str(x) for x in key)


# ---- the report: sections over one table of runs ---------------------------------------------
@dataclass
class Report:
    """What every section reads (``runs``, the options) and what it leaves for later sections and the
    caller (``tables``: name -> DataFrame, each written as ``<name>.csv``; ``files``)."""
    runs: pd.DataFrame
    by: list[str]
    out: Path
    dirs: list[str]
    tolerance: float = 0.0
    reference_dim: int | None = None
    tune: list[str] = field(default_factory=list)
    plots: bool = True
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Keep ``frame`` as ``tables[name]`` and write it to ``<name>.csv`` (without ``_`` columns)."""
        self.tables[name] = frame
        path = self.out / f"{name}.csv"
        frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")]).to_csv(path, index=False)
        self.files.append(path)
        return frame

    def figures(self, frame: pd.DataFrame, keys: Sequence[str], name: Callable[[tuple], str],
                draw: Callable[[tuple, pd.DataFrame], tuple[list[Panel], dict]], alt: str) -> list[str]:
        """One PNG per group of ``frame`` by ``keys`` (``draw`` gives its panels and plot() options);
        returns the Markdown image lines."""
        if not self.plots or frame.empty:
            return []
        lines = []
        for key, group in with_reference(frame, self.by).groupby(keys, dropna=False, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            panels, options = draw(key, group)
            path = plot(self.out / f"{name(key)}.png", panels, **options)
            self.files.append(path)
            lines.append(f"![{alt}]({path.name})")
        return lines + [""]

    def cells(self, r) -> list[str]:
        return [_cell(r[b]) for b in self.by]


@dataclass
class Section:
    title: str
    body: list[str]


def _arm_cells(frame: pd.DataFrame) -> tuple[list[str], Callable[[Any], list]]:
    """Header and cells naming an arm in a table: embedding and k, plus the method's label where some
    label says more than those two (its knobs: ``hash budget=0.0625 buckets=763``), so that arms of
    one embedding type that differ only in a knob are told apart."""
    labelled = "label" in frame and any(str(r["label"]) != arm_label(r["embedding"], r["k"])
                                        for _, r in frame.iterrows())
    head = ["embedding", *(["method"] if labelled else []), "k"]
    return head, lambda r: [r["embedding"], *([r["label"]] if labelled else []), _k(r["k"])]


def tuning_section(rep: Report) -> Section | None:
    if not rep.tune:
        return None
    grid, choice = rep.tables["tuning"], rep.tables["tuning_choice"]
    keys, by = rep.tune, rep.by
    names = ", ".join(f"`{k}`" for k in keys)
    body = [f"Each arm (data, model, embedding, k, d) is reported at its own best combination of {names}, "
            "chosen by mean validation AUC over seeds (test AUC plays no part); every table below uses only "
            "those runs. Edge: the tuned keys whose chosen value is the smallest or largest value that arm "
            "tried (the optimum may lie outside the grid).", ""]
    head, arm = _arm_cells(grid)
    rows = [[*rep.cells(r), r["data"], r["model"], *arm(r), int(r["dim"]),
             *(_cell(r[k]) for k in keys), _fmt(r["val_auc_mean"]), int(r["seeds"]), r["edge"] or "no"]
            for _, r in choice.iterrows()]
    body += [markdown_table([*by, "data", "model", *head, "d", *keys, "val AUC", "seeds", "edge"], rows), ""]
    edges = int((choice["edge"] != "").sum())
    body += [f"{edges} of {len(choice)} arms chose a setting on the edge of the grid.", "",
             "Every setting tried:", ""]
    rows = [[*rep.cells(r), r["data"], r["model"], *arm(r), int(r["dim"]),
             *(_cell(r[k]) for k in keys), _fmt(r["val_auc_mean"]), int(r["seeds"]), "**chosen**" if r["chosen"] else ""]
            for _, r in grid.iterrows()]
    body += [markdown_table([*by, "data", "model", *head, "d", *keys, "val AUC", "seeds", ""], rows), ""]
    return Section(f"Tuning of {names} per arm", body)


def controls_section(rep: Report) -> Section | None:
    if not rep.tune or rep.tables["controls"].empty:
        return None
    table = rep.tables["controls"]
    controls = list(dict.fromkeys(table["control"]))
    untuned = table.attrs.get("untuned", {})
    held = ", ".join(f"`{k}={v}`" for k, v in untuned.items())
    body = ["Each method's gain over the single-layer reference (mean test AUC minus the reference's at the same "
            "d) with the tuned settings controlled one group at a time: under `none` every arm runs at the untuned "
            f"settings ({held}); under a control its keys are tuned per arm on validation AUC (single-layer and "
            "method alike) and the rest held untuned. A gain that shrinks under a control was, by that much, a "
            "side effect of that setting; a gain at or below zero under all controls did not survive.", ""]
    head = [*rep.by, "data", "model", "method", "d", *controls]
    rows = []
    for _, arm in table.groupby([*rep.by, *ARM], dropna=False, sort=False):
        gains = dict(zip(arm["control"], arm["gain"]))
        r = arm.iloc[0]
        rows.append([*rep.cells(r), r["data"], r["model"], r["label"], int(r["dim"]),
                     *(_signed(gains.get(c)) for c in controls)])
    body += [markdown_table(head, rows), ""]
    missing = sorted({m for m in table["missing"] if m})
    if missing:
        body += [f"Not run at the untuned setting ({'; '.join(missing)}): those controls have no gain.", ""]
    return Section("How much of the gain survives each control", body)


def _signed(value) -> str:
    return "-" if _missing(value) else f"{round(value, 4) + 0.0:+.4f}"  # + 0.0: no "-0.0000"


def auc_section(rep: Report) -> Section:
    table = rep.table("auc_vs_dim", auc_vs_dim(rep.runs, rep.by))
    max_seeds = int(table["seeds"].max()) if not table.empty else 0
    head, arm = _arm_cells(table)
    rows = [[*rep.cells(r), r["data"], r["model"], *arm(r), int(r["dim"]),
             _pm(r["auc_mean"], r["auc_std"]), _pm(r["logloss_mean"], r["logloss_std"]),
             f"{int(r['seeds'])}" + ("" if r["seeds"] == max_seeds else " (missing seeds)")]
            for _, r in table.iterrows()]
    body = [markdown_table([*rep.by, "data", "model", *head, "d", "test AUC", "test logloss", "seeds"], rows), ""]

    def draw(key, group):
        return [Panel(_method_lines(group, "dim", "auc_mean", "auc_std"), "embedding dimension d",
                      "test AUC (mean ± std over seeds)", log2_x=True, xticks=_ticks(group["dim"]))], {"title": _title(key)}

    body += rep.figures(table, [*rep.by, *KEYS], lambda key: f"auc_vs_dim_{_slug(*key)}", draw, "AUC vs d")
    return Section("AUC and logloss against d", body)


def reduction_section(rep: Report) -> Section:
    reduction = rep.table("dim_reduction", dim_reduction(rep.tables["auc_vs_dim"], rep.by, rep.tolerance,
                                                         rep.reference_dim))
    summary = rep.table("dim_reduction_summary", reduction_summary(reduction, rep.by))
    kinds = list(dict.fromkeys(reduction["embedding"]))
    method = ", ".join(kind_name(k) for k in kinds) or kind_name("mlet")
    ref = f"d = {rep.reference_dim}" if rep.reference_dim is not None else "the largest single-layer d run"
    body = [f"Reference: the single-layer model at {ref}. Method d: the smallest d whose mean AUC of the method "
            f"({method}, at each k) is at least the reference AUC minus the tolerance {rep.tolerance:g}. "
            "Factor: reference d / method d (\"never\": no d reaches it; such pairs are left out of the max and "
            "the mean). Single d: the smallest single-layer d that reaches the same target; where it is no larger "
            "than the method's d, the single-layer curve is flat there and the factor says nothing about the "
            "method; nor where a single-layer d no larger than the method's falls short of the target by less "
            "than its seeds' standard deviation (\"within noise\").", ""]
    several = len(kinds) > 1  # the method column, needed only where kinds could be confused
    rows = [[*rep.cells(r), r["data"], r["model"], *([r["embedding"]] if several else []), _k(r["k"]),
             _fmt(r["reference_dim"], 0) if r["reference_dim"] is not None else "-",
             _fmt(r["reference_auc"]), _fmt(r["mlet_dim"], 0) if r["mlet_dim"] is not None else "-",
             _fmt(r["mlet_auc"]), f"{r['factor']:.3g}x" if r["reached"] else "-",
             _fmt(r["single_dim"], 0) if r["single_dim"] is not None else "-", r["note"] or ""]
            for _, r in reduction.iterrows()]
    body += [markdown_table([*rep.by, "data", "model", *(["embedding"] if several else []), "k", "reference d",
                             "reference AUC", "method d", "method AUC", "factor", "single d", "note"], rows), ""]
    rows = [[*rep.cells(r), r["data"], f"{int(r['reached'])}/{int(r['pairs'])}",
             f"{int(r['beats_single'])}/{int(r['pairs'])}",
             f"{r['max_factor']:.3g}x" if not math.isnan(r["max_factor"]) else "-",
             f"{r['mean_factor']:.2f}x" if not math.isnan(r["mean_factor"]) else "-"] for _, r in summary.iterrows()]
    body += [markdown_table([*rep.by, "data", "pairs reaching the reference", "method beats single-layer", "max factor",
                             "mean factor"], rows), ""]
    return Section("Dimension reduction at equal AUC", body)


def bytes_section(rep: Report) -> Section | None:
    table = rep.table("auc_vs_bytes", auc_vs_bytes(rep.runs, rep.by))
    if table.empty:
        return None
    reduction = rep.table("bytes_reduction", bytes_reduction(table, rep.by, rep.tolerance, rep.reference_dim))
    ref = f"d = {rep.reference_dim}" if rep.reference_dim is not None else "the largest single-layer d run"
    body = ["Deployed embedding bytes: the tables as exported (collapsed; quantised where `quantize` is set: codes, "
            "scales, biases), plus the projections a method keeps at inference. A method is an embedding kind with "
            "its quantisation (`hash+int8`); its arms are its knobs (buckets, remainder rows, alpha, TT rank, k) and d. "
            "Pareto: no arm of the same data and model has fewer or equal bytes and a higher mean AUC.", ""]
    rows = [[*rep.cells(r), r["data"], r["model"], r["label"], int(r["dim"]), _fmt(r["inference_bytes"], 0),
             _pm(r["auc_mean"], r["auc_std"]), int(r["seeds"]), "yes" if r["pareto"] else ""]
            for _, r in table.iterrows()]
    body += [markdown_table([*rep.by, "data", "model", "method", "d", "embedding bytes", "test AUC", "seeds",
                             "Pareto"], rows), ""]
    body += [f"Bytes at equal AUC. Reference: the single-layer model at {ref}. Method bytes: the smallest deployed "
             f"embedding of the method whose mean AUC is at least the reference AUC minus the tolerance "
             f"{rep.tolerance:g}; factor: reference bytes / method bytes.", ""]
    rows = [[*rep.cells(r), r["data"], r["model"], kind_name(r["embedding"]),
             _fmt(r["reference_bytes"], 0), _fmt(r["reference_auc"]),
             _cell(r["method_label"]), _fmt(r["method_bytes"], 0),
             _fmt(r["method_auc"]), f"{r['factor']:.3g}x" if r["reached"] else "-", r["note"] or ""]
            for _, r in reduction.iterrows()]
    body += [markdown_table([*rep.by, "data", "model", "method", "reference bytes", "reference AUC", "arm",
                             "method bytes", "method AUC", "factor", "note"], rows), ""]

    def draw(key, group):
        lines = []
        # one colour per embedding type; its quantised forms ("hash+int8") in that colour, dashed
        types = sorted({split_kind(kind)[0] for kind in group["embedding"]} - {REFERENCE})
        for kind, series in group.groupby("embedding", sort=True):
            series = series.sort_values("inference_bytes")
            base, quantized = split_kind(kind)
            lines.append(Line(kind_name(kind), series["inference_bytes"].tolist(), series["auc_mean"].tolist(),
                              series["auc_std"].tolist(), "reference" if kind == REFERENCE else "method",
                              color="black" if base == REFERENCE else types.index(base), variant=bool(quantized)))
        front = group[group["pareto"]].sort_values("inference_bytes")
        lines.append(Line("Pareto front", front["inference_bytes"].tolist(), front["auc_mean"].tolist(), style="front"))
        return [Panel(lines, "deployed embedding bytes", "test AUC (mean ± std over seeds)", log_x=True)], {
            "title": _title(key)}

    body += rep.figures(table, [*rep.by, *KEYS], lambda key: f"auc_vs_bytes_{_slug(*key)}", draw, "AUC vs bytes")
    return Section("AUC against deployed embedding bytes", body)


def inner_dim_section(rep: Report) -> Section:
    inner = rep.table("auc_vs_inner_dim", auc_vs_inner_dim(rep.tables["auc_vs_dim"], rep.by))
    if inner.empty:
        return Section("AUC against the inner dimension k", ["No (dataset, model, d) was run with more than one k.", ""])
    rows = [[*rep.cells(r), r["data"], r["model"], int(r["dim"]), r["embedding"], _k(r["k"]),
             _pm(r["auc_mean"], r["auc_std"]), int(r["seeds"]), _pm(r["single_auc_mean"], r["single_auc_std"])]
            for _, r in inner.iterrows()]
    body = [markdown_table([*rep.by, "data", "model", "d", "embedding", "k", "AUC", "seeds", "single AUC at d"],
                           rows), ""]

    def draw(key, group):
        lines = []
        for kind, series in group.groupby("embedding", sort=True):
            series = series.sort_values("k")
            lines.append(Line(arm_label(kind, None), series["k"].tolist(), series["auc_mean"].tolist(),
                              series["auc_std"].tolist()))
        single = group.dropna(subset=["single_auc_mean"])
        if len(single):
            lines.append(Line(f"single d={int(key[-1])}", [], [single["single_auc_mean"].iloc[0]],
                              [single["single_auc_std"].iloc[0]], "band"))
        return [Panel(lines, "inner dimension k", "test AUC (mean ± std over seeds)", log2_x=True,
                      xticks=_ticks(group["k"]))], {"title": _title(key[:-1]) + f" / d={int(key[-1])}"}

    body += rep.figures(inner, [*rep.by, *KEYS, "dim"], lambda key: f"auc_vs_k_{_slug(*key[:-1])}_d{int(key[-1])}",
                        draw, "AUC vs k")
    return Section("AUC against the inner dimension k", body)


def buckets_section(rep: Report) -> Section:
    by = rep.by
    btable = rep.table("buckets", bucket_table(bucket_frame(rep.runs, by), by))
    bcompare = rep.table("buckets_compare", bucket_compare(btable, by))
    field_name = next((f for f in rep.runs["bucket_field"] if isinstance(f, str) and f), None)
    which = "the row's rarest field (smallest training count)" if field_name in (None, "rarest") else f"field {field_name}"

    def draw(key, group):
        panels = []
        for d in sorted(group["dim"].unique()):
            part = group[group["dim"] == d]
            labels = list(part.sort_values("_order")["bucket"].drop_duplicates())
            lines = _method_lines(part, "_order", "auc_mean", "auc_std")
            panels.append(Panel(lines, "training occurrences", "test AUC in bucket", title=f"d={int(d)}",
                                xticks=(list(range(len(labels))), labels), rotate_xticks=True))
        return panels, {"title": _title(key), "sharey": True}

    if btable.empty:
        return Section("Rare categories", ["No run records hold frequency-bucket metrics (the `frequency_buckets` "
                                           "callback writes them).", ""])
    if bcompare.empty:
        # no single-layer and method arm share a group (e.g. ablations split by tags): every arm, side by side
        body = [f"Test AUC per arm, test rows bucketed by the training count of the category of {which} "
                "(rows: test rows in the bucket).", ""]
        labels = list(dict.fromkeys(btable.sort_values("_order")["bucket"]))
        rows_in = btable.groupby("bucket")["rows"].first()
        rows = []
        for key, part in _ordered(btable, by).groupby([*by, *ARM], dropna=False, sort=False):
            key = dict(zip([*by, *ARM], key))
            auc = dict(zip(part["bucket"], part["auc_mean"]))
            rows.append([*(_cell(key[b]) for b in by), key["data"], key["model"], key["embedding"], _k(key["k"]),
                         int(key["dim"]), *(_fmt(auc.get(b)) for b in labels)])
        body += [markdown_table([*by, "data", "model", "embedding", "k", "d",
                                 *(f"{b} ({_fmt(rows_in[b], 0)} rows)" for b in labels)], rows), ""]
    else:
        body = [f"Test rows bucketed by the training count of the category of {which}. Gain: the method's minus "
                "the single-layer AUC; single-layer minus the method's logloss (positive: the method is better).",
                ""]
        rows = [[*rep.cells(r), r["data"], r["model"], int(r["dim"]), r["embedding"], _k(r["k"]), r["bucket"],
                 _fmt(r["rows"], 0), _fmt(r["single_auc"]), _fmt(r["mlet_auc"]), _fmt(r["auc_gain"]),
                 _fmt(r["single_logloss"]), _fmt(r["mlet_logloss"]), _fmt(r["logloss_gain"])]
                for _, r in bcompare.iterrows()]
        body += [markdown_table([*by, "data", "model", "d", "embedding", "k", "bucket", "rows", "single AUC",
                                 "method AUC", "AUC gain", "single logloss", "method logloss", "logloss gain"],
                                rows), ""]
    body += rep.figures(btable, [*by, *KEYS], lambda key: f"buckets_{_slug(*key)}", draw, "buckets")
    return Section("Rare categories", body)


def spectrum_section(rep: Report) -> Section:
    fields, stable = spectrum_frames(rep.runs, rep.by)
    rep.table("spectrum", stable)
    rep.table("spectrum_fields", fields)
    if stable.empty:
        return Section("Embedding spectrum", ["No run records hold spectra (the `embedding_spectrum` callback "
                                              "writes them).", ""])
    body = ["Effective rank (Roy & Vetterli 2007: exp of the entropy of the singular values normalised to sum 1) "
            "of each field's collapsed n x d table, averaged over fields; singular values per field in "
            "`spectrum_fields.csv`.", ""]
    rows = [[*rep.cells(r), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
             _pm(r["erank_mean"], r["erank_std"], 2), f"{r['erank_over_d']:.2f}", int(r["seeds"])]
            for _, r in stable.iterrows()]
    body += [markdown_table([*rep.by, "data", "model", "embedding", "k", "d", "effective rank", "/ d", "seeds"],
                            rows), ""]

    def draw(key, group):
        dims, labels = _ticks(group["dim"])
        lines = _method_lines(group, "dim", "erank_mean", "erank_std") + [Line("d (full rank)", dims, dims,
                                                                               style="guide")]
        return [Panel(lines, "embedding dimension d", "effective rank (mean over fields)", log2_x=True,
                      xticks=(dims, labels))], {"title": _title(key)}

    body += rep.figures(stable, [*rep.by, *KEYS], lambda key: f"effective_rank_{_slug(*key)}", draw, "effective rank")
    return Section("Embedding spectrum", body)


def mechanism_section(rep: Report) -> Section:
    by, keys = rep.by, [*rep.by, *ARM]
    movement, history = mechanism_frames(rep.runs, by)
    rep.table("absent_rows", movement)
    rep.table("effective_rank_history", history)
    body = []
    if movement.empty and history.empty:
        body += ["No run records hold the mechanism diagnostics (the `absent_row_movement` and "
                 "`embedding_spectrum` callbacks write them).", ""]
    if not movement.empty:
        body += ["How far the collapsed rows that a training batch did not touch moved in that step (L2, mean over "
                 "the sampled rows and measured steps; relative: over the row's norm), against the rows it touched. "
                 "A single-layer table under SGD or a sparse optimiser leaves them exactly in place; MLET moves "
                 "every row through A A^T G, the part of its update that comes from training B (with B fixed they "
                 "stay in place too): the path by which rare categories learn from frequent ones.", ""]
        ends = history.sort_values("epoch").groupby(keys, dropna=False)["erank_mean"].agg(["first", "last"])
        table = movement.merge(ends.reset_index(), on=keys, how="left") if len(history) else movement.assign(
            first=np.nan, last=np.nan)
        rows = [[*rep.cells(r), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
                 _pm(r["absent_mean"], r["absent_std"], 6), _fmt(r["absent_relative_mean"], 6),
                 _fmt(r["present_mean"], 6), _fmt(r["ratio_mean"], 4), _fmt(r["first"], 2), _fmt(r["last"], 2),
                 int(r["seeds"])] for _, r in table.iterrows()]
        body += [markdown_table([*by, "data", "model", "embedding", "k", "d", "absent-row movement", "relative",
                                 "present-row movement", "absent / present", "eff. rank, first epoch",
                                 "eff. rank, last epoch", "seeds"], rows), ""]
    if not history.empty:
        body += ["Effective rank of the collapsed tables after each validation, mean over fields and seeds: "
                 "`effective_rank_history.csv`.", ""]

        def draw(key, group):
            panels = [Panel(_method_lines(group[group["dim"] == d], "epoch", "erank_mean", "erank_std"), "epoch",
                            "effective rank (mean over fields)", title=f"d={int(d)}", integer_x=True)
                      for d in sorted(group["dim"].unique())]
            return panels, {"title": _title(key)}

        body += rep.figures(history, [*by, *KEYS], lambda key: f"effective_rank_history_{_slug(*key)}", draw,
                            "effective rank over training")
    return Section("Mechanism: rows absent from a batch, effective rank over training", body)


# The report, in order: a section is a function of the Report returning a Section (or None to leave
# itself out); add one by adding it here. Sections numbered 1, 2, ... as rendered.
SECTIONS: list[Callable[[Report], Section | None]] = [
    tuning_section, controls_section, auc_section, reduction_section, bytes_section, inner_dim_section,
    buckets_section, spectrum_section,
    mechanism_section,
]


def render_markdown(rep: Report, sections: Sequence[Section], warnings: Sequence[str]) -> str:
    parts = ["# MLET report", "",
             f"{len(rep.runs)} runs from {', '.join(rep.dirs)}. Every number scores the collapsed (deployed, "
             "single-table) model on the test split; mean ± sample standard deviation (ddof 1) over seeds, "
             "`seeds` = number of seeds.", ""]
    if warnings:
        parts += ["Warnings:", ""] + [f"- {w}" for w in warnings] + [""]
    for number, section in enumerate(sections, 1):
        parts += [f"## {number}. {section.title}", "", *section.body]
    return "\n".join(parts).rstrip() + "\n"


def build_report(dirs: Sequence[str | Path], out: str | Path, tolerance: float = 0.0,
                 reference_dim: int | None = None, by: Sequence[str] = (), plots: bool = True,
                 tune: str | Sequence[str] | None = None, ignore: Sequence[str] = (),
                 untuned: Mapping[str, Any] | None = None) -> dict:
    """Write the report into ``out``; returns its tables (DataFrames by CSV name, and ``runs``,
    ``warnings``, ``files``).

    ``tune``: config keys (e.g. ``optimizer.lr``, or ``"optimizer.lr,embedding.init"``) tuned per arm on
    validation AUC (:func:`tune_runs`); the tables then compare the best-tuned arms. ``ignore``: more
    config keys that do not tell arms apart (beside :data:`NOT_EXPERIMENT`). ``untuned``: the value of
    a tuned key when the controls table holds it fixed (default: mlet-train's default config's;
    :func:`control_gains`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tune = [k for t in ([tune] if isinstance(tune, str) else tune or []) for k in t.split(",") if k]
    by = list(by)
    records, warnings = load_records(dirs)
    if not records:
        raise FileNotFoundError(f"no run records (record.json) under {', '.join(str(d) for d in dirs)}")
    runs, run_warnings, split = runs_frame(records, [*by, *tune], ignore)
    warnings += run_warnings
    by = [*by, *split]
    rep = Report(runs, by, out, [str(d) for d in dirs], tolerance, reference_dim, tune, plots)
    if tune:
        held = untuned_settings(tune, untuned)
        controls = control_gains(runs, tune, held, by)
        controls.attrs["untuned"] = held
        rep.table("controls", controls)
        runs, grid, choice = tune_runs(runs, tune, by)
        rep.runs = runs.drop(columns=tune)
        rep.table("tuning", grid)
        rep.table("tuning_choice", choice)
    unscored = int(rep.runs["test_auc"].isna().sum())
    if unscored:
        warnings.append(f"{unscored} run(s) have no test AUC (test=false?) and are left out of the AUC tables")
    runs_csv = out / "runs.csv"
    rep.runs.drop(columns=["mtime", *_NESTED]).to_csv(runs_csv, index=False)
    rep.files.append(runs_csv)
    sections = [s for s in (section(rep) for section in SECTIONS) if s is not None]
    md = out / "report.md"
    md.write_text(render_markdown(rep, sections, warnings))
    rep.files.append(md)
    return {"runs": rep.runs, **rep.tables, "tuning": rep.tables.get("tuning"), "split_by": split,
            "warnings": warnings, "files": rep.files}


def _keys(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: keys given comma-separated, repeated, or both."""
    return [k for v in values for k in v.split(",") if k]


def _settings(values: Sequence[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.001", "embedding.init_std=null"]`` -> ``{"optimizer.lr": 0.001, ...}`` (YAML values)."""
    import yaml

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MletError(f"--untuned {item}: expected KEY=VALUE, e.g. optimizer.lr=0.001")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlet-report",
        description="Tables (Markdown, CSV) and plots (PNG) from the run records (record.json) under DIRs.",
    )
    parser.add_argument("dirs", nargs="*", default=["outputs"], metavar="DIR",
                        help="directories searched recursively for record.json (default: outputs)")
    parser.add_argument("--out", default="outputs/report", help="report directory (default: outputs/report)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="a method reaches the reference when its mean AUC >= reference AUC - tolerance (default 0)")
    parser.add_argument("--reference-dim", type=int, default=None,
                        help="single-layer d of the reference AUC (default: the largest single-layer d run)")
    parser.add_argument("--by", nargs="*", default=[], metavar="KEY",
                        help="config keys that also split every table, e.g. optimizer.lr embedding.init")
    parser.add_argument("--tune", action="append", default=[], metavar="KEY[,KEY...]",
                        help="config keys tuned per arm on mean validation AUC, e.g. optimizer.lr,embedding.init "
                             "(or --tune repeated): every arm is compared at its own best combination")
    parser.add_argument("--untuned", action="append", default=[], metavar="KEY=VALUE",
                        help="with --tune: the value a tuned key is held at when the controls table does not "
                             "tune it (default: mlet-train's default config's), e.g. optimizer.lr=0.001")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY[,KEY...]",
                        help="config keys that do not tell arms apart (e.g. data.path after moving a file)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    by = _keys(args.by)
    tune = _keys(args.tune)
    both = sorted(set(by) & set(tune))
    if both:
        parser.error(f"{', '.join(both)}: given to both --by and --tune; a key either splits the tables or is tuned")
    from mlet.cli import command

    return command("mlet-report", _report_command, args, by, tune)


def _report_command(args: argparse.Namespace, by: list[str], tune: list[str]) -> int:
    result = build_report(args.dirs, args.out, args.tolerance, args.reference_dim, by,
                          plots=not args.no_plots, tune=tune, ignore=_keys(args.ignore),
                          untuned=_settings(args.untuned))
    for w in result["warnings"]:
        log.warning("warning: %s", w)
    log.info("mlet-report: %d runs -> %s (%d files)", len(result["runs"]), Path(args.out) / "report.md",
             len(result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
