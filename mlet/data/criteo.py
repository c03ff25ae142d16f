"""Criteo Kaggle (``train.txt``) and Criteo Terabyte (``day_0`` .. ``day_23``).

Both files have 40 tab-separated fields per line and no header: the label (0/1), 13 integer
counts ``I1..I13`` (may be negative; empty when missing) and 26 categories ``C1..C26`` of exactly
8 hex digits (empty when missing). Some re-hosted copies strip the trailing empty fields of a
line (20 or 39 fields instead of 40): ``on_short_line`` says whether such lines stop the run
(``error``, the default), are padded with missing values (``pad``) or skipped (``skip``); padded
and skipped lines are counted. A category is kept as its exact 32-bit value (no hashing).

Protocols (``protocol=``):

* ``dlrm`` (facebookresearch/dlrm): dense ``I`` features, missing -> 0, negative -> 0, then
  ``log(x + 1)`` in float32; the 7-part contiguous split of :func:`mlet.data.splits.dlrm_parts`.
* ``bars_x4_001`` / ``bars_x4_002`` (BARS Criteo_x4): no dense features; every ``I`` becomes a
  categorical field, ``floor(ln(x)^2)`` for ``x > 2`` and ``x`` itself otherwise (missing -> 0);
  categories seen fewer than 10 (``_001``) or 2 (``_002``) times in training -> OOV; the
  stratified 8:1:1 split of scikit-learn 0.19.1 with seed 2018 (:func:`mlet.data.splits.bars_x4`).

Vocabularies (``vocabulary=``): ``dlrm`` uses full vocabularies, as facebookresearch/dlrm does:
every category of the file has its own row, also one seen only in validation or test (no training
row updates it directly; under MLET it still moves, with ``B``). The BARS protocols fit their
vocabularies on the training rows: a category never seen there (or rarer than the min count) maps
to the OOV index 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from mlet.data import splits as S
from mlet.data.parsing import Chunk, ParseContext
from mlet.data.segments import Segment, text_segments
from mlet.data.source import DataOptionError, PreparedSource
from mlet.data.textparse import Block, _mix64, decode_hex, decode_int, decode_label

INT_NAMES = [f"I{i}" for i in range(1, 14)]
CAT_NAMES = [f"C{i}" for i in range(1, 27)]
FIELD_NAMES = ["label", *INT_NAMES, *CAT_NAMES]
MISSING = 1 << 32  # key of a missing category (outside the 32-bit range of 8 hex digits)


def parse_criteo_block(block: Block, ctx: ParseContext, labeled: bool = True):
    """Tokenise and decode one block; bad rows are raised or dropped via ``ctx``.

    ``labeled=False``: lines of the unlabeled form (Criteo Kaggle's ``test.txt``: 39 fields, no
    label column); every label is returned as 0.

    Returns ``(label[n] int8, ints[n, 13] int64 (missing -> 0), cats[n, 26] int64, cat_missing[n, 26],
    line_start[n])`` for the kept rows.
    """
    o = 1 if labeled else 0  # column of I1
    tokens = ctx.tokenize(block, 39 + o, b"\t")
    n = tokens.n
    buf, errors = block.buf, tokens.errors
    if labeled:
        label, bad = decode_label(buf, tokens.starts[:, 0], tokens.ends[:, 0])
        errors.add(bad, 0, "the label must be 0 or 1, got {value}")
    else:
        label = np.zeros(n, dtype=np.int8)
    ints, _, ibad = decode_int(buf, tokens.starts[:, o:o + 13].ravel(), tokens.ends[:, o:o + 13].ravel())
    ibad = ibad.reshape(n, 13)
    if ibad.any():
        errors.add(ibad.any(axis=1), o + ibad.argmax(axis=1), "not an integer: {value}")
    # field-major (C1 of every row, then C2, ...): each field's keys end up contiguous
    cats, cmiss, cbad = decode_hex(buf, tokens.starts[:, o + 13:].T.ravel(), tokens.ends[:, o + 13:].T.ravel())
    cbad = cbad.reshape(26, n).T
    if cbad.any():
        errors.add(cbad.any(axis=1), o + 13 + cbad.argmax(axis=1), "not a category of 8 hex digits: {value}")
    ints, cats, cmiss = ints.reshape(n, 13), cats.reshape(26, n).T, cmiss.reshape(26, n).T
    line_start = tokens.line_start
    if errors.any():
        keep = ctx.check(errors, block, tokens, FIELD_NAMES if labeled else FIELD_NAMES[1:])
        label, ints, line_start = label[keep], ints[keep], line_start[keep]
        cats, cmiss = cats.T[:, keep].T, cmiss.T[:, keep].T  # stay field-major
    return label, ints, cats, cmiss, line_start


def dlrm_dense(ints: np.ndarray) -> np.ndarray:
    """facebookresearch/dlrm: negatives (and missing, already 0) -> 0, then ``log(x + 1)`` in float32."""
    return np.log(np.maximum(ints, 0).astype(np.float32) + np.float32(1.0))


def bars_bucket(ints: np.ndarray) -> np.ndarray:
    """BARS Criteo_x4 integer buckets: ``floor(ln(x)^2)`` for ``x > 2``, else ``x`` (missing -> 0)."""
    x = ints.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bucket = np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2)
    return np.where(x > 2, bucket, x).astype(np.int64)


class CriteoKaggle(PreparedSource):
    """Criteo Kaggle Display Advertising Challenge ``train.txt`` (45,840,617 lines).

    Args:
        path: the raw ``train.txt`` (or ``train.txt.gz``).
        protocol: ``dlrm``, ``bars_x4_001`` or ``bars_x4_002`` (see the module docstring).
        min_count: categories seen fewer times in training -> OOV (``None``: the protocol's own,
            1 for ``dlrm``, 10 / 2 for ``bars_x4_001`` / ``bars_x4_002``).
        seed: seed of the BARS stratified split (2018).
        vocabulary: ``all`` (every category gets a row) or ``train`` (categories of the training
            rows; others -> OOV); ``None``: the protocol's (``dlrm`` all, BARS train; train
            whenever ``min_count`` > 1).
        labeled: ``False`` reads the unlabeled form (``test.txt``: 39 fields, no label) for
            prediction (:meth:`iter_chunks`, labels 0); such a source cannot be prepared.
        cache_dir, on_bad_line, on_short_line, workers, block_bytes, progress, segment_bytes: see
            :class:`mlet.data.source.PreparedSource`.

    Prediction (:meth:`prediction_source`) reads ``train.txt`` lines (the label is ignored) or,
    unlabeled, the ``test.txt`` form.
    """

    PROTOCOLS = {"dlrm": 1, "bars_x4_001": 10, "bars_x4_002": 2}
    FULL_VOCABULARY_PROTOCOLS = ("dlrm",)
    UNLABELED_FORM = True

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike = "data_cache", protocol: str = "dlrm",
                 min_count: int | None = None, seed: int = 2018, labeled: bool = True,
                 vocabulary: str | None = None, **kwargs) -> None:
        super().__init__(cache_dir, **kwargs)
        self.labeled = bool(labeled)
        self._use_protocol(protocol, min_count, vocabulary)
        self.path = Path(path)
        self.seed = int(seed)
        self.name = f"criteo_kaggle-{protocol}"
        if protocol == "dlrm":
            self.dense_names, self.cat_names = list(INT_NAMES), list(CAT_NAMES)
        else:
            self.dense_names, self.cat_names = [], [*INT_NAMES, *CAT_NAMES]
        self.min_counts = [self.min_count] * len(self.cat_names)

    def raw_files(self) -> list[Path]:
        return [self.path]

    def options(self) -> dict:
        opts = {"protocol": self.protocol, "min_count": self.min_count}
        if self.protocol != "dlrm":
            opts["seed"] = self.seed
        return opts

    def prepare(self) -> Path:
        if not self.labeled:
            raise ValueError("CriteoKaggle(labeled=False) reads unlabeled files for prediction; it cannot be prepared")
        return super().prepare()

    def prediction_source(self, raw: str | os.PathLike, labeled: bool = True) -> "CriteoKaggle":
        reader = self.for_reading(labeled)
        reader.path, reader.labeled = Path(raw), labeled
        return reader

    def segments(self) -> list[Segment]:
        return text_segments([self.path], pieces=self._pieces(), min_bytes=self.segment_bytes)

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        for block in ctx.blocks(self.block_bytes):
            label, ints, cats, cmiss, _ = parse_criteo_block(block, ctx, self.labeled)
            cats = np.where(cmiss, MISSING, cats)
            if self.protocol == "dlrm":
                chunk = Chunk(label, dlrm_dense(ints), cats)
            else:
                keys = np.concatenate([bars_bucket(ints).T, cats.T], axis=0).T  # field-major storage
                chunk = Chunk(label, np.zeros((len(label), 0), np.float32), keys)
            ctx.progress(block.size, len(label))
            yield chunk

    def assign(self, labels, rows_per_file, presplit) -> np.ndarray:
        if self.protocol == "dlrm":
            return S.dlrm_parts(len(labels), 7)
        return S.bars_x4(labels, self.seed)


class CriteoTerabyte(PreparedSource):
    """Criteo Terabyte click logs: ``day_0`` .. ``day_23`` (each optionally ``.gz``).

    Days ``0 .. days-2`` train; the last day is halved into test (first half) and validation.
    Dense features as ``dlrm``; categories exact unless ``max_ind_range`` caps them.

    Args:
        path: the folder holding the day files, or their common prefix (``/data/day`` for
            ``/data/day_0`` ...).
        days: number of day files (24).
        negative_keep_rate: fraction of negative training rows kept (MLPerf: 0.125; ``None`` or
            1 keeps all). A row is kept by a hash of (seed, day, byte offset of its line):
            deterministic, independent of how the work is split. Test/validation are never sampled.
        seed: seed of the negative subsampling.
        max_ind_range: if set, a category's value is taken modulo this (MLPerf's ``max_ind_range``,
            e.g. 40,000,000; a missing category counts as 0 then, as in facebookresearch/dlrm).
        min_count: categories seen fewer times in training -> OOV (1).
        cache_dir, on_bad_line, on_short_line, workers, block_bytes, progress, segment_bytes: see
            :class:`mlet.data.source.PreparedSource`.

    Not readable for prediction yet (:meth:`prediction_source` refuses).
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike = "data_cache", days: int = 24,
                 negative_keep_rate: float | None = 0.125, seed: int = 0, max_ind_range: int | None = None,
                 min_count: int = 1, **kwargs) -> None:
        super().__init__(cache_dir, **kwargs)
        if days < 2:
            raise DataOptionError("data.days must be at least 2 (training days plus the test/validation day)")
        if negative_keep_rate is not None and not 0 < negative_keep_rate <= 1:
            raise DataOptionError(f"data.negative_keep_rate must be in (0, 1], got {negative_keep_rate}")
        self.path = Path(path)
        self.days = int(days)
        self.negative_keep_rate = None if negative_keep_rate in (None, 1, 1.0) else float(negative_keep_rate)
        self.seed = int(seed)
        self.max_ind_range = int(max_ind_range) if max_ind_range else None
        self.min_count = int(min_count)
        self.name = "criteo_terabyte"
        self.dense_names, self.cat_names = list(INT_NAMES), list(CAT_NAMES)
        self.min_counts = [self.min_count] * 26

    def raw_files(self) -> list[Path]:
        files = []
        for i in range(self.days):
            base = self.path / f"day_{i}" if self.path.is_dir() else Path(f"{self.path}_{i}")
            gz = Path(f"{base}.gz")
            files.append(gz if not base.exists() and gz.exists() else base)
        return files

    def options(self) -> dict:
        return {"days": self.days, "negative_keep_rate": self.negative_keep_rate, "seed": self.seed,
                "max_ind_range": self.max_ind_range, "min_count": self.min_count}

    def segments(self) -> list[Segment]:
        files = self.raw_files()
        pieces = max(1, -(-self.workers // len(files)))
        return text_segments(files, pieces=pieces, min_bytes=self.segment_bytes)

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        train_day = segment.file_index < self.days - 1
        if self.negative_keep_rate is not None and train_day:
            mixed = (self.seed * 0x9E3779B97F4A7C15 + segment.file_index + 1) % (1 << 64)
            salt = _mix64(np.array([mixed], dtype=np.uint64))
        for block in ctx.blocks(self.block_bytes):
            label, ints, cats, cmiss, line_start = parse_criteo_block(block, ctx)
            n_read = len(label)
            if self.negative_keep_rate is not None and train_day:
                where = (line_start + block.offset).astype(np.uint64)
                u = (_mix64(where ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
                keep = (label == 1) | (u < self.negative_keep_rate)
                ctx.dropped += int(n_read - keep.sum())
                label, ints = label[keep], ints[keep]
                cats, cmiss = cats.T[:, keep].T, cmiss.T[:, keep].T
            if self.max_ind_range:
                cats = np.where(cmiss, 0, cats) % self.max_ind_range
            else:
                cats[cmiss] = MISSING
            ctx.progress(block.size, n_read)
            yield Chunk(label, dlrm_dense(ints), cats)

    def assign(self, labels, rows_per_file, presplit) -> np.ndarray:
        return S.last_file_halves(rows_per_file)
