"""The user's own table: CSV (with a header; quoting allowed) or Parquet.

The YAML names the label column (values 0/1), the dense columns (numbers; missing -> ``dense_fill``)
and the categorical columns (any type: strings are kept exactly up to 8 bytes and hashed to 64 bits
beyond; integers by value). The split is random (``fractions``, ``seed``) unless ``split_column``
names a column holding ``train`` / ``val`` (or ``valid`` / ``validation``) / ``test``.

CSV is read with pyarrow's streaming reader (every column as bytes, then converted here, so that
a bad value is reported with its line and column rather than failing the whole block). Line
numbers assume one record per line (no quoted line breaks); pyarrow does not report the number
of a line with the wrong number of fields, so it is found again by its text.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from mlet.data import splits as S
from mlet.data.parsing import BadLineError, Chunk, ParseContext
from mlet.data.segments import LimitedReader, Segment, text_segments
from mlet.data.source import DataOptionError, PreparedSource
from mlet.data.textparse import PAD, decode_token, open_binary, read_header
from mlet.errors import InputError

SPLIT_VALUES = {"train": S.TRAIN, "val": S.VAL, "valid": S.VAL, "validation": S.VAL, "test": S.TEST}
NULL_INT_KEY = np.iinfo(np.int64).min  # a missing value of an integer categorical column
TRANSFORMS = ("none", "log1p")


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(padded bytes, starts, ends) of a binary/string array (nulls -> empty)."""
    if pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type):
        off_type = np.int64
    else:
        off_type = np.int32
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=off_type)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = bufs[2]
    size = 0 if data is None else data.size
    buf = np.zeros(size + PAD, dtype=np.uint8)
    if size:
        buf[:size] = np.frombuffer(data, dtype=np.uint8)
    starts, ends = offs[:-1].copy(), offs[1:].copy()
    if arr.null_count:
        nulls = np.asarray(arr.is_null())
        ends[nulls] = starts[nulls]
    return buf, starts, ends


def _utf8_bad(arr: pa.Array) -> np.ndarray:
    """Rows of a binary array whose bytes are not UTF-8."""
    buf, starts, ends = _binary_parts(arr)
    bad = np.zeros(len(arr), dtype=bool)
    if not (buf >= 0x80).any():
        return bad
    for i in range(len(arr)):
        raw = bytes(buf[starts[i]:ends[i]])
        if any(b >= 0x80 for b in raw):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    return bad


def _numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column -> (float64 values, missing mask, not-a-number mask)."""
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        missing = np.asarray(arr.is_null())
        values = np.asarray(arr.cast(pa.float64()).fill_null(0.0))
        nan = np.isnan(values)
        return np.where(nan, 0.0, values), missing | nan, np.zeros(len(arr), bool)
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
    if not (pa.types.is_binary(arr.type) or pa.types.is_string(arr.type) or pa.types.is_large_binary(arr.type)
            or pa.types.is_large_string(arr.type)):
        raise TypeError(f"a numeric column of type {t} is not supported")
    text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
    text = text.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else v))
    stripped = text.str.strip()
    missing = (stripped == "") | stripped.str.lower().isin(["nan", "na", "null"])
    values = pd.to_numeric(stripped.where(~missing, "0"), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & ~missing.to_numpy()
    return np.where(np.isnan(values), 0.0, values), missing.to_numpy(), bad


def _keys(arr: pa.Array) -> np.ndarray:
    """Categorical keys of a column of any type (equal values -> equal keys)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        keys = _keys(arr.dictionary)
        idx = np.asarray(arr.indices.fill_null(0)).astype(np.int64)
        out = keys[idx] if len(keys) else np.zeros(len(arr), np.int64)
        if arr.null_count:
            out[np.asarray(arr.is_null())] = 0
        return out
    if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        buf, starts, ends = _binary_parts(arr)
        return decode_token(buf, starts, ends)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        out = np.asarray(arr.cast(pa.int64()).fill_null(0)).astype(np.int64)
    elif pa.types.is_floating(t):
        out = np.asarray(arr.cast(pa.float64()).fill_null(0.0)).view(np.int64).copy()
    else:
        return _keys(arr.cast(pa.string()))
    if arr.null_count:
        out[np.asarray(arr.is_null())] = NULL_INT_KEY
    return out


