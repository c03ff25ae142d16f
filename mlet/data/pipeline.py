"""The one preparation pipeline every real dataset goes through: raw files -> cache directory.

A source (Criteo, Avazu, MovieLens, tabular) only says how to parse its files into rows of
(label, dense values, categorical keys) and how to split them; :class:`PreparedSource` does the
rest, identically for all:

1. **parse** (in parallel over file segments): each segment's rows are parsed in blocks; every
   categorical key gets a segment-local provisional id from a hash table; ids, dense values and
   labels are appended to the segment's intermediate files. Bad lines stop the run with a
   message naming file, line and field, or (``on_bad_line=skip``) are counted and skipped.
2. **split**: the source assigns each row to train / val / test from the row count, the labels
   and the rows per file (the protocols of :mod:`mlet.data.splits`).
3. **count** (parallel): per field, occurrences of each provisional id among *training* rows.
4. **vocabulary**: segment tables are merged by key; per field, categories seen at least
   ``min_count`` times in training get indices ``1..n-1`` (most frequent first, ties by key), all
   others share the OOV index ``0``. Training counts per index are kept (``counts.npy``). A source
   with ``vocabulary = "all"`` (facebookresearch/dlrm's "full vocabularies") also gives each
   category seen only in validation or test its own index, after the trained ones (training count
   0): no training row touches such a row, but under MLET it still moves, with ``B``.
5. **encode** (parallel): provisional ids are mapped to final indices and every row is written
   to its split's ``{split}.{cat,dense,label}.npy`` at its final offset.

Only categorical keys seen so far live in memory (hash tables), never the rows: a file larger
than RAM is prepared in a streaming fashion (the text is read once; the compact intermediate
files are read twice more).

The cache directory ``<cache_dir>/<name>-<fingerprint>`` is keyed by a hash of the options that
change the output and of each raw file's path, size and modification time (cheap: no hashing of
file contents, so an edit that keeps size and mtime goes unnoticed; ``touch`` forces a rebuild).
It is built in a temporary directory beside it and renamed when complete, so an interrupted or
failed run never leaves a directory a later run would trust; temporary directories of dead
processes are removed by the next run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mlet.data import splits as S
from mlet.data.arrays import CTRArrays
from mlet.errors import InputError, MletError
from mlet.data.textparse import LINE, Block, RowErrors, Tokens, field_text, open_binary, read_blocks

log = logging.getLogger("mlet.data")

PIPELINE_VERSION = 1
ON_BAD_LINE = ("error", "skip")
VOCABULARIES = ("train", "all")
_ROWS_PER_READ = 1 << 18  # rows per read of the intermediate files (count / encode)
_MAX_EXAMPLES = 10


# ---- errors ------------------------------------------------------------------------------------
class BadLineError(MletError, ValueError):
    """A raw line that cannot be parsed. ``str()`` names the file, the line and the field."""

    def __init__(self, path: str, line: int, field_name: str, reason: str, segment: int = -1, local: bool = False):
        self.path, self.line, self.field, self.reason = path, line, field_name, reason
        self.segment, self.local = segment, local
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"line {self.line}" if not self.local else f"line {self.line} of segment {self.segment}"
        return (
            f"{self.path}, {where}, {self.field}: {self.reason} "
            "(set data.on_bad_line=skip to skip such lines and count them)"
        )

    def at_line(self, line: int) -> "BadLineError":
        return BadLineError(self.path, line, self.field, self.reason)

    def __reduce__(self):  # picklable across worker processes
        return (BadLineError, (self.path, self.line, self.field, self.reason, self.segment, self.local))


# ---- what sources produce ----------------------------------------------------------------------
@dataclass
class Segment:
    """A piece of one raw file that one worker parses: bytes ``[start, end)`` (``end=None``: to
    the end), whose first line is line ``first_line`` of the file (``None`` until the lines of
    the previous segments are counted)."""

    index: int
    file_index: int
    path: str
    start: int = 0
    end: int | None = None
    first_line: int | None = 1
    size: int = 0  # bytes, for progress


@dataclass
class Chunk:
    """Parsed rows: ``label[n]`` (0/1), ``dense[n, D]`` (final values), ``keys[n, F]`` (int64
    categorical keys; equal keys are the same category), optionally ``split[n]`` codes."""

    label: np.ndarray
    dense: np.ndarray
    keys: np.ndarray
    split: np.ndarray | None = None


class ParseContext:
    """What a source's ``parse`` gets besides the segment: bad-line policy and progress."""

    def __init__(self, segment: Segment, on_bad_line: str, progress: Callable[[int, int], None] | None = None):
        self.segment = segment
        self.on_bad_line = on_bad_line
        self.skipped = 0
        self.dropped = 0  # rows left out on purpose (e.g. negative subsampling)
        self.lines = 0  # physical data lines read
        self.examples: list[dict] = []
        self._progress = progress

    def progress(self, nbytes: int, rows: int) -> None:
        if self._progress is not None:
            self._progress(nbytes, rows)

    def blocks(self, block_bytes: int, first_line: int = 1) -> Iterator[Block]:
        """Blocks of whole lines of the segment; line numbers count from the segment's first line
        (1) and are made absolute once the segment's first line is known."""
        seg = self.segment
        with open_binary(seg.path) as f:
            if seg.start:
                f.seek(seg.start)
            stream: Any = f if seg.end is None else _Limited(f, seg.end - seg.start)
            offset = seg.start
            for block in read_blocks(stream, block_bytes, first_line):
                block.offset = offset
                offset += block.size
                yield block

    def reject(self, line: int, field_name: str, reason: str, path: str | None = None) -> None:
        """One bad line: raise (``on_bad_line=error``) or count it. ``line`` counts from the
        segment's first line unless ``path`` names another file (then it is that file's line)."""
        seg = self.segment
        line = int(line)
        known = path is not None or seg.first_line is not None
        absolute = line if path is not None else line + (seg.first_line - 1 if known else 0)
        path = path or seg.path
        if self.on_bad_line == "error":
            raise BadLineError(path, absolute, field_name, reason, seg.index, local=not known)
        self.skipped += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(
                {"file": path, "line": absolute, "local": not known, "field": field_name, "reason": reason}
            )

    def check(self, errors: RowErrors, block: Block, tokens: Tokens, names: Sequence[str]) -> np.ndarray:
        """Rows of a tokenised block to keep; bad rows are raised or counted (first problem of each
        row: line-level problems, then fields left to right)."""
        bad = np.flatnonzero(errors.bad)
        if self.on_bad_line == "skip" and len(self.examples) >= _MAX_EXAMPLES:
            self.skipped += len(bad)
            return ~errors.bad
        for i in bad:
            col = int(errors.column[i])
            fmt = errors.reasons[int(errors.reason[i])]
            found = int(tokens.found[i]) if tokens.found is not None else len(names)
            if col == LINE:
                label = "whole line"
                value = ""
            else:
                label = f"field {col + 1} ({names[col]})" if col < len(names) else f"field {col + 1}"
                value = field_text(block.buf, int(tokens.starts[i, col]), int(tokens.ends[i, col]))
            self.reject(block.first_line + i, label, fmt.format(found=found, value=value))
        return ~errors.bad


