"""The five phases of a build, raw files -> cache directory (:func:`build` runs them in order):

1. :func:`parse_phase` (in parallel over file segments, :func:`parse_segment`): each segment's
   rows are parsed in blocks; every categorical key gets a segment-local provisional id from a
   hash table (:class:`KeyTable`); ids, dense values and labels are appended to the segment's
   intermediate files. Bad and short lines are handled by the source's policies
   (:mod:`mlet.data.parsing`).
2. :func:`split_phase`: the source assigns each row to train / val / test from the row count, the
   labels and the rows per file (the protocols of :mod:`mlet.data.splits`).
3. :func:`count_phase` (parallel, :func:`count_segment`): per field, occurrences of each
   provisional id among *training* rows.
4. :func:`vocabulary_phase`: segment tables are merged by key; per field, categories seen at least
   ``min_count`` times in training get indices ``1..n-1`` (most frequent first, ties by key), all
   others share the OOV index ``0``. Training counts per index are kept (``counts.npy``). A source
   with ``vocabulary = "all"`` (facebookresearch/dlrm's "full vocabularies") also gives each
   category seen only in validation or test its own index, after the trained ones (training count
   0): no training row touches such a row, but under MLET it still moves, with ``B``.
5. :func:`encode_phase` (parallel, :func:`encode_segment`): provisional ids are mapped to final
   indices and every row is written to its split's ``{split}.{cat,dense,label}.npy`` at its
   final offset.

then :func:`finish` writes ``counts.npy``, ``vocab.npy`` and ``meta.json`` (last: it marks a
complete build).

Only categorical keys seen so far live in memory (hash tables), never the rows: a file larger
than RAM is prepared in a streaming fashion (the text is read once; the compact intermediate
files are read twice more).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from mlet.data import splits as S
from mlet.data.parsing import MAX_EXAMPLES, BadLineError
from mlet.data.segments import Segment, first_lines, lines_before
from mlet.data.workers import ProgressBar, run_tasks
from mlet.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from mlet.data.source import PreparedSource


PIPELINE_VERSION = 2  # 2: short-line policy (data.on_short_line) in the cache key and meta.json
_ROWS_PER_READ = 1 << 18  # rows per read of the intermediate files (count / encode)


# ---- provisional ids ---------------------------------------------------------------------------
class KeyTable:
    """Assigns ids 0, 1, 2, ... to int64 keys in order of first appearance (a hash table)."""

    def __init__(self) -> None:
        try:
            from pandas._libs import hashtable as ht

            self._ht = ht
            self._table = ht.Int64HashTable()
        except (ImportError, AttributeError):  # pragma: no cover - pandas internals moved
            self._ht = None
            self._dict: dict[int, int] = {}
        self._keys: list[np.ndarray] = []
        self.size = 0

    def encode(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self._ht is not None:
            uniques = self._ht.Int64Vector()
            ids = self._table.get_labels(keys, uniques, self.size, -1)
            new = uniques.to_array()
        else:  # pragma: no cover
            u, inv = np.unique(keys, return_inverse=True)
            known = np.fromiter((self._dict.get(int(k), -1) for k in u), dtype=np.int64, count=len(u))
            new = u[known < 0]
            known[known < 0] = np.arange(self.size, self.size + len(new))
            self._dict.update(zip(new.tolist(), range(self.size, self.size + len(new))))
            ids = known[inv]
        if len(new):
            self._keys.append(np.array(new, dtype=np.int64))
            self.size += len(new)
        return ids.astype(np.int32, copy=False)

    def keys(self) -> np.ndarray:
        return np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.int64)


# ---- intermediate files ------------------------------------------------------------------------
def seg_path(tmp: Path, index: int, what: str) -> Path:
    return tmp / f"seg{index:04d}.{what}"


def read_rows(path: Path, dtype, width: int, rows: int) -> Iterator[np.ndarray]:
    """Successive ``[k, width]`` blocks of rows of a raw intermediate file (plain reads, no memory
    map; ``width=0`` gives ``[k]``)."""
    with open(path, "rb") as f:
        done = 0
        while done < rows:
            k = min(_ROWS_PER_READ, rows - done)
            a = np.fromfile(f, dtype=dtype, count=k * max(width, 1))
            yield a.reshape(k, width) if width else a
            done += k


def field_offsets(sizes: list[int]) -> np.ndarray:
    """Offsets that put every field's ids into one range: ``ids + offsets`` indexes a flat table."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)


