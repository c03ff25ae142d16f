"""What a source's ``parse`` gets (:class:`ParseContext`) and produces (:class:`Chunk`), and the
policies for lines that cannot be taken as they are:

* a **bad line** (a field that does not decode, too many fields, an empty line, undecodable bytes)
  stops the run with :class:`BadLineError`, naming file, line and field (``on_bad_line=error``), or
  is skipped and counted (``on_bad_line=skip``);
* a **short line** (fewer fields than the format has, the last one not empty: the form of copies
  that strip trailing empty fields) is a bad line (``on_short_line=error``), is padded with empty
  (missing) fields (``pad``) or skipped (``skip``); padded and skipped short lines are counted. A
  short line that ends in an empty field was not stripped (stripping removes every trailing
  separator): it is always a bad line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mlet.data.segments import LimitedReader, Segment
from mlet.data.textparse import LINE, Block, RowErrors, Tokens, field_text, open_binary, read_blocks, tokenize
from mlet.errors import MletError

ON_BAD_LINE = ("error", "skip")
ON_SHORT_LINE = ("error", "pad", "skip")
MAX_EXAMPLES = 10  # bad-line examples kept per segment (and in meta.json)

BAD_LINE_HINT = "set data.on_bad_line=skip to skip such lines and count them"
SHORT_LINE_HINT = ("a copy that stripped trailing empty fields? set data.on_short_line=pad to pad such lines with "
                   "missing values, or data.on_short_line=skip to skip them; both are counted")


class BadLineError(MletError, ValueError):
    """A raw line that cannot be parsed. ``str()`` names the file, the line and the field, then
    ``hint`` (what to set to get past it; empty where the caller accepts no such option)."""

    def __init__(self, path: str, line: int, field_name: str, reason: str, segment: int = -1, local: bool = False,
                 hint: str = BAD_LINE_HINT):
        self.path, self.line, self.field, self.reason = path, line, field_name, reason
        self.segment, self.local, self.hint = segment, local, hint
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"line {self.line}" if not self.local else f"line {self.line} of segment {self.segment}"
        return f"{self.path}, {where}, {self.field}: {self.reason}" + (f" ({self.hint})" if self.hint else "")

    def at_line(self, line: int) -> "BadLineError":
        return BadLineError(self.path, line, self.field, self.reason, hint=self.hint)

    def __reduce__(self):  # picklable across worker processes
        return (BadLineError, (self.path, self.line, self.field, self.reason, self.segment, self.local, self.hint))


@dataclass
class Chunk:
    """Parsed rows: ``label[n]`` (0/1), ``dense[n, D]`` (final values), ``keys[n, F]`` (int64
    categorical keys; equal keys are the same category), optionally ``split[n]`` codes."""

    label: np.ndarray
    dense: np.ndarray
    keys: np.ndarray
    split: np.ndarray | None = None


class ParseContext:
    """What a source's ``parse`` gets besides the segment: the bad- and short-line policies, the
    counts they keep, and progress.

    ``hints``: whether error messages suggest ``data.*`` settings (``False`` where they cannot be
    set, e.g. ``mlet-predict``)."""

    def __init__(self, segment: Segment, on_bad_line: str, progress: Callable[[int, int], None] | None = None,
                 on_short_line: str = "error", hints: bool = True):
        self.segment = segment
        self.on_bad_line = on_bad_line
        self.on_short_line = on_short_line
        self.hints = hints
        self.skipped = 0  # bad lines skipped
        self.padded = 0  # short lines padded
        self.short_skipped = 0  # short lines skipped
        self.dropped = 0  # rows left out on purpose (e.g. negative subsampling)
        self.lines = 0  # physical data lines read
        self.examples: list[dict] = []
        self.short_examples: list[dict] = []  # {"file", "line", "local"}, like ``examples``
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
            stream: Any = f if seg.end is None else LimitedReader(f, seg.end - seg.start)
            offset = seg.start
            for block in read_blocks(stream, block_bytes, first_line):
                block.offset = offset
                offset += block.size
                yield block

    def tokenize(self, block: Block, n_fields: int, delimiter: bytes) -> Tokens:
        """:func:`mlet.data.textparse.tokenize` under the short-line policy: short lines of the
        stripped form are padded and counted (``pad``), or recorded as problems of the whole line
        (``error``: a bad line; ``skip``: left out and counted by :meth:`check`)."""
        tokens = tokenize(block, n_fields, delimiter, pad_short=True)
        self.lines += tokens.n
        short = tokens.padded
        if short is None or not short.any():
            return tokens
        lines = block.first_line + np.flatnonzero(short)
        if self.on_short_line == "pad":
            self.padded += int(short.sum())
            self._short_example(lines)
        else:
            tokens.errors.add(short, LINE, f"{{found}} fields where {n_fields} are expected")
        return tokens

    def _short_example(self, lines: np.ndarray) -> None:
        """Short lines of the segment (numbers counted from its first line) as examples."""
        seg = self.segment
        known = seg.first_line is not None
        for line in lines[:max(0, MAX_EXAMPLES - len(self.short_examples))]:
            line = int(line) + (seg.first_line - 1 if known else 0)
            self.short_examples.append({"file": seg.path, "line": line, "local": not known})

    def short_line(self, path: str | os.PathLike, line: int) -> None:
        """A short line padded or skipped, at ``line`` of ``path`` (callers count it)."""
        if len(self.short_examples) < MAX_EXAMPLES:
            self.short_examples.append({"file": str(path), "line": int(line), "local": False})

    def reject(self, line: int, field_name: str, reason: str, path: str | None = None, short: bool = False) -> None:
        """One bad line: raise (``on_bad_line=error``) or count it. ``line`` counts from the
        segment's first line unless ``path`` names another file (then it is that file's line).
        ``short``: a short line under ``on_short_line=error`` (its message says how to accept it)."""
        seg = self.segment
        line = int(line)
        known = path is not None or seg.first_line is not None
        absolute = line if path is not None else line + (seg.first_line - 1 if known else 0)
        path = path or seg.path
        if self.on_bad_line == "error":
            hint = "" if not self.hints else SHORT_LINE_HINT if short else BAD_LINE_HINT
            raise BadLineError(path, absolute, field_name, reason, seg.index, local=not known, hint=hint)
        self.skipped += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {"file": path, "line": absolute, "local": not known, "field": field_name, "reason": reason}
            )

    def check(self, errors: RowErrors, block: Block, tokens: Tokens, names: Sequence[str]) -> np.ndarray:
        """Rows of a tokenised block to keep; bad rows are raised or counted (first problem of each
        row: line-level problems, then fields left to right); short lines under
        ``on_short_line=skip`` are left out and counted."""
        keep = ~errors.bad
        bad = errors.bad
        if self.on_short_line == "skip" and tokens.padded is not None:
            short = tokens.padded & (errors.column == LINE)  # the short line is its first problem
            if short.any():
                self.short_skipped += int(short.sum())
                self._short_example(block.first_line + np.flatnonzero(short))
                bad = bad & ~short
        rows = np.flatnonzero(bad)
        if self.on_bad_line == "skip" and len(self.examples) >= MAX_EXAMPLES:
            self.skipped += len(rows)
            return keep
        for i in rows:
            col = int(errors.column[i])
            fmt = errors.reasons[int(errors.reason[i])]
            found = int(tokens.found[i]) if tokens.found is not None else len(names)
            if col == LINE:
                label = "whole line"
                value = ""
            else:
                label = f"field {col + 1} ({names[col]})" if col < len(names) else f"field {col + 1}"
                value = field_text(block.buf, int(tokens.starts[i, col]), int(tokens.ends[i, col]))
            short = tokens.padded is not None and bool(tokens.padded[i]) and col == LINE
            self.reject(block.first_line + i, label, fmt.format(found=found, value=value), short=short)
        return keep

    def counts(self) -> dict:
        """What this segment's parse counted (for the build's summary)."""
        return {"lines": self.lines, "skipped": self.skipped, "padded": self.padded,
                "short_skipped": self.short_skipped, "dropped": self.dropped, "examples": self.examples,
                "short_examples": self.short_examples}
