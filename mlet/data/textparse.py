"""Vectorised parsing of delimited text without quoting (Criteo TSV, Avazu CSV).

A file is read in blocks of whole lines; a block becomes one ``uint8`` array and the positions of
its separators. Fields are then decoded column-wise with numpy, never one Python object per value:

* :func:`tokenize` finds each field's ``[start, end)`` byte range, ``[lines, fields]``. A line with
  the expected number of fields takes a fast path (one reshape); otherwise short lines of the
  stripped form (copies that dropped trailing empty fields) can be padded with empty fields and
  marked (``Tokens.padded``) for the caller's short-line policy to count, flag or skip; every other
  count is a bad line.
* decoders turn byte ranges into values and a per-row "bad" mask: :func:`decode_label` (0/1),
  :func:`decode_int` (signed decimal), :func:`decode_hex` (fixed-width hex, Criteo categories),
  :func:`decode_token` (any string -> an int64 key, exact for tokens of at most 8 bytes).

Every problem is recorded in a :class:`RowErrors` (first problem of each row: field and reason),
from which the caller builds a message naming file, line and field, or counts skipped lines.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

NL, CR, SPACE, MINUS = 10, 13, 32, 45
PAD = 16  # zero bytes after every block so that 8- or 16-byte loads never run past the end
LINE = -1  # RowErrors field index of a problem with the whole line

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """The raw bytes of ``path``; ``.gz`` files are decompressed on the fly."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=0)


@dataclass
class Block:
    """Whole lines of one file. ``buf[:size]`` ends with a newline, then :data:`PAD` zero bytes."""

    buf: np.ndarray
    size: int
    first_line: int  # physical (1-based) line number of the block's first line
    offset: int = 0  # byte offset of buf[0] in the file (set by the reader of a segment)


def read_blocks(stream: BinaryIO, block_bytes: int, first_line: int = 1) -> Iterator[Block]:
    """Cut ``stream`` into blocks of whole lines of about ``block_bytes`` bytes each.

    Bytes are read straight into the block's buffer; the partial line at its end is moved to the
    front of the next one. A last line without a final newline gets one. ``first_line`` is the
    number of the stream's first line (2 after a header already consumed).
    """
    line = first_line
    carry = np.zeros(0, dtype=np.uint8)
    size = max(int(block_bytes), 1)
    while True:
        buf = np.empty(len(carry) + size + PAD + 1, dtype=np.uint8)
        buf[: len(carry)] = carry
        filled = len(carry)
        view = memoryview(buf)
        got = _read_into(stream, view[filled: filled + size])
        filled += got
        eof = got == 0
        if eof:
            if filled == 0:
                return
            if buf[filled - 1] != NL:
                buf[filled] = NL
                filled += 1
            cut = filled
        else:
            nl = np.flatnonzero(buf[:filled] == NL)
            if not len(nl):  # no newline yet: a line longer than the block, read on
                carry = buf[:filled].copy()
                size *= 2
                continue
            cut = int(nl[-1]) + 1
        carry = buf[cut:filled].copy()
        buf[cut: cut + PAD] = 0
        yield Block(buf=buf[: cut + PAD], size=cut, first_line=line)
        line += int(np.count_nonzero(buf[:cut] == NL))
        if eof:
            return


