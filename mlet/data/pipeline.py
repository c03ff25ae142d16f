"""The one preparation pipeline every real dataset goes through: raw files -> cache directory.

A source (Criteo, Avazu, MovieLens, tabular) only says how to parse its files into rows of
(label, dense values, categorical keys) and how to split them; :class:`PreparedSource` does the
rest, identically for all. The pipeline lives in one module per concern:

* :mod:`mlet.data.source`: :class:`PreparedSource`, the base class of every file-backed source
  (prepare, load, read for prediction);
* :mod:`mlet.data.parsing`: what a source's ``parse`` gets and produces (:class:`ParseContext`,
  :class:`Chunk`), the bad- and short-line policies and :class:`BadLineError`;
* :mod:`mlet.data.segments`: pieces of raw files parsed by one worker each, line numbering;
* :mod:`mlet.data.phases`: the five phases of a build (parse, split, count, vocabulary, encode);
* :mod:`mlet.data.workers`: running a phase over segments in worker processes, progress bars;
* :mod:`mlet.data.allocator`: allocator tuning while building;
* :mod:`mlet.data.cache`: the cache directory's fingerprint and atomic creation;
* :mod:`mlet.data.summary`: the summary table and the short-line warning.

This module keeps the public names importable from where they always were.
"""

from mlet.data.parsing import ON_BAD_LINE, ON_SHORT_LINE, BadLineError, Chunk, ParseContext
from mlet.data.phases import PIPELINE_VERSION, KeyTable
from mlet.data.segments import Segment, text_segments
from mlet.data.source import VOCABULARIES, DataOptionError, PreparedSource, UnsupportedRead
from mlet.data.summary import print_summary
from mlet.data.workers import run_tasks

__all__ = ["BadLineError", "Chunk", "DataOptionError", "KeyTable", "ON_BAD_LINE", "ON_SHORT_LINE",
           "PIPELINE_VERSION", "ParseContext", "PreparedSource", "Segment", "UnsupportedRead", "VOCABULARIES",
           "print_summary", "run_tasks", "text_segments"]
