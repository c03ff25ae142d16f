"""Row-wise quantisation of deployed tables: reconstruction within half a step per row, bytes by
hand, and the quantised evaluation equal to the exported program's predictions."""

import json

import numpy as np
import pytest
import torch

from mlet.embeddings import HashEmbedding, MixedDimEmbedding, SingleLayerEmbedding
from mlet.embeddings.quantize import QuantizedTable, deployed_bytes, quantize


def weights(seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(50, 7, generator=gen) * torch.logspace(-5, 1, 50)[:, None] + torch.randn(50, 1, generator=gen)
    w[3] = 0.25  # a constant row
    return w


@pytest.mark.parametrize("mode,bits", [("int8", 8), ("int4", 4)])
def test_reconstruction_within_half_a_step_per_row(mode, bits):
    w = weights()
    table = QuantizedTable(w, mode)
    scale = table.scale.float()
    error = (table.weight - w).abs().max(dim=1).values
    assert torch.all(error <= scale / 2 * (1 + 1e-5) + 1e-7), (error / scale).max()
    # bias: the row minimum rounded down to float16; step: (max - bias) / (2^bits - 1) rounded up
    bias = table.bias.double()
    lo = w.min(1).values.double()
    assert torch.all(bias <= lo) and torch.all(lo - bias <= w.abs().max(1).values.double() * 2**-10 + 2**-24)
    step = (w.max(1).values.double() - bias) / (2**bits - 1)
    assert torch.all(scale.double() >= step) and torch.all(scale.double() <= step * (1 + 2**-10) + 2**-24)
    assert table.weight[3].eq(0.25).all()  # a constant row is exact


def test_fp16_and_bytes_by_hand():
    w = weights()
    assert torch.equal(QuantizedTable(w, "fp16").weight, w.half().float())
    assert deployed_bytes(QuantizedTable(w, "fp16")) == 50 * 7 * 2
    assert deployed_bytes(QuantizedTable(w, "int8")) == 50 * (7 + 2 + 2)  # codes, float16 scale and bias
    assert deployed_bytes(QuantizedTable(w, "int4")) == 50 * (4 + 2 + 2)  # 7 codes packed in 4 bytes


def test_quantize_replaces_every_table_and_keeps_projections():
    torch.manual_seed(0)
    single = SingleLayerEmbedding([10, 20], 6, init_std=1.0)
    q = quantize(single, "int8")
    idx = torch.tensor([[3, 17], [9, 0]])
    assert q is not single and torch.equal(single(idx), single(idx))  # the original is untouched
    assert torch.allclose(q(idx), single(idx), atol=0.02)
    assert deployed_bytes(q) == 30 * (6 + 4)
    mixed = MixedDimEmbedding([4, 400], 4, alpha=0.5, init_std=1.0)
    qm = quantize(mixed, "int4")
    # 4 x 4 table: 2 bytes of codes per row; 400 x 1 table: 1 byte; + float16 scale, bias; float32 projection
    assert deployed_bytes(qm) == 4 * (2 + 4) + 400 * (1 + 4) + 4 * 4
    assert torch.allclose(qm(torch.tensor([[1, 5]])), mixed(torch.tensor([[1, 5]])), atol=0.5)
    hashed = quantize(HashEmbedding([3, 100], 4, buckets=8, init_std=1.0), "fp16")
    assert deployed_bytes(hashed) == (3 + 8) * 4 * 2
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize(single, "int2")


@pytest.mark.slow
@pytest.mark.parametrize("embedding,mode", [("mlet", "int8"), ("qr", "int4")])
def test_quantized_evaluation_equals_the_exported_program(tmp_path, embedding, mode):
    from mlet.data import SyntheticCTR
    from mlet.export import EXPORT_NAME, load_collapsed, main as export_main
    from mlet.job import run
    from mlet.metrics import auc
    from tests.helpers import TINY, compose_cfg

    extra = ["embedding.budget=null", "embedding.remainder_rows=20"] if embedding == "qr" else []
    tiny = [o for o in TINY if not (embedding == "qr" and o.startswith("embedding.inner_dim"))]
    cfg = compose_cfg([*tiny, f"embedding={embedding}", *extra, f"quantize={mode}", "trainer.max_epochs=1"],
                      tmp_path / "run")
    record = run(cfg)
    assert record["quantize"] == mode and record["test_auc_unquantized"] is not None
    assert record["inference_bytes"] < record["model_bytes"]
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    spec = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert spec["quantize"] == mode and spec["sizes"]["embedding_bytes"] == record["inference_bytes"]
    program = torch.export.load(str(tmp_path / "exp" / EXPORT_NAME)).module()
    test = SyntheticCTR(**{k: v for k, v in cfg.data.items() if k != "_target_"}).load().splits["test"]
    dense, cat = torch.from_numpy(test.dense), torch.from_numpy(test.cat.astype(np.int64))
    with torch.no_grad():
        exported = program(dense, cat)
        net, _, _ = load_collapsed(tmp_path / "run")
        in_framework = net(dense, cat)
    assert (torch.sigmoid(exported) - torch.sigmoid(in_framework)).abs().max() <= 1e-6
    # the run's reported (quantised) test AUC is the exported program's
    assert abs(auc(exported, torch.from_numpy(test.label)) - record["test_auc"]) < 1e-6


def test_mlet_predict_on_raw_lines_equals_the_quantized_evaluation(tmp_path):
    """mlet-predict reads a quantised export: on the raw Criteo file the run was prepared from, its
    probabilities equal the in-framework quantised model's to 1e-6, and on the test rows their AUC is
    the record's (quantised) test AUC."""
    from mlet.export import data_source, load_collapsed, main as export_main
    from mlet.job import run
    from mlet.metrics import auc
    from mlet.predict import main as predict_main
    from tests.helpers import TINY, compose_cfg
    from tests.helpers.rawdata import criteo_rows, write_criteo

    raw = write_criteo(tmp_path / "train.txt", criteo_rows(1400, seed=5), strip_every=7)
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data=criteo_kaggle", f"data.path={raw}", "data.workers=1", "data.progress=false",
        "data.on_short_line=pad", f"paths.data_dir={tmp_path / 'cache'}", "embedding=mlet",
        "quantize=int8", "trainer.max_epochs=1"]
    record = run(compose_cfg(overrides, tmp_path / "run"))
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    assert predict_main([str(tmp_path / "exp"), str(raw), "--out", str(tmp_path / "pred.txt")]) == 0
    pred = np.loadtxt(tmp_path / "pred.txt", dtype=np.float64)

    spec = json.loads((tmp_path / "exp" / "model.json").read_text())
    s = data_source(spec["data"]).load().splits  # dlrm's contiguous split: train, test, val in file order
    dense = torch.from_numpy(np.concatenate([s[k].dense for k in ("train", "test", "val")]))
    cat = torch.from_numpy(np.concatenate([s[k].cat for k in ("train", "test", "val")]).astype(np.int64))
    net, _, _ = load_collapsed(tmp_path / "run")
    assert any(isinstance(m, QuantizedTable) for m in net.modules())  # the deployed int8 codes, not floats
    with torch.no_grad():
        quantized = torch.sigmoid(net(dense, cat)).numpy()
    np.testing.assert_allclose(pred, quantized, rtol=0, atol=1e-6)
    n_train, n_test = len(s["train"].label), len(s["test"].label)
    test_pred = torch.from_numpy(pred[n_train:n_train + n_test])
    assert abs(auc(test_pred, torch.from_numpy(np.array(s["test"].label))) - record["test_auc"]) < 1e-6


