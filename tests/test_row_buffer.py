"""Row arrays for vector scans: huge-page-advised anonymous memory from 2 MiB up, ordinary numpy below."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from knowledge.config import VectorConfig
from knowledge.index.row_buffer import HUGE_PAGE_BYTES, row_buffer, rows_copy
from knowledge.index.vectors import VectorIndex

HAS_ADVICE = hasattr(mmap, "MADV_HUGEPAGE")


def backed_by_mapping(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


@pytest.mark.parametrize("rows", [1, 100, HUGE_PAGE_BYTES // (384 * 4) + 1, 20_000])
def test_row_buffer_is_zeroed_writable_float32(rows):
    out = row_buffer(rows, 384)
    assert out.shape == (rows, 384) and out.dtype == np.float32 and out.flags.c_contiguous
    assert out.flags.writeable and not out.any()
    out[-1, -1] = 3.5
    assert out[-1, -1] == 3.5
    assert backed_by_mapping(out) == (HAS_ADVICE and rows * 384 * 4 >= HUGE_PAGE_BYTES)


def test_rows_copy_keeps_rows_and_adds_capacity():
    source = np.random.default_rng(0).standard_normal((3000, 384), dtype=np.float32)
    out = rows_copy(source, 5000)
    assert out.shape == (5000, 384)
    np.testing.assert_array_equal(out[:3000], source)
    assert not out[3000:].any()


@pytest.mark.skipif(not HAS_ADVICE, reason="this platform's mmap has no MADV_HUGEPAGE")
def test_index_rows_live_in_huge_page_memory_through_growth_and_compaction():
    rng = np.random.default_rng(1)
    index = VectorIndex(384, "ip", VectorConfig(device="cpu", kind="flat"))
    vectors = rng.standard_normal((4000, 384), dtype=np.float32)
    index.upsert(np.arange(4000, dtype=np.int64), vectors)
    assert backed_by_mapping(index.matrix)
    index.remove(np.arange(0, 4000, 2, dtype=np.int64))
    index.compact()
    assert backed_by_mapping(index.matrix)
    np.testing.assert_array_equal(index.matrix[:index.rows], vectors[1::2])
    ids, scores, plan = index.search(vectors[7], 1, None)
    assert plan == "flat" and ids.tolist() == [7]
