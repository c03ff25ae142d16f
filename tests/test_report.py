"""``mlet-report`` on fabricated run records whose tables are worked out by hand below."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlet import report
from mlet.records import write_record
from mlet.report import arm_label, build_report, main

# (model, embedding, k, d) -> test AUC per seed (None: that seed is missing)
AUC = {
    # m1: single-layer reference at d=16 is mean(0.78, 0.80) = 0.79 (seed 2 missing);
    # MLET k=64: d=4 -> 0.787 (< 0.79), d=8 -> 0.80 (>= 0.79): factor 16/8 = 2;
    # MLET k=16 (only d=8, two seeds): 0.795 -> factor 2.
    ("m1", "single", None, 4): [0.70, 0.71, 0.72],
    ("m1", "single", None, 16): [0.78, 0.80, None],
    ("m1", "mlet", 64, 4): [0.785, 0.787, 0.789],
    ("m1", "mlet", 64, 8): [0.80, 0.80, 0.80],
    ("m1", "mlet", 16, 8): [0.795, 0.795, None],
    # m2: reference 0.75 at d=16; MLET tops out at 0.74: never.
    ("m2", "single", None, 4): [0.70],
    ("m2", "single", None, 16): [0.75],
    ("m2", "mlet", 64, 4): [0.70],
    ("m2", "mlet", 64, 8): [0.74],
    # m3: reference 0.76 at d=16; MLET d=2 already 0.77: factor 8.
    ("m3", "single", None, 16): [0.76],
    ("m3", "mlet", 64, 2): [0.77],
    ("m3", "mlet", 64, 4): [0.775],
}


def _record(model, emb, k, d, seed, auc, **extra):
    return {
        "status": "completed", "data": "ds", "model": model, "embedding": emb, "dim": d,
        "inner_dim": k, "seed": seed, "val_auc": auc, "test_auc": auc, "test_logloss": 1.0 - auc,
        "config": {"embedding": {"dim": d, "inner_dim": k if k is not None else 64}, "optimizer": {"lr": 0.1}},
        **extra,
    }


def _buckets(aucs):
    labels = ["0", "1-10", "11-100", "101-1000", ">1000"]
    return [{"bucket": b, "low": 0, "high": None, "rows": 10 * (i + 1), "positives": 3,
             "auc": a, "logloss": None if a is None else 1 - a} for i, (b, a) in enumerate(zip(labels, aucs))]


def _spectrum(eranks):
    return [{"field": f"C{i}", "rows": 10, "dim": 4, "singular_values": [2.0, 1.0, 0.5, 0.1],
             "effective_rank": e} for i, e in enumerate(eranks)]


@pytest.fixture
def records_dir(tmp_path):
    root = tmp_path / "runs"
    for (model, emb, k, d), aucs in AUC.items():
        for seed, auc in enumerate(aucs):
            if auc is None:
                continue
            extra = {}
            if model == "m1" and d == 4 and (k in (None, 64)):
                # bucket "1-10": single 0.60 / 0.62 / 0.64 (mean 0.62), MLET 0.65 on every seed
                rare = 0.60 + 0.02 * seed if emb == "single" else 0.65
                extra["buckets"] = _buckets([None, rare, 0.7, 0.75, 0.8])
                extra["bucket_field"] = "rarest"
                # effective rank: mean over the 2 fields: single 2.0, MLET 3.0 (+ seed/10 each)
                base = 2.0 if emb == "single" else 3.0
                extra["spectrum"] = _spectrum([base - 0.5 + seed / 10, base + 0.5 + seed / 10])
                # absent rows: single-layer never moves them; MLET 0.001, 0.002, 0.003 (mean 0.002, std
                # 0.001) against 0.01 for the touched rows (ratio 0.2). Effective rank per epoch:
                # single 2.0 then 1.8; MLET 3.0 then 3.5 (+ seed/10: means 3.1 and 3.6)
                moved = 0.0 if emb == "single" else 0.001 * (seed + 1)
                extra["absent_row_movement"] = {"absent_mean": moved, "absent_relative_mean": moved * 10,
                                                "present_mean": 0.01, "steps_measured": 5}
                ranks = [2.0, 1.8] if emb == "single" else [3.0 + seed / 10, 3.5 + seed / 10]
                extra["effective_rank_history"] = [{"epoch": e, "step": 10 * (e + 1), "effective_rank_mean": r}
                                                   for e, r in enumerate(ranks)]
            name = f"{model}-{emb}-d{d}-k{k}-s{seed}"
            write_record(root / name / "record.json", _record(model, emb, k, d, seed, auc, **extra))
    return root


def _row(df, **match):
    sel = df
    for key, value in match.items():
        sel = sel[sel[key].isna()] if value is None else sel[sel[key] == value]
    assert len(sel) == 1, (match, sel)
    return sel.iloc[0]


def test_auc_vs_dim_mean_std_and_seeds(records_dir, tmp_path):
    res = build_report([records_dir], tmp_path / "report", plots=False)
    t = res["auc_vs_dim"]
    r = _row(t, model="m1", embedding="single", k=None, dim=4)
    assert r["auc_mean"] == pytest.approx(0.71) and r["auc_std"] == pytest.approx(0.01)
    assert r["logloss_mean"] == pytest.approx(0.29) and r["seeds"] == 3
    r = _row(t, model="m1", embedding="single", k=None, dim=16)  # seed 2 missing
    assert r["auc_mean"] == pytest.approx(0.79) and r["auc_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert r["seeds"] == 2
    r = _row(t, model="m2", embedding="mlet", k=64, dim=8)
    assert r["seeds"] == 1 and math.isnan(r["auc_std"])
    assert len(t) == len(AUC)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ds | m1 | single | - | 16 | 0.7900 ± 0.0141 | 0.2100 ± 0.0141 | 2 (missing seeds) |" in md


def test_dimension_reduction_table_by_hand(records_dir, tmp_path):
    res = build_report([records_dir], tmp_path / "report", plots=False)
    red = res["dim_reduction"]
    assert len(red) == 4  # (m1, k=16), (m1, k=64), (m2, k=64), (m3, k=64)
    r = _row(red, model="m1", k=64)
    assert r["reference_dim"] == 16 and r["reference_auc"] == pytest.approx(0.79)
    assert r["mlet_dim"] == 8 and r["factor"] == 2 and r["mlet_auc"] == pytest.approx(0.80)
    r = _row(red, model="m1", k=16)
    assert r["mlet_dim"] == 8 and r["factor"] == 2
    r = _row(red, model="m2", k=64)
    assert r["mlet_dim"] == "never" and not r["reached"] and math.isnan(r["factor"])
    r = _row(red, model="m3", k=64)
    assert r["mlet_dim"] == 2 and r["factor"] == 8
    # the single-layer curve reaches its own reference only at d=16 (m1: d=4 gives 0.71 < 0.79)
    assert set(red["single_dim"]) == {16} and list(red["beats_single"]) == [r["reached"] for _, r in red.iterrows()]
    summary = res["dim_reduction_summary"]
    for data in ("ds", "all"):
        s = _row(summary, data=data)
        assert (s["pairs"], s["reached"], s["beats_single"]) == (4, 3, 3)
        assert s["max_factor"] == 8 and s["mean_factor"] == pytest.approx((2 + 2 + 8) / 3)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ds | m2 | 64 | 16 | 0.7500 | never | - | - | 16 | best MLET AUC 0.7400 |" in md
    assert "| ds | 3/4 | 3/4 | 8x | 4.00x |" in md


def test_flat_single_layer_curve_is_flagged(records_dir, tmp_path):
    # tolerance 0.1: target for m1 is 0.69, which single-layer d=4 (0.71) already reaches, as does
    # MLET d=4 (0.787): factor 4, but single-layer needs no more d than MLET, so it does not count.
    res = build_report([records_dir], tmp_path / "flat", tolerance=0.1, plots=False)
    r = _row(res["dim_reduction"], model="m1", k=64)
    assert (r["mlet_dim"], r["factor"], r["single_dim"]) == (4, 4, 4)
    assert not r["beats_single"] and r["note"] == "single-layer reaches it at d=4 too"
    s = _row(res["dim_reduction_summary"], data="all")
    # m1 k=64 and m1 k=16 (MLET d=8 > single d=4) are flat, so is m2 (MLET and single reach 0.65 at d=4);
    # m3 has only single d=16 and MLET d=2: the one pair where MLET needs less
    assert (s["pairs"], s["reached"], s["beats_single"]) == (4, 4, 1)


def test_a_reduction_within_the_single_layer_seed_spread_is_flagged(tmp_path):
    # reference: single d=16 at 0.788. MLET d=2 (0.789) reaches it, single-layer d=2 (0.785 ± 0.005)
    # does not, but falls short by less than its seeds' std: no reduction the seeds can tell apart.
    # With single d=2 at 0.780 ± 0.005 (short by more than a std) the 8x stands.
    for name, single_d2, beats in (("flat", [0.780, 0.785, 0.790], False), ("steep", [0.775, 0.780, 0.785], True)):
        root = tmp_path / name
        runs = {("single", None, 2): single_d2, ("single", None, 16): [0.788] * 3, ("mlet", 64, 2): [0.789] * 3}
        for (emb, k, d), aucs in runs.items():
            for seed, auc in enumerate(aucs):
                write_record(root / f"{emb}-d{d}-s{seed}" / "record.json", _record("m", emb, k, d, seed, auc))
        r = _row(build_report([root], tmp_path / f"report_{name}", plots=False)["dim_reduction"], k=64)
        assert (r["mlet_dim"], r["factor"], r["single_dim"], r["beats_single"]) == (2, 8, 16, beats)
        if beats:
            assert r["note"] == ""
        else:
            assert r["note"] == ("within noise: single-layer d=2 is 0.7850 ± 0.0050, less than one seed std "
                                 "below the target")
            assert "| ds | 1/1 | 0/1 | 8x | 8.00x |" in (tmp_path / f"report_{name}" / "report.md").read_text()


def test_mlet_reaching_the_reference_only_at_the_reference_d_is_no_reduction(records_dir, tmp_path):
    # reference d = 4 for m1: single 0.71, which MLET k=64 reaches first at d=4, the reference d itself
    res = build_report([records_dir], tmp_path / "ref4", reference_dim=4, plots=False)
    r = _row(res["dim_reduction"], model="m1", k=64)
    assert (r["mlet_dim"], r["factor"], r["single_dim"]) == (4, 1, 4)
    assert not r["beats_single"] and r["note"] == "no reduction: MLET needs the reference d"


def test_tolerance_and_reference_dim(records_dir, tmp_path):
    res = build_report([records_dir], tmp_path / "tol", tolerance=0.005, plots=False)
    red = res["dim_reduction"]
    assert _row(red, model="m1", k=64)["mlet_dim"] == 4  # 0.787 >= 0.79 - 0.005
    assert _row(red, model="m1", k=64)["factor"] == 4
    assert _row(red, model="m2", k=64)["mlet_dim"] == "never"  # 0.74 < 0.745
    res = build_report([records_dir], tmp_path / "ref", reference_dim=4, plots=False)
    red = res["dim_reduction"]
    r = _row(red, model="m1", k=64)
    assert r["reference_auc"] == pytest.approx(0.71) and r["mlet_dim"] == 4 and r["factor"] == 1
    r = _row(red, model="m3", k=64)  # m3 has no single-layer run at d=4
    assert r["reference_auc"] is None or math.isnan(r["reference_auc"])
    assert "no single-layer run at d=4" in r["note"]


def test_auc_vs_inner_dim(records_dir, tmp_path):
    inner = build_report([records_dir], tmp_path / "report", plots=False)["auc_vs_inner_dim"]
    assert list(inner["k"]) == [16, 64]  # only (m1, d=8) was run with two k
    assert list(inner["auc_mean"]) == pytest.approx([0.795, 0.80])
    assert list(inner["seeds"]) == [2, 3]
    assert inner["single_auc_mean"].isna().all()  # no single-layer run at d=8


def test_buckets_and_spectrum_single_vs_mlet(records_dir, tmp_path):
    res = build_report([records_dir], tmp_path / "report", plots=False)
    cmp = res["buckets_compare"]
    r = _row(cmp, model="m1", dim=4, k=64, bucket="1-10")
    assert r["single_auc"] == pytest.approx(0.62) and r["mlet_auc"] == pytest.approx(0.65)
    assert r["auc_gain"] == pytest.approx(0.03) and r["logloss_gain"] == pytest.approx(0.03)
    assert r["rows"] == 20
    r = _row(cmp, model="m1", dim=4, k=64, bucket="0")
    assert math.isnan(r["single_auc"])  # no AUC in that bucket
    assert list(cmp[(cmp["model"] == "m1")]["bucket"]) == ["0", "1-10", "11-100", "101-1000", ">1000"]
    spec = res["spectrum"]
    r = _row(spec, model="m1", embedding="single", dim=4)
    assert r["erank_mean"] == pytest.approx(2.1) and r["erank_std"] == pytest.approx(0.1)
    assert r["erank_over_d"] == pytest.approx(2.1 / 4) and r["seeds"] == 3
    assert _row(spec, model="m1", embedding="mlet", dim=4)["erank_mean"] == pytest.approx(3.1)
    assert len(res["spectrum_fields"]) == 2 * 6


def test_duplicates_and_unreadable_records(records_dir, tmp_path):
    # the same run (m3, mlet, k=64, d=2, seed 0) found again in a second directory, with another AUC
    other = tmp_path / "again"
    write_record(other / "x" / "record.json", _record("m3", "mlet", 64, 2, 0, 0.70))
    (other / "broken").mkdir()
    (other / "broken" / "record.json").write_text("{not json")
    res = build_report([records_dir, other], tmp_path / "report", plots=False)
    assert _row(res["auc_vs_dim"], model="m3", embedding="mlet", dim=2)["auc_mean"] == pytest.approx(0.70)
    assert any("duplicate run" in w for w in res["warnings"])
    assert any("unreadable" in w for w in res["warnings"])


def test_by_config_key_splits_tables(records_dir, tmp_path):
    write_record(tmp_path / "lr" / "a" / "record.json",
                 {**_record("m3", "mlet", 64, 2, 0, 0.5), "config": {"optimizer": {"lr": 0.01}}})
    res = build_report([records_dir, tmp_path / "lr"], tmp_path / "report", by=["optimizer.lr"], plots=False)
    t = res["auc_vs_dim"]
    assert _row(t, **{"optimizer.lr": 0.01})["auc_mean"] == 0.5
    assert _row(t, model="m3", embedding="mlet", dim=2, **{"optimizer.lr": 0.1})["auc_mean"] == pytest.approx(0.77)


def test_cli_writes_markdown_csv_and_png(records_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(records_dir), "--out", str(out), "--tolerance", "0.001"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "runs.csv", "auc_vs_dim.csv", "dim_reduction.csv", "dim_reduction_summary.csv",
            "auc_vs_inner_dim.csv", "buckets_compare.csv", "spectrum.csv"} <= names
    assert {"auc_vs_dim_ds_m1.png", "auc_vs_dim_ds_m2.png", "auc_vs_dim_ds_m3.png", "auc_vs_k_ds_m1_d8.png",
            "buckets_ds_m1.png", "effective_rank_ds_m1.png"} <= names
    assert (out / "auc_vs_dim_ds_m1.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # starts processes
def test_cli_no_records_is_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no run records" in capsys.readouterr().err


def test_learning_rate_tuned_report_compares_best_tuned_arms(tmp_path):
    """Each arm is reported at the lr with the best mean validation AUC, test AUC playing no part.

    single d=8: lr 0.01 val (0.70, 0.72) -> 0.71; lr 0.1 val (0.75, 0.73) -> 0.74: chosen 0.1,
                although lr 0.01 has the better test AUC (0.90): test must not leak into the choice.
    mlet   d=8: lr 0.01 val 0.76 -> chosen; lr 0.1 val 0.60.
    """
    grid = {
        ("single", None, 0.01): [(0.70, 0.90), (0.72, 0.90)],
        ("single", None, 0.1): [(0.75, 0.741), (0.73, 0.739)],
        ("mlet", 64, 0.01): [(0.76, 0.751), (0.76, 0.749)],
        ("mlet", 64, 0.1): [(0.60, 0.60), (0.60, 0.60)],
    }
    for (emb, k, lr), runs in grid.items():
        for seed, (val, test) in enumerate(runs):
            rec = _record("m", emb, k, 8, seed, test)
            rec["val_auc"] = val
            rec["config"]["optimizer"]["lr"] = lr
            write_record(tmp_path / "runs" / f"{emb}-{lr}-{seed}" / "record.json", rec)
    result = build_report([tmp_path / "runs"], tmp_path / "report", tune="optimizer.lr", plots=False)
    chosen = result["tuning"][result["tuning"]["chosen"]]
    assert dict(zip(chosen["embedding"], chosen["optimizer.lr"])) == {"single": 0.1, "mlet": 0.01}
    table = result["auc_vs_dim"].set_index("embedding")
    assert table.loc["single", "auc_mean"] == pytest.approx(0.74)
    assert table.loc["mlet", "auc_mean"] == pytest.approx(0.75)
    assert table.loc["single", "seeds"] == 2
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Tuning of `optimizer.lr` per arm" in md and "**chosen**" in md
    assert (tmp_path / "report" / "tuning.csv").is_file()


def test_mechanism_tables_by_hand(records_dir, tmp_path):
    res = build_report([records_dir], tmp_path / "report", plots=True)
    mv = res["absent_rows"]
    assert len(mv) == 2  # only m1 d=4 single and MLET k=64 hold the diagnostic
    single = _row(mv, model="m1", embedding="single", k=None, dim=4)
    assert single["absent_mean"] == 0 and single["absent_std"] == 0 and single["ratio_mean"] == 0
    mlet = _row(mv, model="m1", embedding="mlet", k=64, dim=4)
    assert mlet["absent_mean"] == pytest.approx(0.002) and mlet["absent_std"] == pytest.approx(0.001)
    assert mlet["ratio_mean"] == pytest.approx(0.2) and mlet["seeds"] == 3
    hist = res["effective_rank_history"]
    assert list(_row(hist, embedding="mlet", epoch=1)[["erank_mean", "seeds"]]) == [pytest.approx(3.6), 3]
    assert _row(hist, embedding="single", epoch=0)["erank_mean"] == pytest.approx(2.0)
    assert _row(hist, embedding="mlet", epoch=0)["erank_std"] == pytest.approx(0.1)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ds | m1 | mlet | 64 | 4 | 0.002000 ± 0.001000 | 0.020000 | 0.010000 | 0.2000 | 3.10 | 3.60 | 3 |" in md
    assert "| ds | m1 | single | - | 4 | 0.000000 ± 0.000000 | 0.000000 | 0.010000 | 0.0000 | 2.00 | 1.80 | 3 |" in md
    assert (tmp_path / "report" / "effective_rank_history_ds_m1.png").stat().st_size > 0


def test_rare_buckets_per_arm_when_no_pair_shares_a_group(tmp_path):
    # split by a config key that differs between the arms (as ablations split by tags): no single vs
    # MLET pair exists, so the report lists each arm's bucket AUCs instead of a comparison
    root = tmp_path / "runs"
    for emb, k, variant, rare in (("single", None, "a", 0.61), ("mlet", 64, "b", 0.66)):
        rec = _record("m1", emb, k, 4, 0, 0.7, buckets=_buckets([None, rare, 0.7, 0.75, 0.8]), bucket_field="rarest")
        rec["config"]["variant"] = variant
        write_record(root / emb / "record.json", rec)
    res = build_report([root], tmp_path / "report", by=["variant"], plots=False)
    assert res["buckets_compare"].empty and len(res["buckets"]) == 10
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| variant | data | model | embedding | k | d | 0 (10 rows) | 1-10 (20 rows) |" in md
    assert "| b | ds | m1 | mlet | 64 | 4 | - | 0.6600 | 0.7000 | 0.7500 | 0.8000 |" in md
    assert "| a | ds | m1 | single | - | 4 | - | 0.6100 |" in md


# ---- arms are told apart by every experiment-defining setting ------------------------------------
def _mlet_report(*args) -> subprocess.CompletedProcess:
    """The installed ``mlet-report`` console script, as the user types it."""
    exe = Path(sys.executable).with_name("mlet-report")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


def _config(d, k, seed, **over):
    """A resolved config as a run writes it: experiment keys and keys that define nothing."""
    cfg = {"seed": seed, "datamodule": {"seed": seed, "batch_size": 1024, "num_workers": 0},
           "data": {"protocol": "dlrm", "path": "/data/train.txt"},
           "embedding": {"dim": d, "inner_dim": k}, "optimizer": {"lr": 0.001},
           "trainer": {"max_epochs": 5, "enable_progress_bar": True},
           "paths": {"output_dir": f"/out/run-{seed}"}, "tags": [], "force": False, "ckpt_path": "last"}
    for dotted, value in over.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def _run(root, name, emb, k, d, seed, auc, val=None, mtime=None, **over):
    rec = {**_record("m", emb, k, d, seed, auc), "config": _config(d, k, seed, **over)}
    if val is not None:
        rec["val_auc"] = val
    path = write_record(root / name / "record.json", rec)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.mark.slow  # starts processes
def test_runs_that_differ_in_a_setting_outside_the_grouping_are_separate_arms(tmp_path):
    # the same data/model/embedding/k/d/seed under two Criteo protocols: two arms, neither dropped
    root = tmp_path / "runs"
    for seed in (0, 1):
        _run(root, f"dlrm-{seed}", "mlet", 64, 4, seed, 0.80, mtime=1000 + seed, data__protocol="dlrm")
        _run(root, f"bars-{seed}", "mlet", 64, 4, seed, 0.70, mtime=2000 + seed, data__protocol="bars_x4_001")
    out = tmp_path / "report"
    proc = _mlet_report(root, "--out", out, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "duplicate" not in proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "differ in data.protocol" in line)
    assert "bars_x4_001, dlrm" in warning and "`--by data.protocol`" in warning
    table = pd.read_csv(out / "auc_vs_dim.csv")
    assert dict(zip(table["data.protocol"], table["auc_mean"])) == {"bars_x4_001": pytest.approx(0.70),
                                                                    "dlrm": pytest.approx(0.80)}
    assert list(table["seeds"]) == [2, 2]
    md = (out / "report.md").read_text()
    assert "| data.protocol | data | model | embedding | k | d |" in md
    assert "| bars_x4_001 | ds | m | mlet | 64 | 4 | 0.7000 ± 0.0000 |" in md


def test_seeds_paths_and_progress_settings_do_not_split_an_arm_and_duplicates_name_what_differs(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1, 2):  # seed, datamodule.seed and paths differ: one arm, three seeds
        _run(root, f"a-{seed}", "single", None, 8, seed, 0.70 + seed / 100, mtime=1000 + seed)
    # seed 2 again, later, on another machine without a progress bar: the same run, the newer counts
    _run(root, "again", "single", None, 8, 2, 0.60, mtime=3000,
         paths__output_dir="/elsewhere", trainer__enable_progress_bar=False)
    res = build_report([root], tmp_path / "report", plots=False)
    assert res["split_by"] == []
    row = _row(res["auc_vs_dim"], embedding="single", dim=8)
    assert row["seeds"] == 3 and row["auc_mean"] == pytest.approx((0.70 + 0.71 + 0.60) / 3)
    (warning,) = [w for w in res["warnings"] if "duplicate run" in w]
    assert str(root / "a-2") in warning and str(root / "again") in warning
    assert "differ only in paths.output_dir, trainer.enable_progress_bar" in warning


def test_ignore_merges_runs_that_differ_only_in_a_named_key(tmp_path):
    root = tmp_path / "runs"
    _run(root, "here", "mlet", 64, 4, 0, 0.70, data__path="/data/train.txt")
    _run(root, "moved", "mlet", 64, 4, 1, 0.72, data__path="/mnt/train.txt")
    assert build_report([root], tmp_path / "r1", plots=False)["split_by"] == ["data.path"]
    res = build_report([root], tmp_path / "r2", plots=False, ignore=["data.path"])
    assert res["split_by"] == [] and _row(res["auc_vs_dim"], dim=4)["seeds"] == 2


@pytest.mark.slow  # starts processes
def test_unknown_by_key_is_a_one_line_error(tmp_path):
    root = tmp_path / "runs"
    _run(root, "a", "mlet", 64, 4, 0, 0.70)
    proc = _mlet_report(root, "--out", tmp_path / "r", "--by", "optimizer.lrr")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("mlet-report: error: optimizer.lrr (--by or --tune): no run record's config "
                                   "has this key")


@pytest.fixture
def drawn_lines(monkeypatch):
    """``{png name: {label: Line}}`` of every plot the report draws (it still draws them)."""
    drawn, real_plot = {}, report.plot

    def recording_plot(path, panels, **options):
        drawn[Path(path).name] = {line.label: line for p in panels for line in p.lines}
        return real_plot(path, panels, **options)

    monkeypatch.setattr(report, "plot", recording_plot)
    return drawn


# ---- every embedding kind is its own method, labelled from the record --------------------------
def test_arm_label_comes_from_kind_and_inner_dim():
    assert arm_label("single", float("nan")) == "single"
    assert arm_label("mlet", 64.0) == "mlet k=64"
    assert arm_label("lowrank", 2.0) == "lowrank k=2"
    assert arm_label("hashed", float("nan")) == "hashed"


def test_a_kind_other_than_mlet_is_its_own_method_in_every_table_and_plot(tmp_path, drawn_lines):
    # lowrank k=64 and mlet k=64 at the same d must not merge, nor be drawn as "mlet"
    root = tmp_path / "runs"
    for name, emb, k, d, auc in (("s4", "single", None, 4, 0.70), ("s16", "single", None, 16, 0.75),
                                 ("m4", "mlet", 64, 4, 0.76), ("l4", "lowrank", 64, 4, 0.60),
                                 ("l16", "lowrank", 64, 16, 0.74), ("m16", "mlet", 64, 16, 0.78)):
        _run(root, name, emb, k, d, 0, auc, buckets=None)
    res = build_report([root], tmp_path / "report")
    assert sorted(drawn_lines["auc_vs_dim_ds_m.png"]) == ["lowrank k=64", "mlet k=64", "single"]
    red = res["dim_reduction"].set_index("embedding")
    assert red.loc["mlet", "mlet_dim"] == 4 and red.loc["mlet", "factor"] == 4
    assert red.loc["lowrank", "mlet_dim"] == "never" and red.loc["lowrank", "note"] == "best lowrank AUC 0.7400"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ds | m | lowrank | 64 | 16 | 0.7500 | never | - | - | 16 | best lowrank AUC 0.7400 |" in md
    assert "(lowrank, MLET, at each k)" in md


# ---- --tune with several keys ---------------------------------------------------------------------
def _tuning_grid(root):
    """single: best val at lr 0.003, init_std 0.5 (edge: init_std only); mlet: lr 0.01, init_std 0.1
    (edge: both). Test AUC is highest elsewhere, so it must play no part."""
    val = {("single", 0.003, 0.5): 0.74, ("mlet", 0.01, 0.1): 0.78}
    for emb, k in (("single", None), ("mlet", 64)):
        for lr in (0.001, 0.003, 0.01):
            for std in (0.1, 0.5):
                for seed in (0, 1):
                    v = val.get((emb, lr, std), 0.70)
                    test = 0.90 if v == 0.70 else 0.75 + seed / 100
                    _run(root, f"{emb}-{lr}-{std}-{seed}", emb, k, 8, seed, test, val=v,
                         optimizer__lr=lr, embedding__init_std=std)


@pytest.mark.slow  # starts processes
def test_tune_several_keys_picks_each_arms_best_combination_and_flags_the_grid_edge(tmp_path):
    root = tmp_path / "runs"
    _tuning_grid(root)
    comma = _mlet_report(root, "--out", tmp_path / "comma", "--no-plots", "--tune", "optimizer.lr,embedding.init_std")
    assert comma.returncode == 0, comma.stderr
    repeated = _mlet_report(root, "--out", tmp_path / "rep", "--no-plots", "--tune", "optimizer.lr",
                            "--tune", "embedding.init_std")
    assert repeated.returncode == 0, repeated.stderr
    choice = pd.read_csv(tmp_path / "comma" / "tuning_choice.csv", keep_default_na=False)
    assert choice.equals(pd.read_csv(tmp_path / "rep" / "tuning_choice.csv", keep_default_na=False))
    got = {r["embedding"]: (r["optimizer.lr"], r["embedding.init_std"], r["edge"]) for _, r in choice.iterrows()}
    assert got == {
        "single": (0.003, 0.5, "embedding.init_std at the largest value tried"),
        "mlet": (0.01, 0.1, "optimizer.lr at the largest value tried; embedding.init_std at the smallest value tried"),
    }
    table = pd.read_csv(tmp_path / "comma" / "auc_vs_dim.csv").set_index("embedding")
    assert table.loc["single", "auc_mean"] == pytest.approx(0.755) and table.loc["single", "seeds"] == 2
    assert table.loc["mlet", "auc_mean"] == pytest.approx(0.755)
    assert len(pd.read_csv(tmp_path / "comma" / "tuning.csv")) == 2 * 3 * 2
    md = (tmp_path / "comma" / "report.md").read_text()
    assert "## 1. Tuning of `optimizer.lr`, `embedding.init_std` per arm" in md
    assert "| ds | m | single | - | 8 | 0.003 | 0.5 | 0.7400 | 2 | embedding.init_std at the largest value tried |" in md
    assert "2 of 2 arms chose a setting on the edge of the grid." in md


# ---- the report is a list of sections, numbered as rendered ---------------------------------------
def test_sections_are_numbered_without_gaps_and_a_section_is_added_by_a_function(records_dir, tmp_path,
                                                                              monkeypatch):
    def runs_per_model(rep):
        counts = rep.runs.groupby("model").size()
        rep.table("runs_per_model", counts.rename("runs").reset_index())
        return report.Section("Runs per model", [f"{m}: {n}" for m, n in counts.items()])

    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS, runs_per_model])
    res = build_report([records_dir], tmp_path / "report", plots=False)
    md = (tmp_path / "report" / "report.md").read_text()
    numbers = [int(m) for m in re.findall(r"^## (\d+)\. ", md, flags=re.M)]
    assert numbers == list(range(1, 8))  # tuning is left out without --tune: 6 built-in sections + 1
    assert md.startswith("# MLET report") and "## 1. AUC and logloss against d" in md
    assert "## 7. Runs per model\n\nm1: 13\nm2: 4\nm3: 3" in md
    assert list(res["runs_per_model"]["runs"]) == [13, 4, 3]
    assert (tmp_path / "report" / "runs_per_model.csv").is_file()


def test_single_layer_runs_are_the_reference_of_every_split_they_lack_the_setting_of(tmp_path):
    # ablation-like: MLET under two inits (a setting single-layer runs do not have) and single-layer
    # runs under two table_lr_scale values; without --by the tables split by both keys, and the
    # single-layer arm with table_lr_scale 1.0 is the reference of both MLET inits
    root = tmp_path / "runs"
    for d, single, scaled, authors in ((4, 0.70, 0.74, 0.71), (16, 0.73, 0.76, 0.72)):
        _run(root, f"s{d}", "single", None, d, 0, single, embedding={"dim": d})
        _run(root, f"s{d}x4", "single", None, d, 0, single - 0.05, embedding={"dim": d},
             optimizer__table_lr_scale=4.0)
        _run(root, f"m{d}", "mlet", 64, d, 0, scaled, embedding__init="scaled", optimizer__table_lr_scale=1.0)
        _run(root, f"a{d}", "mlet", 64, d, 0, authors, embedding__init="authors", optimizer__table_lr_scale=1.0)
    for name in ("s4", "s16"):  # the plain single-layer runs carry table_lr_scale 1.0 too
        path = root / name / "record.json"
        rec = json.loads(path.read_text())
        rec["config"]["optimizer"]["table_lr_scale"] = 1.0
        write_record(path, rec)
    res = build_report([root], tmp_path / "report", plots=False)
    assert sorted(res["split_by"]) == ["embedding.init", "optimizer.table_lr_scale"]
    red = res["dim_reduction"].set_index("embedding.init")
    assert list(red["reference_auc"]) == pytest.approx([0.73, 0.73])
    assert red.loc["scaled", "mlet_dim"] == 4 and red.loc["scaled", "factor"] == 4
    assert red.loc["authors", "mlet_dim"] == "never"
    table = res["auc_vs_dim"]
    single = table[table["embedding"] == "single"]
    assert single["embedding.init"].isna().all() and len(single) == 4  # the table itself is not repeated
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| - | 4.0 | ds | m | single | - | 4 | 0.6500 |" in md


def test_a_single_layer_run_swept_over_k_is_one_arm(tmp_path):
    # embedding.inner_dim means nothing to a single-layer table: runs under k=64 and k=256 are seeds of one arm
    root = tmp_path / "runs"
    _run(root, "k64", "single", None, 8, 0, 0.70, embedding={"dim": 8, "inner_dim": 64})
    _run(root, "k256", "single", None, 8, 1, 0.72, embedding={"dim": 8, "inner_dim": 256})
    res = build_report([root], tmp_path / "report", plots=False)
    assert res["split_by"] == [] and not res["warnings"]
    assert _row(res["auc_vs_dim"], embedding="single", dim=8)["seeds"] == 2


# ---- how much of the gain survives each control ---------------------------------------------------
def _controls_grid(root):
    """single and MLET (d=8) over lr {0.001, 0.01} x init_std {1e-4, 0.1}, two seeds, val AUC = test AUC.

    The second init is std None (what table_init=uniform records), so a tuned key holds None beside numbers.
    single: 0.70 at lr 0.001/std 1e-4 (the untuned setting), 0.74 best at lr 0.01/std 1e-4, 0.72 at
    lr 0.001/std None, 0.71 at lr 0.01/std None. MLET: 0.75 untuned, 0.76 at lr 0.01/std 1e-4, 0.73 and
    0.70 at std None. Gains by hand: none 0.75-0.70 = +0.05; lr tuned (std 1e-4): 0.76-0.74 = +0.02;
    init tuned (lr 0.001): MLET 0.75 (std 1e-4) - single 0.72 (std None) = +0.03; both: 0.76-0.74 = +0.02."""
    auc = {("single", 0.001, 1e-4): 0.70, ("single", 0.01, 1e-4): 0.74, ("single", 0.001, None): 0.72,
           ("single", 0.01, None): 0.71, ("mlet", 0.001, 1e-4): 0.75, ("mlet", 0.01, 1e-4): 0.76,
           ("mlet", 0.001, None): 0.73, ("mlet", 0.01, None): 0.70}
    for (emb, lr, std), a in auc.items():
        for seed in (0, 1):
            _run(root, f"{emb}-{lr}-{std}-{seed}", emb, 64 if emb == "mlet" else None, 8, seed, a + seed / 1000,
                 val=a, optimizer__lr=lr, embedding__init_std=std)


def test_controls_table_gives_the_gain_with_each_group_of_settings_tuned_or_held(tmp_path):
    root = tmp_path / "runs"
    _controls_grid(root)
    res = build_report([root], tmp_path / "report", plots=False, tune="optimizer.lr,embedding.init_std",
                       untuned={"optimizer.lr": 0.001, "embedding.init_std": 1e-4})
    gains = dict(zip(res["controls"]["control"], res["controls"]["gain"]))
    assert gains == pytest.approx({"none": 0.05, "optimizer.lr": 0.02, "embedding.init_std": 0.03,
                                   "optimizer.lr + embedding.init_std": 0.02})
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## 2. How much of the gain survives each control" in md
    assert "| ds | m | mlet k=64 | 8 | +0.0500 | +0.0200 | +0.0300 | +0.0200 |" in md.replace("MLET", "mlet")
    # a setting an arm does not have (table_init=uniform records no init_std) is "-" in the tuning tables
    assert "| ds | m | single | - | 8 | 0.001 | - | 0.7200 | 2 |  |" in md and "nan" not in md
    assert (tmp_path / "report" / "controls.csv").is_file()


def test_controls_hold_untuned_keys_at_the_default_configs_values_or_say_they_were_never_run(tmp_path):
    root = tmp_path / "runs"
    _controls_grid(root)
    # mlet-train's defaults: optimizer.lr 0.001 (run), embedding.init_std 0.0001 (run)
    assert report.untuned_settings(["optimizer.lr", "embedding.init_std"]) == {
        "optimizer.lr": 0.001, "embedding.init_std": 0.0001}
    res = build_report([root], tmp_path / "report", plots=False, tune="optimizer.lr,embedding.init_std",
                       untuned={"optimizer.lr": 0.003})
    controls = res["controls"].set_index("control")
    assert controls.loc["none", "missing"] == "optimizer.lr=0.003" and math.isnan(controls.loc["none", "gain"])
    assert controls.loc["optimizer.lr + embedding.init_std", "gain"] == pytest.approx(0.02)
    with pytest.raises(report.MletError, match="no.such: not a key of mlet-train's default config"):
        report.untuned_settings(["no.such"])


def test_only_early_stopping_among_the_default_callbacks_defines_an_experiment():
    """Checkpoint callbacks hold the run's own folder (callbacks.*.dirpath): were one of them an
    experiment key, every run would be an arm of its own and no seeds would ever be averaged."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    callbacks = OmegaConf.load(str(files("mlet.conf") / "callbacks" / "default.yaml"))
    defining = {name for name in callbacks if not report._ignored(f"callbacks.{name}.x", report.NOT_EXPERIMENT)}
    assert defining == {"early_stopping"}


