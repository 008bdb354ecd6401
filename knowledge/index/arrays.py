"""Growing numpy arrays by doubling: one helper for every per-node array (directory, columns, TTL deadlines)."""

from __future__ import annotations

from typing import Any

import numpy as np

GROW_MIN = 1024


def grown(array: np.ndarray, size: int, fill: Any) -> np.ndarray:
    """`array` itself when it holds `size` entries, else a copy of at least `size` (doubling, GROW_MIN at the
    least) with the new entries set to `fill`."""
    if size <= len(array):
        return array
    out = np.full(max(size, 2 * len(array), GROW_MIN), fill, dtype=array.dtype)
    out[:len(array)] = array
    return out


__all__ = ["GROW_MIN", "grown"]