def test_a_quantised_run_trains_the_unquantised_runs_network_and_reads_as_that_run(tmp_path):
    """Quantisation is applied after training: with quantize=int8 the best checkpoint, early stopping
    and the plateau scheduler watch the unquantised validation AUC, so the run trains the very network
    a quantize=none run of the same config and seed trains, and its record read as unquantised
    (RunRecord.unquantized, what mlet-report uses) is that run's record: metrics, epochs, sizes."""
    from mlet.job import run
    from mlet.records import RECORD_NAME, read_record
    from tests.helpers import TINY, compose_cfg

    common = [*TINY, "embedding=hash_mlet", "embedding.budget=0.25", "trainer.max_epochs=4", "lr_scheduler=plateau",
              "callbacks.early_stopping.patience=1", "optimizer.lr=0.03"]
    run(compose_cfg([*common, "quantize=none"], tmp_path / "none"))
    run(compose_cfg([*common, "quantize=int8"], tmp_path / "int8"))
    plain, int8 = (read_record(tmp_path / name / RECORD_NAME) for name in ("none", "int8"))
    assert int8.config["callbacks"]["early_stopping"]["monitor"] == "val_auc_unquantized"
    assert int8.config["callbacks"]["model_checkpoint"]["monitor"] == "val_auc_unquantized"
    assert int8.inference_bytes < plain.inference_bytes and int8.test_logloss != plain.test_logloss  # quantised
    form = int8.unquantized()
    assert plain.unquantized() is None and form is not None and form.quantize == "none"
    for name in ("val_auc", "val_logloss", "test_auc", "test_logloss", "best_epoch", "last_val_auc", "epochs", "steps",
                 "inference_bytes", "model_bytes", "val_history"):
        assert getattr(form, name) == getattr(plain, name), name
    assert form.buckets is None and plain.buckets  # measured on the quantised model only
    def written_to_none(config):  # the same experiment, but for where it was written
        text = json.dumps({k: v for k, v in config.items() if k != "hydra"}, sort_keys=True)
        return text.replace(str(tmp_path / "int8"), str(tmp_path / "none"))

    assert written_to_none(form.config) == written_to_none(plain.config)


def test_training_decisions_watch_the_unquantised_validation_auc(tmp_path):
    """Where the quantised and the unquantised validation AUC disagree about the best epoch, the record's
    best epoch is the unquantised one's (the checkpoint training chose) and its val_auc the quantised
    model's at that epoch; the checkpoint, early-stopping and plateau-scheduler monitors say the same."""
    from hydra.utils import instantiate

    from mlet.job import validation_summary
    from mlet.models import DLRM
    from mlet.module import CTRModule, selection_metric
    from tests.helpers import compose_cfg

    history = [{"epoch": e, "step": 10 * e, "val_auc": q, "val_logloss": 0.5, "val_auc_unquantized": u,
                "val_logloss_unquantized": 0.5} for e, (q, u) in enumerate([(0.70, 0.71), (0.74, 0.72), (0.73, 0.75)])]
    summary = validation_summary(history, selection_metric("int8"))
    assert (summary["best_epoch"], summary["val_auc"]) == (2, 0.73)
    assert validation_summary(history, selection_metric("none"))["best_epoch"] == 1
    for mode, monitor in (("none", "val_auc"), ("int4", "val_auc_unquantized")):
        cfg = compose_cfg(["lr_scheduler=plateau", f"quantize={mode}"], tmp_path / mode)
        assert cfg.callbacks.model_checkpoint.monitor == cfg.callbacks.early_stopping.monitor == monitor
        module = CTRModule(SingleLayerEmbedding([10, 10], 2), DLRM(2, 2, num_dense=1, bottom_mlp=[4], top_mlp=[4]),
                           lr_scheduler=instantiate(cfg.lr_scheduler), quantize=mode)
        assert module.configure_optimizers()["lr_scheduler"]["monitor"] == monitor
