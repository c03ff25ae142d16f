"""mlet-predict: raw Criteo lines -> the exported model's probabilities, equal to the in-framework
collapsed model's on the same (prepared) rows; unseen categories -> OOV; bad lines -> exit 2."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlet.export import SPEC_NAME, VOCAB_NAME, data_source, load_collapsed, main as export_main
from mlet.data.source import PreparedSource
from mlet.predict import PredictError, Vocabulary, batches, main as predict_main, raw_source
from mlet.job import run
from tests.helpers import TINY, compose_cfg, run_script
from tests.helpers.rawdata import criteo_line, criteo_rows, write_criteo

ROWS = 1400  # dlrm protocol: 7 contiguous parts -> train 1200, then test 100, val 100 (file order)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from hydra.core.global_hydra import GlobalHydra

    tmp = tmp_path_factory.mktemp("predict")
    rows = criteo_rows(ROWS, seed=3)
    raw = write_criteo(tmp / "train.txt", rows, strip_every=7)
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data=criteo_kaggle", f"data.path={raw}", "data.workers=1", "data.progress=false",
        "data.on_short_line=pad",  # the file strips trailing empty fields on some lines
        f"paths.data_dir={tmp / 'cache'}", "embedding=mlet", "trainer.max_epochs=1"]
    cfg = compose_cfg(overrides, tmp / "run")
    run(cfg)
    GlobalHydra.instance().clear()
    assert export_main([str(tmp / "run"), "--out", str(tmp / "exp")]) == 0
    return tmp, raw, rows


def _predict(tmp, raw, name, *extra):
    out = tmp / name
    assert predict_main([str(tmp / "exp"), str(raw), "--out", str(out), *extra]) == 0
    return np.loadtxt(out, dtype=np.float64, ndmin=1)


def _collapsed(tmp, dense, cat):
    net, _, _ = load_collapsed(tmp / "run")
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(dense), torch.from_numpy(cat.astype(np.int64)))).numpy()


def test_export_describes_the_vocabulary(exported):
    tmp, _, _ = exported
    spec = json.loads((tmp / "exp" / SPEC_NAME).read_text())
    voc = spec["vocabulary"]
    assert voc["file"] == VOCAB_NAME and voc["oov_index"] == 0
    assert voc["cardinalities"] == spec["schema"]["cardinalities"]
    cache = data_source(spec["data"]).cache_path
    assert np.array_equal(np.load(tmp / "exp" / VOCAB_NAME), np.load(cache / "vocab.npy"))
    assert voc["offsets"][1] == voc["cardinalities"][0] - 1


def test_predictions_equal_the_collapsed_model_on_the_prepared_rows(exported):
    tmp, raw, _ = exported
    pred = _predict(tmp, raw, "pred.txt", "--batch-rows", "333")  # batches cut across nothing special
    spec = json.loads((tmp / "exp" / SPEC_NAME).read_text())
    arrays = data_source(spec["data"]).load()  # the run's cache (reused, not rebuilt)
    s = arrays.splits
    # dlrm's contiguous split: file order is train, then test, then val
    dense = np.concatenate([s[k].dense for k in ("train", "test", "val")])
    cat = np.concatenate([s[k].cat for k in ("train", "test", "val")])
    assert len(pred) == ROWS == len(cat)
    np.testing.assert_allclose(pred, _collapsed(tmp, dense, cat), rtol=0, atol=1e-6)
    # the parsed + vocabulary-mapped rows are exactly the prepared ones
    source = raw_source(spec["data"], raw)
    vocab = Vocabulary.load(tmp / "exp", spec)
    mapped = np.concatenate([c for _, c in batches(source, vocab, 500)])
    assert np.array_equal(mapped, cat)


def test_unseen_category_maps_to_oov(exported):
    tmp, _, rows = exported
    label, ints, cats = rows[0]
    spec = json.loads((tmp / "exp" / SPEC_NAME).read_text())
    seen = set(np.load(tmp / "exp" / VOCAB_NAME)[:spec["vocabulary"]["cardinalities"][0] - 1].tolist())
    unseen = next(v for v in (0xDEADBEEF, 0x12345678, 0x0BADF00D) if v not in seen)
    path = tmp / "oov.txt"
    path.write_text(criteo_line(label, ints, cats) + criteo_line(label, ints, [f"{unseen:08x}", *cats[1:]]))
    vocab = Vocabulary.load(tmp / "exp", spec)
    (dense, cat), = list(batches(raw_source(spec["data"], path), vocab, 100))
    first = data_source(spec["data"]).load().splits["train"].cat[0]  # row 0 of the file is a training row
    assert np.array_equal(cat[0], first)
    assert cat[1, 0] == 0 and np.array_equal(cat[1, 1:], cat[0, 1:])
    pred = _predict(tmp, path, "oov_pred.txt")
    np.testing.assert_allclose(pred, _collapsed(tmp, dense, cat), rtol=0, atol=1e-6)


def test_unlabeled_test_txt_form(exported):
    tmp, raw, rows = exported
    path = tmp / "test.txt"
    with open(path, "w") as f:
        for label, ints, cats in rows[:50]:
            f.write(criteo_line(label, ints, cats)[2:])  # drop "label\t": 39 fields
    labeled = _predict(tmp, raw, "all.txt")[:50]
    # equal up to float rounding (a batch of 50 rows, not 1400)
    np.testing.assert_allclose(_predict(tmp, path, "test_pred.txt", "--unlabeled"), labeled, rtol=0, atol=1e-6)
    # the labeled parser refuses the 40-field form as unlabeled
    assert predict_main([str(tmp / "exp"), str(raw), "--unlabeled", "--out", str(tmp / "x.txt")]) == 2
    assert not (tmp / "x.txt").exists()


@pytest.mark.slow
def test_the_console_script_predicts_from_any_directory(exported, tmp_path):
    tmp, raw, _ = exported
    proc = run_script("mlet-predict", [str(tmp / "exp"), str(raw), "--out", "p.txt"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "p.txt", ndmin=1), _predict(tmp, raw, "same.txt"))


def test_bad_line_names_file_line_and_field(exported, capsys):
    tmp, _, rows = exported
    path = tmp / "bad.txt"
    good = criteo_line(*rows[1])
    path.write_text(good + good.rstrip("\n") + "\textra\n")
    assert predict_main([str(tmp / "exp"), str(path), "--out", str(tmp / "bad_pred.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 2, whole line: 41 fields where 40 are expected" in err
    assert "on_bad_line" not in err and "mlet-predict skips no line" in err  # only options it takes
    assert err.startswith("mlet-predict: error:") and not (tmp / "bad_pred.txt").exists()
    path.write_text(good + "\t".join(["1", "x"] + [""] * 38) + "\n")
    assert predict_main([str(tmp / "exp"), str(path)]) == 2
    assert f"{path}, line 2, field 2 (I1): not an integer" in capsys.readouterr().err


def test_export_without_the_data_cache_is_a_clear_error(exported, capsys):
    tmp, _, _ = exported
    spec = json.loads((tmp / "exp" / SPEC_NAME).read_text())
    cache = data_source(spec["data"]).cache_path
    moved = cache.with_name(cache.name + ".moved")
    cache.rename(moved)
    try:
        assert export_main([str(tmp / "run"), "--out", str(tmp / "exp2")]) == 2
        assert "is gone" in capsys.readouterr().err
    finally:
        moved.rename(cache)
    shutil.rmtree(tmp / "exp2", ignore_errors=True)


def _avazu(tmp):
    from tests.helpers.rawdata import avazu_rows, write_avazu

    raw = write_avazu(tmp / "train", avazu_rows(300, seed=2))
    return {"_target_": "mlet.data.avazu.Avazu", "path": str(raw)}, raw


def _movielens(tmp):
    from tests.helpers.rawdata import write_movielens

    folder = write_movielens(tmp / "ml", n_ratings=300, seed=2)
    return {"_target_": "mlet.data.movielens.MovieLens100K", "path": str(folder)}, folder / "ml-100k.inter"


def _tabular(tmp):
    import csv

    from tests.helpers.rawdata import AVAZU_HEADER, avazu_rows

    raw = tmp / "clicks.csv"
    with open(raw, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(AVAZU_HEADER.split(",") + ["price"])
        for i, r in enumerate(avazu_rows(300, seed=2)):
            w.writerow(r + ["" if i % 7 == 0 else f"{(i % 13) * 1.5}"])
    return {"_target_": "mlet.data.tabular.Tabular", "path": str(raw), "label": "click",
            "categorical": ["id", "site_id", "C14"], "dense": ["price"], "dense_transform": "log1p"}, raw


@pytest.mark.parametrize("make", [_avazu, _movielens, _tabular])
def test_other_formats_map_to_the_prepared_rows(tmp_path, make):
    """Avazu, MovieLens (a new .inter file joined with the run's .user/.item) and tabular files:
    parsing with the source's parser and mapping with the exported vocabulary gives exactly the
    prepared rows (file order within each split)."""
    from mlet.export import copy_vocabulary

    cfg, raw = make(tmp_path)
    cfg = {**cfg, "cache_dir": str(tmp_path / "cache"), "workers": 1}
    source = data_source(cfg)
    arrays = source.load()
    schema = {"cat_names": list(arrays.cat_names), "cardinalities": [int(c) for c in arrays.cardinalities]}
    out = tmp_path / "exp"
    out.mkdir()
    spec = {"vocabulary": copy_vocabulary(cfg, schema, out)}
    vocab = Vocabulary.load(out, spec)
    if make is _movielens:  # a new interactions file: the same rows, copied elsewhere
        shutil.copyfile(raw, tmp_path / "new.inter")
        raw = tmp_path / "new.inter"
    chunks = list(raw_source(cfg, raw).iter_chunks())
    labels = np.concatenate([c.label for c in chunks])
    cat = np.concatenate([vocab.encode(c.keys) for c in chunks])
    dense = np.concatenate([c.dense for c in chunks])
    codes = source.assign(labels, [len(labels)], None)
    for k, name in enumerate(("train", "val", "test")):
        split = arrays.splits[name]
        assert np.array_equal(cat[codes == k], split.cat) and np.array_equal(dense[codes == k], split.dense)
        assert np.array_equal(labels[codes == k].astype(np.float32), split.label)


def _stripped_row(rows):
    """A row whose line loses trailing empty fields when stripped (and keeps some categories)."""
    return next(r for r in rows if r[2][-1] is None and r[2][0] is not None)


def test_short_lines_follow_the_run_and_errors_suggest_no_data_setting(exported, capsys):
    tmp, _, rows = exported
    row = _stripped_row(rows)
    path = tmp / "short.txt"
    path.write_text(criteo_line(*row) + criteo_line(*row, strip=True))
    fields = len(criteo_line(*row, strip=True).rstrip("\n").split("\t"))
    assert fields < 40
    pred = _predict(tmp, path, "short_pred.txt")  # the run padded short lines: so does prediction
    assert len(pred) == 2
    np.testing.assert_allclose(pred[1], pred[0], rtol=0, atol=1e-6)
    bad = tmp / "bad41.txt"
    bad.write_text(criteo_line(*row).rstrip("\n") + "\textra\n")
    assert predict_main([str(tmp / "exp"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "41 fields where 40 are expected" in err and "data." not in err  # mlet-predict takes no data.* setting
    # a run that stopped at short lines (or skipped them): prediction stops at them, naming the line
    for policy in ("error", "skip"):
        exp = tmp / f"exp_{policy}"
        shutil.copytree(tmp / "exp", exp, dirs_exist_ok=True)
        spec = json.loads((exp / SPEC_NAME).read_text())
        spec["data"]["on_short_line"] = policy
        (exp / SPEC_NAME).write_text(json.dumps(spec))
        assert predict_main([str(exp), str(path), "--out", str(tmp / "x.txt")]) == 2
        err = capsys.readouterr().err
        assert f"{path}, line 2, whole line: {fields} fields where 40 are expected" in err, err
        assert "data." not in err and not (tmp / "x.txt").exists()


class LinesSource(PreparedSource):
    """A data source predict.py has never heard of."""

    name = "lines"

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path)

    def prediction_source(self, raw, labeled=True):
        reader = self.for_reading(labeled)
        reader.path = Path(raw)
        return reader


class NoReaderSource(LinesSource):
    prediction_source = PreparedSource.prediction_source


def test_each_source_says_how_it_reads_a_raw_file(tmp_path):
    raw = tmp_path / "new.txt"
    cfg = {"_target_": f"{__name__}.LinesSource", "path": str(tmp_path / "train.txt"), "on_bad_line": "skip",
           "on_short_line": "skip", "workers": 4, "cache_dir": str(tmp_path)}
    reader = raw_source(cfg, raw)
    assert isinstance(reader, LinesSource) and reader.path == raw
    assert (reader.on_bad_line, reader.on_short_line, reader.workers, reader.progress) == ("error", "error", 1, False)
    with pytest.raises(PredictError, match="LinesSource reads its training format only.*no unlabeled form"):
        raw_source(cfg, raw, unlabeled=True)
    with pytest.raises(PredictError, match="NoReaderSource runs are not supported by prediction yet"):
        raw_source({**cfg, "_target_": f"{__name__}.NoReaderSource"}, raw)
    terabyte = {"_target_": "mlet.data.criteo.CriteoTerabyte", "path": str(tmp_path), "cache_dir": str(tmp_path)}
    with pytest.raises(PredictError, match="CriteoTerabyte runs are not supported"):
        raw_source(terabyte, raw)
