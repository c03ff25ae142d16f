"""``mlet-predict``: click probabilities for a raw file, from an ``mlet-export`` directory.

    mlet-predict <export dir> <raw file> [--out FILE] [--batch-rows N] [--unlabeled]

The raw file is read with the run's own source class and parser (instantiated from the data
config in ``model.json``, the raw file as its path): the training format of the run's dataset.

* Criteo Kaggle: ``train.txt`` lines (40 fields, label first; the label is ignored), or with
  ``--unlabeled`` the ``test.txt`` form (39 fields, no label). Lines whose trailing empty fields
  were stripped are padded only if the run padded them (``data.on_short_line=pad``); then a file
  of the other form can be misread: say which one it is.
* Avazu: the CSV with its header, ``click`` column included (its value is ignored).
* Tabular: CSV/Parquet with the run's columns, label (and split column, if the run had one) included.
* MovieLens-100K: an interactions file in the ``.inter`` format (``user_id``, ``item_id``,
  ``rating``); user and item features are joined from the ``.user`` / ``.item`` files of the
  run's data folder (``path`` in model.json's data config, or the downloaded copy in its cache).
* Criteo Terabyte and synthetic runs are not supported.

Categories are mapped to the run's indices with the exported vocabulary (``vocab.npy``); a
category not in it (never seen in training, or rarer than the run's ``min_count``) gets the OOV
index 0, as in training. The exported program (``model.pt2``) runs in batches of
``--batch-rows`` rows; one probability (sigmoid of the logit) is written per data line, in file
order, streaming (to stdout without ``--out``). A bad line stops the run naming file, line and
field (one line, exit status 2, as every user error: ``mlet.cli``); nothing is skipped (not even
under the run's ``on_bad_line=skip`` or ``on_short_line=skip``), so output line i is input row i.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np
import torch

from mlet.cli import command
from mlet.data.pipeline import BadLineError
from mlet.errors import MletError
from mlet.export import EXPORT_NAME, SPEC_NAME, data_source


class PredictError(MletError):
    """An export folder or input file that cannot be predicted on."""


class Vocabulary:
    """Raw keys -> indices, per field, vectorised: a sorted copy of each field's keys and the
    index of each sorted key; unseen keys -> 0 (OOV)."""

    def __init__(self, vocab: np.ndarray, cardinalities: list[int], offsets: list[int]) -> None:
        self.sorted_keys: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        for card, off in zip(cardinalities, offsets):
            keys = np.asarray(vocab[off:off + card - 1], dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            self.sorted_keys.append(keys[order])
            self.indices.append((order + 1).astype(np.int64))

    @classmethod
    def load(cls, export_dir: Path, spec: dict) -> "Vocabulary":
        entry = spec.get("vocabulary")
        if not entry:
            raise PredictError(f"{export_dir / SPEC_NAME}: no vocabulary (the run's data has no raw format: "
                               f"{spec.get('vocabulary_note', 'exported before vocabularies were')})")
        path = export_dir / entry["file"]
        if not path.is_file():
            raise PredictError(f"{path}: missing (written by mlet-export beside {SPEC_NAME})")
        return cls(np.load(path), entry["cardinalities"], entry["offsets"])

    def encode(self, keys: np.ndarray) -> np.ndarray:
        """``keys[n, F]`` int64 raw keys -> ``[n, F]`` int64 indices (unseen -> 0)."""
        out = np.zeros(keys.shape, dtype=np.int64)
        for f, (sk, idx) in enumerate(zip(self.sorted_keys, self.indices)):
            if not len(sk):
                continue
            col = keys[:, f]
            pos = np.minimum(np.searchsorted(sk, col), len(sk) - 1)
            hit = sk[pos] == col
            out[:, f] = np.where(hit, idx[pos], 0)
        return out


def raw_source(data_cfg: dict, raw: Path, unlabeled: bool = False):
    """The run's source reading ``raw`` (its :meth:`~mlet.data.source.PreparedSource.prediction_source`):
    the run's parser and options; errors stop at the first bad line."""
    from mlet.data.source import UnsupportedRead

    target = data_cfg.get("_target_", "?")
    try:
        source = data_source(data_cfg)
    except Exception as exc:  # noqa: BLE001 - report any import or config problem as one line
        raise PredictError(f"cannot load the run's data source {target}: {exc}") from None
    if source is None:
        raise PredictError(f"{target} has no raw file format (synthetic data): nothing to parse")
    try:
        return source.prediction_source(raw, labeled=not unlabeled)
    except UnsupportedRead as exc:
        raise PredictError(f"{exc}{' (--unlabeled)' if unlabeled else ''}") from None


