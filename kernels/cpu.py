"""CPU path: numpy, chunked over base rows, running top-k kept as 64-bit composites.

Memory stays bounded: at most ``query_block`` queries x ``chunk_rows`` base rows of scores exist at a
time, whatever the size of the base. Dot products are float32 matmuls (float32 accumulation), the
same arithmetic class as the GPU path; scores and ranking keys come from :mod:`.keys`.
"""

from __future__ import annotations

import numpy as np

from .keys import composites, finish_scores, score_keys
from .validate import PreparedQueries

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_QUERY_BLOCK = 256
_BLOCK_ELEMENTS = 1 << 22  # scores held at once: query block x chunk rows


def _block_sizes(nq: int, chunk_rows: int | None, query_block: int | None) -> tuple[int, int]:
    qb = max(1, min(nq, query_block or DEFAULT_QUERY_BLOCK))
    if chunk_rows is None:
        chunk_rows = min(DEFAULT_CHUNK_ROWS, max(4096, _BLOCK_ELEMENTS // qb))
    return qb, max(1, chunk_rows)


def _chunk_keys(q: PreparedQueries, rows: slice, chunk: np.ndarray, metric: str) -> np.ndarray:
    """uint32 ranking keys [len(q), len(chunk)] for one block of queries and one chunk of base rows."""
    c32 = np.ascontiguousarray(chunk, dtype=np.float32)
    dots = q.vectors[rows] @ c32.T
    bn2 = None if metric == "ip" else np.einsum("ij,ij->i", c32, c32, dtype=np.float32)
    qn2 = None if q.sqnorms is None else q.sqnorms[rows]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scores = finish_scores(np, dots, bn2, qn2, metric)
    return score_keys(np, scores, metric)


def _candidates(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every entry that may be in its row's top-k: key >= the row's k-th largest key.

    All entries tied with the k-th largest are kept, so the exact tie-break happens on composites.
    """
    m = keys.shape[1]
    if m > k:
        kth = np.partition(keys, m - k, axis=1)[:, m - k]
        threshold = np.maximum(kth, np.uint32(1))
    else:
        threshold = np.ones(keys.shape[0], dtype=np.uint32)
    return np.nonzero(keys >= threshold[:, None])


def merge_topk(running: np.ndarray, rows: np.ndarray, comps: np.ndarray, k: int) -> np.ndarray:
    """New running top-k [nq, k] (descending composites, zero padded) from the old one plus candidates.

    ``rows`` gives the query row of each candidate composite in ``comps``; zero composites are ignored.
    """
    nq = running.shape[0]
    flat = running.ravel()
    keep = flat != 0
    all_rows = np.concatenate([np.repeat(np.arange(nq), k)[keep], rows])
    all_comps = np.concatenate([flat[keep], comps])
    order = np.lexsort((~all_comps, all_rows))  # by row, then composite descending
    sorted_rows, sorted_comps = all_rows[order], all_comps[order]
    starts = np.searchsorted(sorted_rows, np.arange(nq))
    rank = np.arange(sorted_rows.size) - starts[sorted_rows]
    take = rank < k
    out = np.zeros((nq, k), dtype=np.uint64)
    out[sorted_rows[take], rank[take]] = sorted_comps[take]
    return out


def topk_composites(
    q: PreparedQueries,
    base: np.ndarray,
    k: int,
    metric: str,
    mask: np.ndarray | None = None,
    *,
    chunk_rows: int | None = None,
    query_block: int | None = None,
) -> np.ndarray:
    """Top-k composites [nq, k] (best first, 0 = padding) of every query over ``base``.

    ``base`` is any [n, d] float array (float16/float64 chunks are converted to float32 one chunk at a
    time, so a memory-mapped base is read once per query block). ``mask`` is a bool [n] or None.
    """
    nq, n = q.vectors.shape[0], base.shape[0]
    qb, m = _block_sizes(nq, chunk_rows, query_block)
    out = np.zeros((nq, k), dtype=np.uint64)
    for q0 in range(0, nq, qb):
        rows = slice(q0, min(nq, q0 + qb))
        running = out[rows]
        for r0 in range(0, n, m):
            r1 = min(n, r0 + m)
            keys = _chunk_keys(q, rows, base[r0:r1], metric)
            if mask is not None:
                keys[:, ~mask[r0:r1]] = 0
            cand_rows, cand_cols = _candidates(keys, k)
            comps = composites(np, keys[cand_rows, cand_cols], cand_cols.astype(np.uint64) + np.uint64(r0))
            running = merge_topk(running, cand_rows, comps, k)
        out[rows] = running
    return out
