"""Allocator tuning for the build (glibc only)."""

from __future__ import annotations

import ctypes
from contextlib import contextmanager


@contextmanager
def malloc_kept():
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