def check_chunk(source: "PreparedSource", chunk) -> int:
    """The number of rows of a parsed chunk, after checking its arrays' shapes."""
    n = len(chunk.label)
    if chunk.keys.shape != (n, len(source.cat_names)) or chunk.dense.shape != (n, len(source.dense_names)):
        raise RuntimeError(f"{type(source).__name__}.parse produced arrays of the wrong shape")
    return n


# ---- 1. parse ----------------------------------------------------------------------------------
def parse_segment(source: "PreparedSource", seg: Segment, tmp: str, progress=None) -> dict:
    """Parse one segment into its intermediate files; returns its counts and table sizes."""
    tmp = Path(tmp)
    ctx = source.parse_context(seg, progress)
    tables = [KeyTable() for _ in source.cat_names]
    rows = 0
    has_split = False
    with open(seg_path(tmp, seg.index, "ids"), "wb") as f_ids, \
            open(seg_path(tmp, seg.index, "dense"), "wb") as f_dense, \
            open(seg_path(tmp, seg.index, "label"), "wb") as f_label, \
            open(seg_path(tmp, seg.index, "split"), "wb") as f_split:
        for chunk in source.parse(seg, ctx):
            n = check_chunk(source, chunk)
            if not n:
                continue
            ids = np.empty((n, len(tables)), dtype=np.int32)
            for f, table in enumerate(tables):
                ids[:, f] = table.encode(chunk.keys[:, f])
            f_ids.write(ids.data)
            f_dense.write(np.ascontiguousarray(chunk.dense, dtype=np.float32).data)
            f_label.write(np.ascontiguousarray(chunk.label, dtype=np.int8).data)
            if chunk.split is not None:
                has_split = True
                f_split.write(np.ascontiguousarray(chunk.split, dtype=np.int8).data)
            rows += n
    np.save(seg_path(tmp, seg.index, "keys.npy"),
            np.concatenate([t.keys() for t in tables]) if tables else np.zeros(0, np.int64))
    return {"index": seg.index, "rows": rows, "sizes": [t.size for t in tables], "has_split": has_split,
            **ctx.counts()}


@dataclass
class Parsed:
    """What the parse phase learnt: one report per segment (:func:`parse_segment`), rows per
    segment and per file."""

    reports: list[dict]
    rows: list[int]
    row_offsets: np.ndarray  # [segments + 1]
    rows_per_file: list[int]

    @property
    def n(self) -> int:
        return int(self.row_offsets[-1])

    @property
    def sizes(self) -> list[list[int]]:
        return [r["sizes"] for r in self.reports]


def parse_phase(source: "PreparedSource", segs: list[Segment], tmp: Path) -> Parsed:
    with ProgressBar(source.progress, f"{source.name}: parse", sum(s.size for s in segs) or None, "bytes") as bar:
        try:
            reports = run_tasks(parse_segment, [(source, s, str(tmp)) for s in segs], source.workers, bar)
        except BadLineError as exc:  # a line counted from its segment's start: count the lines before
            raise (exc.at_line(lines_before(segs[exc.segment]) + exc.line) if exc.local else exc) from None
    _absolute_line_numbers(reports, segs)
    rows = [r["rows"] for r in reports]
    if sum(rows) == 0:
        raise InputError(f"{', '.join(sorted({str(s.path) for s in segs}))}: no data rows (empty input file?); "
                         f"{source.name} parsed nothing from it")
    rows_per_file = [0] * (max(s.file_index for s in segs) + 1)
    for s, r in zip(segs, rows):
        rows_per_file[s.file_index] += r
    return Parsed(reports, rows, np.concatenate([[0], np.cumsum(rows)]).astype(np.int64), rows_per_file)


