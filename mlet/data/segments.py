"""Pieces of raw files that one worker parses each (:class:`Segment`), cut at line starts, and
the line numbering across them (a segment after the first of its file learns its first line
number only once the lines before it are counted)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from mlet.data.textparse import open_binary


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


class LimitedReader:
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


def line_cuts(path: str, start: int, size: int, pieces: int) -> list[int]:
    """Byte offsets ``[start, ..., size]`` cutting ``[start, size)`` of a file into up to
    ``pieces`` parts of about equal size, each starting at a line start."""
    cuts = [start]
    with open(path, "rb") as f:
        for j in range(1, pieces):
            f.seek(start + (size - start) * j // pieces)
            f.readline()
            cut = f.tell()
            if cuts[-1] < cut < size:
                cuts.append(cut)
    cuts.append(size)
    return cuts


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
        cuts = line_cuts(path, head, size, n)
        for j in range(len(cuts) - 1):
            segments.append(
                Segment(len(segments), fi, path, cuts[j], cuts[j + 1], first if j == 0 else None, cuts[j + 1] - cuts[j])
            )
    return segments


def lines_before(seg: Segment) -> int:
    """Lines of ``seg``'s file before the segment starts (counted by reading them)."""
    before = 0
    with open_binary(seg.path) as f:
        left = seg.start
        while left > 0:
            data = f.read(min(left, 64 << 20))
            if not data:
                break
            before += data.count(b"\n")
            left -= len(data)
    return before


def first_lines(segs: list[Segment], lines_read: list[int]) -> list[int]:
    """The first line number of every segment, from the lines read in the segments before it
    (same file)."""
    first: list[int] = []
    for s in segs:
        if s.first_line is not None:
            first.append(s.first_line)
        else:
            first.append(first[s.index - 1] + lines_read[s.index - 1])
    return first
