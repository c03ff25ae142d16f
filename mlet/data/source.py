"""The base class of every file-backed source, :class:`PreparedSource`: ``prepare()`` builds the
cache once (:func:`mlet.data.phases.build`, in a directory of :mod:`mlet.data.cache`) and reuses
it, ``load()`` maps it, ``iter_chunks()`` / ``prediction_source()`` read raw files without a cache
(``mlet-predict``)."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mlet.data import cache, phases
from mlet.data.allocator import malloc_kept
from mlet.data.arrays import CTRArrays
from mlet.data.parsing import ON_BAD_LINE, ON_SHORT_LINE, Chunk, ParseContext
from mlet.data.segments import Segment
from mlet.data.summary import print_summary, warn_short_lines
from mlet.errors import MletError

log = logging.getLogger("mlet.data")

VOCABULARIES = ("train", "all")


class DataOptionError(MletError, ValueError):
    """A data option (``data.*``) with a value the source does not accept."""


class UnsupportedRead(MletError):
    """A raw file a source cannot read for prediction (a form or dataset it has no reader for)."""


class PreparedSource:
    """Base of every file-backed source: ``prepare()`` builds (or reuses) the cache, ``load()``
    returns it as memory-mapped :class:`CTRArrays`.

    Subclasses set ``dense_names`` / ``cat_names`` / ``min_counts`` and implement
    :meth:`raw_files`, :meth:`options`, :meth:`segments`, :meth:`parse` and :meth:`assign`; one
    that can read raw files for prediction overrides :meth:`prediction_source`.

    Args common to all sources:
        cache_dir: root of the data cache (``${paths.data_dir}``).
        on_bad_line: ``error`` (stop at the first bad line, naming file, line and field) or
            ``skip`` (skip bad lines, count them in the summary and ``meta.json``).
        on_short_line: lines with fewer fields than the format's whose last field is not empty
            (copies that stripped trailing empty fields): ``error`` (a bad line, see
            ``on_bad_line``), ``pad`` (padded with missing values) or ``skip``; padded and skipped
            lines are counted in the summary, a warning and ``meta.json`` (``short_lines``).
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
    SHORT_LINE_POLICIES = ON_SHORT_LINE  # the policies this source can apply
    # sources with protocols: protocol -> its default min count, and those with full vocabularies
    UNLABELED_FORM = False  # whether raw files without the label column can be read for prediction
    PROTOCOLS: dict[str, int] = {}
    FULL_VOCABULARY_PROTOCOLS: tuple[str, ...] = ()

    def __init__(self, cache_dir: str | os.PathLike = "data_cache", on_bad_line: str = "error",
                 workers: int | None = None, block_bytes: int = 4 << 20, progress: bool = True,
                 segment_bytes: int = 64 << 20, on_short_line: str = "error") -> None:
        if on_bad_line not in ON_BAD_LINE:
            raise DataOptionError(f"data.on_bad_line must be one of {ON_BAD_LINE}, got {on_bad_line!r}")
        if on_short_line not in self.SHORT_LINE_POLICIES:
            raise DataOptionError(f"data.on_short_line must be one of {self.SHORT_LINE_POLICIES} for "
                                  f"{type(self).__name__}, got {on_short_line!r}")
        self.cache_dir = Path(cache_dir)
        self.on_bad_line = on_bad_line
        self.on_short_line = on_short_line
        self.workers = int(workers) if workers else min(os.cpu_count() or 1, 8)
        self.block_bytes = int(block_bytes)
        self.progress = bool(progress)
        self.segment_bytes = int(segment_bytes)
        self.built = False  # whether the last prepare() built the cache (False: reused)
        self.last_summary: dict | None = None
        self.hints = True  # error messages suggest data.* settings (off where they cannot be set)

    def _use_protocol(self, protocol: str, min_count: int | None, vocabulary: str | None) -> None:
        """Set ``protocol``, ``min_count`` (``None``: the protocol's) and ``vocabulary``
        (``None``: ``all`` for a full-vocabulary protocol at min count 1, else ``train``)."""
        if protocol not in self.PROTOCOLS:
            raise DataOptionError(f"data.protocol must be one of {sorted(self.PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.min_count = int(min_count) if min_count is not None else self.PROTOCOLS[protocol]
        full = protocol in self.FULL_VOCABULARY_PROTOCOLS and self.min_count <= 1
        self.vocabulary = vocabulary or ("all" if full else "train")

    def _pieces(self) -> int:
        """Segments per file: one per worker (each segment has its own hash tables, merged at the
        end, so more segments cost more work)."""
        return max(1, self.workers)

    # -- what subclasses provide -------------------------------------------------------------
    def raw_files(self) -> list[Path]:
        raise NotImplementedError

    def options(self) -> dict:
        """Everything besides the raw files and the line policies that changes the prepared arrays."""
        raise NotImplementedError

    def segments(self) -> list[Segment]:
        raise NotImplementedError

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        raise NotImplementedError

    def assign(self, labels: np.ndarray, rows_per_file: list[int], presplit: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def fetch(self) -> None:
        """Obtain raw files that are downloaded rather than given (MovieLens)."""

    def prediction_source(self, raw: str | os.PathLike, labeled: bool = True) -> "PreparedSource":
        """This source (same options, same parser) reading ``raw`` for prediction: every row in
        file order, nothing skipped (see :meth:`for_reading`). Sources without a reader for new
        files raise :class:`UnsupportedRead`."""
        raise UnsupportedRead(f"{type(self).__name__} runs are not supported by prediction yet")

    def for_reading(self, labeled: bool = True) -> "PreparedSource":
        """A copy of this source for :meth:`prediction_source`: one worker, no progress, a bad
        line stops, and so does a short line unless this source pads them (skipping would shift
        every row after it); error messages suggest no ``data.*`` setting."""
        if not labeled and not self.UNLABELED_FORM:
            raise UnsupportedRead(f"{type(self).__name__} reads its training format only (with the label column); "
                                  "it has no unlabeled form")
        reader = copy.copy(self)
        reader.on_bad_line = "error"
        reader.on_short_line = "pad" if self.on_short_line == "pad" else "error"
        reader.workers, reader.progress, reader.hints = 1, False, False
        return reader

    # -- parsing -----------------------------------------------------------------------------
    def parse_context(self, segment: Segment, progress: Callable[[int, int], None] | None = None) -> ParseContext:
        """The context :meth:`parse` gets: this source's line policies, progress."""
        return ParseContext(segment, self.on_bad_line, progress, on_short_line=self.on_short_line, hints=self.hints)

    # -- the cache ---------------------------------------------------------------------------
    def cache_options(self) -> dict:
        """:meth:`options`, the line policies and a non-default vocabulary: the options in the
        cache key (and ``meta.json``)."""
        options = {**self.options(), "on_bad_line": self.on_bad_line, "on_short_line": self.on_short_line}
        if self.vocabulary not in VOCABULARIES:
            raise DataOptionError(f"vocabulary must be one of {VOCABULARIES}, got {self.vocabulary!r}")
        if self.vocabulary != "train":
            if any(m > 1 for m in self.min_counts):
                raise DataOptionError(f"{self.name}: a vocabulary over all rows (vocabulary=all) keeps every "
                                      f"category: min_count must be 1, got {max(self.min_counts)}")
            options = {**options, "vocabulary": self.vocabulary}
        return options

    def fingerprint(self) -> dict:
        return cache.fingerprint(f"{type(self).__module__}.{type(self).__qualname__}", self.cache_options(),
                                 self.raw_files(), phases.PIPELINE_VERSION)

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
        cache.clean_stale(self.cache_dir)
        if cache.is_complete(final):
            self.built = False
            log.info("%s: using the prepared cache %s", self.name, final)
            warn_short_lines(json.loads((final / "meta.json").read_text()))  # on every use, not the first only
            return final
        with cache.building(final) as tmp, malloc_kept():
            summary = phases.build(self, tmp, fp)
        self.built = True
        summary["path"] = str(final)
        self.last_summary = summary
        warn_short_lines(summary)
        if self.progress:
            print_summary(summary)
        log.info("%s: prepared %s", self.name, final)
        return final

    def load(self) -> CTRArrays:
        return CTRArrays.load(self.prepare(), mmap=True)

    def iter_chunks(self) -> Iterator[Chunk]:
        """The parsed rows of this source's raw files, in file order, streaming, without building
        a cache (``mlet-predict``: see :meth:`prediction_source`).

        The same parser as :meth:`prepare`, one segment per file, in this process. Every row read
        is yielded in order (a source that leaves rows out on purpose, e.g. negative subsampling,
        must be configured not to); with ``on_bad_line=error`` a bad line raises
        :class:`~mlet.data.parsing.BadLineError` naming its file, line and field."""
        workers = self.workers
        self.workers = 1  # one segment per file: absolute line numbers, file order
        try:
            segs = self.segments()
        finally:
            self.workers = workers
        for seg in segs:
            ctx = self.parse_context(seg)
            for chunk in self.parse(seg, ctx):
                if phases.check_chunk(self, chunk):
                    yield chunk
            if ctx.dropped or ctx.short_skipped:
                raise RuntimeError(f"{type(self).__name__} left {ctx.dropped + ctx.short_skipped} rows of {seg.path} "
                                   "out (sampling or skipped short lines): not a file-order parse")