class Tabular(PreparedSource):
    """A CSV or Parquet table (or several with the same columns) as CTR data.

    Args:
        path: a file, or a list of files.
        label: the label column (0/1).
        categorical: categorical columns.
        dense: numeric columns.
        name: cache directory name prefix.
        format: ``csv``, ``parquet`` or ``auto`` (``.parquet`` / ``.pq`` -> Parquet).
        delimiter: CSV delimiter.
        dense_transform: ``none`` or ``log1p`` (negatives -> 0, then ``log(1 + x)``).
        dense_fill: value of a missing dense number (before the transform).
        min_count: categories seen fewer times in training -> OOV.
        split_column: a column with the split of each row (else a random split).
        fractions, seed: the random split.
        cache_dir, on_bad_line, on_short_line, workers, block_bytes, progress: see
            :class:`mlet.data.source.PreparedSource`; a short CSV row (fewer fields than the
            header, the last one not empty) is a bad line (``error``) or skipped and counted
            (``skip``): CSV rows are read by pyarrow, which cannot pad them.

    Prediction (:meth:`prediction_source`) reads a file with the run's columns, label (and split
    column, if any) included.
    """

    SHORT_LINE_POLICIES = ("error", "skip")

    def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], label: str,
                 categorical: Sequence[str], dense: Sequence[str] = (), cache_dir: str | os.PathLike = "data_cache",
                 name: str = "tabular", format: str = "auto", delimiter: str = ",", dense_transform: str = "none",
                 dense_fill: float = 0.0, min_count: int = 1, split_column: str | None = None,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2018, **kwargs) -> None:
        super().__init__(cache_dir, **kwargs)
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            raise DataOptionError("data.path names no file")
        self.paths = [Path(p) for p in paths]
        if format not in ("auto", "csv", "parquet"):
            raise DataOptionError(f"data.format must be auto, csv or parquet, got {format!r}")
        if dense_transform not in TRANSFORMS:
            raise DataOptionError(f"data.dense_transform must be one of {TRANSFORMS}, got {dense_transform!r}")
        if len(delimiter) != 1:
            raise DataOptionError("data.delimiter must be one character")
        if not categorical:
            raise DataOptionError("data.categorical must name at least one column")
        self.format = format
        self.label = str(label)
        self.dense_names = [str(c) for c in dense]
        self.cat_names = [str(c) for c in categorical]
        self.delimiter = delimiter
        self.dense_transform = dense_transform
        self.dense_fill = float(dense_fill)
        self.min_count = int(min_count)
        self.min_counts = [self.min_count] * len(self.cat_names)
        self.split_column = split_column
        self.fractions = [float(f) for f in fractions]
        self.seed = int(seed)
        self.name = str(name)
        used = [self.label, *self.dense_names, *self.cat_names] + ([split_column] if split_column else [])
        if len(set(used)) != len(used):
            raise DataOptionError(f"a column is named twice among label/dense/categorical/split_column: {used}")
        self.columns = used

    def _format(self, path: Path) -> str:
        if self.format != "auto":
            return self.format
        return "parquet" if path.suffix in (".parquet", ".pq") else "csv"

    def raw_files(self) -> list[Path]:
        return self.paths

    def options(self) -> dict:
        return {"label": self.label, "dense": self.dense_names, "categorical": self.cat_names,
                "format": [self._format(p) for p in self.paths], "delimiter": self.delimiter,
                "dense_transform": self.dense_transform, "dense_fill": self.dense_fill, "min_count": self.min_count,
                "split_column": self.split_column, "fractions": self.fractions, "seed": self.seed}

    def prediction_source(self, raw: str | os.PathLike, labeled: bool = True) -> "Tabular":
        reader = self.for_reading(labeled)
        reader.paths = [Path(raw)]
        return reader

    def segments(self) -> list[Segment]:
        """Parquet and compressed CSV files: one segment each; an uncompressed CSV file: pieces of
        at least ``segment_bytes`` cut at line starts after the header, one per worker (rows hold
        no line breaks, as pyarrow's reader assumes too)."""
        segs: list[Segment] = []
        for i, p in enumerate(self.paths):
            if self._format(p) == "csv" and _codec(p) is None:
                with open(p, "rb") as f:
                    head = read_header(f)[1]
                for s in text_segments([p], [head], pieces=self._pieces(), min_bytes=self.segment_bytes):
                    segs.append(Segment(len(segs), i, s.path, s.start, s.end, s.first_line, s.size))
            else:
                first = 2 if self._format(p) == "csv" else 1  # a CSV's first row is on line 2
                segs.append(Segment(len(segs), i, str(p), 0, None, first, p.stat().st_size))
        return segs

    # -- reading -------------------------------------------------------------------------------
    def _csv_batches(self, segment: Segment, names: list[str], ctx: ParseContext
                     ) -> Iterator[tuple[pa.RecordBatch, int, int]]:
        """(batch, line of its first row counted from the segment's first line, bytes of the
        segment read so far) of a CSV segment; ``ctx.lines`` gets the segment's lines."""
        import pyarrow.csv as pacsv

        path = Path(segment.path)
        invalid: list[tuple[int, int, str, bool]] = []

        def is_short(row) -> bool:  # fewer fields, the last one not empty: stripped trailing fields
            return row.actual_columns < row.expected_columns and not row.text.endswith(self.delimiter)

        def on_invalid(row) -> str:
            if ctx.on_short_line == "skip" and is_short(row):
                ctx.short_skipped += 1
                ctx.short_line(path, _find_line(path, row.text))
                return "skip"
            invalid.append((row.expected_columns, row.actual_columns, row.text, is_short(row)))
            return "error" if ctx.on_bad_line == "error" else "skip"

        def reject_invalid(entry) -> None:
            expected, actual, text, short = entry
            ctx.reject(_find_line(path, text), "whole line", f"{actual} fields where {expected} are expected",
                       path=str(path), short=short)

        codec = _codec(path)
        whole = segment.first_line is not None and segment.end in (None, path.stat().st_size)  # one piece
        rows = 0  # rows of the batches so far
        reported = 0
        with ExitStack() as stack:
            if codec is not None:  # one segment: the whole file, header included
                raw = stack.enter_context(pa.OSFile(str(path)))
                stream, skip = pa.CompressedInputStream(raw, codec.name), 1
            else:
                f = stack.enter_context(open(path, "rb"))
                f.seek(segment.start)
                stream = raw = _CountingReader(LimitedReader(f, segment.size))
                skip = 0
            try:
                reader = pacsv.open_csv(  # reads (and may fail on) the first block already
                    stream,
                    # a file in pieces has a process per piece: no thread pool in each as well
                    read_options=pacsv.ReadOptions(block_size=self.block_bytes, column_names=names, skip_rows=skip,
                                                   use_threads=whole),
                    parse_options=pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=on_invalid),
                    convert_options=pacsv.ConvertOptions(include_columns=self.columns,
                                                          column_types={c: pa.binary() for c in self.columns}),
                )
                for i, batch in enumerate(reader):
                    for entry in invalid[reported:]:
                        reject_invalid(entry)
                    reported = len(invalid)
                    # pyarrow reads ahead (32 blocks); a batch is one block of text, so the bytes
                    # parsed are about (batches) x block_bytes of an uncompressed file
                    read = raw.tell() if codec is not None else min(raw.tell(), (i + 1) * self.block_bytes)
                    yield batch, rows + 1 + reported, read
                    rows += batch.num_rows
            except pa.ArrowInvalid as exc:
                for entry in invalid[reported:]:
                    reject_invalid(entry)  # raises in error mode
                line, known = rows + 1 + reported, segment.first_line is not None
                raise BadLineError(str(path), line + (segment.first_line - 1 if known else 0), "unknown field",
                                   str(exc), segment.index, local=not known, hint="") from None
            ctx.lines += raw.lines if codec is None else rows + len(invalid) + ctx.short_skipped
        for entry in invalid[reported:]:
            reject_invalid(entry)

    def _parquet_batches(self, path: Path) -> Iterator[tuple[pa.RecordBatch, int, int]]:
        """(batch, number of its first row, bytes of the file read so far) of a Parquet file."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = [c for c in self.columns if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: no column(s) {missing}; it has {pf.schema_arrow.names}")
        row = 0
        size = path.stat().st_size
        for batch in pf.iter_batches(batch_size=max(1024, self.block_bytes // 64), columns=self.columns):
            row += batch.num_rows
            yield batch, row - batch.num_rows + 1, size * row // max(pf.metadata.num_rows, 1)

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        path = Path(segment.path)
        fmt = self._format(path)
        if fmt == "csv":
            with open_binary(path) as f:
                header = read_header(f)[0].decode("utf-8", "replace").split(self.delimiter)
            names = [h.strip('"') for h in header]
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise InputError(f"{path}, line 1: no column(s) {missing} in the header {names}")
            batches = self._csv_batches(segment, names, ctx)
        else:
            batches = self._parquet_batches(path)
        unit_rows = fmt != "csv"
        done = 0  # bytes of the file read
        for batch, first, read in batches:
            n = batch.num_rows
            if unit_rows:
                ctx.lines += n
            cols = {name: batch.column(name) for name in self.columns}
            problems: list[tuple[np.ndarray, str, str, pa.Array | None]] = []  # (mask, column, reason, values)
            for name in self.columns:
                a = cols[name]
                if pa.types.is_binary(a.type):
                    problems.append((_utf8_bad(a), name, "undecodable byte (not UTF-8)", None))
            y, ymiss, ybad = _numbers(cols[self.label])
            problems.append((ybad | ymiss | ~np.isin(y, (0.0, 1.0)), self.label, "the label must be 0 or 1, got {value}",
                             cols[self.label]))
            dense = np.zeros((n, len(self.dense_names)), dtype=np.float64)
            for j, name in enumerate(self.dense_names):
                v, miss, bad = _numbers(cols[name])
                problems.append((bad, name, "not a number: {value}", cols[name]))
                dense[:, j] = np.where(miss, self.dense_fill, v)
            split = None
            if self.split_column:
                raw = cols[self.split_column]
                text = [(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip().lower()
                        for v in raw.to_pylist()]
                split = np.array([SPLIT_VALUES.get(t, -1) for t in text], dtype=np.int8)
                problems.append((split < 0, self.split_column, "the split must be train, val or test, got {value}", raw))
            keys = np.stack([_keys(cols[c]) for c in self.cat_names], axis=1)
            bad_any = np.zeros(n, dtype=bool)
            order = {c: i for i, c in enumerate(self.columns)}
            first_problem = np.full(n, len(self.columns), dtype=np.int64)
            for mask, name, _, _ in problems:
                first_problem = np.where(mask, np.minimum(first_problem, order[name]), first_problem)
                bad_any |= mask
            for i in np.flatnonzero(bad_any):
                col_index = int(first_problem[i])
                name = self.columns[col_index]
                reason = next(r for m, c, r, _ in problems if c == name and m[i])
                values = next(v for m, c, r, v in problems if c == name and m[i])
                value = "" if values is None else repr(_text(values[i].as_py()))
                where = f"column {name}" + (f" (row {first + i} of the Parquet file)" if unit_rows else "")
                # a CSV line counts from the segment's first line, a Parquet row is the file's
                ctx.reject(first + i, where, reason.format(value=value), path=str(path) if unit_rows else None)
            keep = ~bad_any
            if self.dense_transform == "log1p":
                dense = np.log1p(np.maximum(dense, 0.0))
            ctx.progress(read - done, int(keep.sum()))
            done = read
            yield Chunk(y[keep].astype(np.int8), dense[keep].astype(np.float32), keys[keep],
                        None if split is None else split[keep])
        ctx.progress(segment.size - done, 0)

    def assign(self, labels, rows_per_file, presplit) -> np.ndarray:
        if self.split_column:
            return presplit
        return S.random_fractions(len(labels), self.fractions, self.seed)


def _codec(path: Path):
    """The compression of a file by its extension (``.gz``, ``.bz2``, ...), or ``None``."""
    try:
        return pa.Codec.detect(str(path))
    except (TypeError, ValueError):
        return None


class _CountingReader:
    """A binary stream that counts the bytes and lines read through it (for progress and the
    line numbers of later segments)."""

    def __init__(self, stream) -> None:
        self.stream, self.pos, self.lines, self.last = stream, 0, 0, b"\n"
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.pos += len(data)
            self.lines += data.count(b"\n")
            self.last = data[-1:]
        elif self.last != b"\n":  # a last line without its newline
            self.lines += 1
            self.last = b"\n"
        return data

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _text(v) -> str:
    if isinstance(v, bytes):
        return v[:40].decode("utf-8", "backslashreplace")
    return str(v)[:40]


def _find_line(path: Path, text: str) -> int:
    """The number of the first line of ``path`` whose text is ``text`` (0 if not found)."""
    target = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.rstrip(b"\r\n") == target:
                return number
    return 0
