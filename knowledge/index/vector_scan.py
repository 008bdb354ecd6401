"""Exact scans of vector rows on the CPU: a numpy scan of gathered rows (`exact_top`) and faiss's exhaustive
search of rows in place, optionally through an IDSelector (`faiss_knn`). The vector index's exact plans and
its calibration (which times them) share these."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np


def exact_top(base: np.ndarray, q: np.ndarray, k: int, metric: str,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `base`, scores) of the best k rows (of those `mask` allows), exact, every row tied with
    the k-th included; `q` is one query [1, dimension]. Scores are similarities for "ip"/"cosine", squared
    distances for "l2"; the positions are unordered.

    A numpy scan, whose fixed cost per query is a fraction of the kernels' CPU twin's (which exists to mirror
    the GPU path bit for bit).
    """
    # einsum, not `base @ q`: OpenBLAS's threaded sgemv is several times slower for one query here
    if metric == "l2":
        scores = (np.einsum("ij,ij->i", base, base) - 2 * np.einsum("ij,j->i", base, q[0])
                  + np.float32(q[0] @ q[0]))
        order_scores = -scores
    else:
        scores = np.einsum("ij,j->i", base, q[0])
        order_scores = scores
    if mask is not None:
        order_scores = np.where(mask, order_scores, -np.inf)
    count = int(np.count_nonzero(np.isfinite(order_scores)))
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if k < count:
        kth = np.partition(order_scores, len(order_scores) - k)[len(order_scores) - k]
        found = np.flatnonzero(order_scores >= kth)
    else:
        found = np.flatnonzero(np.isfinite(order_scores))
    return found, scores[found].astype(np.float32)


# faiss runs an unfiltered scan of one query on OpenMP threads, which a loaded machine stalls (10x slower at
# load 6 on 2 CPUs: bench/RESULTS.md), and a selected scan on the calling thread; select every row instead
_EVERY_ROW = faiss.IDSelectorAll()


def faiss_knn(q: np.ndarray, matrix: np.ndarray, rows: int, want: int, metric: str,
              selector: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row numbers) of faiss's exhaustive search of rows [0, rows) of `matrix` for one query, best
    first, `want` long (padded with row -1), skipping rows `selector` (an faiss IDSelector) leaves out.
    Runs on the calling thread (without a selector, through one that selects every row)."""
    selector = _EVERY_ROW if selector is None else selector
    scores = np.empty(want, dtype=np.float32)
    found = np.empty(want, dtype=np.int64)
    args = (faiss.swig_ptr(q), faiss.swig_ptr(matrix), matrix.shape[1], 1, rows, want,
            faiss.swig_ptr(scores), faiss.swig_ptr(found))
    if metric == "l2":
        faiss.knn_L2sqr(*args, None, selector)
    else:
        faiss.knn_inner_product(*args, selector)
    return scores, found