def _absolute_line_numbers(reports: list[dict], segs: list[Segment]) -> None:
    """Make the example line numbers of segments after the first of a file absolute."""
    first = first_lines(segs, [r["lines"] for r in reports])
    for s, r in zip(segs, reports):
        for e in (*r["examples"], *r["short_examples"]):
            if e.pop("local", False):
                e["line"] = e["line"] + first[s.index] - 1


# ---- 2. split ----------------------------------------------------------------------------------
@dataclass
class Split:
    split_rows: np.ndarray  # [3] rows per split
    positives: np.ndarray  # [3] positive labels per split
    seg_split: np.ndarray  # [segments, 3] rows of each segment per split


def split_phase(source: "PreparedSource", segs: list[Segment], parsed: Parsed, tmp: Path) -> Split:
    """Split codes of every row (``codes.i8``), from the source's protocol."""
    labels = np.concatenate([np.fromfile(seg_path(tmp, s.index, "label"), dtype=np.int8) for s in segs])
    presplit = None
    if any(r["has_split"] for r in parsed.reports):
        presplit = np.concatenate([np.fromfile(seg_path(tmp, s.index, "split"), dtype=np.int8) for s in segs])
    codes = np.asarray(source.assign(labels, parsed.rows_per_file, presplit), dtype=np.int8)
    if codes.shape != (parsed.n,) or codes.min() < 0 or codes.max() > 2:
        raise RuntimeError(f"{type(source).__name__}.assign must give one code in 0..2 per row")
    codes.tofile(tmp / "codes.i8")
    offsets = parsed.row_offsets
    return Split(split_rows=np.bincount(codes, minlength=3),
                 positives=np.bincount(codes, weights=labels, minlength=3),
                 seg_split=np.stack([np.bincount(codes[offsets[i]:offsets[i + 1]], minlength=3)
                                     for i in range(len(segs))]))


# ---- 3. count ----------------------------------------------------------------------------------
def count_segment(tmp: str, index: int, rows: int, row_offset: int, sizes: list[int], progress=None) -> str:
    """Training occurrences of each provisional id of one segment (``seg*.counts.npy``)."""
    tmp = Path(tmp)
    n_fields = len(sizes)
    offsets = field_offsets(sizes)
    codes = np.fromfile(tmp / "codes.i8", dtype=np.int8, count=rows, offset=row_offset)
    counts = np.zeros(int(sum(sizes)), dtype=np.int64)
    lo = 0
    for ids in read_rows(seg_path(tmp, index, "ids"), np.int32, n_fields, rows):
        hi = lo + len(ids)
        c = codes[lo:hi]
        if not (c == S.TRAIN).all():
            ids = ids[c == S.TRAIN]
        if len(ids) and n_fields:
            for f, column in enumerate(np.ascontiguousarray(ids.T)):  # contiguous per field: faster
                counts[offsets[f]:offsets[f] + sizes[f]] += np.bincount(column, minlength=sizes[f])
        if progress is not None:
            progress(0, hi - lo)
        lo = hi
    out = seg_path(tmp, index, "counts.npy")
    np.save(out, counts)
    return str(out)


def count_phase(source: "PreparedSource", segs: list[Segment], parsed: Parsed, tmp: Path) -> list[str]:
    tasks = [(str(tmp), s.index, parsed.rows[i], int(parsed.row_offsets[i]), parsed.sizes[i])
             for i, s in enumerate(segs)]
    with ProgressBar(source.progress, f"{source.name}: count", parsed.n, "rows") as bar:
        return run_tasks(count_segment, tasks, source.workers, bar)


