"""``mlet-report [DIR ...]``: tables and plots from the run records under the given directories.

Reads every ``record.json`` (recursively) and writes into ``--out`` (default ``outputs/report``):

* ``report.md``: every table below in Markdown, with the plots;
* ``runs.csv``: one row per run;
* ``auc_vs_dim.csv``: test AUC and logloss per dataset, model, embedding type, k and d, mean and
  sample standard deviation (ddof 1) over seeds, with the number of seeds;
* ``dim_reduction.csv`` / ``dim_reduction_summary.csv``: per dataset and model (and MLET k), the
  single-layer reference AUC (largest single-layer d, or ``--reference-dim``), the smallest MLET d
  whose mean AUC >= reference - ``--tolerance``, the reduction factor reference_d / mlet_d ("never"
  when no MLET d reaches it); the summary gives the largest and the mean factor (over the pairs
  that reach it) per dataset and over everything;
* ``auc_vs_inner_dim.csv``: MLET AUC against k at fixed d (where more than one k was run);
* ``buckets.csv`` / ``buckets_compare.csv``: test AUC/logloss per training-frequency bucket
  (from ``record["buckets"]``), single-layer vs MLET at equal d;
* ``spectrum.csv`` / ``spectrum_fields.csv``: effective rank (Roy & Vetterli 2007) of the
  collapsed tables (from ``record["spectrum"]``), mean over fields, single-layer vs MLET;
* ``absent_rows.csv`` / ``effective_rank_history.csv``: MLET's mechanism per arm: how far the
  collapsed rows a batch did not touch move per step (from ``record["absent_row_movement"]``), and
  the effective rank after each validation (``record["effective_rank_history"]``);
* PNGs: AUC vs d and AUC vs k per dataset/model, AUC per frequency bucket, effective rank vs d and
  over training.

Records of the same (dataset, model, embedding, d, k, seed) found twice count once (the newest);
``--by optimizer.lr embedding.init`` splits every table by those config keys as well.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlet.records import find_records, read_record

log = logging.getLogger("mlet.report")

KEYS = ["data", "model"]
SERIES = ["embedding", "k"]


# ---- loading ---------------------------------------------------------------------------------
def _config_value(record: dict, dotted: str):
    node = record.get("config") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if not isinstance(node, (dict, list)) else str(node)


def load_records(dirs: Iterable[str | Path]) -> tuple[list[dict], list[str]]:
    """Every readable record under ``dirs`` (each with ``path`` and ``mtime``), and warnings."""
    records, warnings = [], []
    for path in find_records(dirs):
        try:
            rec = read_record(path)
        except (ValueError, OSError) as exc:
            warnings.append(f"skipped unreadable record {path}: {exc}")
            continue
        if rec.get("status") == "failed":  # written by a failed mlet-train run: no results
            warnings.append(f"skipped the record of a failed run {path}: {rec.get('error')}")
            continue
        rec["mtime"] = path.stat().st_mtime
        records.append(rec)
    return records, warnings


def runs_frame(records: Sequence[dict], by: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: ``by`` columns, data, model, embedding, k (NaN for single-layer), dim, seed,
    metrics, path. Duplicates of the same run keep the newest record."""
    rows = []
    for rec in records:
        row = {key: _config_value(rec, key) for key in by}
        k = rec.get("inner_dim")
        row.update({
            "data": rec.get("data"),
            "model": rec.get("model"),
            "embedding": rec.get("embedding"),
            "k": float(k) if k is not None and rec.get("embedding") != "single" else np.nan,
            "dim": rec.get("dim"),
            "seed": rec.get("seed"),
            "test_auc": rec.get("test_auc"),
            "test_logloss": rec.get("test_logloss"),
            "val_auc": rec.get("val_auc"),
            "effective_rank_mean": rec.get("effective_rank_mean"),
            "path": rec.get("path"),
            "mtime": rec.get("mtime", 0.0),
        })
        rows.append(row)
    columns = [*by, *KEYS, *SERIES, "dim", "seed", "test_auc", "test_logloss", "val_auc",
               "effective_rank_mean", "path", "mtime"]
    df = pd.DataFrame(rows, columns=columns)
    warnings = []
    if df.empty:
        return df, warnings
    for col in ("test_auc", "test_logloss", "val_auc", "effective_rank_mean"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    ident = [*by, *KEYS, *SERIES, "dim", "seed"]
    df = df.sort_values("mtime")
    dup = df.duplicated(ident, keep="last")
    for path in df.loc[dup, "path"]:
        warnings.append(f"duplicate run, a newer record is used instead of {path}")
    df = df[~dup].sort_values([*by, *KEYS, "embedding", "k", "dim", "seed"], na_position="first")
    return df.reset_index(drop=True), warnings


def tune_runs(runs: pd.DataFrame, key: str, by: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep, for each arm (data, model, embedding, k, d), only the runs with the value of ``key``
    (e.g. ``optimizer.lr``) whose mean validation AUC over seeds is best: every arm is compared at
    its own best-tuned setting, chosen on validation, never on test. Returns the kept runs and one
    row per (arm, value) with its mean validation AUC and whether it was chosen."""
    arm = [*by, *KEYS, *SERIES, "dim"]
    scored = runs.dropna(subset=["val_auc"])
    if scored.empty:
        return runs.iloc[0:0], pd.DataFrame(columns=[*arm, key, "val_auc_mean", "seeds", "chosen"])
    grid = scored.groupby([*arm, key], dropna=False).agg(val_auc_mean=("val_auc", "mean"),
                                                        seeds=("seed", "nunique")).reset_index()
    best = grid.loc[grid.groupby(arm, dropna=False)["val_auc_mean"].idxmax(), [*arm, key]]
    grid = grid.merge(best.assign(chosen=True), on=[*arm, key], how="left")
    grid["chosen"] = grid["chosen"].eq(True)
    kept = runs.merge(best, on=[*arm, key], how="inner")
    return kept, _ordered(grid, by)


# ---- tables ------------------------------------------------------------------------------------
def _ordered(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows by (by, data, model), the single-layer rows first, then k and d."""
    if df.empty:
        return df
    rank = (df["embedding"] != "single").astype(int).rename("_rank")
    cols = [c for c in [*by, *KEYS] if c in df] + ["_rank"] + [c for c in ("embedding", "k", "dim") if c in df]
    return df.assign(_rank=rank).sort_values(cols, na_position="first").drop(columns="_rank").reset_index(drop=True)


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def auc_vs_dim(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and standard deviation over seeds of test AUC and logloss, and the number of seeds."""
    scored = runs.dropna(subset=["test_auc"])
    keys = [*by, *KEYS, *SERIES, "dim"]
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
    """Per (dataset, model, MLET k): the smallest MLET d matching the single-layer reference."""
    rows = []
    for key, group in table.groupby([*by, *KEYS], dropna=False, sort=True):
        key = dict(zip([*by, *KEYS], key if isinstance(key, tuple) else (key,)))
        single = group[group["embedding"] == "single"].set_index("dim")
        mlet = group[group["embedding"] == "mlet"]
        if mlet.empty:
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
        # reaches the target. Where it is no larger than MLET's, the curve is flat and the factor
        # measures that flatness, not MLET.
        single_d = None
        if ref_auc is not None:
            enough = single[single["auc_mean"] >= ref_auc - tolerance]
            single_d = int(enough.index.min()) if len(enough) else None
        for k, runs_k in mlet.groupby("k", dropna=False, sort=True):
            row = {**key, "k": k, "reference_dim": ref_d, "reference_auc": ref_auc,
                   "target_auc": None if ref_auc is None else ref_auc - tolerance,
                   "mlet_dim": None, "mlet_auc": None, "factor": np.nan, "reached": False,
                   "single_dim": single_d, "beats_single": False, "note": note}
            if ref_auc is not None:
                hit = runs_k[runs_k["auc_mean"] >= ref_auc - tolerance].sort_values("dim")
                if hit.empty:
                    row.update(mlet_dim="never", note=f"best MLET AUC {runs_k['auc_mean'].max():.4f}")
                else:
                    d = int(hit.iloc[0]["dim"])
                    row.update(mlet_dim=d, mlet_auc=float(hit.iloc[0]["auc_mean"]), factor=ref_d / d, reached=True)
                    if d >= ref_d:
                        row["note"] = "no reduction: MLET needs the reference d"
                    elif single_d is not None and single_d <= d:
                        row["note"] = f"single-layer reaches it at d={single_d} too"
                    else:
                        row["beats_single"] = True
            rows.append(row)
    columns = [*by, *KEYS, "k", "reference_dim", "reference_auc", "target_auc", "mlet_dim", "mlet_auc",
               "factor", "reached", "single_dim", "beats_single", "note"]
    return pd.DataFrame(rows, columns=columns)


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


def auc_vs_inner_dim(table: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """MLET rows of (dataset, model, d) run with more than one k, with the single-layer AUC at that d."""
    keys = [*by, *KEYS, "dim"]
    mlet = table[table["embedding"] == "mlet"]
    swept = mlet.groupby(keys, dropna=False)["k"].transform("nunique") > 1
    out = mlet[swept].copy()
    single = table[table["embedding"] == "single"][[*keys, "auc_mean", "auc_std", "seeds"]].rename(
        columns={"auc_mean": "single_auc_mean", "auc_std": "single_auc_std", "seeds": "single_seeds"})
    out = out.merge(single, on=keys, how="left")
    return out[[*keys, "k", "auc_mean", "auc_std", "seeds", "single_auc_mean", "single_auc_std", "single_seeds"]]


def bucket_frame(records: Sequence[dict], runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (run, bucket) of the runs kept in ``runs``."""
    kept = set(runs["path"])
    rows = []
    for rec in records:
        if rec.get("path") not in kept or not rec.get("buckets"):
            continue
        k = rec.get("inner_dim")
        base = {**{b: _config_value(rec, b) for b in by}, "data": rec.get("data"), "model": rec.get("model"),
                "embedding": rec.get("embedding"),
                "k": float(k) if k is not None and rec.get("embedding") != "single" else np.nan,
                "dim": rec.get("dim"), "seed": rec.get("seed"), "bucket_field": rec.get("bucket_field")}
        for order, b in enumerate(rec["buckets"]):
            rows.append({**base, "order": order, "bucket": b["bucket"], "rows": b["rows"],
                         "auc": b["auc"], "logloss": b["logloss"]})
    return pd.DataFrame(rows, columns=[*by, *KEYS, *SERIES, "dim", "seed", "bucket_field", "order", "bucket",
                                       "rows", "auc", "logloss"])


def bucket_table(buckets: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    keys = [*by, *KEYS, *SERIES, "dim", "order", "bucket"]
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
    """Single-layer vs MLET (each k) per frequency bucket at equal d: AUC, logloss and the gain."""
    keys = [*by, *KEYS, "dim", "order", "bucket"]
    single = btable[btable["embedding"] == "single"][[*keys, "rows", "auc_mean", "logloss_mean", "seeds"]].rename(
        columns={"auc_mean": "single_auc", "logloss_mean": "single_logloss", "seeds": "single_seeds"})
    mlet = btable[btable["embedding"] == "mlet"][[*keys, "k", "auc_mean", "logloss_mean", "seeds"]].rename(
        columns={"auc_mean": "mlet_auc", "logloss_mean": "mlet_logloss", "seeds": "mlet_seeds"})
    out = single.merge(mlet, on=keys, how="inner")
    out["auc_gain"] = out["mlet_auc"] - out["single_auc"]
    out["logloss_gain"] = out["single_logloss"] - out["mlet_logloss"]
    cols = [*by, *KEYS, "dim", "k", "bucket", "rows", "single_auc", "mlet_auc", "auc_gain", "single_logloss",
            "mlet_logloss", "logloss_gain", "single_seeds", "mlet_seeds", "order"]
    return out[cols].sort_values([*by, *KEYS, "dim", "k", "order"]).reset_index(drop=True)


def spectrum_frames(records: Sequence[dict], runs: pd.DataFrame, by: Sequence[str] = ()):
    """Per field (one row per run and field) and per (dataset, model, embedding, k, d) over seeds."""
    kept = set(runs["path"])
    rows = []
    for rec in records:
        if rec.get("path") not in kept or not rec.get("spectrum"):
            continue
        k = rec.get("inner_dim")
        base = {**{b: _config_value(rec, b) for b in by}, "data": rec.get("data"), "model": rec.get("model"),
                "embedding": rec.get("embedding"),
                "k": float(k) if k is not None and rec.get("embedding") != "single" else np.nan,
                "dim": rec.get("dim"), "seed": rec.get("seed")}
        for f in rec["spectrum"]:
            s = f.get("singular_values") or []
            rows.append({**base, "field": f["field"], "rows": f.get("rows"), "effective_rank": f["effective_rank"],
                         "top_singular_value": s[0] if s else None,
                         "singular_values": " ".join(f"{x:.6g}" for x in s)})
    fields = pd.DataFrame(rows, columns=[*by, *KEYS, *SERIES, "dim", "seed", "field", "rows", "effective_rank",
                                         "top_singular_value", "singular_values"])
    keys = [*by, *KEYS, *SERIES, "dim"]
    if fields.empty:
        return fields, pd.DataFrame(columns=[*keys, "erank_mean", "erank_std", "erank_over_d", "seeds"])
    per_run = fields.groupby([*keys, "seed"], dropna=False)["effective_rank"].mean().rename("erank").reset_index()
    table = per_run.groupby(keys, dropna=False, sort=True).agg(
        erank_mean=("erank", "mean"), erank_std=("erank", _std), seeds=("seed", "nunique")).reset_index()
    table["erank_over_d"] = table["erank_mean"] / table["dim"]
    table = _ordered(table, by)
    return fields, table[[*keys, "erank_mean", "erank_std", "erank_over_d", "seeds"]]


def mechanism_frames(records: Sequence[dict], runs: pd.DataFrame, by: Sequence[str] = ()):
    """MLET's mechanism per arm (dataset, model, embedding, k, d), mean and std over seeds:

    * movement: how far the sampled collapsed rows that a batch did not touch moved per measured
      step (``record["absent_row_movement"]``: absolute, relative to the row's norm, and the rows
      the batch did touch for scale); exactly zero for a single-layer table under SGD or a sparse
      optimiser, non-zero under MLET, whose update ``A A^T G`` reaches every row;
    * history: the effective rank of the collapsed tables (mean over fields) after each validation
      (``record["effective_rank_history"]``), per epoch.
    """
    kept = set(runs["path"])
    keys = [*by, *KEYS, *SERIES, "dim"]
    moves, hist = [], []
    for rec in records:
        if rec.get("path") not in kept:
            continue
        k = rec.get("inner_dim")
        base = {**{b: _config_value(rec, b) for b in by}, "data": rec.get("data"), "model": rec.get("model"),
                "embedding": rec.get("embedding"),
                "k": float(k) if k is not None and rec.get("embedding") != "single" else np.nan,
                "dim": rec.get("dim"), "seed": rec.get("seed")}
        m = rec.get("absent_row_movement")
        if m:
            absent, present = m.get("absent_mean"), m.get("present_mean")
            moves.append({**base, "absent": absent, "absent_relative": m.get("absent_relative_mean"),
                          "present": present,
                          "ratio": absent / present if absent is not None and present else np.nan})
        for h in rec.get("effective_rank_history") or []:
            hist.append({**base, "epoch": h.get("epoch"), "step": h.get("step"), "erank": h.get("effective_rank_mean")})
    moves = pd.DataFrame(moves, columns=[*keys, "seed", "absent", "absent_relative", "present", "ratio"])
    hist = pd.DataFrame(hist, columns=[*keys, "seed", "epoch", "step", "erank"])
    mcols = [*keys, "absent_mean", "absent_std", "absent_relative_mean", "present_mean", "ratio_mean", "seeds"]
    if moves.empty:
        movement = pd.DataFrame(columns=mcols)
    else:
        for col in ("absent", "absent_relative", "present", "ratio"):
            moves[col] = pd.to_numeric(moves[col], errors="coerce")
        movement = _ordered(moves.groupby(keys, dropna=False, sort=True).agg(
            absent_mean=("absent", "mean"), absent_std=("absent", _std),
            absent_relative_mean=("absent_relative", "mean"), present_mean=("present", "mean"),
            ratio_mean=("ratio", "mean"), seeds=("seed", "nunique")).reset_index(), by)[mcols]
    hcols = [*keys, "epoch", "erank_mean", "erank_std", "seeds"]
    if hist.empty:
        history = pd.DataFrame(columns=hcols)
    else:
        hist["erank"] = pd.to_numeric(hist["erank"], errors="coerce")
        history = hist.groupby([*keys, "epoch"], dropna=False, sort=True).agg(
            erank_mean=("erank", "mean"), erank_std=("erank", _std), seeds=("seed", "nunique")).reset_index()
        rank = (history["embedding"] != "single").astype(int).rename("_rank")
        history = history.assign(_rank=rank).sort_values([*by, *KEYS, "_rank", "embedding", "k", "dim", "epoch"],
                                                         na_position="first").reset_index(drop=True)[hcols]
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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(str(p) for p in parts if p is not None and p != ""))


def _label(embedding: str, k) -> str:
    return "single" if embedding == "single" else f"mlet k={_k(k)}"


# ---- plots -------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series_vs_dim(ax, group: pd.DataFrame, metric: str) -> None:
    """One error-bar line per (embedding, k) of ``<metric>_mean`` +- ``<metric>_std`` against d."""
    for (emb, k), series in group.groupby(SERIES, dropna=False, sort=True):
        series = series.sort_values("dim")
        ax.errorbar(series["dim"], series[f"{metric}_mean"], yerr=series[f"{metric}_std"].fillna(0), marker="o",
                    capsize=3, label=_label(emb, k), linestyle="--" if emb == "single" else "-",
                    color="black" if emb == "single" else None)


def plot_auc_vs_dim(table: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    plt, files = _plt(), []
    for key, group in table.groupby([*by, *KEYS], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        fig, ax = plt.subplots(figsize=(6, 4))
        _series_vs_dim(ax, group, "auc")
        ax.set_xscale("log", base=2)
        dims = sorted(group["dim"].unique())
        ax.set_xticks(dims, [str(int(d)) for d in dims])
        ax.set_xlabel("embedding dimension d")
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(" / ".join(str(x) for x in key))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"auc_vs_dim_{_slug(*key)}.png"
        files.append(_save(plt, fig, path))
    return files


def plot_auc_vs_k(inner: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    plt, files = _plt(), []
    for key, group in inner.groupby([*by, *KEYS, "dim"], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        group = group.sort_values("k")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(group["k"], group["auc_mean"], yerr=group["auc_std"].fillna(0), marker="o", capsize=3,
                    label="mlet")
        single = group["single_auc_mean"].dropna()
        if len(single):
            m, s = float(single.iloc[0]), group["single_auc_std"].iloc[0]
            ax.axhline(m, color="gray", linestyle="--", label=f"single d={int(key[-1])}")
            if not (s is None or math.isnan(s)):
                ax.axhspan(m - s, m + s, color="gray", alpha=0.15)
        ax.set_xscale("log", base=2)
        ks = sorted(group["k"].unique())
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.set_xlabel("inner dimension k")
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(" / ".join(str(x) for x in key[:-1]) + f" / d={int(key[-1])}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"auc_vs_k_{_slug(*key[:-1])}_d{int(key[-1])}.png"
        files.append(_save(plt, fig, path))
    return files


def plot_buckets(btable: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    plt, files = _plt(), []
    for key, group in btable.groupby([*by, *KEYS], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        dims = sorted(group["dim"].unique())
        fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims) + 1, 3.6), squeeze=False, sharey=True)
        for ax, d in zip(axes[0], dims):
            for (emb, k), series in group[group["dim"] == d].groupby(SERIES, dropna=False, sort=True):
                series = series.sort_values("order")
                ax.errorbar(range(len(series)), series["auc_mean"], yerr=series["auc_std"].fillna(0), marker="o",
                            capsize=3, label=_label(emb, k), linestyle="--" if emb == "single" else "-",
                        color="black" if emb == "single" else None)
                ax.set_xticks(range(len(series)), list(series["bucket"]), rotation=45)
            ax.set_title(f"d={int(d)}")
            ax.set_xlabel("training occurrences")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test AUC in bucket")
        axes[0][-1].legend(fontsize="small")
        fig.suptitle(" / ".join(str(x) for x in key))
        path = out / f"buckets_{_slug(*key)}.png"
        files.append(_save(plt, fig, path))
    return files


def plot_erank(stable: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    plt, files = _plt(), []
    for key, group in stable.groupby([*by, *KEYS], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        fig, ax = plt.subplots(figsize=(6, 4))
        _series_vs_dim(ax, group, "erank")
        dims = sorted(group["dim"].unique())
        ax.plot(dims, dims, color="gray", linewidth=0.8, label="d (full rank)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(int(d)) for d in dims])
        ax.set_xlabel("embedding dimension d")
        ax.set_ylabel("effective rank (mean over fields)")
        ax.set_title(" / ".join(str(x) for x in key))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"effective_rank_{_slug(*key)}.png"
        files.append(_save(plt, fig, path))
    return files


def plot_erank_history(history: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    """Effective rank of the collapsed tables after each validation, one panel per d."""
    plt, files = _plt(), []
    for key, group in history.groupby([*by, *KEYS], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        dims = sorted(group["dim"].unique())
        fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims) + 1, 3.6), squeeze=False)
        for ax, d in zip(axes[0], dims):
            for (emb, k), series in group[group["dim"] == d].groupby(SERIES, dropna=False, sort=True):
                series = series.sort_values("epoch")
                ax.errorbar(series["epoch"], series["erank_mean"], yerr=series["erank_std"].fillna(0), marker="o",
                            capsize=3, label=_label(emb, k), linestyle="--" if emb == "single" else "-",
                            color="black" if emb == "single" else None)
            ax.set_title(f"d={int(d)}")
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("effective rank (mean over fields)")
        axes[0][-1].legend(fontsize="small")
        fig.suptitle(" / ".join(str(x) for x in key))
        path = out / f"effective_rank_history_{_slug(*key)}.png"
        files.append(_save(plt, fig, path))
    return files


# ---- the report --------------------------------------------------------------------------------
def build_report(dirs: Sequence[str | Path], out: str | Path, tolerance: float = 0.0,
                 reference_dim: int | None = None, by: Sequence[str] = (), plots: bool = True,
                 tune: str | None = None) -> dict:
    """Write the report into ``out``; returns the tables (DataFrames) and the files written.

    ``tune``: a config key (e.g. ``optimizer.lr``) tuned per arm on validation AUC
    (:func:`tune_runs`); the tables then compare the best-tuned arms."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by = list(by)
    records, warnings = load_records(dirs)
    if not records:
        raise FileNotFoundError(f"no run records (record.json) under {', '.join(str(d) for d in dirs)}")
    runs, dup_warnings = runs_frame(records, [*by, tune] if tune else by)
    warnings += dup_warnings
    tuning = None
    if tune:
        runs, tuning = tune_runs(runs, tune, by)
        runs = runs.drop(columns=[tune])
    unscored = int(runs["test_auc"].isna().sum())
    if unscored:
        warnings.append(f"{unscored} run(s) have no test AUC (test=false?) and are left out of the AUC tables")
    table = auc_vs_dim(runs, by)
    reduction = dim_reduction(table, by, tolerance, reference_dim)
    summary = reduction_summary(reduction, by)
    inner = auc_vs_inner_dim(table, by)
    buckets = bucket_frame(records, runs, by)
    btable = bucket_table(buckets, by)
    bcompare = bucket_compare(btable, by)
    sfields, stable = spectrum_frames(records, runs, by)
    movement, history = mechanism_frames(records, runs, by)

    files = []
    csvs = {
        "runs.csv": runs.drop(columns=["mtime"]),
        "auc_vs_dim.csv": table,
        "dim_reduction.csv": reduction,
        "dim_reduction_summary.csv": summary,
        "auc_vs_inner_dim.csv": inner,
        "buckets.csv": btable.drop(columns=["order"], errors="ignore"),
        "buckets_compare.csv": bcompare.drop(columns=["order"], errors="ignore"),
        "spectrum.csv": stable,
        "spectrum_fields.csv": sfields,
        "absent_rows.csv": movement,
        "effective_rank_history.csv": history,
    }
    if tuning is not None:
        csvs["tuning.csv"] = tuning
    for name, frame in csvs.items():
        frame.to_csv(out / name, index=False)
        files.append(out / name)
    pngs: dict[str, list[Path]] = {"dim": [], "k": [], "buckets": [], "erank": [], "history": []}
    if plots:
        pngs["dim"] = plot_auc_vs_dim(table, by, out) if not table.empty else []
        pngs["k"] = plot_auc_vs_k(inner, by, out) if not inner.empty else []
        pngs["buckets"] = plot_buckets(btable, by, out) if not btable.empty else []
        pngs["erank"] = plot_erank(stable, by, out) if not stable.empty else []
        pngs["history"] = plot_erank_history(history, by, out) if not history.empty else []
        files += [p for ps in pngs.values() for p in ps]

    md = render_markdown(runs, table, reduction, summary, inner, btable, bcompare, stable, movement, history, pngs,
                         by, tolerance, reference_dim, warnings, [str(d) for d in dirs], records)
    if tuning is not None:
        md = md.replace("\n## AUC and logloss against d", render_tuning(tuning, tune, by) + "\n## AUC and logloss against d", 1)
    (out / "report.md").write_text(md)
    files.append(out / "report.md")
    return {"runs": runs, "auc_vs_dim": table, "dim_reduction": reduction, "dim_reduction_summary": summary,
            "auc_vs_inner_dim": inner, "buckets": btable, "buckets_compare": bcompare, "spectrum": stable,
            "spectrum_fields": sfields, "absent_rows": movement, "effective_rank_history": history,
            "warnings": warnings, "files": files, "tuning": tuning}


def render_tuning(tuning: pd.DataFrame, key: str, by: Sequence[str]) -> str:
    parts = [f"## Tuning of `{key}` per arm", "",
             f"Each arm (data, model, embedding, k, d) is reported at its own best `{key}`, chosen by mean "
             "validation AUC over seeds (test AUC plays no part); every table below uses only those runs.", ""]
    rows = [[*(str(r[b]) for b in by), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
             str(r[key]), _fmt(r["val_auc_mean"]), int(r["seeds"]), "**chosen**" if r["chosen"] else ""]
            for _, r in tuning.iterrows()]
    parts += [markdown_table([*by, "data", "model", "embedding", "k", "d", key, "val AUC", "seeds", ""], rows), ""]
    return "\n".join(parts)


def render_markdown(runs, table, reduction, summary, inner, btable, bcompare, stable, movement, history, pngs, by,
                    tolerance, reference_dim, warnings, dirs, records) -> str:
    by = list(by)
    parts = ["# MLET report", ""]
    parts.append(f"{len(runs)} runs from {', '.join(dirs)}. Every number scores the collapsed (deployed, "
                 "single-table) model on the test split; mean ± sample standard deviation (ddof 1) over seeds, "
                 "`seeds` = number of seeds.")
    parts.append("")
    if warnings:
        parts += ["Warnings:", ""] + [f"- {w}" for w in warnings] + [""]

    # 1. AUC and logloss against d
    parts += ["## AUC and logloss against d", ""]
    max_seeds = int(table["seeds"].max()) if not table.empty else 0
    rows = []
    for _, r in table.iterrows():
        rows.append([*(str(r[b]) for b in by), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
                     _pm(r["auc_mean"], r["auc_std"]), _pm(r["logloss_mean"], r["logloss_std"]),
                     f"{int(r['seeds'])}" + ("" if r["seeds"] == max_seeds else " (missing seeds)")])
    parts += [markdown_table([*by, "data", "model", "embedding", "k", "d", "test AUC", "test logloss", "seeds"],
                             rows), ""]
    parts += [f"![AUC vs d]({p.name})" for p in pngs["dim"]] + [""]

    # 2. dimension reduction
    ref = f"d = {reference_dim}" if reference_dim is not None else "the largest single-layer d run"
    parts += ["## Dimension reduction at equal AUC", "",
              f"Reference: the single-layer model at {ref}. MLET d: the smallest d whose mean MLET AUC is at "
              f"least the reference AUC minus the tolerance {tolerance:g}. Factor: reference d / MLET d "
              "(\"never\": no MLET d reaches it; such pairs are left out of the max and the mean). "
              "Single d: the smallest single-layer d that reaches the same target; where it is no larger "
              "than the MLET d, the single-layer curve is flat there and the factor says nothing about MLET.",
              ""]
    rows = []
    for _, r in reduction.iterrows():
        rows.append([*(str(r[b]) for b in by), r["data"], r["model"], _k(r["k"]),
                     _fmt(r["reference_dim"], 0) if r["reference_dim"] is not None else "-",
                     _fmt(r["reference_auc"]), _fmt(r["mlet_dim"], 0) if r["mlet_dim"] is not None else "-",
                     _fmt(r["mlet_auc"]), f"{r['factor']:.3g}x" if r["reached"] else "-",
                     _fmt(r["single_dim"], 0) if r["single_dim"] is not None else "-", r["note"] or ""])
    parts += [markdown_table([*by, "data", "model", "k", "reference d", "reference AUC", "MLET d", "MLET AUC",
                              "factor", "single d", "note"], rows), ""]
    rows = [[*(str(r[b]) for b in by), r["data"], f"{int(r['reached'])}/{int(r['pairs'])}",
             f"{int(r['beats_single'])}/{int(r['pairs'])}",
             f"{r['max_factor']:.3g}x" if not math.isnan(r["max_factor"]) else "-",
             f"{r['mean_factor']:.2f}x" if not math.isnan(r["mean_factor"]) else "-"] for _, r in summary.iterrows()]
    parts += [markdown_table([*by, "data", "pairs reaching the reference", "MLET d < single d", "max factor",
                              "mean factor"], rows), ""]

    # 3. AUC against k
    parts += ["## AUC against the inner dimension k", ""]
    if inner.empty:
        parts += ["No (dataset, model, d) was run with more than one k.", ""]
    else:
        rows = [[*(str(r[b]) for b in by), r["data"], r["model"], int(r["dim"]), _k(r["k"]),
                 _pm(r["auc_mean"], r["auc_std"]), int(r["seeds"]), _pm(r["single_auc_mean"], r["single_auc_std"])]
                for _, r in inner.iterrows()]
        parts += [markdown_table([*by, "data", "model", "d", "k", "MLET AUC", "seeds", "single AUC at d"], rows), ""]
        parts += [f"![AUC vs k]({p.name})" for p in pngs["k"]] + [""]

    # 5. rare categories
    field = next((r.get("bucket_field") for r in records if r.get("bucket_field")), None)
    parts += ["## Rare categories", ""]
    which = "the row's rarest field (smallest training count)" if field in (None, "rarest") else f"field {field}"
    if btable.empty:
        parts += ["No run records hold frequency-bucket metrics (the `frequency_buckets` callback writes them).", ""]
    elif bcompare.empty:
        # no single-layer and MLET arm share a group (e.g. ablations split by tags): every arm, side by side
        parts += [f"Test AUC per arm, test rows bucketed by the training count of the category of {which} "
                  "(rows: test rows in the bucket).", ""]
        labels = list(dict.fromkeys(btable.sort_values("order")["bucket"]))
        rows_in = btable.groupby("bucket")["rows"].first()
        arms = _ordered(btable, by).groupby([*by, *KEYS, *SERIES, "dim"], dropna=False, sort=False)
        rows = []
        for key, part in arms:
            key = dict(zip([*by, *KEYS, *SERIES, "dim"], key))
            auc = dict(zip(part["bucket"], part["auc_mean"]))
            rows.append([*(str(key[b]) for b in by), key["data"], key["model"], key["embedding"], _k(key["k"]),
                         int(key["dim"]), *(_fmt(auc.get(b)) for b in labels)])
        parts += [markdown_table([*by, "data", "model", "embedding", "k", "d",
                                  *(f"{b} ({_fmt(rows_in[b], 0)} rows)" for b in labels)], rows), ""]
        parts += [f"![buckets]({p.name})" for p in pngs["buckets"]] + [""]
    else:
        parts += [f"Test rows bucketed by the training count of the category of {which}. Gain: MLET minus "
                  "single-layer AUC; single-layer minus MLET logloss (positive: MLET better).", ""]
        rows = [[*(str(r[b]) for b in by), r["data"], r["model"], int(r["dim"]), _k(r["k"]), r["bucket"],
                 _fmt(r["rows"], 0), _fmt(r["single_auc"]), _fmt(r["mlet_auc"]), _fmt(r["auc_gain"]),
                 _fmt(r["single_logloss"]), _fmt(r["mlet_logloss"]), _fmt(r["logloss_gain"])]
                for _, r in bcompare.iterrows()]
        parts += [markdown_table([*by, "data", "model", "d", "k", "bucket", "rows", "single AUC", "MLET AUC",
                                  "AUC gain", "single logloss", "MLET logloss", "logloss gain"], rows), ""]
        parts += [f"![buckets]({p.name})" for p in pngs["buckets"]] + [""]

    # 6. spectrum
    parts += ["## Embedding spectrum", ""]
    if stable.empty:
        parts += ["No run records hold spectra (the `embedding_spectrum` callback writes them).", ""]
    else:
        parts += ["Effective rank (Roy & Vetterli 2007: exp of the entropy of the singular values normalised to "
                  "sum 1) of each field's collapsed n x d table, averaged over fields; singular values per field "
                  "in `spectrum_fields.csv`.", ""]
        rows = [[*(str(r[b]) for b in by), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
                 _pm(r["erank_mean"], r["erank_std"], 2), f"{r['erank_over_d']:.2f}", int(r["seeds"])]
                for _, r in stable.iterrows()]
        parts += [markdown_table([*by, "data", "model", "embedding", "k", "d", "effective rank", "/ d", "seeds"],
                                 rows), ""]
        parts += [f"![effective rank]({p.name})" for p in pngs["erank"]] + [""]

    # 7. mechanism
    parts += ["## Mechanism: rows absent from a batch, effective rank over training", ""]
    if movement.empty and history.empty:
        parts += ["No run records hold the mechanism diagnostics (the `absent_row_movement` and "
                  "`embedding_spectrum` callbacks write them).", ""]
    if not movement.empty:
        parts += ["How far the collapsed rows that a training batch did not touch moved in that step (L2, mean "
                  "over the sampled rows and measured steps; relative: over the row's norm), against the rows it "
                  "touched. A single-layer table under SGD or a sparse optimiser leaves them exactly in place; "
                  "MLET moves every row through A A^T G, the part of its update that comes from training B "
                  "(with B fixed they stay in place too): the path by which rare categories learn from "
                  "frequent ones.",
                  ""]
        first = history.sort_values("epoch").groupby([*by, *KEYS, *SERIES, "dim"], dropna=False)
        ranks = {key: (g["erank_mean"].iloc[0], g["erank_mean"].iloc[-1]) for key, g in first}
        rows = []
        for _, r in movement.iterrows():
            key = tuple(r[c] for c in [*by, *KEYS, *SERIES, "dim"])
            e0, e1 = next((v for kk, v in ranks.items() if _same(kk, key)), (None, None))
            rows.append([*(str(r[b]) for b in by), r["data"], r["model"], r["embedding"], _k(r["k"]), int(r["dim"]),
                         _pm(r["absent_mean"], r["absent_std"], 6), _fmt(r["absent_relative_mean"], 6),
                         _fmt(r["present_mean"], 6), _fmt(r["ratio_mean"], 4), _fmt(e0, 2), _fmt(e1, 2),
                         int(r["seeds"])])
        parts += [markdown_table([*by, "data", "model", "embedding", "k", "d", "absent-row movement",
                                  "relative", "present-row movement", "absent / present",
                                  "eff. rank, first epoch", "eff. rank, last epoch", "seeds"], rows), ""]
    if not history.empty:
        parts += ["Effective rank of the collapsed tables after each validation, mean over fields and seeds: "
                  "`effective_rank_history.csv`.", ""]
        parts += [f"![effective rank over training]({p.name})" for p in pngs["history"]] + [""]
    return "\n".join(parts).rstrip() + "\n"


def _same(a: tuple, b: tuple) -> bool:
    """Equal keys, NaN (the single-layer k) equal to NaN."""
    return len(a) == len(b) and all(x == y or (_isnan(x) and _isnan(y)) for x, y in zip(a, b))


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlet-report",
        description="Tables (Markdown, CSV) and plots (PNG) from the run records (record.json) under DIRs.",
    )
    parser.add_argument("dirs", nargs="*", default=["outputs"], metavar="DIR",
                        help="directories searched recursively for record.json (default: outputs)")
    parser.add_argument("--out", default="outputs/report", help="report directory (default: outputs/report)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="MLET reaches the reference when its mean AUC >= reference AUC - tolerance (default 0)")
    parser.add_argument("--reference-dim", type=int, default=None,
                        help="single-layer d of the reference AUC (default: the largest single-layer d run)")
    parser.add_argument("--by", nargs="*", default=[], metavar="KEY",
                        help="config keys that also split every table, e.g. optimizer.lr embedding.init")
    parser.add_argument("--tune", default=None, metavar="KEY",
                        help="a config key tuned per arm on validation AUC, e.g. optimizer.lr: compare best-tuned arms")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    from mlet.cli import command

    return command("mlet-report", _report_command, args)


def _report_command(args: argparse.Namespace) -> int:
    result = build_report(args.dirs, args.out, args.tolerance, args.reference_dim, args.by,
                          plots=not args.no_plots, tune=args.tune)
    for w in result["warnings"]:
        log.warning("warning: %s", w)
    log.info("mlet-report: %d runs -> %s (%d files)", len(result["runs"]), Path(args.out) / "report.md",
             len(result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
