"""The exported model is the collapsed single-layer model, with its size and predictions."""

import json

import numpy as np
import torch

from mlet.data import SyntheticCTR
from mlet.export import EXPORT_NAME, main as export_main
from mlet.job import run
from tests.helpers import TINY, compose_cfg


def test_export_matches_in_framework_collapsed_predictions(tmp_path, capsys):
    cfg = compose_cfg([*TINY, "embedding=mlet", "trainer.max_epochs=1"], tmp_path / "run")
    record = run(cfg)
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    printed = capsys.readouterr().out
    spec = json.loads((tmp_path / "exp" / "model.json").read_text())
    sizes = spec["sizes"]
    # deployed size: exactly a single-layer embedding of the same d
    assert sizes["embedding_parameters"] == sizes["single_layer_embedding_parameters"] == record[
        "embedding_inference_parameters"]
    assert f"{sizes['embedding_parameters']:,}" in printed
    assert spec["embedding"] == "mlet" and spec["dim"] == 4
    assert spec["vocabulary"] is None and "no raw file format" in spec["vocabulary_note"]  # synthetic data

    program = torch.export.load(str(tmp_path / "exp" / EXPORT_NAME)).module()
    data = SyntheticCTR(**{k: v for k, v in cfg.data.items() if k != "_target_"}).load()
    test = data.splits["test"]
    with torch.no_grad():
        exported = program(torch.from_numpy(test.dense), torch.from_numpy(test.cat.astype(np.int64)))
    # row by row equal to the in-framework collapsed network of the same (best) checkpoint
    from mlet.export import load_collapsed
    from mlet.metrics import auc

    net, _, ckpt = load_collapsed(tmp_path / "run")
    assert str(ckpt) == record["best_checkpoint"]
    with torch.no_grad():
        in_framework = net(torch.from_numpy(test.dense), torch.from_numpy(test.cat.astype(np.int64)))
    assert torch.allclose(exported, in_framework, atol=1e-5)
    # and the run's reported test AUC is this model's
    assert abs(auc(exported, torch.from_numpy(test.label)) - record["test_auc"]) < 1e-6


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