# ---- 4. vocabulary -----------------------------------------------------------------------------
@dataclass
class Vocabulary:
    cardinalities: list[int] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)  # per field: training count per index
    keys: list[np.ndarray] = field(default_factory=list)  # per field: key of every index 1..n-1


def vocabulary_phase(source: "PreparedSource", segs: list[Segment], sizes: list[list[int]],
                     count_files: list[str], tmp: Path) -> Vocabulary:
    """Merge segment tables by key; per field: kept categories (count >= min_count, or every
    category with ``vocabulary = "all"``) get indices 1.. by decreasing training count (ties:
    increasing key); the rest map to 0 (OOV). Writes each segment's id map (``seg*.map.npy``)."""
    seg_keys = [np.load(seg_path(tmp, s.index, "keys.npy"), mmap_mode="r") for s in segs]
    seg_counts = [np.load(p, mmap_mode="r") for p in count_files]
    offsets = [np.concatenate([[0], np.cumsum(sz)]).astype(np.int64) for sz in sizes]
    maps: list[list[np.ndarray]] = [[] for _ in segs]
    vocab = Vocabulary()
    for f in range(len(source.cat_names)):
        keys = [np.asarray(k[o[f]:o[f + 1]]) for k, o in zip(seg_keys, offsets)]
        cnts = [np.asarray(c[o[f]:o[f + 1]]) for c, o in zip(seg_counts, offsets)]
        if len(segs) == 1:
            g_keys, inverse, g_counts = keys[0], None, cnts[0]
        else:
            g_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
            g_counts = np.bincount(inverse, weights=np.concatenate(cnts), minlength=len(g_keys)).astype(np.int64)
        if source.vocabulary == "all":
            kept = np.arange(len(g_keys))
        else:
            kept = np.flatnonzero(g_counts >= max(1, source.min_counts[f]))
        kept = kept[np.lexsort((g_keys[kept], -g_counts[kept]))]
        remap = np.zeros(len(g_keys), dtype=np.int32)
        remap[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
        field_counts = np.empty(len(kept) + 1, dtype=np.int64)
        field_counts[1:] = g_counts[kept]
        field_counts[0] = int(g_counts.sum()) - int(field_counts[1:].sum())
        vocab.cardinalities.append(len(kept) + 1)
        vocab.counts.append(field_counts)
        vocab.keys.append(g_keys[kept].astype(np.int64))
        start = 0
        for i, k in enumerate(keys):
            maps[i].append(remap if inverse is None else remap[inverse[start:start + len(k)]])
            start += len(k)
    for i, s in enumerate(segs):
        flat = np.concatenate(maps[i]) if maps[i] else np.zeros(0, np.int32)
        np.save(seg_path(tmp, s.index, "map.npy"), flat.astype(np.int32))
    return vocab


# ---- 5. encode ---------------------------------------------------------------------------------
def allocate_outputs(tmp: Path, split_rows: np.ndarray, n_fields: int, n_dense: int) -> dict:
    """Final ``.npy`` files with their headers, pre-sized so workers can write anywhere."""
    targets = {}
    for k, name in enumerate(S.NAMES):
        n = int(split_rows[k])
        for key, dtype, shape in (("cat", np.int32, (n, n_fields)), ("dense", np.float32, (n, n_dense)),
                                  ("label", np.float32, (n,))):
            path = tmp / f"{name}.{key}.npy"
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
            with open(path, "wb") as f:
                if len(repr(header)) < 60000:
                    np.lib.format.write_array_header_1_0(f, header)
                else:
                    np.lib.format.write_array_header_2_0(f, header)
                start = f.tell()
                f.truncate(start + int(np.prod(shape)) * np.dtype(dtype).itemsize)
            targets[(k, key)] = {"path": str(path), "data_start": start}
    return targets


def encode_segment(tmp: str, index: int, rows: int, row_offset: int, sizes: list[int], n_dense: int,
                   targets: dict, progress=None) -> dict:
    """Writes one segment's rows into the final split files; returns OOV counts per split and field."""
    tmp = Path(tmp)
    n_fields = len(sizes)
    flat = np.load(seg_path(tmp, index, "map.npy"))
    offsets = field_offsets(sizes)
    codes = np.fromfile(tmp / "codes.i8", dtype=np.int8, count=rows, offset=row_offset)
    fds = {(s, key): os.open(t["path"], os.O_WRONLY) for (s, key), t in targets.items()}
    pos = {(s, key): t["offset"] for (s, key), t in targets.items()}
    oov = np.zeros((3, n_fields), dtype=np.int64)

    def write(s: int, key: str, arr: np.ndarray) -> None:
        if arr.size:
            arr = np.ascontiguousarray(arr)
            os.pwrite(fds[(s, key)], memoryview(arr).cast("B"), pos[(s, key)])
            pos[(s, key)] += arr.nbytes

    try:
        ids_it = read_rows(seg_path(tmp, index, "ids"), np.int32, n_fields, rows)
        dense_it = read_rows(seg_path(tmp, index, "dense"), np.float32, n_dense, rows) if n_dense else None
        label_it = read_rows(seg_path(tmp, index, "label"), np.int8, 0, rows)
        lo = 0
        for ids in ids_it:
            hi = lo + len(ids)
            cat = np.take(flat, ids + offsets) if n_fields else np.zeros((hi - lo, 0), np.int32)
            dense = next(dense_it) if dense_it is not None else np.zeros((hi - lo, 0), np.float32)
            label = next(label_it).astype(np.float32)
            c = codes[lo:hi]
            for s in (S.TRAIN, S.VAL, S.TEST):
                if c[0] == s and (c == s).all():  # the whole block in one split (contiguous protocols)
                    parts = (cat, dense, label)
                else:
                    m = c == s
                    if not m.any():
                        continue
                    parts = (cat[m], dense[m], label[m])
                oov[s] += (parts[0] == 0).sum(axis=0)
                for key, arr in zip(("cat", "dense", "label"), parts):
                    write(s, key, arr)
            if progress is not None:
                progress(0, hi - lo)
            lo = hi
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"index": index, "oov": oov.tolist()}


