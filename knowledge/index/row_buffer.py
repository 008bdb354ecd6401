"""Float32 row arrays for vector scans, in memory advised for transparent huge pages.

A flat search reads every row of an index once per query, so it is bound by memory and the TLB: on the
2-core VM of bench/RESULTS.md, faiss's scan of 8.4k x 384 rows took 195 us in 2 MiB pages against 246 us
in 4 KiB pages (the same faiss call, the same rows). Arrays from 2 MiB up are anonymous mappings advised
with MADV_HUGEPAGE (effective where transparent huge pages are "always" or "madvise"); smaller ones, and
platforms without the advice, get ordinary numpy memory.
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE_BYTES = 2 << 20


def row_buffer(rows: int, dimension: int) -> np.ndarray:
    """A zeroed, writable float32 [rows, dimension] array (huge-page backed from 2 MiB up, where possible)."""
    count = rows * dimension
    nbytes = count * 4
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGE_BYTES or advice is None:
        return np.zeros((rows, dimension), dtype=np.float32)
    size = -(-nbytes // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(advice)
    except OSError:  # advice refused (kernel without THP): ordinary pages, same contents
        pass
    return np.frombuffer(buffer, dtype=np.float32, count=count).reshape(rows, dimension)


def rows_copy(array: np.ndarray, capacity: int | None = None) -> np.ndarray:
    """`array` ([n, d] float32) copied into a row_buffer of max(n, capacity) rows."""
    rows, dimension = array.shape
    out = row_buffer(max(rows, capacity or 0), dimension)
    out[:rows] = array
    return out