# ---- the bytes plot: one colour per embedding type, its quantised form dashed ---------------------
def test_a_quantised_method_is_drawn_in_its_types_colour_dashed_and_a_crowded_legend_moves_outside(
        tmp_path, drawn_lines):
    root = tmp_path / "runs"
    for emb, quantize, nbytes, auc in (("single", None, 4000, 0.70), ("single", "int8", 1250, 0.70),
                                       ("hash", None, 400, 0.69), ("hash", "int8", 125, 0.69),
                                       ("mlet", None, 4000, 0.72), ("mlet", "int8", 1250, 0.72)):
        name = f"{emb}-{quantize}"
        write_record(root / name / "record.json",
                     {**_record("m", emb, 64 if emb == "mlet" else None, 16, 0, auc, quantize=quantize,
                                inference_bytes=nbytes), "config": _config(16, None, 0, quantize=quantize or "none")})
    build_report([root], tmp_path / "report")
    # the bytes table: a method that never reaches the reference names no arm ("-", not "nan")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ds | m | hash | 4000 | 0.7000 | - | - | - | - | never reaches the target (best hash AUC 0.6900) |" in md
    lines = drawn_lines["auc_vs_bytes_ds_m.png"]
    assert lines["hash+int8"].color == lines["hash"].color != lines["MLET"].color == lines["MLET+int8"].color
    assert (lines["hash"].variant, lines["hash+int8"].variant, lines["MLET+int8"].variant) == (False, True, True)
    assert lines["single-layer+int8"].color == "black" and lines["single-layer"].style == "reference"
    # six curves and the front: the legend stays in the corner; past LEGEND_INSIDE it goes beside the axes
    from PIL import Image

    assert Image.open(tmp_path / "report" / "auc_vs_bytes_ds_m.png").size == (720, 480)
    many = [report.Line(f"m{i}", [1, 2], [0.5, 0.6]) for i in range(report.LEGEND_INSIDE + 1)]
    wide = report.plot(tmp_path / "wide.png", [report.Panel(many, "x", "y")])
    assert Image.open(wide).size == (1080, 540)


