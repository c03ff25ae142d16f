"""The vectorised decoders against plain Python on hand-made and random fields."""

from __future__ import annotations

import io
import random

import numpy as np

from mlet.data import textparse as tp


def block_of(text: bytes, n_fields: int, delimiter=b"\t", pad=True):
    blk = next(tp.read_blocks(io.BytesIO(text), 1 << 20))
    return blk, tp.tokenize(blk, n_fields, delimiter, pad_short=pad)


def test_read_blocks_keeps_lines_whole_and_numbers_them():
    text = b"".join(b"%d\tx\n" % i for i in range(1000)) + b"last\tline"  # no final newline
    blocks = list(tp.read_blocks(io.BytesIO(text), 64))
    joined = b"".join(bytes(b.buf[: b.size]) for b in blocks)
    assert joined == text + b"\n"
    assert all(bytes(b.buf[b.size - 1 : b.size]) == b"\n" for b in blocks)
    firsts = [b.first_line for b in blocks]
    counts = [bytes(b.buf[: b.size]).count(b"\n") for b in blocks]
    assert firsts == [1 + sum(counts[:i]) for i in range(len(blocks))]


def test_ints_against_python():
    rng = random.Random(0)
    values = ["", "0", "-1", "-0", "7", "12345678", "-1234567", "99999999", "123456789", "-123456789012",
              "999999999999999999", "1.5", "abc", "-", "1-", " 1", "1e3", "+5", "0x10", "\u00e9"]
    values += [str(rng.randrange(-10**12, 10**12)) for _ in range(200)]
    text = ("\t".join(values) + "\n").encode()
    blk, t = block_of(text, len(values))
    got, missing, bad = tp.decode_int(blk.buf, t.starts[0], t.ends[0])
    for v, g, m, b in zip(values, got, missing, bad):
        if v == "":
            assert m and not b
            continue
        try:
            expected = int(v) if v.strip() == v and v.lstrip("-").isdigit() and v.isascii() else None
        except ValueError:
            expected = None
        if expected is None:
            assert b, v
        else:
            assert not b and g == expected, (v, g)


def test_hex_against_python():
    rng = random.Random(1)
    values = ["", "00000000", "ffffffff", "FFFFFFFF", "8b2f7c1A", "1234567", "123456789", "1234567g", "zzzzzzzz",
              "12 45678", "-1234567"]
    values += [f"{rng.getrandbits(32):08x}" for _ in range(300)]
    blk, t = block_of(("\t".join(values) + "\n").encode(), len(values))
    got, missing, bad = tp.decode_hex(blk.buf, t.starts[0], t.ends[0])
    for v, g, m, b in zip(values, got, missing, bad):
        ok = len(v) == 8 and all(c in "0123456789abcdefABCDEF" for c in v)
        assert m == (v == "") and b == (v != "" and not ok), v
        if ok:
            assert g == int(v, 16), v


def test_token_keys_are_exact_for_short_tokens_and_distinct_for_long():
    tokens = [b"", b"a", b"a\x01", b"ab", b"abcdefgh", b"abcdefgi", b"abcdefghi", b"abcdefghj", b"\xc3\xa9t\xc3\xa9",
              b"administrator", b"entertainment"]
    keys = tp.token_keys(tokens)
    assert keys[0] == 0 and len(set(keys.tolist())) == len(tokens)
    short = [t for t in tokens if 0 < len(t) <= 8 and t.isascii()]
    order = np.argsort(tp.token_keys(short), kind="stable")
    assert [short[i] for i in order] == sorted(short)  # short ASCII tokens order as their bytes
    assert tp.token_keys([b"administrator"])[0] == keys[9]  # deterministic


def test_tokenize_pads_stripped_lines_and_flags_the_rest():
    text = b"1\t2\t3\n1\t2\n1\t2\t\n\n1\t2\t3\t4\n1\t2\t3\r\n"
    blk, t = block_of(text, 3)
    assert t.found.tolist() == [3, 2, 3, 1, 4, 3]
    bad = t.errors.bad.tolist()
    assert bad == [False, False, False, True, True, False]
    assert (t.ends - t.starts)[1].tolist() == [1, 1, 0]  # padded
    assert (t.ends - t.starts)[5].tolist() == [1, 1, 1]  # the carriage return is not data
    blk, t = block_of(text, 3, pad=False)
    assert t.errors.bad.tolist() == [False, True, False, True, True, False]


def test_undecodable_byte_is_located():
    blk, t = block_of(b"1\tab\xffcd\tz\n1\t\xc3\xa9\tz\n", 3)
    assert t.errors.bad.tolist() == [True, False]
    assert t.errors.column[0] == 1 and "0xff" in t.errors.reasons[t.errors.reason[0]]