def _read_into(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` as far as the stream allows; 0 only at the end of the stream."""
    total = 0
    while total < len(view):
        if hasattr(stream, "readinto"):
            n = stream.readinto(view[total:])
        else:
            data = stream.read(len(view) - total)
            n = len(data)
            view[total: total + n] = data
        if not n:
            break
        total += n
    return total


def read_header(stream: BinaryIO) -> tuple[bytes, int]:
    """The first line of ``stream`` without its line end, and its length in bytes with the newline.

    Reads byte by byte up to the newline, so the stream is left exactly after the header."""
    out = bytearray()
    while True:
        c = stream.read(1)
        if not c:
            break
        out += c
        if c == b"\n":
            break
    return bytes(out).rstrip(b"\r\n"), len(out)


# ---- errors ------------------------------------------------------------------------------------
@dataclass
class RowErrors:
    """The first problem of each row of a block: ``column[i]`` (-2: none, -1: the line) and a reason."""

    n: int
    column: np.ndarray = field(init=False)
    reason: np.ndarray = field(init=False)
    reasons: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.column = np.full(self.n, -2, dtype=np.int32)
        self.reason = np.zeros(self.n, dtype=np.int16)

    def add(self, mask: np.ndarray, field_index: int | np.ndarray, reason: str) -> None:
        """Record ``reason`` for the rows in ``mask`` that have no problem yet (first problem wins,
        so callers check line-level problems first, then fields left to right). ``reason`` may
        contain ``{found}`` (fields found on the line) and ``{value}`` (the field's text)."""
        new = mask & (self.column == -2)
        if not new.any():
            return
        self.reasons.append(reason)
        self.column[new] = field_index if np.isscalar(field_index) else np.asarray(field_index)[new]
        self.reason[new] = len(self.reasons) - 1

    @property
    def bad(self) -> np.ndarray:
        return self.column != -2

    def any(self) -> bool:
        return bool(self.bad.any())


# ---- tokenising --------------------------------------------------------------------------------
@dataclass
class Tokens:
    starts: np.ndarray  # [n, F] int64
    ends: np.ndarray  # [n, F] int64
    line_start: np.ndarray  # [n]
    line_end: np.ndarray  # [n] (position of the newline)
    found: np.ndarray | None  # [n] fields found per line (None: all lines had exactly F)
    errors: RowErrors
    padded: np.ndarray | None = None  # [n] short lines of the stripped form, padded (None: none can be)

    @property
    def n(self) -> int:
        return len(self.line_start)


def tokenize(block: Block, n_fields: int, delimiter: bytes, pad_short: bool) -> Tokens:
    """Field byte ranges of every line of ``block``.

    ``pad_short``: a line with fewer than ``n_fields`` fields whose last field is not empty is
    taken as a copy with stripped trailing separators, padded with empty fields and marked in
    ``Tokens.padded`` (the caller decides whether that is accepted, see
    :meth:`mlet.data.parsing.ParseContext.tokenize`). A short line
    ending in an empty field was not stripped (stripping removes all trailing separators), so it
    is a bad line, as is any longer line and, without ``pad_short``, any shorter one.
    """
    buf = block.buf[: block.size]
    delim = delimiter[0]
    sep = None
    if delim < NL:  # tab: one comparison finds both separators, unless other control bytes occur
        sep = np.flatnonzero(buf <= NL)
        at = buf[sep]
        if not ((at == delim) | (at == NL)).all():
            sep = None
    if sep is None:
        is_sep = buf == delim
        is_sep |= buf == NL
        sep = np.flatnonzero(is_sep)
        del is_sep
    is_nl = buf[sep] == NL
    line_end = sep[is_nl]
    n = len(line_end)
    line_start = np.empty(n, dtype=np.int64)
    line_start[0:1] = 0
    line_start[1:] = line_end[:-1] + 1
    prev = np.empty(len(sep), dtype=np.int64)
    prev[0:1] = 0
    prev[1:] = sep[:-1] + 1  # a field starts one byte after the previous separator
    errors = RowErrors(n)
    padded = None

    if len(sep) == n * n_fields and is_nl[n_fields - 1 :: n_fields].all():
        ends = sep.reshape(n, n_fields)
        starts = prev.reshape(n, n_fields)
        found = None
    else:
        line_of = np.cumsum(is_nl) - is_nl  # the newline belongs to its own line
        found = np.bincount(line_of, minlength=n)
        first = np.cumsum(found) - found
        j = np.arange(len(sep)) - first[line_of]
        ends = np.repeat(line_end, n_fields).reshape(n, n_fields)
        starts = ends.copy()
        keep = np.flatnonzero(j < n_fields)
        flat = line_of[keep] * n_fields + j[keep]
        ends.ravel()[flat] = sep[keep]
        starts.ravel()[flat] = prev[keep]
        del line_of, j, keep, flat
        rows = np.arange(n)
        last = np.minimum(found, n_fields) - 1
        last_empty = starts[rows, last] == ends[rows, last]
        errors.add(line_start == line_end, LINE, "empty line")
        short = found < n_fields
        if pad_short:
            padded = short & ~last_empty & (line_start < line_end)
            errors.add(
                short & last_empty,
                LINE,
                f"{{found}} fields where {n_fields} are expected, and the line ends with an empty field "
                "(not a copy with stripped trailing separators)",
            )
        else:
            errors.add(short, LINE, f"{{found}} fields where {n_fields} are expected")
        errors.add(found > n_fields, LINE, f"{{found}} fields where {n_fields} are expected")

    # Windows line ends: the carriage return belongs to no field.
    if block.size and (buf[line_end[line_end > line_start] - 1] == CR).any():
        cr = np.zeros(n, dtype=bool)
        nonempty = line_end > line_start
        cr[nonempty] = buf[line_end[nonempty] - 1] == CR
        at_end = (ends == line_end[:, None]) & cr[:, None]
        ends = ends.copy()
        ends[at_end] -= 1
        starts = np.minimum(starts, ends)

    # Bytes that are not UTF-8 (checked only on lines with a byte >= 0x80; ASCII is the rule).
    high = np.flatnonzero(buf >= 0x80) if buf.max(initial=0) >= 0x80 else ()
    if len(high):
        lines = np.unique(np.searchsorted(line_end, high))
        for i in lines:
            raw = bytes(buf[line_start[i] : line_end[i]])
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                pos = line_start[i] + exc.start
                row_ends = ends[i]
                f = int(np.searchsorted(row_ends, pos, side="left"))
                mask = np.zeros(n, dtype=bool)
                mask[i] = True
                errors.add(mask, min(f, n_fields - 1), f"undecodable byte 0x{raw[exc.start]:02x} (not UTF-8)")
    return Tokens(starts=starts, ends=ends, line_start=line_start, line_end=line_end, found=found, errors=errors,
                  padded=padded)


# ---- decoders ----------------------------------------------------------------------------------
def _words(buf: np.ndarray) -> np.ndarray:
    """``w[p]`` = the 8 bytes at ``buf[p:p+8]`` as one little-endian uint64 (an unaligned view)."""
    return np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))


def field_bytes(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``[n, width]`` bytes from each start (bytes past a field's end are whatever follows it)."""
    words = _words(buf)
    cols = [words[np.minimum(starts + 8 * k, len(words) - 1)] for k in range(-(-width // 8))]
    out = np.stack(cols, axis=1) if len(cols) > 1 else cols[0][:, None]
    return out.view(np.uint8).reshape(len(starts), -1)[:, :width]


def field_text(buf: np.ndarray, start: int, end: int, limit: int = 40) -> str:
    raw = bytes(buf[start:end])
    text = raw[:limit].decode("utf-8", errors="backslashreplace")
    return repr(text + ("..." if len(raw) > limit else ""))


def decode_label(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A label field ``0`` or ``1`` -> (int8 values, bad mask)."""
    length = ends - starts
    b = buf[np.minimum(starts, len(buf) - 1)]
    ok = (length == 1) & ((b == 48) | (b == 49))
    return (b - 48).astype(np.int8) * ok, ~ok


_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_LOW4 = np.uint64(0x0F0F0F0F0F0F0F0F)


def _byte_ge(w: np.ndarray, k: int) -> np.ndarray:
    """Per byte of ``w`` (all bytes < 0x80): 0x80 where the byte is >= ``k`` (1 <= k <= 0x80)."""
    return ((w | _HIGH) - _ONES * np.uint64(k)) & _HIGH


def _lengths_mask(length: np.ndarray) -> np.ndarray:
    """0xFF in the first ``length`` (0..8) bytes of a little-endian word, 0 elsewhere."""
    shift = (8 * np.clip(length, 0, 8)).astype(np.uint64)
    with np.errstate(over="ignore"):
        return np.where(length >= 8, np.uint64(0xFFFFFFFFFFFFFFFF), (np.uint64(1) << shift) - np.uint64(1))


def _digits_ok(w: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Every used byte of ``w`` is an ASCII digit (``used``: 0xFF per byte in use)."""
    ascii_ = (w & _HIGH) == 0
    digit = _byte_ge(w, 0x30) & ~_byte_ge(w, 0x3A)
    return ascii_ & ((digit & used & _HIGH) == (used & _HIGH))


def _eight_digits(w: np.ndarray) -> np.ndarray:
    """Value of 8 ASCII digits in a little-endian word (first digit in the lowest byte; zero bytes
    count as leading zeros). The SWAR reduction of simdjson's ``parse_eight_digits_unrolled``."""
    with np.errstate(over="ignore"):
        w = ((w & _LOW4) * np.uint64(2561)) >> np.uint64(8)
        w = ((w & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(6553601)) >> np.uint64(16)
        return ((w & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(42949672960001)) >> np.uint64(32)


def decode_int(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed decimal integers -> (int64 values (0 if missing), missing mask, bad mask).

    Numbers of up to 8 characters (sign included) are read 8 bytes at a time; longer ones (rare
    in CTR logs) digit by digit; more than 18 digits is an error.
    """
    length = ends - starts
    missing = length == 0
    w = _words(buf)[np.minimum(starts, len(buf) - 8)]
    neg = ((w & np.uint64(0xFF)) == np.uint64(MINUS)) & ~missing
    w = np.where(neg, w >> np.uint64(8), w)
    ndig = length - neg
    used = _lengths_mask(ndig)
    bad = (neg & (ndig == 0)) | ~_digits_ok(w, used) & (ndig > 0)
    # right-align the digits in the word so that the unused (zeroed) bytes are leading zeros
    shift = (8 * (8 - np.clip(ndig, 0, 8))).astype(np.uint64)
    with np.errstate(over="ignore"):
        aligned = np.where(ndig >= 8, w, (w & used) << shift)
    values = _eight_digits(aligned).astype(np.int64)
    long_rows = np.flatnonzero(ndig > 8)
    if len(long_rows):
        bad[long_rows] = ndig[long_rows] > 18
        s = starts[long_rows] + neg[long_rows]
        ln = ndig[long_rows]
        v = np.zeros(len(long_rows), dtype=np.int64)
        okl = np.ones(len(long_rows), dtype=bool)
        for k in range(int(min(ln.max(), 18))):
            d = buf[np.minimum(s + k, len(buf) - 1)].astype(np.int64) - 48
            inside = k < ln
            okl &= ~inside | ((d >= 0) & (d <= 9))
            v = np.where(inside, v * 10 + d, v)
        bad[long_rows] |= ~okl
        values[long_rows] = v
    values = np.where(neg, -values, values)
    values[missing | bad] = 0
    return values, missing, bad


def _hex_pairs() -> np.ndarray:
    """For every little-endian pair of bytes ``c0 | c1 << 8``: ``0x100 | byte(c0 c1)`` if both are
    hex digits, else 0 (a 128 KiB table: one lookup decodes and validates two characters)."""
    lo, hi = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")  # c0 (low byte), c1
    h0, h1 = _HEX[lo].astype(np.uint16), _HEX[hi].astype(np.uint16)
    ok = (h0 < 16) & (h1 < 16)
    table = np.zeros(1 << 16, dtype=np.uint16)
    table[(lo | (hi << 8)).ravel()] = np.where(ok, 0x100 | (h0 << 4) | h1, 0).ravel()
    return table


_HEX_PAIRS = _hex_pairs()


def decode_hex(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex strings of exactly 8 digits (Criteo categories) -> (int64 values, missing, bad).

    One 8-byte load per value, then four lookups of character pairs in :data:`_HEX_PAIRS`."""
    length = ends - starts
    missing = length == 0
    w = _words(buf)[np.minimum(starts, len(buf) - 8)]
    pairs = _HEX_PAIRS[w.view(np.uint16)].reshape(-1, 4)
    ok = (pairs[:, 0] & pairs[:, 1] & pairs[:, 2] & pairs[:, 3]) >> 8
    bad = ~missing & ((length != 8) | (ok == 0))
    values = np.ascontiguousarray(pairs.astype(np.uint8)).view(">u4").ravel().astype(np.int64)
    values[missing | bad] = 0
    return values, missing, bad


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole word (uint64, wraps)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def decode_token(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Any string -> an int64 key; the empty string -> 0.

    Tokens of 1..8 bytes are packed into the key exactly (big-endian, zero padded: distinct
    tokens get distinct keys). Longer tokens get a 64-bit FNV-1a hash (mixed), so two of them, or
    one and a short token, collide only with probability ~ n^2 / 2^64.
    """
    length = ends - starts
    words = _words(buf)[np.minimum(starts, len(buf) - 8)]
    short = length <= 8
    keys = (words & _lengths_mask(length)).byteswap()
    long_rows = np.flatnonzero(~short)
    if len(long_rows):
        s, ln = starts[long_rows], length[long_rows]
        h = np.full(len(long_rows), _FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(int(ln.max())):
                inside = k < ln
                byte = buf[np.minimum(s + k, len(buf) - 1)].astype(np.uint64)
                h = np.where(inside, (h ^ byte) * _FNV_PRIME, h)
        keys[long_rows] = _mix64(h ^ ln.astype(np.uint64))
    keys[length == 0] = 0
    return keys.view(np.int64)


def token_keys(tokens: list[bytes]) -> np.ndarray:
    """:func:`decode_token` for a list of byte strings (small inputs: MovieLens, headers)."""
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buf = np.zeros(int(ends[-1]) + PAD, dtype=np.uint8)
    buf[: ends[-1]] = np.frombuffer(b"".join(tokens), dtype=np.uint8)
    return decode_token(buf, starts, ends)