def test_arms_of_one_type_that_differ_in_a_knob_are_named_by_their_label_in_the_tables(tmp_path):
    # two hashed arms at d = 16 (buckets 146 and 763) and single-layer: without the label the tuning and
    # AUC tables would show two identical "hash | - | 16" rows
    root = tmp_path / "runs"
    for name, emb, label, auc in (("s", "single", "single", 0.70), ("h1", "hash", "hash buckets=146", 0.69),
                                  ("h2", "hash", "hash buckets=763", 0.71)):
        for lr in (0.001, 0.01):
            write_record(root / f"{name}-{lr}" / "record.json",
                         {**_record("m", emb, None, 16, 0, auc + (lr == 0.01) / 100, label=label,
                                    arm={"kind": emb, "dim": 16, "buckets": name}),
                          "config": _config(16, None, 0, optimizer__lr=lr, embedding__buckets=name)})
    build_report([root], tmp_path / "report", plots=False, tune="optimizer.lr", ignore=["embedding.buckets"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| data | model | embedding | method | k | d | optimizer.lr | val AUC | seeds | edge |" in md
    assert "| ds | m | hash | hash buckets=763 | - | 16 | 0.01 | 0.7200 | 1 |" in md
    assert "| ds | m | hash | hash buckets=146 | - | 16 | 0.7000 |" in md  # the AUC table, at the chosen lr
    # arms whose label says no more than embedding and k keep the shorter tables
    plain = tmp_path / "plain"
    for lr in (0.001, 0.01):
        _run(plain, f"m-{lr}", "mlet", 64, 4, 0, 0.7, optimizer__lr=lr)
    build_report([plain], tmp_path / "r2", plots=False, tune="optimizer.lr")
    assert "| data | model | embedding | k | d | optimizer.lr |" in (tmp_path / "r2" / "report.md").read_text()


def test_a_quantised_run_is_also_read_as_its_unquantised_run_unless_that_run_has_its_own_record(tmp_path):
    """A version-3 int8 record stands for two methods (single+int8, and single from its unquantised
    figures); where the quantize=none run's own record is there too it is used, with no duplicate
    warning. An older int8 record (no unquantised sizes) stands only for single+int8."""
    root = tmp_path / "runs"

    def record(name, seed, auc, mtime, quantize="int8", version=3, **fields):
        rec = {**_record("m", "single", None, 8, seed, auc), "config": _config(8, None, seed, quantize=quantize),
               "quantize": quantize, "record_version": version, "inference_bytes": 600, **fields}
        os.utime(write_record(root / name / "record.json", rec), (mtime, mtime))

    def quantised(name, seed, auc, unquantized_auc, version=3):
        sizes = {"inference_bytes_unquantized": 1000, "model_bytes_unquantized": 1500} if version == 3 else {}
        record(name, seed, auc, 2000 + seed, version=version, val_auc_unquantized=unquantized_auc,
               test_auc_unquantized=unquantized_auc, **sizes)

    quantised("q0", 0, 0.70, 0.71)
    quantised("q1", 1, 0.72, 0.73)
    quantised("q2", 2, 0.74, 0.75, version=2)  # before the unquantised form was recorded: int8 only
    record("own1", 1, 0.90, 1000, quantize="none", inference_bytes=1000)  # seed 1's own record, older
    res = build_report([root], tmp_path / "report", plots=False)
    assert not [w for w in res["warnings"] if "duplicate" in w], res["warnings"]
    plain = _row(res["auc_vs_dim"], embedding="single", dim=8)
    assert plain["seeds"] == 2 and plain["auc_mean"] == pytest.approx((0.71 + 0.90) / 2)
    int8 = _row(res["auc_vs_dim"], embedding="single+int8", dim=8)
    assert int8["seeds"] == 3 and int8["auc_mean"] == pytest.approx((0.70 + 0.72 + 0.74) / 3)
    runs = res["runs"].set_index(["embedding", "seed"])
    assert runs.loc[("single", 0), "inference_bytes"] == 1000 and runs.loc[("single+int8", 0), "inference_bytes"] == 600
