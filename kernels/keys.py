"""Score arithmetic and 64-bit ranking keys shared by the CPU and GPU paths.

Both paths turn raw float32 dot products into scores with exactly the operations written here
(the CUDA twin is ``finish_score`` / ``score_key`` / ``make_comp`` in ``topk.cu``), so equal dot
products give bit-identical scores, and rank candidates by one unsigned 64-bit *composite*::

    composite = (key << 32) | (0xFFFFFFFF - id)        # 0 means "not eligible"

``key`` is a 32-bit unsigned integer that orders like the score (higher key = better; for l2 the
order is reversed), so "largest composite first" is exactly "best score first, ties broken by lower
id". Composites of eligible rows are unique, which makes top-k selection well defined without a
separate tie-break step. NaN scores (possible only from NaN/inf in base rows) get key 0 and are
never returned. Functions take ``xp`` (numpy or cupy) and work on either library's arrays (array operands
always on the left, so numpy scalars never see a CuPy array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("cosine", "ip", "l2")
"""Supported metrics: cosine and ip score = similarity (higher is better); l2 score = squared distance."""

MAX_ROWS = 0xFFFFFFFE
"""Largest number of base rows: row ids must fit the low 32 bits of a composite."""

_SIGN = np.uint32(0x80000000)
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def higher_is_better(metric: str) -> bool:
    """True for similarity metrics (cosine, ip); False for l2, where a lower distance is better."""
    return metric != "l2"


def pad_score(metric: str) -> float:
    """Score reported in padding slots: -inf for cosine/ip, +inf for l2."""
    return float("-inf") if higher_is_better(metric) else float("inf")


def finish_scores(xp: Any, dots: Any, bn2: Any | None, qn2: Any | None, metric: str) -> Any:
    """Scores [nq, m] from float32 dot products [nq, m], base squared norms [m], query squared norms [nq].

    ip: dot. cosine (queries already unit length): dot / sqrt(bn2), 0 for zero rows (NaN stays NaN).
    l2: max((qn2 + bn2) - 2 * dot, 0). Every result gets ``+ 0.0`` so -0.0 becomes +0.0.
    """
    f32 = np.float32
    if metric == "ip":
        scores = dots
    elif metric == "cosine":
        norm = xp.sqrt(bn2)[None, :]
        zero = norm == 0
        scores = xp.where(zero, f32(0), dots / xp.where(zero, f32(1), norm))
    else:
        scores = (qn2[:, None] + bn2[None, :]) - dots * f32(2)
        scores = xp.where(scores < 0, f32(0), scores)
    return (scores + f32(0)).astype(xp.float32, copy=False)


def score_keys(xp: Any, scores: Any, metric: str) -> Any:
    """uint32 keys ordering like the scores (better score = larger key); NaN scores get key 0.

    Order-preserving float map: negative floats have every bit flipped, others only the sign bit
    (``bits ^ (arithmetic_sign_shift | 0x80000000)``); for l2 the key is the complement.
    """
    scores = xp.ascontiguousarray(scores, dtype=xp.float32)
    flip = (scores.view(xp.int32) >> np.int32(31)).view(xp.uint32)  # 0 or 0xFFFFFFFF
    flip |= _SIGN
    if not higher_is_better(metric):
        xp.invert(flip, out=flip)
    flip ^= scores.view(xp.uint32)
    nan = xp.isnan(scores)
    if nan.any():
        flip[nan] = 0
    return flip


def composites(xp: Any, keys: Any, ids: Any) -> Any:
    """uint64 composites from uint32 keys and row ids (broadcastable); key 0 stays composite 0."""
    comp = (keys.astype(xp.uint64) << _SHIFT) | (ids.astype(xp.uint64) ^ _LOW)  # == 0xFFFFFFFF - id
    return xp.where(keys == 0, np.uint64(0), comp)


def decode(xp: Any, comp: Any, metric: str) -> tuple[Any, Any]:
    """(scores float32, ids int64) from composites; composite 0 decodes to the padding (id -1)."""
    keys = (comp >> _SHIFT).astype(xp.uint32)
    ordered = keys if higher_is_better(metric) else ~keys
    bits = xp.where((ordered & _SIGN) != 0, ordered & ~_SIGN, ~ordered).astype(xp.uint32)
    scores = xp.ascontiguousarray(bits).view(xp.float32)
    ids = ((comp & _LOW) ^ _LOW).astype(xp.int64)
    empty = comp == 0
    scores = xp.where(empty, np.float32(pad_score(metric)), scores).astype(xp.float32)
    ids = xp.where(empty, np.int64(-1), ids)
    return scores, ids
