"""+sweep=compress end to end, reduced to tiny synthetic data: the sweep trains each reduction
arm once per setting (the references once, whatever the budget; fp32 and int8 from one training),
and mlet-report --tune optimizer.lr draws AUC against deployed bytes and the bytes table from its
records."""

import json

import pandas as pd
import pytest

from tests.helpers import TINY, run_cli, run_script


@pytest.mark.slow
def test_compress_sweep_and_report_end_to_end(tmp_path):
    tiny = [o for o in TINY if not o.startswith(("embedding.", "trainer.max_epochs"))]
    args = ["-m", "+sweep=compress", *tiny, "trainer.max_epochs=1", "logger=none", f"paths.log_dir={tmp_path}",
            "embedding=single,hash,hash_mlet", "embedding.dim=4", "embedding.budget=0.25,0.0625",
            "optimizer.lr=0.001,0.01", "seed=0"]
    done = run_cli(args, tmp_path, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "compress_synthetic"
    outcomes = [json.loads(line)["status"] for line in (sweep_dir / "sweep_jobs.jsonl").read_text().splitlines()]
    # single: 2 lr trained once, its second budget a duplicate; hash, hash_mlet: 2 budgets x 2 lr each
    assert outcomes.count("trained") == 2 + 8 and outcomes.count("duplicate") == 2
    records = [json.loads(p.read_text()) for p in sweep_dir.rglob("record.json")]
    assert all(r["inference_bytes"] and r["model_bytes"] > r["inference_bytes"] for r in records)
    # the preset quantises (int8) and each record also holds the unquantised form of the same network
    assert len(records) == 10 and all(r["quantize"] == "int8" and r["test_auc_unquantized"] is not None
                                      and r["inference_bytes_unquantized"] > r["inference_bytes"] for r in records)
    # the preset keeps what the report reads: records, not checkpoints (keep_best_checkpoint=false)
    assert all(r["best_checkpoint"] is None for r in records)
    assert not list(sweep_dir.rglob("*.ckpt"))

    out = tmp_path / "report"
    rep = run_script("mlet-report", [str(sweep_dir), "--out", str(out), "--tune", "optimizer.lr"], tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    table = pd.read_csv(out / "auc_vs_bytes.csv")
    # one row per arm at its tuned lr: single (+int8), 2 budgets x (hash, hash_mlet) (+int8); the fp32
    # arms read from the int8 records
    assert len(table) == 2 + 8
    assert set(table["embedding"]) == {"single", "single+int8", "hash", "hash+int8", "hash_mlet", "hash_mlet+int8"}
    assert table["pareto"].any()
    # int8 stores a row of d=4 floats in 4 bytes of codes + 4 of scale and bias: half the float32 bytes
    single = table.set_index("embedding").loc[["single", "single+int8"], "inference_bytes"]
    assert single["single+int8"] * 2 == single["single"]
    reduction = pd.read_csv(out / "bytes_reduction.csv")
    assert set(reduction["embedding"]) == {"single+int8", "hash", "hash+int8", "hash_mlet", "hash_mlet+int8"}
    assert (out / "auc_vs_bytes_synthetic_dlrm.png").is_file()
    assert "AUC against deployed embedding bytes" in (out / "report.md").read_text()
