"""A new embedding type needs no edit outside its class and its config: a toy type defined in the
tests (tests/helpers/toy.py), registered through a config directory on ``hydra.searchpath``, runs
through a two-job sweep beside MLET and through mlet-report, labelled by its own label."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import TINY, run_cli, run_script

TOY_YAML = """\
_target_: tests.helpers.toy.ToyHashEmbedding
_partial_: true
dim: 4
buckets: 64
inner_dim: null  # ignored; lets one sweep set embedding.inner_dim for every type
"""


@pytest.mark.slow
def test_a_toy_embedding_type_runs_through_a_sweep_and_the_report(tmp_path):
    conf = tmp_path / "conf" / "embedding"
    conf.mkdir(parents=True)
    (conf / "toyhash.yaml").write_text(TOY_YAML)
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, "trainer.max_epochs=1", "data.rows=2000", "embedding=toyhash,mlet",
                    f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.parent.name.rsplit("-", 1) for p in sweep_dir.glob("*/record.json"))
    # named by the type's arm keys (buckets), its ignored inner_dim left out; the hash of TINY's overrides
    assert [n for n, _ in names] == ["synthetic-dlrm-mlet-d4-k16-s0", "synthetic-dlrm-toyhash-d4-buckets64-s0"]
    assert names[0][1] == names[1][1]

    out = tmp_path / "report"
    rep = run_script("mlet-report", [str(sweep_dir), "--out", str(out)], cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs["embedding"], runs["label"])) == [("mlet", "mlet k=16"), ("toyhash", "toyhash buckets=64")]
    table = pd.read_csv(out / "auc_vs_dim.csv")
    assert len(table) == 2 and sorted(table["label"]) == ["mlet k=16", "toyhash buckets=64"]  # never merged
    assert (table["seeds"] == 1).all()
    assert (out / "auc_vs_dim_synthetic_dlrm.png").is_file()
    md = (out / "report.md").read_text()
    assert "| synthetic | dlrm | toyhash |" in md


def test_the_toy_type_states_its_arm_and_refuses_a_bad_config():
    from tests.helpers.toy import ToyHashEmbedding

    emb = ToyHashEmbedding([5, 7], 4, buckets=8, inner_dim=64)
    assert emb.arm() == {"kind": "toyhash", "dim": 4, "buckets": 8} and emb.label() == "toyhash buckets=8"
    assert emb.collapse()(emb.rows(emb.offsets.new_zeros(1, 2)) * 0).shape == (1, 2, 4)
    with pytest.raises(ValueError, match="embedding.buckets=0"):
        ToyHashEmbedding([5], 4, buckets=0)
