"""A vector index's rows held in GPU memory, so exact scans run there without a copy per query.

The copy follows the index's row numbering: rows are only ever appended to an index (deletes set
tombstones, which reach a scan as its mask), so the copy is extended with the rows appended since
the last scan; a renumbering (compaction) bumps the index generation and the copy starts again.
CuPy is imported only when a copy is first made.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from knowledge.kernels import gpu as kernels_gpu
from knowledge.kernels import topk

log = logging.getLogger("knowledge.index.vectors")

TIE_SLACK = 32  # extra results asked of the GPU, so rows tied with the k-th can be ranked by node id
ROWS_MIN_CAPACITY = 1024


class DeviceRows:
    """Rows [0, rows) of one index's float32 matrix, on the current GPU."""

    def __init__(self, dimension: int, memory_fraction_max: float) -> None:
        self.dimension = dimension
        self.memory_fraction_max = memory_fraction_max
        self.generation = -1
        self.rows = 0
        self.array: Any | None = None  # CuPy [capacity, dimension] float32
        self._mask: tuple[np.ndarray, Any] | None = None  # (host mask, its device copy), the last one sent
        self.lock = threading.RLock()  # a sync and the scan after it, one reader at a time

    @property
    def capacity(self) -> int:
        return 0 if self.array is None else int(self.array.shape[0])

    @property
    def bytes_held(self) -> int:
        return self.capacity * self.dimension * 4

    def sync(self, matrix: np.ndarray, rows: int, generation: int) -> bool:
        """Make the copy hold rows [0, rows) of `matrix` (numbering `generation`). False when the copy would
        need more than `memory_fraction_max` of the GPU's memory (what is free plus what it holds now)."""
        cp = kernels_gpu.import_cupy()
        if generation != self.generation:
            self.drop()
            self.generation = generation
        if rows > self.capacity:
            capacity = max(rows, 2 * self.capacity, ROWS_MIN_CAPACITY)
            free_bytes, total_bytes = cp.cuda.runtime.memGetInfo()
            budget_bytes = self.memory_fraction_max * min(total_bytes, free_bytes + self.bytes_held)
            if capacity * self.dimension * 4 > budget_bytes:
                capacity = rows  # no room to double: try the exact size
            if capacity * self.dimension * 4 > budget_bytes:
                self.drop()
                return False
            grown = cp.empty((capacity, self.dimension), dtype=cp.float32)
            if self.rows:
                grown[:self.rows] = self.array[:self.rows]
            self.array = grown
        if rows > self.rows:
            assert self.array is not None
            self.array[self.rows:rows] = cp.asarray(np.ascontiguousarray(matrix[self.rows:rows]))
        self.rows = rows
        return True

    def _device_mask(self, cp: Any, mask: np.ndarray) -> Any:
        """`mask` on the GPU; the last one is reused while the same read-only host array comes again (the
        index's cached row masks of a visibility bitmap are such arrays)."""
        held = self._mask
        if held is not None and held[0] is mask and not mask.flags.writeable:
            return held[1]
        device_mask = cp.asarray(mask)
        self._mask = (mask, device_mask)
        return device_mask

    def drop(self) -> None:
        """Free the copy (the memory returns to CuPy's pool)."""
        self.array, self.rows = None, 0

    def exact(self, q: np.ndarray, k: int, metric: str, rows: np.ndarray | None,
              mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, scores) of the best k of `rows` (every row when None) under `mask` (over every row,
        or None): every row whose score equals the k-th's is included, as on the CPU path, so the caller
        ranks ties by node id."""
        cp = kernels_gpu.import_cupy()
        assert self.array is not None or self.rows == 0
        base = self.array[:self.rows] if rows is None else self.array[cp.asarray(rows)]
        count = int(base.shape[0]) if mask is None else int(np.count_nonzero(mask))
        if count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        device_q = cp.asarray(q)
        device_mask = None if mask is None else self._device_mask(cp, mask)
        want = min(count, k + TIE_SLACK)
        while True:
            scores_d, found_d = topk(device_q, base, want, metric, device_mask, device="gpu")
            found, scores = cp.asnumpy(found_d[0]), cp.asnumpy(scores_d[0])
            keep = found >= 0
            found, scores = found[keep], scores[keep]
            # done when the results run past the k-th score, or hold every eligible row
            if len(found) < want or want >= count or len(found) <= k or scores[-1] != scores[k - 1]:
                break
            want = min(count, want * 4)
        if len(found) > k:
            tied = scores == scores[k - 1]
            tied[:k] = True
            found, scores = found[tied], scores[tied]
        positions = found if rows is None else rows[found]
        return positions.astype(np.int64), scores.astype(np.float32)