def batches(source, vocab: Vocabulary, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(dense[b, D] float32, cat[b, F] int64) batches of at most ``batch_rows`` rows, in file order."""
    for chunk in source.iter_chunks():
        for lo in range(0, len(chunk.label), batch_rows):
            dense = np.ascontiguousarray(chunk.dense[lo:lo + batch_rows], dtype=np.float32)
            yield dense, vocab.encode(chunk.keys[lo:lo + batch_rows])


def predict(export_dir: str | Path, raw: str | Path, out: TextIO, batch_rows: int = 65536,
            unlabeled: bool = False) -> int:
    """Write one probability per row of ``raw`` to ``out``; returns the number of rows."""
    export_dir, raw = Path(export_dir), Path(raw)
    spec_path = export_dir / SPEC_NAME
    if not spec_path.is_file():
        raise PredictError(f"{spec_path}: missing; give the directory mlet-export wrote")
    if not raw.is_file():
        raise PredictError(f"{raw}: no such file")
    spec = json.loads(spec_path.read_text())
    vocab = Vocabulary.load(export_dir, spec)
    source = raw_source(spec["data"], raw, unlabeled)
    schema = spec["schema"]
    if list(source.cat_names) != schema["cat_names"] or list(source.dense_names) != schema["dense_names"]:
        raise PredictError(f"{raw}: the source's fields differ from the exported schema")
    try:
        program = torch.export.load(str(export_dir / EXPORT_NAME)).module()
    except Exception as exc:  # noqa: BLE001 - a missing or damaged file fails in many ways
        raise PredictError(f"{export_dir / EXPORT_NAME}: not a program written by mlet-export "
                           f"({type(exc).__name__}: {exc})") from None
    rows = 0
    with torch.no_grad():
        try:
            for dense, cat in batches(source, vocab, batch_rows):
                prob = torch.sigmoid(program(torch.from_numpy(dense), torch.from_numpy(cat))).numpy()
                np.savetxt(out, prob.astype(np.float32), fmt="%.9g")
                rows += len(prob)
        except BadLineError as exc:
            # its own hint names data.on_bad_line, which mlet-predict does not take: it skips no line
            raise PredictError(f"{exc.path}, line {exc.line}, {exc.field}: {exc.reason} (mlet-predict skips no "
                               "line, so that output line i is input row i: fix or remove the line)") from None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlet-predict", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="a directory written by mlet-export (model.pt2, model.json, vocab.npy)")
    parser.add_argument("raw", help="a raw file of the run's dataset format (see below)")
    parser.add_argument("--out", help="output file, one probability per line (default: stdout)")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per forward pass (65536)")
    parser.add_argument("--unlabeled", action="store_true",
                        help="Criteo Kaggle only: lines have no label (test.txt: 39 fields)")
    args = parser.parse_args(argv)
    if args.batch_rows < 1:
        parser.error("--batch-rows must be at least 1")
    return command("mlet-predict", _predict_command, args)


def _predict_command(args: argparse.Namespace) -> int:
    out_path = Path(args.out) if args.out else None
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}") if out_path else None
    try:
        if out_path:
            with open(tmp, "w") as f:
                rows = predict(args.export_dir, args.raw, f, args.batch_rows, args.unlabeled)
            os.replace(tmp, out_path)
        else:
            rows = predict(args.export_dir, args.raw, sys.stdout, args.batch_rows, args.unlabeled)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    if out_path:
        print(f"{rows:,} predictions written to {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
