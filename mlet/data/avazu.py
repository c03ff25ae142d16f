"""Avazu CTR ``train`` (CSV with a header, 24 columns, 40,428,967 rows over 10 days).

``id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,
device_id,device_ip,device_model,device_type,device_conn_type,C14,...,C21``. ``id`` is an
unsigned 64-bit decimal that overflows int64: it is never parsed (BARS drops it). ``hour`` is
``YYMMDDHH``.

Protocols (``protocol=``):

* ``bars_x4_001`` / ``bars_x4_002`` (BARS Avazu_x4): categories seen fewer than 2 (``_001``) or 1
  (``_002``) times in training -> OOV; ``id`` dropped, ``hour`` replaced by hour-of-day, weekday
  (``%w``: Sunday 0) and weekend (Saturday or Sunday); the stratified 8:1:1 split of scikit-learn
  0.19.1 with seed 2018. Fields, in BARS's order: ``hour`` (of day), the 21 columns ``C1 .. C21``,
  ``weekday``, ``weekend``; no dense features.
* ``mlet2020`` (the MLET predecessor paper, the authors' DLRM fork): the 21 categorical columns
  ``C1 .. C21`` as fields, full vocabularies (every category of the file has its own row, also one
  seen only in validation or test: ``vocabulary = "all"``), a seeded random 80/10/10 split
  (:func:`mlet.data.splits.random_fractions`); no dense features. Their pipeline also fed ``hour``,
  which a parsing slip made one constant value for every row: a constant carries no information,
  so it is left out here on purpose (and ``hour`` is not parsed, so it cannot fail a line).

Tokens are kept exactly (each is at most 8 characters in the real file; longer ones are hashed to
64 bits).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from mlet.data import splits as S
from mlet.data.parsing import Chunk, ParseContext
from mlet.data.segments import Segment, text_segments
from mlet.data.source import PreparedSource
from mlet.data.textparse import decode_int, decode_label, decode_token, open_binary, read_header
from mlet.errors import InputError

COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
           "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
           "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
TOKEN_COLUMNS = COLUMNS[3:]
FIELDS = ["hour", *TOKEN_COLUMNS, "weekday", "weekend"]


def hour_features(stamp: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``YYMMDDHH`` (20YY) -> (hour of day, weekday with Sunday = 0, weekend 0/1, bad mask)."""
    yy, mm, dd, hh = stamp // 1000000, stamp // 10000 % 100, stamp // 100 % 100, stamp % 100
    months = (2000 + yy - 1970) * 12 + np.clip(mm, 1, 12) - 1
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + dd - 1
    same_month = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) == months
    bad = (length != 8) | (mm < 1) | (mm > 12) | (dd < 1) | ~same_month | (hh > 23)
    weekday = (days + 4) % 7  # 1970-01-01 was a Thursday (%w = 4)
    weekend = (weekday == 0) | (weekday == 6)
    return hh, weekday, weekend.astype(np.int64), bad


class Avazu(PreparedSource):
    """Avazu ``train`` CSV.

    Args:
        path: the raw ``train`` / ``train.csv`` (or ``.gz``).
        protocol: ``bars_x4_001`` (min count 2), ``bars_x4_002`` (min count 1) or ``mlet2020``
            (21 fields, full vocabularies, random 80/10/10).
        min_count: override of the protocol's min count.
        seed: seed of the split (stratified for BARS, random for ``mlet2020``; 2018).
        vocabulary: ``all`` (every category gets a row) or ``train`` (categories of the training
            rows; others -> OOV); ``None``: the protocol's (``mlet2020`` all, BARS train; train
            whenever ``min_count`` > 1).
        cache_dir, on_bad_line, on_short_line, workers, block_bytes, progress, segment_bytes: see
            :class:`mlet.data.source.PreparedSource` (a short line: fewer than the header's columns,
            the last one not empty).

    Prediction (:meth:`prediction_source`) reads the CSV with its header, ``click`` column
    included (its value is ignored).
    """

    PROTOCOLS = {"bars_x4_001": 2, "bars_x4_002": 1, "mlet2020": 1}
    FULL_VOCABULARY_PROTOCOLS = ("mlet2020",)
    SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # mlet2020

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike = "data_cache",
                 protocol: str = "bars_x4_001", min_count: int | None = None, seed: int = 2018,
                 vocabulary: str | None = None, **kwargs) -> None:
        super().__init__(cache_dir, **kwargs)
        self._use_protocol(protocol, min_count, vocabulary)
        self.path = Path(path)
        self.seed = int(seed)
        self.name = f"avazu-{protocol}"
        self.with_hour = protocol != "mlet2020"
        self.dense_names, self.cat_names = [], list(FIELDS if self.with_hour else TOKEN_COLUMNS)
        self.min_counts = [self.min_count] * len(self.cat_names)
        self._columns: list[str] | None = None

    def raw_files(self) -> list[Path]:
        return [self.path]

    def options(self) -> dict:
        return {"protocol": self.protocol, "min_count": self.min_count, "seed": self.seed}

    def prediction_source(self, raw: str | os.PathLike, labeled: bool = True) -> "Avazu":
        reader = self.for_reading(labeled)
        reader.path, reader._columns = Path(raw), None
        return reader

    def _header(self) -> tuple[list[str], int]:
        with open_binary(self.path) as f:
            raw, nbytes = read_header(f)
        try:
            names = raw.decode("utf-8").split(",")
        except UnicodeDecodeError:
            names = []
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise InputError(
                f"{self.path}, line 1: the header must name the Avazu columns {','.join(COLUMNS)}; "
                f"missing {missing} in {raw[:200]!r}"
            )
        return names, nbytes

    def segments(self) -> list[Segment]:
        self._columns, header_bytes = self._header()
        return text_segments([self.path], [header_bytes], pieces=self._pieces(), min_bytes=self.segment_bytes)

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        names = self._columns or self._header()[0]
        col = {c: i for i, c in enumerate(names)}
        width = len(names)
        tok_cols = [col[c] for c in TOKEN_COLUMNS]
        for block in ctx.blocks(self.block_bytes):
            tokens = ctx.tokenize(block, width, b",")
            n = tokens.n
            buf, errors = block.buf, tokens.errors
            starts, ends = tokens.starts, tokens.ends
            c = col["click"]
            label, bad = decode_label(buf, starts[:, c], ends[:, c])
            errors.add(bad, c, "click must be 0 or 1, got {value}")
            tokens_ = decode_token(buf, starts[:, tok_cols].ravel(), ends[:, tok_cols].ravel()).reshape(n, -1)
            if self.with_hour:
                h = col["hour"]
                stamp, _, hbad = decode_int(buf, starts[:, h], ends[:, h])
                hour, weekday, weekend, tbad = hour_features(stamp, ends[:, h] - starts[:, h])
                errors.add(hbad | tbad, h, "hour must be a YYMMDDHH timestamp, got {value}")
                keys = np.empty((n, len(FIELDS)), dtype=np.int64)
                keys[:, 0] = hour
                keys[:, 1:-2] = tokens_
                keys[:, -2] = weekday
                keys[:, -1] = weekend
            else:
                keys = tokens_
            if errors.any():
                keep = ctx.check(errors, block, tokens, names)
                label, keys = label[keep], keys[keep]
            ctx.progress(block.size, len(label))
            yield Chunk(label, np.zeros((len(label), 0), np.float32), keys)

    def assign(self, labels, rows_per_file, presplit) -> np.ndarray:
        if self.protocol == "mlet2020":
            return S.random_fractions(len(labels), self.SPLIT_FRACTIONS, self.seed)
        return S.bars_x4(labels, self.seed)