def encode_phase(source: "PreparedSource", segs: list[Segment], parsed: Parsed, split: Split, tmp: Path) -> np.ndarray:
    """Rows into the final split files; returns OOV counts ``[3, fields]``."""
    n_fields, n_dense = len(source.cat_names), len(source.dense_names)
    targets = allocate_outputs(tmp, split.split_rows, n_fields, n_dense)
    widths = {"cat": n_fields * 4, "dense": n_dense * 4, "label": 4}
    tasks = []
    for i, s in enumerate(segs):
        before = split.seg_split[:i].sum(axis=0)
        seg_targets = {(sp, key): {"path": t["path"], "offset": t["data_start"] + int(before[sp]) * widths[key]}
                       for (sp, key), t in targets.items()}
        tasks.append((str(tmp), s.index, parsed.rows[i], int(parsed.row_offsets[i]), parsed.sizes[i], n_dense,
                      seg_targets))
    with ProgressBar(source.progress, f"{source.name}: encode", parsed.n, "rows") as bar:
        encoded = run_tasks(encode_segment, tasks, source.workers, bar)
    return np.sum([np.asarray(e["oov"]) for e in encoded], axis=0)


# ---- finish ------------------------------------------------------------------------------------
def _by_file(segs: list[Segment], reports: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s, r in zip(segs, reports):
        out[s.path] = out.get(s.path, 0) + int(r[key])
    return out


def finish(source: "PreparedSource", tmp: Path, fp: dict, segs: list[Segment], parsed: Parsed, split: Split,
           vocab: Vocabulary, oov: np.ndarray, seconds: dict) -> dict:
    """Intermediates out, then ``counts.npy``, ``vocab.npy`` and ``meta.json`` (last: marks a
    complete build). Returns the summary (``meta.json`` plus the cache size)."""
    started = time.perf_counter()
    for p in tmp.glob("seg*"):
        p.unlink()
    (tmp / "codes.i8").unlink()
    np.save(tmp / "counts.npy", np.concatenate(vocab.counts) if vocab.counts else np.zeros(0, np.int64))
    np.save(tmp / "vocab.npy", np.concatenate(vocab.keys) if vocab.keys else np.zeros(0, np.int64))
    reports, n, split_rows, names = parsed.reports, parsed.n, split.split_rows, S.NAMES
    padded = sum(r["padded"] for r in reports)
    short_skipped = sum(r["short_skipped"] for r in reports)
    short_examples = [e for r in reports for e in r["short_examples"]]
    seconds["finish"] = time.perf_counter() - started
    meta = {
        "name": source.name,
        "dense_names": list(source.dense_names),
        "cat_names": list(source.cat_names),
        "cardinalities": [int(c) for c in vocab.cardinalities],
        "splits": {names[k]: int(split_rows[k]) for k in range(3)},
        "has_counts": True,
        "positive_rate": {names[k]: (float(split.positives[k] / split_rows[k]) if split_rows[k] else None)
                          for k in range(3)},
        "oov_rate": {names[k]: ([float(x) for x in oov[k] / split_rows[k]] if split_rows[k] else None)
                     for k in range(3)},
        "min_counts": [int(m) for m in source.min_counts],
        "options": source.cache_options(),
        "vocabulary": source.vocabulary,
        "source": {k: fp[k] for k in ("source", "files", "digest")},
        "pipeline_version": PIPELINE_VERSION,
        "lines_read": int(sum(r["lines"] for r in reports)),
        "rows": n,
        "skipped_lines": int(sum(r["skipped"] for r in reports)),
        "skipped_by_file": _by_file(segs, reports, "skipped"),
        "bad_line_examples": [e for r in reports for e in r["examples"]][:MAX_EXAMPLES],
        "short_lines": {
            "policy": source.on_short_line,
            "padded": int(padded),
            "padded_by_file": {p: c for p, c in _by_file(segs, reports, "padded").items() if c},
            "skipped": int(short_skipped),
            "skipped_by_file": {p: c for p, c in _by_file(segs, reports, "short_skipped").items() if c},
            "examples": short_examples[:MAX_EXAMPLES],
        },
        "rows_dropped": int(sum(r["dropped"] for r in reports)),
        "vocab": "vocab.npy: for each field in order, the key of every index 1..n-1 (index 0 is OOV)",
        "build_seconds": round(sum(seconds.values()), 3),
        "parse_seconds": round(seconds["parse"], 3),
        "phase_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "workers": source.workers,
        "segments": len(segs),
    }
    meta_tmp = tmp / "meta.json.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(meta_tmp, tmp / "meta.json")
    return {**meta, "cache_bytes": sum(p.stat().st_size for p in tmp.iterdir())}


def build(source: "PreparedSource", tmp: Path, fp: dict) -> dict:
    """Every phase in order, timed; the summary of the build (see :func:`finish`)."""
    if len(source.min_counts) != len(source.cat_names):
        raise RuntimeError(f"{type(source).__name__}: one min_count per categorical field is needed")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    segs = source.segments()
    parsed = parse_phase(source, segs, tmp)
    lap("parse")
    split = split_phase(source, segs, parsed, tmp)
    lap("split")
    count_files = count_phase(source, segs, parsed, tmp)
    lap("count")
    vocab = vocabulary_phase(source, segs, parsed.sizes, count_files, tmp)
    lap("vocabulary")
    oov = encode_phase(source, segs, parsed, split, tmp)
    lap("encode")
    return finish(source, tmp, fp, segs, parsed, split, vocab, oov, seconds)