class _Limited:
    """A read-only view of the next ``n`` bytes of a binary stream."""

    def __init__(self, f, n: int) -> None:
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def readinto(self, view) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(view)[: self.left]
        n = self.f.readinto(view) or 0
        self.left -= n
        return n


def text_segments(paths: Sequence[str | os.PathLike], header_bytes: Sequence[int] | None = None,
                  pieces: int = 1, min_bytes: int = 64 << 20) -> list[Segment]:
    """Segments of newline-delimited files: each file (after its header) cut into up to ``pieces``
    parts of at least ``min_bytes``, each starting at a line start. ``.gz`` files are one segment."""
    segments: list[Segment] = []
    for fi, path in enumerate(paths):
        path = str(path)
        size = os.path.getsize(path)
        head = header_bytes[fi] if header_bytes else 0
        first = 2 if head else 1
        if path.endswith(".gz"):
            segments.append(Segment(len(segments), fi, path, head, None, first, size))
            continue
        n = max(1, min(pieces, (size - head) // max(min_bytes, 1)))
        cuts = [head]
        with open(path, "rb") as f:
            for j in range(1, n):
                target = head + (size - head) * j // n
                f.seek(target)
                f.readline()
                cut = f.tell()
                if cut > cuts[-1] and cut < size:
                    cuts.append(cut)
        cuts.append(size)
        for j in range(len(cuts) - 1):
            segments.append(
                Segment(len(segments), fi, path, cuts[j], cuts[j + 1], first if j == 0 else None, cuts[j + 1] - cuts[j])
            )
    return segments


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


# ---- the per-segment work (runs in worker processes) ----------------------------------------
def _seg_path(tmp: Path, index: int, what: str) -> Path:
    return tmp / f"seg{index:04d}.{what}"


def _phase_parse(source: "PreparedSource", seg: Segment, tmp: str, progress=None) -> dict:
    tmp = Path(tmp)
    ctx = ParseContext(seg, source.on_bad_line, progress)
    n_fields = len(source.cat_names)
    n_dense = len(source.dense_names)
    tables = [KeyTable() for _ in range(n_fields)]
    rows = 0
    has_split = False
    with open(_seg_path(tmp, seg.index, "ids"), "wb") as f_ids, open(_seg_path(tmp, seg.index, "dense"), "wb") as f_dense, \
            open(_seg_path(tmp, seg.index, "label"), "wb") as f_label, open(_seg_path(tmp, seg.index, "split"), "wb") as f_split:
        for chunk in source.parse(seg, ctx):
            n = len(chunk.label)
            if not n:
                continue
            if chunk.keys.shape != (n, n_fields) or chunk.dense.shape != (n, n_dense):
                raise RuntimeError(f"{type(source).__name__}.parse produced arrays of the wrong shape")
            ids = np.empty((n, n_fields), dtype=np.int32)
            for f in range(n_fields):
                ids[:, f] = tables[f].encode(chunk.keys[:, f])
            f_ids.write(ids.data)
            f_dense.write(np.ascontiguousarray(chunk.dense, dtype=np.float32).data)
            f_label.write(np.ascontiguousarray(chunk.label, dtype=np.int8).data)
            if chunk.split is not None:
                has_split = True
                f_split.write(np.ascontiguousarray(chunk.split, dtype=np.int8).data)
            rows += n
    np.save(_seg_path(tmp, seg.index, "keys.npy"), np.concatenate([t.keys() for t in tables]) if tables else np.zeros(0, np.int64))
    return {
        "index": seg.index,
        "rows": rows,
        "lines": ctx.lines,
        "skipped": ctx.skipped,
        "dropped": ctx.dropped,
        "examples": ctx.examples,
        "sizes": [t.size for t in tables],
        "has_split": has_split,
    }


def _read_rows(path: Path, dtype, width: int, rows: int) -> Iterator[np.ndarray]:
    """Successive ``[k, width]`` blocks of rows of a raw intermediate file (plain reads, no memory
    map; ``width=0`` gives ``[k]``)."""
    with open(path, "rb") as f:
        done = 0
        while done < rows:
            k = min(_ROWS_PER_READ, rows - done)
            a = np.fromfile(f, dtype=dtype, count=k * max(width, 1))
            yield a.reshape(k, width) if width else a
            done += k


def _field_offsets(sizes: list[int]) -> np.ndarray:
    """Offsets that put every field's ids into one range: ``ids + offsets`` indexes a flat table."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)


def _phase_count(tmp: str, index: int, rows: int, row_offset: int, sizes: list[int], progress=None) -> str:
    tmp = Path(tmp)
    n_fields = len(sizes)
    offsets = _field_offsets(sizes)
    total = int(sum(sizes))
    codes = np.fromfile(tmp / "codes.i8", dtype=np.int8, count=rows, offset=row_offset)
    counts = np.zeros(total, dtype=np.int64)
    lo = 0
    for ids in _read_rows(_seg_path(tmp, index, "ids"), np.int32, n_fields, rows):
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
    out = _seg_path(tmp, index, "counts.npy")
    np.save(out, counts)
    return str(out)


def _phase_encode(tmp: str, index: int, rows: int, row_offset: int, sizes: list[int], n_dense: int,
                  targets: dict, progress=None) -> dict:
    """Writes this segment's rows into the final split files; returns OOV counts per split and field."""
    tmp = Path(tmp)
    n_fields = len(sizes)
    flat = np.load(_seg_path(tmp, index, "map.npy"))
    offsets = _field_offsets(sizes)
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
        ids_it = _read_rows(_seg_path(tmp, index, "ids"), np.int32, n_fields, rows)
        dense_it = _read_rows(_seg_path(tmp, index, "dense"), np.float32, n_dense, rows) if n_dense else None
        label_it = _read_rows(_seg_path(tmp, index, "label"), np.int8, 0, rows)
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


# ---- running phases (in-process or in worker processes) ---------------------------------------
_SHARED = None


def _init_worker(shared) -> None:
    global _SHARED
    _SHARED = shared


class _SharedProgress:
    """Progress of task ``slot`` in a shared array: (bytes, rows)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def __call__(self, nbytes: int, rows: int) -> None:
        _SHARED[2 * self.slot] += nbytes
        _SHARED[2 * self.slot + 1] += rows


def _call(fn, args, slot):
    return fn(*args, progress=_SharedProgress(slot))


class _Bar:
    """A tqdm progress bar (bytes or rows) with rows/s, or nothing when progress is off."""

    def __init__(self, enabled: bool, desc: str, total: int | None, unit: str) -> None:
        self.bar = None
        self.rows = 0
        self.start = time.perf_counter()
        self.unit = unit
        if enabled:
            from tqdm.auto import tqdm

            tqdm.monitor_interval = 0  # no monitor thread (worker processes are forked)
            self.bar = tqdm(total=total, desc=desc, unit="B" if unit == "bytes" else "rows", unit_scale=True,
                            dynamic_ncols=True, leave=True, mininterval=0.5)

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is None:
            return
        self.bar.update(nbytes if self.unit == "bytes" else rows)
        if self.unit == "bytes":
            rate = self.rows / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tasks(fn, tasks: list[tuple], workers: int, bar: _Bar) -> list:
    """Run ``fn(*task, progress=...)`` for every task; in worker processes when ``workers > 1``."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*t, progress=bar.update) for t in tasks]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    shared = ctx.Array("d", 2 * len(tasks), lock=False)
    seen = np.zeros(2 * len(tasks))
    results: list = [None] * len(tasks)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                               initializer=_init_worker, initargs=(shared,))
    try:
        futures = {pool.submit(_call, fn, t, i): i for i, t in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.3, return_when=FIRST_EXCEPTION)
            now = np.frombuffer(shared, dtype=np.float64).copy()
            delta = now - seen
            seen = now
            bar.update(int(delta[0::2].sum()), int(delta[1::2].sum()))
            for fut in done:
                results[futures[fut]] = fut.result()  # re-raises a worker's exception
    except BaseException:
        # stop the other workers now rather than letting them finish their segments
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


@contextmanager
def _malloc_kept():
    """Keep freed memory in the heap while building (glibc only; a no-op elsewhere).

    Every block allocates fresh numpy temporaries of a few MiB. By default glibc serves those with
    ``mmap`` and returns them on free, so each one page-faults anew: on a virtual machine that
    made decoding 2-3x slower. Raising the mmap threshold (to its maximum, 32 MiB) and the trim
    threshold lets freed blocks be reused; the defaults are restored and the heap trimmed after.
    Worker processes are forked inside, so they inherit the setting."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    try:
        yield
    finally:
        mallopt(m_trim_threshold, 128 << 10)
        mallopt(m_mmap_threshold, 128 << 10)
        trim(0)


# ---- the base class of every source -------------------------------------------------------------
class PreparedSource:
    """Base of every file-backed source: ``prepare()`` builds (or reuses) the cache, ``load()``
    returns it as memory-mapped :class:`CTRArrays`.

    Subclasses set ``dense_names`` / ``cat_names`` / ``min_counts`` and implement
    :meth:`raw_files`, :meth:`options`, :meth:`segments`, :meth:`parse` and :meth:`assign`.

    Args common to all sources:
        cache_dir: root of the data cache (``${paths.data_dir}``).
        on_bad_line: ``error`` (stop at the first bad line, naming file, line and field) or
            ``skip`` (skip bad lines, count them in the summary and ``meta.json``).
        workers: parallel worker processes (``None``: one per CPU core, at most 8).
        block_bytes: bytes of text parsed at once (memory vs. per-block overhead).
        progress: show progress bars and the summary table.
    """

    name = "dataset"
    dense_names: list[str] = []
    cat_names: list[str] = []
    min_counts: list[int] = []
    # "train": vocabularies from the training rows (unseen categories -> OOV 0) | "all": every
    # category of the files gets its own index (min count 1 only)
    vocabulary = "train"

    def __init__(self, cache_dir: str | os.PathLike = "data_cache", on_bad_line: str = "error",
                 workers: int | None = None, block_bytes: int = 4 << 20, progress: bool = True,
                 segment_bytes: int = 64 << 20) -> None:
        if on_bad_line not in ON_BAD_LINE:
            raise ValueError(f"data.on_bad_line must be one of {ON_BAD_LINE}, got {on_bad_line!r}")
        self.cache_dir = Path(cache_dir)
        self.on_bad_line = on_bad_line
        self.workers = int(workers) if workers else min(os.cpu_count() or 1, 8)
        self.block_bytes = int(block_bytes)
        self.progress = bool(progress)
        self.segment_bytes = int(segment_bytes)
        self.built = False  # whether the last prepare() built the cache (False: reused)
        self.last_summary: dict | None = None

    def _pieces(self) -> int:
        """Segments per file: one per worker (each segment has its own hash tables, merged at the
        end, so more segments cost more work)."""
        return max(1, self.workers)

    # -- what subclasses provide -------------------------------------------------------------
    def raw_files(self) -> list[Path]:
        raise NotImplementedError

    def options(self) -> dict:
        """Everything besides the raw files that changes the prepared arrays."""
        raise NotImplementedError

    def segments(self) -> list[Segment]:
        raise NotImplementedError

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        raise NotImplementedError

    def assign(self, labels: np.ndarray, rows_per_file: list[int], presplit: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def fetch(self) -> None:
        """Obtain raw files that are downloaded rather than given (MovieLens)."""

    # -- the cache ---------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        files = []
        for p in self.raw_files():
            p = Path(p)
            if not p.is_file():
                raise FileNotFoundError(f"{type(self).__name__}: raw file {p} does not exist")
            st = p.stat()
            files.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        payload = {
            "pipeline_version": PIPELINE_VERSION,
            "source": f"{type(self).__module__}.{type(self).__qualname__}",
            "options": self._options(),
            "files": files,
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        return {**payload, "digest": digest}

    def _options(self) -> dict:
        options = self.options()
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {self.vocabulary!r}")
        if self.vocabulary != "train":
            if any(m > 1 for m in self.min_counts):
                raise ValueError(f"{self.name}: a vocabulary over all rows (vocabulary=all) keeps every category: "
                                 f"min_count must be 1, got {max(self.min_counts)}")
            options = {**options, "vocabulary": self.vocabulary}
        return options

    @property
    def cache_path(self) -> Path:
        self.fetch()
        return self.cache_dir / f"{self.name}-{self.fingerprint()['digest'][:16]}"

    def prepare(self) -> Path:
        """Build the cache unless a complete one with the same fingerprint exists; returns its path."""
        self.fetch()
        fp = self.fingerprint()
        final = self.cache_dir / f"{self.name}-{fp['digest'][:16]}"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _clean_stale(self.cache_dir)
        if (final / "meta.json").is_file():
            self.built = False
            log.info("%s: using the prepared cache %s", self.name, final)
            return final
        if final.exists():  # not made by this pipeline (it renames complete builds only): not trusted
            shutil.rmtree(final)
        tmp = self.cache_dir / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with _malloc_kept():
                summary = self._build(tmp, fp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # not a concurrent build that won the race
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.built = True
        summary["path"] = str(final)
        self.last_summary = summary
        if self.progress:
            print_summary(summary)
        log.info("%s: prepared %s", self.name, final)
        return final

    def load(self) -> CTRArrays:
        return CTRArrays.load(self.prepare(), mmap=True)

    def iter_chunks(self) -> Iterator[Chunk]:
        """The parsed rows of this source's raw files, in file order, streaming, without building
        a cache (``mlet-predict``: construct the source with the files to read as its path).

        The same parser as :meth:`prepare`, one segment per file, in this process. Every row read
        is yielded in order (a source that leaves rows out on purpose, e.g. negative subsampling,
        must be configured not to); with ``on_bad_line=error`` a bad line raises
        :class:`BadLineError` naming its file, line and field."""
        workers = self.workers
        self.workers = 1  # one segment per file: absolute line numbers, file order
        try:
            segs = self.segments()
        finally:
            self.workers = workers
        n_fields, n_dense = len(self.cat_names), len(self.dense_names)
        for seg in segs:
            ctx = ParseContext(seg, self.on_bad_line)
            for chunk in self.parse(seg, ctx):
                n = len(chunk.label)
                if chunk.keys.shape != (n, n_fields) or chunk.dense.shape != (n, n_dense):
                    raise RuntimeError(f"{type(self).__name__}.parse produced arrays of the wrong shape")
                if n:
                    yield chunk
            if ctx.dropped:
                raise RuntimeError(f"{type(self).__name__} left {ctx.dropped} rows of {seg.path} out on purpose "
                                   "(sampling): not a file-order parse")

    # -- the build ---------------------------------------------------------------------------
    def _build(self, tmp: Path, fp: dict) -> dict:
        started = time.perf_counter()
        n_fields, n_dense = len(self.cat_names), len(self.dense_names)
        if len(self.min_counts) != n_fields:
            raise RuntimeError(f"{type(self).__name__}: one min_count per categorical field is needed")
        segs = self.segments()

        # 1. parse
        total_bytes = sum(s.size for s in segs)
        bar = _Bar(self.progress, f"{self.name}: parse", total_bytes or None, "bytes")
        try:
            reports = run_tasks(_phase_parse, [(self, s, str(tmp)) for s in segs], self.workers, bar)
        except BadLineError as exc:
            raise (_absolute(exc, segs) if exc.local else exc) from None
        finally:
            bar.close()
        parse_seconds = time.perf_counter() - started
        _absolute_examples(reports, segs)
        rows = [r["rows"] for r in reports]
        n = int(sum(rows))
        if n == 0:
            raise InputError(f"{', '.join(sorted({str(s.path) for s in segs}))}: no data rows (empty input file?); "
                             f"{self.name} parsed nothing from it")
        row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        rows_per_file = [0] * (max(s.file_index for s in segs) + 1)
        for s, r in zip(segs, rows):
            rows_per_file[s.file_index] += r

        # 2. split
        labels = np.concatenate([np.fromfile(_seg_path(tmp, s.index, "label"), dtype=np.int8) for s in segs])
        presplit = None
        if any(r["has_split"] for r in reports):
            presplit = np.concatenate([np.fromfile(_seg_path(tmp, s.index, "split"), dtype=np.int8) for s in segs])
        codes = np.asarray(self.assign(labels, rows_per_file, presplit), dtype=np.int8)
        if codes.shape != (n,) or codes.min() < 0 or codes.max() > 2:
            raise RuntimeError(f"{type(self).__name__}.assign must give one code in 0..2 per row")
        codes.tofile(tmp / "codes.i8")
        split_rows = np.bincount(codes, minlength=3)
        positives = np.bincount(codes, weights=labels, minlength=3)
        seg_split = np.stack([np.bincount(codes[row_offsets[i]:row_offsets[i + 1]], minlength=3) for i in range(len(segs))])
        del labels, codes, presplit

        split_seconds = time.perf_counter() - started - parse_seconds

        # 3. count (training rows)
        sizes = [r["sizes"] for r in reports]
        bar = _Bar(self.progress, f"{self.name}: count", n, "rows")
        try:
            count_files = run_tasks(
                _phase_count,
                [(str(tmp), s.index, rows[i], int(row_offsets[i]), sizes[i]) for i, s in enumerate(segs)],
                self.workers, bar)
        finally:
            bar.close()

        count_done = time.perf_counter()

        # 4. vocabulary
        cardinalities, counts, vocab = self._vocabulary(tmp, segs, sizes, count_files)
        vocab_done = time.perf_counter()

        # 5. encode
        targets = self._allocate(tmp, split_rows, n_fields, n_dense)
        tasks = []
        for i, s in enumerate(segs):
            before = seg_split[:i].sum(axis=0)
            seg_targets = {}
            for (sp, key), t in targets.items():
                width = {"cat": n_fields * 4, "dense": n_dense * 4, "label": 4}[key]
                seg_targets[(sp, key)] = {"path": t["path"], "offset": t["data_start"] + int(before[sp]) * width}
            tasks.append((str(tmp), s.index, rows[i], int(row_offsets[i]), sizes[i], n_dense, seg_targets))
        bar = _Bar(self.progress, f"{self.name}: encode", n, "rows")
        try:
            encoded = run_tasks(_phase_encode, tasks, self.workers, bar)
        finally:
            bar.close()
        oov = np.sum([np.asarray(e["oov"]) for e in encoded], axis=0)
        encode_done = time.perf_counter()

        # intermediates out, then counts, vocabulary and meta.json (last: marks completion)
        for p in tmp.glob("seg*"):
            p.unlink()
        (tmp / "codes.i8").unlink()
        np.save(tmp / "counts.npy", np.concatenate(counts) if counts else np.zeros(0, np.int64))
        np.save(tmp / "vocab.npy", np.concatenate(vocab) if vocab else np.zeros(0, np.int64))
        elapsed = time.perf_counter() - started
        lines = int(sum(r["lines"] for r in reports))
        skipped = int(sum(r["skipped"] for r in reports))
        skipped_by_file: dict[str, int] = {}
        for s, r in zip(segs, reports):
            skipped_by_file[s.path] = skipped_by_file.get(s.path, 0) + r["skipped"]
        names = S.NAMES
        meta = {
            "name": self.name,
            "dense_names": list(self.dense_names),
            "cat_names": list(self.cat_names),
            "cardinalities": [int(c) for c in cardinalities],
            "splits": {names[k]: int(split_rows[k]) for k in range(3)},
            "has_counts": True,
            "positive_rate": {names[k]: (float(positives[k] / split_rows[k]) if split_rows[k] else None) for k in range(3)},
            "oov_rate": {names[k]: ([float(x) for x in oov[k] / split_rows[k]] if split_rows[k] else None) for k in range(3)},
            "min_counts": [int(m) for m in self.min_counts],
            "options": self._options(),
            "vocabulary": self.vocabulary,
            "source": {k: fp[k] for k in ("source", "files", "digest")},
            "pipeline_version": PIPELINE_VERSION,
            "lines_read": lines,
            "rows": n,
            "skipped_lines": skipped,
            "skipped_by_file": skipped_by_file,
            "bad_line_examples": [e for r in reports for e in r["examples"]][:_MAX_EXAMPLES],
            "rows_dropped": int(sum(r["dropped"] for r in reports)),
            "vocab": "vocab.npy: for each field in order, the key of every index 1..n-1 (index 0 is OOV)",
            "build_seconds": round(elapsed, 3),
            "parse_seconds": round(parse_seconds, 3),
            "phase_seconds": {"parse": round(parse_seconds, 3), "split": round(split_seconds, 3),
                              "count": round(count_done - started - parse_seconds - split_seconds, 3),
                              "vocabulary": round(vocab_done - count_done, 3),
                              "encode": round(encode_done - vocab_done, 3),
                              "finish": round(time.perf_counter() - encode_done, 3)},
            "workers": self.workers,
            "segments": len(segs),
        }
        meta_tmp = tmp / "meta.json.tmp"
        meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(meta_tmp, tmp / "meta.json")
        return {**meta, "cache_bytes": sum(p.stat().st_size for p in tmp.iterdir())}

    def _vocabulary(self, tmp: Path, segs: list[Segment], sizes: list[list[int]], count_files: list[str]):
        """Merge segment tables by key; per field: kept categories (count >= min_count, or every
        category with ``vocabulary = "all"``) get indices 1.. by decreasing training count (ties:
        increasing key); the rest map to 0 (OOV)."""
        n_fields = len(self.cat_names)
        seg_keys = [np.load(_seg_path(tmp, s.index, "keys.npy"), mmap_mode="r") for s in segs]
        seg_counts = [np.load(p, mmap_mode="r") for p in count_files]
        offsets = [np.concatenate([[0], np.cumsum(sz)]).astype(np.int64) for sz in sizes]
        maps: list[list[np.ndarray]] = [[] for _ in segs]
        cardinalities, counts, vocab = [], [], []
        for f in range(n_fields):
            keys = [np.asarray(k[o[f]:o[f + 1]]) for k, o in zip(seg_keys, offsets)]
            cnts = [np.asarray(c[o[f]:o[f + 1]]) for c, o in zip(seg_counts, offsets)]
            if len(segs) == 1:
                g_keys, inverse, g_counts = keys[0], None, cnts[0]
            else:
                g_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
                g_counts = np.bincount(inverse, weights=np.concatenate(cnts), minlength=len(g_keys)).astype(np.int64)
            if self.vocabulary == "all":
                kept = np.arange(len(g_keys))
            else:
                kept = np.flatnonzero(g_counts >= max(1, self.min_counts[f]))
            kept = kept[np.lexsort((g_keys[kept], -g_counts[kept]))]
            remap = np.zeros(len(g_keys), dtype=np.int32)
            remap[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
            field_counts = np.empty(len(kept) + 1, dtype=np.int64)
            field_counts[1:] = g_counts[kept]
            field_counts[0] = int(g_counts.sum()) - int(field_counts[1:].sum())
            cardinalities.append(len(kept) + 1)
            counts.append(field_counts)
            vocab.append(g_keys[kept].astype(np.int64))
            start = 0
            for i, k in enumerate(keys):
                if inverse is None:
                    maps[i].append(remap)
                else:
                    maps[i].append(remap[inverse[start:start + len(k)]])
                start += len(k)
        for i, s in enumerate(segs):
            flat = np.concatenate(maps[i]) if maps[i] else np.zeros(0, np.int32)
            np.save(_seg_path(tmp, s.index, "map.npy"), flat.astype(np.int32))
        return cardinalities, counts, vocab

    def _allocate(self, tmp: Path, split_rows: np.ndarray, n_fields: int, n_dense: int) -> dict:
        """Final ``.npy`` files with their headers, pre-sized so workers can write anywhere."""
        targets = {}
        for k, name in enumerate(S.NAMES):
            n = int(split_rows[k])
            for key, dtype, shape in (("cat", np.int32, (n, n_fields)), ("dense", np.float32, (n, n_dense)),
                                      ("label", np.float32, (n,))):
                path = tmp / f"{name}.{key}.npy"
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
                with open(path, "wb") as f:
                    np.lib.format.write_array_header_1_0(f, header) if _fits_v1(header) else \
                        np.lib.format.write_array_header_2_0(f, header)
                    start = f.tell()
                    f.truncate(start + int(np.prod(shape)) * np.dtype(dtype).itemsize)
                targets[(k, key)] = {"path": str(path), "data_start": start}
        return targets


def _fits_v1(header: dict) -> bool:
    return len(repr(header)) < 60000


def _absolute(exc: BadLineError, segs: list[Segment]) -> BadLineError:
    """A bad line reported relative to a later segment of a file: count the lines before it."""
    seg = segs[exc.segment]
    before = 0
    with open_binary(seg.path) as f:
        left = seg.start
        while left > 0:
            data = f.read(min(left, 64 << 20))
            if not data:
                break
            before += data.count(b"\n")
            left -= len(data)
    return exc.at_line(before + exc.line)


def _absolute_examples(reports: list[dict], segs: list[Segment]) -> None:
    """Fill in segments' first line numbers from the lines read before them (same file)."""
    first = {}
    for s, r in zip(segs, reports):
        if s.first_line is not None:
            first[s.index] = s.first_line
        else:
            prev = segs[s.index - 1]
            first[s.index] = first[prev.index] + reports[prev.index]["lines"]
    for s, r in zip(segs, reports):
        for e in r["examples"]:
            if e.pop("local", False):
                e["line"] = e["line"] + first[s.index] - 1


def _clean_stale(root: Path) -> None:
    """Remove temporary build directories of processes on this host that no longer run."""
    host = socket.gethostname()
    for p in root.glob(".*.tmp-*"):
        try:
            rest = p.name.rsplit(".tmp-", 1)[1]
            h, pid, _ = rest.rsplit("-", 2)
            pid = int(pid)
        except (IndexError, ValueError):
            continue
        if h != host or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("removing %s (an interrupted build)", p)
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


# ---- reporting ---------------------------------------------------------------------------------
def print_summary(summary: dict) -> None:
    """A rich table: split sizes and positive rates, fields, skipped lines, speed, cache size."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    secs = summary["build_seconds"]
    console.print(f"[bold]{summary['name']}[/bold]: {summary['lines_read']:,} lines in {secs:.1f} s "
                  f"({summary['lines_read'] / max(secs, 1e-9):,.0f} lines/s), cache {summary['cache_bytes'] / 2**20:,.1f} MiB",
                  soft_wrap=True)
    t = Table()
    for col in ("split", "rows", "positive rate"):
        t.add_column(col, justify="right")
    for name, n in summary["splits"].items():
        rate = summary["positive_rate"][name]
        t.add_row(name, f"{n:,}", "-" if rate is None else f"{rate:.4f}")
    console.print(t)
    f = Table(title=f"{len(summary['cat_names'])} categorical fields ({len(summary['dense_names'])} dense)",
              title_justify="left")
    for col in ("field", "cardinality", "min count", "OOV train", "OOV test"):
        f.add_column(col, justify="right")
    oov = summary["oov_rate"]
    for i, name in enumerate(summary["cat_names"]):
        tr = oov["train"][i] if oov["train"] else None
        te = oov["test"][i] if oov["test"] else None
        f.add_row(name, f"{summary['cardinalities'][i]:,}", str(summary["min_counts"][i]),
                  "-" if tr is None else f"{tr:.2%}", "-" if te is None else f"{te:.2%}")
    console.print(f)
    extra = [f"skipped bad lines: {summary['skipped_lines']:,}"]
    if summary.get("rows_dropped"):
        extra.append(f"rows left out by sampling: {summary['rows_dropped']:,}")
    for e in summary.get("bad_line_examples", [])[:3]:
        extra.append(f"  e.g. {e['file']}, line {e['line']}, {e['field']}: {e['reason']}")
    extra.append(f"cache: {summary.get('path', '')}")
    console.print("\n".join(extra), soft_wrap=True, highlight=False)
